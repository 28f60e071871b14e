//! The stream check: numbered messages both ways, and the bookkeeping that tells whether any
//! got lost or duplicated.
//!
//! While the stream switch is on, the backend sends `c2s 1`, `c2s 2`, … from the client and
//! `s2c 1`, `s2c 2`, … from the embedded server, [`RATE`] a second each way. A [`Tally`] per
//! direction takes in what the sender learned (the number was accepted or refused, then
//! delivered or handed back) and what the receiver got, and counts:
//!
//! - **lost**: a number the receiver never got although it should have — the sender saw it
//!   delivered, or the receiver got a later number (messages arrive in order) — and that the
//!   sender did not get back either (undelivered, expired, refused, or gone with a killed
//!   server). The sender's and the receiver's news come from different threads, so a number
//!   counts as lost only once it has been missing for [`GRACE`];
//! - **duplicated**: a number received twice.
//!
//! Plain types, no clock: every input carries its time, and [`Tally::summary`] takes `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ledger::{Outcome, Outcomes};

/// How many numbered messages the stream sends per second, each way.
pub const RATE: u32 = 20;

/// The time between two stream messages of one direction.
pub const EVERY: Duration = Duration::from_millis(1000 / RATE as u64);

/// How long a stream message may wait in the client's outbox before it expires (a message
/// already written never expires).
pub const TTL: Duration = Duration::from_secs(10);

/// How long a number may be missing before it counts as lost.
pub const GRACE: Duration = Duration::from_secs(2);

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the main client to the embedded server.
    ClientToServer,
    /// From the embedded server to the main client.
    ServerToClient,
}

impl Direction {
    /// Both directions, client → server first.
    pub const BOTH: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    /// The row label: `client->server`.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client->server",
            Direction::ServerToClient => "server->client",
        }
    }

    /// 0 for client → server, 1 for server → client: an index into per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s ",
            Direction::ServerToClient => "s2c ",
        }
    }

    /// The stream's message number `n` in this direction: `c2s 17`.
    pub fn payload(self, n: u64) -> String {
        format!("{}{n}", self.prefix())
    }

    /// The number of a stream message in this direction, if `payload` is one.
    pub fn number(self, payload: &[u8]) -> Option<u64> {
        let digits = std::str::from_utf8(payload).ok()?.strip_prefix(self.prefix())?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|&n| n > 0)
    }

    /// Whether `text` starts like a stream message of either direction (such a text typed in
    /// would be counted by the stream check, so the app refuses to send it).
    pub fn looks_like_stream(text: &str) -> bool {
        Direction::BOTH.iter().any(|direction| text.starts_with(direction.prefix()))
    }
}

/// A set of numbers, kept as ranges: the numbers a receiver got, mostly in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    /// First number of each run → its last number.
    runs: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Whether `n` is in the set.
    pub fn contains(&self, n: u64) -> bool {
        self.runs.range(..=n).next_back().is_some_and(|(_, &last)| n <= last)
    }

    /// Adds `n`; false when it was there already.
    pub fn insert(&mut self, n: u64) -> bool {
        if self.contains(n) {
            return false;
        }
        let before = self.runs.range(..n).next_back().filter(|(_, &last)| last.checked_add(1) == Some(n));
        let before = before.map(|(&first, _)| first);
        let after = n.checked_add(1).and_then(|next| self.runs.get(&next).map(|&last| (next, last)));
        match (before, after) {
            (Some(first), Some((next, last))) => {
                self.runs.remove(&next);
                self.runs.insert(first, last);
            }
            (Some(first), None) => {
                self.runs.insert(first, n);
            }
            (None, Some((next, last))) => {
                self.runs.remove(&next);
                self.runs.insert(n, last);
            }
            (None, None) => {
                self.runs.insert(n, n);
            }
        }
        true
    }

    /// How many runs the set holds (1 for 1..=n).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// One direction of the stream as both ends saw it.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Numbers the sender's SDK accepted.
    sent: u64,
    /// Numbers it refused at once (so never sent), and why the last one was.
    refused: u64,
    last_refusal: Option<String>,
    /// The outcomes the sender learned for accepted numbers.
    outcomes: Outcomes,
    /// The highest number the sender tried; a "received" number far above it is no stream
    /// message (someone typed `c2s 99999`).
    tried: u64,
    /// What the receiver got.
    received: Ranges,
    receipts: u64,
    duplicated: u64,
    highest: u64,
    /// Numbers above `highest` the sender got back or never sent: not owed when the receiver
    /// passes them.
    excused: BTreeSet<u64>,
    /// Numbers the receiver should have and does not, and since when.
    owed: BTreeMap<u64, Instant>,
}

/// How far above the highest number tried a received number may be and still count (the
/// receiver can hear of a number before the sender's record of it arrives).
const AHEAD: u64 = 1000;

impl Tally {
    /// The sender's SDK accepted number `n` at `at`.
    pub fn sent(&mut self, n: u64, at: Instant) {
        self.sent += 1;
        self.tried = self.tried.max(n);
        if n < self.highest && !self.received.contains(n) && !self.excused.contains(&n) {
            self.owed.entry(n).or_insert(at);
        }
    }

    /// The sender's SDK refused number `n` at once: it was never sent.
    pub fn refused(&mut self, n: u64, reason: String) {
        self.refused += 1;
        self.tried = self.tried.max(n);
        self.last_refusal = Some(reason);
        self.excuse(n);
    }

    /// The sender learned the outcome of number `n` at `at`.
    pub fn settled(&mut self, n: u64, outcome: Outcome, at: Instant) {
        self.outcomes.add(outcome, 1);
        match outcome {
            Outcome::Delivered => {
                if !self.received.contains(n) {
                    self.owed.entry(n).or_insert(at);
                }
            }
            Outcome::MaybeDelivered | Outcome::NotDelivered | Outcome::Expired | Outcome::Gone => self.excuse(n),
        }
    }

    fn excuse(&mut self, n: u64) {
        self.owed.remove(&n);
        if n > self.highest {
            self.excused.insert(n);
        }
    }

    /// Whether a received `n` is plausibly a stream number (see [`AHEAD`]).
    pub fn plausible(&self, n: u64) -> bool {
        n <= self.tried.saturating_add(AHEAD)
    }

    /// The receiver got number `n` at `at`.
    pub fn received(&mut self, n: u64, at: Instant) {
        if !self.received.insert(n) {
            self.duplicated += 1;
            return;
        }
        self.receipts += 1;
        self.owed.remove(&n);
        if n > self.highest {
            // Messages arrive in order: every number between the last one and this one should
            // have come first, unless the sender got it back.
            for skipped in self.highest + 1..n {
                if !self.excused.contains(&skipped) && !self.received.contains(skipped) {
                    self.owed.entry(skipped).or_insert(at);
                }
            }
            self.highest = n;
            self.excused = self.excused.split_off(&n.saturating_add(1));
        }
    }

    /// How many numbers are missing right now, however briefly.
    pub fn missing(&self) -> usize {
        self.owed.len()
    }

    /// The numbers at `now`.
    pub fn summary(&self, now: Instant) -> Summary {
        let lost = self.owed.values().filter(|&&since| now.saturating_duration_since(since) >= GRACE).count();
        Summary {
            sent: self.sent,
            received: self.receipts,
            lost: lost as u64,
            missing: self.owed.len() as u64,
            duplicated: self.duplicated,
            refused: self.refused,
            last_refusal: self.last_refusal.clone(),
            outcomes: self.outcomes,
        }
    }
}

/// One direction of the stream, as the window shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Numbers the sender's SDK accepted.
    pub sent: u64,
    /// Distinct numbers the receiver got.
    pub received: u64,
    /// Numbers missing for longer than [`GRACE`].
    pub lost: u64,
    /// Numbers missing now, however briefly (in flight between threads, or lost).
    pub missing: u64,
    /// Numbers received more than once (each extra copy counts).
    pub duplicated: u64,
    /// Numbers refused at once, never sent.
    pub refused: u64,
    /// Why the last refused number was.
    pub last_refusal: Option<String>,
    /// What the sender learned about the accepted numbers.
    pub outcomes: Outcomes,
}

impl Summary {
    /// The live line: `client->server: sent 12 · received 12 · lost 0 · duplicated 0`, with
    /// the refusals after it when there were any.
    pub fn line(&self, direction: Direction) -> String {
        let mut line = format!(
            "{}: sent {} · received {} · lost {} · duplicated {}",
            direction.label(),
            self.sent,
            self.received,
            self.lost,
            self.duplicated
        );
        if self.refused > 0 {
            line.push_str(&format!(" · refused {}", self.refused));
        }
        line
    }

    /// Accepted numbers whose outcome the sender does not know yet.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.outcomes.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn stream_payloads_carry_their_number_and_nothing_else_parses() {
        let c2s = Direction::ClientToServer;
        assert_eq!(c2s.payload(17), "c2s 17");
        assert_eq!(c2s.number(b"c2s 17"), Some(17));
        for other in [&b"s2c 17"[..], b"c2s", b"c2s ", b"c2s 0", b"c2s +3", b"c2s 1 2", b"hello", b"\xff"] {
            assert_eq!(c2s.number(other), None, "{other:?}");
        }
        assert_eq!(Direction::ServerToClient.number(b"s2c 4"), Some(4));
        assert!(Direction::looks_like_stream("s2c 5") && !Direction::looks_like_stream("hello"));
    }

    #[test]
    fn ranges_merge_runs_and_refuse_a_number_twice() {
        let mut set = Ranges::default();
        for n in [1, 2, 3, 7, 5, 6] {
            assert!(set.insert(n), "{n} is new");
        }
        assert_eq!(set.runs(), 2, "1-3 and 5-7");
        assert!(!set.insert(6), "6 was there");
        assert!(set.insert(4));
        assert_eq!(set.runs(), 1, "4 joins both runs");
        assert!((1..=7).all(|n| set.contains(n)) && !set.contains(0) && !set.contains(8));
        assert!(set.insert(u64::MAX) && set.contains(u64::MAX), "no overflow at the top");
    }

    #[test]
    fn a_clean_stream_counts_everything_received_and_nothing_lost() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        for n in 1..=50 {
            let at = t0 + ms(n * 50);
            tally.sent(n, at);
            tally.received(n, at + ms(1));
            tally.settled(n, Outcome::Delivered, at + ms(20));
        }
        let summary = tally.summary(t0 + ms(10_000));
        assert_eq!((summary.sent, summary.received, summary.lost, summary.duplicated), (50, 50, 0, 0));
        assert_eq!(summary.outcomes.delivered, 50);
        assert_eq!(summary.in_flight(), 0);
        assert_eq!(
            summary.line(Direction::ClientToServer),
            "client->server: sent 50 · received 50 · lost 0 · duplicated 0"
        );
    }

    #[test]
    fn a_number_skipped_by_the_receiver_is_lost_once_the_grace_has_passed() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        for n in 1..=3 {
            tally.sent(n, t0);
        }
        tally.received(1, t0);
        tally.received(3, t0 + ms(100));
        assert_eq!(tally.summary(t0 + ms(100)).lost, 0, "2 may still be between threads");
        assert_eq!(tally.summary(t0 + ms(100)).missing, 1);
        assert_eq!(tally.summary(t0 + ms(100) + GRACE).lost, 1, "2 never came");
        tally.received(2, t0 + ms(100) + GRACE);
        assert_eq!(tally.summary(t0 + ms(200) + GRACE).lost, 0, "it came after all: late, not lost");
    }

    #[test]
    fn a_delivered_number_the_receiver_never_got_is_lost() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        tally.sent(1, t0);
        tally.settled(1, Outcome::Delivered, t0 + ms(30));
        assert_eq!(tally.summary(t0 + ms(30) + GRACE - ms(1)).lost, 0);
        assert_eq!(tally.summary(t0 + ms(30) + GRACE).lost, 1);
    }

    #[test]
    fn numbers_handed_back_or_refused_are_not_lost_whichever_news_comes_first() {
        let t0 = Instant::now();
        let later = t0 + GRACE * 10;
        let mut tally = Tally::default();
        for n in 1..=6 {
            tally.sent(n, t0);
        }
        tally.received(1, t0);
        // 2 comes back before the receiver passes it, 3 after.
        tally.settled(2, Outcome::MaybeDelivered, t0);
        tally.refused(7, "not sent: no such peer online".into());
        tally.received(4, t0);
        tally.settled(3, Outcome::MaybeDelivered, t0 + ms(5));
        tally.settled(5, Outcome::Expired, t0);
        tally.settled(6, Outcome::Gone, t0);
        tally.received(8, t0);
        let summary = tally.summary(later);
        assert_eq!((summary.lost, summary.missing, summary.duplicated), (0, 0, 0), "{tally:?}");
        assert_eq!(summary.refused, 1);
        assert_eq!(summary.last_refusal.as_deref(), Some("not sent: no such peer online"));
        assert_eq!(summary.outcomes.maybe_delivered, 2);
        assert!(summary.line(Direction::ServerToClient).ends_with("lost 0 · duplicated 0 · refused 1"));
    }

    #[test]
    fn a_maybe_delivered_number_that_did_arrive_is_neither_lost_nor_duplicated() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        tally.sent(1, t0);
        tally.received(1, t0);
        tally.settled(1, Outcome::MaybeDelivered, t0);
        let summary = tally.summary(t0 + GRACE * 2);
        assert_eq!((summary.received, summary.lost, summary.duplicated), (1, 0, 0));
    }

    #[test]
    fn a_number_received_twice_is_a_duplicate() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        tally.sent(1, t0);
        tally.received(1, t0);
        tally.received(1, t0);
        tally.received(1, t0);
        let summary = tally.summary(t0);
        assert_eq!((summary.received, summary.duplicated), (1, 2));
    }

    #[test]
    fn a_receipt_before_the_senders_record_is_counted_once_and_owes_nothing() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        tally.received(1, t0);
        tally.sent(1, t0 + ms(1));
        tally.settled(1, Outcome::Delivered, t0 + ms(2));
        let summary = tally.summary(t0 + GRACE * 2);
        assert_eq!((summary.sent, summary.received, summary.lost), (1, 1, 0));
    }

    #[test]
    fn a_number_far_above_anything_sent_is_no_stream_message() {
        let mut tally = Tally::default();
        tally.sent(3, Instant::now());
        assert!(tally.plausible(4) && tally.plausible(3 + AHEAD));
        assert!(!tally.plausible(4 + AHEAD));
    }
}
