//! Per-connection tasks: the accept loop, the handshake, the reader and the writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{select_biased, FutureExt};

use super::hub::HubMsg;
use super::{unless, OfflineReason, ServerConfig, Tracker, LINGER};
use crate::client::ProtocolViolation;
use crate::protocol::{DecodeError, Decoder, ErrorCode, Frame, PROTOCOL_VERSION};
use crate::rt::{self, TcpListener, TcpStream};

/// How long the accept loop pauses after an accept error (say, out of file descriptors), so
/// that it waits instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The writer gathers ready frames into one write of up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// At most this much unread input is discarded while a closing connection lingers.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// What every connection task needs from its server.
pub(super) struct Context {
    pub(super) config: Arc<ServerConfig>,
    pub(super) hub: async_channel::Sender<HubMsg>,
    pub(super) stop: async_channel::Receiver<()>,
    pub(super) halt: async_channel::Receiver<()>,
    pub(super) tracker: Tracker,
    pub(super) keys: AtomicU64,
}

pub(super) async fn accept_loop(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        let Some(accepted) = unless(&ctx.stop, listener.accept()).await else {
            break;
        };
        match accepted {
            Ok((stream, addr)) => {
                if let Err(error) = rt::accepted(&stream) {
                    tracing::debug!(%addr, %error, "accepted socket unusable");
                    continue;
                }
                let key = ctx.keys.fetch_add(1, Ordering::Relaxed) + 1;
                let guard = ctx.tracker.guard();
                let ctx = ctx.clone();
                rt::spawn(async move {
                    if unless(&ctx.halt, serve(&stream, addr, key, &ctx)).await.is_none() {
                        rt::shutdown(&stream);
                    }
                    // The socket is released before the task counts as finished.
                    drop(stream);
                    drop(guard);
                });
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

/// One connection, from its first byte: the handshake, then the reader loop. The writer runs
/// as a task of its own from the handshake on, and closes the socket when it is done.
async fn serve(stream: &TcpStream, addr: SocketAddr, key: u64, ctx: &Context) {
    let config = &ctx.config;
    let mut decoder = Decoder::new(config.max_payload);
    let first = unless(&ctx.stop, rt::timeout(config.handshake_timeout, first_frame(stream, &mut decoder))).await;
    let hello = match first {
        None => return reject(stream, addr, Frame::error(ErrorCode::Shutdown, "the server is shutting down")).await,
        Some(Err(rt::Elapsed)) => {
            let text = format!("no HELLO within {} ms", config.handshake_timeout.as_millis());
            return reject(stream, addr, Frame::error(ErrorCode::Timeout, text)).await;
        }
        Some(Ok(Err(Closed::Decode(error)))) => {
            return reject(stream, addr, Frame::error(error.code(), error.to_string())).await;
        }
        Some(Ok(Err(Closed::Quietly))) => {
            tracing::debug!(%addr, "connection closed before HELLO");
            return;
        }
        Some(Ok(Ok(frame))) => frame,
    };
    let client_id = match hello {
        Frame::Hello { version, .. } if version != PROTOCOL_VERSION => {
            let text = format!("this server speaks version {PROTOCOL_VERSION}, not {version}");
            return reject(stream, addr, Frame::error(ErrorCode::Version, text)).await;
        }
        Frame::Hello { client_id, .. } => client_id,
        other => {
            let text = format!("expected HELLO, got {}", other.verb());
            return reject(stream, addr, Frame::error(ErrorCode::Unexpected, text)).await;
        }
    };

    let (link, queue) = async_channel::bounded(config.outbound_queue);
    let (answers, answer_queue) = async_channel::bounded(config.outbound_queue);
    let (reading, reader_done) = async_channel::bounded::<()>(1);
    let writer = Writer {
        stream: stream.clone(),
        queue,
        answers: answer_queue,
        key,
        hub: ctx.hub.clone(),
        write_timeout: config.write_timeout,
        reader_done,
    };
    let guard = ctx.tracker.guard();
    let halt = ctx.halt.clone();
    rt::spawn(async move {
        let stream = writer.stream.clone();
        let _ = unless(&halt, writer.run()).await;
        rt::shutdown(&stream);
        drop(stream);
        drop(guard);
    });
    let (welcomed, joined) = oneshot::channel();
    let join = HubMsg::Join { key, id: client_id, addr, link: link.clone(), welcomed };
    if ctx.hub.send(join).await.is_err() || joined.await.is_err() {
        return; // The server is stopping; dropping the queues ends the writer.
    }
    if let Some(end) = read_loop(stream, decoder, key, &answers, &ctx.hub).await {
        if let OfflineReason::Protocol(violation) = &end.reason {
            tracing::warn!(%addr, %violation, "protocol error");
            let _ = link.try_send(Frame::error(violation.code(), violation.to_string()));
        }
        let _ = ctx.hub.send(HubMsg::Leave { key, reason: end.reason }).await;
        if end.peer_may_still_send {
            drain(stream).await;
        }
    }
    drop(reading);
}

struct ReadEnd {
    reason: OfflineReason,
    /// The peer did not close its side: read what it still sends while it gets our answer, so
    /// that closing does not reset the connection under our last frame.
    peer_may_still_send: bool,
}

/// Reads frames until the connection ends; `None` when the server is stopping.
async fn read_loop(
    stream: &TcpStream,
    mut decoder: Decoder,
    key: u64,
    answers: &async_channel::Sender<Frame>,
    hub: &async_channel::Sender<HubMsg>,
) -> Option<ReadEnd> {
    let mut socket = stream;
    let ended = |reason| Some(ReadEnd { reason, peer_may_still_send: true });
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return ended(OfflineReason::Protocol(ProtocolViolation::Decode(error))),
            };
            let msg = match frame {
                Frame::Pulse { seq } => {
                    // Answers have a queue of their own: a flood of probes slows down only the
                    // peer that sends it, and never crowds out the server's pulses. The queue
                    // fails once the writer is gone.
                    answers.send(Frame::Alive { seq }).await.ok()?;
                    HubMsg::Seen { key }
                }
                Frame::Alive { seq } => HubMsg::Alive { key, seq },
                Frame::Data(payload) => HubMsg::Data { key, payload },
                Frame::Bye { reason } => return ended(OfflineReason::Goodbye { reason }),
                Frame::Error { code, text } => return ended(OfflineReason::PeerError { code, text }),
                other @ (Frame::Hello { .. } | Frame::Welcome { .. }) => {
                    let violation = ProtocolViolation::Unexpected { verb: other.verb() };
                    return ended(OfflineReason::Protocol(violation));
                }
            };
            hub.send(msg).await.ok()?;
        }
        let read = socket.read(decoder.read_buf()).await;
        match read {
            Ok(0) => return Some(ReadEnd { reason: OfflineReason::Eof, peer_may_still_send: false }),
            Ok(n) => decoder.filled(n),
            Err(error) => return Some(ReadEnd { reason: OfflineReason::from_io(&error), peer_may_still_send: false }),
        }
    }
}

enum Closed {
    Decode(DecodeError),
    Quietly,
}

async fn first_frame(stream: &TcpStream, decoder: &mut Decoder) -> Result<Frame, Closed> {
    let mut socket = stream;
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
async fn reject(stream: &TcpStream, addr: SocketAddr, error: Frame) {
    tracing::warn!(%addr, %error, "connection refused");
    let mut socket = stream;
    if rt::timeout(LINGER, socket.write_all(&error.to_bytes())).await.is_ok() {
        rt::shutdown_write(stream);
        drain(stream).await;
    }
    rt::shutdown(stream);
}

/// Reads and discards input until the peer closes, for [`LINGER`] at most.
async fn drain(stream: &TcpStream) {
    let mut socket = stream;
    let mut sink = [0u8; 4096];
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

/// A peer's writer: drains its two queues into the socket, whatever is ready in one write.
struct Writer {
    stream: TcpStream,
    /// What the hub sends: `WELCOME`, pulses, messages, the final `ERROR` or `BYE`. Closed by
    /// the hub when the peer leaves the online list.
    queue: async_channel::Receiver<Frame>,
    /// `ALIVE` answers to the peer's own pulses, from the reader.
    answers: async_channel::Receiver<Frame>,
    key: u64,
    hub: async_channel::Sender<HubMsg>,
    write_timeout: Duration,
    /// Fails once the reader has finished.
    reader_done: async_channel::Receiver<()>,
}

impl Writer {
    async fn run(self) {
        let mut socket = &self.stream;
        let mut buf = BytesMut::new();
        let mut answering = true;
        let failure = loop {
            // The hub's queue fails once it is closed and drained: the peer is gone.
            let frame = if answering {
                select_biased! {
                    frame = self.queue.recv().fuse() => frame,
                    answer = self.answers.recv().fuse() => match answer {
                        Ok(answer) => Ok(answer),
                        Err(_) => {
                            answering = false;
                            continue;
                        }
                    },
                }
            } else {
                self.queue.recv().await
            };
            let Ok(frame) = frame else { break None };
            frame.encode(&mut buf);
            while buf.len() < BATCH_BYTES {
                let Ok(frame) = self.queue.try_recv().or_else(|_| self.answers.try_recv()) else { break };
                frame.encode(&mut buf);
            }
            match rt::timeout(self.write_timeout, socket.write_all(&buf)).await {
                Ok(Ok(())) => buf.clear(),
                Ok(Err(error)) => break Some(OfflineReason::from_io(&error)),
                Err(rt::Elapsed) => break Some(OfflineReason::WriteTimeout),
            }
        };
        if let Some(reason) = failure {
            self.queue.close();
            let _ = self.hub.send(HubMsg::Leave { key: self.key, reason }).await;
            rt::shutdown(&self.stream);
            return;
        }
        // Everything is written: close our side and give the peer a moment to read it and
        // close its own, then cut whatever is left (this also ends a reader still waiting on a
        // peer that went silent).
        rt::shutdown_write(&self.stream);
        let _ = rt::timeout(LINGER, self.reader_done.recv()).await;
        rt::shutdown(&self.stream);
    }
}
