//! The processes a report runs: the real `demo-server`, load generators (this binary's
//! `swarm` command) and the embedded client (`embedded`), each read on a thread of its own.
//! Building, starting, signalling, killing and reaping them is `pulsewire-testkit`'s, shared
//! with the end-to-end tests; what is read from them, and when, is the report's.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::Signal;
use pulsewire_testkit::{is_listening, listening_addr, server_command, signal, Profile, Reaped};
use serde_json::Value;

use crate::clock::now_ns;
use crate::records::Records;

/// Builds the `demo-server` binary in release mode with cargo, so the report never runs a
/// stale binary; returns its path.
pub fn build_demo_server() -> anyhow::Result<PathBuf> {
    eprintln!("building demo-server (cargo build --release -p demo-server) ...");
    pulsewire_testkit::build_demo_server(Profile::Release)
}

/// Waits on a shared state until `ready` holds, for `limit` at most.
fn wait_on<T, R>(
    state: &(Mutex<T>, Condvar),
    limit: Duration,
    what: &str,
    mut ready: impl FnMut(&T) -> Option<R>,
) -> anyhow::Result<R> {
    let deadline = Instant::now() + limit;
    let mut guard = lock(&state.0);
    loop {
        if let Some(result) = ready(&guard) {
            return Ok(result);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        guard = state.1.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner).0;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A line the server printed about one peer.
#[derive(Debug, Clone)]
pub struct PeerLine {
    /// When the report read it (monotonic ns).
    pub at: u64,
    /// The peer's id.
    pub peer: String,
    /// For `offline`: the reason word (`timeout`, `eof`, …).
    pub reason: String,
}

/// Everything the server printed so far, condensed.
#[derive(Debug, Default)]
pub struct ServerLog {
    /// When `listening` was read, and the address.
    pub listening: Option<(u64, SocketAddr)>,
    /// `bench serve --tls`: the TLS listener's address and the CA its clients must trust, from
    /// the `listening` line.
    pub tls: Option<TlsTrust>,
    /// Every `online` line.
    pub online: Vec<PeerLine>,
    /// Every peer that left the online list: a `detached` line (a protocol 2 peer whose
    /// connection was lost, its session kept: evicted, say, with reason `timeout`), or an
    /// `offline` line of a peer that was online (not the end of a session kept detached,
    /// whose peer left the list when it detached).
    pub offline: Vec<PeerLine>,
    /// How many `online_list` lines, and their bytes (they are counted, not parsed).
    pub lists: usize,
    /// The bytes of those lines.
    pub list_bytes: u64,
    /// How many peers the last `online_list` line held.
    pub last_list_peers: usize,
    /// When the last line of any kind was read.
    pub last_line_at: u64,
    /// Stdout closed.
    pub closed: bool,
}

/// Which server program a report runs.
#[derive(Debug, Clone)]
pub struct ServerProgram {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the common ones (`serve` for this binary).
    pub prefix: Vec<String>,
    /// Which it is.
    pub kind: super::ServerKind,
    /// Whether it prints the online list after each batch of joins and departures (the demo
    /// server).
    pub prints_lists: bool,
    /// Whether it takes `--max-peers` (the SDK's default maximum is 100 000 peers).
    pub takes_max_peers: bool,
}

impl ServerProgram {
    /// Whether `program [prefix] --help` mentions `flag`.
    pub fn help_mentions(program: &Path, prefix: &[String], flag: &str) -> bool {
        Command::new(program)
            .args(prefix)
            .arg("--help")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(flag))
    }
}

/// A running server printing JSON lines: `demo-server --json` or `bench serve`.
#[derive(Debug)]
pub struct DemoServer {
    /// Killed and reaped on drop, so that a report that fails halfway leaves no server behind.
    child: Reaped,
    /// Kept open: the server broadcasts stdin lines and ends its reader at end of input.
    _stdin: Option<ChildStdin>,
    /// Its process id.
    pub pid: u32,
    /// When it was spawned (monotonic ns).
    pub spawned_at: u64,
    log: Arc<(Mutex<ServerLog>, Condvar)>,
    prints_lists: bool,
}

impl DemoServer {
    /// Starts `PROGRAM --json --listen LISTEN` with `args`, logs (stderr) to `stderr_log`, and
    /// returns at once; see [`DemoServer::wait_listening`].
    pub fn spawn(
        server: &ServerProgram,
        listen: &str,
        args: &[String],
        stderr_log: &Path,
    ) -> anyhow::Result<DemoServer> {
        let stderr = std::fs::File::create(stderr_log).with_context(|| format!("creating {}", stderr_log.display()))?;
        let bin = &server.program;
        let mut command = server_command(bin, &server.prefix, listen, args);
        command
            // Per-peer `info` logs would cost the server a formatted stderr line per join.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let spawned_at = now_ns();
        let mut child = Reaped::new(command.spawn().with_context(|| format!("starting {}", bin.display()))?);
        let stdout = child.child().stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let log: Arc<(Mutex<ServerLog>, Condvar)> = Arc::default();
        let reader_log = log.clone();
        thread::Builder::new().name("server-stdout".into()).spawn(move || read_server(stdout, &reader_log))?;
        let prints_lists = server.prints_lists;
        Ok(DemoServer { pid: child.pid(), _stdin: child.child().stdin.take(), child, spawned_at, log, prints_lists })
    }

    /// The TLS listener and its CA, once the server printed `listening` (`bench serve --tls`).
    pub fn tls(&self) -> Option<TlsTrust> {
        self.log(|log| log.tls.clone())
    }

    /// Waits until the server printed `listening`; returns when it was read, and the address.
    pub fn wait_listening(&self, limit: Duration) -> anyhow::Result<(u64, SocketAddr)> {
        wait_on(&self.log, limit, "the server's listening line", |log| {
            if log.closed && log.listening.is_none() {
                return Some(Err(anyhow!("the server exited before listening")));
            }
            log.listening.map(Ok)
        })?
    }

    /// Waits until the server printed `online` for `peers` peers in all and, for the demo
    /// server, an online list that holds every peer online by then (it prints one per batch of
    /// events): its console has caught up with the joins.
    pub fn wait_caught_up(&self, peers: usize, limit: Duration) -> anyhow::Result<()> {
        let lists = self.prints_lists;
        let waited = wait_on(&self.log, limit, "the server's console to print every join", |log| {
            let online_now = log.online.len().saturating_sub(log.offline.len());
            let printed = !lists || (log.lists > 0 && log.last_list_peers == online_now);
            (log.online.len() >= peers && printed).then_some(())
        });
        waited.map_err(|error| {
            let (online, lists, bytes) = self.log(|log| (log.online.len(), log.lists, log.list_bytes));
            anyhow!(
                "{error}: the server printed {online} of {peers} joins and {lists} online lists ({:.0} MB); \
                 the demo server prints the whole online list after each batch of events \
                 (see docs/benchmarks.md; `--server sdk` measures the engine without that console)",
                bytes as f64 / 1e6
            )
        })
    }

    /// Reads the log.
    pub fn log<R>(&self, f: impl FnOnce(&ServerLog) -> R) -> R {
        f(&lock(&self.log.0))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal(self.pid, sig)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// The TLS listener and its CA, as `bench serve --tls` names them in its `listening` line.
fn tls_trust(line: &Value) -> Option<TlsTrust> {
    let addr = line["tls_addr"].as_str()?.parse().ok()?;
    let ca = PathBuf::from(line["ca"].as_str()?);
    Some(TlsTrust { addr, ca, server_name: crate::serve::TLS_NAMES[1].to_owned() })
}

fn read_server(stdout: impl std::io::Read, log: &(Mutex<ServerLog>, Condvar)) {
    // Online lists grow with the peers (about 150 bytes each): read them as bytes and count
    // them without parsing.
    const LIST_PREFIX: &[u8] = b"{\"event\":\"online_list\"";
    // Each peer of a list is an object that starts with its id.
    const PEER_KEY: &[u8] = b"{\"id\":";
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let at = now_ns();
        let mut guard = lock(&log.0);
        guard.last_line_at = at;
        if line.starts_with(LIST_PREFIX) {
            guard.lists += 1;
            guard.list_bytes += line.len() as u64;
            guard.last_list_peers = line.windows(PEER_KEY.len()).filter(|window| *window == PEER_KEY).count();
            drop(guard);
            log.1.notify_all();
            continue;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
        if is_listening(&value) {
            guard.listening = listening_addr(&value).ok().map(|addr| (at, addr));
            guard.tls = tls_trust(&value);
        }
        let text = |key: &str| value[key].as_str().unwrap_or("").to_owned();
        match value["event"].as_str() {
            Some("online") => guard.online.push(PeerLine { at, peer: text("peer"), reason: String::new() }),
            Some("offline") if value["was_detached"].as_bool() == Some(true) => {}
            Some("offline" | "detached") => {
                guard.offline.push(PeerLine { at, peer: text("peer"), reason: text("reason") });
            }
            _ => {}
        }
        drop(guard);
        log.1.notify_all();
    }
    lock(&log.0).closed = true;
    log.1.notify_all();
}

/// The last status a generator printed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GeneratorStatus {
    /// Clients online.
    pub online: usize,
    /// Clients started.
    pub started: usize,
    /// Stdout closed.
    pub closed: bool,
}

#[derive(Debug, Default)]
struct GeneratorState {
    status: GeneratorStatus,
    dumped: Vec<String>,
}

/// How a generator's clients reconnect.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Base delay of the first retry.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Randomised fraction.
    pub jitter: f64,
}

/// How fast a generator starts its clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// Clients started per second.
    pub rate: f64,
    /// The most clients started and not yet online at a time (0: no limit).
    pub max_connecting: u32,
}

impl Ramp {
    /// `rate` clients per second, however many are still connecting.
    pub fn rate(rate: f64) -> Ramp {
        Ramp { rate, max_connecting: 0 }
    }
}

/// How a generator's clients reach a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTrust {
    /// The TLS listener (its port; each generator connects to its own 127.0.0.x).
    pub addr: SocketAddr,
    /// The CA certificate to trust, PEM.
    pub ca: PathBuf,
    /// The name the certificate carries (the generators connect to other addresses than it).
    pub server_name: String,
}

/// A running load generator process.
#[derive(Debug)]
pub struct Generator {
    /// Killed and reaped on drop.
    _child: Reaped,
    stdin: ChildStdin,
    /// Its process id.
    pub pid: u32,
    state: Arc<(Mutex<GeneratorState>, Condvar)>,
}

impl Generator {
    /// Starts `clients` SDK clients in a new process of this binary, connecting to `server`
    /// as fast as `ramp` lets them, over TLS when `tls` is given.
    pub fn spawn(
        server: SocketAddr,
        clients: u32,
        prefix: &str,
        ramp: Ramp,
        backoff: Backoff,
        tls: Option<&TlsTrust>,
    ) -> anyhow::Result<Generator> {
        let exe = std::env::current_exe().context("this binary's path")?;
        let mut command = Command::new(exe);
        command
            .arg("swarm")
            .args(["--server", &server.to_string(), "--count", &clients.to_string(), "--prefix", prefix])
            .args(["--rate", &ramp.rate.to_string(), "--max-connecting", &ramp.max_connecting.to_string()])
            .args(["--initial-delay", &format!("{}ms", backoff.initial.as_millis())])
            .args(["--max-delay", &format!("{}ms", backoff.max.as_millis())])
            .args(["--multiplier", &backoff.multiplier.to_string(), "--jitter", &backoff.jitter.to_string()]);
        if let Some(tls) = tls {
            command.arg("--tls").arg("--ca").arg(&tls.ca).args(["--server-name", &tls.server_name]);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = Reaped::new(command.spawn().context("starting a generator")?);
        let stdout = child.child().stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.child().stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let state: Arc<(Mutex<GeneratorState>, Condvar)> = Arc::default();
        let reader_state = state.clone();
        thread::Builder::new().name("generator-stdout".into()).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
                let mut guard = lock(&reader_state.0);
                match value["event"].as_str() {
                    Some("status") => {
                        guard.status.online = value["online"].as_u64().unwrap_or(0) as usize;
                        guard.status.started = value["started"].as_u64().unwrap_or(0) as usize;
                    }
                    Some("dumped") => guard.dumped.push(value["path"].as_str().unwrap_or("").to_owned()),
                    _ => {}
                }
                drop(guard);
                reader_state.1.notify_all();
            }
            lock(&reader_state.0).status.closed = true;
            reader_state.1.notify_all();
        })?;
        Ok(Generator { pid: child.pid(), _child: child, stdin, state })
    }

    /// The last status it printed.
    pub fn status(&self) -> GeneratorStatus {
        lock(&self.state.0).status
    }

    /// Asks for its records of `[from, to]` and reads them from `path`.
    pub fn dump(&mut self, path: &Path, from: u64, to: u64) -> anyhow::Result<Records> {
        let path_text = path.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?.to_owned();
        writeln!(self.stdin, "dump {path_text} {from} {to}")?;
        self.stdin.flush()?;
        wait_on(&self.state, Duration::from_secs(120), "a generator's dump", |state| {
            state.dumped.contains(&path_text).then_some(())
        })?;
        let file = std::fs::File::open(path)?;
        let records = serde_json::from_reader(std::io::BufReader::new(file)).context("reading a dump")?;
        // The dumps are large and only needed once.
        let _ = std::fs::remove_file(path);
        Ok(records)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal(self.pid, sig)
    }
}

/// Waits until the generators together have `online` clients online.
pub fn wait_online(generators: &[Generator], online: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let statuses: Vec<GeneratorStatus> = generators.iter().map(Generator::status).collect();
        let now_online: usize = statuses.iter().map(|s| s.online).sum();
        if now_online >= online {
            return Ok(());
        }
        if statuses.iter().any(|s| s.closed) {
            bail!("a generator exited ({now_online} of {online} clients online)");
        }
        if Instant::now() >= deadline {
            bail!("only {now_online} of {online} clients online after {limit:?}");
        }
        // Status lines come every 100 ms; polling them at that pace costs nothing measurable.
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_log_counts_joins_and_the_peers_of_the_last_online_list() {
        let out = concat!(
            "{\"event\":\"listening\",\"addr\":\"127.0.0.1:7000\"}\n",
            "{\"event\":\"online\",\"peer\":\"a\"}\n",
            "{\"event\":\"online\",\"peer\":\"b\"}\n",
            "{\"event\":\"online_list\",\"peers\":[{\"id\":\"a\",\"misses\":0}]}\n",
            "{\"event\":\"online_list\",\"peers\":[{\"id\":\"a\",\"misses\":0},{\"id\":\"b\",\"misses\":0}]}\n",
            "{\"event\":\"offline\",\"peer\":\"a\",\"reason\":\"timeout\"}\n",
            // A protocol 2 peer evicted with its session kept leaves the list once: when it
            // detaches, not again when its kept session ends.
            "{\"event\":\"detached\",\"peer\":\"b\",\"reason\":\"timeout\"}\n",
            "{\"event\":\"offline\",\"peer\":\"b\",\"reason\":\"timeout\",\"was_detached\":true}\n",
        );
        let log: (Mutex<ServerLog>, Condvar) = Default::default();
        read_server(out.as_bytes(), &log);
        let log = lock(&log.0);
        assert_eq!((log.online.len(), log.offline.len(), log.lists, log.last_list_peers), (2, 2, 2, 2));
        assert_eq!(log.offline[0].reason, "timeout");
        assert_eq!((log.offline[1].peer.as_str(), log.offline[1].reason.as_str()), ("b", "timeout"));
        assert!(log.closed);
        assert_eq!(log.tls, None);
    }

    #[test]
    fn a_tls_listening_line_names_the_listener_and_its_ca() {
        let out = "{\"event\":\"listening\",\"addr\":\"0.0.0.0:7000\",\"tls_addr\":\"0.0.0.0:7001\",\"ca\":\"/tmp/ca.pem\"}\n";
        let log: (Mutex<ServerLog>, Condvar) = Default::default();
        read_server(out.as_bytes(), &log);
        let log = lock(&log.0);
        assert_eq!(log.listening.map(|(_, addr)| addr.port()), Some(7000));
        let tls = log.tls.clone().expect("a TLS listener");
        assert_eq!(
            (tls.addr.port(), tls.ca.to_str(), tls.server_name.as_str()),
            (7001, Some("/tmp/ca.pem"), "localhost")
        );
    }
}
