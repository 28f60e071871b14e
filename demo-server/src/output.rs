//! What the server prints on stdout: one line per event, as text for people or JSON for
//! programs, and the online list after changes (at most every 100 ms, see `serve.rs`).
//!
//! The line formats are an interface (the end-to-end tests read them):
//!
//! | event       | text                                            | json                                                                 |
//! |-------------|-------------------------------------------------|----------------------------------------------------------------------|
//! | listening   | `listening on 127.0.0.1:7878`                   | `{"event":"listening","addr":"127.0.0.1:7878"}`                      |
//! | online      | `online  desk-42 127.0.0.1:5555 session 0a1b2`  | `{"event":"online","peer":"desk-42","addr":"…","session":"0a1b2"}`   |
//! | offline     | `offline desk-42 (evicted after 4 missed pulses)` | `{"event":"offline","peer":"desk-42","reason":"timeout","detail":"…"}` |
//! | message     | `message desk-42: hello`                        | `{"event":"message","peer":"desk-42","text":"hello"}`                |
//! | online list | `online list (1 peer):` and a table             | `{"event":"online_list","peers":[{"id":…,"addr":…,"session":…,"misses":0,"rtt_ms":1.2,"connected_ms":1234}]}` |
//! | shutdown    | `shutdown`                                      | `{"event":"shutdown"}`                                               |

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pulsewire::{PeerInfo, ServerEvent};
use serde_json::Value;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines and a table for people.
    Text,
    /// One JSON object per line, its `event` field first.
    Json,
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

    /// The server listens on `addr`.
    pub fn listening(&mut self, addr: SocketAddr) -> io::Result<()> {
        let text = match self.format {
            Format::Text => format!("listening on {addr}"),
            Format::Json => object(&[("event", string("listening")), ("addr", string(&addr.to_string()))]),
        };
        self.emit(&text)
    }

    /// One server event, held until [`Output::flush`].
    pub fn event(&mut self, event: &ServerEvent) -> io::Result<()> {
        let text = match self.format {
            Format::Text => event_text(event),
            Format::Json => event_json(event),
        };
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Writes out the event lines held so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The online list as of `now`.
    pub fn online_list(&mut self, peers: &[PeerInfo], now: Instant) -> io::Result<()> {
        match self.format {
            Format::Text => {
                let text = online_list_text(peers, now);
                self.emit(&text)
            }
            Format::Json => {
                // Written peer by peer: a list of 19 000 peers is 3 MB of JSON, and building it
                // as one string cost several copies of that, which the allocator then kept.
                let mut out = io::BufWriter::with_capacity(64 * 1024, &mut self.out);
                write_online_list_json(&mut out, peers, now)?;
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

fn event_text(event: &ServerEvent) -> String {
    match event {
        ServerEvent::PeerOnline { peer } => {
            format!("online  {} {} session {}", peer.id, peer.addr, peer.session)
        }
        ServerEvent::PeerOffline { peer, reason } => format!("offline {} ({reason})", peer.id),
        ServerEvent::Message { peer, payload } => {
            format!("message {peer}: {}", printable(&String::from_utf8_lossy(payload)))
        }
    }
}

fn event_json(event: &ServerEvent) -> String {
    match event {
        ServerEvent::PeerOnline { peer } => object(&[
            ("event", string("online")),
            ("peer", string(peer.id.as_str())),
            ("addr", string(&peer.addr.to_string())),
            ("session", string(peer.session.as_str())),
        ]),
        ServerEvent::PeerOffline { peer, reason } => object(&[
            ("event", string("offline")),
            ("peer", string(peer.id.as_str())),
            ("reason", string(reason.word())),
            ("detail", string(&reason.to_string())),
        ]),
        ServerEvent::Message { peer, payload } => object(&[
            ("event", string("message")),
            ("peer", string(peer.as_str())),
            ("text", string(&String::from_utf8_lossy(payload))),
        ]),
    }
}

fn online_list_text(peers: &[PeerInfo], now: Instant) -> String {
    let noun = if peers.len() == 1 { "peer" } else { "peers" };
    let mut text = format!("online list ({} {noun}):", peers.len());
    if peers.is_empty() {
        return text;
    }
    let header = ["id", "address", "session", "connected for", "last rtt", "misses"].map(str::to_owned);
    let rows: Vec<[String; 6]> = peers
        .iter()
        .map(|peer| {
            [
                peer.id.to_string(),
                peer.addr.to_string(),
                peer.session.to_string(),
                age(now.saturating_duration_since(peer.connected_since)),
                peer.last_rtt.map_or_else(|| "-".to_owned(), |rtt| format!("{rtt:.1?}")),
                peer.misses.to_string(),
            ]
        })
        .collect();
    let mut widths = [0usize; 6];
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
    text
}

fn write_online_list_json(out: &mut impl Write, peers: &[PeerInfo], now: Instant) -> io::Result<()> {
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
        let connected =
            u64::try_from(now.saturating_duration_since(peer.connected_since).as_millis()).unwrap_or(u64::MAX);
        write!(out, ",\"connected_ms\":{connected}}}")?;
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

/// How long a peer has been online, short: `850.0ms`, `12.3s`, then `1m 5s`, `2h 3m 4s`.
fn age(duration: Duration) -> String {
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
    use pulsewire::OfflineReason;

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
        }
    }

    fn printed(format: Format, print: impl FnOnce(&mut Output<Vec<u8>>) -> io::Result<()>) -> String {
        let mut output = Output::new(format, Vec::new());
        print(&mut output).unwrap();
        String::from_utf8(output.into_inner()).unwrap()
    }

    fn json(line: &str) -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    fn offline(reason: OfflineReason) -> ServerEvent {
        ServerEvent::PeerOffline { peer: peer("desk-42", Instant::now()), reason }
    }

    #[test]
    fn listening_line_carries_the_address() {
        let addr = "127.0.0.1:40123".parse().unwrap();
        assert_eq!(printed(Format::Text, |o| o.listening(addr)), "listening on 127.0.0.1:40123\n");
        assert_eq!(
            printed(Format::Json, |o| o.listening(addr)),
            "{\"event\":\"listening\",\"addr\":\"127.0.0.1:40123\"}\n"
        );
    }

    #[test]
    fn online_event_prints_id_address_and_session() {
        let event = ServerEvent::PeerOnline { peer: peer("desk-42", Instant::now()) };
        assert_eq!(printed(Format::Text, |o| o.event(&event)), "online  desk-42 127.0.0.1:5555 session 0a1b2c3d1\n");
        assert_eq!(
            printed(Format::Json, |o| o.event(&event)),
            "{\"event\":\"online\",\"peer\":\"desk-42\",\"addr\":\"127.0.0.1:5555\",\"session\":\"0a1b2c3d1\"}\n"
        );
    }

    #[test]
    fn offline_json_line_has_the_reason_word_and_its_detail() {
        let event = offline(OfflineReason::Timeout { misses: 4 });
        let line = printed(Format::Json, |o| o.event(&event));
        assert!(line.starts_with("{\"event\":\"offline\","), "{line}");
        let value = json(&line);
        assert_eq!(value["peer"], "desk-42");
        assert_eq!(value["reason"], "timeout");
        assert_eq!(value["detail"], "evicted after 4 missed pulses");
        assert_eq!(printed(Format::Text, |o| o.event(&event)), "offline desk-42 (evicted after 4 missed pulses)\n");
    }

    #[test]
    fn every_offline_reason_has_its_own_word() {
        let reasons = [
            OfflineReason::Goodbye { reason: "quit".into() },
            OfflineReason::Timeout { misses: 4 },
            OfflineReason::Stalled,
            OfflineReason::WriteTimeout,
            OfflineReason::Replaced,
            OfflineReason::Eof,
            OfflineReason::Reset,
            OfflineReason::Shutdown,
        ];
        let words: Vec<_> = reasons.iter().map(OfflineReason::word).collect();
        assert_eq!(words, ["goodbye", "timeout", "stalled", "write-timeout", "replaced", "eof", "reset", "shutdown"]);
        let line = printed(Format::Json, |o| o.event(&offline(OfflineReason::Goodbye { reason: "quit".into() })));
        assert_eq!(json(&line)["detail"], "goodbye (quit)");
    }

    #[test]
    fn message_is_lossy_utf8_and_escaped_in_json() {
        let event = ServerEvent::Message {
            peer: ClientId::new("desk-42").unwrap(),
            payload: b"say \"hi\"\n\xff".to_vec().into(),
        };
        let line = printed(Format::Json, |o| o.event(&event));
        assert_eq!(line.lines().count(), 1);
        assert_eq!(json(&line)["text"], "say \"hi\"\n\u{fffd}");
        assert_eq!(printed(Format::Text, |o| o.event(&event)), "message desk-42: say \"hi\"\\n\u{fffd}\n");
    }

    #[test]
    fn text_message_stays_on_one_line_and_never_reaches_the_terminal_raw() {
        let event = ServerEvent::Message {
            peer: ClientId::new("desk-42").unwrap(),
            payload: "hello\r\n\u{1b}[2Jbye".as_bytes().to_vec().into(),
        };
        assert_eq!(printed(Format::Text, |o| o.event(&event)), "message desk-42: hello\\r\\n\\u{1b}[2Jbye\n");
    }

    #[test]
    fn online_list_table_renders_one_aligned_row_per_peer() {
        let start = Instant::now();
        let now = start + Duration::from_secs(3_723);
        let mut a = peer("a", now - Duration::from_millis(12_300));
        a.last_rtt = Some(Duration::from_micros(1_234));
        let mut long = peer("desk-long-name", start);
        long.misses = 2;
        let table = printed(Format::Text, |o| o.online_list(&[a, long], now));
        let expected = "\
online list (2 peers):
  id              address         session    connected for  last rtt  misses
  a               127.0.0.1:5555  0a1b2c3d1  12.3s          1.2ms     0
  desk-long-name  127.0.0.1:5555  0a1b2c3d1  1h 2m 3s       -         2
";
        assert_eq!(table, expected);
    }

    #[test]
    fn online_list_counts_peers_in_good_english() {
        let now = Instant::now();
        assert_eq!(printed(Format::Text, |o| o.online_list(&[], now)), "online list (0 peers):\n");
        let one = printed(Format::Text, |o| o.online_list(&[peer("a", now)], now));
        assert!(one.starts_with("online list (1 peer):\n"), "{one}");
    }

    #[test]
    fn online_list_json_has_every_field() {
        let start = Instant::now();
        let now = start + Duration::from_millis(1_234);
        let mut a = peer("a", start);
        a.last_rtt = Some(Duration::from_micros(1_200));
        let b = peer("b", now);
        let line = printed(Format::Json, |o| o.online_list(&[a, b], now));
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
        assert_eq!(printed(Format::Json, |o| o.online_list(&[], now)), "{\"event\":\"online_list\",\"peers\":[]}\n");
    }

    #[test]
    fn shutdown_line() {
        assert_eq!(printed(Format::Text, |o| o.shutdown()), "shutdown\n");
        assert_eq!(printed(Format::Json, |o| o.shutdown()), "{\"event\":\"shutdown\"}\n");
    }
}
