//! What the user can set, and how it becomes SDK configurations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pulsewire::auth::Authenticator;
use pulsewire::tls::ServerTls;
use pulsewire::{ClientConfig, ClientConfigBuilder, ConfigError, ServerConfig};

use crate::auth::AUTH_GRACE;

/// Which server the main client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The server embedded in this app (the default).
    Embedded,
    /// A server elsewhere, as `host:port`.
    External(String),
}

/// Every setting of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The main client's id.
    pub client_id: String,
    /// Which server it talks to.
    pub target: Target,
    /// Whether the main client connects through the fault relay (needed for the
    /// freeze / silence / black-hole faults).
    pub via_relay: bool,
    /// The embedded server's pulse interval, ms.
    pub interval_ms: u64,
    /// The embedded server's miss limit.
    pub max_missed: u32,
    /// How long the embedded server keeps a session whose connection is lost, s (0: none).
    pub keep_s: u64,
    /// Backoff: the first delay, ms.
    pub initial_delay_ms: u64,
    /// Backoff: the largest delay, ms.
    pub max_delay_ms: u64,
    /// Backoff: the growth per failed attempt.
    pub multiplier: f64,
    /// Backoff: the randomised fraction of each delay, 0–1.
    pub jitter: f64,
    /// The lifetime of the main client's tokens, s (the embedded server ends a connection
    /// [`AUTH_GRACE`] past its token's expiry; the client then gets a new one and resumes).
    pub token_lifetime_s: u64,
}

impl Default for Settings {
    /// The SDK's defaults, but for a backoff cap of 5 s instead of 30 s, so that a person who
    /// restarts a killed server sees the client back within seconds.
    fn default() -> Settings {
        Settings {
            client_id: "desk-1".to_owned(),
            target: Target::Embedded,
            via_relay: true,
            interval_ms: 1000,
            max_missed: 3,
            keep_s: 120,
            initial_delay_ms: 250,
            max_delay_ms: 5000,
            multiplier: 2.0,
            jitter: 1.0,
            token_lifetime_s: 30,
        }
    }
}

impl Settings {
    /// The embedded server's configuration, listening on 127.0.0.1 at `port` (0: any free),
    /// and for TLS at the port given with its certificate (0: any free), requiring a login
    /// from `authenticator` (with a grace of [`AUTH_GRACE`]) when given.
    pub fn server_config(
        &self,
        port: u16,
        tls: Option<(u16, ServerTls)>,
        authenticator: Option<Arc<dyn Authenticator>>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut builder = ServerConfig::builder()
            .listen(SocketAddr::from(([127, 0, 0, 1], port)))
            .interval(Duration::from_millis(self.interval_ms))
            .max_missed(self.max_missed)
            .keep(Duration::from_secs(self.keep_s));
        if let Some((tls_port, tls)) = tls {
            builder = builder.tls(SocketAddr::from(([127, 0, 0, 1], tls_port)), tls);
        }
        if let Some(authenticator) = authenticator {
            builder = builder.authenticator(authenticator).auth_grace(AUTH_GRACE);
        }
        builder.build()
    }

    /// A client configuration for `server` with id `client_id` and this backoff, to which
    /// the caller adds its token (or not).
    pub fn client_builder(&self, server: &str, client_id: &str) -> ClientConfigBuilder {
        ClientConfig::builder(server, client_id)
            .initial_delay(Duration::from_millis(self.initial_delay_ms))
            .max_delay(Duration::from_millis(self.max_delay_ms))
            .multiplier(self.multiplier)
            .jitter(self.jitter)
    }

    /// The lifetime of the main client's tokens.
    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.token_lifetime_s)
    }

    /// Checks everything the way the SDK will, so that Apply can refuse with a precise
    /// message instead of failing later in the background.
    pub fn validate(&self) -> Result<(), String> {
        self.server_config(0, None, None).map_err(|error| format!("server: {error}"))?;
        let server = match &self.target {
            Target::Embedded => "127.0.0.1:1",
            Target::External(addr) => addr.as_str(),
        };
        self.client_builder(server, &self.client_id).build().map_err(|error| format!("client: {error}"))?;
        if self.token_lifetime_s == 0 {
            return Err("client: a token lifetime of 0 s expires before it is used".to_owned());
        }
        Ok(())
    }

    /// Whether going from `self` to `next` needs a new embedded server.
    pub fn server_changed(&self, next: &Settings) -> bool {
        (self.interval_ms, self.max_missed, self.keep_s) != (next.interval_ms, next.max_missed, next.keep_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_values_are_refused_with_the_sdk_reason() {
        let zero_interval = Settings { interval_ms: 0, ..Settings::default() };
        let error = zero_interval.validate().expect_err("a zero interval is refused");
        assert!(error.starts_with("server: interval"), "{error}");

        let bad_id = Settings { client_id: "two words".into(), ..Settings::default() };
        assert!(bad_id.validate().expect_err("a bad id is refused").starts_with("client: "));

        let bad_address = Settings { target: Target::External("nowhere".into()), ..Settings::default() };
        assert!(bad_address.validate().expect_err("no port").contains("not host:port"));

        let bad_jitter = Settings { jitter: 1.5, ..Settings::default() };
        assert!(bad_jitter.validate().expect_err("jitter above 1").contains("jitter"));
    }

    #[test]
    fn only_timing_changes_need_a_new_server() {
        let base = Settings::default();
        assert!(!base.server_changed(&Settings { jitter: 0.5, ..base.clone() }));
        assert!(base.server_changed(&Settings { max_missed: 5, ..base.clone() }));
        assert!(base.server_changed(&Settings { keep_s: 5, ..base.clone() }));
    }

    #[test]
    fn the_keep_setting_reaches_the_server() {
        let settings = Settings { keep_s: 7, ..Settings::default() };
        let config = settings.server_config(0, None, None).expect("valid");
        assert_eq!(config.keep(), Duration::from_secs(7));
        assert_eq!(Settings::default().server_config(0, None, None).expect("valid").keep(), Duration::from_secs(120));
    }

    #[test]
    fn the_embedded_server_listens_for_tls_beside_plaintext_when_given_a_certificate() {
        let pki = crate::pki::DemoPki::generate().expect("certificates");
        let config = Settings::default().server_config(7000, Some((7001, pki.server())), None).expect("valid");
        assert_eq!(config.tls_listen(), Some(SocketAddr::from(([127, 0, 0, 1], 7001))));
        assert_eq!(Settings::default().server_config(0, None, None).expect("valid").tls_listen(), None);
    }

    #[test]
    fn the_embedded_server_requires_a_login_when_given_an_authenticator() {
        let key = crate::auth::SigningKey::random().expect("random bytes");
        let (feed, _inbox) = crate::feed::channel(Arc::new(|_| {}));
        let authenticator = Arc::new(crate::auth::DemoJwt::new(&key, feed));
        assert!(Settings::default().server_config(0, None, Some(authenticator)).expect("valid").requires_auth());
        assert!(!Settings::default().server_config(0, None, None).expect("valid").requires_auth());
        let forever = Settings { token_lifetime_s: 0, ..Settings::default() };
        assert!(forever.validate().expect_err("refused").contains("token lifetime"));
    }
}
