//! Detection latency, both ways: a frozen server (SIGSTOP) as its clients see it, and a frozen
//! client process as the server sees it.

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;

use super::procs::{self, DemoServer, Ramp};
use super::steady::spawn_generators;
use super::Run;
use crate::clock::now_ns;
use crate::stats::{self, Summary};

/// One direction's latencies.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    /// Peers that were frozen out.
    pub peers: usize,
    /// Peers whose loss was reported within the wait.
    pub detected: usize,
    /// From the last frame (the last pulse the client read) to the loss, ms.
    pub since_last_frame_ms: Option<Summary>,
    /// From the SIGSTOP to the loss, ms.
    pub since_stop_ms: Option<Summary>,
    /// The theoretical window after the last frame, ms.
    pub window_ms: (f64, f64),
    /// Losses outside the window plus 50 ms.
    pub outside_window: usize,
}

/// Both directions.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// A frozen server, seen by each client (`Disconnected { PulseTimeout }`).
    pub server_frozen: Direction,
    /// A frozen client process, seen by the server (`detached … timeout` on its stdout, or
    /// `offline … timeout` for a peer without a kept session).
    pub client_frozen: Direction,
    /// For the client-frozen direction: the time between the first and last eviction line of
    /// one tick as read from the server's stdout — how late the console printed the last one.
    pub eviction_print_spread_ms: f64,
}

/// Slack allowed beyond the theoretical window, ms.
const SLACK_MS: f64 = 50.0;

/// Runs both directions with `clients` clients in one generator.
pub fn run(run: &Run, clients: u32) -> anyhow::Result<Detection> {
    let settings = &run.settings;
    let interval = settings.interval;
    let m = f64::from(settings.max_missed);
    let i_ms = interval.as_secs_f64() * 1000.0;
    let log = run.out_dir.join("demo-server-detection.log");
    let server = DemoServer::spawn(&run.server, "0.0.0.0:0", &run.server_args(&run.server), &log)?;
    let (_, addr) = server.wait_listening(Duration::from_secs(30))?;
    let mut generators =
        spawn_generators(addr.port(), clients, clients, Ramp::rate(settings.ramp_rate), "det", run.backoff(), None)?;
    procs::wait_online(&generators, clients as usize, Duration::from_secs(60))?;
    server.wait_caught_up(clients as usize, Duration::from_secs(60))?;
    thread::sleep(interval * 2);

    // The server freezes: each client counts missed pulses and declares the loss.
    let stop = now_ns();
    server.signal(Signal::SIGSTOP)?;
    thread::sleep(interval * (settings.max_missed + 1) + Duration::from_secs(1));
    server.signal(Signal::SIGCONT)?;
    let resumed = now_ns();
    let generator = &mut generators[0];
    let records = generator.dump(
        &run.out_dir.join("dump-detection-server.json"),
        stop.saturating_sub(60_000_000_000),
        resumed,
    )?;
    let mut since_last = Vec::new();
    let mut since_stop = Vec::new();
    for loss in records.disconnects.iter().filter(|d| d.reason == "pulse-timeout" && d.at >= stop) {
        since_last.push(stats::ms(loss.at - loss.last_pulse));
        since_stop.push(stats::ms(loss.at - stop));
    }
    let window = (m * i_ms, (m + 1.0) * i_ms);
    let server_frozen = direction(clients as usize, &since_last, &since_stop, window);

    // Everyone reconnects; then a client process freezes and the server evicts its peers.
    procs::wait_online(&generators, clients as usize, Duration::from_secs(60))?;
    thread::sleep(interval * 3);
    let stop = now_ns();
    generators[0].signal(Signal::SIGSTOP)?;
    thread::sleep(interval * (settings.max_missed + 2) + Duration::from_secs(1));
    let evictions: HashMap<String, u64> = server.log(|log| {
        log.offline
            .iter()
            .filter(|line| line.at >= stop && line.reason == "timeout")
            .map(|line| (line.peer.clone(), line.at))
            .collect()
    });
    generators[0].signal(Signal::SIGCONT)?;
    thread::sleep(Duration::from_millis(200));
    let records = generators[0].dump(
        &run.out_dir.join("dump-detection-client.json"),
        stop.saturating_sub(60_000_000_000),
        stop,
    )?;
    // The last frame each client sent before the freeze: its ALIVE to the last pulse it read.
    let mut last_pulse: HashMap<u32, u64> = HashMap::new();
    for &(client, at) in &records.pulses {
        let slot = last_pulse.entry(client).or_default();
        *slot = (*slot).max(at);
    }
    let mut since_last = Vec::new();
    let mut since_stop = Vec::new();
    for (peer, at) in &evictions {
        let Some(client) = peer.rsplit('-').next().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(&last) = last_pulse.get(&client) {
            since_last.push(stats::ms(at.saturating_sub(last)));
        }
        since_stop.push(stats::ms(at - stop));
    }
    let window = ((m + 1.0) * i_ms, (m + 2.0) * i_ms);
    let client_frozen = direction(clients as usize, &since_last, &since_stop, window);
    let spread = match (evictions.values().min(), evictions.values().max()) {
        (Some(first), Some(last)) => stats::ms(last - first),
        _ => 0.0,
    };
    // The generators first: clients that outlive their server would report failed reconnects.
    drop(generators);
    drop(server);
    Ok(Detection { server_frozen, client_frozen, eviction_print_spread_ms: spread })
}

fn direction(peers: usize, since_last: &[f64], since_stop: &[f64], window: (f64, f64)) -> Direction {
    let outside = since_last.iter().filter(|&&ms| ms < window.0 - SLACK_MS || ms > window.1 + SLACK_MS).count();
    Direction {
        peers,
        detected: since_stop.len(),
        since_last_frame_ms: Summary::of(since_last),
        since_stop_ms: Summary::of(since_stop),
        window_ms: window,
        outside_window: outside,
    }
}
