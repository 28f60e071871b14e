//! The frame decoder: bytes in, frames out. "Need more bytes" is `Ok(None)`, not an error.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::frame::{
    is_token, ClientId, ErrorCode, Frame, Resume, ResumeSecret, SessionId, Token, WelcomeResume, MAX_HELLO_LINE,
    MAX_LINE, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

// The message of `UnsupportedVersion` names the two versions this side speaks.
const _: () = assert!(PROTOCOL_VERSION == MIN_PROTOCOL_VERSION + 1, "reword UnsupportedVersion's message");

/// Why a byte stream is not valid pulsewire. Each maps to the [`ErrorCode`] the receiver sends
/// back before closing ([`DecodeError::code`]). No error shows a token or a resume secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// No newline within the first [`MAX_LINE`] bytes of a control line ([`MAX_HELLO_LINE`] for
    /// a line starting with `HELLO `).
    LineTooLong {
        /// The limit, newline included.
        limit: usize,
    },
    /// A `DATA` header announced more bytes than the receiver accepts (raised before reading them).
    PayloadTooLarge {
        /// The announced length.
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// A control line holding bytes outside printable ASCII.
    NotAscii,
    /// A verb this version does not know (the reserved `AUTH`, `AUTHED`, `WATCH`, `ONLINE`,
    /// `OFFLINE` and `LIST` included).
    UnknownVerb(String),
    /// A known verb with missing, extra or unparsable arguments.
    BadArgument {
        /// The verb of the offending line.
        verb: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// A `HELLO` or `WELCOME` whose `key=value` options break the rules: a repeated key, an
    /// empty value, a key that is not `[a-z]+`, a bad or missing value of a known key.
    ///
    /// ```
    /// use pulsewire::protocol::{DecodeError, Decoder, ErrorCode};
    ///
    /// let mut decoder = Decoder::new(1024);
    /// decoder.extend(b"HELLO 2 desk-42 token=\n");
    /// let error = decoder.next_frame().unwrap_err();
    /// assert_eq!(error, DecodeError::BadOption { verb: "HELLO", detail: "empty value" });
    /// assert_eq!(error.code(), ErrorCode::Malformed);
    /// ```
    BadOption {
        /// The verb of the offending line.
        verb: &'static str,
        /// What is wrong with its options (never their values).
        detail: &'static str,
    },
    /// A `HELLO` whose client id breaks the id rules.
    BadClientId,
    /// A `HELLO` for a protocol version this side does not speak.
    UnsupportedVersion {
        /// The version asked for (`u64::MAX` for anything larger).
        version: u64,
    },
}

impl DecodeError {
    /// The code the receiving side answers with before it closes.
    ///
    /// ```
    /// use pulsewire::protocol::{DecodeError, ErrorCode};
    /// assert_eq!(DecodeError::LineTooLong { limit: 1024 }.code(), ErrorCode::TooLarge);
    /// ```
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::LineTooLong { .. } | DecodeError::PayloadTooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::BadClientId => ErrorCode::BadId,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::Version,
            DecodeError::NotAscii
            | DecodeError::UnknownVerb(_)
            | DecodeError::BadArgument { .. }
            | DecodeError::BadOption { .. } => ErrorCode::Malformed,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::LineTooLong { limit } => {
                write!(f, "control line longer than {limit} bytes")
            }
            DecodeError::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::NotAscii => f.write_str("control line is not printable ascii"),
            DecodeError::UnknownVerb(verb) => write!(f, "unknown verb {verb:?}"),
            DecodeError::BadArgument { verb, detail } => write!(f, "bad {verb} line: {detail}"),
            DecodeError::BadOption { verb, detail } => write!(f, "bad {verb} option: {detail}"),
            DecodeError::UnsupportedVersion { version } => write!(
                f,
                "protocol version {version} is not supported (this side speaks {MIN_PROTOCOL_VERSION} and \
                 {PROTOCOL_VERSION})"
            ),
            DecodeError::BadClientId => f.write_str("client id must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Turns a byte stream into [`Frame`]s, of either protocol version.
///
/// Feed it whatever the socket returned, split anywhere, and take frames out until it says it
/// needs more bytes. It never holds more than one line ([`MAX_LINE`] bytes, [`MAX_HELLO_LINE`]
/// for a `HELLO`) or one payload of `max_payload` bytes beyond what it was given; a stream that
/// breaks those limits is an error before the excess is buffered. After an error the stream
/// cannot be trusted: every later call returns the same error.
///
/// It does not know which version the connection speaks: `DATA <len>` decodes with `seq: None`
/// and `DATA <len> <seq>` with `Some`, and the connection refuses the form its version lacks.
///
/// ```
/// use pulsewire::protocol::{Decoder, Frame};
///
/// let mut decoder = Decoder::new(1024);
/// decoder.extend(b"PULSE 1\nDATA 5 1\nhel");
/// assert_eq!(decoder.next_frame(), Ok(Some(Frame::Pulse { seq: 1 })));
/// assert_eq!(decoder.next_frame(), Ok(None)); // the payload is not complete yet
/// decoder.extend(b"lo");
/// assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data { seq: Some(1), payload: "hello".into() })));
/// ```
pub struct Decoder {
    buf: BytesMut,
    max_payload: usize,
    /// A `DATA` header consumed whose payload bytes are still due.
    payload: Option<PayloadDue>,
    /// How far into `buf` a newline has already been looked for.
    scanned: usize,
    /// Where the region handed out by `read_buf` starts, while it is outstanding.
    unfilled: Option<usize>,
    /// Boxed: a server holds a decoder per connection, and almost none ever fails.
    failed: Option<Box<DecodeError>>,
}

/// The payload a `DATA` header announced.
#[derive(Debug, Clone, Copy)]
struct PayloadDue {
    len: usize,
    seq: Option<u64>,
}

impl fmt::Debug for Decoder {
    /// Never the bytes held: a `HELLO` in the buffer carries a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("max_payload", &self.max_payload)
            .field("payload_due", &self.payload.map(|due| due.len))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// How many bytes [`Decoder::read_buf`] offers at least.
const READ_CHUNK: usize = 512;

impl Decoder {
    /// A decoder accepting `DATA` payloads of up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Decoder {
        Decoder { buf: BytesMut::new(), max_payload, payload: None, scanned: 0, unfilled: None, failed: None }
    }

    /// The payload limit this decoder enforces.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// How many received bytes wait for the rest of their frame (0 between frames).
    ///
    /// ```
    /// use pulsewire::protocol::Decoder;
    ///
    /// let mut decoder = Decoder::new(64);
    /// decoder.extend(b"PULSE 1\nPUL");
    /// assert!(decoder.next_frame().unwrap().is_some());
    /// assert_eq!(decoder.next_frame(), Ok(None));
    /// assert_eq!(decoder.buffered(), 3);
    /// ```
    pub fn buffered(&self) -> usize {
        match self.unfilled {
            Some(start) => start,
            None => self.buf.len(),
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.close_region();
        self.buf.extend_from_slice(bytes);
    }

    /// A writable region at the end of the buffer, for reading from a socket without an extra
    /// copy; report how much was written with [`Decoder::filled`].
    ///
    /// ```
    /// use pulsewire::protocol::{Decoder, Frame};
    ///
    /// let mut decoder = Decoder::new(64);
    /// let region = decoder.read_buf();
    /// region[..8].copy_from_slice(b"ALIVE 3\n");
    /// decoder.filled(8);
    /// assert_eq!(decoder.next_frame(), Ok(Some(Frame::Alive { seq: 3 })));
    /// ```
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.close_region();
        let start = self.buf.len();
        let want = match self.payload.map(|due| due.len) {
            // Read a large payload in large steps, but never more than it still needs.
            Some(due) => due.saturating_sub(start).clamp(READ_CHUNK, 64 * 1024),
            None => READ_CHUNK,
        };
        self.buf.resize(start + want, 0);
        self.unfilled = Some(start);
        &mut self.buf[start..]
    }

    /// Keeps the first `n` bytes of the region [`Decoder::read_buf`] returned. A region that is
    /// never reported (say, the read was cancelled) counts as empty.
    pub fn filled(&mut self, n: usize) {
        if let Some(start) = self.unfilled.take() {
            self.buf.truncate((start + n).min(self.buf.len()));
        }
    }

    fn close_region(&mut self) {
        self.filled(0);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        self.close_region();
        if let Some(error) = &self.failed {
            return Err(DecodeError::clone(error));
        }
        let result = self.decode();
        if let Err(error) = &result {
            self.failed = Some(Box::new(error.clone()));
        }
        // Between frames a decoder holds no memory: a server with thousands of idle peers
        // keeps no buffer per peer, and allocating one for the next read costs far less than
        // the read itself.
        // (An empty buffer whose last line was split off may have no capacity and still hold
        // the allocation it shares with that line: it goes too.)
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        result
    }

    /// The next frame of a connection that speaks version 1: like [`Decoder::next_frame`], but
    /// the forms only version 2 has (`DATA <len> <seq>`, `ACK`, `WELCOME` with options) fail as
    /// a version-1 decoder failed them. A `HELLO` of any version passes: the handshake answers
    /// its version.
    pub(crate) fn next_version_1_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let frame = self.next_frame()?;
        let error = match &frame {
            Some(Frame::Data { seq: Some(_), .. }) => {
                DecodeError::BadArgument { verb: "DATA", detail: "expected DATA <len>" }
            }
            Some(Frame::Ack { .. }) => DecodeError::UnknownVerb("ACK".to_owned()),
            Some(Frame::Welcome { resume: Some(_), .. }) => DecodeError::BadArgument {
                verb: "WELCOME",
                detail: "expected WELCOME <session-id> <interval-ms> <max-missed>",
            },
            _ => return Ok(frame),
        };
        self.failed = Some(Box::new(error.clone()));
        Err(error)
    }

    fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(PayloadDue { len, seq }) = self.payload {
            if self.buf.len() < len {
                return Ok(None);
            }
            self.payload = None;
            let payload = self.buf.split_to(len).freeze();
            return Ok(Some(Frame::Data { seq, payload }));
        }
        // The first bytes of the line decide its limit; a line shorter than `HELLO ` is under
        // either limit, so deciding before they are all in costs nothing.
        let limit = if self.buf.starts_with(b"HELLO ") { MAX_HELLO_LINE } else { MAX_LINE };
        let window = self.buf.len().min(limit);
        let Some(newline) = self.buf[self.scanned.min(window)..window].iter().position(|&b| b == b'\n') else {
            if self.buf.len() >= limit {
                return Err(DecodeError::LineTooLong { limit });
            }
            self.scanned = window;
            return Ok(None);
        };
        let end = self.scanned.min(window) + newline;
        self.scanned = 0;
        let line = self.buf.split_to(end + 1);
        let line = &line[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match parse_line(line, self.max_payload)? {
            Parsed::Frame(frame) => Ok(Some(frame)),
            Parsed::DataHeader { len: 0, seq } => Ok(Some(Frame::Data { seq, payload: Bytes::new() })),
            Parsed::DataHeader { len, seq } => {
                // No room is reserved up front: the buffer grows only as the bytes arrive.
                self.payload = Some(PayloadDue { len, seq });
                self.decode()
            }
        }
    }
}

enum Parsed {
    Frame(Frame),
    DataHeader { len: usize, seq: Option<u64> },
}

fn bad(verb: &'static str, detail: &'static str) -> DecodeError {
    DecodeError::BadArgument { verb, detail }
}

fn bad_option(verb: &'static str, detail: &'static str) -> DecodeError {
    DecodeError::BadOption { verb, detail }
}

fn parse_line(line: &[u8], max_payload: usize) -> Result<Parsed, DecodeError> {
    if !line.iter().all(|&b| (b' '..=b'~').contains(&b)) {
        return Err(DecodeError::NotAscii);
    }
    // Checked above: every byte is ASCII, so this cannot fail.
    let line = std::str::from_utf8(line).map_err(|_| DecodeError::NotAscii)?;
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, Some(rest)),
        None => (line, None),
    };
    let frame = match verb {
        "HELLO" => parse_hello(rest)?,
        "WELCOME" => parse_welcome(rest)?,
        "PULSE" => {
            let [seq] = words::<1>(rest).ok_or(bad("PULSE", "expected PULSE <seq>"))?;
            Frame::Pulse { seq: number(seq).ok_or(bad("PULSE", "seq is not a number"))? }
        }
        "ALIVE" => {
            let [seq] = words::<1>(rest).ok_or(bad("ALIVE", "expected ALIVE <seq>"))?;
            Frame::Alive { seq: number(seq).ok_or(bad("ALIVE", "seq is not a number"))? }
        }
        "DATA" => {
            let (len, seq) = match (words::<1>(rest), words::<2>(rest)) {
                (Some([len]), _) => (len, None),
                (None, Some([len, seq])) => (len, Some(seq)),
                (None, None) => return Err(bad("DATA", "expected DATA <len> or DATA <len> <seq>")),
            };
            let len = big_number(len).ok_or(bad("DATA", "length is not a number"))?;
            let seq = seq.map(|seq| number(seq).ok_or(bad("DATA", "seq is not a number"))).transpose()?;
            return match usize::try_from(len) {
                Ok(len) if len <= max_payload => Ok(Parsed::DataHeader { len, seq }),
                _ => Err(DecodeError::PayloadTooLarge { len, max: max_payload }),
            };
        }
        "ACK" => {
            let [seq] = words::<1>(rest).ok_or(bad("ACK", "expected ACK <seq>"))?;
            Frame::Ack { seq: number(seq).ok_or(bad("ACK", "seq is not a number"))? }
        }
        "BYE" => match rest {
            None => Frame::Bye { reason: String::new() },
            Some(word) if is_token(word) => Frame::Bye { reason: word.to_owned() },
            Some(_) => return Err(bad("BYE", "expected BYE <reason-word>")),
        },
        "ERROR" => {
            let (code, text) = match rest {
                None => return Err(bad("ERROR", "expected ERROR <code> <text>")),
                Some(rest) => rest.split_once(' ').unwrap_or((rest, "")),
            };
            let code = ErrorCode::parse(code).ok_or(bad("ERROR", "code must be a lowercase word"))?;
            Frame::Error { code, text: text.to_owned() }
        }
        // Unknown, or reserved for a later version (`AUTH`, `AUTHED`, `WATCH`, `ONLINE`,
        // `OFFLINE`, `LIST`): malformed today.
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(DecodeError::UnknownVerb(shown));
        }
    };
    Ok(Parsed::Frame(frame))
}

/// `HELLO 1 <client-id>` or `HELLO 2 <client-id> [token=<t>] [resume=<secret> rx=<n>]`.
fn parse_hello(rest: Option<&str>) -> Result<Frame, DecodeError> {
    // The version comes first and decides how the rest reads: a later version may carry more
    // arguments, and must get `version`, not `malformed`.
    let (version, after) = match rest {
        Some(rest) => rest.split_once(' ').map_or((rest, None), |(v, after)| (v, Some(after))),
        None => ("", None),
    };
    let version = big_number(version).ok_or(bad("HELLO", "version is not a number"))?;
    let (version, id, options) = match version {
        1 => {
            let [id] = words::<1>(after).ok_or(bad("HELLO", "expected HELLO <version> <client-id>"))?;
            (1, id, None)
        }
        2 => {
            let ([id], options) = fields::<1>(after).ok_or(bad("HELLO", "expected HELLO <version> <client-id>"))?;
            (2, id, options)
        }
        _ => return Err(DecodeError::UnsupportedVersion { version }),
    };
    let client_id = ClientId::new(id).map_err(|_| DecodeError::BadClientId)?;
    let [token, secret, rx] = options_of("HELLO", options, ["token", "resume", "rx"])?;
    let token = token.map(|token| Token::new(token).ok_or(bad_option("HELLO", "invalid token"))).transpose()?;
    let resume = match (secret, rx) {
        (None, None) => None,
        (Some(secret), Some(rx)) => Some(Resume {
            secret: ResumeSecret::new(secret).ok_or(bad_option("HELLO", "invalid resume secret"))?,
            rx: number(rx).ok_or(bad_option("HELLO", "rx is not a number"))?,
        }),
        _ => return Err(bad_option("HELLO", "resume and rx come together or not at all")),
    };
    Ok(Frame::Hello { version, client_id, token, resume })
}

/// `WELCOME <session-id> <interval-ms> <max-missed>`, in version 2 followed by
/// `resumed=<0|1> rx=<n> resume=<secret> keep=<ms> [exp=<s>]`.
fn parse_welcome(rest: Option<&str>) -> Result<Frame, DecodeError> {
    let ([session, interval, max_missed], options) =
        fields::<3>(rest).ok_or(bad("WELCOME", "expected WELCOME <session-id> <interval-ms> <max-missed>"))?;
    let session = SessionId::new(session).ok_or(bad("WELCOME", "invalid session id"))?;
    let interval =
        number(interval).filter(|&ms| ms > 0).ok_or(bad("WELCOME", "interval must be a positive number of ms"))?;
    let max_missed =
        number(max_missed).and_then(|n| u32::try_from(n).ok()).ok_or(bad("WELCOME", "max-missed is not a number"))?;
    let interval = Duration::from_millis(interval);
    if options.is_none() {
        return Ok(Frame::Welcome { session, interval, max_missed, resume: None });
    }
    let [resumed, rx, secret, keep, exp] = options_of("WELCOME", options, ["resumed", "rx", "resume", "keep", "exp"])?;
    fn required<'a>(value: Option<&'a str>, missing: &'static str) -> Result<&'a str, DecodeError> {
        value.ok_or(bad_option("WELCOME", missing))
    }
    let resumed = match required(resumed, "missing resumed")? {
        "0" => false,
        "1" => true,
        _ => return Err(bad_option("WELCOME", "resumed must be 0 or 1")),
    };
    let rx = number(required(rx, "missing rx")?).ok_or(bad_option("WELCOME", "rx is not a number"))?;
    let secret = required(secret, "missing resume")?;
    let secret = ResumeSecret::new(secret).ok_or(bad_option("WELCOME", "invalid resume secret"))?;
    let keep = number(required(keep, "missing keep")?).ok_or(bad_option("WELCOME", "keep is not a number"))?;
    let expires_in = exp.map(|exp| number(exp).ok_or(bad_option("WELCOME", "exp is not a number"))).transpose()?;
    let resume = WelcomeResume {
        resumed,
        rx,
        secret,
        keep: Duration::from_millis(keep),
        expires_in: expires_in.map(Duration::from_secs),
    };
    Ok(Frame::Welcome { session, interval, max_missed, resume: Some(resume) })
}

/// The values of the `known` keys among `key=value` options separated by single spaces, in
/// any order, each key at most once; other keys are checked, then ignored.
fn options_of<'a, const N: usize>(
    verb: &'static str,
    options: Option<&'a str>,
    known: [&str; N],
) -> Result<[Option<&'a str>; N], DecodeError> {
    let mut values = [None; N];
    let Some(options) = options else {
        return Ok(values);
    };
    // Only an unknown key allocates: a line of later options still has its repeats found.
    let mut unknown = Vec::new();
    for option in options.split(' ') {
        let (key, value) = option.split_once('=').ok_or(bad_option(verb, "expected key=value"))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(bad_option(verb, "a key must be lowercase letters a-z"));
        }
        // The line is printable ASCII split at spaces: a value is valid once it is not empty.
        if value.is_empty() {
            return Err(bad_option(verb, "empty value"));
        }
        match known.iter().position(|&name| name == key) {
            Some(slot) if values[slot].is_some() => return Err(bad_option(verb, "repeated key")),
            Some(slot) => values[slot] = Some(value),
            None => unknown.push(key),
        }
    }
    unknown.sort_unstable();
    if unknown.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(bad_option(verb, "repeated key"));
    }
    Ok(values)
}

/// Exactly `N` words separated by single spaces.
fn words<const N: usize>(rest: Option<&str>) -> Option<[&str; N]> {
    let mut parts = rest?.split(' ');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next().filter(|w| !w.is_empty())?;
    }
    parts.next().is_none().then_some(out)
}

/// `N` words separated by single spaces, then whatever follows the next space (the options).
fn fields<const N: usize>(rest: Option<&str>) -> Option<([&str; N], Option<&str>)> {
    let mut parts = rest?.splitn(N + 1, ' ');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next().filter(|w| !w.is_empty())?;
    }
    Some((out, parts.next()))
}

/// A plain decimal u64: digits only, no sign, no leading zeros beyond a lone `0`.
fn number(word: &str) -> Option<u64> {
    canonical(word).then(|| word.parse().ok()).flatten()
}

/// Like [`number`], but a canonical number above `u64::MAX` reads as `u64::MAX`: for values
/// where "too big" has its own answer (a payload length, a protocol version).
fn big_number(word: &str) -> Option<u64> {
    canonical(word).then(|| word.parse().unwrap_or(u64::MAX))
}

fn canonical(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) && (word == "0" || !word.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut decoder = Decoder::new(16);
        decoder.extend(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn every_verb_decodes() {
        let frames = decode_all(
            b"HELLO 1 desk-42\nWELCOME 7f3a9c 1000 3\nPULSE 1\nALIVE 18446744073709551615\nDATA 2\nhiBYE quit\nERROR timeout no pulse for 4 s\nBYE\nERROR full\n",
        )
        .unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Hello { version: 1, client_id: ClientId::new("desk-42").unwrap(), token: None, resume: None },
                Frame::Welcome {
                    session: SessionId::new("7f3a9c").unwrap(),
                    interval: Duration::from_millis(1000),
                    max_missed: 3,
                    resume: None,
                },
                Frame::Pulse { seq: 1 },
                Frame::Alive { seq: u64::MAX },
                Frame::data("hi"),
                Frame::Bye { reason: "quit".into() },
                Frame::Error { code: ErrorCode::Timeout, text: "no pulse for 4 s".into() },
                Frame::Bye { reason: String::new() },
                Frame::Error { code: ErrorCode::Full, text: String::new() },
            ]
        );
    }

    #[test]
    fn carriage_return_before_newline_is_dropped() {
        assert_eq!(decode_all(b"PULSE 4\r\n").unwrap(), vec![Frame::Pulse { seq: 4 }]);
    }

    #[test]
    fn partial_line_waits_for_more_bytes() {
        let mut decoder = Decoder::new(16);
        decoder.extend(b"PUL");
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.extend(b"SE 9");
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.extend(b"\n");
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Pulse { seq: 9 })));
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
        let text = "x".repeat(MAX_LINE - "ERROR malformed \n".len());
        let line = format!("ERROR malformed {text}\n");
        assert_eq!(line.len(), MAX_LINE);
        assert!(decode_all(line.as_bytes()).is_ok());
        let line = format!("ERROR malformed {text}y\n");
        assert_eq!(decode_all(line.as_bytes()), Err(DecodeError::LineTooLong { limit: MAX_LINE }));
    }

    #[test]
    fn endless_line_fails_once_the_limit_is_buffered() {
        let mut decoder = Decoder::new(16);
        decoder.extend(&[b'a'; MAX_LINE - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.extend(b"a");
        assert_eq!(decoder.next_frame(), Err(DecodeError::LineTooLong { limit: MAX_LINE }));
    }

    #[test]
    fn oversized_payload_fails_before_its_bytes_arrive() {
        assert_eq!(decode_all(b"DATA 4294967295\n"), Err(DecodeError::PayloadTooLarge { len: 4_294_967_295, max: 16 }));
        assert_eq!(decode_all(b"DATA 17\n"), Err(DecodeError::PayloadTooLarge { len: 17, max: 16 }));
        assert!(decode_all(b"DATA 16\n0123456789abcdef").is_ok());
    }

    #[test]
    fn empty_payload_is_a_frame() {
        assert_eq!(decode_all(b"DATA 0\nPULSE 1\n").unwrap(), vec![Frame::data(Bytes::new()), Frame::Pulse { seq: 1 }]);
    }

    #[test]
    fn malformed_lines_are_rejected_with_the_right_code() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"JUMP 1\n", ErrorCode::Malformed),
            (b"PULSE\n", ErrorCode::Malformed),
            (b"PULSE x\n", ErrorCode::Malformed),
            (b"PULSE -1\n", ErrorCode::Malformed),
            (b"PULSE +1\n", ErrorCode::Malformed),
            (b"PULSE 01\n", ErrorCode::Malformed),
            (b"PULSE 1 2\n", ErrorCode::Malformed),
            (b"PULSE  1\n", ErrorCode::Malformed),
            (b"PULSE 99999999999999999999\n", ErrorCode::Malformed),
            (b"pulse 1\n", ErrorCode::Malformed),
            (b"\n", ErrorCode::Malformed),
            (b"PULSE \xff\n", ErrorCode::Malformed),
            (b"PULSE 1\t\n", ErrorCode::Malformed),
            (b"HELLO one desk\n", ErrorCode::Malformed),
            (b"HELLO\n", ErrorCode::Malformed),
            (b"HELLO 0 desk\n", ErrorCode::Version),
            (b"HELLO 3 desk\n", ErrorCode::Version),
            (b"HELLO 3 desk token-from-the-future\n", ErrorCode::Version),
            (b"HELLO 3 bad/id\n", ErrorCode::Version),
            (b"HELLO 4294967298 desk\n", ErrorCode::Version),
            (b"HELLO 2 bad/id\n", ErrorCode::BadId),
            (b"HELLO 2 desk token-without-a-value\n", ErrorCode::Malformed),
            (b"HELLO 2\n", ErrorCode::Malformed),
            (b"HELLO 2 \n", ErrorCode::Malformed),
            (b"HELLO 2 desk \n", ErrorCode::Malformed),
            (b"HELLO 2 desk token=a  rx=1\n", ErrorCode::Malformed),
            (b"HELLO 02 desk\n", ErrorCode::Malformed),
            (b"HELLO 99999999999999999999999 x\n", ErrorCode::Version),
            (b"DATA 99999999999999999999999\n", ErrorCode::TooLarge),
            (b"HELLO 1 desk 42\n", ErrorCode::Malformed),
            (b"HELLO 1 desk/42\n", ErrorCode::BadId),
            (b"WELCOME s 0 3\n", ErrorCode::Malformed),
            (b"WELCOME s 10\n", ErrorCode::Malformed),
            (b"DATA\n", ErrorCode::Malformed),
            (b"DATA 1 2 3\n", ErrorCode::Malformed),
            (b"DATA 1 x\n", ErrorCode::Malformed),
            (b"DATA 1 01\n", ErrorCode::Malformed),
            (b"DATA 1  2\n", ErrorCode::Malformed),
            (b"DATA 1 2 \n", ErrorCode::Malformed),
            (b"ACK\n", ErrorCode::Malformed),
            (b"ACK x\n", ErrorCode::Malformed),
            (b"ACK 1 2\n", ErrorCode::Malformed),
            (b"ACK -1\n", ErrorCode::Malformed),
            (b"ACK 99999999999999999999\n", ErrorCode::Malformed),
            (b"ack 1\n", ErrorCode::Malformed),
            (b"WELCOME s 10 3 \n", ErrorCode::Malformed),
            (b"WELCOME s 10 3 resumed=0\n", ErrorCode::Malformed),
            (b"BYE two words\n", ErrorCode::Malformed),
            (b"ERROR\n", ErrorCode::Malformed),
            (b"ERROR BAD text\n", ErrorCode::Malformed),
        ];
        for (input, code) in cases {
            let error = decode_all(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(&error.code(), code, "{:?} gave {error}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn hello_with_a_65_character_id_is_a_bad_id() {
        let line = format!("HELLO 1 {}\n", "a".repeat(65));
        assert_eq!(decode_all(line.as_bytes()), Err(DecodeError::BadClientId));
        let line = format!("HELLO 1 {}\n", "a".repeat(64));
        assert!(decode_all(line.as_bytes()).is_ok());
    }

    #[test]
    fn error_is_sticky() {
        let mut decoder = Decoder::new(16);
        decoder.extend(b"NOPE\nPULSE 1\n");
        assert!(decoder.next_frame().is_err());
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn unknown_error_codes_are_kept() {
        assert_eq!(
            decode_all(b"ERROR rate-limited slow down\n").unwrap(),
            vec![Frame::Error { code: ErrorCode::Other("rate-limited".into()), text: "slow down".into() }]
        );
    }

    #[test]
    fn read_buf_fills_a_payload_in_place() {
        let mut decoder = Decoder::new(4096);
        decoder.extend(b"DATA 3000 7\n");
        assert_eq!(decoder.next_frame(), Ok(None));
        let mut sent = 0;
        while sent < 3000 {
            let region = decoder.read_buf();
            let n = region.len().min(3000 - sent).min(700);
            region[..n].fill(b'z');
            decoder.filled(n);
            sent += n;
        }
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data { seq: Some(7), payload: vec![b'z'; 3000].into() })));
    }

    #[test]
    fn buffer_is_released_once_drained() {
        let mut decoder = Decoder::new(1 << 20);
        decoder.extend(b"DATA 200000\n");
        decoder.extend(&vec![0; 200_000]);
        assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Data { .. }))));
        assert_eq!(decoder.buf.capacity(), 0);
        let region = decoder.read_buf();
        region[..8].copy_from_slice(b"PULSE 1\n");
        decoder.filled(8);
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Pulse { seq: 1 })));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!((decoder.buffered(), decoder.buf.capacity()), (0, 0), "no memory held between frames");
    }

    #[test]
    fn unreported_read_region_counts_as_empty() {
        let mut decoder = Decoder::new(16);
        decoder.extend(b"PULSE");
        let _ = decoder.read_buf(); // a read that was cancelled: never reported
        decoder.extend(b" 5\n");
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Pulse { seq: 5 })));
    }

    // -----------------------------------------------------------------------------------------
    // Version 2.

    fn id(id: &str) -> ClientId {
        ClientId::new(id).unwrap()
    }

    fn secret(secret: &str) -> ResumeSecret {
        ResumeSecret::new(secret).unwrap()
    }

    fn hello(version: u32, token: Option<&str>, resume: Option<(&str, u64)>) -> Frame {
        Frame::Hello {
            version,
            client_id: id("desk-42"),
            token: token.map(|t| Token::new(t).unwrap()),
            resume: resume.map(|(s, rx)| Resume { secret: secret(s), rx }),
        }
    }

    fn one(line: &[u8]) -> Result<Frame, DecodeError> {
        let mut decoder = Decoder::new(16);
        decoder.extend(line);
        let frame = decoder.next_frame()?.expect("a complete frame");
        assert_eq!(decoder.next_frame(), Ok(None), "{:?} left bytes over", String::from_utf8_lossy(line));
        Ok(frame)
    }

    fn bad_option(verb: &'static str, detail: &'static str) -> Result<Frame, DecodeError> {
        Err(DecodeError::BadOption { verb, detail })
    }

    #[test]
    fn hello_2_decodes_with_every_combination_of_options_in_any_order() {
        let cases: &[(&[u8], Frame)] = &[
            (b"HELLO 2 desk-42\n", hello(2, None, None)),
            (b"HELLO 2 desk-42 token=eyJ.x-y_z\n", hello(2, Some("eyJ.x-y_z"), None)),
            (b"HELLO 2 desk-42 resume=Q2F0 rx=0\n", hello(2, None, Some(("Q2F0", 0)))),
            (b"HELLO 2 desk-42 rx=18446744073709551615 resume=Q2F0\n", hello(2, None, Some(("Q2F0", u64::MAX)))),
            (b"HELLO 2 desk-42 token=t resume=s rx=1\n", hello(2, Some("t"), Some(("s", 1)))),
            (b"HELLO 2 desk-42 rx=1 token=t resume=s\r\n", hello(2, Some("t"), Some(("s", 1)))),
        ];
        for (line, frame) in cases {
            assert_eq!(one(line).as_ref(), Ok(frame), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn an_option_value_may_contain_equals_signs() {
        assert_eq!(one(b"HELLO 2 desk-42 token=a=b==\n"), Ok(hello(2, Some("a=b=="), None)));
        assert_eq!(one(b"HELLO 2 desk-42 resume==x= rx=3\n"), Ok(hello(2, None, Some(("=x=", 3)))));
    }

    #[test]
    fn unknown_option_keys_are_ignored() {
        assert_eq!(one(b"HELLO 2 desk-42 zone=eu token=t later=a=b\n"), Ok(hello(2, Some("t"), None)));
        // A key known to WELCOME means nothing in HELLO.
        assert_eq!(one(b"HELLO 2 desk-42 keep=5 resumed=1\n"), Ok(hello(2, None, None)));
        let welcome = one(b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=1 token=x future=yes\n").unwrap();
        assert!(matches!(welcome, Frame::Welcome { resume: Some(_), .. }));
    }

    #[test]
    fn broken_options_are_bad_options() {
        let cases: &[(&[u8], &str)] = &[
            (b"HELLO 2 desk-42 token=a token=b\n", "repeated key"),
            (b"HELLO 2 desk-42 token=a token=a\n", "repeated key"),
            (b"HELLO 2 desk-42 zone=a token=t zone=b\n", "repeated key"),
            (b"HELLO 2 desk-42 token=\n", "empty value"),
            (b"HELLO 2 desk-42 zone=\n", "empty value"),
            (b"HELLO 2 desk-42 =value\n", "a key must be lowercase letters a-z"),
            (b"HELLO 2 desk-42 Token=t\n", "a key must be lowercase letters a-z"),
            (b"HELLO 2 desk-42 TOKEN=t\n", "a key must be lowercase letters a-z"),
            (b"HELLO 2 desk-42 to-ken=t\n", "a key must be lowercase letters a-z"),
            (b"HELLO 2 desk-42 rx2=1\n", "a key must be lowercase letters a-z"),
            (b"HELLO 2 desk-42 token\n", "expected key=value"),
            (b"HELLO 2 desk-42 token=t \n", "expected key=value"),
            (b"HELLO 2 desk-42 token=t  rx=1\n", "expected key=value"),
            (b"HELLO 2 desk-42 resume=s\n", "resume and rx come together or not at all"),
            (b"HELLO 2 desk-42 rx=1\n", "resume and rx come together or not at all"),
            (b"HELLO 2 desk-42 token=t rx=1\n", "resume and rx come together or not at all"),
            (b"HELLO 2 desk-42 resume=s rx=x\n", "rx is not a number"),
            (b"HELLO 2 desk-42 resume=s rx=01\n", "rx is not a number"),
            (b"HELLO 2 desk-42 resume=s rx=18446744073709551616\n", "rx is not a number"),
        ];
        for (line, detail) in cases {
            assert_eq!(one(line), bad_option("HELLO", detail), "{:?}", String::from_utf8_lossy(line));
            assert_eq!(one(line).unwrap_err().code(), ErrorCode::Malformed);
        }
    }

    #[test]
    fn hello_1_takes_no_options() {
        for line in [&b"HELLO 1 desk-42 token=t\n"[..], b"HELLO 1 desk-42 resume=s rx=1\n", b"HELLO 1 desk-42 \n"] {
            let error = one(line).unwrap_err();
            assert_eq!(
                error,
                DecodeError::BadArgument { verb: "HELLO", detail: "expected HELLO <version> <client-id>" }
            );
            assert_eq!(error.code(), ErrorCode::Malformed);
        }
    }

    #[test]
    fn a_token_or_secret_beyond_its_limit_is_a_bad_option() {
        let longest = "t".repeat(Token::MAX_LEN);
        let line = format!("HELLO 2 desk-42 token={longest}\n");
        assert_eq!(one(line.as_bytes()), Ok(hello(2, Some(&longest), None)));
        let line = format!("HELLO 2 desk-42 token={longest}t\n");
        assert_eq!(one(line.as_bytes()), bad_option("HELLO", "invalid token"));

        let longest = "s".repeat(ResumeSecret::MAX_LEN);
        let line = format!("HELLO 2 desk-42 resume={longest} rx=1\n");
        assert_eq!(one(line.as_bytes()), Ok(hello(2, None, Some((&longest, 1)))));
        let line = format!("HELLO 2 desk-42 resume={longest}s rx=1\n");
        assert_eq!(one(line.as_bytes()), bad_option("HELLO", "invalid resume secret"));
        let line = format!("WELCOME s 10 3 resumed=0 rx=0 resume={longest}s keep=1\n");
        assert_eq!(one(line.as_bytes()), bad_option("WELCOME", "invalid resume secret"));
    }

    #[test]
    fn welcome_2_decodes_with_and_without_exp_in_any_order() {
        let welcome = |resumed, rx, keep_ms, exp_s: Option<u64>| Frame::Welcome {
            session: SessionId::new("91ddcd751").unwrap(),
            interval: Duration::from_millis(1000),
            max_missed: 3,
            resume: Some(WelcomeResume {
                resumed,
                rx,
                secret: secret("Q2F0"),
                keep: Duration::from_millis(keep_ms),
                expires_in: exp_s.map(Duration::from_secs),
            }),
        };
        let cases: &[(&[u8], Frame)] = &[
            (b"WELCOME 91ddcd751 1000 3 resumed=0 rx=0 resume=Q2F0 keep=120000\n", welcome(false, 0, 120_000, None)),
            (b"WELCOME 91ddcd751 1000 3 resumed=1 rx=7 resume=Q2F0 keep=0 exp=0\n", welcome(true, 7, 0, Some(0))),
            (b"WELCOME 91ddcd751 1000 3 exp=3600 keep=5 resume=Q2F0 rx=9 resumed=1\n", welcome(true, 9, 5, Some(3600))),
        ];
        for (line, frame) in cases {
            assert_eq!(one(line).as_ref(), Ok(frame), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn welcome_options_must_carry_resumed_rx_resume_and_keep() {
        let cases: &[(&[u8], &str)] = &[
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k\n", "missing keep"),
            (b"WELCOME s 10 3 rx=0 resume=k keep=1\n", "missing resumed"),
            (b"WELCOME s 10 3 resumed=0 resume=k keep=1\n", "missing rx"),
            (b"WELCOME s 10 3 resumed=0 rx=0 keep=1\n", "missing resume"),
            (b"WELCOME s 10 3 future=yes\n", "missing resumed"),
            (b"WELCOME s 10 3 resumed=2 rx=0 resume=k keep=1\n", "resumed must be 0 or 1"),
            (b"WELCOME s 10 3 resumed=01 rx=0 resume=k keep=1\n", "resumed must be 0 or 1"),
            (b"WELCOME s 10 3 resumed=0 rx=-1 resume=k keep=1\n", "rx is not a number"),
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=1s\n", "keep is not a number"),
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=1 exp=+5\n", "exp is not a number"),
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=1 keep=2\n", "repeated key"),
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=\n", "empty value"),
            (b"WELCOME s 10 3 resumed=0 rx=0 resume=k Keep=1\n", "a key must be lowercase letters a-z"),
        ];
        for (line, detail) in cases {
            assert_eq!(one(line), bad_option("WELCOME", detail), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn data_with_a_seq_and_ack_decode() {
        let frames = decode_all(b"DATA 2 1\nhiDATA 0 0\nDATA 3 18446744073709551615\nabcACK 0\nACK 42\n").unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Data { seq: Some(1), payload: "hi".into() },
                Frame::Data { seq: Some(0), payload: Bytes::new() },
                Frame::Data { seq: Some(u64::MAX), payload: "abc".into() },
                Frame::Ack { seq: 0 },
                Frame::Ack { seq: 42 },
            ]
        );
    }

    #[test]
    fn an_oversized_numbered_payload_fails_before_its_bytes_arrive() {
        assert_eq!(decode_all(b"DATA 17 1\n"), Err(DecodeError::PayloadTooLarge { len: 17, max: 16 }));
    }

    #[test]
    fn reserved_verbs_are_malformed() {
        for verb in ["AUTH", "AUTHED", "WATCH", "ONLINE", "OFFLINE", "LIST"] {
            let error = decode_all(format!("{verb} x\n").as_bytes()).unwrap_err();
            assert_eq!(error, DecodeError::UnknownVerb(verb.to_owned()));
            assert_eq!(error.code(), ErrorCode::Malformed);
            assert_eq!(decode_all(format!("{verb}\n").as_bytes()), Err(DecodeError::UnknownVerb(verb.to_owned())));
        }
    }

    #[test]
    fn unsupported_version_says_which_versions_this_side_speaks() {
        let error = one(b"HELLO 3 desk-42\n").unwrap_err();
        assert_eq!(error, DecodeError::UnsupportedVersion { version: 3 });
        assert_eq!(error.to_string(), "protocol version 3 is not supported (this side speaks 1 and 2)");
    }

    /// A `HELLO 2` line of exactly `len` bytes, newline included, padded with an unknown option.
    fn hello_line_of(len: usize) -> Vec<u8> {
        let head = format!("HELLO 2 desk-42 token={} pad=", "t".repeat(Token::MAX_LEN));
        let mut line = head.into_bytes();
        line.resize(len - 1, b'p');
        line.push(b'\n');
        line
    }

    #[test]
    fn hello_line_of_4096_bytes_is_accepted_and_4097_is_not() {
        assert_eq!(MAX_HELLO_LINE, 4096);
        let line = hello_line_of(MAX_HELLO_LINE);
        assert_eq!(one(&line), Ok(hello(2, Some(&"t".repeat(Token::MAX_LEN)), None)));
        let line = hello_line_of(MAX_HELLO_LINE + 1);
        assert_eq!(decode_all(&line), Err(DecodeError::LineTooLong { limit: MAX_HELLO_LINE }));
        // With `\r\n`, the `\r` counts.
        let mut line = hello_line_of(MAX_HELLO_LINE);
        line.insert(line.len() - 1, b'\r');
        assert_eq!(decode_all(&line), Err(DecodeError::LineTooLong { limit: MAX_HELLO_LINE }));
    }

    #[test]
    fn endless_hello_line_fails_once_its_limit_is_buffered() {
        let mut decoder = Decoder::new(16);
        decoder.extend(b"HELLO ");
        decoder.extend(&[b'a'; MAX_HELLO_LINE - 7]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered(), MAX_HELLO_LINE - 1);
        decoder.extend(b"a");
        assert_eq!(decoder.next_frame(), Err(DecodeError::LineTooLong { limit: MAX_HELLO_LINE }));
    }

    #[test]
    fn a_line_of_1025_bytes_is_too_long_unless_it_starts_with_hello_and_a_space() {
        let padded = |start: &str| {
            let mut line = start.as_bytes().to_vec();
            line.resize(MAX_LINE, b'x');
            line.push(b'\n');
            line
        };
        for start in ["WELCOME s 10 3 pad=", "HELLOX", "HELLO", "ERROR malformed ", "hello 2 d pad="] {
            let line = padded(start);
            assert_eq!(line.len(), MAX_LINE + 1);
            assert_eq!(decode_all(&line), Err(DecodeError::LineTooLong { limit: MAX_LINE }), "{start:?}");
        }
        let line = padded("HELLO 2 desk-42 pad=");
        assert_eq!(one(&line), Ok(hello(2, None, None)));
    }

    #[test]
    fn a_long_hello_line_leaves_no_memory_behind() {
        let mut decoder = Decoder::new(16);
        decoder.extend(&hello_line_of(MAX_HELLO_LINE));
        assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Hello { .. }))));
        assert_eq!((decoder.buffered(), decoder.buf.capacity()), (0, 0));
    }

    #[test]
    fn errors_never_show_a_token_or_secret() {
        let token = "SeCrEtToKeN".repeat(400);
        for line in [
            format!("HELLO 2 desk-42 token={token}\n"),
            format!("HELLO 2 desk-42 token={token} token={token}\n"),
            format!("HELLO 2 desk-42 resume={token} rx=1\n"),
            "HELLO 2 desk-42 resume=SeCrEtToKeN\n".to_owned(),
            "WELCOME s 10 3 resumed=0 rx=0 resume=SeCrEtToKeN\n".to_owned(),
        ] {
            let error = decode_all(line.as_bytes()).unwrap_err();
            for shown in [error.to_string(), format!("{error:?}")] {
                assert!(!shown.contains("SeCrEtToKeN"), "{shown}");
            }
        }
    }

    #[test]
    fn a_version_1_connection_refuses_the_version_2_forms_as_version_1_did() {
        let refused: &[(&[u8], DecodeError)] = &[
            (b"DATA 2 1\nhi", DecodeError::BadArgument { verb: "DATA", detail: "expected DATA <len>" }),
            (b"ACK 1\n", DecodeError::UnknownVerb("ACK".into())),
            (
                b"WELCOME s 10 3 resumed=0 rx=0 resume=k keep=1\n",
                DecodeError::BadArgument {
                    verb: "WELCOME",
                    detail: "expected WELCOME <session-id> <interval-ms> <max-missed>",
                },
            ),
        ];
        for (input, error) in refused {
            let mut decoder = Decoder::new(16);
            decoder.extend(input);
            decoder.extend(b"PULSE 1\n");
            assert_eq!(decoder.next_version_1_frame().as_ref(), Err(error));
            assert_eq!(decoder.next_version_1_frame().as_ref(), Err(error), "sticky");
            assert_eq!(decoder.next_frame().as_ref(), Err(error), "sticky");
            assert_eq!(error.code(), ErrorCode::Malformed);
        }
        // What version 1 has passes, and so does a HELLO of another version: the handshake
        // answers that one.
        let mut decoder = Decoder::new(16);
        decoder.extend(b"DATA 2\nhiWELCOME s 10 3\nHELLO 2 desk-42 token=t\n");
        assert_eq!(decoder.next_version_1_frame(), Ok(Some(Frame::data("hi"))));
        assert!(matches!(decoder.next_version_1_frame(), Ok(Some(Frame::Welcome { resume: None, .. }))));
        assert_eq!(decoder.next_version_1_frame(), Ok(Some(hello(2, Some("t"), None))));
        assert_eq!(decoder.next_version_1_frame(), Ok(None));
    }
}
