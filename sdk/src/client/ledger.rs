//! The client's own pulses on one connection, as a plain type (no socket, no clock): the probes
//! waiting for their answer, and the messages written but not yet confirmed.
//!
//! A successful write only means the bytes reached the local kernel: if the server dies right
//! after, they are gone. So the writer follows every batch of messages with a `PULSE` of the
//! client's own, and the server answers a pulse that follows messages only once it has handed
//! them to its application. An `ALIVE` for pulse *n* thus confirms every batch sealed with a
//! number up to *n*; what is still unconfirmed when the connection ends is handed back to the
//! application as [`Event::Undelivered`](crate::Event::Undelivered).
//!
//! Probes ([`Client::probe`](crate::Client::probe)) and these confirmation pulses share one
//! numbering (1, 2, … per connection), as the protocol asks of the client's pulses.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// How many probes may wait for their answer at once.
pub(crate) const MAX_PROBES: usize = 64;

/// See the module documentation. `W` is what a waiting probe keeps (its start and its answer
/// channel, in the client).
#[derive(Debug)]
pub(crate) struct Ledger<W> {
    /// The number of the last pulse of this connection.
    last_seq: u64,
    probes: HashMap<u64, W>,
    /// Messages taken from the send queue for the batch being put together.
    batch: Vec<Bytes>,
    /// Sealed batches, oldest first, each with the number of the pulse written right behind it.
    sealed: VecDeque<(u64, Vec<Bytes>)>,
}

impl<W> Default for Ledger<W> {
    fn default() -> Self {
        Ledger { last_seq: 0, probes: HashMap::new(), batch: Vec::new(), sealed: VecDeque::new() }
    }
}

impl<W> Ledger<W> {
    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Registers a probe; returns its pulse number, or `None` when [`MAX_PROBES`] wait already.
    pub(crate) fn probe(&mut self, waiter: W) -> Option<u64> {
        if self.probes.len() >= MAX_PROBES {
            return None;
        }
        let seq = self.next_seq();
        self.probes.insert(seq, waiter);
        Some(seq)
    }

    /// Forgets a probe whose pulse could not be sent.
    pub(crate) fn forget_probe(&mut self, seq: u64) {
        self.probes.remove(&seq);
    }

    /// Drops every waiting probe (the connection ended).
    pub(crate) fn clear_probes(&mut self) {
        self.probes.clear();
    }

    /// A message goes into the batch being put together.
    pub(crate) fn take(&mut self, payload: Bytes) {
        self.batch.push(payload);
    }

    /// Closes the batch: returns the number of the pulse to write right after it, or `None`
    /// when it holds no message.
    pub(crate) fn seal(&mut self) -> Option<u64> {
        if self.batch.is_empty() {
            return None;
        }
        let seq = self.next_seq();
        self.sealed.push_back((seq, std::mem::take(&mut self.batch)));
        Some(seq)
    }

    /// `ALIVE seq` arrived: returns the probe waiting for it, if any, and how many messages it
    /// confirmed.
    pub(crate) fn alive(&mut self, seq: u64) -> (Option<W>, usize) {
        let probe = self.probes.remove(&seq);
        let mut confirmed = 0;
        while self.sealed.front().is_some_and(|(sealed_seq, _)| *sealed_seq <= seq) {
            if let Some((_, batch)) = self.sealed.pop_front() {
                confirmed += batch.len();
            }
        }
        (probe, confirmed)
    }

    /// Whether every message taken was confirmed.
    pub(crate) fn is_settled(&self) -> bool {
        self.batch.is_empty() && self.sealed.is_empty()
    }

    /// Takes every message not confirmed, in the order they were sent.
    pub(crate) fn unconfirmed(&mut self) -> Vec<Bytes> {
        let mut messages: Vec<Bytes> = self.sealed.drain(..).flat_map(|(_, batch)| batch).collect();
        messages.append(&mut self.batch);
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn an_answer_confirms_every_batch_sealed_up_to_its_number() {
        let mut ledger = Ledger::<()>::default();
        ledger.take(msg("a"));
        ledger.take(msg("b"));
        assert_eq!(ledger.seal(), Some(1));
        ledger.take(msg("c"));
        assert_eq!(ledger.seal(), Some(2));
        ledger.take(msg("d"));
        assert_eq!(ledger.seal(), Some(3));
        assert_eq!(ledger.alive(2), (None, 3));
        assert!(!ledger.is_settled());
        assert_eq!(ledger.unconfirmed(), vec![msg("d")]);
        assert!(ledger.is_settled());
    }

    #[test]
    fn an_empty_batch_needs_no_pulse() {
        let mut ledger = Ledger::<()>::default();
        assert_eq!(ledger.seal(), None);
        assert!(ledger.is_settled());
    }

    #[test]
    fn probes_and_confirmations_share_one_numbering() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.probe("first"), Some(1));
        ledger.take(msg("a"));
        assert_eq!(ledger.seal(), Some(2));
        assert_eq!(ledger.probe("second"), Some(3));
        // The answer to the first probe comes before the batch's pulse: it confirms nothing.
        assert_eq!(ledger.alive(1), (Some("first"), 0));
        // The answer to a later probe confirms the batch before it.
        assert_eq!(ledger.alive(3), (Some("second"), 1));
        assert!(ledger.is_settled());
        // An answer that matches nothing is harmless.
        assert_eq!(ledger.alive(99), (None, 0));
    }

    #[test]
    fn unconfirmed_messages_come_back_in_the_order_they_were_sent() {
        let mut ledger = Ledger::<()>::default();
        ledger.take(msg("1"));
        ledger.seal();
        ledger.take(msg("2"));
        ledger.take(msg("3"));
        ledger.seal();
        ledger.take(msg("4"));
        assert_eq!(ledger.unconfirmed(), vec![msg("1"), msg("2"), msg("3"), msg("4")]);
    }

    #[test]
    fn probes_are_limited_and_a_forgotten_one_frees_its_place() {
        let mut ledger = Ledger::default();
        for n in 0..MAX_PROBES {
            assert!(ledger.probe(n).is_some());
        }
        assert_eq!(ledger.probe(MAX_PROBES), None);
        ledger.forget_probe(1);
        assert!(ledger.probe(0).is_some());
        ledger.clear_probes();
        assert!(ledger.probe(0).is_some());
    }
}
