//! The pure core: every decision about time, retries and liveness, as plain types.
//!
//! Nothing here opens a socket, spawns a task or reads the clock: time comes in as an argument,
//! so the tests drive these types on a virtual clock in microseconds.

mod backoff;
mod cadence;
mod delivery;
mod miss;
mod online;

pub use self::backoff::{BackoffSchedule, FirstAttempt, PolicyError, ReconnectPolicy};
pub use cadence::Cadence;
pub use delivery::{AckAboveSent, Inbound, Numbered, Outbound, Receipt, SequenceGap, DEFAULT_ACK_DELAY};
pub use miss::{MissCounter, MissWatch, Tick};
pub use online::{ConnKey, Departed, Eviction, Joined, Observation, OnlineList, PeerInfo};
