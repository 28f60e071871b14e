//! Admission: the operator's limits on connections, as a plain type (no sockets, no tasks), and
//! the thin shared shell around it that the accept loop and the connection tasks use.
//!
//! Three numbers bound what a crowd of peers, friendly or not, can make the server hold:
//!
//! - **connections per IP address** (`max_connections_per_ip`, off by default): connections in
//!   the handshake or online, per source address;
//! - **handshakes in flight** (`max_handshakes`): connections accepted whose `HELLO` has not
//!   arrived yet, so that peers that connect and say nothing (slowloris) cannot pile up;
//! - **refusals in flight**: a refused connection is told why (`ERROR full …`) and lingers for a
//!   moment so that the answer is not lost to a reset. At most as many refusals as handshakes
//!   are under way at once; beyond that a new connection is closed without a word.
//!
//! The limit on online peers (`max_peers`) is the hub's, which owns the online list.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why a connection was refused at the door. Sent to the peer as `ERROR full <text>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address already holds as many connections as one address may.
    PerIp {
        /// The address.
        ip: IpAddr,
        /// The limit.
        limit: usize,
    },
    /// As many connections as allowed are already in their handshake.
    Handshakes {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PerIp { ip, limit } => write!(f, "too many connections from {ip} (limit {limit})"),
            Refusal::Handshakes { limit } => write!(f, "too many handshakes in flight (limit {limit})"),
        }
    }
}

/// What [`Admission::admit`] decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let it in: it starts its handshake.
    Handshake,
    /// Refuse it with `ERROR full`, then close it.
    Refuse(Refusal),
    /// Close it at once without a word: too many refusals are under way already.
    Drop,
}

/// Where an admitted connection stands, to release the right counters when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted, no `HELLO` yet.
    Handshake,
    /// Its `HELLO` arrived (it is online, or about to be answered); it still counts for its
    /// address.
    Settled,
    /// Being refused at the door.
    Refusing,
}

/// The counts behind the connection limits.
///
/// ```text
/// admit(ip) ──► Handshake ──settled()──► Settled ──release──► gone
///          └──► Refusing ───────────────────────release──► gone
/// ```
#[derive(Debug)]
pub(crate) struct Admission {
    per_ip_limit: Option<usize>,
    handshake_limit: usize,
    per_ip: HashMap<IpAddr, usize>,
    handshakes: usize,
    refusing: usize,
}

impl Admission {
    /// Counts nothing yet; `per_ip_limit` of `None` means no limit per address.
    pub(crate) fn new(per_ip_limit: Option<usize>, handshake_limit: usize) -> Admission {
        Admission { per_ip_limit, handshake_limit, per_ip: HashMap::new(), handshakes: 0, refusing: 0 }
    }

    /// Decides for a new connection from `ip`, and counts it in its stage.
    pub(crate) fn admit(&mut self, ip: IpAddr) -> Verdict {
        let ip = ip.to_canonical();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = match self.per_ip_limit {
            Some(limit) if from_ip >= limit => Some(Refusal::PerIp { ip, limit }),
            _ if self.handshakes >= self.handshake_limit => Some(Refusal::Handshakes { limit: self.handshake_limit }),
            _ => None,
        };
        match refusal {
            None => {
                self.handshakes += 1;
                *self.per_ip.entry(ip).or_insert(0) += 1;
                Verdict::Handshake
            }
            Some(_) if self.refusing >= self.handshake_limit => Verdict::Drop,
            Some(refusal) => {
                self.refusing += 1;
                Verdict::Refuse(refusal)
            }
        }
    }

    /// A connection's `HELLO` arrived: it no longer counts as in flight.
    pub(crate) fn settled(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }

    /// A connection from `ip` in `stage` has ended.
    pub(crate) fn release(&mut self, ip: IpAddr, stage: Stage) {
        let ip = ip.to_canonical();
        match stage {
            Stage::Refusing => self.refusing = self.refusing.saturating_sub(1),
            Stage::Handshake | Stage::Settled => {
                if stage == Stage::Handshake {
                    self.handshakes = self.handshakes.saturating_sub(1);
                }
                if let Some(count) = self.per_ip.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
        }
    }

    /// Connections in their handshake.
    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Connections counted for `ip` (handshake or settled).
    #[cfg(test)]
    fn connections_of(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// The server's [`Admission`], shared by the accept loop (which admits) and the connection
/// tasks (whose [`Slot`]s release their counts when dropped, however the task ends).
#[derive(Debug, Clone)]
pub(crate) struct Gate(Arc<Mutex<Admission>>);

impl Gate {
    pub(crate) fn new(admission: Admission) -> Gate {
        Gate(Arc::new(Mutex::new(admission)))
    }

    /// Every critical section is a few counter updates: a panic cannot leave them half done.
    fn lock(&self) -> MutexGuard<'_, Admission> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits or refuses a new connection from `ip`.
    pub(crate) fn admit(&self, ip: IpAddr) -> Admitted {
        let verdict = self.lock().admit(ip);
        let slot = |stage| Slot { gate: self.clone(), ip, stage };
        match verdict {
            Verdict::Handshake => Admitted::Handshake(slot(Stage::Handshake)),
            Verdict::Refuse(refusal) => Admitted::Refused(slot(Stage::Refusing), refusal),
            Verdict::Drop => Admitted::Dropped,
        }
    }

    /// Connections in their handshake right now.
    pub(crate) fn handshakes(&self) -> usize {
        self.lock().handshakes()
    }
}

/// What [`Gate::admit`] decided, with the slot that holds the connection's counts.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// Start the handshake.
    Handshake(Slot),
    /// Refuse with `ERROR full`.
    Refused(Slot, Refusal),
    /// Close at once.
    Dropped,
}

/// A connection's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Gate,
    ip: IpAddr,
    stage: Stage,
}

impl Slot {
    /// The peer's `HELLO` arrived: it no longer counts as a handshake in flight.
    pub(crate) fn settle(&mut self) {
        if self.stage == Stage::Handshake {
            self.gate.lock().settled();
            self.stage = Stage::Settled;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.lock().release(self.ip, self.stage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_from_one_address_are_limited_and_other_addresses_are_not() {
        let mut admission = Admission::new(Some(2), 100);
        let a = ip("10.0.0.1");
        assert_eq!(admission.admit(a), Verdict::Handshake);
        assert_eq!(admission.admit(a), Verdict::Handshake);
        assert_eq!(admission.admit(a), Verdict::Refuse(Refusal::PerIp { ip: a, limit: 2 }));
        assert_eq!(admission.admit(ip("10.0.0.2")), Verdict::Handshake);
        // A settled (online) connection still counts for its address.
        admission.settled();
        assert_eq!(admission.admit(a), Verdict::Refuse(Refusal::PerIp { ip: a, limit: 2 }));
        admission.release(a, Stage::Settled);
        assert_eq!(admission.connections_of(a), 1);
        assert_eq!(admission.admit(a), Verdict::Handshake);
    }

    #[test]
    fn handshakes_in_flight_are_bounded_and_online_peers_do_not_count() {
        let mut admission = Admission::new(None, 3);
        let a = ip("127.0.0.1");
        for _ in 0..3 {
            assert_eq!(admission.admit(a), Verdict::Handshake);
        }
        assert_eq!(admission.admit(a), Verdict::Refuse(Refusal::Handshakes { limit: 3 }));
        // One handshake completes: its place is free for the next newcomer.
        admission.settled();
        assert_eq!(admission.handshakes(), 2);
        assert_eq!(admission.admit(a), Verdict::Handshake);
        // One times out and closes.
        admission.release(a, Stage::Handshake);
        assert_eq!(admission.admit(a), Verdict::Handshake);
        assert_eq!(admission.handshakes(), 3);
        assert_eq!(admission.connections_of(a), 4, "no per-address limit: every connection counted, none refused");
    }

    #[test]
    fn refusals_are_bounded_too_and_beyond_them_connections_are_dropped() {
        let mut admission = Admission::new(None, 2);
        let a = ip("127.0.0.1");
        admission.admit(a);
        admission.admit(a);
        assert!(matches!(admission.admit(a), Verdict::Refuse(_)));
        assert!(matches!(admission.admit(a), Verdict::Refuse(_)));
        assert_eq!(admission.admit(a), Verdict::Drop);
        admission.release(a, Stage::Refusing);
        assert!(matches!(admission.admit(a), Verdict::Refuse(_)));
        // Refusals never count for the address.
        assert_eq!(admission.connections_of(a), 2);
    }

    #[test]
    fn the_per_address_limit_is_checked_before_the_handshake_bound() {
        let mut admission = Admission::new(Some(1), 2);
        let a = ip("127.0.0.1");
        admission.admit(a);
        admission.admit(ip("127.0.0.2"));
        assert_eq!(admission.admit(a), Verdict::Refuse(Refusal::PerIp { ip: a, limit: 1 }));
        assert_eq!(admission.admit(ip("127.0.0.3")), Verdict::Refuse(Refusal::Handshakes { limit: 2 }));
    }

    #[test]
    fn an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address() {
        let mut admission = Admission::new(Some(1), 10);
        assert_eq!(admission.admit(ip("192.0.2.7")), Verdict::Handshake);
        assert!(matches!(admission.admit(ip("::ffff:192.0.2.7")), Verdict::Refuse(Refusal::PerIp { .. })));
        admission.release(ip("::ffff:192.0.2.7"), Stage::Handshake);
        assert_eq!(admission.connections_of(ip("192.0.2.7")), 0);
        assert_eq!(admission.handshakes(), 0);
    }

    #[test]
    fn slots_give_their_place_back_when_dropped_whatever_their_stage() {
        let gate = Gate::new(Admission::new(Some(1), 1));
        let a = ip("127.0.0.1");
        let Admitted::Handshake(mut first) = gate.admit(a) else { panic!("the first is admitted") };
        assert!(matches!(gate.admit(a), Admitted::Refused(_, Refusal::PerIp { .. })));
        first.settle();
        assert_eq!(gate.handshakes(), 0);
        drop(first);
        let Admitted::Handshake(second) = gate.admit(a) else { panic!("the place was given back") };
        drop(second);
        assert_eq!(gate.handshakes(), 0);
        assert_eq!(gate.lock().connections_of(a), 0);
    }
}
