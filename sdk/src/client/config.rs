//! The client's configuration and its builder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{OutboxLimits, ReconnectPolicy, ResumeState};
use crate::error::{validate_payload, ConfigError};
use crate::protocol::{ClientId, Token, DEFAULT_MAX_PAYLOAD};
use crate::tls::ClientTls;

/// Everything the client needs to know, validated. Build one with [`ClientConfig::builder`].
///
/// The pulse interval and the miss limit are not here: the client adopts the ones the server
/// announces in `WELCOME`, so the two sides never disagree about timing.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) server: String,
    pub(crate) client_id: ClientId,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) max_payload: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) outbox: OutboxLimits,
    pub(crate) resume: Option<ResumeState>,
    /// Sent in every `HELLO`; redacted in `Debug`.
    pub(crate) token: Option<Token>,
    pub(crate) token_provider: ProviderSlot,
    pub(crate) tls: Option<TlsTarget>,
}

/// The TLS configuration, with the name checked against the server's certificate.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Starts a configuration for connecting to `server` (`"host:port"`) as `client_id`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pulsewire::ClientConfig;
    ///
    /// let config = ClientConfig::builder("127.0.0.1:7878", "desk-42")
    ///     .max_delay(Duration::from_secs(10))
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .expect("valid config");
    /// assert_eq!(config.client_id().as_str(), "desk-42");
    ///
    /// let error = ClientConfig::builder("127.0.0.1:7878", "desk 42").build().unwrap_err();
    /// assert!(error.to_string().contains("client id"));
    /// ```
    pub fn builder(server: impl Into<String>, client_id: impl Into<String>) -> ClientConfigBuilder {
        ClientConfigBuilder {
            server: server.into(),
            client_id: client_id.into(),
            reconnect: ReconnectPolicy::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
            outbox: OutboxLimits::default(),
            resume: None,
            token: None,
            token_provider: ProviderSlot::default(),
            tls: None,
            initial_delay_set: false,
        }
    }

    /// The server address, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The id this client announces.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The reconnect policy.
    pub fn reconnect(&self) -> &ReconnectPolicy {
        &self.reconnect
    }

    /// The largest message accepted, both to send and to receive.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Whether the client connects over TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Where a client gets a token when it needs one: before its first connect, after the server
/// said `auth-expired` (the client keeps no token for later), and once after `auth-failed` or
/// `auth-required`. A provider that gives back the token just refused as expired stops the
/// client (`CloseReason::Rejected` with `auth-expired`) rather than have it retry forever. One call is in flight at a time. An `Err` (its text is for the
/// application's log: [`ConnectError::TokenProvider`](crate::ConnectError::TokenProvider)) counts
/// as a failed connect attempt, and the client backs off and asks again.
///
/// Any `Fn() -> impl Future<Output = Result<String, String>>` is one:
///
/// ```
/// use pulsewire::ClientConfig;
/// let config = ClientConfig::builder("127.0.0.1:7878", "desk-1")
///     .token_provider(|| async { Ok::<_, String>("a-fresh-token".to_owned()) })
///     .build()
///     .unwrap();
/// # let _ = config;
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// A token to authenticate with (never logged).
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(self())
    }
}

/// The configured token provider (its `Debug` says only whether there is one).
#[derive(Clone, Default)]
pub(crate) struct ProviderSlot(pub(crate) Option<Arc<dyn TokenProvider>>);

impl std::fmt::Debug for ProviderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(token provider)" } else { "None" })
    }
}

/// Builds a [`ClientConfig`]; every setter has a documented default.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a ClientConfig"]
pub struct ClientConfigBuilder {
    server: String,
    client_id: String,
    reconnect: ReconnectPolicy,
    max_payload: usize,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    close_timeout: Duration,
    outbox: OutboxLimits,
    resume: Option<ResumeState>,
    /// The token given, validated (`Some(None)`: not a valid token; `build` says so).
    token: Option<Option<Token>>,
    token_provider: ProviderSlot,
    tls: Option<ClientTls>,
    /// Whether the application chose the initial delay (else it follows a lower max delay).
    initial_delay_set: bool,
}

impl ClientConfigBuilder {
    /// The whole reconnect policy at once (default: [`ReconnectPolicy::default`]).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self.initial_delay_set = true;
        self
    }

    /// The base delay before the first retry (default 250 ms, or the max delay if that is
    /// lower).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.reconnect.initial_delay = delay;
        self.initial_delay_set = true;
        self
    }

    /// The largest delay between attempts (default 30 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.reconnect.max_delay = delay;
        self
    }

    /// The growth of the delay per failed attempt (default 2.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.reconnect.multiplier = multiplier;
        self
    }

    /// The randomised fraction of each delay, 0.0–1.0 (default 1.0, full jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.reconnect.jitter = jitter;
        self
    }

    /// Give up after this many attempts in one offline period (default: never).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.reconnect.max_attempts = Some(attempts);
        self
    }

    /// Give up once an offline period lasted this long (default: never).
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.reconnect.max_elapsed = Some(elapsed);
        self
    }

    /// The largest message, in bytes, this client sends or accepts (default 1 MiB). Keep it
    /// equal to the server's limit.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long one TCP connect may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may take to answer `HELLO` (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long [`Client::close`](crate::Client::close) may spend flushing queued messages and
    /// the `BYE` (default 1 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The outbox bounds: how many messages, and how many payload bytes, may wait to be written
    /// or acknowledged at once (default 1024 messages and 1 MiB). Beyond them
    /// [`Client::try_send`](crate::Client::try_send) refuses with
    /// [`SendError::Full`](crate::SendError::Full), and [`Client::send`](crate::Client::send)
    /// waits while online and refuses while offline.
    pub fn outbox(mut self, max_messages: usize, max_bytes: usize) -> Self {
        self.outbox = OutboxLimits { max_messages, max_bytes };
        self
    }

    /// Resumes a session saved by an earlier run of the application (see
    /// [`Client::resume_state`](crate::Client::resume_state)): the server replays what this
    /// client's application has not had, and takes what it sends next in order. A state the
    /// server no longer knows starts a fresh session, without an error.
    pub fn resume(mut self, state: ResumeState) -> Self {
        self.resume = Some(state);
        self
    }

    /// The token to authenticate with, sent in every `HELLO` (opaque to pulsewire: an API key,
    /// a JWT). A server with an authenticator refuses a peer without one (`auth-required`), with
    /// a wrong one (`auth-failed`), an expired one (`auth-expired`) or one whose subject may not
    /// use this client id (`forbidden`): each ends the client with
    /// [`CloseReason::Rejected`](crate::CloseReason::Rejected), since the same token would be refused again.
    /// It is never logged.
    ///
    /// ```
    /// use pulsewire::ClientConfig;
    /// let config = ClientConfig::builder("127.0.0.1:7878", "desk-42").token("s3cret").build().unwrap();
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// assert!(ClientConfig::builder("127.0.0.1:7878", "desk-42").token("two words").build().is_err());
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token::new(token.into()));
        self
    }

    /// Gets tokens from `provider` (see [`TokenProvider`]) instead of one fixed token: an
    /// expired credential is replaced and the session resumes, nothing lost; a refused one is
    /// asked for once more before the client stops.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token_provider = ProviderSlot(Some(Arc::new(provider)));
        self
    }

    /// Connects over TLS (default: plaintext), trusting what `tls` trusts and checking the
    /// server's certificate against the host of the server address (a DNS name or an IP
    /// address) unless [`ClientTls::server_name`] names another. The TLS handshake counts in
    /// the connect timeout; a failed one is [`ConnectError::Tls`](crate::ConnectError::Tls).
    ///
    /// ```
    /// use pulsewire::{tls::ClientTls, ClientConfig};
    /// let config = ClientConfig::builder("example.com:7879", "desk-42").tls(ClientTls::webpki_roots()).build().unwrap();
    /// assert!(config.uses_tls());
    /// let bad = ClientConfig::builder("127.0.0.1:7879", "desk-42")
    ///     .tls(ClientTls::webpki_roots().server_name("not a name"))
    ///     .build();
    /// assert!(bad.unwrap_err().to_string().contains("TLS server name"));
    /// ```
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Validates everything and returns the configuration.
    pub fn build(mut self) -> Result<ClientConfig, ConfigError> {
        if !self.initial_delay_set {
            self.reconnect.initial_delay = self.reconnect.initial_delay.min(self.reconnect.max_delay);
        }
        let client_id = ClientId::new(self.client_id).map_err(ConfigError::ClientId)?;
        validate_address(&self.server)?;
        self.reconnect.validate().map_err(ConfigError::Reconnect)?;
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("close timeout", self.close_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        validate_payload(self.max_payload)?;
        if self.outbox.max_messages == 0 {
            return Err(ConfigError::ZeroCount("outbox messages"));
        }
        if self.outbox.max_bytes < self.max_payload {
            return Err(ConfigError::OutOfRange { name: "outbox bytes", expected: "at least the max payload" });
        }
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                let name = tls.name_for(&self.server).map_err(ConfigError::ServerName)?;
                Some(TlsTarget { config: tls.config.clone(), name })
            }
        };
        Ok(ClientConfig {
            tls,
            server: self.server,
            client_id,
            reconnect: self.reconnect,
            max_payload: self.max_payload,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            outbox: self.outbox,
            resume: self.resume,
            token_provider: self.token_provider,
            token: match self.token {
                None => None,
                Some(Some(token)) => Some(token),
                Some(None) => {
                    return Err(ConfigError::OutOfRange {
                        name: "token",
                        expected: "1 to 3856 printable ASCII characters without spaces",
                    })
                }
            },
        })
    }
}

fn validate_address(addr: &str) -> Result<(), ConfigError> {
    let port = addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(ConfigError::Address(addr.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = ClientConfig::builder("localhost:7878", "a").build().unwrap();
        assert_eq!(config.max_payload(), DEFAULT_MAX_PAYLOAD);
        assert_eq!(config.reconnect(), &ReconnectPolicy::default());
    }

    #[test]
    fn bad_values_are_rejected_with_a_precise_error() {
        let base = || ClientConfig::builder("127.0.0.1:7878", "desk");
        let cases = [
            (base().connect_timeout(Duration::ZERO).build(), "connect timeout must be above zero"),
            (base().outbox(0, 1 << 20).build(), "outbox messages must be at least 1"),
            (base().outbox(8, 100).build(), "outbox bytes must be at least the max payload"),
            (base().max_payload(0).build(), "max payload 0"),
            (base().jitter(2.0).build(), "jitter 2"),
            (base().multiplier(0.5).build(), "multiplier 0.5"),
            (base().initial_delay(Duration::from_secs(60)).build(), "initial delay"),
            (base().max_attempts(0).build(), "max attempts"),
            (ClientConfig::builder("127.0.0.1", "desk").build(), "not host:port"),
            (ClientConfig::builder("127.0.0.1:0", "desk").build(), "not host:port"),
            (ClientConfig::builder(":80", "desk").build(), "not host:port"),
            (ClientConfig::builder("h:1", "").build(), "client id"),
        ];
        for (result, expected) in cases {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn default_initial_delay_follows_a_lower_max_delay() {
        let config = ClientConfig::builder("h:1", "a").max_delay(Duration::from_millis(100)).build().unwrap();
        assert_eq!(config.reconnect().initial_delay, Duration::from_millis(100));
        let explicit = ClientConfig::builder("h:1", "a")
            .initial_delay(Duration::from_millis(300))
            .max_delay(Duration::from_millis(100))
            .build();
        assert!(explicit.is_err(), "an explicit initial delay above the max is an error");
    }

    #[test]
    fn ipv6_and_hostnames_are_accepted() {
        assert!(ClientConfig::builder("[::1]:7878", "a").build().is_ok());
        assert!(ClientConfig::builder("example.com:443", "a").build().is_ok());
    }
}
