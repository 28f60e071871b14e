//! `bench serve`: the SDK's [`Server`] as a process, printing the demo server's JSON event
//! lines (`listening`, `online`, `offline`, same fields) but not its online list.
//!
//! The demo server prints the whole online list after every join and departure, so N joins
//! cost its console O(N²) bytes of JSON (27 GB for 19 000 peers); `report --server sdk`
//! measures the server engine without that console. Messages are echoed, as the demo does.
//!
//! With `--tls ADDR` it also listens for TLS at `ADDR`, with a certificate for `127.0.0.1` and
//! `localhost` made at start by a certificate authority of its own (`pulsewire-testkit`). The
//! CA's certificate, what the clients must trust, is written to `--ca-out`; the `listening`
//! line names it (`"ca"`) and the TLS listener's address (`"tls_addr"`).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use pulsewire::tls::ServerTls;
use pulsewire::{Server, ServerConfig, ServerEvent};
use pulsewire_testkit::certs::{TestCa, Validity};
use serde_json::json;

/// The server's command line (a subset of the demo server's).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// The pulse interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Missed pulses tolerated.
    #[arg(long, default_value_t = 3)]
    pub max_missed: u32,
    /// The most peers online at once (the SDK's default is 100 000).
    #[arg(long, default_value_t = 20_000)]
    pub max_peers: usize,
    /// Accepted for the demo server's command line; lines are always JSON.
    #[arg(long)]
    pub json: bool,
    /// Also listen for TLS at this address, with a certificate made at start (for 127.0.0.1
    /// and localhost) by a CA of its own.
    #[arg(long, value_name = "ADDR")]
    pub tls: Option<SocketAddr>,
    /// Where to write that CA's certificate (PEM) for the clients to trust [default:
    /// pulsewire-bench-PID/ca.pem in the temporary directory].
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca_out: Option<PathBuf>,
}

/// The names the TLS certificate is made out to: the loopback address clients connect to by
/// default, and a name the load generators, which connect to other 127.0.0.x addresses, check
/// instead (`bench swarm --server-name localhost`).
pub const TLS_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Makes a CA and a server certificate it signs, writes the CA's certificate to `ca_out`, and
/// returns the server's TLS identity.
fn make_tls(ca_out: &Path) -> anyhow::Result<ServerTls> {
    let ca = TestCa::new("pulsewire bench CA")?;
    let issued = ca.issue(&TLS_NAMES, Validity::Now)?;
    if let Some(dir) = ca_out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(ca_out, ca.pem()).with_context(|| format!("writing {}", ca_out.display()))?;
    ServerTls::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).context("the server certificate")
}

/// Runs the server until it is killed.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut builder = ServerConfig::builder()
        .listen(args.listen)
        .interval(args.interval)
        .max_missed(args.max_missed)
        .max_peers(args.max_peers);
    let mut ca_path = None;
    if let Some(addr) = args.tls {
        let path = args.ca_out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("pulsewire-bench-{}", std::process::id())).join("ca.pem")
        });
        builder = builder.tls(addr, make_tls(&path)?);
        ca_path = Some(path);
    }
    let config = builder.build().context("server configuration")?;
    futures::executor::block_on(async {
        let (server, mut events) =
            Server::bind(config).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut out = io::stdout().lock();
        let mut listening = json!({"event": "listening", "addr": server.local_addr().to_string()});
        if let (Some(addr), Some(ca)) = (server.tls_addr(), &ca_path) {
            listening["tls_addr"] = addr.to_string().into();
            listening["ca"] = ca.display().to_string().into();
        }
        writeln!(out, "{listening}")?;
        out.flush()?;
        while let Some(event) = events.next().await {
            let line = match event {
                ServerEvent::PeerOnline { peer, .. } => json!({
                    "event": "online", "peer": peer.id.as_str(), "addr": peer.addr.to_string(),
                    "session": peer.session.as_str()
                }),
                ServerEvent::PeerOffline { peer, reason, .. } => json!({
                    "event": "offline", "peer": peer.id.as_str(), "reason": reason.word(),
                    "detail": reason.to_string()
                }),
                ServerEvent::Message { peer, payload, .. } => {
                    let _ = server.send(&peer, payload).await;
                    continue;
                }
                _ => continue,
            };
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        Ok(())
    })
}
