//! Certificates made at test time (never committed): a certificate authority, and certificates
//! it signs for the names a test connects to, valid, expired or not valid yet.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday to next year.
    Now,
    /// It ended yesterday.
    Expired,
    /// It starts next year.
    NotYet,
}

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate chain: the certificate, then its CA's.
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA, with a new key.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA's certificate, PEM: what a client trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str], validity: Validity) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        let now = time_now();
        let day = std::time::Duration::from_secs(86_400);
        let (from, until) = match validity {
            Validity::Now => (now - day, now + 365 * day),
            Validity::Expired => (now - 30 * day, now - day),
            Validity::NotYet => (now + 365 * day, now + 730 * day),
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()), key_pem: key.serialize_pem() })
    }
}

fn time_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}
