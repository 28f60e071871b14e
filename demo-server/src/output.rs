//! What the server prints on stdout: one line per event, as text for people or JSON for
//! programs, and the online list after changes (at most every 100 ms, see `serve.rs`).
//!
//! The line formats are an interface (the end-to-end tests and the bench read the JSON ones):
//!
//! | event       | text                                                  | json                                                                 |
//! |-------------|-------------------------------------------------------|----------------------------------------------------------------------|
//! | listening   | `listening on 127.0.0.1:7878, TLS on 127.0.0.1:7879`  | `{"event":"listening","addr":"127.0.0.1:7878","tls_addr":"127.0.0.1:7879","plaintext":true,"ca_file":null}` |
//! | online      | `online  desk-42 127.0.0.1:5555 session 0a1b2 (fresh) as alice over TLS` | `{"event":"online","peer":"desk-42","addr":"…","session":"0a1b2","resumed":false,"subject":"alice","tls":true}` |
//! | detached    | `detached desk-42 (connection reset)`                 | `{"event":"detached","peer":"desk-42","addr":"…","session":"0a1b2","reason":"reset","detail":"connection reset"}` |
//! | offline     | `offline desk-42 (evicted after 4 missed pulses)`     | `{"event":"offline","peer":"desk-42","reason":"timeout","detail":"…","undelivered":0,"maybe_delivered":0,"was_detached":false}` |
//! | message     | `message desk-42 seq 5, echo seq 3: hello`            | `{"event":"message","peer":"desk-42","seq":5,"text":"hello","echo_seq":3}` |
//! | delivered   | `delivered desk-42 up to seq 3` (only with `--verbose`) | `{"event":"delivered","peer":"desk-42","up_to":3}`                 |
//! | online list | `online list (1 peer):` and a table, then `detached (1 session):` and a table if any | `{"event":"online_list","peers":[{"id":…,"addr":…,"session":…,"misses":0,"rtt_ms":1.2,"connected_ms":1234,"tls":false}],"detached":[{"id":…,"session":…,"left_ms":119800,"queued":2,"bytes":10}]}` |
//! | shutdown    | `shutdown`                                            | `{"event":"shutdown"}`                                               |
//!
//! Details:
//! - `listening`: `addr` is where to connect: the plaintext listener, or the TLS one when
//!   `plaintext` is false (`--no-plaintext`; text `listening on 127.0.0.1:7879, TLS only`).
//!   `tls_addr` is the TLS listener's (`null`: none). With `--tls-self-signed`, `ca_file` is the
//!   absolute path of the CA certificate clients must trust (text `(self-signed: its CA is in
//!   /path/pulsewire-demo-ca.pem)`), `null` otherwise.
//! - `online`, `online_list`: `tls` (text `over TLS`; the table's `tls` column) says the peer
//!   came over the TLS listener.
//! - `online`: `subject` (text `as alice`) is who the peer authenticated as, `null` (nothing)
//!   when the server has no authenticator.
//! - `online`: `resumed` (text `(resumed)`) when the peer resumed its session: nothing was lost
//!   or duplicated while it was away. Otherwise its session is new (`(fresh)`; always, for a
//!   protocol 1 peer).
//! - `detached`: a protocol 2 peer's connection was lost and its session is kept (`--keep`);
//!   `reason` is a word of `OfflineReason::word`, as in `offline`. It stays in the online list's
//!   `detached` part until it resumes (`online` with `resumed`) or its session ends (`offline`).
//! - `offline`: its session ended. `undelivered` counts the messages sent to it that it never
//!   acknowledged, `maybe_delivered` how many of them were written to it and may have arrived;
//!   the text adds `, 3 messages undelivered (1 maybe delivered)` when there are any.
//!   `was_detached` (text `; its kept session ended`) says the session had been kept detached
//!   and ended without a resume (`--keep` passed, the detached bounds were reached, or the
//!   peer came back with a fresh session); `reason` is then why its connection was lost.
//! - `message`: `seq` is its number in the peer's session (0, text `unnumbered`, for a
//!   protocol 1 peer's message). With echo on, `echo_seq` is the number the echo got in the
//!   other direction; when the server refused the echo it is `null` and `echo_error` says why
//!   (`full`, `not-online`, `stopped`; text `echo refused (full)`). With `--no-echo`, neither
//!   field is there.
//! - `delivered`: the peer's application has every message up to `up_to` (cumulative). Printed
//!   only with `--verbose`: a busy peer acknowledges up to 50 times a second.
//! - `online_list`: `detached` lists the kept sessions, nearest end first, with the time
//!   `left_ms` before each ends and the messages (`queued`) and payload `bytes` it holds.
//! - An event of a later SDK this table does not know yet is printed as `event <debug>`, or
//!   `{"event":"other","debug":"…"}`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pulsewire::{KeptSession, PeerInfo, ServerEvent, ServerSendError};
use serde_json::Value;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines and a table for people.
    Text,
    /// One JSON object per line, its `event` field first.
    Json,
}

/// What the console adds to an event's line: what it knows beyond the event itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notes {
    /// For a message: what became of its echo.
    pub echo: Echo,
    /// For a peer going offline: its session had been detached, and ended without a resume.
    pub was_detached: bool,
}

/// What became of a message's echo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Echo {
    /// Echo is off (`--no-echo`).
    #[default]
    Off,
    /// Sent back as this message of the peer's session (0: the peer speaks protocol 1).
    Sent(u64),
    /// The server refused it; the word says why.
    Refused(&'static str),
}

impl Echo {
    /// The outcome of [`Server::send`](pulsewire::Server::send) for an echo.
    pub fn of(outcome: &Result<u64, ServerSendError>) -> Echo {
        match outcome {
            Ok(seq) => Echo::Sent(*seq),
            Err(ServerSendError::Full(_)) => Echo::Refused("full"),
            Err(ServerSendError::NotOnline(_)) => Echo::Refused("not-online"),
            Err(ServerSendError::Stopped(_)) => Echo::Refused("stopped"),
            Err(_) => Echo::Refused("refused"),
        }
    }
}

/// Where the server listens, as its first line tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening<'a> {
    /// Where to connect: the plaintext listener's address, or the TLS listener's when there is
    /// no plaintext one.
    pub addr: SocketAddr,
    /// The TLS listener's address, if there is one.
    pub tls_addr: Option<SocketAddr>,
    /// Whether the plaintext listener runs.
    pub plaintext: bool,
    /// The CA certificate of a certificate made at start, written for clients to trust.
    pub ca_file: Option<&'a Path>,
}

/// Prints events to a writer (stdout in the binary). Every line is flushed at once, except event
/// lines, which wait for [`Output::flush`]: the console flushes once per batch of events, so a
/// reconnect storm costs one write per batch instead of one per arrival.
#[derive(Debug)]
pub struct Output<W> {
    format: Format,
    out: W,
}

impl<W: Write> Output<W> {
    /// Prints in `format` to `out`.
    pub fn new(format: Format, out: W) -> Output<W> {
        Output { format, out }
    }

    /// The server listens.
    pub fn listening(&mut self, listening: &Listening<'_>) -> io::Result<()> {
        let Listening { addr, tls_addr, plaintext, ca_file } = *listening;
        let text = match self.format {
            Format::Text => {
                let mut line = format!("listening on {addr}");
                match tls_addr {
                    Some(_) if !plaintext => line.push_str(", TLS only"),
                    Some(tls_addr) => line.push_str(&format!(", TLS on {tls_addr}")),
                    None => {}
                }
                if let Some(ca_file) = ca_file {
                    // Writing to a String cannot fail.
                    let _ = write!(line, " (self-signed: its CA is in {})", printable(&ca_file.display().to_string()));
                }
                line
            }
            Format::Json => object(&[
                ("event", string("listening")),
                ("addr", string(&addr.to_string())),
                ("tls_addr", tls_addr.map_or_else(|| "null".to_owned(), |tls_addr| string(&tls_addr.to_string()))),
                ("plaintext", plaintext.to_string()),
                ("ca_file", ca_file.map_or_else(|| "null".to_owned(), |path| string(&path.display().to_string()))),
            ]),
        };
        self.emit(&text)
    }

    /// One server event with what the console adds to it, held until [`Output::flush`].
    pub fn event(&mut self, event: &ServerEvent, notes: Notes) -> io::Result<()> {
        let text = match self.format {
            Format::Text => event_text(event, notes),
            Format::Json => event_json(event, notes),
        };
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Writes out the event lines held so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The online list and the detached sessions as of `now`.
    pub fn online_list(&mut self, peers: &[PeerInfo], detached: &[KeptSession], now: Instant) -> io::Result<()> {
        match self.format {
            Format::Text => {
                let text = online_list_text(peers, detached, now);
                self.emit(&text)
            }
            Format::Json => {
                // Written peer by peer: a list of 19 000 peers is 3 MB of JSON, and building it
                // as one string cost several copies of that, which the allocator then kept.
                let mut out = io::BufWriter::with_capacity(64 * 1024, &mut self.out);
                write_online_list_json(&mut out, peers, detached, now)?;
                out.write_all(b"\n")?;
                out.flush()?;
                drop(out);
                self.out.flush()
            }
        }
    }

    /// The server has stopped.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let text = match self.format {
            Format::Text => "shutdown".to_owned(),
            Format::Json => object(&[("event", string("shutdown"))]),
        };
        self.emit(&text)
    }

    /// The writer, to inspect what was printed.
    #[cfg(test)]
    fn into_inner(self) -> W {
        self.out
    }

    fn emit(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

fn event_text(event: &ServerEvent, notes: Notes) -> String {
    match event {
        ServerEvent::PeerOnline { peer, resumed } => {
            let session = if *resumed { "resumed" } else { "fresh" };
            let mut line = format!("online  {} {} session {} ({session})", peer.id, peer.addr, peer.session);
            if let Some(subject) = &peer.subject {
                let _ = write!(line, " as {}", printable(subject.as_str()));
            }
            if peer.tls {
                line.push_str(" over TLS");
            }
            line
        }
        ServerEvent::PeerDetached { peer, reason } => format!("detached {} ({reason})", peer.id),
        ServerEvent::PeerOffline { peer, reason, undelivered } => {
            let mut line = format!("offline {} ({reason}", peer.id);
            if notes.was_detached {
                line.push_str("; its kept session ended");
            }
            line.push(')');
            if !undelivered.is_empty() {
                let maybe = undelivered.iter().filter(|message| message.maybe_delivered).count();
                let noun = if undelivered.len() == 1 { "message" } else { "messages" };
                // Writing to a String cannot fail.
                let _ = write!(line, ", {} {noun} undelivered ({maybe} maybe delivered)", undelivered.len());
            }
            line
        }
        ServerEvent::Message { peer, seq, payload } => {
            let echo = match notes.echo {
                Echo::Off => String::new(),
                Echo::Sent(seq) => format!(", echo {}", seq_text(seq)),
                Echo::Refused(why) => format!(", echo refused ({why})"),
            };
            let text = printable(&String::from_utf8_lossy(payload));
            format!("message {peer} {}{echo}: {text}", seq_text(*seq))
        }
        ServerEvent::Delivered { peer, up_to } => format!("delivered {peer} up to seq {up_to}"),
        other => format!("event {}", printable(&format!("{other:?}"))),
    }
}

fn event_json(event: &ServerEvent, notes: Notes) -> String {
    match event {
        ServerEvent::PeerOnline { peer, resumed } => object(&[
            ("event", string("online")),
            ("peer", string(peer.id.as_str())),
            ("addr", string(&peer.addr.to_string())),
            ("session", string(peer.session.as_str())),
            ("resumed", resumed.to_string()),
            ("subject", peer.subject.as_ref().map_or_else(|| "null".to_owned(), |subject| string(subject.as_str()))),
            ("tls", peer.tls.to_string()),
        ]),
        ServerEvent::PeerDetached { peer, reason } => object(&[
            ("event", string("detached")),
            ("peer", string(peer.id.as_str())),
            ("addr", string(&peer.addr.to_string())),
            ("session", string(peer.session.as_str())),
            ("reason", string(reason.word())),
            ("detail", string(&reason.to_string())),
        ]),
        ServerEvent::PeerOffline { peer, reason, undelivered } => {
            let maybe = undelivered.iter().filter(|message| message.maybe_delivered).count();
            object(&[
                ("event", string("offline")),
                ("peer", string(peer.id.as_str())),
                ("reason", string(reason.word())),
                ("detail", string(&reason.to_string())),
                ("undelivered", undelivered.len().to_string()),
                ("maybe_delivered", maybe.to_string()),
                ("was_detached", notes.was_detached.to_string()),
            ])
        }
        ServerEvent::Message { peer, seq, payload } => {
            let mut fields = vec![
                ("event", string("message")),
                ("peer", string(peer.as_str())),
                ("seq", seq.to_string()),
                ("text", string(&String::from_utf8_lossy(payload))),
            ];
            match notes.echo {
                Echo::Off => {}
                Echo::Sent(seq) => fields.push(("echo_seq", seq.to_string())),
                Echo::Refused(why) => fields.extend([("echo_seq", "null".to_owned()), ("echo_error", string(why))]),
            }
            object(&fields)
        }
        ServerEvent::Delivered { peer, up_to } => {
            object(&[("event", string("delivered")), ("peer", string(peer.as_str())), ("up_to", up_to.to_string())])
        }
        other => object(&[("event", string("other")), ("debug", string(&format!("{other:?}")))]),
    }
}

/// A message number as the text lines show it: `seq 5`, or `unnumbered` for 0 (a protocol 1
/// peer's messages are not numbered).
fn seq_text(seq: u64) -> String {
    if seq == 0 {
        "unnumbered".to_owned()
    } else {
        format!("seq {seq}")
    }
}

fn online_list_text(peers: &[PeerInfo], detached: &[KeptSession], now: Instant) -> String {
    let noun = if peers.len() == 1 { "peer" } else { "peers" };
    let mut text = format!("online list ({} {noun}):", peers.len());
    let header = ["id", "address", "session", "connected for", "last rtt", "misses", "tls"];
    let rows = peers.iter().map(|peer| {
        [
            peer.id.to_string(),
            peer.addr.to_string(),
            peer.session.to_string(),
            short(now.saturating_duration_since(peer.connected_since)),
            peer.last_rtt.map_or_else(|| "-".to_owned(), |rtt| format!("{rtt:.1?}")),
            peer.misses.to_string(),
            if peer.tls { "yes" } else { "no" }.to_owned(),
        ]
    });
    push_table(&mut text, header, rows.collect());
    if !detached.is_empty() {
        let noun = if detached.len() == 1 { "session" } else { "sessions" };
        // Writing to a String cannot fail.
        let _ = write!(text, "\ndetached ({} {noun}):", detached.len());
        let header = ["id", "session", "time left", "queued", "bytes"];
        let rows = detached.iter().map(|kept| {
            [
                kept.client_id.to_string(),
                kept.session.to_string(),
                short(kept.left),
                kept.queued.to_string(),
                kept.bytes.to_string(),
            ]
        });
        push_table(&mut text, header, rows.collect());
    }
    text
}

/// Appends `header` and `rows` to `text` as an aligned table, one line each, indented by two
/// spaces; nothing when there are no rows.
fn push_table<const N: usize>(text: &mut String, header: [&str; N], rows: Vec<[String; N]>) {
    if rows.is_empty() {
        return;
    }
    let header = header.map(str::to_owned);
    let mut widths = [0usize; N];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(widths) {
            // Writing to a String cannot fail.
            let _ = write!(line, " {cell:<width$} ");
        }
        text.push('\n');
        text.push_str(line.trim_end());
    }
}

fn write_online_list_json(
    out: &mut impl Write,
    peers: &[PeerInfo],
    detached: &[KeptSession],
    now: Instant,
) -> io::Result<()> {
    // Field by field into the writer, with no string per field: a storm prints lists of
    // thousands of peers several times a second.
    out.write_all(b"{\"event\":\"online_list\",\"peers\":[")?;
    for (n, peer) in peers.iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"id\":")?;
        serde_json::to_writer(&mut *out, peer.id.as_str())?;
        // An address is digits, dots, colons and brackets: nothing to escape.
        write!(out, ",\"addr\":\"{}\",\"session\":", peer.addr)?;
        serde_json::to_writer(&mut *out, peer.session.as_str())?;
        write!(out, ",\"misses\":{},\"rtt_ms\":", peer.misses)?;
        serde_json::to_writer(&mut *out, &peer.last_rtt.map(millis))?;
        let connected = whole_millis(now.saturating_duration_since(peer.connected_since));
        write!(out, ",\"connected_ms\":{connected},\"tls\":{}}}", peer.tls)?;
    }
    out.write_all(b"],\"detached\":[")?;
    for (n, kept) in detached.iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"id\":")?;
        serde_json::to_writer(&mut *out, kept.client_id.as_str())?;
        out.write_all(b",\"session\":")?;
        serde_json::to_writer(&mut *out, kept.session.as_str())?;
        let left = whole_millis(kept.left);
        write!(out, ",\"left_ms\":{left},\"queued\":{},\"bytes\":{}}}", kept.queued, kept.bytes)?;
    }
    out.write_all(b"]}")
}

/// A JSON object with its fields in the order given (serde_json's own map sorts them);
/// every value is already JSON.
fn object(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(name, value)| format!("{}:{value}", string(name))).collect();
    format!("{{{}}}", fields.join(","))
}

/// `text` as a JSON string, escaped.
fn string(text: &str) -> String {
    Value::from(text).to_string()
}

/// A duration in milliseconds, to the microsecond.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// A duration in whole milliseconds.
fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A duration for a table, short: `850.0ms`, `12.3s`, then `1m 5s`, `2h 3m 4s`.
fn short(duration: Duration) -> String {
    if duration < Duration::from_secs(60) {
        format!("{duration:.1?}")
    } else {
        humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
    }
}

/// A peer's text made safe for one terminal line: control characters (newlines, escape
/// sequences) are shown escaped instead of acted on.
fn printable(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use pulsewire::protocol::{ClientId, SessionId};
    use pulsewire::{OfflineReason, Undelivered};

    use super::*;

    fn peer(id: &str, since: Instant) -> PeerInfo {
        PeerInfo {
            id: ClientId::new(id).unwrap(),
            addr: "127.0.0.1:5555".parse().unwrap(),
            session: SessionId::new("0a1b2c3d1").unwrap(),
            connected_since: since,
            last_seen: since,
            last_rtt: None,
            misses: 0,
            subject: None,
            tls: false,
        }
    }

    fn kept(id: &str, left: Duration, queued: usize, bytes: usize) -> KeptSession {
        KeptSession {
            client_id: ClientId::new(id).unwrap(),
            session: SessionId::new("0a1b2c3d7").unwrap(),
            left,
            queued,
            bytes,
        }
    }

    fn undelivered(seq: u64, maybe_delivered: bool) -> Undelivered {
        Undelivered { seq, payload: format!("m{seq}").into(), maybe_delivered }
    }

    fn printed(format: Format, print: impl FnOnce(&mut Output<Vec<u8>>) -> io::Result<()>) -> String {
        let mut output = Output::new(format, Vec::new());
        print(&mut output).unwrap();
        String::from_utf8(output.into_inner()).unwrap()
    }

    /// `event` printed in `format` with no notes.
    fn plain(format: Format, event: &ServerEvent) -> String {
        printed(format, |o| o.event(event, Notes::default()))
    }

    fn json(line: &str) -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    fn offline(reason: OfflineReason) -> ServerEvent {
        ServerEvent::PeerOffline { peer: peer("desk-42", Instant::now()), reason, undelivered: Vec::new() }
    }

    fn message(seq: u64, payload: &[u8]) -> ServerEvent {
        ServerEvent::Message { peer: ClientId::new("desk-42").unwrap(), seq, payload: payload.to_vec().into() }
    }

    fn with_echo(echo: Echo) -> Notes {
        Notes { echo, ..Notes::default() }
    }

    #[test]
    fn listening_line_carries_the_address() {
        let listening =
            Listening { addr: "127.0.0.1:40123".parse().unwrap(), tls_addr: None, plaintext: true, ca_file: None };
        assert_eq!(printed(Format::Text, |o| o.listening(&listening)), "listening on 127.0.0.1:40123\n");
        assert_eq!(
            printed(Format::Json, |o| o.listening(&listening)),
            "{\"event\":\"listening\",\"addr\":\"127.0.0.1:40123\",\"tls_addr\":null,\"plaintext\":true,\"ca_file\":null}\n"
        );
    }

    #[test]
    fn listening_line_carries_the_tls_address_and_the_ca_file_of_a_self_signed_certificate() {
        let both = Listening {
            addr: "127.0.0.1:40123".parse().unwrap(),
            tls_addr: Some("127.0.0.1:40124".parse().unwrap()),
            plaintext: true,
            ca_file: None,
        };
        assert_eq!(
            printed(Format::Text, |o| o.listening(&both)),
            "listening on 127.0.0.1:40123, TLS on 127.0.0.1:40124\n"
        );
        let value = json(&printed(Format::Json, |o| o.listening(&both)));
        assert_eq!(
            (value["addr"].as_str(), value["tls_addr"].as_str()),
            (Some("127.0.0.1:40123"), Some("127.0.0.1:40124"))
        );
        assert_eq!((value["plaintext"].as_bool(), value["ca_file"].is_null()), (Some(true), true));

        let ca = Path::new("/tmp/pulsewire-demo-ca.pem");
        let tls_only = Listening {
            addr: "[::1]:7879".parse().unwrap(),
            tls_addr: Some("[::1]:7879".parse().unwrap()),
            plaintext: false,
            ca_file: Some(ca),
        };
        assert_eq!(
            printed(Format::Text, |o| o.listening(&tls_only)),
            "listening on [::1]:7879, TLS only (self-signed: its CA is in /tmp/pulsewire-demo-ca.pem)\n"
        );
        let value = json(&printed(Format::Json, |o| o.listening(&tls_only)));
        assert_eq!((value["addr"].as_str(), value["tls_addr"].as_str()), (Some("[::1]:7879"), Some("[::1]:7879")));
        assert_eq!(
            (value["plaintext"].as_bool(), value["ca_file"].as_str()),
            (Some(false), Some("/tmp/pulsewire-demo-ca.pem"))
        );
    }

    #[test]
    fn online_event_prints_id_address_session_and_whether_it_resumed() {
        let fresh = ServerEvent::PeerOnline { peer: peer("desk-42", Instant::now()), resumed: false };
        assert_eq!(plain(Format::Text, &fresh), "online  desk-42 127.0.0.1:5555 session 0a1b2c3d1 (fresh)\n");
        assert_eq!(
            plain(Format::Json, &fresh),
            "{\"event\":\"online\",\"peer\":\"desk-42\",\"addr\":\"127.0.0.1:5555\",\"session\":\"0a1b2c3d1\",\
             \"resumed\":false,\"subject\":null,\"tls\":false}\n"
        );
        let resumed = ServerEvent::PeerOnline { peer: peer("desk-42", Instant::now()), resumed: true };
        assert_eq!(plain(Format::Text, &resumed), "online  desk-42 127.0.0.1:5555 session 0a1b2c3d1 (resumed)\n");
        assert_eq!(json(&plain(Format::Json, &resumed))["resumed"], true);
        // An authenticated peer shows who it is.
        let mut alice = peer("desk-42", Instant::now());
        alice.subject = Some(pulsewire::auth::Subject::new("alice"));
        let online = ServerEvent::PeerOnline { peer: alice, resumed: false };
        assert!(plain(Format::Text, &online).ends_with("(fresh) as alice\n"));
        assert_eq!(json(&plain(Format::Json, &online))["subject"], "alice");
    }

    #[test]
    fn online_event_says_when_the_peer_came_over_tls() {
        let mut alice = peer("desk-42", Instant::now());
        alice.subject = Some(pulsewire::auth::Subject::new("alice"));
        alice.tls = true;
        let online = ServerEvent::PeerOnline { peer: alice.clone(), resumed: false };
        assert_eq!(
            plain(Format::Text, &online),
            "online  desk-42 127.0.0.1:5555 session 0a1b2c3d1 (fresh) as alice over TLS\n"
        );
        assert_eq!(json(&plain(Format::Json, &online))["tls"], true);
        alice.subject = None;
        let anonymous = ServerEvent::PeerOnline { peer: alice, resumed: true };
        assert!(plain(Format::Text, &anonymous).ends_with("(resumed) over TLS\n"));
    }

    #[test]
    fn detached_event_prints_the_reason_its_connection_was_lost() {
        let event = ServerEvent::PeerDetached { peer: peer("desk-42", Instant::now()), reason: OfflineReason::Reset };
        assert_eq!(plain(Format::Text, &event), "detached desk-42 (connection reset)\n");
        let line = plain(Format::Json, &event);
        assert!(line.starts_with("{\"event\":\"detached\","), "{line}");
        let value = json(&line);
        assert_eq!(value["peer"], "desk-42");
        assert_eq!(value["addr"], "127.0.0.1:5555");
        assert_eq!(value["session"], "0a1b2c3d1");
        assert_eq!(value["reason"], "reset");
        assert_eq!(value["detail"], "connection reset");
    }

    #[test]
    fn offline_json_line_has_the_reason_word_and_its_detail() {
        let event = offline(OfflineReason::Timeout { misses: 4 });
        let line = plain(Format::Json, &event);
        assert!(line.starts_with("{\"event\":\"offline\","), "{line}");
        let value = json(&line);
        assert_eq!(value["peer"], "desk-42");
        assert_eq!(value["reason"], "timeout");
        assert_eq!(value["detail"], "evicted after 4 missed pulses");
        assert_eq!(value["undelivered"], 0);
        assert_eq!(value["maybe_delivered"], 0);
        assert_eq!(value["was_detached"], false);
        assert_eq!(plain(Format::Text, &event), "offline desk-42 (evicted after 4 missed pulses)\n");
    }

    #[test]
    fn offline_counts_the_undelivered_messages_and_the_maybe_delivered_among_them() {
        let event = ServerEvent::PeerOffline {
            peer: peer("desk-42", Instant::now()),
            reason: OfflineReason::Eof,
            undelivered: vec![undelivered(4, true), undelivered(5, true), undelivered(6, false)],
        };
        let notes = Notes { was_detached: true, ..Notes::default() };
        assert_eq!(
            printed(Format::Text, |o| o.event(&event, notes)),
            "offline desk-42 (connection closed; its kept session ended), 3 messages undelivered (2 maybe delivered)\n"
        );
        let value = json(&printed(Format::Json, |o| o.event(&event, notes)));
        assert_eq!(value["reason"], "eof");
        assert_eq!(value["undelivered"], 3);
        assert_eq!(value["maybe_delivered"], 2);
        assert_eq!(value["was_detached"], true);

        let one = ServerEvent::PeerOffline {
            peer: peer("desk-42", Instant::now()),
            reason: OfflineReason::Goodbye { reason: "quit".into() },
            undelivered: vec![undelivered(9, false)],
        };
        assert_eq!(
            plain(Format::Text, &one),
            "offline desk-42 (goodbye (quit)), 1 message undelivered (0 maybe delivered)\n"
        );
    }

    #[test]
    fn every_offline_reason_has_its_own_word() {
        let reasons = [
            OfflineReason::Goodbye { reason: "quit".into() },
            OfflineReason::Timeout { misses: 4 },
            OfflineReason::Stalled,
            OfflineReason::WriteTimeout,
            OfflineReason::Replaced,
            OfflineReason::Resumed,
            OfflineReason::Eof,
            OfflineReason::Reset,
            OfflineReason::Shutdown,
        ];
        let words: Vec<_> = reasons.iter().map(OfflineReason::word).collect();
        assert_eq!(
            words,
            ["goodbye", "timeout", "stalled", "write-timeout", "replaced", "resumed", "eof", "reset", "shutdown"]
        );
        let line = plain(Format::Json, &offline(OfflineReason::Goodbye { reason: "quit".into() }));
        assert_eq!(json(&line)["detail"], "goodbye (quit)");
    }

    #[test]
    fn message_shows_its_seq_and_the_seq_of_its_echo() {
        let event = message(5, b"hello");
        let echoed = with_echo(Echo::Sent(3));
        assert_eq!(printed(Format::Text, |o| o.event(&event, echoed)), "message desk-42 seq 5, echo seq 3: hello\n");
        assert_eq!(
            printed(Format::Json, |o| o.event(&event, echoed)),
            "{\"event\":\"message\",\"peer\":\"desk-42\",\"seq\":5,\"text\":\"hello\",\"echo_seq\":3}\n"
        );
    }

    #[test]
    fn message_without_echo_has_no_echo_fields() {
        let event = message(5, b"hello");
        assert_eq!(plain(Format::Text, &event), "message desk-42 seq 5: hello\n");
        let value = json(&plain(Format::Json, &event));
        assert_eq!(value["seq"], 5);
        assert!(value.get("echo_seq").is_none() && value.get("echo_error").is_none(), "{value}");
    }

    #[test]
    fn a_refused_echo_says_why() {
        let event = message(6, b"hello");
        let refused = with_echo(Echo::of(&Err(ServerSendError::Full("hello".into()))));
        assert_eq!(
            printed(Format::Text, |o| o.event(&event, refused)),
            "message desk-42 seq 6, echo refused (full): hello\n"
        );
        let value = json(&printed(Format::Json, |o| o.event(&event, refused)));
        assert!(value["echo_seq"].is_null());
        assert_eq!(value["echo_error"], "full");
        assert_eq!(Echo::of(&Err(ServerSendError::NotOnline("x".into()))), Echo::Refused("not-online"));
        assert_eq!(Echo::of(&Err(ServerSendError::Stopped("x".into()))), Echo::Refused("stopped"));
        assert_eq!(Echo::of(&Ok(7)), Echo::Sent(7));
    }

    #[test]
    fn a_protocol_1_message_and_its_echo_are_unnumbered() {
        let event = message(0, b"hi");
        let echoed = with_echo(Echo::Sent(0));
        assert_eq!(
            printed(Format::Text, |o| o.event(&event, echoed)),
            "message desk-42 unnumbered, echo unnumbered: hi\n"
        );
        let value = json(&printed(Format::Json, |o| o.event(&event, echoed)));
        assert_eq!((value["seq"].as_u64(), value["echo_seq"].as_u64()), (Some(0), Some(0)));
    }

    #[test]
    fn message_is_lossy_utf8_and_escaped_in_json() {
        let event = message(1, b"say \"hi\"\n\xff");
        let line = plain(Format::Json, &event);
        assert_eq!(line.lines().count(), 1);
        assert_eq!(json(&line)["text"], "say \"hi\"\n\u{fffd}");
        assert_eq!(plain(Format::Text, &event), "message desk-42 seq 1: say \"hi\"\\n\u{fffd}\n");
    }

    #[test]
    fn text_message_stays_on_one_line_and_never_reaches_the_terminal_raw() {
        let event = message(1, "hello\r\n\u{1b}[2Jbye".as_bytes());
        assert_eq!(plain(Format::Text, &event), "message desk-42 seq 1: hello\\r\\n\\u{1b}[2Jbye\n");
    }

    #[test]
    fn delivered_line_names_the_peer_and_the_highest_seq() {
        let event = ServerEvent::Delivered { peer: ClientId::new("desk-42").unwrap(), up_to: 3 };
        assert_eq!(plain(Format::Text, &event), "delivered desk-42 up to seq 3\n");
        assert_eq!(plain(Format::Json, &event), "{\"event\":\"delivered\",\"peer\":\"desk-42\",\"up_to\":3}\n");
    }

    #[test]
    fn online_list_table_renders_one_aligned_row_per_peer() {
        let start = Instant::now();
        let now = start + Duration::from_secs(3_723);
        let mut a = peer("a", now - Duration::from_millis(12_300));
        a.last_rtt = Some(Duration::from_micros(1_234));
        let mut long = peer("desk-long-name", start);
        long.misses = 2;
        long.tls = true;
        let table = printed(Format::Text, |o| o.online_list(&[a, long], &[], now));
        let expected = "\
online list (2 peers):
  id              address         session    connected for  last rtt  misses  tls
  a               127.0.0.1:5555  0a1b2c3d1  12.3s          1.2ms     0       no
  desk-long-name  127.0.0.1:5555  0a1b2c3d1  1h 2m 3s       -         2       yes
";
        assert_eq!(table, expected);
    }

    #[test]
    fn detached_sessions_follow_the_online_list_with_their_time_left() {
        let now = Instant::now();
        let detached = [kept("b", Duration::from_millis(1_500), 0, 0), kept("desk-9", Duration::from_secs(119), 2, 10)];
        let table = printed(Format::Text, |o| o.online_list(&[peer("a", now)], &detached, now));
        let expected = "\
online list (1 peer):
  id  address         session    connected for  last rtt  misses  tls
  a   127.0.0.1:5555  0a1b2c3d1  0.0ns          -         0       no
detached (2 sessions):
  id      session    time left  queued  bytes
  b       0a1b2c3d7  1.5s       0       0
  desk-9  0a1b2c3d7  1m 59s     2       10
";
        assert_eq!(table, expected);
        let one = printed(Format::Text, |o| o.online_list(&[], &detached[..1], now));
        assert!(one.starts_with("online list (0 peers):\ndetached (1 session):\n"), "{one}");
    }

    #[test]
    fn online_list_counts_peers_in_good_english() {
        let now = Instant::now();
        assert_eq!(printed(Format::Text, |o| o.online_list(&[], &[], now)), "online list (0 peers):\n");
        let one = printed(Format::Text, |o| o.online_list(&[peer("a", now)], &[], now));
        assert!(one.starts_with("online list (1 peer):\n"), "{one}");
    }

    #[test]
    fn online_list_json_has_every_field() {
        let start = Instant::now();
        let now = start + Duration::from_millis(1_234);
        let mut a = peer("a", start);
        a.last_rtt = Some(Duration::from_micros(1_200));
        let mut b = peer("b", now);
        b.tls = true;
        let line = printed(Format::Json, |o| o.online_list(&[a, b], &[], now));
        assert!(line.starts_with("{\"event\":\"online_list\","), "{line}");
        let value = json(&line);
        let peers = value["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0]["id"], "a");
        assert_eq!(peers[0]["addr"], "127.0.0.1:5555");
        assert_eq!(peers[0]["session"], "0a1b2c3d1");
        assert_eq!(peers[0]["misses"], 0);
        assert_eq!(peers[0]["rtt_ms"], 1.2);
        assert_eq!(peers[0]["connected_ms"], 1234);
        assert!(peers[1]["rtt_ms"].is_null());
        assert_eq!((peers[0]["tls"].as_bool(), peers[1]["tls"].as_bool()), (Some(false), Some(true)));
        assert_eq!(
            printed(Format::Json, |o| o.online_list(&[], &[], now)),
            "{\"event\":\"online_list\",\"peers\":[],\"detached\":[]}\n"
        );
    }

    #[test]
    fn online_list_json_lists_the_detached_sessions() {
        let now = Instant::now();
        let detached = [kept("desk-9", Duration::from_micros(119_800_900), 2, 10), kept("b", Duration::ZERO, 0, 0)];
        let value = json(&printed(Format::Json, |o| o.online_list(&[], &detached, now)));
        let kept = value["detached"].as_array().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0]["id"], "desk-9");
        assert_eq!(kept[0]["session"], "0a1b2c3d7");
        assert_eq!(kept[0]["left_ms"], 119_800);
        assert_eq!(kept[0]["queued"], 2);
        assert_eq!(kept[0]["bytes"], 10);
        assert_eq!(kept[1]["left_ms"], 0);
    }

    #[test]
    fn shutdown_line() {
        assert_eq!(printed(Format::Text, |o| o.shutdown()), "shutdown\n");
        assert_eq!(printed(Format::Json, |o| o.shutdown()), "{\"event\":\"shutdown\"}\n");
    }
}
