//! Per-connection tasks: the accept loop, the handshake, the reader and the writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{select_biased, FutureExt};

use super::admission::{Admitted, Gate, Slot};
use super::hub::HubMsg;
use super::{unless, OfflineReason, ServerConfig, Tracker, LINGER};
use crate::client::ProtocolViolation;
use crate::protocol::{DecodeError, Decoder, ErrorCode, Frame, PROTOCOL_VERSION};
use crate::rt::{self, TcpListener, TcpStream};

/// How long the accept loop pauses after an accept error (say, out of file descriptors), so
/// that it waits instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Room for `ALIVE` answers to a peer's own probes, per connection.
const ANSWER_QUEUE: usize = 16;
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
    /// The connection limits: the accept loop admits, each connection's slot releases.
    pub(super) gate: Gate,
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
                let guard = ctx.tracker.guard();
                match ctx.gate.admit(addr.ip()) {
                    Admitted::Handshake(mut slot) => {
                        let key = ctx.keys.fetch_add(1, Ordering::Relaxed) + 1;
                        let ctx = ctx.clone();
                        rt::spawn(async move {
                            if unless(&ctx.halt, serve(&stream, addr, key, &mut slot, &ctx)).await.is_none() {
                                rt::shutdown(&stream);
                            }
                            // The socket and its place in the limits are released before the
                            // task counts as finished.
                            drop(stream);
                            drop(slot);
                            drop(guard);
                        });
                    }
                    Admitted::Refused(slot, refusal) => {
                        let halt = ctx.halt.clone();
                        rt::spawn(async move {
                            let error = Frame::error(ErrorCode::Full, refusal.to_string());
                            if unless(&halt, reject(&stream, addr, error)).await.is_none() {
                                rt::shutdown(&stream);
                            }
                            drop(stream);
                            drop(slot);
                            drop(guard);
                        });
                    }
                    Admitted::Dropped => {
                        tracing::debug!(%addr, "connection closed at once: too many refusals under way");
                        rt::shutdown(&stream);
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

/// One connection, from its first byte: the handshake, then the reader loop. The writer runs
/// as a task of its own from the handshake on, and closes the socket when it is done.
async fn serve(stream: &TcpStream, addr: SocketAddr, key: u64, slot: &mut Slot, ctx: &Context) {
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

    // The peer spoke: its handshake no longer counts as in flight (before anything can answer
    // it, so that a client that got its `WELCOME` is never counted).
    slot.settle();
    let (link, queue) = async_channel::bounded(config.outbound_queue);
    // Probe answers need little room: a peer that probes faster than it reads waits on itself.
    let (answers, answer_queue) = async_channel::bounded(ANSWER_QUEUE);
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
    if ctx.hub.send(join).await.is_err() {
        return; // The server is stopping; dropping the queues ends the writer.
    }
    match joined.await {
        Ok(true) => {}
        // The hub refused it (the server is full) and queued the `ERROR` for the writer: let
        // the peer read it before the connection closes.
        Ok(false) => return drain(stream).await,
        Err(_) => return, // The server is stopping.
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

/// Reads frames until the connection ends; `None` when the server is stopping or the peer is
/// no longer online (the hub has taken it out, and closes its connection).
///
/// A `PULSE` from the peer that follows one or more `DATA` frames is answered only once the hub
/// has handed those messages to the application (a barrier through the hub's queue): the
/// `ALIVE` then confirms to the client that everything it sent before the pulse was delivered.
async fn read_loop(
    stream: &TcpStream,
    mut decoder: Decoder,
    key: u64,
    answers: &async_channel::Sender<Frame>,
    hub: &async_channel::Sender<HubMsg>,
) -> Option<ReadEnd> {
    let mut socket = stream;
    let ended = |reason| Some(ReadEnd { reason, peer_may_still_send: true });
    // Whether a message came since the peer's last pulse.
    let mut unconfirmed_data = false;
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return ended(OfflineReason::Protocol(ProtocolViolation::Decode(error))),
            };
            let msg = match frame {
                Frame::Pulse { seq } => {
                    if std::mem::take(&mut unconfirmed_data) {
                        let (done, delivered) = oneshot::channel();
                        hub.send(HubMsg::Barrier { key, done }).await.ok()?;
                        if delivered.await != Ok(true) {
                            return None;
                        }
                    } else {
                        hub.send(HubMsg::Seen { key }).await.ok()?;
                    }
                    // Answers have a queue of their own: a flood of probes slows down only the
                    // peer that sends it, and never crowds out the server's pulses. The queue
                    // fails once the writer is gone.
                    answers.send(Frame::Alive { seq }).await.ok()?;
                    continue;
                }
                Frame::Alive { seq } => HubMsg::Alive { key, seq },
                Frame::Data(payload) => {
                    unconfirmed_data = true;
                    HubMsg::Data { key, payload }
                }
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
            // Most writes complete at once; only one that has to wait arms the write timeout,
            // so a pulse round costs no timer registration per peer.
            let mut write = socket.write_all(&buf);
            let written = match (&mut write).now_or_never() {
                Some(result) => Ok(result),
                None => rt::timeout(self.write_timeout, write).await,
            };
            match written {
                Ok(Ok(())) => {
                    buf.clear();
                    if buf.capacity() > 2 * BATCH_BYTES {
                        buf = BytesMut::new();
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Which message the hub got, for assertions (`HubMsg` carries channels, not `Debug`).
    fn kind(msg: &HubMsg) -> &'static str {
        match msg {
            HubMsg::Join { .. } => "join",
            HubMsg::Seen { .. } => "seen",
            HubMsg::Barrier { .. } => "barrier",
            HubMsg::Alive { .. } => "alive",
            HubMsg::Data { .. } => "data",
            HubMsg::Leave { .. } => "leave",
            HubMsg::Online { .. } => "online",
            HubMsg::SendTo { .. } => "send-to",
            HubMsg::Broadcast { .. } => "broadcast",
        }
    }

    #[test]
    fn a_pulse_after_messages_is_answered_only_once_the_hub_has_handed_them_over() {
        futures::executor::block_on(async {
            let listener = rt::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let peer = rt::connect(&addr.to_string()).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let (hub, from_reader) = async_channel::bounded(16);
            let (answers, answered) = async_channel::bounded(16);
            let reading = read_loop(&stream, Decoder::new(64), 7, &answers, &hub);
            let checking = async {
                let mut peer = &peer;
                peer.write_all(b"DATA 5\nhelloPULSE 1\n").await.unwrap();
                let data = from_reader.recv().await.unwrap();
                assert!(matches!(&data, HubMsg::Data { key: 7, payload } if payload == "hello"), "{}", kind(&data));
                let HubMsg::Barrier { key: 7, done } = from_reader.recv().await.unwrap() else {
                    panic!("a pulse after a message goes through the hub first");
                };
                assert!(answered.is_empty(), "no answer before the hub has handed the message over");
                done.send(true).unwrap();
                assert_eq!(answered.recv().await.unwrap(), Frame::Alive { seq: 1 });

                // A pulse with no message before it is answered without a barrier.
                peer.write_all(b"PULSE 2\n").await.unwrap();
                let seen = from_reader.recv().await.unwrap();
                assert_eq!(kind(&seen), "seen");
                assert_eq!(answered.recv().await.unwrap(), Frame::Alive { seq: 2 });

                // A peer the hub no longer lists gets no confirmation: the reader stops.
                peer.write_all(b"DATA 1\nxPULSE 3\n").await.unwrap();
                assert_eq!(kind(&from_reader.recv().await.unwrap()), "data");
                let HubMsg::Barrier { done, .. } = from_reader.recv().await.unwrap() else {
                    panic!("a barrier");
                };
                done.send(false).unwrap();
            };
            let (end, ()) = futures::join!(reading, checking);
            assert!(end.is_none(), "the reader stops for a peer that is not online");
            assert!(answered.try_recv().is_err(), "pulse 3 was not answered");
        });
    }
}
