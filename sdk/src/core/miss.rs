//! The miss counter shared by the client's responder (which resets it) and checker (which ticks it).

use std::sync::atomic::{AtomicU32, Ordering};

/// Counts checker ticks since the last frame arrived, following the protocol's client rule: the
/// checker ticks it every interval, any frame resets it, and once the count exceeds `max_missed`
/// the connection is lost.
///
/// The first tick after a frame is normal (the next pulse is simply not due yet), so the number
/// of *missed pulses* it reports is the tick count minus one: a healthy link reads 0, and the
/// connection is lost when `max_missed` pulses in a row were missed. A server that falls silent
/// is therefore noticed between `max_missed × interval` and `(max_missed + 1) × interval` after
/// its last frame.
///
/// The counter is an atomic so that the responder and the checker share it without a lock.
///
/// ```
/// use pulsewire::core::{MissCounter, Tick};
///
/// let counter = MissCounter::new(2);
/// assert_eq!(counter.tick(), Tick::Healthy); // a pulse is due, not missed yet
/// assert_eq!(counter.tick(), Tick::Missed { missed: 1 });
/// assert_eq!(counter.reset(), 1); // a frame arrived: one miss forgiven
/// assert_eq!(counter.tick(), Tick::Healthy);
/// assert_eq!(counter.tick(), Tick::Missed { missed: 1 });
/// assert_eq!(counter.tick(), Tick::Lost { missed: 2 });
/// ```
#[derive(Debug)]
pub struct MissCounter {
    ticks: AtomicU32,
    max_missed: u32,
}

/// What a checker tick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// A frame arrived since the previous tick.
    Healthy,
    /// `missed` pulses in a row did not arrive; still below the limit.
    Missed {
        /// Consecutive missed pulses.
        missed: u32,
    },
    /// The limit is reached: the connection is lost.
    Lost {
        /// Consecutive missed pulses.
        missed: u32,
    },
}

impl MissCounter {
    /// A counter that declares the connection lost after `max_missed` missed pulses (at least 1:
    /// a limit of 0 would declare every healthy connection lost at its first tick).
    pub fn new(max_missed: u32) -> MissCounter {
        MissCounter { ticks: AtomicU32::new(0), max_missed: max_missed.max(1) }
    }

    /// The limit in force.
    pub fn max_missed(&self) -> u32 {
        self.max_missed
    }

    /// A frame arrived: back to 0. Returns how many missed pulses this forgave.
    pub fn reset(&self) -> u32 {
        self.ticks.swap(0, Ordering::AcqRel).saturating_sub(1)
    }

    /// One checker interval passed.
    pub fn tick(&self) -> Tick {
        let ticks = self
            .ticks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_add(1)))
            // The closure always returns Some, so fetch_update cannot fail.
            .unwrap_or_else(|t| t)
            .saturating_add(1);
        let missed = ticks - 1;
        if ticks > self.max_missed {
            Tick::Lost { missed }
        } else if missed > 0 {
            Tick::Missed { missed }
        } else {
            Tick::Healthy
        }
    }

    /// Consecutive missed pulses right now (0 on a healthy link).
    pub fn missed(&self) -> u32 {
        self.ticks.load(Ordering::Acquire).saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_link_never_reports_a_miss() {
        let counter = MissCounter::new(3);
        for _ in 0..1000 {
            assert_eq!(counter.tick(), Tick::Healthy);
            assert_eq!(counter.missed(), 0);
            assert_eq!(counter.reset(), 0);
        }
    }

    #[test]
    fn connection_is_lost_after_max_missed_pulses() {
        let counter = MissCounter::new(3);
        assert_eq!(counter.tick(), Tick::Healthy);
        assert_eq!(counter.tick(), Tick::Missed { missed: 1 });
        assert_eq!(counter.tick(), Tick::Missed { missed: 2 });
        assert_eq!(counter.missed(), 2);
        assert_eq!(counter.tick(), Tick::Lost { missed: 3 });
    }

    #[test]
    fn zero_limit_is_treated_as_one() {
        let counter = MissCounter::new(0);
        assert_eq!(counter.max_missed(), 1);
        assert_eq!(counter.tick(), Tick::Healthy);
        assert_eq!(counter.tick(), Tick::Lost { missed: 1 });
    }

    #[test]
    fn counter_saturates_instead_of_wrapping() {
        let counter = MissCounter::new(u32::MAX);
        counter.ticks.store(u32::MAX - 1, Ordering::Relaxed);
        assert!(matches!(counter.tick(), Tick::Missed { .. }));
        assert!(matches!(counter.tick(), Tick::Missed { .. }));
    }
}
