//! Child processes: killed and reaped whatever happens, and read line by line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(i32::try_from(pid)?), signal).with_context(|| format!("{signal} to {pid}"))
}

/// A child process that is killed (after a `SIGCONT`, should it be stopped) and reaped when it
/// is dropped, so that a test or a report that fails halfway leaves nothing running.
#[derive(Debug)]
pub struct Reaped(Child);

impl Reaped {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Reaped {
        Reaped(child)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The child, to take its standard streams.
    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal(self.pid(), sig)
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("process {} still running after {limit:?}", self.pid());
            }
            // Polling a child's exit status has no event to wait on here; 10 ms steps, bounded.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap. A process already reaped is left alone: its pid may belong to another
    /// process by now.
    pub fn kill(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line a child process printed, with the moment it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// The parsed JSON object.
    pub json: Value,
    /// When it was read.
    pub at: Instant,
}

impl Line {
    /// The `event` field.
    pub fn event(&self) -> &str {
        self.json["event"].as_str().unwrap_or("")
    }

    /// A string field.
    pub fn str(&self, key: &str) -> &str {
        self.json[key].as_str().unwrap_or("")
    }
}

/// A child process that prints one JSON object per line, read on a thread of its own; killed
/// and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    /// Declared before `stdin`: the process is killed before its input closes.
    child: Reaped,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Line>,
    /// Everything read so far, for assertions on history.
    pub seen: Vec<Line>,
}

impl Process {
    /// Starts `command` with its stdin and stdout piped (stderr goes to ours).
    pub fn spawn(mut command: Command) -> anyhow::Result<Process> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = Reaped::new(command.spawn().with_context(|| format!("starting {command:?}"))?);
        let stdout = child.child().stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.child().stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                match serde_json::from_str(&line) {
                    Ok(json) => {
                        if tx.send(Line { json, at }).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[child stdout, not json] {line}"),
                }
            }
        });
        Ok(Process { child, stdin, lines, seen: Vec::new() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits up to `limit` for a line matching `pred` (lines before it are kept in `seen`).
    pub fn wait_for(&mut self, limit: Duration, mut pred: impl FnMut(&Line) -> bool) -> anyhow::Result<Line> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                let tail: Vec<_> = self.seen.iter().rev().take(8).map(|l| l.json.to_string()).collect();
                anyhow!("no matching line within {limit:?}; last lines (newest first): {tail:#?}")
            })?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// Like [`Process::wait_for`], but first looks among the lines already read: for an event
    /// whose order against the one waited for before is not fixed (a delivery may come before
    /// or after the echo that was waited for).
    pub fn seen_or_wait_for(&mut self, limit: Duration, mut pred: impl FnMut(&Line) -> bool) -> anyhow::Result<Line> {
        match self.seen.iter().find(|line| pred(line)) {
            Some(line) => Ok(line.clone()),
            None => self.wait_for(limit, pred),
        }
    }

    /// Waits for the event named `event` whose `peer` field is `peer`.
    pub fn wait_event(&mut self, limit: Duration, event: &str, peer: &str) -> anyhow::Result<Line> {
        self.wait_for(limit, |line| line.event() == event && line.str("peer") == peer)
    }

    /// Writes a line to the process's stdin.
    pub fn type_line(&mut self, text: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.child.signal(signal)
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        self.child.wait_exit(limit)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
