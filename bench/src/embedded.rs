//! The embedded client: one idle SDK client, started the way a desktop application starts it
//! (`Client::start`: the driver runs on the reactor's thread when a pulse wakes it), with an
//! application thread reading its events.
//!
//! The report measures this process from outside (`/proc`), so the process itself does
//! nothing periodic: it prints `{"event":"baseline"}` once the runtime is warm (a throwaway
//! client has started and closed it), waits for `start` on stdin, starts the measured client,
//! prints `{"event":"online"}` when it is connected, and then only reads events. End of stdin
//! ends the process.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt;
use pulsewire::{Client, ClientConfig, Event};
use serde_json::json;

/// The embedded client's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedArgs {
    /// The server, `host:port`.
    #[arg(long)]
    pub server: String,
    /// The client id.
    #[arg(long, default_value = "embedded-1")]
    pub id: String,
    /// How the client's driver runs: `start` is `Client::start`; `block-on` is `Client::new`
    /// with the driver on a thread of its own under `smol::block_on`, which waits for I/O in
    /// the reactor itself; `thread` is `Client::new` with the driver on a thread of its own
    /// under `futures::executor::block_on`, which only parks.
    #[arg(long, value_enum, default_value = "start")]
    pub driver: DriverMode,
}

/// How the embedded client's driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverMode {
    /// `Client::start`.
    Start,
    /// `Client::new` + a thread running `smol::block_on(driver)`.
    BlockOn,
    /// `Client::new` + a thread running `futures::executor::block_on(driver)`.
    Thread,
}

/// Runs the embedded client until stdin closes.
pub fn run(args: EmbeddedArgs) -> anyhow::Result<()> {
    warm_up()?;
    say(&json!({"event": "baseline"}));
    let mut line = String::new();
    io::stdin().read_line(&mut line).context("reading stdin")?;
    if line.trim() != "start" {
        return Ok(());
    }
    let config = ClientConfig::builder(args.server, args.id).build().context("client configuration")?;
    let (client, mut events) = match args.driver {
        DriverMode::Start => Client::start(config),
        DriverMode::BlockOn => {
            let (client, events, driver) = Client::new(config);
            std::thread::Builder::new().name("driver".into()).spawn(move || smol::block_on(driver))?;
            (client, events)
        }
        DriverMode::Thread => {
            let (client, events, driver) = Client::new(config);
            std::thread::Builder::new().name("driver".into()).spawn(move || futures::executor::block_on(driver))?;
            (client, events)
        }
    };
    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            match event {
                Event::Connected { .. } => return Ok(()),
                Event::Closed { reason } => bail!("client closed: {reason}"),
                _ => {}
            }
        }
        bail!("event stream ended")
    })?;
    say(&json!({"event": "online"}));
    // End of stdin ends the process, whichever thread waits for it.
    std::thread::spawn(|| {
        for _ in io::stdin().lines() {}
        std::process::exit(0);
    });
    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            if let Event::Closed { .. } = event {
                break;
            }
        }
    });
    drop(client);
    Ok(())
}

/// Starts the runtime (async-io's reactor thread, the SDK's helper thread that `close` wakes)
/// with a client that finds nobody listening, and closes it: what is left is the runtime's own
/// footprint.
fn warm_up() -> anyhow::Result<()> {
    let config = ClientConfig::builder("127.0.0.1:1", "warm-up")
        .initial_delay(Duration::from_millis(10))
        .build()
        .context("warm-up configuration")?;
    let (client, mut events) = Client::start(config);
    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            if let Event::BackingOff { .. } = event {
                break;
            }
        }
        client.close().await;
    });
    Ok(())
}

fn say(value: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}
