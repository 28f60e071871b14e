//! Real network faults: a network namespace of the test's own, whose loopback carries the
//! connection under test, and `iptables` rules that cut it silently (`DROP`: no FIN, no RST,
//! a half-open connection) or loudly (`REJECT --reject-with tcp-reset`).
//!
//! Only the namespace's own loopback is used: no address outside `127.0.0.0/8` is ever a
//! target. Needs root (or `CAP_NET_ADMIN`), `ip` (iproute2) and `iptables`; [`Netns::create`]
//! says precisely what is missing.

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};
use nix::sched::{setns, CloneFlags};

/// How a rule cuts the traffic of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Every packet is dropped: both ends see nothing at all, as when a cable is pulled or a
    /// firewall forgets the session. Only the heartbeat can tell.
    Drop,
    /// Every packet is answered with a TCP reset: both ends see the connection reset at their
    /// next send.
    Reset,
}

impl Cut {
    fn target(self) -> &'static [&'static str] {
        match self {
            Cut::Drop => &["-j", "DROP"],
            Cut::Reset => &["-j", "REJECT", "--reject-with", "tcp-reset"],
        }
    }
}

/// A network namespace made for one test, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{command:?}");
    let output = command.output().with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

impl Netns {
    /// Creates a namespace with its loopback up and checks that `iptables` works inside it.
    /// The error says what is missing (root, `ip`, `iptables`, kernel support), for the
    /// caller to report the test as skipped.
    pub fn create() -> anyhow::Result<Netns> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::Uid::effective().is_root() {
            bail!("not running as root: network namespaces and iptables need root");
        }
        let name = format!("pulsewire-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name])).context("ip netns add (is iproute2 installed?)")?;
        // From here on, dropping the value deletes the namespace.
        let netns = Netns { name };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        netns.exec(&["iptables", "-w", "-L", "-n"]).context("iptables in the namespace (is iptables installed?)")?;
        Ok(netns)
    }

    /// The namespace's name (`ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(argv))
    }

    fn rules(&self, action: &str, port: u16, cut: Cut) -> anyhow::Result<()> {
        let port = port.to_string();
        // Both directions: what goes to the port, and what comes from it.
        for direction in ["--dport", "--sport"] {
            let mut argv = vec!["iptables", "-w", action, "INPUT", "-p", "tcp", direction, &port];
            argv.extend_from_slice(cut.target());
            self.exec(&argv)?;
        }
        Ok(())
    }

    /// Cuts every TCP packet to and from `port`.
    pub fn cut(&self, port: u16, cut: Cut) -> anyhow::Result<()> {
        self.rules("-A", port, cut)
    }

    /// Lifts what [`Netns::cut`] put in place.
    pub fn restore(&self, port: u16, cut: Cut) -> anyhow::Result<()> {
        self.rules("-D", port, cut)
    }

    /// Runs `task` on a thread of its own that has entered the namespace, and returns what it
    /// returns (a panic in it is resumed here). Every socket that thread creates lives in the
    /// namespace, so run the server's `bind` and the client's driver on it (for instance with
    /// `smol::LocalExecutor`); sockets accepted from a listener of the namespace are in it too.
    pub fn run<T: Send + 'static>(&self, task: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let handle = std::thread::Builder::new()
            .name(format!("netns {}", self.name))
            .spawn(move || -> anyhow::Result<T> {
                let namespace = File::open(&path).with_context(|| format!("open {path}"))?;
                setns(&namespace, CloneFlags::CLONE_NEWNET).context("setns into the test namespace")?;
                Ok(task())
            })
            .context("spawning the namespace thread")?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
