//! The accept loop and the one task per connection: handshake, then reading (and writing what
//! the socket did not take at once), then a lingering close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::Poll;

use futures::future::poll_fn;
use futures::{Future, FutureExt};

use super::admission::{Admitted, Gate, Slot};
use super::hub::HubMsg;
use super::peer::{Outgoing, Peer};
use super::{unless, OfflineReason, ServerConfig, ServerEvent, Tracker, LINGER};
use crate::error::ProtocolViolation;
use crate::protocol::{ClientId, DecodeError, Decoder, ErrorCode, Frame, PROTOCOL_VERSION};
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
    /// The server's clock origin, shared by every peer's timestamps.
    pub(super) epoch: Instant,
    pub(super) stop: async_channel::Receiver<()>,
    pub(super) halt: async_channel::Receiver<()>,
    pub(super) tracker: Tracker,
    pub(super) keys: AtomicU64,
    /// The connection limits: the accept loop admits, each connection's slot releases.
    pub(super) gate: Gate,
}

pub(super) async fn accept_loop(listener: Listener, ctx: Arc<Context>) {
    loop {
        let Some(accepted) = unless(&ctx.stop, listener.accept()).await else {
            break;
        };
        match accepted {
            Ok((stream, addr)) => {
                let guard = ctx.tracker.guard();
                match ctx.gate.admit(addr.ip()) {
                    Admitted::Handshake(mut slot) => {
                        let key = ctx.keys.fetch_add(1, Ordering::Relaxed) + 1;
                        let ctx = ctx.clone();
                        rt::spawn(async move {
                            serve(stream, addr, key, &mut slot, &ctx).await;
                            // The socket (closed by `serve`) and the place in the limits are
                            // released before the task counts as finished.
                            drop(slot);
                            drop(guard);
                        });
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

/// One connection, from its first byte to its close.
///
/// Only the online phase ([`Online`], a plain struct) stays in this future for the connection's
/// life: the handshake, the join and the close run boxed, so that their timers, buffers and
/// messages cost memory only while they run.
async fn serve(socket: Socket, addr: SocketAddr, key: u64, slot: &mut Slot, ctx: &Context) {
    let Some(mut online) = Box::pin(join(socket, addr, key, slot, ctx)).await else {
        return;
    };
    let end = (&mut online).await;
    Box::pin(close(online.peer, end, addr, key, ctx)).await;
}

/// The handshake, then the hub's answer; `Some` once the peer is online.
async fn join<'a>(socket: Socket, addr: SocketAddr, key: u64, slot: &mut Slot, ctx: &'a Context) -> Option<Online<'a>> {
    let mut decoder = Decoder::new(ctx.config.max_payload);
    let id = match unless(&ctx.halt, handshake(&socket, addr, &mut decoder, ctx)).await {
        Some(Some(id)) => id,
        Some(None) => return None,
        None => {
            socket.shutdown();
            return None;
        }
    };
    // The peer spoke: its handshake no longer counts as in flight (before anything can answer
    // it, so that a client that got its `WELCOME` is never counted).
    slot.settle();
    let peer = Arc::new(Peer::new(socket, ctx.epoch));
    // The hub answers on the peer itself, with no reply to wait for: `WELCOME` (the online
    // phase then answers what the peer sends), or `ERROR full` and a close (the online phase
    // then ends as for any peer the hub took out).
    let join = HubMsg::Join { key, id: id.clone(), addr, peer: peer.clone() };
    if ctx.hub.send(join).await.is_err() {
        peer.socket().shutdown(); // The server is stopping.
        return None;
    }
    Some(Online { peer, decoder, ctx, id, write_timer: None })
}

/// Ends a connection after its online phase.
async fn close(peer: Arc<Peer>, end: End, addr: SocketAddr, key: u64, ctx: &Context) {
    let reason = match end {
        End::Cut => return peer.socket().shutdown(),
        // The hub took the peer out and everything it queued is written.
        End::Closed => return finish(&peer, ctx).await,
        End::Failed(reason) => {
            let _ = ctx.hub.send(HubMsg::Leave { key, reason }).await;
            return peer.socket().shutdown();
        }
        End::Left(reason) => reason,
        End::Violation(violation) => {
            tracing::warn!(%addr, %violation, "protocol error");
            peer.close_with(Frame::error(violation.code(), violation.to_string()));
            OfflineReason::Protocol(violation)
        }
    };
    // The peer said goodbye, or gets our `ERROR`: it may still be sending, so read on while it
    // gets our last frame, then close.
    peer.close();
    let _ = ctx.hub.send(HubMsg::Leave { key, reason }).await;
    finish(&peer, ctx).await;
}

/// Reads the peer's `HELLO`; `None` once the connection was refused or closed.
async fn handshake(socket: &Socket, addr: SocketAddr, decoder: &mut Decoder, ctx: &Context) -> Option<ClientId> {
    let config = &ctx.config;
    let mut reading = std::pin::pin!(first_frame(socket, decoder));
    // In a reconnect storm the `HELLO` is usually in the socket before the connection is
    // accepted: it is read at once, with no timer set and cancelled for it (each one a
    // wake-up of the reactor).
    let first = match (&mut reading).now_or_never() {
        Some(_) if ctx.stop.is_closed() => None,
        Some(frame) => Some(Ok(frame)),
        None => unless(&ctx.stop, rt::timeout(config.handshake_timeout, reading)).await,
    };
    let hello = match first {
        None => {
            reject(socket, addr, Frame::error(ErrorCode::Shutdown, "the server is shutting down")).await;
            return None;
        }
        Some(Err(rt::Elapsed)) => {
            let text = format!("no HELLO within {} ms", config.handshake_timeout.as_millis());
            reject(socket, addr, Frame::error(ErrorCode::Timeout, text)).await;
            return None;
        }
        Some(Ok(Err(Closed::Decode(error)))) => {
            reject(socket, addr, Frame::error(error.code(), error.to_string())).await;
            return None;
        }
        Some(Ok(Err(Closed::Quietly))) => {
            tracing::debug!(%addr, "connection closed before HELLO");
            socket.shutdown();
            return None;
        }
        Some(Ok(Ok(frame))) => frame,
    };
    match hello {
        Frame::Hello { version, .. } if version != PROTOCOL_VERSION => {
            let text = format!("this server speaks version {PROTOCOL_VERSION}, not {version}");
            reject(socket, addr, Frame::error(ErrorCode::Version, text)).await;
            None
        }
        Frame::Hello { client_id, .. } => Some(client_id),
        other => {
            let text = format!("expected HELLO, got {}", other.verb());
            reject(socket, addr, Frame::error(ErrorCode::Unexpected, text)).await;
            None
        }
    }
}

/// How the online phase of a connection ended.
enum End {
    /// The server was aborted.
    Cut,
    /// The hub took the peer out (evicted, replaced, shutdown, refused) and all it queued is
    /// written.
    Closed,
    /// The socket failed or reached end-of-file: nothing more can be said to the peer.
    Failed(OfflineReason),
    /// The peer said goodbye (`BYE`, `ERROR`).
    Left(OfflineReason),
    /// The peer broke the protocol.
    Violation(ProtocolViolation),
}

/// The online phase: reads and answers frames, writes what the socket did not take at once.
/// Everything a connection holds while it is online, and nothing more.
struct Online<'a> {
    peer: Arc<Peer>,
    decoder: Decoder,
    ctx: &'a Context,
    id: ClientId,
    /// Armed only while a write waits for the socket.
    write_timer: Option<Pin<Box<rt::Timer>>>,
}

impl Future for Online<'_> {
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<End> {
        self.as_mut().get_mut().poll_online(cx)
    }
}

impl Online<'_> {
    fn poll_online(&mut self, cx: &mut std::task::Context<'_>) -> Poll<End> {
        match self.peer.poll_outgoing(cx) {
            Poll::Ready(Ok(Outgoing::Cut)) => return Poll::Ready(End::Cut),
            Poll::Ready(Ok(Outgoing::Closed)) => return Poll::Ready(End::Closed),
            Poll::Ready(Ok(Outgoing::Idle)) => self.write_timer = None,
            Poll::Ready(Err(error)) => return Poll::Ready(End::Failed(OfflineReason::from_io(&error))),
            Poll::Pending => {
                // Most writes complete at once; only one that has to wait arms the write
                // timeout, so a pulse round costs no timer per peer.
                let limit = self.ctx.config.write_timeout;
                let timer = self.write_timer.get_or_insert_with(|| Box::pin(rt::Timer::at(Instant::now() + limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(End::Failed(OfflineReason::WriteTimeout));
                }
            }
        }
        if self.peer.pending() > READ_PAUSE {
            return Poll::Pending; // The socket's writability wakes us.
        }
        // Whether the last read took less than it could: the socket had nothing more then.
        let mut emptied = false;
        for _ in 0..READS_PER_POLL {
            if self.decoder.buffered() > 0 && !self.peer.may_speak() {
                // The peer spoke before its `WELCOME` went out: its frames wait for it.
                return Poll::Pending;
            }
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.handle(frame) {
                            return Poll::Ready(end);
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return Poll::Ready(End::Violation(ProtocolViolation::Decode(error))),
                }
            }
            let socket = self.peer.socket();
            if emptied {
                // Wait for more without a read that would only say "nothing yet": the first
                // answer may be the readiness the last read consumed, the second registers
                // with the reactor, which reports at once whatever arrived in between.
                for _ in 0..2 {
                    match socket.poll_readable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return Poll::Ready(End::Failed(OfflineReason::from_io(&error))),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
            let read = if self.decoder.buffered() > 0 {
                // The rest of a frame: straight into the decoder's buffer.
                let region = self.decoder.read_buf();
                let room = region.len();
                socket.poll_read(cx, region).map_ok(|n| {
                    self.decoder.filled(n);
                    (n, room)
                })
            } else {
                let mut chunk = [0u8; READ_CHUNK];
                socket.poll_read(cx, &mut chunk).map_ok(|n| {
                    self.decoder.extend(&chunk[..n]);
                    (n, READ_CHUNK)
                })
            };
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((0, _))) => return Poll::Ready(End::Failed(OfflineReason::Eof)),
                Poll::Ready(Ok((n, room))) => emptied = n < room,
                Poll::Ready(Err(error)) => return Poll::Ready(End::Failed(OfflineReason::from_io(&error))),
            }
        }
        // A peer that keeps sending yields to the others now and then.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Handles one frame from the peer; `Some` ends the online phase.
    fn handle(&mut self, frame: Frame) -> Option<End> {
        let now = Instant::now();
        match frame {
            Frame::Pulse { seq } => {
                self.peer.heard(now);
                // Messages are handed to the application as they are read, so everything the
                // peer sent before this pulse has been: the `ALIVE` confirms it. A peer the hub
                // no longer lists gets no confirmation (its close is under way).
                let _ = self.peer.send(Frame::Alive { seq }, usize::MAX);
            }
            Frame::Alive { seq } => self.peer.answered(seq, now),
            Frame::Data(payload) => {
                self.peer.heard(now);
                let events = &self.ctx.events;
                self.peer.unless_closed(|| {
                    let _ = events.try_send(ServerEvent::Message { peer: self.id.clone(), payload });
                });
            }
            Frame::Bye { reason } => return Some(End::Left(OfflineReason::Goodbye { reason })),
            Frame::Error { code, text } => return Some(End::Left(OfflineReason::PeerError { code, text })),
            other @ (Frame::Hello { .. } | Frame::Welcome { .. }) => {
                return Some(End::Violation(ProtocolViolation::Unexpected { verb: other.verb() }));
            }
        }
        None
    }
}

enum Closed {
    Decode(DecodeError),
    Quietly,
}

async fn first_frame(socket: &Socket, decoder: &mut Decoder) -> Result<Frame, Closed> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(Closed::Decode)? {
            return Ok(frame);
        }
        match socket.read(decoder.read_buf()).await {
            Ok(0) | Err(_) => return Err(Closed::Quietly),
            Ok(n) => decoder.filled(n),
        }
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
        if let Ok(Ok(Outgoing::Closed | Outgoing::Idle)) = flushed {
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
