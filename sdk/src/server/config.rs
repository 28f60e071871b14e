//! The server's configuration and its builder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::core::{DetachedLimits, SessionLimits, DEFAULT_DETACHED_BYTES, DEFAULT_KEEP};
use crate::error::{validate_payload, ConfigError};
use crate::protocol::DEFAULT_MAX_PAYLOAD;
use crate::tls::ServerTls;

/// The server's settings, validated. Build one with [`ServerConfig::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) interval: Duration,
    pub(crate) max_missed: u32,
    pub(crate) max_payload: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) outbound_queue: usize,
    pub(crate) write_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) max_peers: usize,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) max_handshakes: usize,
    pub(crate) keep: Duration,
    pub(crate) session_limits: SessionLimits,
    /// `None`: twice the max peers.
    pub(crate) detached_sessions: Option<usize>,
    pub(crate) detached_bytes: usize,
    pub(crate) authenticator: AuthSlot,
    /// Tokens accepted over plaintext from non-loopback peers.
    pub(crate) plaintext_tokens: bool,
    pub(crate) auth_grace: Duration,
    /// Whether the plaintext listener runs.
    pub(crate) plaintext: bool,
    /// The TLS listener, if any.
    pub(crate) tls: Option<(SocketAddr, ServerTls)>,
}

/// The configured authenticator (its `Debug` says only whether there is one).
#[derive(Clone, Default)]
pub(crate) struct AuthSlot(pub(crate) Option<Arc<dyn Authenticator>>);

impl std::fmt::Debug for AuthSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(authenticator)" } else { "None" })
    }
}

/// The default of [`ServerConfigBuilder::max_peers`].
pub(crate) const DEFAULT_MAX_PEERS: usize = 100_000;
/// The default of [`ServerConfigBuilder::max_handshakes`].
pub(crate) const DEFAULT_MAX_HANDSHAKES: usize = 4096;

impl ServerConfig {
    /// Starts a configuration with every default: listen on `127.0.0.1:7878`, pulse every
    /// second, evict after 3 missed pulses, accept payloads of up to 1 MiB, hold at most 100 000
    /// peers and 4096 handshakes in flight, with no limit per address.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pulsewire::ServerConfig;
    ///
    /// let config = ServerConfig::builder()
    ///     .listen("0.0.0.0:9000".parse().unwrap())
    ///     .interval(Duration::from_millis(500))
    ///     .max_missed(4)
    ///     .build()
    ///     .expect("valid config");
    /// assert_eq!(config.interval(), Duration::from_millis(500));
    ///
    /// let error = ServerConfig::builder().interval(Duration::from_micros(10)).build().unwrap_err();
    /// assert!(error.to_string().contains("interval"));
    /// ```
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder {
            config: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
                interval: Duration::from_secs(1),
                max_missed: 3,
                max_payload: DEFAULT_MAX_PAYLOAD,
                handshake_timeout: Duration::from_secs(5),
                outbound_queue: 64,
                write_timeout: Duration::from_secs(5),
                shutdown_grace: Duration::from_millis(500),
                max_peers: DEFAULT_MAX_PEERS,
                max_connections_per_ip: None,
                max_handshakes: DEFAULT_MAX_HANDSHAKES,
                keep: DEFAULT_KEEP,
                session_limits: SessionLimits::default(),
                detached_sessions: None,
                detached_bytes: DEFAULT_DETACHED_BYTES,
                authenticator: AuthSlot::default(),
                plaintext_tokens: false,
                auth_grace: crate::core::DEFAULT_AUTH_GRACE,
                plaintext: true,
                tls: None,
            },
        }
    }

    /// The address of the plaintext listener.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The address of the TLS listener, if there is one.
    pub fn tls_listen(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(addr, _)| *addr)
    }

    /// Whether the plaintext listener runs (see [`ServerConfigBuilder::plaintext`]).
    pub fn plaintext(&self) -> bool {
        self.plaintext
    }

    /// The pulse interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The miss limit: a peer is evicted when its miss count exceeds it.
    pub fn max_missed(&self) -> u32 {
        self.max_missed
    }

    /// The largest `DATA` payload accepted from a peer.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The most peers that may be online at once.
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// The most connections one IP address may hold, if limited.
    pub fn max_connections_per_ip(&self) -> Option<usize> {
        self.max_connections_per_ip
    }

    /// The most connections that may be in their handshake at once.
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
    }

    /// How long a protocol 2 session is kept after its connection is lost.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// The bounds of each session: messages and payload bytes written but not acknowledged,
    /// or queued while the peer is away.
    pub fn session_limits(&self) -> SessionLimits {
        self.session_limits
    }

    /// Whether peers must authenticate (an authenticator is configured): then every peer must
    /// speak protocol 2, and an id can be taken over only by the same subject.
    pub fn requires_auth(&self) -> bool {
        self.authenticator.0.is_some()
    }

    /// The bounds of all detached sessions together.
    pub fn detached_limits(&self) -> DetachedLimits {
        DetachedLimits {
            max_sessions: self.detached_sessions.unwrap_or(self.max_peers.saturating_mul(2)),
            max_bytes: self.detached_bytes,
        }
    }
}

/// Builds a [`ServerConfig`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a ServerConfig"]
pub struct ServerConfigBuilder {
    config: ServerConfig,
}

impl ServerConfigBuilder {
    /// The address to listen on (default `127.0.0.1:7878`; port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// The pulse interval, whole milliseconds from 1 ms to 1 hour (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// How many pulse ticks in a row a peer may stay silent; one more and it is evicted
    /// (default 3, at least 1).
    pub fn max_missed(mut self, max_missed: u32) -> Self {
        self.config.max_missed = max_missed;
        self
    }

    /// The largest message, in bytes, accepted from a peer (default 1 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }

    /// How long a new connection may take to send `HELLO` (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// How many frames may wait for one peer's socket to take them (default 64). A peer so slow
    /// that this many wait when a pulse is due is dropped, so that it never delays the others.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.outbound_queue = frames;
        self
    }

    /// How long one write to a peer may block before the peer is dropped (default 5 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long [`Server::shutdown`](crate::Server::shutdown) lets connections say goodbye
    /// before cutting them (default 500 ms).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// The most peers that may be online at once (default 100 000 — in practice the process's open-file limit binds first — at least 1). A `HELLO` that
    /// would take the online list past it is answered `ERROR full` and closed; the SDK client
    /// takes that as a reason to back off and try again. A `HELLO` whose id is already online
    /// is never refused for this reason: it replaces the old connection, and the count stays.
    ///
    /// ```
    /// use pulsewire::ServerConfig;
    ///
    /// let config = ServerConfig::builder().max_peers(500).build().unwrap();
    /// assert_eq!(config.max_peers(), 500);
    /// assert!(ServerConfig::builder().max_peers(0).build().is_err());
    /// ```
    pub fn max_peers(mut self, peers: usize) -> Self {
        self.config.max_peers = peers;
        self
    }

    /// The most connections one IP address may hold at once, in their handshake or online
    /// (default: no limit, at least 1 when set). A connection beyond it is answered
    /// `ERROR full too many connections from <ip> (limit <n>)` and closed before its `HELLO` is
    /// read. Keep it generous: many desktops behind one NAT share an address.
    ///
    /// ```
    /// use pulsewire::ServerConfig;
    ///
    /// let config = ServerConfig::builder().max_connections_per_ip(16).build().unwrap();
    /// assert_eq!(config.max_connections_per_ip(), Some(16));
    /// assert_eq!(ServerConfig::builder().build().unwrap().max_connections_per_ip(), None);
    /// ```
    pub fn max_connections_per_ip(mut self, connections: usize) -> Self {
        self.config.max_connections_per_ip = Some(connections);
        self
    }

    /// The most connections that may be in their handshake at once: accepted, no `HELLO`
    /// received yet (default 4096, as many as the listen backlog holds, so that a reconnect storm is not refused; at least 1). A connection beyond it is answered
    /// `ERROR full too many handshakes in flight (limit <n>)` and closed, so that peers that
    /// connect and never speak (slowloris) hold at most this many connections, each for at most
    /// the handshake timeout. At most as many refusals are under way at once; beyond that a new
    /// connection is closed without a word.
    pub fn max_handshakes(mut self, handshakes: usize) -> Self {
        self.config.max_handshakes = handshakes;
        self
    }

    /// How long a protocol 2 session is kept after its connection is lost, waiting for the peer
    /// to resume it (default 120 s; zero keeps none). Messages sent to the peer meanwhile are
    /// queued in the session; when the time passes, the session ends and they go back to the
    /// application in [`ServerEvent::PeerOffline`](crate::ServerEvent::PeerOffline).
    pub fn keep(mut self, keep: Duration) -> Self {
        self.config.keep = keep;
        self
    }

    /// The bounds of each session (default 256 messages and 256 KiB): written and not yet
    /// acknowledged, plus queued while detached. Beyond them
    /// [`Server::send`](crate::Server::send) refuses at once with the payload back.
    pub fn session_limits(mut self, max_messages: usize, max_bytes: usize) -> Self {
        self.config.session_limits = SessionLimits { max_messages, max_bytes };
        self
    }

    /// The bounds of all detached sessions together (default twice the max peers, and
    /// 64 MiB): beyond them the detached session nearest its end is ended early.
    pub fn detached_limits(mut self, max_sessions: usize, max_bytes: usize) -> Self {
        self.config.detached_sessions = Some(max_sessions);
        self.config.detached_bytes = max_bytes;
        self
    }

    /// Authenticates every peer with `authenticator` (see [`crate::auth`]): its `HELLO` must be
    /// protocol 2 (a `HELLO 1` gets `ERROR version`), the authenticator turns it into a
    /// subject or an `ERROR` code, an online id can be taken over only by the same subject
    /// (another gets `ERROR forbidden`, and the online peer is untouched), and a session
    /// resumes only for the same subject. Without one, every peer is anonymous and any `HELLO`
    /// for an online id replaces it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use pulsewire::auth::TokenFile;
    /// use pulsewire::ServerConfig;
    ///
    /// let tokens = TokenFile::parse("desk-1 alice s3cret-token\n").unwrap();
    /// let config = ServerConfig::builder().authenticator(Arc::new(tokens)).build().unwrap();
    /// assert!(config.requires_auth());
    /// ```
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.config.authenticator = AuthSlot(Some(authenticator));
        self
    }

    /// Accepts tokens over plaintext from peers beyond loopback (default: refused with
    /// `ERROR tls-required`, since anyone on the path could read the token and use it).
    pub fn allow_plaintext_tokens(mut self, allow: bool) -> Self {
        self.config.plaintext_tokens = allow;
        self
    }

    /// How long past its credential's expiry an authenticated peer may stay connected (default
    /// 25 s): then it gets `ERROR auth-expired` and is closed, and its session is kept for the
    /// resume with a new credential. The peer learns the expiry from its `WELCOME` (`exp=`).
    pub fn auth_grace(mut self, grace: Duration) -> Self {
        self.config.auth_grace = grace;
        self
    }

    /// Listens for TLS on `addr` too, with `tls`'s certificate (see [`crate::tls`]): the same
    /// server, online list and sessions, reached over TLS. A first byte there that is not a
    /// TLS handshake record gets `ERROR tls-required` in plaintext and a close; the TLS
    /// handshake counts in the handshake timeout. A token that comes over TLS is accepted from
    /// any address.
    ///
    /// ```
    /// use pulsewire::{tls::ServerTls, ServerConfig};
    /// # let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    /// # let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
    /// let tls = ServerTls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    /// let config = ServerConfig::builder()
    ///     .tls("0.0.0.0:7879".parse().unwrap(), tls)
    ///     .plaintext(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(config.tls_listen(), Some("0.0.0.0:7879".parse().unwrap()));
    /// assert!(ServerConfig::builder().plaintext(false).build().is_err(), "no listener at all");
    /// ```
    pub fn tls(mut self, addr: SocketAddr, tls: ServerTls) -> Self {
        self.config.tls = Some((addr, tls));
        self
    }

    /// Whether the plaintext listener (see [`ServerConfigBuilder::listen`]) runs (default
    /// true). Switch it off to serve TLS only.
    pub fn plaintext(mut self, plaintext: bool) -> Self {
        self.config.plaintext = plaintext;
        self
    }

    /// Validates everything and returns the configuration.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        let config = self.config;
        if !config.plaintext && config.tls.is_none() {
            return Err(ConfigError::OutOfRange { name: "listeners", expected: "plaintext, TLS or both" });
        }
        let ms = config.interval.as_millis();
        if ms == 0 || ms > 3_600_000 || config.interval.subsec_nanos() % 1_000_000 != 0 {
            return Err(ConfigError::OutOfRange {
                name: "interval",
                expected: "a whole number of milliseconds from 1 ms to 1 h",
            });
        }
        if config.max_missed == 0 {
            return Err(ConfigError::ZeroCount("max missed"));
        }
        if config.max_peers == 0 {
            return Err(ConfigError::ZeroCount("max peers"));
        }
        if config.max_connections_per_ip == Some(0) {
            return Err(ConfigError::ZeroCount("max connections per ip"));
        }
        if config.max_handshakes == 0 {
            return Err(ConfigError::ZeroCount("max handshakes"));
        }
        if config.outbound_queue < 2 {
            return Err(ConfigError::OutOfRange { name: "outbound queue", expected: "at least 2 frames" });
        }
        for (name, value) in [
            ("handshake timeout", config.handshake_timeout),
            ("write timeout", config.write_timeout),
            ("shutdown grace", config.shutdown_grace),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        validate_payload(config.max_payload)?;
        if config.session_limits.max_messages == 0 {
            return Err(ConfigError::ZeroCount("session messages"));
        }
        if config.session_limits.max_bytes == 0 {
            return Err(ConfigError::ZeroCount("session bytes"));
        }
        if config.detached_sessions == Some(0) {
            return Err(ConfigError::ZeroCount("detached sessions"));
        }
        if config.detached_bytes < config.session_limits.max_bytes {
            return Err(ConfigError::OutOfRange {
                name: "detached bytes",
                expected: "at least the bytes of one session",
            });
        }
        if config.keep > Duration::from_secs(86_400) {
            return Err(ConfigError::OutOfRange { name: "keep", expected: "at most 24 h" });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_rejected_with_a_precise_error() {
        let cases = [
            (ServerConfig::builder().interval(Duration::ZERO).build(), "interval must be"),
            (ServerConfig::builder().interval(Duration::from_micros(1500)).build(), "interval must be"),
            (ServerConfig::builder().interval(Duration::from_secs(7200)).build(), "interval must be"),
            (ServerConfig::builder().max_missed(0).build(), "max missed must be at least 1"),
            (ServerConfig::builder().outbound_queue(1).build(), "outbound queue"),
            (ServerConfig::builder().handshake_timeout(Duration::ZERO).build(), "handshake timeout"),
            (ServerConfig::builder().max_payload(0).build(), "max payload"),
            (ServerConfig::builder().max_peers(0).build(), "max peers must be at least 1"),
            (ServerConfig::builder().max_connections_per_ip(0).build(), "max connections per ip must be at least 1"),
            (ServerConfig::builder().max_handshakes(0).build(), "max handshakes must be at least 1"),
            (ServerConfig::builder().session_limits(0, 1024).build(), "session messages must be at least 1"),
            (ServerConfig::builder().session_limits(8, 0).build(), "session bytes must be at least 1"),
            (ServerConfig::builder().detached_limits(0, 1 << 30).build(), "detached sessions must be at least 1"),
            (ServerConfig::builder().detached_limits(8, 10).build(), "detached bytes must be at least"),
            (ServerConfig::builder().keep(Duration::from_secs(100_000)).build(), "keep must be at most 24 h"),
        ];
        for (result, expected) in cases {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        assert!(ServerConfig::builder().build().is_ok());
    }

    #[test]
    fn limits_have_documented_defaults_and_can_be_set() {
        let defaults = ServerConfig::builder().build().unwrap();
        assert_eq!(defaults.max_peers(), DEFAULT_MAX_PEERS);
        assert_eq!(defaults.max_connections_per_ip(), None);
        assert_eq!(defaults.max_handshakes(), DEFAULT_MAX_HANDSHAKES);
        let set = ServerConfig::builder().max_peers(1).max_connections_per_ip(1).max_handshakes(1).build().unwrap();
        assert_eq!((set.max_peers(), set.max_connections_per_ip(), set.max_handshakes()), (1, Some(1), 1));
        assert_eq!(defaults.keep(), Duration::from_secs(120));
        assert_eq!(defaults.session_limits(), SessionLimits { max_messages: 256, max_bytes: 256 * 1024 });
        assert_eq!(defaults.detached_limits(), DetachedLimits { max_sessions: 200_000, max_bytes: 64 << 20 });
    }
}
