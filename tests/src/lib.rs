//! The harness of pulsewire's end-to-end tests: build and run the real binaries, speak to them
//! over real sockets, and wait for what they report, always with a deadline.

pub mod crowd;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::StreamExt;
use pulsewire::{Event, Events};
use pulsewire_testkit::{is_listening, listening_addr, server_command, Profile};

pub use pulsewire_testkit::{Line, Process};

/// Builds a binary of the workspace (once per test process) and returns its path. Built with
/// cargo through escargot, in the same profile as the tests, never taken from a stale path.
fn built(slot: &'static OnceLock<PathBuf>, build: fn() -> anyhow::Result<PathBuf>) -> PathBuf {
    slot.get_or_init(|| build().expect("cargo builds the binary")).clone()
}

/// The `demo-server` binary.
pub fn demo_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    built(&BIN, || pulsewire_testkit::build_demo_server(Profile::Current))
}

/// The SDK's example client binary.
pub fn client_example_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    built(&BIN, || {
        pulsewire_testkit::build(escargot::CargoBuild::new().package("pulsewire").example("client"), Profile::Current)
    })
}

/// A running `demo-server --json`.
#[derive(Debug)]
pub struct DemoServer {
    /// The process.
    pub process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DemoServer {
    /// Starts the demo server on `listen` with extra arguments, and waits until it listens.
    pub fn start(listen: &str, args: &[&str]) -> anyhow::Result<DemoServer> {
        DemoServer::start_logging(listen, args, None)
    }

    /// Like [`DemoServer::start`], with its logs filtered by `RUST_LOG=<filter>` (`"error"`
    /// keeps a test that makes a thousand bad connections readable).
    pub fn start_logging(listen: &str, args: &[&str], filter: Option<&str>) -> anyhow::Result<DemoServer> {
        let mut command = server_command(&demo_server_bin(), &[], listen, args);
        if let Some(filter) = filter {
            command.env("RUST_LOG", filter);
        }
        let mut process = Process::spawn(command)?;
        let line = process.wait_for(Duration::from_secs(30), |line| is_listening(&line.json))?;
        let addr = listening_addr(&line.json)?;
        Ok(DemoServer { process, addr })
    }

    /// The ids in the most recent `online_list` line read so far.
    pub fn last_online_list(&self) -> Option<Vec<String>> {
        let line = self.process.seen.iter().rev().find(|line| line.event() == "online_list")?;
        let peers = line.json["peers"].as_array()?;
        Some(peers.iter().filter_map(|peer| peer["id"].as_str().map(str::to_owned)).collect())
    }
}

/// Starts the example client process against `server` as `id`, printing JSON events.
pub fn start_client_process(server: SocketAddr, id: &str) -> anyhow::Result<Process> {
    let mut command = Command::new(client_example_bin());
    command.args(["--json", "--server", &server.to_string(), "--id", id, "--max-delay-ms", "200"]);
    Process::spawn(command)
}

/// Runs `task` for at most `limit`.
pub async fn within<T>(limit: Duration, task: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(task.await) }, async {
        smol::Timer::after(limit).await;
        None
    })
    .await
}

/// Waits up to `limit` for a client event matching `pred`; returns it with when it came, and
/// every event before it.
pub async fn next_event(
    events: &mut Events,
    limit: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> anyhow::Result<(Event, Instant, Vec<Event>)> {
    let mut before = Vec::new();
    let found = within(limit, async {
        while let Some(event) = events.next().await {
            if pred(&event) {
                return Some((event, Instant::now()));
            }
            before.push(event);
        }
        None
    })
    .await;
    match found {
        Some(Some((event, at))) => Ok((event, at, before)),
        Some(None) => bail!("event stream ended; events seen: {before:#?}"),
        None => bail!("no matching event within {limit:?}; events seen: {before:#?}"),
    }
}

/// Waits up to `limit` for an item of `stream` matching `pred` (a server's events, say);
/// returns it with when it came, and every item before it.
pub async fn next_in<S>(
    stream: &mut S,
    limit: Duration,
    mut pred: impl FnMut(&S::Item) -> bool,
) -> anyhow::Result<(S::Item, Instant, Vec<S::Item>)>
where
    S: futures::Stream + Unpin,
    S::Item: std::fmt::Debug,
{
    let mut before = Vec::new();
    let found = within(limit, async {
        while let Some(item) = stream.next().await {
            if pred(&item) {
                return Some((item, Instant::now()));
            }
            before.push(item);
        }
        None
    })
    .await;
    match found {
        Some(Some((item, at))) => Ok((item, at, before)),
        Some(None) => bail!("stream ended; items seen: {before:#?}"),
        None => bail!("no matching item within {limit:?}; items seen: {before:#?}"),
    }
}

/// A raw protocol peer for speaking (and misspeaking) the protocol by hand.
#[derive(Debug)]
pub struct RawPeer {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawPeer {
    /// Connects.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<RawPeer> {
        RawPeer::wrap(TcpStream::connect(addr)?)
    }

    /// Connects from the loopback address `source` (any of 127.0.0.0/8), to tell peers apart by
    /// address on one machine.
    pub fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> anyhow::Result<RawPeer> {
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        let SocketAddr::V4(addr) = addr else { bail!("{addr} is not an IPv4 address") };
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(source, 0)))?;
        connect(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
        RawPeer::wrap(TcpStream::from(fd))
    }

    fn wrap(stream: TcpStream) -> anyhow::Result<RawPeer> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(RawPeer { stream, reader })
    }

    /// Sets how long a read may wait (10 s unless changed).
    pub fn set_read_timeout(&self, limit: Duration) -> anyhow::Result<()> {
        self.stream.set_read_timeout(Some(limit))?;
        Ok(())
    }

    /// Connects and completes the handshake as `id`; returns the `WELCOME` line.
    pub fn hello(addr: SocketAddr, id: &str) -> anyhow::Result<(RawPeer, String)> {
        let mut peer = RawPeer::connect(addr)?;
        peer.send(format!("HELLO 1 {id}\n").as_bytes())?;
        let welcome = peer.line()?;
        if !welcome.starts_with("WELCOME ") {
            bail!("expected WELCOME, got {welcome:?}");
        }
        Ok((peer, welcome))
    }

    /// Another handle on the same socket, to write from a thread of its own while this one
    /// reads.
    pub fn try_clone_stream(&self) -> anyhow::Result<TcpStream> {
        Ok(self.stream.try_clone()?)
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one line (without its newline); an error at end of stream.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end().to_owned())
    }

    /// Reads lines until one that does not start with `PULSE` (answering none of them).
    pub fn line_skipping_pulses(&mut self) -> anyhow::Result<String> {
        loop {
            let line = self.line()?;
            if !line.starts_with("PULSE ") {
                return Ok(line);
            }
        }
    }

    /// Whether the server closed the connection (reads to the end, discarding).
    pub fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// The counts of the `Missed` events among `events`, in order: a loss declared by the miss
/// counter is preceded by `[.., 1, 2, …, max_missed - 1]`.
pub fn missed_counts(events: &[Event]) -> Vec<u32> {
    events.iter().filter_map(|e| if let Event::Missed { count, .. } = e { Some(*count) } else { None }).collect()
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(0)
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).ok_or_else(|| anyhow!("no VmRSS"))?;
    let kib = line.split_whitespace().nth(1).ok_or_else(|| anyhow!("bad VmRSS line {line:?}"))?;
    Ok(kib.parse()?)
}

/// Reports a test that cannot run here as skipped, on the terminal even when cargo captures the
/// test's output (`SKIPPED: <test>: <why>`), and returns `Ok` for the test to return at once.
/// With `PULSEWIRE_REQUIRE_NETNS=1` in the environment (CI sets it) the missing capability is
/// an error instead, so that a machine that should run the test never passes it silently.
pub fn skip(test: &str, why: anyhow::Error) -> anyhow::Result<()> {
    if std::env::var_os("PULSEWIRE_REQUIRE_NETNS").is_some_and(|v| v != "0") {
        return Err(why.context(format!("{test} cannot run, and PULSEWIRE_REQUIRE_NETNS is set")));
    }
    // Straight to the file descriptor: `eprintln!` would be captured and shown only on failure.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why:#}");
    Ok(())
}

/// Polls `probe` every 10 ms until it returns `Some`, for at most `limit`. For counters that
/// have no event to wait on (task counts, `/proc`); everything else waits on events.
pub fn poll_until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // A bounded poll of a counter: no event exists to wait on.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The least, the median and the greatest of some durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// The least.
    pub min: Duration,
    /// The median.
    pub median: Duration,
    /// The greatest.
    pub max: Duration,
}

impl Spread {
    /// The spread of `durations`; `None` when there are none.
    pub fn of(durations: &[Duration]) -> Option<Spread> {
        let mut sorted = durations.to_vec();
        sorted.sort();
        Some(Spread { min: *sorted.first()?, median: sorted[sorted.len() / 2], max: *sorted.last()? })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "min {:?} / median {:?} / max {:?}", self.min, self.median, self.max)
    }
}

/// The most of `times` that fall within any one window of `width`.
pub fn most_in_one_window(times: &[Duration], width: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= width {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_is_found() {
        let ms = |v: &[u64]| v.iter().map(|&n| Duration::from_millis(n)).collect::<Vec<_>>();
        assert_eq!(most_in_one_window(&ms(&[]), Duration::from_millis(10)), 0);
        assert_eq!(most_in_one_window(&ms(&[5, 5, 5]), Duration::from_millis(10)), 3);
        assert_eq!(most_in_one_window(&ms(&[0, 10, 20]), Duration::from_millis(10)), 1);
        assert_eq!(most_in_one_window(&ms(&[30, 0, 9, 31, 39, 12]), Duration::from_millis(10)), 3);
    }

    #[test]
    fn spread_reads_min_median_and_max() {
        let spread = Spread::of(&[3, 1, 2].map(Duration::from_secs)).unwrap();
        assert_eq!(
            (spread.min, spread.median, spread.max),
            (Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3))
        );
        assert_eq!(Spread::of(&[]), None);
    }
}
