//! Steady state: N peers online on one server process, measured over a window.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::procs::{self, Backoff, DemoServer, Generator};
use super::sampler::{self, Sampler, ThreadUse};
use super::Run;
use crate::clock::now_ns;
use crate::observer::Observers;
use crate::procfs;
use crate::records::Records;
use crate::stats::{self, Summary};

/// What one size measured.
#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    /// SDK clients.
    pub clients: u32,
    /// Raw observer peers on top of them.
    pub observers: usize,
    /// Generator processes.
    pub generators: usize,
    /// Seconds from the first client started to all online.
    pub ramp_s: f64,
    /// Seconds the server's console took to print every join after the last client was online.
    pub console_lag_s: f64,
    /// Bytes of online lists the console printed on the way.
    pub console_list_bytes: u64,
    /// The measured window, s.
    pub window_s: f64,
    /// Server RSS right after it started listening, KiB.
    pub rss_start_kib: u64,
    /// Server RSS at the end of the window, KiB.
    pub rss_kib: u64,
    /// (RSS − start RSS) / peers, bytes.
    pub rss_per_peer_bytes: f64,
    /// Server CPU at a 1 s interval, % of one core: one value per second of the window.
    pub cpu_percent: Vec<f64>,
    /// Their mean.
    pub cpu_percent_mean: f64,
    /// Their max.
    pub cpu_percent_max: f64,
    /// Server CPU per pulse round trip (one PULSE out, one ALIVE in), µs.
    pub cpu_us_per_pulse: f64,
    /// Server CPU per thread name over the window.
    pub threads: BTreeMap<String, ThreadUse>,
    /// Pulse fan-out per round from the observers' kernel receive times, ms.
    pub fanout_ms: Option<Summary>,
    /// Per round: spread of PULSE arrival at the SDK clients, as their generators read them, ms.
    pub client_spread_ms: Option<Summary>,
    /// Complete rounds seen by the clients in the window.
    pub rounds: usize,
    /// Pulses the clients received in those rounds / (clients × rounds).
    pub delivered_fraction: f64,
    /// Peers the server evicted (timeout, stalled, write timeout) during the window.
    pub evictions: usize,
    /// Peers the server saw leave for any reason during the window.
    pub server_offline: usize,
    /// Connections the clients saw end during the window.
    pub client_disconnects: usize,
    /// Observers still connected at the end.
    pub observers_online: usize,
}

/// Runs one size.
pub fn run(run: &Run, clients: u32) -> anyhow::Result<Steady> {
    let settings = &run.settings;
    let log = run.out_dir.join(format!("demo-server-steady-{clients}.log"));
    let server = DemoServer::spawn(&run.server, "0.0.0.0:0", &run.server_args(), &log)?;
    let (_, addr) = server.wait_listening(Duration::from_secs(30))?;
    thread::sleep(Duration::from_millis(200));
    let rss_start_kib = sampler::sample(server.pid).context("server stat")?.rss_kib;

    let started = now_ns();
    let mut generators =
        spawn_generators(addr.port(), clients, settings.per_generator, settings.ramp_rate, "p", run.backoff())?;
    let ramp_limit = Duration::from_secs_f64(f64::from(clients) / settings.ramp_rate) + Duration::from_secs(60);
    if let Err(error) = procs::wait_online(&generators, clients as usize, ramp_limit) {
        let why = diagnose(run, &server, &mut generators, started, clients);
        return Err(error.context(why));
    }
    let all_online = now_ns();
    let observers = Observers::start(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())), settings.observers, "obs-")?;
    let peers = clients as usize + settings.observers;
    server.wait_caught_up(peers, run.settings.console_limit)?;
    let caught_up = now_ns();
    // Let the joins' after-effects settle: a pulse round or two.
    thread::sleep(settings.interval * 2);

    let threads_before = procfs::threads(server.pid)?;
    let from = now_ns();
    let sampler = Sampler::start(server.pid, Duration::from_secs(1));
    thread::sleep(settings.window);
    let samples = sampler.stop();
    let to = now_ns();
    let threads_after = procfs::threads(server.pid)?;

    let (evictions, server_offline, list_bytes) = server.log(|log| {
        let inside: Vec<_> = log.offline.iter().filter(|line| (from..=to).contains(&line.at)).collect();
        let evicted =
            inside.iter().filter(|line| matches!(line.reason.as_str(), "timeout" | "stalled" | "write-timeout"));
        (evicted.count(), inside.len(), log.list_bytes)
    });
    let mut records = Records::default();
    for (n, generator) in generators.iter_mut().enumerate() {
        records.merge(generator.dump(&run.out_dir.join(format!("dump-steady-{clients}-{n}.json")), from, to)?);
    }
    let observers_online = observers.online();
    let kernel_times = observers.kernel_times(from, to);
    drop(server);
    observers.stop();
    drop(generators);

    let ticks = run.ticks_per_second;
    let cpu_percent = sampler::cpu_percents(&samples, ticks);
    let window_s = (to - from) as f64 / 1e9;
    let cpu_s = samples
        .last()
        .zip(samples.first())
        .map_or(0.0, |(last, first)| (last.cpu_ticks - first.cpu_ticks) as f64 / ticks as f64);
    let pulses = peers as f64 * window_s / settings.interval.as_secs_f64();
    let rss_kib = samples.last().map_or(0, |s| s.rss_kib);
    let period = u64::try_from(settings.interval.as_nanos()).unwrap_or(u64::MAX);

    let client_times: Vec<u64> = records.pulses.iter().map(|&(_, at)| at).collect();
    let client_rounds = inner(stats::rounds_by_phase(&client_times, period));
    let delivered: usize = client_rounds.iter().map(|round| round.count).sum();
    let kernel_rounds = inner(stats::rounds_by_phase(&kernel_times, period));
    let spreads =
        |rounds: &[stats::Round]| Summary::of(&rounds.iter().map(|r| stats::ms(r.spread())).collect::<Vec<_>>());

    Ok(Steady {
        clients,
        observers: settings.observers,
        generators: records_generators(clients, settings.per_generator),
        ramp_s: (all_online - started) as f64 / 1e9,
        console_lag_s: caught_up.saturating_sub(all_online) as f64 / 1e9,
        console_list_bytes: list_bytes,
        window_s,
        rss_start_kib,
        rss_kib,
        rss_per_peer_bytes: (rss_kib.saturating_sub(rss_start_kib) * 1024) as f64 / peers as f64,
        cpu_percent_mean: mean(&cpu_percent),
        cpu_percent_max: cpu_percent.iter().copied().fold(0.0, f64::max),
        cpu_percent,
        cpu_us_per_pulse: cpu_s * 1e6 / pulses,
        threads: sampler::thread_use(&threads_before, &threads_after, ticks),
        fanout_ms: spreads(&kernel_rounds),
        client_spread_ms: spreads(&client_rounds),
        rounds: client_rounds.len(),
        delivered_fraction: if client_rounds.is_empty() {
            0.0
        } else {
            delivered as f64 / (f64::from(clients) * client_rounds.len() as f64)
        },
        evictions,
        server_offline,
        client_disconnects: records.disconnects.len(),
        observers_online,
    })
}

/// Why clients are not online: what the server and the clients said since `from`.
fn diagnose(run: &Run, server: &DemoServer, generators: &mut [Generator], from: u64, clients: u32) -> String {
    let mut server_reasons: BTreeMap<String, usize> = BTreeMap::new();
    server.log(|log| {
        for line in &log.offline {
            *server_reasons.entry(line.reason.clone()).or_default() += 1;
        }
    });
    let mut records = Records::default();
    for (n, generator) in generators.iter_mut().enumerate() {
        let path = run.out_dir.join(format!("dump-diagnose-{clients}-{n}.json"));
        if let Ok(dumped) = generator.dump(&path, from, now_ns()) {
            records.merge(dumped);
        }
    }
    let mut client_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for disconnect in &records.disconnects {
        *client_reasons.entry(disconnect.reason.clone()).or_default() += 1;
    }
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for failure in &records.failures {
        *failures.entry(failure.kind.clone()).or_default() += 1;
    }
    format!(
        "server offline lines by reason {server_reasons:?}; client disconnects by reason {client_reasons:?}; \
         failed connects {failures:?}; {} connects in all",
        records.connects.len()
    )
}

/// Starts enough generators for `clients`, each on its own destination address 127.0.0.(2+n)
/// so that every generator has a full ephemeral port range of its own.
pub fn spawn_generators(
    port: u16,
    clients: u32,
    per_generator: u32,
    total_rate: f64,
    prefix: &str,
    backoff: Backoff,
) -> anyhow::Result<Vec<Generator>> {
    let count = records_generators(clients, per_generator);
    let mut generators = Vec::with_capacity(count);
    let mut left = clients;
    for n in 0..count {
        let share = left / u32::try_from(count - n).unwrap_or(1);
        left -= share;
        let host = Ipv4Addr::new(127, 0, 0, u8::try_from(2 + n).context("too many generators")?);
        let rate = total_rate / count as f64;
        generators.push(Generator::spawn(
            SocketAddr::from((host, port)),
            share,
            &format!("{prefix}{n}-"),
            rate,
            backoff,
        )?);
    }
    Ok(generators)
}

/// How many generator processes `clients` need.
pub fn records_generators(clients: u32, per_generator: u32) -> usize {
    clients.div_ceil(per_generator.max(1)).max(1) as usize
}

/// The rounds strictly inside the window: the first and last may be cut by its edges.
fn inner(rounds: Vec<stats::Round>) -> Vec<stats::Round> {
    let n = rounds.len();
    if n <= 2 {
        return Vec::new();
    }
    rounds[1..n - 1].to_vec()
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_hold_at_most_their_share() {
        assert_eq!(records_generators(1000, 5000), 1);
        assert_eq!(records_generators(5000, 5000), 1);
        assert_eq!(records_generators(19_000, 5000), 4);
        assert_eq!(records_generators(0, 5000), 1);
    }

    #[test]
    fn edge_rounds_are_dropped() {
        let round = |first| stats::Round { first, last: first, count: 1 };
        assert_eq!(inner(vec![round(1), round(2), round(3)]), vec![round(2)]);
        assert!(inner(vec![round(1), round(2)]).is_empty());
    }
}
