//! The demo's certificates, made in memory when the app starts (never written to disk): a
//! certificate authority, the embedded server's certificate signed by it for `localhost` and
//! `127.0.0.1`, and a second authority that signed nothing of the server's, for the wrong-CA
//! fault.
//!
//! The main client trusts the demo CA only ([`ClientTls::ca_pem`]) and checks the server's
//! certificate against the address it connects to, `127.0.0.1` (the relay or the server), so
//! no `server_name` is needed: the certificate names that address.

use std::fmt;
use std::time::{Duration, SystemTime};

use pulsewire::tls::{ClientTls, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// The name of the authority that signs the embedded server's certificate.
pub const DEMO_CA: &str = "pulsewire demo CA";

/// The name of the authority the wrong-CA fault makes the client trust instead.
pub const WRONG_CA: &str = "another demo CA";

/// The names the embedded server's certificate is made out to.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// How long the server's certificate is valid, from an hour before the app started.
pub const VALID_FOR: Duration = Duration::from_secs(30 * 86_400);

/// Which authority the main client trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trust {
    /// The demo CA, which signed the embedded server's certificate.
    #[default]
    DemoCa,
    /// Another CA, which did not: every handshake fails (the wrong-CA fault).
    WrongCa,
}

impl Trust {
    /// The authority's name.
    pub fn ca_name(self) -> &'static str {
        match self {
            Trust::DemoCa => DEMO_CA,
            Trust::WrongCa => WRONG_CA,
        }
    }
}

/// The embedded server's TLS identity and what a client may trust. Cheap to clone.
#[derive(Clone)]
pub struct DemoPki {
    server: ServerTls,
    demo_ca: ClientTls,
    wrong_ca: ClientTls,
}

impl fmt::Debug for DemoPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("DemoPki").finish_non_exhaustive()
    }
}

impl DemoPki {
    /// Two new authorities with new keys, and a server certificate signed by the first.
    pub fn generate() -> Result<DemoPki, String> {
        let made = |error: rcgen::Error| format!("cannot make the demo certificates: {error}");
        let demo_ca = authority(DEMO_CA).map_err(made)?;
        let wrong_ca = authority(WRONG_CA).map_err(made)?;

        let mut params = CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec()).map_err(made)?;
        params.distinguished_name.push(DnType::CommonName, SERVER_NAMES[0]);
        let from = SystemTime::now() - Duration::from_secs(3600);
        params.not_before = from.into();
        params.not_after = (from + VALID_FOR).into();
        let key = KeyPair::generate().map_err(made)?;
        let cert = params.signed_by(&key, &demo_ca).map_err(made)?;
        let chain = format!("{}{}", cert.pem(), demo_ca.pem());

        let refused = |error: pulsewire::tls::TlsConfigError| format!("the demo certificates are refused: {error}");
        Ok(DemoPki {
            server: ServerTls::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).map_err(refused)?,
            demo_ca: ClientTls::ca_pem(demo_ca.pem().as_bytes()).map_err(refused)?,
            wrong_ca: ClientTls::ca_pem(wrong_ca.pem().as_bytes()).map_err(refused)?,
        })
    }

    /// The embedded server's certificate chain and key.
    pub fn server(&self) -> ServerTls {
        self.server.clone()
    }

    /// What a client trusting `trust` is configured with.
    pub fn client(&self, trust: Trust) -> ClientTls {
        match trust {
            Trust::DemoCa => self.demo_ca.clone(),
            Trust::WrongCa => self.wrong_ca.clone(),
        }
    }
}

/// A self-signed certificate authority named `name`, with a new key.
fn authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use pulsewire::tls::TlsError;
    use pulsewire::{Client, ClientConfig, ConnectError, Event, Failure, Server, ServerConfig};

    /// The first thing a client trusting `trust` sees of a TLS server with the demo
    /// certificate: connected, or the first connect error.
    fn first_outcome(trust: Trust) -> Result<(), ConnectError> {
        let pki = DemoPki::generate().expect("certificates");
        let config = ServerConfig::builder()
            .listen("127.0.0.1:0".parse().expect("an address"))
            .tls("127.0.0.1:0".parse().expect("an address"), pki.server())
            .build()
            .expect("a valid config");
        let (server, _events) = block_on(Server::bind(config)).expect("bind");
        let tls_addr = server.tls_addr().expect("a TLS listener").to_string();
        let config = ClientConfig::builder(tls_addr, "desk-1").tls(pki.client(trust)).build().expect("a valid config");
        assert!(config.uses_tls());
        let (client, mut events) = Client::start(config);
        let outcome = block_on(async {
            use futures::StreamExt;
            loop {
                match events.next().await.expect("events until closed") {
                    Event::Connected { .. } => return Ok(()),
                    Event::BackingOff { last_error: Some(Failure::Connect(error)), .. } => return Err(error),
                    _ => {}
                }
            }
        });
        block_on(client.close());
        block_on(server.shutdown());
        outcome
    }

    #[test]
    fn a_client_trusting_the_demo_ca_verifies_the_servers_certificate_for_127_0_0_1() {
        assert_eq!(first_outcome(Trust::DemoCa), Ok(()));
    }

    #[test]
    fn a_client_trusting_another_ca_is_refused_as_an_unknown_issuer() {
        assert_eq!(first_outcome(Trust::WrongCa), Err(ConnectError::Tls(TlsError::UnknownIssuer)));
    }

    #[test]
    fn the_keys_never_show_in_debug() {
        assert_eq!(format!("{:?}", DemoPki::generate().expect("certificates")), "DemoPki { .. }");
    }
}
