//! The embedded client: one idle client process, measured from outside once a second.

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pulsewire_testkit::Process;
use serde::Serialize;

use super::procs::DemoServer;
use super::sampler::{self, ThreadUse};
use super::Run;
use crate::procfs;

/// One second of the embedded client.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Second {
    /// Seconds since the window started.
    pub t_s: f64,
    /// CPU time so far in the window, ms.
    pub cpu_ms: f64,
    /// RSS, KiB.
    pub rss_kib: u64,
    /// Wake-ups (voluntary context switches, all threads) so far in the window.
    pub wakeups: u64,
}

/// What the embedded client measured.
#[derive(Debug, Clone, Serialize)]
pub struct Embedded {
    /// How its driver ran: `start` (`Client::start`), `block-on` (`smol::block_on` on a
    /// thread of its own) or `thread` (`futures::executor::block_on` on a thread of its own).
    pub driver: String,
    /// The window, s.
    pub window_s: f64,
    /// The pulse interval, s.
    pub interval_s: f64,
    /// RSS once the runtime was warm and before the client started, KiB.
    pub rss_runtime_kib: u64,
    /// The largest RSS in the window, KiB.
    pub rss_max_kib: u64,
    /// The largest RSS beyond the runtime's, KiB.
    pub rss_beyond_runtime_kib: u64,
    /// CPU time over the window, ms.
    pub cpu_ms: f64,
    /// CPU time per interval, µs.
    pub cpu_us_per_interval: f64,
    /// Wake-ups per interval, every thread counted.
    pub wakeups_per_interval: f64,
    /// Wake-ups per interval of the SDK's threads only (the application thread, which reads
    /// one event per pulse, left out).
    pub sdk_wakeups_per_interval: f64,
    /// Per thread name over the window.
    pub threads: BTreeMap<String, ThreadUse>,
    /// One reading per second.
    pub seconds: Vec<Second>,
}

/// Runs the embedded client against a fresh server for `window`, its driver run as `driver`
/// says (`start`, `block-on` or `thread`).
pub fn run(run: &Run, window: Duration, driver: &str) -> anyhow::Result<Embedded> {
    let settings = &run.settings;
    let log = run.out_dir.join("demo-server-embedded.log");
    let server = DemoServer::spawn(&run.server, "127.0.0.1:0", &run.server_args(&run.server), &log)?;
    let (_, addr) = server.wait_listening(Duration::from_secs(30))?;
    let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
    command.args(["embedded", "--server", &addr.to_string(), "--driver", driver]);
    // Killed and reaped on drop, before its stdin closes.
    let mut child = Process::spawn(command).context("starting the embedded client")?;
    let pid = child.pid();
    child.wait_for(Duration::from_secs(30), |line| line.event() == "baseline")?;
    thread::sleep(Duration::from_millis(300));
    let rss_runtime_kib = procfs::status(pid)?.vm_rss_kib;
    child.type_line("start")?;
    child.wait_for(Duration::from_secs(30), |line| line.event() == "online")?;
    thread::sleep(settings.interval * 2);

    let before = procfs::threads(pid)?;
    let start = Instant::now();
    let mut seconds = Vec::new();
    let mut rss_max_kib = 0;
    let steps = window.as_secs().max(1);
    for n in 1..=steps {
        thread::sleep((start + Duration::from_secs(n)).saturating_duration_since(Instant::now()));
        let now = procfs::threads(pid).context("the embedded client is gone")?;
        let rss_kib = procfs::status(pid)?.vm_rss_kib;
        rss_max_kib = rss_max_kib.max(rss_kib);
        let used = sampler::thread_use(&before, &now, run.ticks_per_second);
        seconds.push(Second {
            t_s: start.elapsed().as_secs_f64(),
            cpu_ms: used.values().map(|t| t.cpu_ms).sum(),
            rss_kib,
            wakeups: used.values().map(|t| t.voluntary_switches).sum(),
        });
    }
    let after = procfs::threads(pid)?;
    let window_s = start.elapsed().as_secs_f64();
    drop(child);
    drop(server);

    let threads = sampler::thread_use(&before, &after, run.ticks_per_second);
    let intervals = window_s / settings.interval.as_secs_f64();
    let cpu_ms: f64 = threads.values().map(|t| t.cpu_ms).sum();
    let wakeups: u64 = threads.values().map(|t| t.voluntary_switches).sum();
    // The application thread is the process's main thread, named after the binary.
    let application: u64 = threads.get("bench").map_or(0, |t| t.voluntary_switches);
    Ok(Embedded {
        driver: driver.into(),
        window_s,
        interval_s: settings.interval.as_secs_f64(),
        rss_runtime_kib,
        rss_max_kib,
        rss_beyond_runtime_kib: rss_max_kib.saturating_sub(rss_runtime_kib),
        cpu_ms,
        cpu_us_per_interval: cpu_ms * 1000.0 / intervals,
        wakeups_per_interval: wakeups as f64 / intervals,
        sdk_wakeups_per_interval: (wakeups - application) as f64 / intervals,
        threads,
        seconds,
    })
}
