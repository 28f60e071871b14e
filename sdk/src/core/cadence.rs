//! A fixed-rate tick schedule: when the next tick is due, given the current time.

use std::time::{Duration, Instant};

/// The longest interval a schedule keeps: a year.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Ticks every `interval` from a start time, without drift: tick *n* is due at
/// `start + n × interval`. A caller that wakes late (a busy machine, a suspended laptop) gets one
/// tick for all the overdue ones, and the schedule continues from the next multiple, so a
/// process resumed after a long sleep does not fire a burst of ticks at once.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::Cadence;
///
/// let start = Instant::now();
/// let ms = Duration::from_millis;
/// let mut cadence = Cadence::new(start, ms(100));
/// assert_eq!(cadence.next_deadline(), start + ms(100));
/// assert!(!cadence.poll(start + ms(99)));
/// assert!(cadence.poll(start + ms(100)));
/// assert!(cadence.poll(start + ms(750))); // late: one tick for the overdue ones
/// assert_eq!(cadence.next_deadline(), start + ms(800));
/// ```
#[derive(Debug, Clone)]
pub struct Cadence {
    interval: Duration,
    next: Instant,
}

impl Cadence {
    /// A schedule whose first tick is one interval after `start` (an interval of zero is
    /// treated as one millisecond, and one above a year as a year, so that no deadline
    /// overflows whatever interval a peer announces).
    pub fn new(start: Instant, interval: Duration) -> Cadence {
        let interval = interval.clamp(Duration::from_millis(1), MAX_INTERVAL);
        Cadence { interval, next: start + interval }
    }

    /// The interval between ticks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next tick is due.
    pub fn next_deadline(&self) -> Instant {
        self.next
    }

    /// Moves the schedule so that ticks fall half an interval after `reference` (plus whole
    /// intervals): the moment farthest from events that recur every interval at `reference`.
    /// The client's checker aligns itself this way on the first pulse, so that pulses arriving a
    /// little early or late never land on the wrong side of a tick.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pulsewire::core::Cadence;
    ///
    /// let start = Instant::now();
    /// let ms = Duration::from_millis;
    /// let mut cadence = Cadence::new(start, ms(100));
    /// cadence.align(start + ms(30)); // a pulse arrived at 30 ms
    /// assert_eq!(cadence.next_deadline(), start + ms(80));
    /// ```
    pub fn align(&mut self, reference: Instant) {
        self.next = reference + self.interval / 2;
    }

    /// The first tick strictly after `instant`, on this schedule's grid (the next deadline plus
    /// or minus whole intervals), without moving the schedule. A caller that sleeps through
    /// several ticks on purpose uses it to name each of them afterwards, where
    /// [`Cadence::poll`] would fold them into one.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pulsewire::core::Cadence;
    ///
    /// let start = Instant::now();
    /// let ms = Duration::from_millis;
    /// let cadence = Cadence::new(start, ms(100)); // ticks at 100 ms, 200 ms, …
    /// assert_eq!(cadence.tick_after(start + ms(250)), start + ms(300));
    /// assert_eq!(cadence.tick_after(start + ms(300)), start + ms(400)); // strictly after
    /// assert_eq!(cadence.tick_after(start), start + ms(100));
    /// ```
    pub fn tick_after(&self, instant: Instant) -> Instant {
        let steps = |span: Duration| u32::try_from(span.as_nanos() / self.interval.as_nanos()).unwrap_or(u32::MAX);
        if instant < self.next {
            // The latest grid point after `instant`, counting back from the next deadline: a
            // span of exactly n intervals lands n - 1 intervals back (strictly after).
            let behind = self.next.duration_since(instant) - Duration::from_nanos(1);
            self.next - self.interval * steps(behind)
        } else {
            self.next + self.interval * steps(instant.duration_since(self.next)).saturating_add(1)
        }
    }

    /// Whether a tick is due at `now`; if so, the schedule moves to the next deadline after
    /// `now`.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        let behind = now.duration_since(self.next);
        let skipped = behind.as_nanos() / self.interval.as_nanos();
        // `skipped` intervals fit within `behind`, so the multiplication cannot overflow the
        // duration that `now` already is.
        self.next += self.interval * (u32::try_from(skipped + 1).unwrap_or(u32::MAX));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_do_not_drift_when_polled_late() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut cadence = Cadence::new(start, ms(10));
        for n in 1..=100u32 {
            // Wake 3 ms late every time: the deadlines stay on the 10 ms grid.
            assert!(cadence.poll(start + ms(10) * n + ms(3)));
            assert_eq!(cadence.next_deadline(), start + ms(10) * (n + 1));
        }
    }

    #[test]
    fn aligned_ticks_tolerate_pulse_jitter_of_almost_half_an_interval() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut cadence = Cadence::new(start, ms(100));
        // Pulses are due at 10 ms + n × 100 ms; the first one arrived on time.
        cadence.align(start + ms(10));
        for n in 1..=50u32 {
            let due = start + ms(10) + ms(100) * n;
            // Every tick falls strictly between two pulses, 49 ms from either.
            let tick = cadence.next_deadline();
            assert!(tick + ms(49) < due && tick > due - ms(100) + ms(49), "tick {n}");
            assert!(cadence.poll(tick));
        }
    }

    #[test]
    fn zero_interval_is_one_millisecond() {
        let cadence = Cadence::new(Instant::now(), Duration::ZERO);
        assert_eq!(cadence.interval(), Duration::from_millis(1));
    }
}
