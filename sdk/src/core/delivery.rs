//! Numbered, acknowledged messages (protocol 2): the two halves of one direction of a session,
//! as plain types that both sides' connection machines use.
//!
//! - [`Outbound`]: the sender's half. It numbers messages from 1 per session, keeps every one
//!   until the other side acknowledges it, knows which ones the current connection has written,
//!   and after a resume writes again, in order, what the other side has not had.
//! - [`Inbound`]: the receiver's half. It hands over `delivered + 1`, drops (and counts) what it
//!   already delivered, refuses a gap, and says when an `ACK` is due.
//!
//! Neither reads a clock: the ack delay starts at the `now` it is given.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The default delay within which a receiver acknowledges a message it handed over.
pub const DEFAULT_ACK_DELAY: Duration = Duration::from_millis(20);

/// One numbered message the sender keeps until it is acknowledged; `M` is what the sender's
/// application needs to know about it (the client's ticket, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered<M> {
    /// Its number in the session, from 1.
    pub seq: u64,
    /// The message.
    pub payload: Bytes,
    /// The sender's own data about it.
    pub meta: M,
}

/// The sending half of one direction of a session.
///
/// ```
/// use pulsewire::core::Outbound;
///
/// let mut out = Outbound::new();
/// assert_eq!(out.push("a".into(), ()), 1);
/// assert_eq!(out.push("b".into(), ()), 2);
/// let first = out.next_unwritten().unwrap().seq;
/// out.written(first);
/// // The peer acknowledges message 1: it is released; 2 was never written, so an ACK for it
/// // would be a protocol error.
/// assert_eq!(out.ack(1).unwrap().len(), 1);
/// assert!(out.ack(2).is_err());
/// ```
#[derive(Debug)]
pub struct Outbound<M> {
    /// The highest number given out.
    last: u64,
    /// The highest number the other side acknowledged.
    acked: u64,
    /// The highest number written on the current connection (at least `acked`).
    written: u64,
    /// The highest number ever written in this session.
    sent: u64,
    /// Messages `acked + 1 ..= last`, oldest first.
    kept: VecDeque<Numbered<M>>,
    /// Their payload bytes.
    bytes: usize,
}

impl<M> Default for Outbound<M> {
    fn default() -> Self {
        Outbound { last: 0, acked: 0, written: 0, sent: 0, kept: VecDeque::new(), bytes: 0 }
    }
}

/// An `ACK` (or a resume's `rx`) above the highest message the sender wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckAboveSent {
    /// The number acknowledged.
    pub acked: u64,
    /// The highest number written.
    pub sent: u64,
}

impl fmt::Display for AckAboveSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acknowledgement of message {} but only {} were sent", self.acked, self.sent)
    }
}

impl std::error::Error for AckAboveSent {}

impl<M> Outbound<M> {
    /// An empty half: the next message is number 1.
    pub fn new() -> Outbound<M> {
        Outbound::default()
    }

    /// A half whose first `acked` messages the other side already has (a client that resumes
    /// a session it saved: it numbers on from there).
    pub fn resuming_from(acked: u64) -> Outbound<M> {
        Outbound { last: acked, acked, written: acked, sent: acked, ..Outbound::default() }
    }

    /// Numbers a message and keeps it; returns its number.
    pub fn push(&mut self, payload: Bytes, meta: M) -> u64 {
        self.last += 1;
        self.bytes += payload.len();
        self.kept.push_back(Numbered { seq: self.last, payload, meta });
        self.last
    }

    /// How many messages are kept (written or not), and their payload bytes.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The payload bytes of the kept messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest number the other side acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The highest number given out.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether every message given out was acknowledged.
    pub fn is_settled(&self) -> bool {
        self.acked == self.last
    }

    /// The oldest message the current connection has not written yet.
    pub fn next_unwritten(&self) -> Option<&Numbered<M>> {
        let index = usize::try_from(self.written - self.acked).ok()?;
        self.kept.get(index)
    }

    /// Records that message `seq` (the one [`Outbound::next_unwritten`] returned) was written.
    pub fn written(&mut self, seq: u64) {
        debug_assert_eq!(seq, self.written + 1, "messages are written in order");
        self.written = self.written.max(seq);
        self.sent = self.sent.max(seq);
    }

    /// The other side acknowledged `1..=seq`: returns the messages released by it, oldest
    /// first. A lower or equal number than before releases nothing; one above what was ever
    /// written is an error.
    pub fn ack(&mut self, seq: u64) -> Result<Vec<Numbered<M>>, AckAboveSent> {
        if seq > self.sent {
            return Err(AckAboveSent { acked: seq, sent: self.sent });
        }
        Ok(self.release(seq))
    }

    fn release(&mut self, seq: u64) -> Vec<Numbered<M>> {
        let mut released = Vec::new();
        while self.acked < seq {
            // `acked < seq <= last` keeps message `acked + 1` at the front.
            let Some(message) = self.kept.pop_front() else { break };
            self.acked = message.seq;
            self.bytes -= message.payload.len();
            released.push(message);
        }
        self.written = self.written.max(self.acked);
        released
    }

    /// A new connection of the same session starts, and the other side says it has `1..=rx`:
    /// those are released (returned), and everything after them is written again, in order.
    pub fn resume(&mut self, rx: u64) -> Result<Vec<Numbered<M>>, AckAboveSent> {
        let released = self.ack(rx)?;
        self.written = self.acked;
        Ok(released)
    }

    /// The connection is gone: nothing counts as written on the next one until it resumes.
    pub fn connection_lost(&mut self) {
        self.written = self.acked;
    }

    /// Takes every kept message out, oldest first, with whether it was ever written (so that
    /// it may have been delivered). The numbering goes on from where it was.
    pub fn drain(&mut self) -> Vec<(Numbered<M>, bool)> {
        let sent = self.sent;
        self.bytes = 0;
        self.acked = self.last;
        self.written = self.last;
        self.kept
            .drain(..)
            .map(|message| {
                let was_written = message.seq <= sent;
                (message, was_written)
            })
            .collect()
    }

    /// The kept messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Numbered<M>> + '_ {
        self.kept.iter()
    }
}

/// What [`Inbound::receive`] decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The next message in order: hand it to the application.
    Deliver,
    /// A volatile message (number 0): hand it over, it is not counted.
    Volatile,
    /// A message already delivered (a replay): drop it.
    Replay,
}

/// A message numbered beyond the next one expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceGap {
    /// The number expected.
    pub expected: u64,
    /// The number received.
    pub got: u64,
}

impl fmt::Display for SequenceGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sequence gap: expected message {}, got {}", self.expected, self.got)
    }
}

impl std::error::Error for SequenceGap {}

/// The receiving half of one direction of a session.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::{Inbound, Receipt};
///
/// let now = Instant::now();
/// let delay = Duration::from_millis(20);
/// let mut inbound = Inbound::new(0);
/// assert_eq!(inbound.receive(1, now, delay), Ok(Receipt::Deliver));
/// assert_eq!(inbound.receive(1, now, delay), Ok(Receipt::Replay));
/// assert!(inbound.receive(3, now, delay).is_err()); // 2 is missing
/// assert_eq!(inbound.ack_deadline(), Some(now + delay));
/// assert_eq!(inbound.take_ack(), Some(1));
/// assert_eq!(inbound.take_ack(), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    delivered: u64,
    /// The highest number acknowledged to the other side (by `ACK` or by a handshake's `rx`).
    acked: u64,
    /// When an `ACK` must be written at the latest.
    ack_due: Option<Instant>,
    replays: u64,
}

impl Inbound {
    /// A half that has delivered `1..=delivered` already (0 for a new session).
    pub fn new(delivered: u64) -> Inbound {
        Inbound { delivered, acked: delivered, ack_due: None, replays: 0 }
    }

    /// The highest number handed to the application.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// How many replayed messages were dropped.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Decides about message `seq` received at `now`; a delivered one must be acknowledged
    /// within `ack_delay`.
    pub fn receive(&mut self, seq: u64, now: Instant, ack_delay: Duration) -> Result<Receipt, SequenceGap> {
        if seq == 0 {
            return Ok(Receipt::Volatile);
        }
        if seq <= self.delivered {
            self.replays += 1;
            return Ok(Receipt::Replay);
        }
        if seq != self.delivered + 1 {
            return Err(SequenceGap { expected: self.delivered + 1, got: seq });
        }
        self.delivered = seq;
        self.ack_due.get_or_insert(now + ack_delay);
        Ok(Receipt::Deliver)
    }

    /// When an `ACK` is due, if one is.
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The number to acknowledge now, if it is above the last one acknowledged. Write it
    /// before every `ALIVE` and when [`Inbound::ack_deadline`] passes.
    pub fn take_ack(&mut self) -> Option<u64> {
        self.ack_due = None;
        (self.delivered > self.acked).then(|| {
            self.acked = self.delivered;
            self.delivered
        })
    }

    /// A new connection's handshake told the other side `rx` = [`Inbound::delivered`]: that
    /// acknowledges everything so far.
    pub fn told(&mut self) {
        self.acked = self.delivered;
        self.ack_due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn write_all(out: &mut Outbound<u64>) -> Vec<u64> {
        let mut written = Vec::new();
        while let Some(message) = out.next_unwritten() {
            let seq = message.seq;
            written.push(seq);
            out.written(seq);
        }
        written
    }

    #[test]
    fn messages_are_numbered_from_one_and_kept_until_acknowledged() {
        let mut out = Outbound::new();
        for n in 1..=5 {
            assert_eq!(out.push(payload(n), n), n);
        }
        assert_eq!(write_all(&mut out), vec![1, 2, 3, 4, 5]);
        assert_eq!((out.len(), out.bytes()), (5, 5));
        let released: Vec<u64> = out.ack(3).unwrap().iter().map(|m| m.meta).collect();
        assert_eq!(released, vec![1, 2, 3]);
        assert_eq!((out.len(), out.acked()), (2, 3));
        assert!(out.ack(2).unwrap().is_empty(), "an older ack releases nothing");
        assert_eq!(out.ack(5).unwrap().len(), 2);
        assert!(out.is_settled());
        assert_eq!(out.bytes(), 0);
    }

    #[test]
    fn an_ack_above_what_was_written_is_an_error() {
        let mut out: Outbound<()> = Outbound::new();
        out.push(payload(1), ());
        out.push(payload(2), ());
        out.written(1);
        assert_eq!(out.ack(2), Err(AckAboveSent { acked: 2, sent: 1 }));
        assert_eq!(out.len(), 2, "nothing released by a bad ack");
    }

    #[test]
    fn after_a_lost_connection_a_resume_writes_again_what_the_other_side_lacks() {
        let mut out = Outbound::new();
        for n in 1..=4 {
            out.push(payload(n), n);
        }
        write_all(&mut out);
        out.connection_lost();
        // The other side had 1 and 2 only.
        let released: Vec<u64> = out.resume(2).unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(released, vec![1, 2]);
        out.push(payload(5), 5);
        assert_eq!(write_all(&mut out), vec![3, 4, 5], "replayed in order before the new one");
        assert_eq!(out.resume(9), Err(AckAboveSent { acked: 9, sent: 5 }));
    }

    #[test]
    fn a_resume_numbers_on_from_the_saved_state() {
        let mut out: Outbound<()> = Outbound::resuming_from(7);
        assert!(out.resume(7).unwrap().is_empty());
        assert_eq!(out.push(payload(8), ()), 8);
        assert_eq!(out.next_unwritten().map(|m| m.seq), Some(8));
    }

    #[test]
    fn drain_says_which_messages_may_have_been_delivered() {
        let mut out = Outbound::new();
        for n in 1..=3 {
            out.push(payload(n), n);
        }
        out.written(1);
        let drained: Vec<(u64, bool)> = out.drain().into_iter().map(|(m, written)| (m.seq, written)).collect();
        assert_eq!(drained, vec![(1, true), (2, false), (3, false)]);
        assert!(out.is_empty() && out.is_settled());
        assert_eq!(out.push(payload(4), 4), 4, "numbering goes on");
    }

    #[test]
    fn the_receiver_delivers_in_order_drops_replays_and_refuses_gaps() {
        let now = Instant::now();
        let delay = DEFAULT_ACK_DELAY;
        let mut inbound = Inbound::new(0);
        assert_eq!(inbound.receive(0, now, delay), Ok(Receipt::Volatile));
        assert_eq!(inbound.ack_deadline(), None, "volatile messages are not acknowledged");
        assert_eq!(inbound.receive(1, now, delay), Ok(Receipt::Deliver));
        assert_eq!(inbound.receive(2, now + delay / 2, delay), Ok(Receipt::Deliver));
        assert_eq!(inbound.ack_deadline(), Some(now + delay), "the first unacknowledged message sets the deadline");
        assert_eq!(inbound.receive(2, now, delay), Ok(Receipt::Replay));
        assert_eq!(inbound.receive(1, now, delay), Ok(Receipt::Replay));
        assert_eq!(inbound.replays(), 2);
        assert_eq!(inbound.receive(4, now, delay), Err(SequenceGap { expected: 3, got: 4 }));
        assert_eq!(inbound.delivered(), 2);
    }

    #[test]
    fn acks_never_go_down_and_a_handshake_counts_as_one() {
        let now = Instant::now();
        let mut inbound = Inbound::new(5);
        assert_eq!(inbound.take_ack(), None, "a resumed session's rx acknowledged 1..=5");
        inbound.receive(6, now, DEFAULT_ACK_DELAY).unwrap();
        inbound.told();
        assert_eq!((inbound.take_ack(), inbound.ack_deadline()), (None, None));
        inbound.receive(7, now, DEFAULT_ACK_DELAY).unwrap();
        assert_eq!(inbound.take_ack(), Some(7));
        assert_eq!(inbound.take_ack(), None);
    }
}
