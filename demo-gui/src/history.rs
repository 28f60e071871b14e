//! Values over the last few minutes, for the charts.
//!
//! A [`Series`] keeps timestamped samples and forgets the ones older than its window; it hands
//! them out as chart points whose x is "seconds before now" (negative, 0 = now), so the charts
//! always show the recent past ending at the right edge.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the charts look.
pub const WINDOW: Duration = Duration::from_secs(180);

/// Timestamped samples within [`WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct Series {
    samples: VecDeque<(Instant, f64)>,
}

impl Series {
    /// Adds a sample taken at `at` (samples arrive in time order).
    pub fn push(&mut self, at: Instant, value: f64) {
        self.samples.push_back((at, value));
    }

    /// The latest value.
    pub fn last(&self) -> Option<f64> {
        self.samples.back().map(|&(_, value)| value)
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is kept.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Forgets samples older than the window at `now`. With `keep_one_before`, the last sample
    /// before the window stays, so that a step chart still knows the value at its left edge.
    pub fn prune(&mut self, now: Instant, keep_one_before: bool) {
        let Some(start) = now.checked_sub(WINDOW) else { return };
        while let Some(&(at, _)) = self.samples.front() {
            let next_is_old = self.samples.get(1).is_some_and(|&(next, _)| next < start);
            if at < start && (!keep_one_before || next_is_old) {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// The samples as `[seconds before now, value]` points.
    pub fn points(&self, now: Instant) -> Vec<[f64; 2]> {
        self.samples.iter().map(|&(at, value)| [x(at, now), value]).collect()
    }

    /// Each value and the span it held: `(from, to, value)` in seconds before now, the last
    /// one up to `now`, none starting before the window's left edge.
    pub fn segments(&self, now: Instant) -> Vec<(f64, f64, f64)> {
        let left = -WINDOW.as_secs_f64();
        let ends = self.samples.iter().skip(1).map(|&(at, _)| x(at, now)).chain([0.0]);
        self.samples.iter().zip(ends).map(|(&(at, value), end)| (x(at, now).max(left), end.max(left), value)).collect()
    }

    /// The samples as a step chart: each value holds until the next sample, and the last one
    /// until `now`; the first starts no earlier than the window's left edge.
    pub fn steps(&self, now: Instant) -> Vec<[f64; 2]> {
        let left = -WINDOW.as_secs_f64();
        let mut points = Vec::with_capacity(self.samples.len() * 2 + 1);
        for (i, &(at, value)) in self.samples.iter().enumerate() {
            let start = x(at, now).max(left);
            if i > 0 {
                let previous = points.last().map_or(value, |&[_, y]: &[f64; 2]| y);
                points.push([start, previous]);
            }
            points.push([start, value]);
        }
        if let Some(&[_, y]) = points.last() {
            points.push([0.0, y]);
        }
        points
    }
}

/// `at` as seconds before `now` (0 or negative).
pub fn x(at: Instant, now: Instant) -> f64 {
    -now.saturating_duration_since(at).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn points_are_seconds_before_now() {
        let t0 = Instant::now();
        let mut series = Series::default();
        series.push(t0, 1.0);
        series.push(t0 + s(2), 3.0);
        assert_eq!(series.points(t0 + s(5)), vec![[-5.0, 1.0], [-3.0, 3.0]]);
        assert_eq!(series.last(), Some(3.0));
    }

    #[test]
    fn samples_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut series = Series::default();
        for n in 0..10 {
            series.push(t0 + s(n * 60), n as f64);
        }
        let now = t0 + s(9 * 60);
        series.prune(now, false);
        assert_eq!(series.len(), 4, "samples at 6, 7, 8 and 9 minutes are within 3 minutes");
        series.push(now, 10.0);
        assert_eq!(series.points(now).first(), Some(&[-180.0, 6.0]));
    }

    #[test]
    fn a_step_chart_keeps_the_value_at_its_left_edge() {
        let t0 = Instant::now();
        let mut series = Series::default();
        series.push(t0, 4.0);
        series.push(t0 + s(200), 1.0);
        let now = t0 + s(250);
        series.prune(now, true);
        assert_eq!(series.len(), 2, "the sample before the window stays");
        assert_eq!(series.steps(now), vec![[-180.0, 4.0], [-50.0, 4.0], [-50.0, 1.0], [0.0, 1.0]]);
        assert_eq!(series.segments(now), vec![(-180.0, -50.0, 4.0), (-50.0, 0.0, 1.0)]);
    }

    #[test]
    fn an_empty_series_has_no_steps() {
        assert!(Series::default().steps(Instant::now()).is_empty());
    }
}
