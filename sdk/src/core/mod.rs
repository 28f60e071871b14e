//! The pure core: every decision about time, retries and liveness, as plain types.
//!
//! Nothing here opens a socket, spawns a task or reads the clock: time comes in as an argument,
//! so the tests drive these types on a virtual clock in microseconds.

mod backoff;
mod cadence;
mod client_machine;
mod delivery;
mod hub;
mod miss;
mod online;
#[cfg(test)]
mod pair;
mod server_machine;
mod sessions;
mod token_renewal;

pub use self::backoff::{BackoffSchedule, FirstAttempt, PolicyError, ReconnectPolicy};
pub use cadence::Cadence;
pub use client_machine::{
    ClientMachine, ClientMachineConfig, ConnectionEnd, OutboxLimits, OutboxStatus, ResumeState, SendOptions, MAX_PROBES,
};
pub use delivery::{AckAboveSent, Inbound, Numbered, Outbound, Receipt, SequenceGap, DEFAULT_ACK_DELAY};
pub use hub::{HubConfig, HubCore, Join, PeerLink, Welcome};
pub use miss::{MissCounter, MissWatch, Tick};
pub use online::{ConnKey, Departed, Eviction, Joined, Observation, OnlineList, PeerInfo};
pub use server_machine::{
    ConnEnd, ServerMachine, ServerMachineConfig, ServerMachineEvent, WelcomeTerms, DEFAULT_AUTH_GRACE,
};
pub use sessions::{
    DetachedLimits, KeptSession, SendRefused, ServerSession, SessionLimits, SessionTable, Undelivered,
    DEFAULT_DETACHED_BYTES, DEFAULT_KEEP, DEFAULT_SESSION_BYTES, DEFAULT_SESSION_MESSAGES,
};
pub(crate) use token_renewal::TokenRenewal;
