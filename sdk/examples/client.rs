//! A pulsewire client you can watch: it connects, prints every event, and sends each line you
//! type as a message.
//!
//! ```text
//! cargo run -p demo-server                                # terminal 1
//! cargo run -p pulsewire --example client -- --id desk-1  # terminal 2
//! ```
//!
//! Stop the server (Ctrl-C) and start it again: the client reports the loss, backs off, and is
//! online again. Freeze it instead (`kill -STOP <pid>`): the client notices by missed pulses.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use pulsewire::{Client, ClientConfig, Event};

/// Connect to a pulsewire server, print every event, send stdin lines as messages.
#[derive(Debug, Parser)]
struct Args {
    /// The server address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    server: String,
    /// This client's id in the server's online list.
    #[arg(long, default_value = "desk-1")]
    id: String,
    /// The longest delay between reconnect attempts, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    max_delay_ms: u64,
    /// Print one JSON object per event instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config =
        ClientConfig::builder(&args.server, &args.id).max_delay(Duration::from_millis(args.max_delay_ms)).build()?;
    let (client, mut events) = Client::start(config);

    let sender = client.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Err(error) = futures::executor::block_on(sender.send(line)) {
                eprintln!("{error}");
            }
        }
    });

    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            let line = if args.json { json(&event) } else { text(&event) };
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
            if matches!(event, Event::Closed { .. }) {
                break;
            }
        }
        Ok(())
    })
}

fn text(event: &Event) -> String {
    match event {
        Event::Connecting { attempt } => format!("connecting (attempt {attempt})"),
        Event::Connected { session, interval, max_missed } => {
            let interval = interval.as_millis();
            format!("connected: session {session}, pulse every {interval}ms, lost after {max_missed} missed")
        }
        Event::Pulse { seq, misses_reset } if *misses_reset > 0 => {
            format!("pulse {seq} (forgave {misses_reset} missed)")
        }
        Event::Pulse { seq, .. } => format!("pulse {seq}"),
        Event::Missed { count, max } => format!("missed {count}/{max}"),
        Event::Disconnected { reason } => format!("disconnected: {reason}"),
        Event::BackingOff { attempt, delay, last_error, .. } => {
            let why = last_error.as_ref().map(|e| format!(" after: {e}")).unwrap_or_default();
            format!("backing off {}ms before attempt {attempt}{why}", delay.as_millis())
        }
        Event::Message(bytes) => format!("message: {}", String::from_utf8_lossy(bytes)),
        Event::Undelivered(bytes) => format!("undelivered: {}", String::from_utf8_lossy(bytes)),
        Event::Closed { reason } => format!("closed: {reason}"),
    }
}

fn json(event: &Event) -> String {
    use serde_json::json;
    let value = match event {
        Event::Connecting { attempt } => json!({"event": "connecting", "attempt": attempt}),
        Event::Connected { session, interval, max_missed } => json!({
            "event": "connected",
            "session": session.as_str(),
            "interval_ms": interval.as_millis() as u64,
            "max_missed": max_missed,
        }),
        Event::Pulse { seq, misses_reset } => json!({"event": "pulse", "seq": seq, "misses_reset": misses_reset}),
        Event::Missed { count, max } => json!({"event": "missed", "count": count, "max": max}),
        Event::Disconnected { reason } => json!({"event": "disconnected", "reason": reason.to_string()}),
        Event::BackingOff { attempt, delay, .. } => {
            json!({"event": "backing_off", "attempt": attempt, "delay_ms": delay.as_millis() as u64})
        }
        Event::Message(bytes) => json!({"event": "message", "text": String::from_utf8_lossy(bytes)}),
        Event::Undelivered(bytes) => json!({"event": "undelivered", "text": String::from_utf8_lossy(bytes)}),
        Event::Closed { reason } => json!({"event": "closed", "reason": reason.to_string()}),
    };
    value.to_string()
}
