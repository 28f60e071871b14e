//! The frame decoder: bytes in, frames out. "Need more bytes" is `Ok(None)`, not an error.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;

use super::frame::{is_token, ClientId, ErrorCode, Frame, SessionId, MAX_LINE, PROTOCOL_VERSION};

/// Why a byte stream is not valid pulsewire. Each maps to the [`ErrorCode`] the receiver sends
/// back before closing ([`DecodeError::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// No newline within the first [`MAX_LINE`] bytes of a control line.
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
    /// A verb this version does not know.
    UnknownVerb(String),
    /// A known verb with missing, extra or unparsable arguments.
    BadArgument {
        /// The verb of the offending line.
        verb: &'static str,
        /// What is wrong with it.
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
            DecodeError::NotAscii | DecodeError::UnknownVerb(_) | DecodeError::BadArgument { .. } => {
                ErrorCode::Malformed
            }
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
            DecodeError::UnsupportedVersion { version } => {
                write!(f, "protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})")
            }
            DecodeError::BadClientId => f.write_str("client id must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Turns a byte stream into [`Frame`]s.
///
/// Feed it whatever the socket returned, split anywhere, and take frames out until it says it
/// needs more bytes. It never holds more than one line of [`MAX_LINE`] bytes or one payload of
/// `max_payload` bytes beyond what it was given; a stream that breaks those limits is an error
/// before the excess is buffered. After an error the stream cannot be trusted: every later call
/// returns the same error.
///
/// ```
/// use pulsewire::protocol::{Decoder, Frame};
///
/// let mut decoder = Decoder::new(1024);
/// decoder.extend(b"PULSE 1\nDATA 5\nhel");
/// assert_eq!(decoder.next_frame(), Ok(Some(Frame::Pulse { seq: 1 })));
/// assert_eq!(decoder.next_frame(), Ok(None)); // the payload is not complete yet
/// decoder.extend(b"lo");
/// assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data("hello".into()))));
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_payload: usize,
    /// The length of a `DATA` payload whose header was consumed but whose bytes are still due.
    payload_due: Option<usize>,
    /// How far into `buf` a newline has already been looked for.
    scanned: usize,
    /// Where the region handed out by `read_buf` starts, while it is outstanding.
    unfilled: Option<usize>,
    failed: Option<DecodeError>,
}

/// How many bytes [`Decoder::read_buf`] offers at least.
const READ_CHUNK: usize = 512;

impl Decoder {
    /// A decoder accepting `DATA` payloads of up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Decoder {
        Decoder { buf: BytesMut::new(), max_payload, payload_due: None, scanned: 0, unfilled: None, failed: None }
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
        let want = match self.payload_due {
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
            return Err(error.clone());
        }
        let result = self.decode();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        // Between frames a decoder holds no memory: a server with thousands of idle peers
        // keeps no buffer per peer, and allocating one for the next read costs far less than
        // the read itself.
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(len) = self.payload_due {
            if self.buf.len() < len {
                return Ok(None);
            }
            self.payload_due = None;
            return Ok(Some(Frame::Data(self.buf.split_to(len).freeze())));
        }
        let window = self.buf.len().min(MAX_LINE);
        let Some(newline) = self.buf[self.scanned.min(window)..window].iter().position(|&b| b == b'\n') else {
            if self.buf.len() >= MAX_LINE {
                return Err(DecodeError::LineTooLong { limit: MAX_LINE });
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
            Parsed::DataHeader(0) => Ok(Some(Frame::Data(bytes::Bytes::new()))),
            Parsed::DataHeader(len) => {
                // No room is reserved up front: the buffer grows only as the bytes arrive.
                self.payload_due = Some(len);
                self.decode()
            }
        }
    }
}

enum Parsed {
    Frame(Frame),
    DataHeader(usize),
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
    let bad = |verb: &'static str, detail: &'static str| DecodeError::BadArgument { verb, detail };
    let frame = match verb {
        "HELLO" => {
            // The version comes first and decides how the rest reads: a later version may
            // carry more arguments, and must get `version`, not `malformed`.
            let (version, after) = match rest {
                Some(rest) => rest.split_once(' ').map_or((rest, None), |(v, after)| (v, Some(after))),
                None => ("", None),
            };
            let version = big_number(version).ok_or(bad("HELLO", "version is not a number"))?;
            if version != u64::from(PROTOCOL_VERSION) {
                return Err(DecodeError::UnsupportedVersion { version });
            }
            let [id] = words::<1>(after).ok_or(bad("HELLO", "expected HELLO <version> <client-id>"))?;
            let client_id = ClientId::new(id).map_err(|_| DecodeError::BadClientId)?;
            Frame::Hello { version: PROTOCOL_VERSION, client_id }
        }
        "WELCOME" => {
            let [session, interval, max_missed] =
                words::<3>(rest).ok_or(bad("WELCOME", "expected WELCOME <session-id> <interval-ms> <max-missed>"))?;
            let session = SessionId::new(session).ok_or(bad("WELCOME", "invalid session id"))?;
            let interval = number(interval)
                .filter(|&ms| ms > 0)
                .ok_or(bad("WELCOME", "interval must be a positive number of ms"))?;
            let max_missed = number(max_missed)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(bad("WELCOME", "max-missed is not a number"))?;
            Frame::Welcome { session, interval: Duration::from_millis(interval), max_missed }
        }
        "PULSE" => {
            let [seq] = words::<1>(rest).ok_or(bad("PULSE", "expected PULSE <seq>"))?;
            Frame::Pulse { seq: number(seq).ok_or(bad("PULSE", "seq is not a number"))? }
        }
        "ALIVE" => {
            let [seq] = words::<1>(rest).ok_or(bad("ALIVE", "expected ALIVE <seq>"))?;
            Frame::Alive { seq: number(seq).ok_or(bad("ALIVE", "seq is not a number"))? }
        }
        "DATA" => {
            let [len] = words::<1>(rest).ok_or(bad("DATA", "expected DATA <len>"))?;
            let len = big_number(len).ok_or(bad("DATA", "length is not a number"))?;
            return match usize::try_from(len) {
                Ok(len) if len <= max_payload => Ok(Parsed::DataHeader(len)),
                _ => Err(DecodeError::PayloadTooLarge { len, max: max_payload }),
            };
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
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(DecodeError::UnknownVerb(shown));
        }
    };
    Ok(Parsed::Frame(frame))
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
                Frame::Hello { version: 1, client_id: ClientId::new("desk-42").unwrap() },
                Frame::Welcome {
                    session: SessionId::new("7f3a9c").unwrap(),
                    interval: Duration::from_millis(1000),
                    max_missed: 3
                },
                Frame::Pulse { seq: 1 },
                Frame::Alive { seq: u64::MAX },
                Frame::Data("hi".into()),
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
        assert_eq!(
            decode_all(b"DATA 0\nPULSE 1\n").unwrap(),
            vec![Frame::Data(bytes::Bytes::new()), Frame::Pulse { seq: 1 }]
        );
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
            (b"HELLO 2 desk\n", ErrorCode::Version),
            (b"HELLO 2 desk token-from-the-future\n", ErrorCode::Version),
            (b"HELLO 2 bad/id\n", ErrorCode::Version),
            (b"HELLO 99999999999999999999999 x\n", ErrorCode::Version),
            (b"DATA 99999999999999999999999\n", ErrorCode::TooLarge),
            (b"HELLO 1 desk 42\n", ErrorCode::Malformed),
            (b"HELLO 1 desk/42\n", ErrorCode::BadId),
            (b"WELCOME s 0 3\n", ErrorCode::Malformed),
            (b"WELCOME s 10\n", ErrorCode::Malformed),
            (b"DATA\n", ErrorCode::Malformed),
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
        decoder.extend(b"DATA 3000\n");
        assert_eq!(decoder.next_frame(), Ok(None));
        let mut sent = 0;
        while sent < 3000 {
            let region = decoder.read_buf();
            let n = region.len().min(3000 - sent).min(700);
            region[..n].fill(b'z');
            decoder.filled(n);
            sent += n;
        }
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data(vec![b'z'; 3000].into()))));
    }

    #[test]
    fn buffer_is_released_once_drained() {
        let mut decoder = Decoder::new(1 << 20);
        decoder.extend(b"DATA 200000\n");
        decoder.extend(&vec![0; 200_000]);
        assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Data(_)))));
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
}
