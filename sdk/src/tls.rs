//! TLS for both sides, on [rustls] with the *ring* crypto provider, always named explicitly (the
//! process-wide default provider is never installed nor read).
//!
//! - A server gets a [`ServerTls`] (a certificate chain and its key, from PEM) and listens for
//!   TLS on a port of its own beside (or instead of) the plaintext one:
//!   [`ServerConfigBuilder::tls`](crate::ServerConfigBuilder::tls).
//! - A client gets a [`ClientTls`] (the roots it trusts: a PEM file, the system's, or the
//!   webpki set) with [`ClientConfigBuilder::tls`](crate::ClientConfigBuilder::tls). It checks
//!   the server's certificate against the host name or IP address it connects to (or the name
//!   set with [`ClientTls::server_name`]), and a failed check is a typed connect error,
//!   [`ConnectError::Tls`](crate::ConnectError::Tls), naming the reason ([`TlsError`]).
//!
//! The frames inside TLS are byte for byte the plaintext ones. A plaintext client on a TLS
//! port is answered `ERROR tls-required` in plaintext, so that a person with `nc` learns why.
//!
//! ```
//! use pulsewire::tls::{ClientTls, ServerTls};
//! # // A self-signed certificate for the example (rcgen); a real server loads its own PEM files.
//! # let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
//! # let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
//! let server = ServerTls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).expect("a certificate and its key");
//! // The client trusts that certificate (a self-signed one is its own authority).
//! let client = ClientTls::ca_pem(cert_pem.as_bytes()).expect("a CA").server_name("localhost");
//! # let _ = (server, client);
//!
//! assert!(ServerTls::from_pem(cert_pem.as_bytes(), b"").is_err(), "no key");
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use rustls;

/// The crypto provider every TLS configuration of pulsewire is built on.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS identity: its certificate chain and private key, as a rustls configuration.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), both PEM.
    /// TLS 1.2 and 1.3 with rustls' safe defaults; TLS 1.3 session tickets (stateless, under
    /// a key that lives in memory and rotates) let reconnecting clients skip the full handshake.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<ServerTls, TlsConfigError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsConfigError::Pem(format!("certificate chain: {error}")))?;
        if certs.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoKey,
            // Never the key's bytes: only what kind of failure it was.
            other => TlsConfigError::Pem(format!("private key: {other}")),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(TlsConfigError::Rustls)?;
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsConfigError::Rustls)?;
        Ok(ServerTls { config: Arc::new(config) })
    }

    /// [`ServerTls::from_pem`] with the PEM read from two files.
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<ServerTls, TlsConfigError> {
        let cert_chain = read(cert_chain.as_ref())?;
        let key = read(key.as_ref())?;
        ServerTls::from_pem(&cert_chain, &key)
    }

    /// A rustls configuration of your own (client certificates, other versions or suites).
    /// Build it with an explicit provider (`ServerConfig::builder_with_provider`).
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> ServerTls {
        ServerTls { config }
    }
}

/// What a client trusts, and the name it expects the server's certificate to carry. Cheap to
/// clone.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the certificate authorities in a PEM bundle (one or more certificates).
    pub fn ca_pem(pem: &[u8]) -> Result<ClientTls, TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|error| TlsConfigError::Pem(format!("CA certificate: {error}")))?;
            roots.add(cert).map_err(TlsConfigError::Rustls)?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        ClientTls::with_roots(roots)
    }

    /// [`ClientTls::ca_pem`] with the PEM read from a file.
    pub fn ca_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsConfigError> {
        ClientTls::ca_pem(&read(path.as_ref())?)
    }

    /// Trusts the operating system's certificate store. An error when it holds no usable
    /// certificate.
    pub fn system_roots() -> Result<ClientTls, TlsConfigError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let why = found.errors.first().map_or_else(|| "it holds no certificate".to_owned(), ToString::to_string);
            return Err(TlsConfigError::SystemRoots(why));
        }
        ClientTls::with_roots(roots)
    }

    /// Trusts the Mozilla set of root authorities compiled in (the `webpki-roots` crate): the
    /// same on every machine, whatever its own store holds.
    pub fn webpki_roots() -> ClientTls {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        // Only an empty protocol version list fails, and the safe defaults are not empty.
        ClientTls::with_roots(roots).expect("the default protocol versions are valid")
    }

    /// A rustls configuration of your own (client certificates, pinning). Build it with an
    /// explicit provider (`ClientConfig::builder_with_provider`).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls { config, server_name: None }
    }

    /// The name to check the server's certificate against (and to send as SNI), when it is
    /// not the host of the server address (connecting by IP address to a certificate made
    /// out to a name, say). A DNS name or an IP address.
    ///
    /// A name that is neither is refused when the client configuration is built
    /// ([`ConfigError::ServerName`](crate::ConfigError::ServerName)).
    pub fn server_name(mut self, name: impl Into<String>) -> ClientTls {
        self.server_name = Some(name.into());
        self
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<ClientTls, TlsConfigError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config), server_name: None })
    }

    /// The name the certificate must carry, for a connection to `server` ("host:port").
    pub(crate) fn name_for(&self, server: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => {
                let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
                host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
            }
        };
        ServerName::try_from(host.to_owned()).map_err(|_| host.to_owned())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path)
        .map_err(|error| TlsConfigError::Read { path: path.display().to_string(), error: error.to_string() })
}

/// A TLS configuration that cannot be built.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    Read {
        /// The file.
        path: String,
        /// The system's message.
        error: String,
    },
    /// PEM that does not parse.
    Pem(String),
    /// The PEM holds no certificate.
    NoCertificate,
    /// The PEM holds no private key.
    NoKey,
    /// The system's certificate store could not be read, or holds nothing usable.
    SystemRoots(String),
    /// rustls refused the certificate, the key or the configuration.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            TlsConfigError::Pem(why) => write!(f, "bad PEM: {why}"),
            TlsConfigError::NoCertificate => f.write_str("the PEM holds no certificate"),
            TlsConfigError::NoKey => f.write_str("the PEM holds no private key"),
            TlsConfigError::SystemRoots(why) => write!(f, "no usable system root certificate: {why}"),
            TlsConfigError::Rustls(error) => write!(f, "TLS configuration refused: {error}"),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// Why a TLS handshake failed, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate is not made out to the name the client checks (the host it
    /// connects to, or [`ClientTls::server_name`]).
    WrongName {
        /// The name checked.
        expected: String,
    },
    /// The server's certificate is not signed by an authority the client trusts.
    UnknownIssuer,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate was refused for another reason (its text).
    BadCertificate(String),
    /// The server did not answer in TLS: most likely this is its plaintext port.
    NotTls,
    /// The server ended the handshake with an alert (it may not accept this client's versions
    /// or suites).
    Alert(String),
    /// Another TLS failure (its text).
    Other(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::WrongName { expected } => {
                write!(f, "the server's certificate is not valid for {expected:?}")
            }
            TlsError::UnknownIssuer => f.write_str("the server's certificate is signed by an unknown authority"),
            TlsError::Expired => f.write_str("the server's certificate has expired"),
            TlsError::NotYetValid => f.write_str("the server's certificate is not valid yet"),
            TlsError::BadCertificate(why) => write!(f, "the server's certificate was refused: {why}"),
            TlsError::NotTls => f.write_str("the server did not answer in TLS (is this its plaintext port?)"),
            TlsError::Alert(alert) => write!(f, "the server ended the TLS handshake: {alert}"),
            TlsError::Other(why) => write!(f, "TLS failed: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl TlsError {
    /// The reason rustls gave, checking against `expected`.
    pub(crate) fn from_rustls(error: &rustls::Error, expected: &ServerName<'_>) -> TlsError {
        use rustls::CertificateError as Cert;
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    TlsError::WrongName { expected: expected.to_str().into_owned() }
                }
                Cert::UnknownIssuer => TlsError::UnknownIssuer,
                Cert::Expired | Cert::ExpiredContext { .. } => TlsError::Expired,
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => TlsError::NotYetValid,
                other => TlsError::BadCertificate(other.to_string()),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => TlsError::NotTls,
            rustls::Error::AlertReceived(alert) => TlsError::Alert(format!("{alert:?}")),
            other => TlsError::Other(other.to_string()),
        }
    }

    /// The TLS failure inside an I/O error from the handshake, if it is one.
    pub(crate) fn from_io(error: &std::io::Error, expected: &ServerName<'_>) -> Option<TlsError> {
        let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(TlsError::from_rustls(inner, expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    #[test]
    fn the_name_checked_is_the_host_of_the_address_unless_one_is_set() {
        let (cert, _) = self_signed();
        let tls = ClientTls::ca_pem(cert.as_bytes()).unwrap();
        let name = |tls: &ClientTls, server: &str| tls.name_for(server).map(|name| name.to_str().into_owned());
        assert_eq!(name(&tls, "example.com:7879"), Ok("example.com".to_owned()));
        assert_eq!(name(&tls, "127.0.0.1:7879"), Ok("127.0.0.1".to_owned()));
        assert_eq!(name(&tls, "[::1]:7879"), Ok("::1".to_owned()));
        assert!(matches!(tls.name_for("10.0.0.1:1"), Ok(ServerName::IpAddress(_))), "an IP is checked as an IP");
        let named = tls.clone().server_name("localhost");
        assert_eq!(name(&named, "127.0.0.1:7879"), Ok("localhost".to_owned()));
        assert_eq!(name(&tls.server_name("not a name"), "127.0.0.1:7879"), Err("not a name".to_owned()));
    }

    #[test]
    fn bad_pem_is_refused_with_a_precise_error_that_never_shows_the_key() {
        let (cert, key) = self_signed();
        assert!(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
        assert_eq!(ServerTls::from_pem(b"", key.as_bytes()).unwrap_err(), TlsConfigError::NoCertificate);
        assert_eq!(ServerTls::from_pem(cert.as_bytes(), b"").unwrap_err(), TlsConfigError::NoKey);
        assert_eq!(ServerTls::from_pem(cert.as_bytes(), cert.as_bytes()).unwrap_err(), TlsConfigError::NoKey);
        // A key that is not the certificate's.
        let (_, other_key) = self_signed();
        let error = ServerTls::from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(error, TlsConfigError::Rustls(_)), "{error:?}");
        let body = key.lines().nth(1).unwrap();
        for error in [error, TlsConfigError::NoKey] {
            assert!(!format!("{error} {error:?}").contains(body));
        }
        assert_eq!(ClientTls::ca_pem(b"no pem here").unwrap_err(), TlsConfigError::NoCertificate);
        let missing = ClientTls::ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(missing.to_string().starts_with("cannot read /nonexistent/ca.pem: "), "{missing}");
        assert!(!format!("{:?}", ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()).contains(body));
    }

    #[test]
    fn rustls_failures_map_to_the_reason_they_name() {
        use rustls::CertificateError as Cert;
        let name = ServerName::try_from("desk.example").unwrap();
        let cases = [
            (
                rustls::Error::InvalidCertificate(Cert::NotValidForName),
                TlsError::WrongName { expected: "desk.example".into() },
            ),
            (rustls::Error::InvalidCertificate(Cert::UnknownIssuer), TlsError::UnknownIssuer),
            (rustls::Error::InvalidCertificate(Cert::Expired), TlsError::Expired),
            (rustls::Error::InvalidCertificate(Cert::NotValidYet), TlsError::NotYetValid),
            (rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType), TlsError::NotTls),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                TlsError::Alert("HandshakeFailure".into()),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(TlsError::from_rustls(&error, &name), expected);
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            assert_eq!(TlsError::from_io(&io, &name), Some(expected));
        }
        assert_eq!(TlsError::from_io(&std::io::Error::other("not TLS"), &name), None);
    }
}
