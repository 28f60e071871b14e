//! Samples a process's CPU time and RSS at a fixed period, on a thread of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now_ns;
use crate::procfs;

/// One reading of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When (monotonic ns).
    pub at: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Reads one sample of `pid` now.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = procfs::stat(pid).ok()?;
    Some(Sample { at: now_ns(), cpu_ticks: stat.cpu_ticks(), rss_kib: stat.rss_pages * page_kib() })
}

fn page_kib() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|bytes| u64::try_from(bytes).ok())
        .map_or(4, |bytes| bytes / 1024)
}

/// A running sampler.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Samples `pid` now and every `period` until stopped (on the period's grid, so that late
    /// samples do not drift).
    pub fn start(pid: u32, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            for n in 1u32.. {
                samples.extend(sample(pid));
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                thread::sleep((start + period * n).saturating_duration_since(Instant::now()));
            }
            samples
        });
        Sampler { stop, thread }
    }

    /// Takes a last sample and returns them all.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// CPU use between consecutive samples, in % of one core.
pub fn cpu_percents(samples: &[Sample], ticks_per_second: u64) -> Vec<f64> {
    samples
        .windows(2)
        .filter(|pair| pair[1].at > pair[0].at)
        .map(|pair| {
            let cpu = (pair[1].cpu_ticks - pair[0].cpu_ticks) as f64 / ticks_per_second as f64;
            let wall = (pair[1].at - pair[0].at) as f64 / 1e9;
            100.0 * cpu / wall
        })
        .collect()
}

/// CPU time per thread name between two readings of a process's threads, in ms (from the
/// precise `sched` runtime where the kernel gives it, else from clock ticks), and its
/// voluntary + involuntary context switches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThreadUse {
    /// Threads with this name.
    pub threads: usize,
    /// CPU time, ms.
    pub cpu_ms: f64,
    /// Times they blocked and were woken again.
    pub voluntary_switches: u64,
    /// Times they were preempted.
    pub involuntary_switches: u64,
}

/// Groups the difference between two readings by thread name (threads that started in between
/// count from zero).
pub fn thread_use(
    before: &[procfs::Thread],
    after: &[procfs::Thread],
    ticks_per_second: u64,
) -> BTreeMap<String, ThreadUse> {
    let mut groups: BTreeMap<String, ThreadUse> = BTreeMap::new();
    for thread in after {
        let earlier = before.iter().find(|b| b.tid == thread.tid);
        let cpu_ms = match (thread.runtime_ns, earlier.map(|b| b.runtime_ns)) {
            (Some(now), Some(Some(then))) => now.saturating_sub(then) as f64 / 1e6,
            (Some(now), None) => now as f64 / 1e6,
            _ => {
                let then = earlier.map_or(0, |b| b.stat.cpu_ticks());
                thread.stat.cpu_ticks().saturating_sub(then) as f64 * 1000.0 / ticks_per_second as f64
            }
        };
        let group = groups.entry(thread.stat.comm.clone()).or_default();
        group.threads += 1;
        group.cpu_ms += cpu_ms;
        group.voluntary_switches +=
            thread.status.voluntary_switches.saturating_sub(earlier.map_or(0, |b| b.status.voluntary_switches));
        group.involuntary_switches +=
            thread.status.nonvoluntary_switches.saturating_sub(earlier.map_or(0, |b| b.status.nonvoluntary_switches));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_ticks_over_wall_time() {
        let samples = [
            Sample { at: 0, cpu_ticks: 0, rss_kib: 0 },
            Sample { at: 1_000_000_000, cpu_ticks: 25, rss_kib: 0 },
            Sample { at: 1_500_000_000, cpu_ticks: 75, rss_kib: 0 },
        ];
        assert_eq!(cpu_percents(&samples, 100), vec![25.0, 100.0]);
    }

    fn thread(tid: u32, comm: &str, ticks: u64, runtime_ns: Option<u64>, voluntary: u64) -> procfs::Thread {
        procfs::Thread {
            tid,
            stat: procfs::Stat { comm: comm.into(), utime: ticks, stime: 0, rss_pages: 0 },
            status: procfs::Status { voluntary_switches: voluntary, ..procfs::Status::default() },
            runtime_ns,
        }
    }

    #[test]
    fn thread_use_groups_by_name_and_prefers_the_precise_runtime() {
        let before = [thread(1, "main", 10, Some(5_000_000), 3), thread(2, "worker", 0, None, 0)];
        let after = [
            thread(1, "main", 11, Some(7_500_000), 5),
            thread(2, "worker", 4, None, 10),
            thread(3, "worker", 1, None, 1),
        ];
        let groups = thread_use(&before, &after, 100);
        assert_eq!(
            groups["main"],
            ThreadUse { threads: 1, cpu_ms: 2.5, voluntary_switches: 2, involuntary_switches: 0 }
        );
        assert_eq!(
            groups["worker"],
            ThreadUse { threads: 2, cpu_ms: 50.0, voluntary_switches: 11, involuntary_switches: 0 }
        );
    }
}
