//! Steady state: N peers online on one server process, measured over a window; the SDK
//! clients over plaintext or over TLS.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::procs::{self, Backoff, DemoServer, Generator, Ramp, ServerProgram, TlsTrust};
use super::sampler::{self, Sampler, ThreadUse};
use super::{Run, ServerKind};
use crate::clock::now_ns;
use crate::observer::Observers;
use crate::procfs;
use crate::records::Records;
use crate::stats::{self, Summary};

/// How the SDK clients of a run reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    Plaintext,
    /// TLS (1.3, rustls with ring on both sides), on the server's TLS listener.
    Tls,
}

impl Transport {
    /// The word for it, as printed.
    pub fn word(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Tls => "TLS",
        }
    }
}

/// What one size measured.
#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    /// The server measured.
    pub server: ServerKind,
    /// How the SDK clients connected (the observers are always plaintext).
    pub transport: Transport,
    /// SDK clients.
    pub clients: u32,
    /// Raw observer peers on top of them.
    pub observers: usize,
    /// Generator processes.
    pub generators: usize,
    /// Seconds from the first client started to all online.
    pub ramp_s: f64,
    /// Server CPU from the first client started to all online, s.
    pub ramp_cpu_s: f64,
    /// Failed connect attempts from the first client started to all online, by kind
    /// (`rejected-full`: the server's handshake or peer limit, which a TLS client reads as
    /// `tls` since the server answers it in plaintext; `handshake-timeout`, `connect-timeout`, …).
    pub ramp_failures: BTreeMap<String, usize>,
    /// The kernel's listen-queue counters over the ramp (machine-wide deltas).
    pub ramp_net_counters: BTreeMap<String, u64>,
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

/// The kernel counters that say the ramp overflowed the accept queue.
const RAMP_COUNTERS: [&str; 2] = ["TcpExt:ListenOverflows", "TcpExt:ListenDrops"];

/// Runs one size on `program`, its SDK clients over `transport` (TLS: the program must be
/// `bench serve`, which takes `--tls`) started as `ramp` says (for all generators together).
pub fn run(
    run: &Run,
    program: &ServerProgram,
    clients: u32,
    transport: Transport,
    ramp: Ramp,
) -> anyhow::Result<Steady> {
    let settings = &run.settings;
    let name = match (program.kind, transport) {
        (ServerKind::Demo, Transport::Plaintext) => format!("demo-server-steady-{clients}"),
        (ServerKind::Demo, Transport::Tls) => anyhow::bail!("the demo server takes no --tls: use bench serve"),
        (ServerKind::Sdk, Transport::Plaintext) => format!("bench-serve-steady-{clients}"),
        (ServerKind::Sdk, Transport::Tls) => format!("bench-serve-steady-tls-{clients}"),
    };
    let mut args = run.server_args(program);
    if transport == Transport::Tls {
        let ca = run.out_dir.join(format!("{name}-ca.pem"));
        args.extend(["--tls".into(), "0.0.0.0:0".into(), "--ca-out".into(), ca.display().to_string()]);
    }
    let server = DemoServer::spawn(program, "0.0.0.0:0", &args, &run.out_dir.join(format!("{name}.log")))?;
    let (_, addr) = server.wait_listening(Duration::from_secs(30))?;
    let tls = match transport {
        Transport::Plaintext => None,
        Transport::Tls => Some(server.tls().context("the server's listening line names no TLS listener")?),
    };
    let client_port = tls.as_ref().map_or(addr.port(), |tls| tls.addr.port());
    thread::sleep(Duration::from_millis(200));
    let before_ramp = sampler::sample(server.pid).context("server stat")?;
    let rss_start_kib = before_ramp.rss_kib;

    let counters_before = procfs::net_counters();
    let started = now_ns();
    let mut generators =
        spawn_generators(client_port, clients, settings.per_generator, ramp, "p", run.backoff(), tls.as_ref())?;
    let ramp_limit = Duration::from_secs_f64(f64::from(clients) / ramp.rate) + Duration::from_secs(60);
    if let Err(error) = procs::wait_online(&generators, clients as usize, ramp_limit) {
        let why = diagnose(run, &server, &mut generators, started, clients);
        return Err(error.context(why));
    }
    let all_online = now_ns();
    let after_ramp = sampler::sample(server.pid).context("server stat")?;
    let ramp_net_counters = counter_deltas(&counters_before, &procfs::net_counters(), &RAMP_COUNTERS);
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
    let mut ramp_failures: BTreeMap<String, usize> = BTreeMap::new();
    for (n, generator) in generators.iter_mut().enumerate() {
        records.merge(generator.dump(&run.out_dir.join(format!("dump-{name}-{n}.json")), from, to)?);
        let ramp_records =
            generator.dump(&run.out_dir.join(format!("dump-{name}-ramp-{n}.json")), started, all_online)?;
        for failure in ramp_records.failures {
            *ramp_failures.entry(failure.kind).or_default() += 1;
        }
    }
    let observers_online = observers.online();
    let kernel_times = observers.kernel_times(from, to);
    // The generators first: clients that outlive their server would report failed reconnects.
    drop(generators);
    observers.stop();
    drop(server);

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
        server: program.kind,
        transport,
        clients,
        observers: settings.observers,
        generators: records_generators(clients, settings.per_generator),
        ramp_s: (all_online - started) as f64 / 1e9,
        ramp_cpu_s: after_ramp.cpu_ticks.saturating_sub(before_ramp.cpu_ticks) as f64 / ticks as f64,
        ramp_failures,
        ramp_net_counters,
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

/// How much each of `names` grew from `before` to `after`.
pub fn counter_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    names: &[&str],
) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|&name| {
            let delta = after.get(name).unwrap_or(&0).saturating_sub(*before.get(name).unwrap_or(&0));
            (name.to_owned(), delta)
        })
        .collect()
}

/// Starts enough generators for `clients`, each on its own destination address 127.0.0.(2+n)
/// so that every generator has a full ephemeral port range of its own, sharing `ramp` (its
/// rate and its limit of clients connecting at once are totals); over TLS when `tls` is given
/// (`port` is then the TLS listener's).
pub fn spawn_generators(
    port: u16,
    clients: u32,
    per_generator: u32,
    ramp: Ramp,
    prefix: &str,
    backoff: Backoff,
    tls: Option<&TlsTrust>,
) -> anyhow::Result<Vec<Generator>> {
    let count = records_generators(clients, per_generator);
    let mut generators = Vec::with_capacity(count);
    let mut left = clients;
    for n in 0..count {
        let share = left / u32::try_from(count - n).unwrap_or(1);
        left -= share;
        let host = Ipv4Addr::new(127, 0, 0, u8::try_from(2 + n).context("too many generators")?);
        let share_of_ramp = Ramp {
            rate: ramp.rate / count as f64,
            max_connecting: ramp.max_connecting.div_ceil(u32::try_from(count).unwrap_or(1)),
        };
        generators.push(Generator::spawn(
            SocketAddr::from((host, port)),
            share,
            &format!("{prefix}{n}-"),
            share_of_ramp,
            backoff,
            tls,
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
    fn counter_deltas_are_the_growth_of_the_named_counters() {
        let before = BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 1)]);
        let after = BTreeMap::from([("a".to_owned(), 7), ("b".to_owned(), 1), ("c".to_owned(), 9)]);
        let deltas = counter_deltas(&before, &after, &["a", "c", "missing"]);
        assert_eq!(deltas, BTreeMap::from([("a".to_owned(), 2), ("c".to_owned(), 9), ("missing".to_owned(), 0)]));
    }

    #[test]
    fn edge_rounds_are_dropped() {
        let round = |first| stats::Round { first, last: first, count: 1 };
        assert_eq!(inner(vec![round(1), round(2), round(3)]), vec![round(2)]);
        assert!(inner(vec![round(1), round(2)]).is_empty());
    }
}
