//! One online peer as the hub and its connection task share it: the socket, the bytes not yet
//! written, and what the connection task observed (last frame, last round trip).
//!
//! Whoever has a frame for the peer writes it to the socket at once when nothing else is
//! waiting ([`Peer::send`]): a pulse from the hub or an `ALIVE` from the connection task costs one
//! non-blocking write and no task switch. Only what the socket does not take is kept, and the
//! connection task is woken to write it when the socket drains. The lock orders all writes, so
//! frames never interleave.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures::task::AtomicWaker;

use crate::core::Observation;
use crate::protocol::Frame;
use crate::rt::Socket;

/// An emptied write buffer larger than this is given back.
const KEEP_CAPACITY: usize = 1024;

pub(super) struct Peer {
    socket: Socket,
    out: Mutex<Outbox>,
    /// The connection task, woken to write what is pending or to close.
    task: AtomicWaker,
    /// The server's clock: times below are nanoseconds since this instant, plus one (0 = never).
    epoch: Instant,
    heard: AtomicU64,
    rtt: AtomicU64,
    /// The last pulse written by the hub: its number and when it went out.
    pulse_seq: AtomicU64,
    pulse_at: AtomicU64,
    /// The hub has sent `WELCOME`: the peer may speak.
    welcomed: AtomicBool,
    /// The connection holds frames that came before `WELCOME`, waiting for it.
    held: AtomicBool,
}

#[derive(Default)]
struct Outbox {
    /// Encoded frames the socket has not taken yet.
    pending: BytesMut,
    /// Frames queued since the socket last took everything (the stall rule counts these).
    queued: usize,
    /// No more frames: the connection writes what is pending, then closes.
    closed: bool,
    /// Close at once, without writing anything more (the server was aborted).
    cut: bool,
}

/// Why [`Peer::send`] did not take a frame; the frame is handed back.
#[derive(Debug)]
pub(super) enum Refused {
    /// The socket has not taken the last `limit` frames: the peer does not read.
    Full(Frame),
    /// The peer is leaving.
    Closed(Frame),
}

/// What the connection task must do after waiting on its outbox.
pub(super) enum Outgoing {
    /// Everything is written; keep serving.
    Idle,
    /// Everything is written and the peer is closed: close the connection.
    Closed,
    /// The server was aborted: cut the connection now.
    Cut,
}

impl Peer {
    pub(super) fn new(socket: Socket, epoch: Instant) -> Peer {
        Peer {
            socket,
            out: Mutex::new(Outbox::default()),
            task: AtomicWaker::new(),
            epoch,
            heard: AtomicU64::new(0),
            rtt: AtomicU64::new(0),
            pulse_seq: AtomicU64::new(0),
            pulse_at: AtomicU64::new(0),
            welcomed: AtomicBool::new(false),
            held: AtomicBool::new(false),
        }
    }

    /// Sends `WELCOME` (the hub, once the peer is online): from now on the peer may speak. The
    /// connection task is woken only if it holds frames that came too early, so that a join
    /// costs no wake-up.
    pub(super) fn welcome(&self, welcome: Frame, limit: usize) {
        // SeqCst here and in `may_speak`: either the task sees `welcomed`, or this sees `held`.
        self.welcomed.store(true, Ordering::SeqCst);
        let _ = self.send(welcome, limit);
        if self.held.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    /// Whether frames from the peer may be handled (`WELCOME` was sent); when not yet, the
    /// caller holds them and is woken by [`Peer::welcome`].
    pub(super) fn may_speak(&self) -> bool {
        if self.welcomed.load(Ordering::SeqCst) {
            return true;
        }
        self.held.store(true, Ordering::SeqCst);
        self.welcomed.load(Ordering::SeqCst)
    }

    pub(super) fn socket(&self) -> &Socket {
        &self.socket
    }

    fn out(&self) -> MutexGuard<'_, Outbox> {
        // An outbox is plain data: a panic elsewhere while it was locked leaves it usable.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, stamp: u64) -> Option<Instant> {
        stamp.checked_sub(1).map(|nanos| self.epoch + Duration::from_nanos(nanos))
    }

    /// Queues `frame`, writing it to the socket at once when nothing else is waiting. Refused
    /// when the peer is closed, or when `limit` frames already wait for the socket.
    pub(super) fn send(&self, frame: Frame, limit: usize) -> Result<(), Refused> {
        let mut out = self.out();
        if out.closed {
            return Err(Refused::Closed(frame));
        }
        if out.queued >= limit {
            return Err(Refused::Full(frame));
        }
        self.push(&mut out, &frame);
        Ok(())
    }

    /// A pulse from the hub at `now`; false when the peer is stalled (`limit` frames waiting).
    pub(super) fn pulse(&self, seq: u64, now: Instant, limit: usize) -> bool {
        self.pulse_at.store(self.stamp(now), Ordering::Relaxed);
        self.pulse_seq.store(seq, Ordering::Relaxed);
        // A closed peer is leaving, and its departure is already on the way to the hub.
        !matches!(self.send(Frame::Pulse { seq }, limit), Err(Refused::Full(_)))
    }

    fn push(&self, out: &mut Outbox, frame: &Frame) {
        let idle = out.pending.is_empty();
        frame.encode(&mut out.pending);
        out.queued += 1;
        if idle {
            // A failed write is left for the connection task, which meets the error again.
            if let Ok(n) = self.socket.try_write(&out.pending) {
                out.pending.advance(n);
            }
            if out.pending.is_empty() {
                out.drained();
                return;
            }
            self.task.wake();
        }
    }

    /// Queues `frame` whatever the limit, as the last one: the connection writes what is
    /// pending, then closes.
    pub(super) fn close_with(&self, frame: Frame) {
        let mut out = self.out();
        if !out.closed {
            self.push(&mut out, &frame);
        }
        self.close_locked(&mut out);
    }

    /// No more frames: the connection writes what is pending, then closes.
    pub(super) fn close(&self) {
        self.close_locked(&mut self.out());
    }

    fn close_locked(&self, out: &mut Outbox) {
        out.closed = true;
        self.task.wake();
    }

    /// Closes the connection at once, whatever is pending.
    pub(super) fn cut(&self) {
        let mut out = self.out();
        out.cut = true;
        self.close_locked(&mut out);
    }

    /// Runs `f` unless the peer is closed; the hub closes a peer before it reports it offline,
    /// so whatever `f` reports comes before that.
    pub(super) fn unless_closed(&self, f: impl FnOnce()) -> bool {
        let out = self.out();
        if out.closed {
            return false;
        }
        f();
        true
    }

    /// Bytes waiting for the socket.
    pub(super) fn pending(&self) -> usize {
        self.out().pending.len()
    }

    /// Writes what is pending; registers the task to be woken when there is more to do.
    pub(super) fn poll_outgoing(&self, cx: &mut Context<'_>) -> Poll<io::Result<Outgoing>> {
        self.task.register(cx.waker());
        let mut out = self.out();
        if out.cut {
            return Poll::Ready(Ok(Outgoing::Cut));
        }
        while !out.pending.is_empty() {
            match self.socket.try_write(&out.pending) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => out.pending.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.poll_writable(cx)?.is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        out.drained();
        Poll::Ready(Ok(if out.closed { Outgoing::Closed } else { Outgoing::Idle }))
    }

    /// A frame arrived at `now`.
    pub(super) fn heard(&self, now: Instant) {
        self.heard.store(self.stamp(now), Ordering::Relaxed);
    }

    /// `ALIVE seq` arrived at `now`: its round trip, when it answers the last pulse.
    pub(super) fn answered(&self, seq: u64, now: Instant) {
        self.heard(now);
        if self.pulse_seq.load(Ordering::Relaxed) == seq {
            if let Some(sent) = self.instant(self.pulse_at.load(Ordering::Relaxed)) {
                self.rtt.store(self.stamp(self.epoch + now.saturating_duration_since(sent)), Ordering::Relaxed);
            }
        }
    }

    /// What the connection task observed, for the online list.
    pub(super) fn observation(&self) -> Observation {
        Observation {
            last_heard: self.instant(self.heard.load(Ordering::Relaxed)),
            rtt: self.instant(self.rtt.load(Ordering::Relaxed)).map(|at| at - self.epoch),
        }
    }
}

impl Outbox {
    fn drained(&mut self) {
        self.queued = 0;
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;

    use super::*;
    use crate::rt;

    /// A peer over a real loopback connection, and the client's end of it.
    fn pair() -> (Peer, TcpStream) {
        futures::executor::block_on(async {
            let listener = rt::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            (Peer::new(socket, Instant::now()), client)
        })
    }

    fn poll_outgoing(peer: &Peer) -> Poll<io::Result<Outgoing>> {
        peer.poll_outgoing(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[test]
    fn a_frame_is_written_at_once_without_any_task() {
        let (peer, client) = pair();
        assert!(peer.pulse(7, Instant::now(), 4));
        assert_eq!(peer.pending(), 0);
        let mut line = String::new();
        BufReader::new(client).read_line(&mut line).unwrap();
        assert_eq!(line, "PULSE 7\n");
    }

    #[test]
    fn a_peer_that_does_not_read_is_full_after_limit_frames_and_keeps_their_order() {
        let (peer, mut client) = pair();
        let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        // Fill the socket's buffers until frames start to wait, then `limit` more are taken.
        while peer.pending() == 0 {
            peer.send(Frame::Data(payload.clone()), 3).unwrap();
            sent += 1;
            assert!(sent < 1000, "the socket never filled up");
        }
        peer.send(Frame::Data(payload.clone()), 3).unwrap();
        peer.send(Frame::Data(payload.clone()), 3).unwrap();
        sent += 2;
        assert!(matches!(peer.send(Frame::Pulse { seq: 1 }, 3), Err(Refused::Full(Frame::Pulse { seq: 1 }))));
        assert!(!peer.pulse(2, Instant::now(), 3), "a pulse to a full peer reports it stalled");
        // Answers are not limited; closing queues the last frame whatever the limit.
        peer.send(Frame::Alive { seq: 9 }, usize::MAX).unwrap();
        peer.close_with(Frame::bye("shutdown"));
        assert!(matches!(peer.send(Frame::Pulse { seq: 3 }, usize::MAX), Err(Refused::Closed(_))));

        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        // No task to wake here: poll until the reader has drained the socket (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        let flushed = loop {
            match poll_outgoing(&peer) {
                Poll::Ready(result) => break result,
                Poll::Pending if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Poll::Pending => panic!("the pending frames were never written"),
            }
        };
        assert!(matches!(flushed, Ok(Outgoing::Closed)));
        assert_eq!(peer.pending(), 0);
        peer.socket().shutdown();
        let all = reader.join().unwrap();
        let header = format!("DATA {}\n", payload.len());
        let frame_len = header.len() + payload.len();
        assert_eq!(all.len(), sent * frame_len + "ALIVE 9\nBYE shutdown\n".len());
        assert!(all[..frame_len].starts_with(header.as_bytes()));
        assert!(all.ends_with(b"xALIVE 9\nBYE shutdown\n"), "frames in order, none torn");
    }

    #[test]
    fn a_cut_peer_stops_at_once() {
        let (peer, _client) = pair();
        peer.cut();
        assert!(matches!(poll_outgoing(&peer), Poll::Ready(Ok(Outgoing::Cut))));
        assert!(matches!(peer.send(Frame::Pulse { seq: 1 }, 8), Err(Refused::Closed(_))));
    }

    #[test]
    fn observations_carry_the_last_frame_and_the_round_trip_of_the_last_pulse() {
        let (peer, _client) = pair();
        assert_eq!(peer.observation(), Observation::default());
        let sent = Instant::now();
        assert!(peer.pulse(5, sent, 8));
        peer.answered(4, sent + Duration::from_millis(1)); // an older pulse: no round trip
        assert_eq!(peer.observation().rtt, None);
        peer.answered(5, sent + Duration::from_millis(3));
        let seen = peer.observation();
        assert_eq!(seen.rtt, Some(Duration::from_millis(3)));
        assert_eq!(seen.last_heard, Some(sent + Duration::from_millis(3)));
    }
}
