//! One clock for every process of a run.
//!
//! `Instant` cannot cross a process boundary, but it is `CLOCK_MONOTONIC` on Linux, which every
//! process of the machine shares: the generators and the report stamp events with it in
//! nanoseconds, so their times compare directly.

use nix::time::{clock_gettime, ClockId};

/// Now, in nanoseconds of `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC is always available on Linux; a failure here would be a kernel bug.
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is readable");
    timespec_ns(now.tv_sec(), now.tv_nsec())
}

/// Seconds and nanoseconds as nanoseconds (negative parts, impossible for these clocks, as 0).
pub fn timespec_ns(sec: i64, nsec: i64) -> u64 {
    u64::try_from(sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_ns() >= a + 2_000_000);
    }

    #[test]
    fn timespec_converts() {
        assert_eq!(timespec_ns(2, 5), 2_000_000_005);
        assert_eq!(timespec_ns(-1, 5), 5);
    }
}
