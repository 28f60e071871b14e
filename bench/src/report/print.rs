//! The report's text: the header, one table per section, and the targets of issue 5.

use serde::Serialize;

use super::detection::{Detection, Direction};
use super::embedded::Embedded;
use super::steady::{Steady, Transport};
use super::storm::Storm;
use super::{Machine, Report, Settings};
use crate::stats::Summary;

/// One target of the issue and what the report measured for it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// The target, as the issue states it.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measured (`None`).
    pub met: Option<bool>,
}

/// Prints the machine and the settings.
pub fn header(machine: &Machine, settings: &Settings) {
    println!("pulsewire benchmark report{}", if settings.quick { " (quick)" } else { "" });
    println!(
        "machine: {} cores ({}), {:.1} GiB RAM, Linux {}, open files {}, somaxconn {}, syn backlog {}, \
         syncookies {}, ports {}",
        machine.cores,
        machine.cpu,
        machine.memory_mib as f64 / 1024.0,
        machine.kernel,
        machine.open_files.map_or_else(|| "?".into(), |n| n.to_string()),
        opt(&machine.somaxconn),
        opt(&machine.syn_backlog),
        opt(&machine.syncookies),
        opt(&machine.port_range),
    );
    let load_1m: f64 = machine.load_at_start.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
    println!(
        "load average at start: {}{}",
        machine.load_at_start,
        if load_1m > 0.5 {
            "  (WARNING: the machine is busy; every figure below is skewed by the other work)"
        } else {
            ""
        }
    );
    println!(
        "settings: server {}, interval {:?}, max-missed {}, steady window {:?}, idle window {:?}, sizes {:?}, \
         TLS sizes {:?}, {} clients per generator, ramp {}/s (TLS section {}/s, at most {} connecting), {} observers, server run with {}",
        match settings.server {
            super::ServerKind::Demo => "demo-server --json (release build)",
            super::ServerKind::Sdk => "bench serve (the SDK's Server, no online-list console)",
        },
        settings.interval,
        settings.max_missed,
        settings.window,
        settings.idle_window,
        settings.sizes,
        settings.tls_sizes,
        settings.per_generator,
        settings.ramp_rate,
        settings.tls_ramp_rate,
        settings.tls_max_connecting,
        settings.observers,
        settings.server_log_filter,
    );
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("?")
}

/// Prints the loopback floor.
pub fn floor(floor: &super::floor::Floor) {
    println!(
        "loopback floor: one {}-byte PULSE write to an established loopback TCP socket costs {:.2} us, one read {:.2} us \
         (median of {} rounds over {} sockets, one thread): {} peers need {:.0} ms of writes per round",
        floor.frame_bytes,
        floor.send_us,
        floor.recv_us,
        floor.rounds,
        floor.sockets,
        19_000,
        floor.send_us * 19_000.0 / 1000.0
    );
}

/// A one-line progress note on stderr once a size is measured.
pub fn steady_row_progress(steady: &Steady) {
    eprintln!(
        "  {} clients ({}): ramp {:.1} s, {:.2} CPU-s, failed connects {:?}; RSS {:.1} MiB, {:.0} B/peer, CPU {:.1} %, \
         {:.2} us/pulse, fan-out {}",
        steady.clients,
        steady.transport.word(),
        steady.ramp_s,
        steady.ramp_cpu_s,
        steady.ramp_failures,
        steady.rss_kib as f64 / 1024.0,
        steady.rss_per_peer_bytes,
        steady.cpu_percent_mean,
        steady.cpu_us_per_pulse,
        med_max(steady.fanout_ms.as_ref()),
    );
}

/// The steady-state table's header and one row per run.
fn steady_rows(rows: &[Steady]) {
    println!(
        "{:>7} {:>9} {:>6} {:>4} {:>6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>11} {:>7} {:>7}",
        "clients",
        "transport",
        "peers",
        "gens",
        "ramp s",
        "console",
        "RSS MiB",
        "RSS/peer",
        "CPU% avg",
        "us/pulse",
        "fan-out ms",
        "at clients",
        "evicted",
        "dropped"
    );
    println!(
        "{:>7} {:>9} {:>6} {:>4} {:>6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>11} {:>7} {:>7}",
        "", "", "", "", "", "lag s", "", "bytes", "(max)", "", "med/max", "med/max", "", ""
    );
    for s in rows {
        println!(
            "{:>7} {:>9} {:>6} {:>4} {:>6.1} {:>8.1} {:>8.1} {:>8.0} {:>9} {:>8.2} {:>11} {:>11} {:>7} {:>7}",
            s.clients,
            s.transport.word(),
            s.clients as usize + s.observers,
            s.generators,
            s.ramp_s,
            s.console_lag_s,
            s.rss_kib as f64 / 1024.0,
            s.rss_per_peer_bytes,
            format!("{:.1} ({:.0})", s.cpu_percent_mean, s.cpu_percent_max),
            s.cpu_us_per_pulse,
            med_max(s.fanout_ms.as_ref()),
            med_max(s.client_spread_ms.as_ref()),
            s.evictions,
            s.client_disconnects,
        );
    }
}

/// The TLS row of each size and the plaintext row measured just before it.
pub fn tls_pairs(rows: &[Steady]) -> Vec<(&Steady, &Steady)> {
    rows.iter()
        .filter(|tls| tls.transport == Transport::Tls)
        .filter_map(|tls| {
            let plain = rows.iter().find(|p| p.transport == Transport::Plaintext && p.clients == tls.clients)?;
            Some((plain, tls))
        })
        .collect()
}

/// What each TLS client costs the server beyond a plaintext one: the RSS difference of the
/// two runs per SDK client (the observers are plaintext in both), bytes.
pub fn tls_extra_per_client(plain: &Steady, tls: &Steady) -> f64 {
    let growth = |s: &Steady| s.rss_kib.saturating_sub(s.rss_start_kib) as f64 * 1024.0;
    (growth(tls) - growth(plain)) / f64::from(tls.clients.max(1))
}

fn med_max(summary: Option<&Summary>) -> String {
    summary.map_or_else(|| "-".into(), |s| format!("{:.1}/{:.1}", s.median, s.max))
}

/// Prints every section that ran, then the targets.
pub fn tables(report: &Report) {
    let settings = &report.settings;
    if !report.steady.is_empty() {
        println!();
        println!(
            "1. Steady state: {:?} window per size, server CPU sampled every 1 s (utime+stime of /proc/PID/stat)",
            settings.window
        );
        steady_rows(&report.steady);
        println!(
            "  peers = SDK clients + observers. RSS/peer = (RSS at the end - RSS after listening) / peers. \
             us/pulse = server CPU / (peers x rounds)."
        );
        println!(
            "  fan-out = per round, last - first kernel receive time of PULSE at the observers (SO_TIMESTAMPNS); \
             at clients = the same spread as the generators' SDK clients read it (includes their own scheduling)."
        );
        println!("  evicted = server offline lines (timeout/stalled/write-timeout) in the window; dropped = client disconnects.");
        if let Some(last) = report.steady.last() {
            let threads: Vec<String> =
                last.threads.iter().map(|(name, t)| format!("{name} x{} {:.0} ms", t.threads, t.cpu_ms)).collect();
            println!("  server CPU by thread at {} clients over the window: {}", last.clients, threads.join(", "));
            println!(
                "  console lag: the demo server printed {:.1} MB of online lists during the joins",
                last.console_list_bytes as f64 / 1e6
            );
        }
    }
    if !report.steady_tls.is_empty() {
        print_steady_tls(&report.steady_tls, settings);
    }
    if let Some(detection) = &report.detection {
        print_detection(detection);
    }
    if let Some(storm) = &report.storm {
        print_storm(storm, settings);
    }
    for embedded in &report.embedded {
        print_embedded(embedded);
    }
    println!();
    println!("Targets (issue 5)");
    for check in &report.targets {
        let verdict = match check.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        println!("  [{verdict}] {}: {}", check.target, check.measured);
    }
    for error in &report.errors {
        println!("  [error ] {error}");
    }
    println!("(report took {:.0} s; load average at the end: {})", report.duration_s, report.load_at_end);
}

fn print_steady_tls(rows: &[Steady], settings: &Settings) {
    println!();
    println!(
        "1b. Steady state over TLS: bench serve (the SDK's Server), each size with its SDK clients over plaintext, \
         then over TLS 1.3 (rustls, ring, ECDSA P-256 certificate); {:?} window; the observers are plaintext in both",
        settings.window
    );
    steady_rows(rows);
    println!(
        "{:>7} {:>9} {:>10} {:>13} {:>24} {:>30}",
        "clients", "transport", "ramp CPU s", "us/connection", "failed connects (ramp)", "ListenOverflows/Drops (ramp)"
    );
    for s in rows {
        let failures: Vec<String> = s.ramp_failures.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        let counter = |name: &str| s.ramp_net_counters.get(name).copied().unwrap_or(0);
        println!(
            "{:>7} {:>9} {:>10.2} {:>13.0} {:>24} {:>30}",
            s.clients,
            s.transport.word(),
            s.ramp_cpu_s,
            s.ramp_cpu_s * 1e6 / f64::from(s.clients.max(1)),
            if failures.is_empty() { "0".to_owned() } else { failures.join(", ") },
            format!("+{} / +{}", counter("TcpExt:ListenOverflows"), counter("TcpExt:ListenDrops")),
        );
    }
    println!(
        "  us/connection = server CPU over the ramp / clients (handshakes, joins, and the pulse rounds of those \
         already online); the window starts two intervals after the last client is online."
    );
    for s in rows {
        let threads: Vec<String> =
            s.threads.iter().map(|(name, t)| format!("{name} x{} {:.0} ms", t.threads, t.cpu_ms)).collect();
        println!("  server CPU by thread, {} over {}: {}", s.clients, s.transport.word(), threads.join(", "));
    }
    for (plain, tls) in tls_pairs(rows) {
        println!(
            "  at {}: TLS costs {:.2}x plaintext's CPU per pulse ({:.2} vs {:.2} us) and {:.0} bytes of server RSS per \
             TLS client beyond a plaintext one",
            tls.clients,
            tls.cpu_us_per_pulse / plain.cpu_us_per_pulse,
            tls.cpu_us_per_pulse,
            plain.cpu_us_per_pulse,
            tls_extra_per_client(plain, tls)
        );
    }
}

fn print_detection(detection: &Detection) {
    println!();
    println!("2. Detection latency, ms from the last frame (SIGSTOP of the server / of a client process)");
    println!(
        "{:<15} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>7} {:>17}",
        "frozen", "peers", "detected", "min", "median", "p99", "max", "window", "outside", "from SIGSTOP med"
    );
    for (name, d) in [("server", &detection.server_frozen), ("client process", &detection.client_frozen)] {
        print_direction(name, d);
    }
    println!(
        "  outside = losses outside the window +-50 ms. The server's eviction times are the read times of its \
         offline lines; they were printed over {:.1} ms for one tick.",
        detection.eviction_print_spread_ms
    );
}

fn print_direction(name: &str, d: &Direction) {
    let s = d.since_last_frame_ms;
    let cell = |f: fn(&Summary) -> f64| s.as_ref().map_or_else(|| "-".into(), |s| format!("{:.0}", f(s)));
    println!(
        "{:<15} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>7} {:>17}",
        name,
        d.peers,
        d.detected,
        cell(|s| s.min),
        cell(|s| s.median),
        cell(|s| s.p99),
        cell(|s| s.max),
        format!("{:.0}-{:.0}", d.window_ms.0, d.window_ms.1),
        d.outside_window,
        d.since_stop_ms.map_or_else(|| "-".into(), |s| format!("{:.0}", s.median)),
    );
}

fn print_storm(storm: &Storm, settings: &Settings) {
    println!();
    println!("3. Reconnect storm: {} clients online, kill -9, restart on the same port", storm.clients);
    println!("  backoff: {}", settings.storm_backoff_text);
    println!(
        "  restart spawned {:.0} ms after the kill, listening {:.0} ms after the spawn; listen backlog {}",
        storm.restart_after_kill_ms,
        storm.listening_after_spawn_ms,
        storm.listen_backlog.map_or_else(|| "?".into(), |b| b.to_string())
    );
    println!(
        "  all {} back {} ms after the restart ({} ms after the kill); {} came back",
        storm.clients,
        storm.all_back_after_restart_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
        storm.all_back_after_kill_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
        storm.back
    );
    println!(
        "  server CPU: {:.2} s until all were back, {:.2} s until its console had printed every join ({} ms after the \
         restart); peak {:.0} % of one core (100 ms samples)",
        storm.server_cpu_s_all_back,
        storm.server_cpu_s_settled,
        storm.console_settled_after_restart_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
        storm.server_peak_cpu_percent
    );
    let threads: Vec<String> =
        storm.threads.iter().map(|(name, t)| format!("{name} x{} {:.0} ms", t.threads, t.cpu_ms)).collect();
    println!("  server CPU by thread: {}", threads.join(", "));
    println!(
        "  refused while listening: {} (before it listened: {}); other failed attempts: {:?}",
        storm.refused_while_listening, storm.refused_before_listening, storm.other_failures
    );
    let counters: Vec<String> = storm.net_counters.iter().map(|(name, delta)| format!("{name} +{delta}")).collect();
    println!("  kernel: {}", counters.join(", "));
    println!("  online count at the end of each 100 ms after the kill:");
    for (row, chunk) in storm.online_per_100ms.chunks(10).enumerate() {
        let cells: Vec<String> = chunk.iter().map(|n| format!("{n:>6}")).collect();
        println!("    {:>5.1}s {}", row as f64, cells.join(""));
    }
}

fn print_embedded(e: &Embedded) {
    println!();
    let how = match e.driver.as_str() {
        "start" => "Client::start (driver on the reactor thread)",
        _ => "Client::new, driver on its own thread under smol::block_on",
    };
    println!(
        "4. Embedded client, idle, {how}, measured every 1 s over {:.0} s (interval {:.0} s)",
        e.window_s, e.interval_s
    );
    println!(
        "  RSS: runtime alone {} KiB, with the client at most {} KiB: {} KiB beyond the runtime",
        e.rss_runtime_kib, e.rss_max_kib, e.rss_beyond_runtime_kib
    );
    println!("  CPU: {:.2} ms over the window, {:.0} us per interval", e.cpu_ms, e.cpu_us_per_interval);
    println!(
        "  wake-ups per interval: {:.1} in all, {:.1} in the SDK's threads (the rest: the application thread reading events)",
        e.wakeups_per_interval, e.sdk_wakeups_per_interval
    );
    let threads: Vec<String> = e
        .threads
        .iter()
        .map(|(name, t)| format!("{name} x{}: {:.2} ms, {} wake-ups", t.threads, t.cpu_ms, t.voluntary_switches))
        .collect();
    println!("  by thread: {}", threads.join("; "));
    let seconds: Vec<String> =
        e.seconds.iter().map(|s| format!("{:.0}s {:.2}ms {}KiB {}w", s.t_s, s.cpu_ms, s.rss_kib, s.wakeups)).collect();
    println!("  per second (cumulative CPU, RSS, cumulative wake-ups): {}", seconds.join(" | "));
}

/// The most server RSS a TLS peer may cost in all: a plaintext peer's 2 KiB (its own target),
/// the 7457 bytes of heap rustls keeps per connection after a TLS 1.3 handshake (4096 of them
/// its read buffer; see docs/benchmarks.md, "TLS"), and 7 % for the allocator.
pub const TLS_RSS_PER_PEER_BOUND: f64 = 10.0 * 1024.0;

/// The TLS section's targets: CPU per pulse within twice plaintext's, RSS per peer within
/// [`TLS_RSS_PER_PEER_BOUND`], and a ramp of handshakes that nothing overflowed.
fn tls_targets(steady_tls: &[Steady], check: &mut impl FnMut(&str, String, Option<bool>)) {
    let pairs = tls_pairs(steady_tls);
    let top = pairs.iter().filter(|(_, tls)| tls.clients >= 19_000).max_by_key(|(_, tls)| tls.clients);
    let none = || ("not measured (no TLS size of 19000 or more beside its plaintext run)".to_owned(), None);
    let (measured, met) = top.map_or_else(none, |(plain, tls)| {
        (
            format!(
                "{:.2} us per pulse over TLS, {:.2} over plaintext ({:.2}x); {:.1} % vs {:.1} % of one core",
                tls.cpu_us_per_pulse,
                plain.cpu_us_per_pulse,
                tls.cpu_us_per_pulse / plain.cpu_us_per_pulse,
                tls.cpu_percent_mean,
                plain.cpu_percent_mean
            ),
            Some(tls.cpu_us_per_pulse <= 2.0 * plain.cpu_us_per_pulse),
        )
    });
    check("TLS at 19000: server CPU per pulse <= 2x plaintext's (bench serve, back to back)", measured, met);
    let (measured, met) = top.map_or_else(none, |(plain, tls)| {
        (
            format!(
                "{:.0} bytes per peer ({:.0} over plaintext; {:.0} more per TLS client)",
                tls.rss_per_peer_bytes,
                plain.rss_per_peer_bytes,
                tls_extra_per_client(plain, tls)
            ),
            Some(tls.rss_per_peer_bytes <= TLS_RSS_PER_PEER_BOUND),
        )
    });
    check(&format!("TLS at 19000: <= {:.0} KiB server RSS per peer", TLS_RSS_PER_PEER_BOUND / 1024.0), measured, met);
    let (measured, met) = top.map_or_else(none, |(_, tls)| {
        let failed: usize = tls.ramp_failures.values().sum();
        let overflowed: u64 = tls.ramp_net_counters.values().sum();
        (
            format!(
                "{} online in {:.1} s, {failed} failed connects {:?}, ListenOverflows+ListenDrops +{overflowed}, \
                 {} evicted, {} dropped in the window",
                tls.clients, tls.ramp_s, tls.ramp_failures, tls.evictions, tls.client_disconnects
            ),
            Some(failed == 0 && overflowed == 0 && tls.evictions == 0 && tls.client_disconnects == 0),
        )
    });
    check("TLS at 19000: the handshake ramp overflows nothing, no false eviction", measured, met);
}

/// Checks every target of the issue against what was measured.
pub fn targets(
    settings: &Settings,
    steady: &[Steady],
    steady_tls: &[Steady],
    detection: Option<&Detection>,
    storm: Option<&Storm>,
    embedded: Option<&Embedded>,
) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let mut check = |target: &str, measured: String, met: Option<bool>| {
        checks.push(TargetCheck { target: target.into(), measured, met });
    };
    let top = steady.iter().filter(|s| s.clients >= 19_000).max_by_key(|s| s.clients);
    let none = || ("not measured (no size of 19000 or more)".to_owned(), None);
    let (measured, met) = top.map_or_else(none, |s| {
        (
            format!(
                "{} peers, {} evicted, {} dropped, {:.2} % of pulses delivered over {:.0} s",
                s.clients as usize + s.observers,
                s.evictions,
                s.client_disconnects,
                s.delivered_fraction * 100.0,
                s.window_s
            ),
            Some(s.evictions == 0 && s.client_disconnects == 0 && s.delivered_fraction >= 0.999),
        )
    });
    check("19000 peers on one server at a 1 s interval, zero false evictions", measured, met);
    let (measured, met) = top.map_or_else(none, |s| {
        (format!("{:.0} bytes per peer", s.rss_per_peer_bytes), Some(s.rss_per_peer_bytes <= 2048.0))
    });
    check("<= 2 KiB server RSS per peer at 19000", measured, met);
    let (measured, met) = top.map_or_else(none, |s| {
        (
            format!(
                "{:.1} % of one core (max {:.0} %), {:.2} us per pulse",
                s.cpu_percent_mean, s.cpu_percent_max, s.cpu_us_per_pulse
            ),
            Some(s.cpu_percent_mean <= 10.0 && s.cpu_us_per_pulse <= 5.0),
        )
    });
    check("server CPU <= 10 % of one core at 19000 (<= 5 us per pulse)", measured, met);
    let (measured, met) = top.map_or_else(none, |s| match &s.fanout_ms {
        Some(f) => {
            (format!("median {:.1} ms, max {:.1} ms over {} rounds", f.median, f.max, f.count), Some(f.max <= 50.0))
        }
        None => ("no complete round observed".into(), Some(false)),
    });
    check("pulse fan-out to 19000 peers <= 50 ms", measured, met);
    tls_targets(steady_tls, &mut check);
    let (measured, met) = detection.map_or_else(
        || ("not measured".to_owned(), None),
        |d| {
            let side = |d: &Direction| {
                format!(
                    "{}/{} detected, {} outside {:.0}-{:.0} ms +-50, max {:.0} ms",
                    d.detected,
                    d.peers,
                    d.outside_window,
                    d.window_ms.0,
                    d.window_ms.1,
                    d.since_last_frame_ms.map_or(f64::NAN, |s| s.max)
                )
            };
            let ok = |d: &Direction| d.detected == d.peers && d.outside_window == 0;
            (
                format!("server frozen: {}; client frozen: {}", side(&d.server_frozen), side(&d.client_frozen)),
                Some(ok(&d.server_frozen) && ok(&d.client_frozen)),
            )
        },
    );
    check("detection inside the theoretical window + 50 ms, both sides", measured, met);
    let limit_ms = settings.storm_backoff.max.as_secs_f64() * 1000.0 + 500.0;
    let (measured, met) = storm.map_or_else(
        || ("not measured".to_owned(), None),
        |s| match s.all_back_after_restart_ms {
            Some(ms) if s.back == s.clients as usize => {
                (format!("{ms:.0} ms (limit {limit_ms:.0} ms)"), Some(ms <= limit_ms))
            }
            _ => (format!("only {} of {} came back", s.back, s.clients), Some(false)),
        },
    );
    check("storm: 10000 back online within max-backoff + 0.5 s of the restart", measured, met);
    let (measured, met) = storm.map_or_else(
        || ("not measured".to_owned(), None),
        |s| {
            (
                format!(
                    "{:.2} CPU-s until all back ({:.2} s until the demo console settled)",
                    s.server_cpu_s_all_back, s.server_cpu_s_settled
                ),
                Some(s.server_cpu_s_all_back <= 0.5),
            )
        },
    );
    check("storm: server spends <= 0.5 CPU-seconds", measured, met);
    let (measured, met) = storm.map_or_else(
        || ("not measured".to_owned(), None),
        |s| {
            let overflows = s.net_counters.get("TcpExt:ListenOverflows").copied().unwrap_or(0);
            let drops = s.net_counters.get("TcpExt:ListenDrops").copied().unwrap_or(0);
            (
                format!(
                    "{} refused while listening, ListenOverflows +{overflows}, ListenDrops +{drops}",
                    s.refused_while_listening
                ),
                Some(s.refused_while_listening == 0 && overflows == 0 && drops == 0),
            )
        },
    );
    check("storm: zero connections refused or dropped from the accept queue", measured, met);
    let (measured, met) = embedded.map_or_else(
        || ("not measured".to_owned(), None),
        |e| {
            (
                format!(
                    "{:.1} wake-ups per interval in the SDK's threads ({:.1} with the application's event reader)",
                    e.sdk_wakeups_per_interval, e.wakeups_per_interval
                ),
                Some(e.sdk_wakeups_per_interval <= 2.0),
            )
        },
    );
    check("idle client: <= 2 wake-ups per interval", measured, met);
    let (measured, met) = embedded.map_or_else(
        || ("not measured".to_owned(), None),
        |e| (format!("{} KiB beyond the runtime's", e.rss_beyond_runtime_kib), Some(e.rss_beyond_runtime_kib <= 2048)),
    );
    check("idle client: <= 2 MiB RSS beyond the executor's own", measured, met);
    checks
}
