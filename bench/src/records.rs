//! What a load generator recorded, as it hands it to the report (a JSON file per dump).
//!
//! Every time is nanoseconds of `CLOCK_MONOTONIC` (see [`crate::clock`]), stamped when the
//! generator read the client's event; clients are numbered from 0 within their generator.

use serde::{Deserialize, Serialize};

/// A client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// The client.
    pub client: u32,
    /// When the client reported the loss.
    pub at: u64,
    /// The last pulse it received before (0: none).
    pub last_pulse: u64,
    /// Why, as a word: `pulse-timeout`, `eof`, `reset`, `server-error`, `goodbye`, `io`,
    /// `protocol`, `closed`.
    pub reason: String,
}

/// A connect attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The client.
    pub client: u32,
    /// When the client reported it.
    pub at: u64,
    /// `refused`, `connect-timeout`, `handshake-timeout`, `eof`, `rejected`, `io`, `protocol`.
    pub kind: String,
}

/// Everything a generator recorded within a time window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// How many clients the generator runs.
    pub clients: u32,
    /// Every `PULSE` a client received: `(client, at)`.
    pub pulses: Vec<(u32, u64)>,
    /// Every `Connected`: `(client, at)`.
    pub connects: Vec<(u32, u64)>,
    /// Every `Disconnected`.
    pub disconnects: Vec<Disconnect>,
    /// Every failed connect attempt.
    pub failures: Vec<Failure>,
}

impl Records {
    /// The records of `self` whose time lies in `[from, to]`.
    pub fn window(&self, from: u64, to: u64) -> Records {
        let inside = |at: u64| (from..=to).contains(&at);
        Records {
            clients: self.clients,
            pulses: self.pulses.iter().copied().filter(|&(_, at)| inside(at)).collect(),
            connects: self.connects.iter().copied().filter(|&(_, at)| inside(at)).collect(),
            disconnects: self.disconnects.iter().filter(|d| inside(d.at)).cloned().collect(),
            failures: self.failures.iter().filter(|f| inside(f.at)).cloned().collect(),
        }
    }

    /// Adds another generator's records; its clients are renumbered after this one's, so that
    /// every client keeps a number of its own.
    pub fn merge(&mut self, other: Records) {
        let offset = self.clients;
        self.clients += other.clients;
        self.pulses.extend(other.pulses.into_iter().map(|(client, at)| (client + offset, at)));
        self.connects.extend(other.connects.into_iter().map(|(client, at)| (client + offset, at)));
        self.disconnects.extend(other.disconnects.into_iter().map(|d| Disconnect { client: d.client + offset, ..d }));
        self.failures.extend(other.failures.into_iter().map(|f| Failure { client: f.client + offset, ..f }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_only_what_happened_inside() {
        let records = Records {
            clients: 2,
            pulses: vec![(0, 5), (1, 15), (0, 25)],
            connects: vec![(0, 1), (1, 10)],
            disconnects: vec![Disconnect { client: 1, at: 20, last_pulse: 15, reason: "eof".into() }],
            failures: vec![Failure { client: 0, at: 30, kind: "refused".into() }],
        };
        let inside = records.window(10, 20);
        assert_eq!(inside.pulses, vec![(1, 15)]);
        assert_eq!(inside.connects, vec![(1, 10)]);
        assert_eq!(inside.disconnects.len(), 1);
        assert!(inside.failures.is_empty());
        assert_eq!(inside.clients, 2);
    }

    #[test]
    fn merge_renumbers_the_other_generators_clients() {
        let mut a = Records { clients: 1, pulses: vec![(0, 1)], ..Records::default() };
        let failure = Failure { client: 0, at: 3, kind: "refused".into() };
        a.merge(Records { clients: 2, pulses: vec![(1, 2)], failures: vec![failure], ..Records::default() });
        assert_eq!(a.clients, 3);
        assert_eq!(a.pulses, vec![(0, 1), (2, 2)]);
        assert_eq!(a.failures[0].client, 1);
    }
}
