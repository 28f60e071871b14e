//! The senders' records: what each side sent, and the outcome its SDK reported for it.
//!
//! Protocol 2 ends every reliable message in exactly one outcome, but the SDK names a message
//! differently on each side: the client's events name it by ticket (and `Delivered` is
//! cumulative over tickets), the server's by its number in the session (and `Delivered` is
//! cumulative within one session, whose numbers start again at 1 in a fresh one). These plain
//! types turn those events back into *which message* each outcome is about.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::stream::Direction;

/// What a message was, as far as the window cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A stream message and its number.
    Stream(u64),
    /// Anything else (a message typed in, an echo), as text.
    Text(String),
}

impl Sent {
    /// What `payload`, sent in `direction`, was.
    pub fn from_payload(direction: Direction, payload: &[u8]) -> Sent {
        match direction.number(payload) {
            Some(n) => Sent::Stream(n),
            None => Sent::Text(String::from_utf8_lossy(payload).into_owned()),
        }
    }
}

/// How a reliable message ended, as its sender learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiving application has it (acknowledged).
    Delivered,
    /// Handed back: it was written and may have arrived (a fresh session began, or a kept
    /// session ended).
    MaybeDelivered,
    /// Handed back: it never left the sender.
    NotDelivered,
    /// Its time to live passed before it could be written (client only).
    Expired,
    /// Accepted by an embedded server that was then killed: no outcome will ever come, and it
    /// may or may not have arrived.
    Gone,
}

impl Outcome {
    /// The outcome of a message handed back, by whether it may have arrived.
    pub fn handed_back(maybe_delivered: bool) -> Outcome {
        if maybe_delivered {
            Outcome::MaybeDelivered
        } else {
            Outcome::NotDelivered
        }
    }
}

/// How many messages ended in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Acknowledged by the receiving application.
    pub delivered: u64,
    /// Handed back, may have arrived.
    pub maybe_delivered: u64,
    /// Handed back, never left.
    pub not_delivered: u64,
    /// Expired unwritten.
    pub expired: u64,
    /// Gone with a killed server.
    pub gone: u64,
}

impl Outcomes {
    /// Counts `count` more messages with `outcome`.
    pub fn add(&mut self, outcome: Outcome, count: u64) {
        let counter = match outcome {
            Outcome::Delivered => &mut self.delivered,
            Outcome::MaybeDelivered => &mut self.maybe_delivered,
            Outcome::NotDelivered => &mut self.not_delivered,
            Outcome::Expired => &mut self.expired,
            Outcome::Gone => &mut self.gone,
        };
        *counter += count;
    }

    /// Every message with an outcome.
    pub fn total(&self) -> u64 {
        self.delivered + self.maybe_delivered + self.not_delivered + self.expired + self.gone
    }
}

/// One client's messages by ticket, until each has its outcome.
///
/// The record of a send (from the thread that sent) and the events about it (from the thread
/// that reads the client's events) may arrive in either order: a `Delivered` that passes a
/// ticket not recorded yet is remembered as a mark, and a message handed back before its
/// record is known by its ticket.
#[derive(Debug, Clone, Default)]
pub struct ClientSends {
    pending: BTreeMap<u64, Sent>,
    /// The highest ticket a `Delivered` covered.
    delivered_up_to: u64,
    /// Tickets handed back (undelivered, expired) before their record arrived.
    early: BTreeSet<u64>,
}

impl ClientSends {
    /// The client accepted `sent` with `ticket`. Returns it at once when a `Delivered` already
    /// covered it.
    pub fn accepted(&mut self, ticket: u64, sent: Sent) -> Option<Sent> {
        if self.early.remove(&ticket) {
            return None;
        }
        if ticket <= self.delivered_up_to {
            return Some(sent);
        }
        self.pending.insert(ticket, sent);
        None
    }

    /// `Delivered { up_to }`: every message up to that ticket with no other outcome yet.
    pub fn delivered(&mut self, up_to: u64) -> Vec<Sent> {
        self.delivered_up_to = self.delivered_up_to.max(up_to);
        let later = self.pending.split_off(&up_to.saturating_add(1));
        std::mem::replace(&mut self.pending, later).into_values().collect()
    }

    /// A message handed back (undelivered or expired): what it was, by its record, or by its
    /// payload (`fallback`) when the record has not arrived.
    pub fn handed_back(&mut self, ticket: u64, fallback: Sent) -> Sent {
        match self.pending.remove(&ticket) {
            Some(sent) => sent,
            None => {
                self.early.insert(ticket);
                fallback
            }
        }
    }

    /// Messages waiting for their outcome.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is open: no message waits for its outcome, and no outcome for its
    /// record.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && self.early.is_empty()
    }
}

/// One peer's messages on one server by session number, until each has its outcome.
///
/// The server numbers messages per session, from 1, and a fresh session starts again: the
/// records are kept in *runs*, one per session that got messages, and a number that is not
/// above the one before starts a new run. All sends and events of one server reach the
/// model from one thread, in the order that thread saw them, and the server's own order
/// guarantees the rest: a `Delivered` or a session's end is about the oldest run with
/// messages still open (older runs are settled), and `Delivered` only ever moves forward.
#[derive(Debug, Clone, Default)]
pub struct ServerSends {
    runs: VecDeque<VecDeque<(u64, Sent)>>,
    last_seq: u64,
}

/// What a session's end settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnd {
    /// The messages handed back, and how.
    pub handed_back: Vec<(Sent, Outcome)>,
    /// Messages of the ended session that were neither delivered nor handed back: the SDK
    /// broke its promise of one outcome each. They stay without an outcome.
    pub unaccounted: Vec<Sent>,
}

impl ServerSends {
    /// The server accepted `sent` as number `seq` of the peer's session.
    pub fn accepted(&mut self, seq: u64, sent: Sent) {
        if seq <= self.last_seq || self.runs.is_empty() {
            self.runs.push_back(VecDeque::new());
        }
        self.last_seq = seq;
        if let Some(run) = self.runs.back_mut() {
            run.push_back((seq, sent));
        }
    }

    /// `Delivered { up_to }`: the open messages of the oldest run up to that number.
    pub fn delivered(&mut self, up_to: u64) -> Vec<Sent> {
        let mut delivered = Vec::new();
        if let Some(run) = self.runs.front_mut() {
            while run.front().is_some_and(|&(seq, _)| seq <= up_to) {
                if let Some((_, sent)) = run.pop_front() {
                    delivered.push(sent);
                }
            }
        }
        self.drop_settled_runs();
        delivered
    }

    /// The peer's session ended and handed back `undelivered` (number, payload as sent, may it
    /// have arrived). An end that hands nothing back settles nothing: that session's messages
    /// were all delivered (or it had none).
    pub fn session_ended(&mut self, undelivered: impl IntoIterator<Item = (u64, Sent, bool)>) -> SessionEnd {
        let mut end = SessionEnd::default();
        let mut touched = false;
        for (seq, fallback, maybe_delivered) in undelivered {
            let outcome = Outcome::handed_back(maybe_delivered);
            let found = self.runs.front_mut().and_then(|run| {
                let at = run.iter().position(|&(s, _)| s == seq)?;
                run.remove(at).map(|(_, sent)| sent)
            });
            touched |= found.is_some();
            end.handed_back.push((found.unwrap_or(fallback), outcome));
        }
        if touched {
            if let Some(run) = self.runs.pop_front() {
                end.unaccounted = run.into_iter().map(|(_, sent)| sent).collect();
            }
        }
        self.drop_settled_runs();
        end
    }

    /// Every message still open: the server is gone and will settle none of them.
    pub fn take_open(&mut self) -> Vec<Sent> {
        self.last_seq = 0;
        self.runs.drain(..).flatten().map(|(_, sent)| sent).collect()
    }

    /// Messages waiting for their outcome.
    pub fn pending(&self) -> usize {
        self.runs.iter().map(VecDeque::len).sum()
    }

    fn drop_settled_runs(&mut self) {
        while self.runs.len() > 1 && self.runs.front().is_some_and(VecDeque::is_empty) {
            self.runs.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(numbers: impl IntoIterator<Item = u64>) -> Vec<Sent> {
        numbers.into_iter().map(Sent::Stream).collect()
    }

    #[test]
    fn a_payload_is_a_stream_number_or_text() {
        assert_eq!(Sent::from_payload(Direction::ClientToServer, b"c2s 9"), Sent::Stream(9));
        assert_eq!(Sent::from_payload(Direction::ServerToClient, b"c2s 9"), Sent::Text("c2s 9".into()));
    }

    #[test]
    fn outcomes_add_up() {
        let mut outcomes = Outcomes::default();
        outcomes.add(Outcome::Delivered, 5);
        outcomes.add(Outcome::handed_back(true), 1);
        outcomes.add(Outcome::handed_back(false), 2);
        outcomes.add(Outcome::Expired, 1);
        outcomes.add(Outcome::Gone, 3);
        assert_eq!((outcomes.delivered, outcomes.maybe_delivered, outcomes.not_delivered), (5, 1, 2));
        assert_eq!(outcomes.total(), 12);
    }

    #[test]
    fn client_deliveries_settle_every_ticket_up_to_the_mark() {
        let mut sends = ClientSends::default();
        for ticket in 1..=4 {
            assert_eq!(sends.accepted(ticket, Sent::Stream(ticket)), None);
        }
        assert_eq!(sends.delivered(2), stream([1, 2]));
        assert_eq!(sends.handed_back(3, Sent::Text("ignored".into())), Sent::Stream(3));
        assert_eq!(sends.delivered(4), stream([4]), "3 had its outcome already");
        assert_eq!(sends.pending(), 0);
    }

    #[test]
    fn a_client_delivery_that_overtakes_the_record_settles_it_when_it_comes() {
        let mut sends = ClientSends::default();
        assert_eq!(sends.delivered(2), Vec::new());
        assert_eq!(sends.accepted(1, Sent::Stream(10)), Some(Sent::Stream(10)));
        assert_eq!(sends.accepted(3, Sent::Stream(12)), None);
        assert_eq!(sends.pending(), 1);
    }

    #[test]
    fn a_message_handed_back_before_its_record_is_settled_by_its_payload() {
        let mut sends = ClientSends::default();
        assert_eq!(sends.handed_back(1, Sent::Stream(7)), Sent::Stream(7));
        sends.delivered(1);
        assert_eq!(sends.accepted(1, Sent::Stream(7)), None, "not delivered as well");
        assert_eq!(sends.pending(), 0);
    }

    #[test]
    fn server_deliveries_settle_the_open_messages_of_the_session() {
        let mut sends = ServerSends::default();
        for seq in 1..=5 {
            sends.accepted(seq, Sent::Stream(seq + 100));
        }
        assert_eq!(sends.delivered(3), stream([101, 102, 103]));
        assert_eq!(sends.delivered(3), Vec::new(), "nothing twice");
        assert_eq!(sends.pending(), 2);
    }

    #[test]
    fn a_fresh_session_starts_a_new_run_that_the_old_sessions_acknowledgements_do_not_touch() {
        let mut sends = ServerSends::default();
        sends.accepted(1, Sent::Stream(1));
        sends.accepted(2, Sent::Stream(2));
        sends.accepted(3, Sent::Stream(3));
        // The session is lost and a fresh one opens before this thread hears of it.
        sends.accepted(1, Sent::Stream(4));
        sends.accepted(2, Sent::Text("hello".into()));
        assert_eq!(sends.delivered(2), stream([1, 2]), "the old session's ACK 2 is about 1 and 2");
        let end = sends.session_ended([(3, Sent::Text("s2c 3".into()), true)]);
        assert_eq!(end.handed_back, vec![(Sent::Stream(3), Outcome::MaybeDelivered)]);
        assert!(end.unaccounted.is_empty());
        assert_eq!(sends.delivered(2), vec![Sent::Stream(4), Sent::Text("hello".into())]);
        assert_eq!(sends.pending(), 0);
    }

    #[test]
    fn a_session_that_ends_with_nothing_to_hand_back_settles_nothing() {
        let mut sends = ServerSends::default();
        sends.accepted(1, Sent::Stream(1));
        assert_eq!(sends.delivered(1), stream([1]));
        // The next session's first message is recorded before the old session's end is read.
        sends.accepted(1, Sent::Stream(2));
        assert_eq!(sends.session_ended([]), SessionEnd::default());
        assert_eq!(sends.delivered(1), stream([2]));
    }

    #[test]
    fn a_session_end_that_forgets_a_message_reports_it_unaccounted() {
        let mut sends = ServerSends::default();
        sends.accepted(1, Sent::Stream(1));
        sends.accepted(2, Sent::Stream(2));
        sends.accepted(1, Sent::Stream(3)); // the next session
        let end = sends.session_ended([(2, Sent::Stream(2), false)]);
        assert_eq!(end.handed_back, vec![(Sent::Stream(2), Outcome::NotDelivered)]);
        assert_eq!(end.unaccounted, stream([1]));
        assert_eq!(sends.delivered(1), stream([3]), "the next session is untouched");
    }

    #[test]
    fn a_killed_server_leaves_every_open_message_without_an_outcome() {
        let mut sends = ServerSends::default();
        sends.accepted(1, Sent::Stream(1));
        sends.accepted(2, Sent::Stream(2));
        sends.accepted(1, Sent::Stream(3));
        sends.delivered(1);
        assert_eq!(sends.take_open(), stream([2, 3]));
        assert_eq!(sends.pending(), 0);
    }
}
