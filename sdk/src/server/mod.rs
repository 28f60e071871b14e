//! The server engine: accept loop, handshakes, the online list's owner (the hub, which is also
//! the one pulse loop), and one task per connection.

mod admission;
mod config;
mod conn;
mod hub;
mod peer;

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{self, Either};
use futures::Stream;

use crate::error::{IoError, ProtocolViolation};
use crate::protocol::{ClientId, ErrorCode};
use crate::rt;

pub use crate::core::{KeptSession, PeerInfo, Undelivered};
pub use config::{ServerConfig, ServerConfigBuilder};
use hub::HubMsg;

/// A running server. Cheap to clone; every clone controls the same server. When the last
/// handle is dropped the server shuts down as [`Server::shutdown`] would, in the background.
///
/// ```
/// use pulsewire::{Server, ServerConfig};
///
/// futures::executor::block_on(async {
///     let config = ServerConfig::builder().listen("127.0.0.1:0".parse().unwrap()).build().unwrap();
///     let (server, _events) = Server::bind(config).await.expect("bind");
///     assert!(server.online().await.is_empty());
///     server.shutdown().await;
///     assert_eq!(server.live_tasks(), 0);
/// });
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    config: Arc<ServerConfig>,
    hub: async_channel::Sender<HubMsg>,
    /// Closed to stop: no more accepts or handshakes, every peer gets `BYE shutdown`.
    stop: async_channel::Sender<()>,
    /// Closed when the grace period is over: every connection still open is cut.
    halt: async_channel::Sender<()>,
    tracker: Tracker,
    gate: admission::Gate,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.close();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.inner.local_addr).finish()
    }
}

impl Server {
    /// Binds the listening socket and starts the server's tasks on the built-in (async-std)
    /// executor. Returns the handle and the stream of server events.
    pub async fn bind(config: ServerConfig) -> std::io::Result<(Server, ServerEvents)> {
        let plaintext = if config.plaintext { Some(rt::bind(config.listen)?) } else { None };
        let tls = match &config.tls {
            Some((addr, tls)) => Some((rt::bind(*addr)?, tls.config.clone())),
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(listener, _)| listener.local_addr()).transpose()?;
        let local_addr = match &plaintext {
            Some(listener) => listener.local_addr()?,
            // The configuration has at least one listener.
            None => tls_addr.expect("a TLS listener when there is no plaintext one"),
        };
        let config = Arc::new(config);
        // Unbounded, and bounded all the same: each connection sends the hub one `Join` and
        // one `Leave`, and the application's requests wait for their answers.
        let (hub_tx, hub_rx) = async_channel::unbounded();
        let (event_tx, event_rx) = async_channel::unbounded();
        let (stop_tx, stop_rx) = async_channel::bounded(1);
        let (halt_tx, halt_rx) = async_channel::bounded(1);
        let hub_halt = halt_rx.clone();
        let tracker = Tracker::new();
        let gate =
            admission::Gate::new(admission::Admission::new(config.max_connections_per_ip, config.max_handshakes));
        let ctx = Arc::new(conn::Context {
            config: config.clone(),
            hub: hub_tx.clone(),
            events: event_tx.clone(),
            stop: stop_rx.clone(),
            halt: halt_rx,
            tracker: tracker.clone(),
            keys: AtomicU64::new(0),
            gate: gate.clone(),
        });
        let hub_guard = tracker.guard();
        let hub_config = config.clone();
        rt::spawn(async move {
            hub::run(hub_config, hub_rx, event_tx, stop_rx, hub_halt).await;
            drop(hub_guard);
        });
        let listeners = plaintext.map(|listener| (listener, None)).into_iter();
        for (listener, tls) in listeners.chain(tls.map(|(listener, tls)| (listener, Some(tls)))) {
            let accept_guard = tracker.guard();
            let ctx = ctx.clone();
            rt::spawn(async move {
                conn::accept_loop(listener, tls, ctx).await;
                drop(accept_guard);
            });
        }
        match tls_addr {
            Some(tls_addr) if config.plaintext => {
                tracing::info!(%local_addr, %tls_addr, interval = ?config.interval, max_missed = config.max_missed, "listening")
            }
            Some(tls_addr) => {
                tracing::info!(%tls_addr, interval = ?config.interval, max_missed = config.max_missed, "listening, TLS only")
            }
            None => {
                tracing::info!(%local_addr, interval = ?config.interval, max_missed = config.max_missed, "listening")
            }
        }
        let inner = Inner { local_addr, tls_addr, config, hub: hub_tx, stop: stop_tx, halt: halt_tx, tracker, gate };
        Ok((Server { inner: Arc::new(inner) }, ServerEvents { rx: Box::pin(event_rx) }))
    }

    /// The address the server listens on (with the real port when it was bound to port 0):
    /// the plaintext listener's, or the TLS listener's when there is no plaintext one.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address of the TLS listener, if there is one (with its real port).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.inner.tls_addr
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// A snapshot of the online list, sorted by client id (empty once the server stopped).
    pub async fn online(&self) -> Vec<PeerInfo> {
        let (reply, answer) = oneshot::channel();
        if self.inner.hub.send(HubMsg::Online { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Queues a message for `peer`, online or detached (its session kept, waiting for it to
    /// resume), and returns its number in the session: the peer's
    /// [`ServerEvent::Delivered`] reaches it, or the session's end hands it back in
    /// [`ServerEvent::PeerOffline`]. A protocol 1 peer's messages are not numbered (0) and not
    /// acknowledged. Never waits on the peer: a full session refuses at once, and every refusal
    /// hands the payload back.
    pub async fn send(&self, peer: &ClientId, payload: impl Into<Bytes>) -> Result<u64, ServerSendError> {
        let payload = payload.into();
        let (reply, answer) = oneshot::channel();
        let msg = HubMsg::SendTo { peer: peer.clone(), payload: payload.clone(), reply };
        if self.inner.hub.send(msg).await.is_err() {
            return Err(ServerSendError::Stopped(payload));
        }
        answer.await.unwrap_or(Err(ServerSendError::Stopped(payload)))
    }

    /// Queues a message for every peer, online or detached; returns how many sessions took it
    /// (full ones are skipped).
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> usize {
        let (reply, answer) = oneshot::channel();
        if self.inner.hub.send(HubMsg::Broadcast { payload: payload.into(), reply }).await.is_err() {
            return 0;
        }
        answer.await.unwrap_or(0)
    }

    /// The detached sessions: peers whose connection was lost and whose session is kept,
    /// with the time each has left (empty once the server stopped).
    pub async fn detached(&self) -> Vec<KeptSession> {
        let (reply, answer) = oneshot::channel();
        if self.inner.hub.send(HubMsg::Detached { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Fault injection, for tests and demos: cuts every connection at once, without a word, as
    /// a failed network would; their sessions are kept as for any lost connection. Returns how
    /// many were cut.
    pub async fn drop_connections(&self) -> usize {
        let (reply, answer) = oneshot::channel();
        if self.inner.hub.send(HubMsg::DropConnections { reply }).await.is_err() {
            return 0;
        }
        answer.await.unwrap_or(0)
    }

    /// How many connections are in their handshake right now: accepted, no `HELLO` received
    /// yet. Never above [`ServerConfig::max_handshakes`].
    pub fn handshakes_in_flight(&self) -> usize {
        self.inner.gate.handshakes()
    }

    /// How many of the server's tasks are running (accept loop, hub, one per connection): 0 once [`Server::shutdown`] returned.
    pub fn live_tasks(&self) -> usize {
        self.inner.tracker.live()
    }

    /// Stops the server: no new connections, `BYE shutdown` to every peer, then waits for every
    /// connection to close — for the shutdown grace at most, after which the remaining ones are
    /// cut. When it returns, no task of the server runs and no socket is open.
    pub async fn shutdown(&self) {
        self.inner.stop.close();
        let grace = self.inner.config.shutdown_grace;
        if rt::timeout(grace, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!(live = self.inner.tracker.live(), "shutdown grace over: cutting the remaining connections");
            self.inner.halt.close();
            self.inner.tracker.wait().await;
        }
        tracing::info!("server stopped");
    }

    /// Stops the server at once, the way a crash looks to its peers: every connection is cut
    /// without `BYE`, so clients notice the loss from the socket and reconnect as they would
    /// after a `kill -9`. Meant for fault injection in demos and tests; [`Server::shutdown`] is
    /// the graceful stop. When it returns, no task of the server runs and no socket is open.
    pub async fn abort(&self) {
        self.inner.halt.close();
        self.inner.stop.close();
        self.inner.tracker.wait().await;
        tracing::warn!("server aborted");
    }
}

/// Why [`Server::send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerSendError {
    /// No peer has this id online, and no session is kept for it.
    NotOnline(Bytes),
    /// The peer's session holds its limit of unacknowledged messages or bytes (or, for a
    /// protocol 1 peer, its socket has not taken what was written).
    Full(Bytes),
    /// The server has stopped.
    Stopped(Bytes),
}

impl ServerSendError {
    /// The payload, handed back.
    pub fn into_payload(self) -> Bytes {
        match self {
            ServerSendError::NotOnline(payload)
            | ServerSendError::Full(payload)
            | ServerSendError::Stopped(payload) => payload,
        }
    }
}

impl fmt::Display for ServerSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerSendError::NotOnline(_) => f.write_str("not sent: no such peer online"),
            ServerSendError::Full(_) => f.write_str("not sent: the peer's session is full"),
            ServerSendError::Stopped(_) => f.write_str("not sent: the server has stopped"),
        }
    }
}

impl std::error::Error for ServerSendError {}

/// Something that happened on the server.
///
/// A peer's life reads `PeerOnline`, then any number of `PeerDetached` / `PeerOnline {
/// resumed: true }` pairs (its connection was lost and its session resumed), then one
/// `PeerOffline` when its session ends. Every message [`Server::send`] accepted for a protocol 2
/// peer ends in exactly one of [`ServerEvent::Delivered`] and the `undelivered` list of
/// [`ServerEvent::PeerOffline`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A peer completed the handshake and is in the online list.
    PeerOnline {
        /// The peer.
        peer: PeerInfo,
        /// Whether it resumed its session (protocol 2): nothing was lost or duplicated while
        /// it was away.
        resumed: bool,
    },
    /// A protocol 2 peer's connection was lost; its session is kept for the configured
    /// [`keep`](crate::ServerConfigBuilder::keep), and messages sent to it meanwhile are queued.
    PeerDetached {
        /// The peer as it was last.
        peer: PeerInfo,
        /// Why the connection ended.
        reason: OfflineReason,
    },
    /// A peer's session ended: it left, was evicted or replaced, or its detached session
    /// was not resumed in time.
    PeerOffline {
        /// The peer as it was last.
        peer: PeerInfo,
        /// Why it left (for an expired session: why its connection was lost).
        reason: OfflineReason,
        /// The messages sent to it that it never acknowledged, in order;
        /// `maybe_delivered` says which ones were written and may have arrived.
        undelivered: Vec<Undelivered>,
    },
    /// A message from a peer, handed over once and in order per session.
    Message {
        /// The sender.
        peer: ClientId,
        /// Its number in the session (0 for a volatile or protocol 1 message).
        seq: u64,
        /// The bytes.
        payload: Bytes,
    },
    /// A peer acknowledged the messages sent to it, up to `up_to` (cumulative; protocol 2).
    Delivered {
        /// The peer.
        peer: ClientId,
        /// The highest message number its application has.
        up_to: u64,
    },
}

/// Why a peer left the online list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfflineReason {
    /// The peer said `BYE` (with its word).
    Goodbye {
        /// The peer's reason word.
        reason: String,
    },
    /// Evicted: its miss count exceeded the limit.
    Timeout {
        /// The miss count.
        misses: u32,
    },
    /// Dropped: its outbound queue was full when a pulse was due.
    Stalled,
    /// Dropped: a write to it blocked past the write timeout.
    WriteTimeout,
    /// A new connection with the same id replaced it.
    Replaced,
    /// Its session resumed on a new connection (the old one was still attached: a half-open
    /// link the server had not noticed yet).
    Resumed,
    /// It closed the connection without `BYE`.
    Eof,
    /// Its connection was reset.
    Reset,
    /// Another socket error.
    Io(IoError),
    /// It broke the protocol and was sent `ERROR`.
    Protocol(ProtocolViolation),
    /// It sent `ERROR`.
    PeerError {
        /// The code.
        code: ErrorCode,
        /// Its text.
        text: String,
    },
    /// The server is shutting down.
    Shutdown,
    /// Its credential expired while it was connected (past the grace), and it was sent
    /// `ERROR auth-expired`; its session is kept, for the resume with a new credential.
    AuthExpired,
    /// Its TLS session failed: a record that does not decrypt, an alert (rustls' text).
    Tls(String),
}

impl OfflineReason {
    /// A stable machine word for the reason, for logs and JSON: `goodbye`, `timeout`,
    /// `stalled`, `write-timeout`, `replaced`, `resumed`, `eof`, `reset`, `io`, `protocol`,
    /// `peer-error`, `shutdown`, `auth-expired`.
    ///
    /// ```
    /// use pulsewire::OfflineReason;
    /// assert_eq!(OfflineReason::Timeout { misses: 4 }.word(), "timeout");
    /// ```
    pub fn word(&self) -> &'static str {
        match self {
            OfflineReason::Goodbye { .. } => "goodbye",
            OfflineReason::Timeout { .. } => "timeout",
            OfflineReason::Stalled => "stalled",
            OfflineReason::WriteTimeout => "write-timeout",
            OfflineReason::Replaced => "replaced",
            OfflineReason::Resumed => "resumed",
            OfflineReason::Eof => "eof",
            OfflineReason::Reset => "reset",
            OfflineReason::Io(_) => "io",
            OfflineReason::Protocol(_) => "protocol",
            OfflineReason::PeerError { .. } => "peer-error",
            OfflineReason::Shutdown => "shutdown",
            OfflineReason::AuthExpired => "auth-expired",
            OfflineReason::Tls(_) => "tls",
        }
    }

    fn from_io(error: &std::io::Error) -> OfflineReason {
        use std::io::ErrorKind::*;
        match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => OfflineReason::Reset,
            UnexpectedEof => OfflineReason::Eof,
            _ => OfflineReason::Io(IoError::from(error)),
        }
    }
}

impl fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflineReason::Goodbye { reason } => write!(f, "goodbye ({reason})"),
            OfflineReason::Timeout { misses } => write!(f, "evicted after {misses} missed pulses"),
            OfflineReason::Stalled => f.write_str("dropped: not reading (outbound queue full)"),
            OfflineReason::WriteTimeout => f.write_str("dropped: write timed out"),
            OfflineReason::Replaced => f.write_str("replaced by a new connection with the same id"),
            OfflineReason::Resumed => f.write_str("its session resumed on a new connection"),
            OfflineReason::Eof => f.write_str("connection closed"),
            OfflineReason::Reset => f.write_str("connection reset"),
            OfflineReason::Io(error) => write!(f, "socket error: {error}"),
            OfflineReason::Protocol(violation) => write!(f, "protocol error: {violation}"),
            OfflineReason::PeerError { code, text } => write!(f, "peer sent error {code}: {text}"),
            OfflineReason::Shutdown => f.write_str("server shutdown"),
            OfflineReason::AuthExpired => f.write_str("its credential expired"),
            OfflineReason::Tls(why) => write!(f, "TLS failed: {why}"),
        }
    }
}

/// The server's events, in order, as a [`Stream`]; it ends after the server stopped.
///
/// Events are buffered without bound so that the server never waits for the application:
/// read them steadily, or drop the stream to ignore them.
#[derive(Debug)]
pub struct ServerEvents {
    rx: Pin<Box<async_channel::Receiver<ServerEvent>>>,
}

impl ServerEvents {
    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<ServerEvent> {
        self.rx.try_recv().ok()
    }
}

impl Stream for ServerEvents {
    type Item = ServerEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}

/// Counts the server's tasks and lets shutdown wait for the last one.
#[derive(Clone)]
pub(crate) struct Tracker(Arc<TrackerInner>);

struct TrackerInner {
    live: AtomicUsize,
    /// Every guard holds a clone; `all_done` fails once the origin and all clones are gone.
    origin: Mutex<Option<async_channel::Sender<()>>>,
    all_done: async_channel::Receiver<()>,
}

/// Held by a running task; dropping it marks the task finished.
pub(crate) struct TaskGuard {
    tracker: Arc<TrackerInner>,
    _alive: Option<async_channel::Sender<()>>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.tracker.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tracker {
    fn new() -> Tracker {
        let (origin, all_done) = async_channel::bounded(1);
        Tracker(Arc::new(TrackerInner { live: AtomicUsize::new(0), origin: Mutex::new(Some(origin)), all_done }))
    }

    pub(crate) fn guard(&self) -> TaskGuard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        let alive = self.0.origin.lock().unwrap_or_else(PoisonError::into_inner).clone();
        TaskGuard { tracker: self.0.clone(), _alive: alive }
    }

    fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Waits until every task that holds a guard has finished.
    async fn wait(&self) {
        drop(self.0.origin.lock().unwrap_or_else(PoisonError::into_inner).take());
        // `recv` fails once every sender (guard) is gone: that is the signal.
        let _ = self.0.all_done.recv().await;
    }
}

/// Runs `task` unless `signal` closes first; the signal is checked before each step of the
/// task, so a signalled task makes no further progress.
pub(crate) async fn unless<F: std::future::Future>(signal: &async_channel::Receiver<()>, task: F) -> Option<F::Output> {
    let task = std::pin::pin!(task);
    let signalled = std::pin::pin!(signal.recv());
    match future::select(signalled, task).await {
        Either::Left(_) => None,
        Either::Right((output, _)) => Some(output),
    }
}

/// How long a closing connection waits for the peer to read our last frame and close its side.
pub(crate) const LINGER: Duration = Duration::from_millis(250);
