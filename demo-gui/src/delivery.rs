//! Protocol 2's promises about messages, checked live: every message's outcome as its sender
//! learns it, both ways, and for the stream's numbered messages what the receiver got.
//!
//! [`Delivery`] is what the model keeps of it: the senders' records ([`ClientSends`] per
//! client, [`ServerSends`] per server and peer), the outcome counts of every message, and a
//! [`Tally`] per direction for the stream. Plain data; every input carries its time.

use std::collections::BTreeMap;
use std::time::Instant;

use pulsewire::core::Undelivered;

use crate::ledger::{ClientSends, Outcome, Outcomes, Sent, ServerSends, SessionEnd};
use crate::stream::{Direction, Summary, Tally};

/// The senders' records and what they add up to.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// By client generation.
    clients: BTreeMap<u64, ClientSends>,
    /// By server instance and peer id.
    servers: BTreeMap<(u64, String), ServerSends>,
    /// Every message's outcome, per direction.
    outcomes: [Outcomes; 2],
    /// The stream, per direction.
    tallies: [Tally; 2],
}

impl Delivery {
    /// Client `generation` accepted `sent` with `ticket`. Returns the text of a message that
    /// turns out to be delivered already.
    pub fn client_sent(&mut self, generation: u64, ticket: u64, sent: Sent, at: Instant) -> Option<String> {
        if let Sent::Stream(n) = sent {
            self.tallies[Direction::ClientToServer.index()].sent(n, at);
        }
        let delivered = self.clients.entry(generation).or_default().accepted(ticket, sent)?;
        self.settle(Direction::ClientToServer, delivered, Outcome::Delivered, at)
    }

    /// Client `generation` reported `Delivered { up_to }`; returns the texts it delivered.
    pub fn client_delivered(&mut self, generation: u64, up_to: u64, at: Instant) -> Vec<String> {
        let delivered = self.clients.entry(generation).or_default().delivered(up_to);
        delivered
            .into_iter()
            .filter_map(|sent| self.settle(Direction::ClientToServer, sent, Outcome::Delivered, at))
            .collect()
    }

    /// Client `generation` handed a message back (undelivered or expired).
    pub fn client_handed_back(
        &mut self,
        generation: u64,
        ticket: u64,
        payload: &[u8],
        outcome: Outcome,
        at: Instant,
    ) -> Sent {
        let fallback = Sent::from_payload(Direction::ClientToServer, payload);
        let sent = self.clients.entry(generation).or_default().handed_back(ticket, fallback);
        self.settle(Direction::ClientToServer, sent.clone(), outcome, at);
        sent
    }

    /// Forgets the records of clients before `current` that have nothing open.
    pub fn forget_settled_clients(&mut self, current: u64) {
        self.clients.retain(|&generation, sends| generation >= current || !sends.is_settled());
    }

    /// The embedded server `instance` accepted `sent` for `peer` as number `seq`.
    pub fn server_sent(&mut self, instance: u64, peer: &str, seq: u64, sent: Sent, at: Instant) {
        if let Sent::Stream(n) = sent {
            self.tallies[Direction::ServerToClient.index()].sent(n, at);
        }
        self.servers.entry((instance, peer.to_owned())).or_default().accepted(seq, sent);
    }

    /// `peer` acknowledged messages up to `up_to`; returns the texts it delivered.
    pub fn server_delivered(&mut self, instance: u64, peer: &str, up_to: u64, at: Instant) -> Vec<String> {
        let delivered = self.servers.entry((instance, peer.to_owned())).or_default().delivered(up_to);
        delivered
            .into_iter()
            .filter_map(|sent| self.settle(Direction::ServerToClient, sent, Outcome::Delivered, at))
            .collect()
    }

    /// `peer`'s session ended and handed `undelivered` back.
    pub fn server_session_ended(
        &mut self,
        instance: u64,
        peer: &str,
        undelivered: &[Undelivered],
        at: Instant,
    ) -> SessionEnd {
        let handed = undelivered.iter().map(|message| {
            let sent = Sent::from_payload(Direction::ServerToClient, &message.payload);
            (message.seq, sent, message.maybe_delivered)
        });
        let end = self.servers.entry((instance, peer.to_owned())).or_default().session_ended(handed);
        for (sent, outcome) in &end.handed_back {
            self.settle(Direction::ServerToClient, sent.clone(), *outcome, at);
        }
        end
    }

    /// The embedded server `instance` is gone: what it accepted and never settled is gone with
    /// it. Returns how many messages.
    pub fn server_ended(&mut self, instance: u64, at: Instant) -> usize {
        let mut gone = Vec::new();
        self.servers.retain(|(of, _), sends| {
            if *of == instance {
                gone.extend(sends.take_open());
            }
            *of != instance
        });
        let count = gone.len();
        for sent in gone {
            self.settle(Direction::ServerToClient, sent, Outcome::Gone, at);
        }
        count
    }

    /// A stream number the sender's SDK refused at once.
    pub fn refused(&mut self, direction: Direction, n: u64, reason: String) {
        self.tallies[direction.index()].refused(n, reason);
    }

    /// A message arrived in `direction`; true when it was a stream message (and counted).
    pub fn received(&mut self, direction: Direction, payload: &[u8], at: Instant) -> bool {
        let tally = &mut self.tallies[direction.index()];
        match direction.number(payload) {
            Some(n) if tally.plausible(n) => {
                tally.received(n, at);
                true
            }
            _ => false,
        }
    }

    /// Every message's outcomes in `direction`.
    pub fn outcomes(&self, direction: Direction) -> Outcomes {
        self.outcomes[direction.index()]
    }

    /// The stream in `direction` at `now`.
    pub fn summary(&self, direction: Direction, now: Instant) -> Summary {
        self.tallies[direction.index()].summary(now)
    }

    /// Stream numbers in `direction` missing right now, however briefly.
    pub fn missing(&self, direction: Direction) -> usize {
        self.tallies[direction.index()].missing()
    }

    /// Messages in `direction` whose outcome is not known yet.
    pub fn open(&self, direction: Direction) -> usize {
        match direction {
            Direction::ClientToServer => self.clients.values().map(ClientSends::pending).sum(),
            Direction::ServerToClient => self.servers.values().map(ServerSends::pending).sum(),
        }
    }

    /// Counts an outcome; returns the message's text when it was no stream message.
    fn settle(&mut self, direction: Direction, sent: Sent, outcome: Outcome, at: Instant) -> Option<String> {
        self.outcomes[direction.index()].add(outcome, 1);
        match sent {
            Sent::Stream(n) => {
                self.tallies[direction.index()].settled(n, outcome, at);
                None
            }
            Sent::Text(text) => Some(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::stream::GRACE;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    fn undelivered(seq: u64, payload: &str, maybe_delivered: bool) -> Undelivered {
        Undelivered { seq, payload: payload.to_owned().into(), maybe_delivered }
    }

    #[test]
    fn a_resumed_client_stream_is_delivered_and_received_in_full() {
        let t0 = Instant::now();
        let mut delivery = Delivery::default();
        for n in 1..=10 {
            delivery.client_sent(1, n, Sent::Stream(n), t0);
            assert!(delivery.received(C2S, C2S.payload(n).as_bytes(), t0));
        }
        assert_eq!(delivery.client_delivered(1, 10, t0), Vec::<String>::new(), "no texts among them");
        let summary = delivery.summary(C2S, t0 + GRACE * 2);
        assert_eq!((summary.sent, summary.received, summary.lost, summary.duplicated), (10, 10, 0, 0));
        assert_eq!(delivery.outcomes(C2S).delivered, 10);
        assert_eq!(delivery.open(C2S), 0);
    }

    #[test]
    fn a_typed_message_is_reported_when_delivered_and_the_stream_ignores_it() {
        let t0 = Instant::now();
        let mut delivery = Delivery::default();
        delivery.client_sent(1, 1, Sent::Text("hello".into()), t0);
        assert!(!delivery.received(C2S, b"hello", t0));
        assert_eq!(delivery.client_delivered(1, 1, t0), vec!["hello".to_owned()]);
        assert_eq!(delivery.summary(C2S, t0).sent, 0);
        assert_eq!(delivery.outcomes(C2S).delivered, 1);
    }

    #[test]
    fn after_a_fresh_session_the_handed_back_messages_are_counted_and_not_lost() {
        let t0 = Instant::now();
        let later = t0 + GRACE * 3;
        let mut delivery = Delivery::default();
        for n in 1..=5 {
            delivery.client_sent(1, n, Sent::Stream(n), t0);
        }
        // The server got 1 and 2 and acknowledged 1; then it was killed. A new one opens a
        // fresh session: 2 and 3 were written and come back maybe delivered; 4 and 5 were
        // never written and go out in the new session.
        delivery.received(C2S, b"c2s 1", t0);
        delivery.received(C2S, b"c2s 2", t0);
        delivery.client_delivered(1, 1, t0);
        delivery.received(C2S, b"c2s 4", t0 + Duration::from_millis(1)); // overtakes the hand-back
        let back = delivery.client_handed_back(1, 2, b"c2s 2", Outcome::MaybeDelivered, t0);
        assert_eq!(back, Sent::Stream(2));
        delivery.client_handed_back(1, 3, b"c2s 3", Outcome::MaybeDelivered, t0);
        delivery.received(C2S, b"c2s 5", t0);
        delivery.client_delivered(1, 5, t0);
        let summary = delivery.summary(C2S, later);
        assert_eq!((summary.sent, summary.received, summary.lost, summary.duplicated), (5, 4, 0, 0));
        assert_eq!(summary.outcomes.maybe_delivered, 2);
        assert_eq!(delivery.outcomes(C2S), Outcomes { delivered: 3, maybe_delivered: 2, ..Outcomes::default() });
    }

    #[test]
    fn a_server_stream_across_a_kept_session_and_a_killed_server() {
        let t0 = Instant::now();
        let later = t0 + GRACE * 3;
        let mut delivery = Delivery::default();
        // Server 1, one session: 1..=3 written; the client got 1 and 2 and acknowledged 1.
        for n in 1..=3 {
            delivery.server_sent(1, "desk", n, Sent::Stream(n), t0);
        }
        delivery.received(S2C, b"s2c 1", t0);
        delivery.received(S2C, b"s2c 2", t0);
        delivery.server_delivered(1, "desk", 1, t0);
        // Killed: 2 and 3 are gone with it (2 arrived all the same).
        assert_eq!(delivery.server_ended(1, t0), 2);
        // Server 2 refuses 4 (the client is not back yet), then takes 5 in a fresh session.
        delivery.refused(S2C, 4, "not sent: no such peer online".into());
        delivery.server_sent(2, "desk", 1, Sent::Stream(5), t0);
        delivery.received(S2C, b"s2c 5", t0);
        assert_eq!(delivery.server_delivered(2, "desk", 1, t0), Vec::<String>::new());
        // Its session ends later with an echo handed back.
        delivery.server_sent(2, "desk", 2, Sent::Text("hi".into()), t0);
        let end = delivery.server_session_ended(2, "desk", &[undelivered(2, "hi", false)], t0);
        assert_eq!(end.handed_back, vec![(Sent::Text("hi".into()), Outcome::NotDelivered)]);
        let summary = delivery.summary(S2C, later);
        assert_eq!(
            (summary.sent, summary.received, summary.lost, summary.duplicated, summary.refused),
            (4, 3, 0, 0, 1)
        );
        assert_eq!(delivery.outcomes(S2C), Outcomes { delivered: 2, not_delivered: 1, gone: 2, ..Outcomes::default() });
        assert_eq!(delivery.open(S2C), 0);
    }

    #[test]
    fn a_server_message_acknowledged_but_never_seen_by_the_client_is_lost() {
        let t0 = Instant::now();
        let mut delivery = Delivery::default();
        delivery.server_sent(1, "desk", 1, Sent::Stream(1), t0);
        delivery.server_delivered(1, "desk", 1, t0);
        assert_eq!(delivery.summary(S2C, t0 + GRACE).lost, 1);
    }

    #[test]
    fn settled_records_of_old_clients_are_forgotten() {
        let t0 = Instant::now();
        let mut delivery = Delivery::default();
        delivery.client_sent(1, 1, Sent::Stream(1), t0);
        delivery.client_sent(2, 1, Sent::Stream(2), t0);
        delivery.forget_settled_clients(2);
        assert_eq!(delivery.open(C2S), 2, "generation 1 still has a message open");
        delivery.client_handed_back(1, 1, b"c2s 1", Outcome::NotDelivered, t0);
        delivery.forget_settled_clients(2);
        assert_eq!(delivery.clients.len(), 1);
    }
}
