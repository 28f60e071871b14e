//! Pure statistics over measured times: percentiles, pulse rounds, online counts per bucket.
//!
//! Times are nanoseconds of one clock (`CLOCK_MONOTONIC` or `CLOCK_REALTIME`, never mixed in
//! one call); durations are reported in milliseconds as `f64`.

use serde::Serialize;

/// Nanoseconds in a millisecond.
const NS_PER_MS: f64 = 1_000_000.0;

/// A duration in nanoseconds as milliseconds.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS
}

/// The value at percentile `p` (0–100) of `sorted`, by the nearest-rank method: the smallest
/// value such that at least `p` % of the values are at or below it. `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Min, median, p99 and max of a sample, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// How many values.
    pub count: usize,
    /// The smallest.
    pub min: f64,
    /// The 50th percentile (nearest rank).
    pub median: f64,
    /// The 99th percentile (nearest rank).
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (any order; NaNs are dropped). `None` when there is nothing left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            count: sorted.len(),
            min: *sorted.first()?,
            median: percentile(&sorted, 50.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// One round of pulses: the arrivals that belong to the same tick of the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Round {
    /// The first arrival.
    pub first: u64,
    /// The last arrival.
    pub last: u64,
    /// How many arrivals.
    pub count: usize,
}

impl Round {
    /// From the first arrival to the last: how long the round took to reach everyone.
    pub fn spread(&self) -> u64 {
        self.last - self.first
    }
}

/// Groups arrival times into rounds of a periodic sender (one round every `period`), even when
/// a round takes longer than half a period to arrive, so that no quiet gap separates rounds.
///
/// The sender's phase is found as the end of the largest empty stretch in the arrivals'
/// positions modulo `period`: the quiet time between the last arrival of a round and the first
/// of the next. Each arrival then belongs to the round that started at or before it. This holds
/// as long as a round takes less than a whole period.
pub fn rounds_by_phase(times: &[u64], period: u64) -> Vec<Round> {
    if times.is_empty() || period == 0 {
        return Vec::new();
    }
    let mut phases: Vec<u64> = times.iter().map(|t| t % period).collect();
    phases.sort_unstable();
    // The largest gap between consecutive phases, the wrap-around one included.
    let mut start = phases[0];
    let mut widest = phases[0] + period - phases[phases.len() - 1];
    for pair in phases.windows(2) {
        if pair[1] - pair[0] > widest {
            widest = pair[1] - pair[0];
            start = pair[1];
        }
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut rounds: Vec<(u64, Round)> = Vec::new();
    for t in sorted {
        // Shift so that the phase is 0; times before the first phase fall into round 0.
        let index = (t + period - start) / period;
        match rounds.last_mut() {
            Some((last, round)) if *last == index => {
                round.last = t;
                round.count += 1;
            }
            _ => rounds.push((index, Round { first: t, last: t, count: 1 })),
        }
    }
    rounds.into_iter().map(|(_, round)| round).collect()
}

/// The online count at the end of each of `buckets` buckets of `width` ns from `start`, given
/// the count at `start` and the changes (`+1` connected, `-1` disconnected) with their times.
/// Changes before `start` are ignored: `baseline` already holds them.
pub fn online_per_bucket(start: u64, width: u64, buckets: usize, baseline: i64, changes: &[(u64, i64)]) -> Vec<i64> {
    let mut deltas = vec![0i64; buckets];
    for &(at, delta) in changes {
        if at < start || width == 0 {
            continue;
        }
        let bucket = ((at - start) / width) as usize;
        if let Some(slot) = deltas.get_mut(bucket) {
            *slot += delta;
        }
    }
    let mut online = baseline;
    deltas
        .into_iter()
        .map(|delta| {
            online += delta;
            online
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_of_a_small_sample_rounds_up() {
        // 99 % of 10 values is 9.9 values: the 10th.
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 99.0), Some(10.0));
        assert_eq!(percentile(&values, 50.0), Some(5.0));
    }

    #[test]
    fn summary_sorts_and_drops_nan() {
        let summary = Summary::of(&[3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!(summary, Summary { count: 3, min: 1.0, median: 2.0, p99: 3.0, max: 3.0 });
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn rounds_by_phase_split_rounds_that_leave_no_quiet_gap() {
        // A sender every 1000 ns whose rounds take 700 ns to arrive, at phase 300.
        let times: Vec<u64> = (0..3).flat_map(|k| [300, 500, 800, 999].map(|d| 1_000 * k + d)).collect();
        let found = rounds_by_phase(&times, 1_000);
        assert_eq!(
            found,
            vec![
                Round { first: 300, last: 999, count: 4 },
                Round { first: 1_300, last: 1_999, count: 4 },
                Round { first: 2_300, last: 2_999, count: 4 },
            ]
        );
        assert_eq!(found[0].spread(), 699);
    }

    #[test]
    fn rounds_by_phase_handle_rounds_that_wrap_the_period() {
        // Phase 900: each round runs from 900 to 1200 of the next period.
        let times = [900, 1_000, 1_200, 1_900, 2_050, 2_200];
        let found = rounds_by_phase(&times, 1_000);
        assert_eq!(
            found,
            vec![Round { first: 900, last: 1_200, count: 3 }, Round { first: 1_900, last: 2_200, count: 3 }]
        );
        assert!(rounds_by_phase(&[], 1_000).is_empty());
    }

    #[test]
    fn online_count_per_bucket_is_cumulative() {
        let start = 1_000;
        let changes = [(500, 1), (1_000, -1), (1_050, 1), (1_150, 1), (1_250, 1), (9_999, 1)];
        // Buckets of 100 ns: [1000,1100) -1+1, [1100,1200) +1, [1200,1300) +1; the last is late.
        assert_eq!(online_per_bucket(start, 100, 3, 5, &changes), vec![5, 6, 7]);
        assert_eq!(online_per_bucket(start, 100, 0, 5, &changes), Vec::<i64>::new());
    }

    #[test]
    fn ms_converts_nanoseconds() {
        assert_eq!(ms(1_500_000), 1.5);
    }
}
