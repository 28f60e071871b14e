//! The reconnect schedule: exponential backoff with full jitter, clamped to a maximum.
//!
//! This is the only module that names the `backoff` crate.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff as _;
use backoff::exponential::ExponentialBackoff;

/// How the client retries while it is offline.
///
/// The delay before retry *n* is drawn uniformly from
/// `[base × (1 − jitter), base]`, where `base = min(initial_delay × multiplierⁿ⁻¹, max_delay)`.
/// With the default `jitter = 1.0` ("full jitter") many clients that lost the same server spread
/// their reconnects over the whole window instead of arriving together. No delay ever exceeds
/// `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use pulsewire::ReconnectPolicy;
///
/// let policy = ReconnectPolicy {
///     max_delay: Duration::from_secs(5),
///     max_attempts: Some(10),
///     ..ReconnectPolicy::default()
/// };
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The base delay before the first retry (default 250 ms).
    pub initial_delay: Duration,
    /// The largest delay between two attempts (default 30 s).
    pub max_delay: Duration,
    /// How much the base delay grows after each failed attempt (default 2.0, at least 1.0).
    pub multiplier: f64,
    /// The fraction of each delay that is randomised, from 0.0 (none) to 1.0 (full jitter, the
    /// default).
    pub jitter: f64,
    /// Give up after this many attempts in one offline period (default: never).
    pub max_attempts: Option<u32>,
    /// Give up once an offline period has lasted this long (default: never).
    pub max_elapsed: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 1.0,
            max_attempts: None,
            max_elapsed: None,
        }
    }
}

/// A [`ReconnectPolicy`] value that makes no sense.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyError {
    /// `initial_delay` is zero or above `max_delay`.
    InitialDelay {
        /// The value given.
        initial: Duration,
        /// The maximum it must not exceed.
        max: Duration,
    },
    /// `multiplier` is below 1.0 or not finite.
    Multiplier(f64),
    /// `jitter` is outside 0.0..=1.0.
    Jitter(f64),
    /// `max_attempts` is `Some(0)`.
    ZeroAttempts,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::InitialDelay { initial, max } => {
                write!(f, "reconnect initial delay {initial:?} must be above zero and at most the max delay {max:?}")
            }
            PolicyError::Multiplier(m) => write!(f, "reconnect multiplier {m} must be a finite number >= 1.0"),
            PolicyError::Jitter(j) => write!(f, "reconnect jitter {j} must be between 0.0 and 1.0"),
            PolicyError::ZeroAttempts => f.write_str("reconnect max attempts must be at least 1"),
        }
    }
}

impl std::error::Error for PolicyError {}

impl ReconnectPolicy {
    /// Checks every field; the client config calls this when it is built.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.initial_delay.is_zero() || self.initial_delay > self.max_delay {
            return Err(PolicyError::InitialDelay { initial: self.initial_delay, max: self.max_delay });
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(PolicyError::Multiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(PolicyError::Jitter(self.jitter));
        }
        if self.max_attempts == Some(0) {
            return Err(PolicyError::ZeroAttempts);
        }
        Ok(())
    }
}

/// Whether an offline period starts with an immediate attempt or with a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstAttempt {
    /// Connect at once (the client has just started).
    Immediate,
    /// Wait a jittered initial delay first (a connection was just lost: do not stampede).
    Delayed,
}

/// The schedule of one offline period: for each attempt, how long to wait before it, or that it
/// is time to give up. Pure: the caller passes the time in.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::ReconnectPolicy;
/// use pulsewire::core::BackoffSchedule;
///
/// let policy = ReconnectPolicy { jitter: 0.0, max_attempts: Some(3), ..Default::default() };
/// let now = Instant::now();
/// let mut schedule = BackoffSchedule::new(policy, 7, now); // an offline period starts at `now`
/// assert_eq!(schedule.next_attempt(now), Some(Duration::ZERO));
/// assert_eq!(schedule.next_attempt(now), Some(Duration::from_millis(250)));
/// assert_eq!(schedule.next_attempt(now), Some(Duration::from_millis(500)));
/// assert_eq!(schedule.next_attempt(now), None); // three attempts made: give up
/// ```
#[derive(Debug)]
pub struct BackoffSchedule {
    policy: ReconnectPolicy,
    exponential: ExponentialBackoff<GivenTime>,
    rng: fastrand::Rng,
    first: FirstAttempt,
    attempts: u32,
    started: Instant,
}

/// A `backoff::Clock` that reads the time the caller handed in, so the schedule stays pure.
#[derive(Debug)]
struct GivenTime(Cell<Instant>);

impl backoff::Clock for GivenTime {
    fn now(&self) -> Instant {
        self.0.get()
    }
}

impl BackoffSchedule {
    /// A schedule for `policy`, drawing its jitter from a generator seeded with `seed`, whose
    /// first offline period starts at `now` with an immediate attempt (the client has just
    /// started). Call [`BackoffSchedule::reset`] at the start of each later offline period.
    pub fn new(policy: ReconnectPolicy, seed: u64, now: Instant) -> BackoffSchedule {
        let exponential = ExponentialBackoff {
            current_interval: policy.initial_delay,
            initial_interval: policy.initial_delay,
            // Jitter is applied here, after the cap: see `next_attempt`.
            randomization_factor: 0.0,
            multiplier: policy.multiplier,
            max_interval: policy.max_delay,
            // The crate's default gives up after 15 minutes; the elapsed limit is ours to enforce.
            max_elapsed_time: None,
            clock: GivenTime(Cell::new(now)),
            start_time: now,
        };
        BackoffSchedule {
            policy,
            exponential,
            rng: fastrand::Rng::with_seed(seed),
            first: FirstAttempt::Immediate,
            attempts: 0,
            started: now,
        }
    }

    /// Starts a new offline period at `now`.
    pub fn reset(&mut self, now: Instant, first: FirstAttempt) {
        self.exponential.clock.0.set(now);
        self.exponential.reset();
        self.first = first;
        self.attempts = 0;
        self.started = now;
    }

    /// A connection of this schedule ended at `now`. One that saw at least one pulse was a
    /// real recovery: a new offline period starts, its first attempt after a jittered initial
    /// delay. One that never saw a pulse (a server that accepts and drops at once) does not
    /// count as recovery: the period goes on, with its growing delays and its attempt limit.
    pub fn connection_ended(&mut self, now: Instant, saw_pulse: bool) {
        if saw_pulse {
            self.reset(now, FirstAttempt::Delayed);
        }
    }

    /// Attempts made in this offline period.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long this offline period has lasted at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The delay before the next attempt, or `None` when the policy says to give up.
    pub fn next_attempt(&mut self, now: Instant) -> Option<Duration> {
        if self.policy.max_attempts.is_some_and(|max| self.attempts >= max) {
            return None;
        }
        if self.policy.max_elapsed.is_some_and(|max| self.elapsed(now) >= max) {
            return None;
        }
        self.attempts += 1;
        if self.attempts == 1 && self.first == FirstAttempt::Immediate {
            return Some(Duration::ZERO);
        }
        self.exponential.clock.0.set(now);
        // With no elapsed limit set on the crate, it always yields a delay.
        let base = self.exponential.next_backoff().unwrap_or(self.policy.max_delay).min(self.policy.max_delay);
        let spread = base.mul_f64(self.policy.jitter * self.rng.f64());
        Some(base.saturating_sub(spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: ms(100),
            max_delay: ms(1000),
            multiplier: 2.0,
            jitter: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_max() {
        let now = Instant::now();
        let mut schedule = BackoffSchedule::new(policy(), 1, now);
        schedule.reset(now, FirstAttempt::Delayed);
        let delays: Vec<_> = (0..7).map(|_| schedule.next_attempt(now).unwrap()).collect();
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_base_and_spreads() {
        let now = Instant::now();
        let mut schedule = BackoffSchedule::new(ReconnectPolicy { jitter: 1.0, ..policy() }, 42, now);
        let mut seen = Vec::new();
        for _ in 0..2000 {
            schedule.reset(now, FirstAttempt::Delayed);
            let first = schedule.next_attempt(now).unwrap();
            assert!(first <= ms(100));
            seen.push(first);
            for _ in 0..20 {
                assert!(schedule.next_attempt(now).unwrap() <= ms(1000), "never above max_delay");
            }
        }
        let low = seen.iter().filter(|d| **d < ms(50)).count();
        assert!((800..1200).contains(&low), "about half below the middle, got {low} of 2000");
    }

    #[test]
    fn partial_jitter_keeps_the_lower_bound() {
        let now = Instant::now();
        let mut schedule = BackoffSchedule::new(ReconnectPolicy { jitter: 0.5, ..policy() }, 3, now);
        schedule.reset(now, FirstAttempt::Delayed);
        for _ in 0..1000 {
            let delay = schedule.next_attempt(now).unwrap();
            assert!(delay >= ms(50) && delay <= ms(1000), "{delay:?}");
        }
    }

    #[test]
    fn huge_multiplier_is_capped_without_overflow() {
        let now = Instant::now();
        let policy = ReconnectPolicy { multiplier: 1e12, ..policy() };
        let mut schedule = BackoffSchedule::new(policy, 1, now);
        schedule.reset(now, FirstAttempt::Delayed);
        for _ in 0..100 {
            assert!(schedule.next_attempt(now).unwrap() <= ms(1000));
        }
    }

    #[test]
    fn gives_up_after_max_elapsed_on_the_virtual_clock() {
        let start = Instant::now();
        let policy = ReconnectPolicy { max_elapsed: Some(ms(500)), ..policy() };
        // A new schedule's first offline period starts at the time it is given.
        let mut schedule = BackoffSchedule::new(policy, 1, start);
        assert_eq!(schedule.next_attempt(start), Some(Duration::ZERO));
        assert_eq!(schedule.next_attempt(start + ms(10)), Some(ms(100)));
        assert_eq!(schedule.next_attempt(start + ms(499)), Some(ms(200)));
        assert_eq!(schedule.next_attempt(start + ms(500)), None);
        assert_eq!(schedule.elapsed(start + ms(500)), ms(500));
    }

    #[test]
    fn schedule_reads_no_clock_only_the_times_it_is_given() {
        // An hour ahead of the real clock: a schedule that read it would see no time pass.
        let start = Instant::now() + Duration::from_secs(3600);
        let policy = ReconnectPolicy { max_elapsed: Some(ms(500)), ..policy() };
        let mut schedule = BackoffSchedule::new(policy, 1, start);
        assert_eq!(schedule.elapsed(start + ms(30)), ms(30));
        assert_eq!(schedule.next_attempt(start + ms(499)), Some(Duration::ZERO));
        assert_eq!(schedule.next_attempt(start + ms(500)), None);
    }

    #[test]
    fn reset_starts_over() {
        let now = Instant::now();
        let mut schedule = BackoffSchedule::new(ReconnectPolicy { max_attempts: Some(2), ..policy() }, 1, now);
        schedule.reset(now, FirstAttempt::Delayed);
        assert_eq!(schedule.next_attempt(now), Some(ms(100)));
        assert_eq!(schedule.next_attempt(now), Some(ms(200)));
        assert_eq!(schedule.next_attempt(now), None);
        schedule.reset(now, FirstAttempt::Immediate);
        assert_eq!(schedule.attempts(), 0);
        assert_eq!(schedule.next_attempt(now), Some(Duration::ZERO));
        assert_eq!(schedule.next_attempt(now), Some(ms(100)));
    }

    #[test]
    fn only_a_connection_that_saw_a_pulse_starts_a_new_offline_period() {
        let now = Instant::now();
        let mut schedule = BackoffSchedule::new(ReconnectPolicy { max_attempts: Some(3), ..policy() }, 1, now);
        assert_eq!(schedule.next_attempt(now), Some(Duration::ZERO));
        schedule.connection_ended(now, false);
        assert_eq!(schedule.next_attempt(now), Some(ms(100)), "the same period goes on");
        schedule.connection_ended(now, true);
        assert_eq!(schedule.attempts(), 0);
        assert_eq!(schedule.next_attempt(now), Some(ms(100)), "a new period, first attempt delayed");
        assert_eq!(schedule.next_attempt(now), Some(ms(200)));
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let bad = [
            ReconnectPolicy { initial_delay: Duration::ZERO, ..policy() },
            ReconnectPolicy { initial_delay: ms(2000), ..policy() },
            ReconnectPolicy { multiplier: 0.5, ..policy() },
            ReconnectPolicy { multiplier: f64::NAN, ..policy() },
            ReconnectPolicy { jitter: 1.5, ..policy() },
            ReconnectPolicy { jitter: -0.1, ..policy() },
            ReconnectPolicy { max_attempts: Some(0), ..policy() },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
        assert!(ReconnectPolicy::default().validate().is_ok());
    }
}
