//! The reconnect storm: N clients online, the server killed with SIGKILL and started again on
//! the same port; how fast and how cheaply everyone comes back.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde::Serialize;

use super::procs::{self, DemoServer, Ramp};
use super::sampler::{self, Sampler, ThreadUse};
use super::steady::{counter_deltas, spawn_generators};
use super::Run;
use crate::clock::now_ns;
use crate::procfs;
use crate::records::Records;
use crate::stats;

/// Width of the online-count buckets.
const BUCKET: Duration = Duration::from_millis(100);

/// What the storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    /// Clients.
    pub clients: u32,
    /// ms from the kill to the new server's spawn.
    pub restart_after_kill_ms: f64,
    /// ms from the spawn to its `listening` line.
    pub listening_after_spawn_ms: f64,
    /// Clients back online (reconnected after the kill).
    pub back: usize,
    /// ms from the restart (spawn) until the last client was back online.
    pub all_back_after_restart_ms: Option<f64>,
    /// ms from the kill until the last client was back online.
    pub all_back_after_kill_ms: Option<f64>,
    /// Online count at the end of each 100 ms after the kill.
    pub online_per_100ms: Vec<i64>,
    /// The new server's CPU time when the last client was back, s.
    pub server_cpu_s_all_back: f64,
    /// The new server's CPU time once its console had printed every join, s.
    pub server_cpu_s_settled: f64,
    /// ms from the restart until the console had printed every join.
    pub console_settled_after_restart_ms: Option<f64>,
    /// Peak CPU over 100 ms samples, % of one core.
    pub server_peak_cpu_percent: f64,
    /// The new server's CPU per thread name, from its start until it settled.
    pub threads: BTreeMap<String, ThreadUse>,
    /// Connect attempts refused while the new server was listening.
    pub refused_while_listening: usize,
    /// Connect attempts refused before it listened (no server: expected).
    pub refused_before_listening: usize,
    /// Every other failed attempt after the kill, by kind.
    pub other_failures: BTreeMap<String, usize>,
    /// Changes of the kernel's TCP counters over the storm (ListenOverflows, ListenDrops, …).
    pub net_counters: BTreeMap<String, u64>,
    /// The listening socket's backlog as `ss` shows it (Send-Q), when `ss` is available.
    pub listen_backlog: Option<u64>,
    /// How the clients reconnect.
    pub backoff: String,
}

/// The kernel counters worth reporting for a storm.
const COUNTERS: [&str; 7] = [
    "TcpExt:ListenOverflows",
    "TcpExt:ListenDrops",
    "TcpExt:TCPReqQFullDrop",
    "TcpExt:TCPReqQFullDoCookies",
    "TcpExt:SyncookiesSent",
    "Tcp:AttemptFails",
    "Tcp:EstabResets",
];

/// Runs the storm with `clients` clients.
pub fn run(run: &Run, clients: u32) -> anyhow::Result<Storm> {
    let settings = &run.settings;
    let backoff = settings.storm_backoff;
    let log = run.out_dir.join("demo-server-storm-1.log");
    let mut server = DemoServer::spawn(&run.server, "0.0.0.0:0", &run.server_args(&run.server), &log)?;
    let (_, addr) = server.wait_listening(Duration::from_secs(30))?;
    let listen = format!("0.0.0.0:{}", addr.port());
    let listen_backlog = backlog(addr.port());
    let mut generators = spawn_generators(
        addr.port(),
        clients,
        settings.per_generator,
        Ramp::rate(settings.ramp_rate),
        "s",
        backoff,
        None,
    )?;
    let ramp_limit = Duration::from_secs_f64(f64::from(clients) / settings.ramp_rate) + Duration::from_secs(60);
    procs::wait_online(&generators, clients as usize, ramp_limit)?;
    // The server is killed next, so its console need not have printed every join; wait for it
    // (the demo server prints the whole list per join) only up to the limit.
    if let Err(error) = server.wait_caught_up(clients as usize, run.settings.console_limit) {
        eprintln!("storm: killing the server before its console caught up: {error:#}");
    }
    thread::sleep(settings.interval * 2);

    let counters_before = procfs::net_counters();
    let killed = now_ns();
    server.kill();
    drop(server);
    let log = run.out_dir.join("demo-server-storm-2.log");
    let server = DemoServer::spawn(&run.server, &listen, &run.server_args(&run.server), &log)?;
    let restarted = server.spawned_at;
    let sampler = Sampler::start(server.pid, BUCKET);
    let (listening, _) = server.wait_listening(Duration::from_secs(30))?;

    // Until everyone is back, or the backoff schedule can no longer explain the wait.
    let limit = backoff.max * 4 + Duration::from_secs(20);
    let waited = procs::wait_online(&generators, clients as usize, limit);
    let all_back_seen = now_ns();
    let cpu_all_back = sampler::sample(server.pid).map_or(0, |s| s.cpu_ticks);
    let counters_after = procfs::net_counters();
    let settled = server.wait_caught_up(clients as usize, run.settings.console_limit).ok().map(|()| now_ns());
    let samples = sampler.stop();
    let threads_end = procfs::threads(server.pid).unwrap_or_default();
    let cpu_settled = samples.last().map_or(0, |s| s.cpu_ticks);

    let mut records = Records::default();
    for (n, generator) in generators.iter_mut().enumerate() {
        records.merge(generator.dump(&run.out_dir.join(format!("dump-storm-{n}.json")), killed, now_ns())?);
    }
    // The generators first: clients that outlive their server would report failed reconnects.
    drop(generators);
    drop(server);
    waited.map_err(|error| anyhow::anyhow!("storm: {error}"))?;

    // The first connect of each client after the kill.
    let mut back: HashMap<u32, u64> = HashMap::new();
    for &(client, at) in &records.connects {
        let first = back.entry(client).or_insert(at);
        *first = (*first).min(at);
    }
    let last_back = back.values().max().copied();
    let changes: Vec<(u64, i64)> =
        records.connects.iter().map(|&(_, at)| (at, 1)).chain(records.disconnects.iter().map(|d| (d.at, -1))).collect();
    let end = last_back.unwrap_or(all_back_seen).max(all_back_seen);
    let buckets = usize::try_from((end - killed) / bucket_ns() + 1).unwrap_or(0);
    let online_per_100ms = stats::online_per_bucket(killed, bucket_ns(), buckets, i64::from(clients), &changes);
    let refused: Vec<_> = records.failures.iter().filter(|f| f.kind == "refused").collect();
    let mut other_failures = BTreeMap::new();
    for failure in records.failures.iter().filter(|f| f.kind != "refused") {
        *other_failures.entry(failure.kind.clone()).or_default() += 1;
    }
    let ticks = run.ticks_per_second as f64;
    let cpu_percent = sampler::cpu_percents(&samples, run.ticks_per_second);
    let net_counters = counter_deltas(&counters_before, &counters_after, &COUNTERS);
    Ok(Storm {
        clients,
        restart_after_kill_ms: stats::ms(restarted.saturating_sub(killed)),
        listening_after_spawn_ms: stats::ms(listening.saturating_sub(restarted)),
        back: back.len(),
        all_back_after_restart_ms: last_back.map(|at| stats::ms(at.saturating_sub(restarted))),
        all_back_after_kill_ms: last_back.map(|at| stats::ms(at - killed)),
        online_per_100ms,
        server_cpu_s_all_back: cpu_all_back as f64 / ticks,
        server_cpu_s_settled: cpu_settled as f64 / ticks,
        console_settled_after_restart_ms: settled.map(|at| stats::ms(at.saturating_sub(restarted))),
        server_peak_cpu_percent: cpu_percent.iter().copied().fold(0.0, f64::max),
        // The server is new: every thread counts from zero.
        threads: sampler::thread_use(&[], &threads_end, run.ticks_per_second),
        refused_while_listening: refused.iter().filter(|f| f.at >= listening).count(),
        refused_before_listening: refused.iter().filter(|f| f.at < listening).count(),
        other_failures,
        net_counters,
        listen_backlog,
        backoff: format!(
            "initial {:?}, max {:?}, multiplier {}, jitter {}",
            backoff.initial, backoff.max, backoff.multiplier, backoff.jitter
        ),
    })
}

fn bucket_ns() -> u64 {
    u64::try_from(BUCKET.as_nanos()).unwrap_or(100_000_000)
}

/// The backlog of the socket listening on `port`, from `ss -ltnH` (its Send-Q column).
fn backlog(port: u16) -> Option<u64> {
    let output = Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    parse_ss_backlog(&text)
}

/// The Send-Q column (the backlog, for a listening socket) of the first line of `ss -ltnH`.
pub fn parse_ss_backlog(text: &str) -> Option<u64> {
    text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_backlog_is_the_send_queue_column() {
        let line = "LISTEN 0      4096         0.0.0.0:7878      0.0.0.0:*\n";
        assert_eq!(parse_ss_backlog(line), Some(4096));
        assert_eq!(parse_ss_backlog(""), None);
    }
}
