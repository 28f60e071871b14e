//! `bench serve`: the SDK's [`Server`] as a process, printing the demo server's JSON event
//! lines (`listening`, `online`, `offline`, same fields) but not its online list.
//!
//! The demo server prints the whole online list after every join and departure, so N joins
//! cost its console O(N²) bytes of JSON (27 GB for 19 000 peers); `report --server sdk`
//! measures the server engine without that console. Messages are echoed, as the demo does.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use pulsewire::{Server, ServerConfig, ServerEvent};
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
}

/// Runs the server until it is killed.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .listen(args.listen)
        .interval(args.interval)
        .max_missed(args.max_missed)
        .max_peers(args.max_peers)
        .build()
        .context("server configuration")?;
    futures::executor::block_on(async {
        let (server, mut events) =
            Server::bind(config).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut out = io::stdout().lock();
        writeln!(out, "{}", json!({"event": "listening", "addr": server.local_addr().to_string()}))?;
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
