//! The TLS listener's certificate: read from PEM files (`--tls-cert`, `--tls-key`), or made at
//! start (`--tls-self-signed`) by a certificate authority of this run's own, whose certificate
//! is written to a file for clients to trust. No key is ever printed, logged or written.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use pulsewire::tls::{ServerTls, TlsConfigError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Where `--tls-ca-out` writes the CA's certificate unless told otherwise: the current
/// directory.
pub const DEFAULT_CA_OUT: &str = "pulsewire-demo-ca.pem";

/// How long a self-signed certificate (and its CA) is valid from the start: a new one is made
/// at every start, so it only has to outlive a run.
const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// How far back a self-signed certificate's validity starts, for a client whose clock runs
/// behind the server's.
const CLOCK_SKEW: Duration = Duration::from_secs(86_400);

/// Where the TLS listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A certificate chain and its private key, PEM files.
    Files {
        /// The chain, leaf first (`--tls-cert`).
        cert: PathBuf,
        /// Its private key (`--tls-key`).
        key: PathBuf,
    },
    /// Made at start; the CA's certificate goes to `ca_out` (`--tls-self-signed`).
    SelfSigned {
        /// Where the CA's certificate is written (`--tls-ca-out`).
        ca_out: PathBuf,
    },
}

/// A TLS listener as the flags describe it: where, and with which certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// The address (`--tls-listen`).
    pub listen: SocketAddr,
    /// The certificate.
    pub source: CertSource,
}

/// A certificate ready to serve.
#[derive(Debug)]
pub struct Identity {
    /// The server's TLS configuration.
    pub tls: ServerTls,
    /// For a self-signed certificate: its CA, still to be written where clients can read it.
    pub ca: Option<SelfSignedCa>,
}

/// The CA of a self-signed certificate: its certificate (public) and where it goes.
#[derive(Debug)]
pub struct SelfSignedCa {
    /// The CA's certificate, PEM.
    pub pem: String,
    /// Where it is to be written.
    pub path: PathBuf,
    /// The names (DNS names and IP addresses) the server's certificate is made out to.
    pub names: Vec<String>,
}

impl TlsPlan {
    /// Reads or makes the certificate. Errors name the file and the flag, and never show a
    /// key's bytes.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        match &self.source {
            CertSource::Files { cert, key } => Ok(Identity { tls: load(cert, key)?, ca: None }),
            CertSource::SelfSigned { ca_out } => {
                let names = self_signed_names(self.listen.ip());
                let (tls, pem) = self_signed(&names).context("making the --tls-self-signed certificate")?;
                Ok(Identity { tls, ca: Some(SelfSignedCa { pem, path: ca_out.clone(), names }) })
            }
        }
    }
}

impl SelfSignedCa {
    /// Writes the CA's certificate to its file (replacing an older one: it is of no use once
    /// its run has ended); returns the file's absolute path, for clients in any directory.
    pub fn write(&self) -> anyhow::Result<PathBuf> {
        let path = &self.path;
        let context = || format!("writing the CA certificate to --tls-ca-out {}", path.display());
        let mut file = std::fs::File::create(path).with_context(context)?;
        file.write_all(self.pem.as_bytes()).and_then(|()| file.sync_all()).with_context(context)?;
        Ok(std::path::absolute(path).unwrap_or_else(|_| path.clone()))
    }
}

/// The TLS identity in the PEM files `cert` (the chain, leaf first) and `key`.
fn load(cert: &Path, key: &Path) -> anyhow::Result<ServerTls> {
    let chain = std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?;
    ServerTls::from_pem(&chain, &key_pem).map_err(|error| {
        // Say which file is at fault. The SDK's messages name the kind of failure, never the
        // key's bytes.
        let culprit = match &error {
            TlsConfigError::NoCertificate => format!("--tls-cert {}", cert.display()),
            TlsConfigError::Pem(why) if why.starts_with("certificate") => format!("--tls-cert {}", cert.display()),
            TlsConfigError::NoKey | TlsConfigError::Pem(_) => format!("--tls-key {}", key.display()),
            _ => format!("--tls-cert {} with --tls-key {}", cert.display(), key.display()),
        };
        anyhow::Error::new(error).context(culprit)
    })
}

/// The names a self-signed certificate is made out to: `localhost`, `127.0.0.1` and `::1`,
/// and `listen` when it is a specific address (a wildcard such as `0.0.0.0` names no host).
fn self_signed_names(listen: IpAddr) -> Vec<String> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    if !listen.is_unspecified() && !ips.contains(&listen) {
        ips.push(listen);
    }
    std::iter::once("localhost".to_owned()).chain(ips.iter().map(IpAddr::to_string)).collect()
}

/// A new CA, and a server certificate it signs for `names`; returns the server's TLS
/// identity (the certificate, then the CA's, as its chain) and the CA's certificate, PEM.
fn self_signed(names: &[String]) -> anyhow::Result<(ServerTls, String)> {
    let now = SystemTime::now();
    let (from, until) = (now - CLOCK_SKEW, now + SELF_SIGNED_LIFETIME);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own for every run's CA: a client verifies a chain by the issuer's name, and
    // one still trusting an earlier run's CA of the same name would be told `BadSignature`
    // instead of "unknown authority".
    let started = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let ca_name = format!("pulsewire demo-server CA, made at start (pid {}, {started})", std::process::id());
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca_params.not_before, ca_params.not_after) = (from.into(), until.into());
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "pulsewire demo-server");
    (params.not_before, params.not_after) = (from.into(), until.into());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let chain = format!("{}{}", cert.pem(), ca.pem());
    let tls = ServerTls::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())?;
    Ok((tls, ca.pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_names_loopback_and_a_specific_listen_address() {
        let loopback = ["localhost", "127.0.0.1", "::1"];
        assert_eq!(self_signed_names("0.0.0.0".parse().unwrap()), loopback);
        assert_eq!(self_signed_names("::".parse().unwrap()), loopback);
        assert_eq!(self_signed_names("127.0.0.1".parse().unwrap()), loopback);
        assert_eq!(self_signed_names("192.0.2.7".parse().unwrap()), ["localhost", "127.0.0.1", "::1", "192.0.2.7"]);
    }

    #[test]
    fn a_self_signed_identity_comes_with_its_ca_certificate_and_no_key() {
        let plan = TlsPlan {
            listen: "127.0.0.1:0".parse().unwrap(),
            source: CertSource::SelfSigned { ca_out: DEFAULT_CA_OUT.into() },
        };
        let identity = plan.identity().expect("a certificate is made");
        let ca = identity.ca.expect("a self-signed identity has its CA");
        assert!(ca.pem.starts_with("-----BEGIN CERTIFICATE-----"), "{}", ca.pem);
        assert_eq!(ca.pem.matches("BEGIN").count(), 1, "the CA's certificate alone");
        assert!(!ca.pem.contains("PRIVATE KEY"));
        assert!(pulsewire::tls::ClientTls::ca_pem(ca.pem.as_bytes()).is_ok(), "a client can trust it");
        assert_eq!(ca.path, Path::new(DEFAULT_CA_OUT));
    }

    /// A directory of the test's own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("demo-server-tls-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("a scratch file");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn bad_pem_files_are_named_with_their_flag_and_never_shown() {
        let scratch = Scratch::new("bad-pem");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = scratch.write("cert.pem", &made.cert.pem());
        let key_text = made.signing_key.serialize_pem();
        let key = scratch.write("key.pem", &key_text);
        let other_key = scratch.write("other-key.pem", &KeyPair::generate().unwrap().serialize_pem());
        let empty = scratch.write("empty.pem", "");
        let garbage =
            scratch.write("garbage.pem", "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n");
        let missing = scratch.0.join("missing.pem");
        assert!(load(&cert, &key).is_ok(), "a matching pair loads");
        let cases = [
            (&missing, &key, "reading --tls-cert"),
            (&cert, &missing, "reading --tls-key"),
            (&empty, &key, "--tls-cert"),
            (&key, &key, "--tls-cert"),
            (&cert, &empty, "--tls-key"),
            (&cert, &cert, "--tls-key"),
            (&cert, &garbage, "--tls-key"),
            (&cert, &other_key, "--tls-cert"),
        ];
        for (cert, key, expected) in cases {
            let message = format!("{:#}", load(cert, key).expect_err("a bad pair"));
            assert!(message.starts_with(expected), "{message:?} does not start with {expected:?}");
            let named = if expected.contains("key") { key } else { cert };
            assert!(message.contains(&named.display().to_string()), "{message:?} does not name {}", named.display());
            assert!(!message.contains("PRIVATE KEY") && !message.contains(&key_text[30..60]), "{message:?}");
            eprintln!("{message}");
        }
    }
}
