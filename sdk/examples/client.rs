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
//!
//! With `--state-file desk-1.state` it saves its session after every `Connected` and every
//! message, so that it survives its own death: `kill -9` it, start it again with the same file,
//! and it prints `connected: session …, resumed`. The server kept the session meanwhile, with
//! whatever it sent in the meantime, which arrives now, once and in order. The file holds the
//! session's resume secret: it is written with mode 0600 (on Unix), and replaced atomically
//! (a temporary file, then a rename) so that a kill never leaves half of it.
//!
//! Over TLS: `--tls` checks the server's certificate against the webpki roots (a public
//! certificate authority), `--ca FILE` against the CA in that PEM file instead (the one
//! `demo-server --tls-self-signed` writes, say), and `--server-name NAME` against that name
//! instead of the host of `--server`:
//!
//! ```text
//! cargo run -p demo-server -- --tls-listen 127.0.0.1:7879 --tls-self-signed        # terminal 1
//! cargo run -p pulsewire --example client -- --server 127.0.0.1:7879 --ca pulsewire-demo-ca.pem
//! ```
//!
//! A certificate that does not verify is reported on every attempt, with the reason
//! (`backing off … after: the server's certificate is signed by an unknown authority`).
//!
//! What it does not keep across a restart: the messages it had accepted and not seen
//! acknowledged (the outbox lives in the process), and the messages the SDK had handed over
//! and acknowledged but this program had not printed yet.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use pulsewire::tls::ClientTls;
use pulsewire::{Client, ClientConfig, Event, ResumeState, SendOptions, Ticket};
use serde_json::json;

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
    /// Where to keep the session, to resume it after this program restarts: read at start
    /// (a missing file starts a fresh session), rewritten after every `Connected` and every
    /// message. It holds a secret.
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Send each line with this time to live, in milliseconds: a line still unwritten (the
    /// client is offline) when it passes is reported `expired` and never sent.
    #[arg(long, value_name = "MS")]
    ttl_ms: Option<u64>,
    /// Print one JSON object per event instead of text.
    #[arg(long)]
    json: bool,
    /// The token to authenticate with (visible to other users of this machine in the process
    /// list: prefer --token-file).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the token to authenticate with (a trailing newline is dropped).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the webpki roots (the public certificate authorities) unless
    /// --ca says otherwise.
    #[arg(long)]
    tls: bool,
    /// Connect over TLS, trusting the certificate authorities in this PEM file (implies --tls).
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of --server (a
    /// DNS name or an IP address; needs --tls or --ca).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
}

impl Args {
    /// The TLS the flags ask for (`None`: plaintext).
    fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let tls = match &self.ca {
            Some(path) => ClientTls::ca_file(path).with_context(|| format!("--ca {}", path.display()))?,
            None if self.tls => ClientTls::webpki_roots(),
            None => {
                anyhow::ensure!(self.server_name.is_none(), "--server-name needs --tls or --ca");
                return Ok(None);
            }
        };
        Ok(Some(match &self.server_name {
            Some(name) => tls.server_name(name.as_str()),
            None => tls,
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let print = Printer { json: args.json };
    let mut builder = ClientConfig::builder(&args.server, &args.id).max_delay(Duration::from_millis(args.max_delay_ms));
    if let Some(token) = &args.token {
        builder = builder.token(token.as_str());
    }
    if let Some(path) = &args.token_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
        builder = builder.token(text.trim_end_matches(['\n', '\r']));
    }
    if let Some(tls) = args.tls()? {
        builder = builder.tls(tls);
    }
    if let Some(path) = &args.state_file {
        match load_state(path)? {
            Some(state) => {
                print.note(&Note::StateLoaded { path, state: &state });
                builder = builder.resume(state);
            }
            None => print.note(&Note::StateMissing { path }),
        }
    }
    let (client, mut events) = Client::start(builder.build()?);

    let sender = client.clone();
    let options = args.ttl_ms.map_or_else(SendOptions::new, |ms| SendOptions::new().ttl(Duration::from_millis(ms)));
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match futures::executor::block_on(sender.send_with(line, options)) {
                Ok(ticket) => print.note(&Note::Queued(ticket)),
                Err(error) => eprintln!("{error}"),
            }
        }
    });

    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            print.event(&event)?;
            // Saved right after the event is printed. A kill between the two leaves the file a
            // message behind: the server writes it again on resume unless it already had the
            // SDK's acknowledgement (sent within 20 ms of the handover); then the resume meets
            // a sequence gap and ends in a fresh session.
            if let (Some(path), Event::Connected { .. } | Event::Message { .. }) = (&args.state_file, &event) {
                if let Some(state) = client.resume_state() {
                    if let Err(error) = save_state(path, &state) {
                        eprintln!("cannot save the session to {}: {error:#}", path.display());
                    }
                }
            }
            if matches!(event, Event::Closed { .. }) {
                break;
            }
        }
        Ok(())
    })
}

/// Prints lines to stdout, whole, from either thread.
#[derive(Debug, Clone, Copy)]
struct Printer {
    json: bool,
}

impl Printer {
    fn event(&self, event: &Event) -> io::Result<()> {
        let line = if self.json { json_line(event).to_string() } else { text(event) };
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    }

    fn note(&self, note: &Note<'_>) {
        let line = if self.json { note.json().to_string() } else { note.text() };
        let mut stdout = io::stdout().lock();
        // Stdout closed: the event loop meets the error too, and stops.
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
}

/// A line of this program's own, beside the SDK's events.
#[derive(Debug)]
enum Note<'a> {
    /// A saved session was read: the client asks the server to resume it.
    StateLoaded { path: &'a Path, state: &'a ResumeState },
    /// No state file yet: a fresh session.
    StateMissing { path: &'a Path },
    /// A typed line was accepted into the outbox; its outcome will name this ticket.
    Queued(Ticket),
}

impl Note<'_> {
    fn text(&self) -> String {
        match self {
            Note::StateLoaded { path, state } => format!(
                "state: resuming session {} (messages up to seq {} seen) from {}",
                state.session(),
                state.delivered(),
                path.display()
            ),
            Note::StateMissing { path } => format!("state: no {} yet: a fresh session", path.display()),
            Note::Queued(ticket) => format!("queued {ticket}"),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Note::StateLoaded { path, state } => json!({
                "event": "state_loaded",
                "path": path.display().to_string(),
                "session": state.session().as_str(),
                "delivered": state.delivered(),
            }),
            Note::StateMissing { path } => json!({"event": "state_missing", "path": path.display().to_string()}),
            Note::Queued(ticket) => json!({"event": "queued", "ticket": ticket.get()}),
        }
    }
}

/// The state saved in `path`, or `None` when there is no such file. A file that is not a
/// resume state is an error: it may be the wrong path, and it would be overwritten.
fn load_state(path: &Path) -> anyhow::Result<Option<ResumeState>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let state = ResumeState::from_text(&text)
        .with_context(|| format!("{} does not hold a pulsewire resume state", path.display()))?;
    Ok(Some(state))
}

/// Replaces `path` with `state` atomically: written to a temporary file beside it (mode 0600
/// on Unix: it holds the resume secret), flushed to disk, then renamed over it.
fn save_state(path: &Path, state: &ResumeState) -> anyhow::Result<()> {
    let mut name = path.file_name().context("the state file has no file name")?.to_owned();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    // A temporary file left by a killed run may have other permissions: start afresh.
    match fs::remove_file(&temp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("cannot remove {}", temp.display()))
        }
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    writeln!(file, "{}", state.to_text())?;
    file.sync_all()?;
    fs::rename(&temp, path).with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}

/// A message number for a text line: `seq 3`, or `unnumbered` (a volatile message).
fn seq_text(seq: u64) -> String {
    if seq == 0 {
        "unnumbered".to_owned()
    } else {
        format!("seq {seq}")
    }
}

fn text(event: &Event) -> String {
    match event {
        Event::Connecting { attempt } => format!("connecting (attempt {attempt})"),
        Event::Connected { session, resumed, interval, max_missed } => {
            let interval = interval.as_millis();
            let how = if *resumed { "resumed" } else { "fresh session" };
            format!("connected: session {session}, {how}, pulse every {interval}ms, lost after {max_missed} missed")
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
        Event::Message { seq, payload } => {
            format!("message {}: {}", seq_text(*seq), String::from_utf8_lossy(payload))
        }
        Event::Delivered { up_to, count } => {
            let noun = if *count == 1 { "message" } else { "messages" };
            format!("delivered up to {up_to} ({count} {noun})")
        }
        Event::Expired { ticket, payload } => format!("expired {ticket}: {}", String::from_utf8_lossy(payload)),
        Event::Undelivered { ticket, payload, maybe_delivered } => {
            let how = if *maybe_delivered { "maybe delivered" } else { "never sent" };
            format!("undelivered {ticket} ({how}): {}", String::from_utf8_lossy(payload))
        }
        Event::Closed { reason } => format!("closed: {reason}"),
        other => format!("{other:?}"),
    }
}

fn json_line(event: &Event) -> serde_json::Value {
    match event {
        Event::Connecting { attempt } => json!({"event": "connecting", "attempt": attempt}),
        Event::Connected { session, resumed, interval, max_missed } => json!({
            "event": "connected",
            "session": session.as_str(),
            "resumed": resumed,
            "interval_ms": interval.as_millis() as u64,
            "max_missed": max_missed,
        }),
        Event::Pulse { seq, misses_reset } => json!({"event": "pulse", "seq": seq, "misses_reset": misses_reset}),
        Event::Missed { count, max } => json!({"event": "missed", "count": count, "max": max}),
        Event::Disconnected { reason } => json!({"event": "disconnected", "reason": reason.to_string()}),
        Event::BackingOff { attempt, delay, last_error, .. } => json!({
            "event": "backing_off",
            "attempt": attempt,
            "delay_ms": delay.as_millis() as u64,
            "error": last_error.as_ref().map(ToString::to_string),
        }),
        Event::Message { seq, payload } => {
            json!({"event": "message", "seq": seq, "text": String::from_utf8_lossy(payload)})
        }
        Event::Delivered { up_to, count } => json!({"event": "delivered", "up_to": up_to.get(), "count": count}),
        Event::Expired { ticket, payload } => {
            json!({"event": "expired", "ticket": ticket.get(), "text": String::from_utf8_lossy(payload)})
        }
        Event::Undelivered { ticket, payload, maybe_delivered } => json!({
            "event": "undelivered",
            "ticket": ticket.get(),
            "maybe_delivered": maybe_delivered,
            "text": String::from_utf8_lossy(payload),
        }),
        Event::Closed { reason } => json!({"event": "closed", "reason": reason.to_string()}),
        other => json!({"event": "other", "debug": format!("{other:?}")}),
    }
}
