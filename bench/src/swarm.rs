//! The load generator: one process running many real SDK clients.
//!
//! Each client is a [`pulsewire::Client`] whose [`pulsewire::Driver`] runs on this process's
//! smol executor, next to a task that reads its events and stamps them. The process reports
//! on stdout, one JSON object per line:
//!
//! - `{"event":"status","at":NS,"online":K,"started":S}` every `--status-every`;
//! - `{"event":"dumped","path":P}` once a `dump` command is done.
//!
//! and takes commands on stdin, one per line:
//!
//! - `dump PATH FROM TO`: writes the [`Records`] of the window `[FROM, TO]` (ns) to `PATH`.
//!
//! End of stdin ends the process, so a generator never outlives its report.
//!
//! With `--tls --ca FILE` every client connects over TLS and trusts the CA in `FILE` (all share
//! one [`ClientTls`]); `--server-name` is the name they check the certificate against when it
//! is not the host they connect to.
//!
//! The first failed connect of each kind is described on stderr, with the SDK's words for it.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt;
use pulsewire::tls::ClientTls;
use pulsewire::{Client, ClientConfig, ConnectError, DisconnectReason, Event, Events, Failure};
use serde_json::json;

use crate::clock::now_ns;
use crate::records::{self, Records};

/// The generator's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// The server, `host:port`; use a different 127.0.0.x per generator for distinct 4-tuples.
    #[arg(long)]
    pub server: String,
    /// How many clients to run.
    #[arg(long)]
    pub count: u32,
    /// Client ids are this prefix followed by the client's number.
    #[arg(long)]
    pub prefix: String,
    /// Clients started per second (the ramp); 0 starts them all at once.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// The most clients started but not online at once during the ramp (0: no limit): the
    /// ramp waits for handshakes to finish rather than pile them up in the server's queues.
    #[arg(long, default_value_t = 0)]
    pub max_connecting: usize,
    /// Executor threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Reconnect: base delay of the first retry.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub initial_delay: Duration,
    /// Reconnect: the largest delay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_delay: Duration,
    /// Reconnect: growth per attempt.
    #[arg(long, default_value_t = 2.0)]
    pub multiplier: f64,
    /// Reconnect: the randomised fraction of each delay.
    #[arg(long, default_value_t = 1.0)]
    pub jitter: f64,
    /// How often to print the status line.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub status_every: Duration,
    /// Connect over TLS (see `--ca`).
    #[arg(long, requires = "ca")]
    pub tls: bool,
    /// The certificate authority to trust (PEM), with `--tls`.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, with `--tls` [default: the server's host].
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

/// What every client task shares: counters and the records.
#[derive(Debug, Default)]
struct Recorder {
    online: AtomicUsize,
    started: AtomicUsize,
    records: Mutex<Records>,
    /// The kinds of connect failure already described on stderr (the first of each is).
    described: Mutex<std::collections::BTreeSet<&'static str>>,
}

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        f(&mut self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Runs the generator until stdin closes.
pub fn run(args: SwarmArgs) -> anyhow::Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let tls = match &args.ca {
        Some(ca) if args.tls => {
            let tls = ClientTls::ca_file(ca).with_context(|| format!("the CA in {}", ca.display()))?;
            Some(match &args.server_name {
                Some(name) => tls.server_name(name.clone()),
                None => tls,
            })
        }
        _ => None,
    };
    let configs = (0..args.count)
        .map(|n| {
            let builder = ClientConfig::builder(args.server.clone(), format!("{}{n}", args.prefix))
                .initial_delay(args.initial_delay)
                .max_delay(args.max_delay)
                .multiplier(args.multiplier)
                .jitter(args.jitter);
            match &tls {
                Some(tls) => builder.tls(tls.clone()),
                None => builder,
            }
            .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .context("client configuration")?;
    let recorder = Arc::new(Recorder::default());
    recorder.with(|records| records.clients = args.count);
    let executor = Arc::new(smol::Executor::<'static>::new());
    for n in 0..args.threads {
        let executor = executor.clone();
        thread::Builder::new()
            .name(format!("swarm-{n}"))
            .spawn(move || smol::block_on(executor.run(futures::future::pending::<()>())))
            .context("starting an executor thread")?;
    }
    {
        let (executor, recorder) = (executor.clone(), recorder.clone());
        let (rate, max_connecting) = (args.rate, args.max_connecting);
        thread::Builder::new()
            .name("ramp".into())
            .spawn(move || ramp(configs, rate, max_connecting, &executor, &recorder))?;
    }
    {
        let (recorder, every) = (recorder.clone(), args.status_every);
        thread::Builder::new().name("status".into()).spawn(move || report_status(&recorder, every))?;
    }
    let stdin = io::stdin().lock();
    for line in stdin.lines() {
        let line = line.context("reading a command")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["dump", path, from, to] => {
                let (from, to) = (from.parse()?, to.parse()?);
                let records = recorder.with(|records| records.window(from, to));
                let file = std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
                serde_json::to_writer(io::BufWriter::new(file), &records)?;
                say(&json!({"event": "dumped", "path": path}));
            }
            [] => {}
            _ => eprintln!("swarm: unknown command {line:?}"),
        }
    }
    // The report is gone or done: stop at once (the kernel closes every socket).
    Ok(())
}

/// Starts the clients at `rate` per second, with at most `max_connecting` (unless 0) started
/// and not online at a time.
fn ramp(
    configs: Vec<ClientConfig>,
    rate: f64,
    max_connecting: usize,
    executor: &smol::Executor<'static>,
    recorder: &Arc<Recorder>,
) {
    let start = std::time::Instant::now();
    for (n, config) in configs.into_iter().enumerate() {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        while max_connecting > 0 && n.saturating_sub(recorder.online.load(Ordering::Relaxed)) >= max_connecting {
            thread::sleep(Duration::from_millis(1));
        }
        let (client, events, driver) = Client::new(config);
        let shared = recorder.clone();
        let client_number = u32::try_from(n).unwrap_or(u32::MAX);
        executor
            .spawn(async move {
                // The handle must live as long as the driver: dropping the last one closes it.
                let _client = client;
                futures::join!(driver, watch(client_number, events, &shared));
            })
            .detach();
        recorder.started.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one client's events and records them.
async fn watch(client: u32, mut events: Events, recorder: &Recorder) {
    let mut online = false;
    let mut last_pulse = 0;
    while let Some(event) = events.next().await {
        let at = now_ns();
        match event {
            Event::Connected { .. } => {
                online = true;
                recorder.online.fetch_add(1, Ordering::Relaxed);
                recorder.with(|records| records.connects.push((client, at)));
            }
            Event::Pulse { .. } => {
                last_pulse = at;
                recorder.with(|records| records.pulses.push((client, at)));
            }
            Event::Disconnected { reason } => {
                if std::mem::take(&mut online) {
                    recorder.online.fetch_sub(1, Ordering::Relaxed);
                }
                let reason = disconnect_word(&reason).to_owned();
                let disconnect = records::Disconnect { client, at, last_pulse, reason };
                recorder.with(|records| records.disconnects.push(disconnect));
            }
            Event::BackingOff { last_error: Some(Failure::Connect(error)), .. } => {
                let kind = failure_word(&error);
                if recorder.described.lock().unwrap_or_else(PoisonError::into_inner).insert(kind) {
                    eprintln!("swarm: first failed connect of kind {kind}: {error}");
                }
                let failure = records::Failure { client, at, kind: kind.to_owned() };
                recorder.with(|records| records.failures.push(failure));
            }
            Event::Closed { .. } => break,
            _ => {}
        }
    }
}

fn report_status(recorder: &Recorder, every: Duration) {
    loop {
        let online = recorder.online.load(Ordering::Relaxed);
        let started = recorder.started.load(Ordering::Relaxed);
        say(&json!({"event": "status", "at": now_ns(), "online": online, "started": started}));
        thread::sleep(every);
    }
}

/// Prints one JSON line on stdout; a closed stdout means the report is gone, so exit.
fn say(value: &serde_json::Value) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The word for why a connection ended, as recorded.
pub fn disconnect_word(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::PulseTimeout { .. } => "pulse-timeout",
        DisconnectReason::ServerGoodbye { .. } => "goodbye",
        DisconnectReason::ServerError { .. } => "server-error",
        DisconnectReason::Eof => "eof",
        DisconnectReason::Reset => "reset",
        DisconnectReason::Io(_) => "io",
        DisconnectReason::Protocol(_) => "protocol",
        DisconnectReason::ClosedByApplication => "closed",
        _ => "other",
    }
}

/// The word for why a connect attempt failed, as recorded.
pub fn failure_word(error: &ConnectError) -> &'static str {
    match error {
        ConnectError::Io(error) if error.kind == io::ErrorKind::ConnectionRefused => "refused",
        ConnectError::Io(_) => "io",
        ConnectError::ConnectTimeout(_) => "connect-timeout",
        ConnectError::HandshakeTimeout(_) => "handshake-timeout",
        ConnectError::Eof => "eof",
        ConnectError::Rejected { code, .. } if code.as_str() == "full" => "rejected-full",
        ConnectError::Rejected { .. } => "rejected",
        ConnectError::Protocol(_) => "protocol",
        ConnectError::Tls(_) => "tls",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connects_have_their_own_word() {
        let refused = pulsewire::IoError { kind: io::ErrorKind::ConnectionRefused, message: "refused".into() };
        assert_eq!(failure_word(&ConnectError::Io(refused)), "refused");
        let other = pulsewire::IoError { kind: io::ErrorKind::Other, message: "x".into() };
        assert_eq!(failure_word(&ConnectError::Io(other)), "io");
        assert_eq!(disconnect_word(&DisconnectReason::PulseTimeout { missed: 3 }), "pulse-timeout");
    }
}
