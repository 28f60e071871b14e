//! The accept loop and the one task per connection: handshake, then reading (and writing what
//! the socket did not take at once), then a lingering close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::Poll;

use futures::future::poll_fn;
use futures::Future;

use super::TaskGuard;

use super::admission::{Admitted, Gate, Slot};
use super::hub::HubMsg;
use super::peer::{Hello, Outgoing, Peer, Tls, TlsInput};
use super::{unless, OfflineReason, ServerConfig, ServerEvent, Tracker, LINGER};
use crate::auth::{AuthError, AuthRequest, Principal};
use crate::core::{ConnEnd, ServerMachine, ServerMachineConfig, DEFAULT_ACK_DELAY};
use crate::protocol::{ErrorCode, Frame, MIN_PROTOCOL_VERSION};
use crate::rt::{self, Listener, Socket};

/// How long the accept loop pauses after an accept error (say, out of file descriptors), so
/// that it waits instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A connection stops reading while this many bytes of its answers wait for the socket: a
/// peer that probes faster than it reads waits on itself.
const READ_PAUSE: usize = 16 * 1024;
/// Reads per wake-up before the task lets others run.
const READS_PER_POLL: usize = 16;
/// Bytes read per system call between frames (on the stack: an idle connection holds no
/// buffer).
const READ_CHUNK: usize = 2048;
/// At most this much unread input is discarded while a closing connection lingers.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// What every connection task needs from its server.
pub(super) struct Context {
    pub(super) config: Arc<ServerConfig>,
    pub(super) hub: async_channel::Sender<HubMsg>,
    pub(super) events: async_channel::Sender<ServerEvent>,
    pub(super) stop: async_channel::Receiver<()>,
    pub(super) halt: async_channel::Receiver<()>,
    pub(super) tracker: Tracker,
    pub(super) keys: AtomicU64,
    /// The connection limits: the accept loop admits, each connection's slot releases.
    pub(super) gate: Gate,
}

/// Accepts connections on `listener`, TLS ones when `tls` is given.
pub(super) async fn accept_loop(listener: Listener, tls: Option<Arc<rustls::ServerConfig>>, ctx: Arc<Context>) {
    loop {
        let Some(accepted) = unless(&ctx.stop, listener.accept()).await else {
            break;
        };
        match accepted {
            Ok((stream, addr)) => {
                let guard = ctx.tracker.guard();
                match ctx.gate.admit(addr.ip()) {
                    Admitted::Handshake(slot) => {
                        let tls = match tls.as_ref().map(|config| Tls::new(config.clone())).transpose() {
                            Ok(tls) => tls,
                            Err(error) => {
                                tracing::error!(%addr, %error, "connection closed: the TLS configuration is refused");
                                stream.shutdown();
                                continue;
                            }
                        };
                        let key = ctx.keys.fetch_add(1, Ordering::Relaxed) + 1;
                        // The task's future is the connection itself, with nothing around it:
                        // a server holds one per peer.
                        rt::spawn(Conn::new(stream, tls, addr, key, slot, guard, ctx.clone()).serve());
                    }
                    Admitted::Refused(_slot, refusal) if tls.is_some() => {
                        // A plaintext `ERROR full` would read as "not TLS" to a TLS client, and
                        // a TLS handshake is the work being refused: close without a word (the
                        // client sees the server close during its handshake, and backs off).
                        tracing::warn!(%addr, %refusal, "connection refused");
                        stream.shutdown();
                    }
                    Admitted::Refused(slot, refusal) => {
                        let halt = ctx.halt.clone();
                        rt::spawn(async move {
                            let error = Frame::error(ErrorCode::Full, refusal.to_string());
                            if unless(&halt, reject(&stream, addr, error)).await.is_none() {
                                stream.shutdown();
                            }
                            drop(stream);
                            drop(slot);
                            drop(guard);
                        });
                    }
                    Admitted::Dropped => {
                        tracing::debug!(%addr, "connection closed at once: too many refusals under way");
                        stream.shutdown();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                if unless(&ctx.stop, rt::sleep(ACCEPT_BACKOFF)).await.is_none() {
                    break;
                }
            }
        }
    }
}

/// How the handshake phase of a connection ended.
enum Handshake {
    /// The peer sent its `HELLO`: authenticate it, then hand it to the hub.
    Hello(Hello),
    /// The connection ended before that.
    Ended(End),
}

/// Ends a connection.
async fn close(peer: &Peer, end: End, addr: SocketAddr, key: u64, joined: bool, ctx: &Context) {
    let leave = |reason| async move {
        if joined {
            let _ = ctx.hub.send(HubMsg::Leave { key, reason }).await;
        }
    };
    match end {
        End::Cut => peer.socket().shutdown(),
        End::Failed(reason) => {
            leave(reason).await;
            peer.socket().shutdown();
        }
        // The machine wrote its last frame: the hub took the peer out (evicted, replaced,
        // refused, shutdown), or the peer said goodbye or broke the protocol and gets our
        // `ERROR`. It may still be sending: read on while it gets our last frame, then close.
        End::Ended(reason) => {
            match reason {
                ConnEnd::Goodbye { reason } => leave(OfflineReason::Goodbye { reason }).await,
                ConnEnd::PeerError { code, text } => leave(OfflineReason::PeerError { code, text }).await,
                ConnEnd::Violation(violation) => {
                    tracing::warn!(%addr, %violation, "protocol error");
                    leave(OfflineReason::Protocol(violation)).await;
                }
                ConnEnd::HandshakeTimeout => tracing::warn!(%addr, "connection refused: no HELLO in time"),
                ConnEnd::Lost => leave(OfflineReason::Eof).await,
                ConnEnd::ClosedByServer => {}
                ConnEnd::CredentialExpired => {
                    tracing::info!(%addr, "connection closed: its credential expired");
                    leave(OfflineReason::AuthExpired).await;
                }
            }
            finish(peer, ctx).await;
        }
    }
}

/// How the life of a connection ended.
enum End {
    /// The server was aborted.
    Cut,
    /// The socket failed or reached end-of-file: nothing more can be said to the peer.
    Failed(OfflineReason),
    /// The machine ended the connection, and all it wrote is written.
    Ended(ConnEnd),
}

/// A connection's task: everything it holds for the connection's life, and nothing more.
struct Conn {
    peer: Arc<Peer>,
    ctx: Arc<Context>,
    addr: SocketAddr,
    /// Armed only while the machine has a deadline (the handshake, a delayed `ACK`), with the
    /// deadline it is set for.
    timer: Option<(Pin<Box<rt::Timer>>, Instant)>,
    /// Armed only while a write waits for the socket.
    write_timer: Option<Pin<Box<rt::Timer>>>,
    /// The connection's place in the limits (dropped after the socket is closed, and before
    /// the task counts as finished: fields drop in order).
    slot: Slot,
    _guard: TaskGuard,
    /// The hub has the `HELLO`.
    joined: bool,
}

impl Conn {
    fn new(
        socket: Socket,
        tls: Option<Box<Tls>>,
        addr: SocketAddr,
        key: u64,
        slot: Slot,
        guard: TaskGuard,
        ctx: Arc<Context>,
    ) -> Conn {
        let config = &ctx.config;
        let machine_config = ServerMachineConfig {
            max_payload: config.max_payload,
            handshake_timeout: config.handshake_timeout,
            ack_delay: DEFAULT_ACK_DELAY,
            auth_grace: config.auth_grace,
        };
        let machine = ServerMachine::new(Instant::now(), machine_config);
        let peer = Arc::new(Peer::new(socket, key, machine, ctx.events.clone(), tls));
        Conn { peer, ctx, addr, timer: None, write_timer: None, slot, _guard: guard, joined: false }
    }

    /// One connection, from its first byte to its close.
    ///
    /// The connection's [`ServerMachine`] does the protocol; this task moves bytes, sleeps
    /// until the machine's next deadline and hands the `HELLO` to the hub. Until the hub has
    /// the `HELLO`, an abort or a shutdown of the server ends the connection from here; after
    /// that, the hub reaches it through its [`Peer`].
    ///
    /// Only what every phase needs stays in the task's future; each phase that holds more for
    /// a moment (the handshake, the close) is boxed for that moment.
    // Not an `async fn`: its argument would be stored twice in the future (as the argument,
    // and as the body's copy of it).
    #[allow(clippy::manual_async_fn)]
    fn serve(mut self) -> impl Future<Output = ()> {
        async move {
            // The handshake's whole life, its end included, is in its own boxed future: no
            // more than a flag of it stays in the connection's future.
            if !Box::pin(self.handshake()).await {
                return;
            }
            let end = poll_fn(|cx| match self.poll_conn(cx, false) {
                Poll::Ready(Handshake::Ended(end)) => Poll::Ready(end),
                Poll::Ready(Handshake::Hello(_)) => unreachable!("a HELLO comes only in the handshake"),
                Poll::Pending => Poll::Pending,
            })
            .await;
            self.close(end).await;
        }
    }

    /// Ends the connection (boxed: only a closing connection holds what closing needs).
    fn close(&self, end: End) -> Pin<Box<impl Future<Output = ()> + '_>> {
        Box::pin(close(&self.peer, end, self.addr, self.peer.key(), self.joined, &self.ctx))
    }

    /// Until the hub has the authenticated `HELLO` (true), or the connection ended (false:
    /// closed, refused, cut by an abort or refused by a shutdown).
    async fn handshake(&mut self) -> bool {
        let ctx = self.ctx.clone();
        let handshake = poll_fn(|cx| self.poll_conn(cx, true));
        let hello = match unless(&ctx.halt, unless(&ctx.stop, handshake)).await {
            // Aborted: cut without a word.
            None => {
                self.peer.socket().shutdown();
                return false;
            }
            Some(None) => return self.refuse_shutdown().await,
            Some(Some(Handshake::Ended(end))) => {
                self.close(end).await;
                return false;
            }
            Some(Some(Handshake::Hello(hello))) => hello,
        };
        let principal = match unless(&ctx.halt, unless(&ctx.stop, self.authenticate(&hello))).await {
            None => {
                self.peer.socket().shutdown();
                return false;
            }
            Some(None) => return self.refuse_shutdown().await,
            Some(Some(Ok(principal))) => principal,
            Some(Some(Err((code, text)))) => {
                // Refused before the hub heard of it: no connection or session is disturbed.
                self.peer.step(|machine| machine.refuse(code, &text));
                return self.finish_handshake().await;
            }
        };
        // The peer is authenticated: its handshake no longer counts as in flight (before
        // anything can answer it, so that a client that got its `WELCOME` is never counted).
        self.slot.settle();
        let join = HubMsg::Join { hello, addr: self.addr, peer: self.peer.clone(), principal };
        if self.ctx.hub.try_send(join).is_err() {
            // The server is stopping.
            self.peer.step(|machine| machine.close_with(Frame::bye("shutdown")));
            return self.finish_handshake().await;
        }
        self.joined = true;
        true
    }

    /// The server is shutting down: `ERROR shutdown` and a close.
    async fn refuse_shutdown(&self) -> bool {
        let error = Frame::error(ErrorCode::Shutdown, "the server is shutting down");
        reject(self.peer.socket(), self.addr, error).await;
        false
    }

    /// The machine ended the handshake: writes what it has to say, then closes.
    async fn finish_handshake(&mut self) -> bool {
        let end = poll_fn(|cx| match self.poll_conn(cx, true) {
            Poll::Ready(Handshake::Ended(end)) => Poll::Ready(end),
            // A machine hands over one `HELLO`.
            Poll::Ready(Handshake::Hello(_)) => Poll::Ready(End::Ended(ConnEnd::ClosedByServer)),
            Poll::Pending => Poll::Pending,
        })
        .await;
        self.close(end).await;
        false
    }

    /// Decides who the peer is: `Ok(None)` when no authenticator is configured (every peer is
    /// anonymous), else its principal, or the `ERROR` to refuse it with. Runs inside the
    /// handshake timeout; never logs the token.
    async fn authenticate(&self, hello: &Hello) -> Result<Option<Principal>, (ErrorCode, String)> {
        let config = &self.ctx.config;
        let Some(authenticator) = config.authenticator.0.clone() else { return Ok(None) };
        let addr = self.addr;
        let id = &hello.client_id;
        if hello.version == MIN_PROTOCOL_VERSION {
            tracing::warn!(peer = %id, %addr, "connection refused: protocol 1 cannot authenticate");
            return Err((ErrorCode::Version, "this server requires authentication: speak protocol 2".into()));
        }
        let tls = self.peer.is_tls();
        if hello.token.is_some() && !tls && !addr.ip().to_canonical().is_loopback() && !config.plaintext_tokens {
            tracing::warn!(peer = %id, %addr, "connection refused: a token over plaintext from a remote peer");
            return Err((
                ErrorCode::TlsRequired,
                "a token over plaintext from a remote peer is refused: use TLS".into(),
            ));
        }
        let request = AuthRequest::new(id.clone(), hello.token.clone(), addr, tls);
        let left = self
            .peer
            .handshake_deadline()
            .map_or(config.handshake_timeout, |deadline| deadline.saturating_duration_since(Instant::now()));
        let refusal = match rt::timeout(left, authenticator.authenticate(&request)).await {
            Ok(Ok(principal)) if !principal.allowed.permits(id) => AuthError::Forbidden,
            // An expiry already past is the authenticator's to judge (a JWT's leeway): accepted,
            // the connection gets the grace from now.
            Ok(Ok(principal)) => return Ok(Some(principal)),
            Ok(Err(refusal)) => refusal,
            Err(_) => AuthError::Unavailable("the authenticator did not answer within the handshake timeout".into()),
        };
        tracing::warn!(peer = %id, %addr, %refusal, "connection refused");
        // The peer learns the code; an unavailable backend's details stay in the log.
        let text = match &refusal {
            AuthError::Unavailable(_) => "authentication is unavailable, try again later".to_owned(),
            other => other.to_string(),
        };
        Err((refusal.code(), text))
    }

    /// Serves the connection. In the handshake phase, returns the peer's `HELLO` when it comes;
    /// after it, runs until the connection ends.
    fn poll_conn(&mut self, cx: &mut std::task::Context<'_>, handshake: bool) -> Poll<Handshake> {
        let peer = self.peer.clone();
        // Whether the last read took less than it could: the socket had nothing more then.
        let mut emptied = false;
        for _ in 0..READS_PER_POLL {
            match peer.poll_outgoing(cx) {
                Poll::Ready(Ok(Outgoing::Cut)) => return Poll::Ready(Handshake::Ended(End::Cut)),
                Poll::Ready(Ok(Outgoing::Ended(end))) => return Poll::Ready(Handshake::Ended(End::Ended(end))),
                Poll::Ready(Ok(Outgoing::Idle)) => self.write_timer = None,
                Poll::Ready(Err(error)) => return self.lost(OfflineReason::from_io(&error)),
                Poll::Pending => {
                    // Most writes complete at once; only one that has to wait arms the write
                    // timeout, so a pulse round costs no timer per peer.
                    let limit = self.ctx.config.write_timeout;
                    let timer = self.write_timer.get_or_insert_with(|| Box::pin(rt::Timer::at(Instant::now() + limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return self.lost(OfflineReason::WriteTimeout);
                    }
                }
            }
            let status = peer.status();
            if let Some(hello) = status.hello {
                // A machine hands over one `HELLO`, in the handshake phase.
                debug_assert!(handshake, "a HELLO after the handshake");
                return Poll::Ready(Handshake::Hello(hello));
            }
            if !self.poll_timer(cx, status.deadline) {
                continue;
            }
            if status.pending > READ_PAUSE || !status.wants_input {
                // The socket's writability, or the hub's answer to the `HELLO`, wakes us.
                return Poll::Pending;
            }
            if emptied {
                // Wait for more without a read that would only say "nothing yet" (a system
                // call per answer): the first answer may be the readiness the last read
                // consumed, the second registers with the reactor, which reports at once
                // whatever arrived in between.
                for _ in 0..2 {
                    match peer.socket().poll_readable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return self.lost(OfflineReason::from_io(&error)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
            let read = if status.buffered > 0 {
                // The rest of a frame: straight into the machine's buffer.
                peer.poll_read_into_machine(cx)
            } else {
                let mut chunk = [0u8; READ_CHUNK];
                match peer.socket().poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(n)) if n > 0 && status.tls => {
                        match peer.tls_input(&chunk[..n], Instant::now()) {
                            Ok(TlsInput::Read) => {}
                            Ok(TlsInput::NotTls) => {
                                tracing::warn!(addr = %self.addr, "connection refused: plaintext on the TLS port");
                            }
                            Ok(TlsInput::Closed) => return self.lost(OfflineReason::Eof),
                            Err(failure) => {
                                tracing::warn!(addr = %self.addr, error = %failure.0, "TLS failed");
                                return self.lost(OfflineReason::Tls(failure.0));
                            }
                        }
                        Poll::Ready(Ok((n, READ_CHUNK)))
                    }
                    Poll::Ready(Ok(n)) if n > 0 => {
                        let now = Instant::now();
                        peer.step(|machine| machine.handle_input(&chunk[..n], now));
                        Poll::Ready(Ok((n, READ_CHUNK)))
                    }
                    other => other.map_ok(|n| (n, READ_CHUNK)),
                }
            };
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((0, _))) => return self.lost(OfflineReason::Eof),
                Poll::Ready(Ok((n, room))) => emptied = n < room,
                Poll::Ready(Err(error)) => return self.lost(OfflineReason::from_io(&error)),
            }
        }
        // A peer that keeps sending yields to the others now and then.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Keeps the timer on the machine's next deadline; false when it fired and the machine
    /// acted on it (the caller looks again).
    fn poll_timer(&mut self, cx: &mut std::task::Context<'_>, deadline: Option<Instant>) -> bool {
        let Some(deadline) = deadline else {
            self.timer = None;
            return true;
        };
        let (timer, armed) = self.timer.get_or_insert_with(|| (Box::pin(rt::Timer::at(deadline)), deadline));
        if *armed != deadline {
            // Re-armed only when the deadline moved: each re-arm is a trip to the reactor.
            timer.as_mut().get_mut().reset(deadline);
            *armed = deadline;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return true;
        }
        self.timer = None;
        self.peer.step(|machine| machine.handle_timeout(Instant::now()));
        false
    }

    fn lost(&mut self, reason: OfflineReason) -> Poll<Handshake> {
        self.peer.step(|machine| machine.connection_lost(Instant::now()));
        Poll::Ready(Handshake::Ended(End::Failed(reason)))
    }
}

/// Refuses a connection during the handshake: `ERROR`, then a lingering close.
async fn reject(socket: &Socket, addr: SocketAddr, error: Frame) {
    tracing::warn!(%addr, %error, "connection refused");
    if rt::timeout(LINGER, socket.write_all(&error.to_bytes())).await.is_ok() {
        socket.shutdown_write();
        drain(socket).await;
    }
    socket.shutdown();
}

/// Closes a connection the peer may still be sending on: writes what is pending (for
/// [`LINGER`] at most), closes our side, reads until the peer closes its own, then cuts.
async fn finish(peer: &Peer, ctx: &Context) {
    let lingering = async {
        let flushed = rt::timeout(LINGER, poll_fn(|cx| peer.poll_outgoing(cx))).await;
        if let Ok(Ok(Outgoing::Ended(_) | Outgoing::Idle)) = flushed {
            peer.socket().shutdown_write();
            drain(peer.socket()).await;
        }
    };
    let _ = unless(&ctx.halt, Box::pin(lingering)).await;
    peer.socket().shutdown();
}

/// Reads and discards input until the peer closes, for [`LINGER`] at most.
async fn drain(socket: &Socket) {
    // On the heap, and only while draining: a buffer held in the connection's future would
    // cost every connection its size for its whole life.
    let mut sink = vec![0u8; 4096];
    let mut total = 0;
    let until = Instant::now() + LINGER;
    while total < DRAIN_LIMIT {
        let left = until.saturating_duration_since(Instant::now());
        match rt::timeout(left, socket.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}
