//! What the server warns about at start: a listener beyond loopback that anyone may use, and
//! logins from beyond loopback that would be refused or cross the network in the clear.

use std::fmt;
use std::net::SocketAddr;

use pulsewire::ServerConfig;

/// A risk in how a configuration exposes the server, told once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Listeners beyond loopback, and peers need not authenticate: anyone who can reach one
    /// can take any client id.
    Unauthenticated {
        /// The listeners beyond loopback.
        addrs: Vec<SocketAddr>,
    },
    /// Peers must authenticate, the plaintext listener is beyond loopback and there is no TLS
    /// listener: a token from beyond loopback is refused (`tls-required`), so no peer there
    /// can log in.
    TokensRefused {
        /// The plaintext listener.
        listen: SocketAddr,
    },
    /// Peers must authenticate, the plaintext listener is beyond loopback, and it accepts
    /// their tokens (`--allow-plaintext-tokens`): anyone on the path can read and reuse them.
    TokensInTheClear {
        /// The plaintext listener.
        listen: SocketAddr,
        /// Whether a TLS listener runs too (the one such peers should use).
        tls: bool,
    },
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exposure::Unauthenticated { addrs } => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "listening beyond loopback ({}) without authentication: anyone who can reach it can take any \
                     client id (add --tokens, --jwt-secret-file or --jwt-public-key)",
                    addrs.join(", ")
                )
            }
            Exposure::TokensRefused { listen } => write!(
                f,
                "peers beyond loopback cannot log in on {listen}: their tokens over plaintext are refused \
                 (tls-required); add --tls-listen for them to log in over TLS"
            ),
            Exposure::TokensInTheClear { listen, tls } => {
                write!(
                    f,
                    "--allow-plaintext-tokens: tokens from beyond loopback cross the network in the clear on \
                     {listen}, and anyone on the path can read and reuse them"
                )?;
                if *tls {
                    f.write_str(" (peers there should connect to the TLS listener)")
                } else {
                    f.write_str(" (prefer --tls-listen)")
                }
            }
        }
    }
}

/// The risks of `config`, whose plaintext listener accepts tokens from beyond loopback when
/// `plaintext_tokens` (`--allow-plaintext-tokens`: the SDK's configuration does not tell);
/// none for a server on loopback only.
pub fn exposures(config: &ServerConfig, plaintext_tokens: bool) -> Vec<Exposure> {
    let beyond_loopback = |addr: &SocketAddr| !addr.ip().to_canonical().is_loopback();
    let plaintext = config.plaintext().then(|| config.listen()).filter(beyond_loopback);
    let tls = config.tls_listen();
    let mut found = Vec::new();
    if !config.requires_auth() {
        let addrs: Vec<SocketAddr> = plaintext.into_iter().chain(tls.filter(beyond_loopback)).collect();
        if !addrs.is_empty() {
            found.push(Exposure::Unauthenticated { addrs });
        }
    } else if let Some(listen) = plaintext {
        if plaintext_tokens {
            found.push(Exposure::TokensInTheClear { listen, tls: tls.is_some() });
        } else if tls.is_none() {
            found.push(Exposure::TokensRefused { listen });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pulsewire::auth::TokenFile;
    use pulsewire::tls::ServerTls;
    use pulsewire::ServerConfigBuilder;

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn tls() -> ServerTls {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        ServerTls::from_pem(made.cert.pem().as_bytes(), made.signing_key.serialize_pem().as_bytes()).unwrap()
    }

    fn with_auth(builder: ServerConfigBuilder) -> ServerConfigBuilder {
        builder.authenticator(Arc::new(TokenFile::parse("desk-1 alice s3cret-token\n").unwrap()))
    }

    fn exposures_of(builder: ServerConfigBuilder) -> Vec<Exposure> {
        exposures(&builder.build().expect("a valid config"), false)
    }

    /// As [`exposures_of`], with `--allow-plaintext-tokens`.
    fn exposures_allowing_plaintext_tokens(builder: ServerConfigBuilder) -> Vec<Exposure> {
        exposures(&builder.allow_plaintext_tokens(true).build().expect("a valid config"), true)
    }

    #[test]
    fn a_server_on_loopback_only_warns_of_nothing() {
        let loopback = ServerConfig::builder().listen(addr("127.0.0.1:7878"));
        assert_eq!(exposures_of(loopback.clone()), []);
        assert_eq!(exposures_of(loopback.clone().tls(addr("[::1]:7879"), tls())), []);
        assert_eq!(exposures_of(with_auth(loopback.clone())), []);
        assert_eq!(exposures_allowing_plaintext_tokens(with_auth(loopback)), []);
    }

    #[test]
    fn any_listener_beyond_loopback_without_authentication_is_named() {
        let open = ServerConfig::builder().listen(addr("0.0.0.0:7878"));
        assert_eq!(exposures_of(open.clone()), [Exposure::Unauthenticated { addrs: vec![addr("0.0.0.0:7878")] }]);
        let both = open.clone().tls(addr("192.0.2.7:7879"), tls());
        assert_eq!(
            exposures_of(both),
            [Exposure::Unauthenticated { addrs: vec![addr("0.0.0.0:7878"), addr("192.0.2.7:7879")] }]
        );
        // A TLS listener beyond loopback is as open without authentication, plaintext or not.
        let tls_only =
            ServerConfig::builder().listen(addr("0.0.0.0:7878")).plaintext(false).tls(addr("[::]:7879"), tls());
        assert_eq!(exposures_of(tls_only), [Exposure::Unauthenticated { addrs: vec![addr("[::]:7879")] }]);
        let tls_beyond = ServerConfig::builder().tls(addr("0.0.0.0:7879"), tls());
        assert_eq!(exposures_of(tls_beyond), [Exposure::Unauthenticated { addrs: vec![addr("0.0.0.0:7879")] }]);
    }

    #[test]
    fn authentication_on_plaintext_beyond_loopback_warns_unless_tls_carries_the_tokens() {
        let open = with_auth(ServerConfig::builder().listen(addr("0.0.0.0:7878")));
        assert_eq!(exposures_of(open.clone()), [Exposure::TokensRefused { listen: addr("0.0.0.0:7878") }]);
        assert_eq!(exposures_of(open.clone().tls(addr("0.0.0.0:7879"), tls())), []);
        assert_eq!(
            exposures_allowing_plaintext_tokens(open.clone()),
            [Exposure::TokensInTheClear { listen: addr("0.0.0.0:7878"), tls: false }]
        );
        assert_eq!(
            exposures_allowing_plaintext_tokens(open.clone().tls(addr("0.0.0.0:7879"), tls())),
            [Exposure::TokensInTheClear { listen: addr("0.0.0.0:7878"), tls: true }]
        );
        // No plaintext listener, no token in the clear.
        assert_eq!(exposures_allowing_plaintext_tokens(open.plaintext(false).tls(addr("0.0.0.0:7879"), tls())), []);
    }

    #[test]
    fn each_warning_says_what_to_do() {
        let listen = addr("0.0.0.0:7878");
        for (exposure, expected) in [
            (Exposure::Unauthenticated { addrs: vec![listen, addr("0.0.0.0:7879")] }, "(0.0.0.0:7878, 0.0.0.0:7879)"),
            (Exposure::Unauthenticated { addrs: vec![listen] }, "add --tokens"),
            (Exposure::TokensRefused { listen }, "add --tls-listen"),
            (Exposure::TokensInTheClear { listen, tls: false }, "prefer --tls-listen"),
            (Exposure::TokensInTheClear { listen, tls: true }, "connect to the TLS listener"),
        ] {
            let message = exposure.to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }
}
