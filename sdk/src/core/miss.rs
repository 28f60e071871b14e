//! The client's miss rule: the counter that the responder resets and the checker ticks, and the
//! watch that tells the checker when a tick can report anything at all.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::Cadence;

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
/// The counter is an atomic, so that it can be shared without a lock. [`MissWatch`] adds the
/// clock: on which ticks it is counted, and when it needs looking at.
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

/// The client's checker on a clock: a [`MissCounter`] ticked on a [`Cadence`] of the server's
/// interval, which says when the next tick that can report a miss is due, so that the checker
/// sleeps until then instead of waking every interval.
///
/// The ticks are those of the protocol's checker: every interval from the handshake, moved
/// half an interval away from the server's pulses once the first one arrives
/// ([`Cadence::align`]). Any frame resets the count ([`MissWatch::frame`],
/// [`MissWatch::pulse`]). The first tick after a frame only takes the count to 1, which reports
/// nothing, so [`MissWatch::deadline`] is the second tick after the last frame (then each tick,
/// while misses are being counted), and every frame moves it: while pulses keep arriving, the
/// deadline stays ahead of them and the checker never wakes.
///
/// At the deadline the checker calls [`MissWatch::poll`] until it returns `None`: that applies
/// every tick that elapsed since the last frame or the last applied tick, in order, the first
/// one included. The reports are therefore those of a checker woken at every tick, at the same
/// ticks: `Missed { missed: 1 }` at the second tick after the last frame, …, `Lost` at the
/// `max_missed + 1`-th, between `max_missed × interval` and `(max_missed + 1) × interval`
/// after the last frame. A checker woken late (a stalled process) gets every tick it slept
/// through, so a loss is never declared later than one tick past its due time.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::{MissWatch, Tick};
///
/// let start = Instant::now();
/// let ms = Duration::from_millis;
/// let mut watch = MissWatch::new(start, ms(100), 2);
/// watch.pulse(start + ms(30)); // ticks now fall at 80 ms, 180 ms, 280 ms, …
/// watch.pulse(start + ms(130)); // the next pulse moves the deadline
/// assert_eq!(watch.deadline(), start + ms(280)); // 180 ms would only count to 1
/// assert_eq!(watch.poll(start + ms(170)), None); // no tick due yet
/// // The server falls silent. At the deadline, both elapsed ticks are applied.
/// assert_eq!(watch.poll(start + ms(280)), Some(Tick::Healthy));
/// assert_eq!(watch.poll(start + ms(280)), Some(Tick::Missed { missed: 1 }));
/// assert_eq!(watch.poll(start + ms(280)), None);
/// assert_eq!(watch.deadline(), start + ms(380));
/// assert_eq!(watch.poll(start + ms(380)), Some(Tick::Lost { missed: 2 }));
/// ```
#[derive(Debug)]
pub struct MissWatch {
    counter: MissCounter,
    cadence: Cadence,
    /// Whether a pulse has aligned the ticks.
    aligned: bool,
    /// Every tick up to this instant is settled: it is the last frame or the last applied tick.
    settled: Instant,
}

impl MissWatch {
    /// A watch for a connection whose handshake completed at `start`, with the interval and
    /// limit the server announced (see [`Cadence::new`] and [`MissCounter::new`] for the
    /// bounds they are held to).
    pub fn new(start: Instant, interval: Duration, max_missed: u32) -> MissWatch {
        MissWatch {
            counter: MissCounter::new(max_missed),
            cadence: Cadence::new(start, interval),
            aligned: false,
            settled: start,
        }
    }

    /// The interval between ticks.
    pub fn interval(&self) -> Duration {
        self.cadence.interval()
    }

    /// The limit in force.
    pub fn max_missed(&self) -> u32 {
        self.counter.max_missed()
    }

    /// Consecutive missed pulses, as of the last applied tick (0 on a healthy link).
    pub fn missed(&self) -> u32 {
        self.counter.missed()
    }

    /// A frame arrived at `now`: the count restarts. Returns how many missed pulses this
    /// forgave.
    pub fn frame(&mut self, now: Instant) -> u32 {
        self.settled = self.settled.max(now);
        self.counter.reset()
    }

    /// A pulse arrived at `now`: a frame, and the first one aligns the ticks half an interval
    /// away from the server's pulses. Returns how many missed pulses this forgave.
    pub fn pulse(&mut self, now: Instant) -> u32 {
        if !self.aligned {
            self.aligned = true;
            self.cadence.align(now);
        }
        self.frame(now)
    }

    /// When the next tick that can report something is due: the checker sleeps until then,
    /// and looks again whenever a frame arrives.
    pub fn deadline(&self) -> Instant {
        let next = self.cadence.tick_after(self.settled);
        if self.counter.ticks.load(Ordering::Acquire) == 0 {
            // The first tick after a frame reports nothing: sleep through it.
            next + self.cadence.interval()
        } else {
            next
        }
    }

    /// Applies the oldest tick due by `now` and returns what it found, or `None` when no tick
    /// is due. Call it until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Tick> {
        let tick = self.cadence.tick_after(self.settled);
        if tick > now {
            return None;
        }
        self.settled = tick;
        Some(self.counter.tick())
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

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// What the checker reported, and when: (instant, missed pulses, lost).
    type Reports = Vec<(Instant, u32, bool)>;

    /// One frame from the server: when, and whether it is a pulse.
    #[derive(Debug, Clone, Copy)]
    struct Arrival {
        at: Instant,
        pulse: bool,
    }

    /// The checker as it was before the watch: a `MissCounter` ticked at every tick of a
    /// `Cadence`, aligned on the first pulse. Returns its reports and how often it woke.
    fn checker_ticking_every_interval(
        start: Instant,
        interval: Duration,
        max_missed: u32,
        arrivals: &[Arrival],
        end: Instant,
    ) -> (Reports, usize) {
        let counter = MissCounter::new(max_missed);
        let mut cadence = Cadence::new(start, interval);
        let mut aligned = false;
        let (mut reports, mut wakes) = (Vec::new(), 0);
        let mut arrivals = arrivals.iter().peekable();
        loop {
            let tick = cadence.next_deadline();
            // A tick and a frame at the same instant: the tick goes first.
            match arrivals.peek() {
                Some(arrival) if arrival.at < tick => {
                    if arrival.pulse && !aligned {
                        aligned = true;
                        cadence.align(arrival.at);
                    }
                    counter.reset();
                    arrivals.next();
                    continue;
                }
                _ if tick > end => return (reports, wakes),
                _ => {}
            }
            wakes += 1;
            assert!(cadence.poll(tick));
            match counter.tick() {
                Tick::Healthy => {}
                Tick::Missed { missed } => reports.push((tick, missed, false)),
                Tick::Lost { missed } => {
                    reports.push((tick, missed, true));
                    return (reports, wakes);
                }
            }
        }
    }

    /// The watch as the client's checker drives it: it sleeps until the deadline, and looks
    /// again (without a wake-up of its own) whenever a frame arrives. Returns its reports and
    /// how often its timer woke it.
    fn checker_sleeping_until_the_deadline(
        start: Instant,
        interval: Duration,
        max_missed: u32,
        arrivals: &[Arrival],
        end: Instant,
    ) -> (Reports, usize) {
        let mut watch = MissWatch::new(start, interval, max_missed);
        let (mut reports, mut wakes) = (Vec::new(), 0);
        let mut arrivals = arrivals.iter().peekable();
        loop {
            let deadline = watch.deadline();
            let now = match arrivals.peek() {
                Some(&&arrival) if arrival.at < deadline => {
                    arrivals.next();
                    if arrival.pulse {
                        watch.pulse(arrival.at);
                    } else {
                        watch.frame(arrival.at);
                    }
                    arrival.at
                }
                _ if deadline > end => return (reports, wakes),
                _ => {
                    wakes += 1;
                    deadline
                }
            };
            while let Some(tick) = watch.poll(now) {
                match tick {
                    Tick::Healthy => {}
                    Tick::Missed { missed } => reports.push((now, missed, false)),
                    Tick::Lost { missed } => {
                        reports.push((now, missed, true));
                        return (reports, wakes);
                    }
                }
            }
        }
    }

    /// A server pulsing every `interval` from `phase`, each pulse `jitter` early or late at
    /// random, falling silent now and then for a few intervals, and sending a message now and
    /// then. Deterministic for a seed.
    fn server(seed: u64, start: Instant, interval: Duration, max_missed: u32, intervals: u32) -> Vec<Arrival> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let phase = Duration::from_nanos(rng.u64(1..ns(interval)));
        let jitter = ns(interval) / 5;
        let mut arrivals = Vec::new();
        let mut silent = 0;
        for n in 0..intervals {
            if silent > 0 {
                silent -= 1;
                continue;
            }
            if rng.u32(0..50) == 0 {
                // Up to one more than the limit: some of these lose the connection.
                silent = rng.u32(1..=max_missed + 1);
            }
            let due = start + phase + interval * n + Duration::from_nanos(jitter);
            let at = due - Duration::from_nanos(rng.u64(0..2 * jitter));
            arrivals.push(Arrival { at, pulse: true });
            if rng.u32(0..4) == 0 {
                arrivals.push(Arrival { at: at + Duration::from_nanos(rng.u64(0..ns(interval))), pulse: false });
            }
        }
        arrivals.sort_by_key(|arrival| arrival.at);
        arrivals
    }

    #[test]
    fn watch_reports_the_same_misses_at_the_same_ticks_as_a_checker_ticking_every_interval() {
        let start = Instant::now();
        let (mut lost, mut missed) = (0, 0);
        for seed in 0..500u64 {
            let max_missed = 1 + u32::try_from(seed % 4).unwrap_or(0);
            let interval = MS(50 + 100 * (seed % 3));
            let arrivals = server(seed, start, interval, max_missed, 100);
            // The server is not silent at the end of the run (it would be lost every time).
            let end = start + interval * 100;
            let (expected, _) = checker_ticking_every_interval(start, interval, max_missed, &arrivals, end);
            let (reports, _) = checker_sleeping_until_the_deadline(start, interval, max_missed, &arrivals, end);
            assert_eq!(reports, expected, "seed {seed}");
            lost += usize::from(expected.last().is_some_and(|&(_, _, lost)| lost));
            missed += expected.iter().filter(|&&(_, _, lost)| !lost).count();
        }
        // The scenarios cover both endings, and misses that were forgiven.
        assert!(lost > 100 && lost < 400, "{lost} of 500 scenarios lost the connection");
        assert!(missed > 500, "{missed} misses reported");
    }

    #[test]
    fn watch_never_wakes_while_pulses_keep_arriving() {
        let start = Instant::now();
        let interval = MS(1000);
        // Pulses with up to a third of an interval of jitter, and no silence.
        let mut rng = fastrand::Rng::with_seed(7);
        let arrivals: Vec<Arrival> = (0..3600u32)
            .map(|n| Arrival { at: start + MS(200) + interval * n + MS(rng.u64(0..333)), pulse: true })
            .collect();
        let end = start + interval * 3600;
        let (reports, wakes) = checker_sleeping_until_the_deadline(start, interval, 3, &arrivals, end);
        assert_eq!((reports, wakes), (Vec::new(), 0), "an hour of pulses costs no wake-up");
        let (_, ticking) = checker_ticking_every_interval(start, interval, 3, &arrivals, end);
        assert!(ticking >= 3599, "the ticking checker woke {ticking} times");
    }

    #[test]
    fn silent_server_is_lost_inside_the_protocol_window() {
        let start = Instant::now();
        let interval = MS(100);
        for max_missed in 1..=5 {
            // Every phase of the last pulse against the ticks, in 1 ms steps.
            for offset in 0..100 {
                let mut watch = MissWatch::new(start, interval, max_missed);
                watch.pulse(start + MS(40));
                let last = start + MS(40) + interval * 3 + MS(offset);
                watch.pulse(last);
                let mut reported = Vec::new();
                let lost_at = loop {
                    let now = watch.deadline();
                    match std::iter::from_fn(|| watch.poll(now)).last() {
                        Some(Tick::Lost { missed }) => break (now, missed),
                        Some(Tick::Missed { missed }) => reported.push(missed),
                        other => panic!("the deadline reported {other:?}"),
                    }
                };
                let (at, missed) = lost_at;
                assert_eq!(missed, max_missed);
                assert_eq!(reported, (1..max_missed).collect::<Vec<_>>(), "one report per missed pulse");
                let window = at - last;
                assert!(window > interval * max_missed && window <= interval * (max_missed + 1), "{window:?}");
            }
        }
    }

    #[test]
    fn late_wake_applies_every_tick_it_slept_through() {
        let start = Instant::now();
        let mut watch = MissWatch::new(start, MS(100), 3);
        watch.pulse(start + MS(50)); // ticks at 100 ms, 200 ms, …
        let ticks: Vec<Tick> = std::iter::from_fn(|| watch.poll(start + MS(1050))).take(4).collect();
        assert_eq!(
            ticks,
            [Tick::Healthy, Tick::Missed { missed: 1 }, Tick::Missed { missed: 2 }, Tick::Lost { missed: 3 }]
        );
    }

    #[test]
    fn frame_moves_the_deadline_to_the_second_tick_after_it() {
        let start = Instant::now();
        let mut watch = MissWatch::new(start, MS(100), 3);
        // Before any pulse, ticks count from the handshake.
        assert_eq!(watch.deadline(), start + MS(200));
        watch.pulse(start + MS(20)); // aligned: ticks at 70 ms, 170 ms, …
        assert_eq!(watch.deadline(), start + MS(170));
        watch.frame(start + MS(100)); // a message: ticks stay where they are
        assert_eq!(watch.deadline(), start + MS(270));
        watch.pulse(start + MS(120)); // only the first pulse aligns
        assert_eq!(watch.deadline(), start + MS(270));
        // One tick applied early (the checker looked after a frame): the next one reports.
        assert_eq!(watch.poll(start + MS(170)), Some(Tick::Healthy));
        assert_eq!(watch.deadline(), start + MS(270));
        assert_eq!(watch.poll(start + MS(270)), Some(Tick::Missed { missed: 1 }));
        assert_eq!(watch.missed(), 1);
        assert_eq!(watch.frame(start + MS(300)), 1, "the frame forgave one miss");
        assert_eq!(watch.deadline(), start + MS(470));
    }
}
