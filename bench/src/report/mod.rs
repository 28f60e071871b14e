//! `bench report`: starts the real demo server and load generators, measures, prints a table
//! and writes the figures as JSON.

mod detection;
mod embedded;
mod floor;
mod print;
mod procs;
mod sampler;
mod steady;
mod storm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::procfs;
use procs::{Backoff, Ramp};
use steady::Transport;

/// The report's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Short windows (10 s steady state, 10 s idle client) so the whole report takes a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Steady-state sizes: SDK clients on one server.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,19000")]
    pub sizes: Vec<u32>,
    /// Measured window per size [default: 60s, 10s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// The idle client's window [default: 60s, 10s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_window: Option<Duration>,
    /// The server's pulse interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The server's miss limit.
    #[arg(long, default_value_t = 3)]
    pub max_missed: u32,
    /// Clients per generator process (each has its own destination 127.0.0.x).
    #[arg(long, default_value_t = 5000)]
    pub per_generator: u32,
    /// Clients started per second, all generators together.
    #[arg(long, default_value_t = 4000.0)]
    pub ramp_rate: f64,
    /// Raw observer peers that time the pulse fan-out with kernel receive timestamps.
    #[arg(long, default_value_t = 100)]
    pub observers: usize,
    /// Clients for the detection runs.
    #[arg(long, default_value_t = 100)]
    pub detect_clients: u32,
    /// Clients for the reconnect storm.
    #[arg(long, default_value_t = 10_000)]
    pub storm_clients: u32,
    /// The server to measure: `demo` runs the real demo-server binary (built with cargo);
    /// `sdk` runs `bench serve`, the SDK's server engine without the demo's console, which
    /// prints the whole online list after every join.
    #[arg(long, value_enum, default_value = "demo")]
    pub server: ServerKind,
    /// How long to wait for the demo server's console to print every join before a section
    /// gives up.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub console_limit: Duration,
    /// TLS steady-state sizes: each runs twice on `bench serve`, its SDK clients over plaintext
    /// then over TLS, so that the two rows compare the same server back to back.
    #[arg(long, value_delimiter = ',', default_value = "19000")]
    pub tls_sizes: Vec<u32>,
    /// Clients started per second in the TLS section's runs, all generators together (each
    /// start is a TLS handshake on both sides) [default: --ramp-rate].
    #[arg(long)]
    pub tls_ramp_rate: Option<f64>,
    /// The most clients connecting (started, not yet online) at once in the TLS section's
    /// runs, all generators together: the ramp waits for handshakes to finish instead of
    /// piling them up in the server's accept queue and handshake limit. 0: no limit.
    #[arg(long, default_value_t = 256)]
    pub tls_max_connecting: u32,
    /// Sections to run (steady, steady-tls, detection, storm, embedded) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Where to write the JSON [default: target/bench/report.json, report-quick.json with --quick].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A part of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Steady state per size.
    Steady,
    /// Steady state over TLS beside plaintext, on `bench serve`, per TLS size.
    SteadyTls,
    /// Detection latency both ways.
    Detection,
    /// Reconnect storm.
    Storm,
    /// The idle embedded client.
    Embedded,
}

/// The server program a report measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The real `demo-server` binary.
    Demo,
    /// `bench serve`: the SDK's server alone.
    Sdk,
}

/// The settings in force, as printed and written.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Quick mode.
    pub quick: bool,
    /// The server measured.
    pub server: ServerKind,
    /// The wait for the demo console.
    #[serde(serialize_with = "as_ms")]
    pub console_limit: Duration,
    /// Pulse interval.
    #[serde(serialize_with = "as_ms")]
    pub interval: Duration,
    /// Miss limit.
    pub max_missed: u32,
    /// Steady-state window.
    #[serde(serialize_with = "as_ms")]
    pub window: Duration,
    /// Idle-client window.
    #[serde(serialize_with = "as_ms")]
    pub idle_window: Duration,
    /// Steady-state sizes.
    pub sizes: Vec<u32>,
    /// TLS steady-state sizes.
    pub tls_sizes: Vec<u32>,
    /// Clients per generator.
    pub per_generator: u32,
    /// Ramp, clients per second.
    pub ramp_rate: f64,
    /// Ramp of the TLS section's runs, clients per second.
    pub tls_ramp_rate: f64,
    /// The most clients connecting at once in the TLS section's runs (0: no limit).
    pub tls_max_connecting: u32,
    /// Observers.
    pub observers: usize,
    /// Detection clients.
    pub detect_clients: u32,
    /// Storm clients.
    pub storm_clients: u32,
    /// The storm's reconnect policy (Socket.IO's: 0.5–5 s, jitter 0.5).
    #[serde(skip)]
    pub storm_backoff: Backoff,
    /// The same, as text.
    pub storm_backoff_text: String,
    /// The demo server's environment.
    pub server_log_filter: &'static str,
}

fn as_ms<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
}

/// The machine, as printed and written.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// Open-file limit of this process (inherited by the server and generators).
    pub open_files: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<String>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub syn_backlog: Option<String>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<String>,
    /// `net.ipv4.tcp_syncookies`.
    pub syncookies: Option<String>,
    /// `/proc/loadavg` when the report started: other work on the machine skews every figure.
    pub load_at_start: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |name| name.trim().to_owned());
        let memory_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| procfs::parse_mem_total(&t));
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            memory_mib: memory_kib.unwrap_or(0) / 1024,
            kernel: procfs::sysctl("kernel/osrelease").unwrap_or_default(),
            open_files: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|t| procfs::parse_open_files_limit(&t)),
            somaxconn: procfs::sysctl("net/core/somaxconn"),
            syn_backlog: procfs::sysctl("net/ipv4/tcp_max_syn_backlog"),
            port_range: procfs::sysctl("net/ipv4/ip_local_port_range"),
            syncookies: procfs::sysctl("net/ipv4/tcp_syncookies"),
            load_at_start: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned(),
        }
    }
}

/// Everything a section needs.
#[derive(Debug)]
pub struct Run {
    settings: Settings,
    server: procs::ServerProgram,
    /// `bench serve`, for the TLS section whatever `--server` says.
    sdk_server: procs::ServerProgram,
    out_dir: PathBuf,
    ticks_per_second: u64,
}

impl Run {
    /// The flags of a server program.
    fn server_args(&self, server: &procs::ServerProgram) -> Vec<String> {
        let mut args = vec![
            "--interval".into(),
            format!("{}ms", self.settings.interval.as_millis()),
            "--max-missed".into(),
            self.settings.max_missed.to_string(),
        ];
        if server.takes_max_peers {
            // One process's open-file limit is the real bound; let it be.
            args.extend(["--max-peers".into(), "20000".into()]);
        }
        args
    }

    /// The default reconnect policy for the generators' clients: a quick first retry and a
    /// short cap, so that a client that lost a race at start-up comes back fast.
    fn backoff(&self) -> Backoff {
        Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(2), multiplier: 2.0, jitter: 1.0 }
    }
}

/// The whole report, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The settings.
    pub settings: Settings,
    /// Steady state per size.
    pub steady: Vec<steady::Steady>,
    /// Steady state per TLS size on `bench serve`: the plaintext row, then the TLS row.
    pub steady_tls: Vec<steady::Steady>,
    /// Detection latency.
    pub detection: Option<detection::Detection>,
    /// Reconnect storm.
    pub storm: Option<storm::Storm>,
    /// Idle embedded client: with `Client::start`, then with its driver under `smol::block_on`.
    pub embedded: Vec<embedded::Embedded>,
    /// What one loopback TCP send and receive cost on this machine.
    pub floor: Option<floor::Floor>,
    /// Each target of the issue, measured.
    pub targets: Vec<print::TargetCheck>,
    /// Sections that failed, with why.
    pub errors: Vec<String>,
    /// How long the report took, s.
    pub duration_s: f64,
    /// `/proc/loadavg` when the report ended.
    pub load_at_end: String,
}

/// Runs the report.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let began = Instant::now();
    let default_window = if args.quick { Duration::from_secs(10) } else { Duration::from_secs(60) };
    let storm_backoff =
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(5), multiplier: 2.0, jitter: 0.5 };
    let settings = Settings {
        quick: args.quick,
        server: args.server,
        console_limit: args.console_limit,
        interval: args.interval,
        max_missed: args.max_missed,
        window: args.window.unwrap_or(default_window),
        idle_window: args.idle_window.unwrap_or(default_window),
        sizes: args.sizes.clone(),
        tls_sizes: args.tls_sizes.clone(),
        per_generator: args.per_generator,
        ramp_rate: args.ramp_rate,
        tls_ramp_rate: args.tls_ramp_rate.unwrap_or(args.ramp_rate),
        tls_max_connecting: args.tls_max_connecting,
        observers: args.observers,
        detect_clients: args.detect_clients,
        storm_clients: args.storm_clients,
        storm_backoff,
        storm_backoff_text: "initial 500ms, max 5s, multiplier 2, jitter 0.5 (delays 250-500ms, 0.5-1s, ... 2.5-5s)"
            .into(),
        server_log_filter: "RUST_LOG=warn",
    };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out =
        args.out.clone().unwrap_or_else(|| out_dir.join(if args.quick { "report-quick.json" } else { "report.json" }));
    let machine = Machine::read();
    print::header(&machine, &settings);
    let floor = floor::measure(2000).map_err(|error| eprintln!("loopback floor not measured: {error:#}")).ok();
    if let Some(floor) = &floor {
        print::floor(floor);
    }

    let wanted = |section| args.only.is_empty() || args.only.contains(&section);
    let this_binary = std::env::current_exe().context("this binary's path")?;
    let sdk_server = procs::ServerProgram {
        program: this_binary,
        prefix: vec!["serve".to_owned()],
        kind: ServerKind::Sdk,
        prints_lists: false,
        takes_max_peers: true,
    };
    let server = match args.server {
        ServerKind::Sdk => sdk_server.clone(),
        // Only the TLS section runs: no need to build the demo server.
        ServerKind::Demo if args.only == [Section::SteadyTls] => sdk_server.clone(),
        ServerKind::Demo => {
            let program = procs::build_demo_server()?;
            let takes_max_peers = procs::ServerProgram::help_mentions(&program, &[], "--max-peers");
            if !takes_max_peers {
                eprintln!("note: the server has no --max-peers flag: it holds the SDK's default maximum of peers");
            }
            procs::ServerProgram {
                program,
                prefix: Vec::new(),
                kind: ServerKind::Demo,
                prints_lists: true,
                takes_max_peers,
            }
        }
    };
    let run = Run { settings, server, sdk_server, out_dir, ticks_per_second: procfs::clock_ticks_per_second() };
    let mut errors = Vec::new();
    let mut report_error = |what: String, error: anyhow::Error| {
        eprintln!("{what} failed: {error:#}");
        errors.push(format!("{what}: {error:#}"));
    };

    let mut steady = Vec::new();
    if wanted(Section::Steady) {
        for &clients in &run.settings.sizes {
            eprintln!("steady state: {clients} clients ...");
            match steady::run(&run, &run.server, clients, Transport::Plaintext, Ramp::rate(run.settings.ramp_rate)) {
                Ok(result) => {
                    print::steady_row_progress(&result);
                    steady.push(result);
                }
                Err(error) => report_error(format!("steady state at {clients}"), error),
            }
        }
    }
    let mut steady_tls = Vec::new();
    if wanted(Section::SteadyTls) {
        for &clients in &run.settings.tls_sizes {
            for transport in [Transport::Plaintext, Transport::Tls] {
                eprintln!("steady state on bench serve: {clients} clients over {} ...", transport.word());
                let ramp = Ramp { rate: run.settings.tls_ramp_rate, max_connecting: run.settings.tls_max_connecting };
                match steady::run(&run, &run.sdk_server, clients, transport, ramp) {
                    Ok(result) => {
                        print::steady_row_progress(&result);
                        steady_tls.push(result);
                    }
                    Err(error) => report_error(format!("steady state over {} at {clients}", transport.word()), error),
                }
            }
        }
    }
    let detection = if wanted(Section::Detection) {
        eprintln!("detection: {} clients ...", run.settings.detect_clients);
        detection::run(&run, run.settings.detect_clients).map_err(|e| report_error("detection".into(), e)).ok()
    } else {
        None
    };
    let storm = if wanted(Section::Storm) {
        eprintln!("reconnect storm: {} clients ...", run.settings.storm_clients);
        storm::run(&run, run.settings.storm_clients).map_err(|e| report_error("reconnect storm".into(), e)).ok()
    } else {
        None
    };
    let mut embedded = Vec::new();
    if wanted(Section::Embedded) {
        for driver in ["start", "block-on"] {
            eprintln!("embedded client ({driver}): {:?} ...", run.settings.idle_window);
            match embedded::run(&run, run.settings.idle_window, driver) {
                Ok(result) => embedded.push(result),
                Err(error) => report_error(format!("embedded client ({driver})"), error),
            }
        }
    }

    let targets =
        print::targets(&run.settings, &steady, &steady_tls, detection.as_ref(), storm.as_ref(), embedded.first());
    let report = Report {
        machine,
        settings: run.settings,
        steady,
        steady_tls,
        detection,
        storm,
        embedded,
        floor,
        targets,
        errors,
        duration_s: began.elapsed().as_secs_f64(),
        load_at_end: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned(),
    };
    print::tables(&report);
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report)?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
