//! Frames: the units both sides exchange, and how each is written on the wire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version this crate speaks (the `1` in `HELLO 1 <client-id>`).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest control line accepted, newline included, in bytes.
pub const MAX_LINE: usize = 1024;

/// The default largest `DATA` payload a receiver accepts: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The longest client id, session id or reason word, in characters.
pub const MAX_TOKEN: usize = 64;

/// One protocol frame.
///
/// Control frames are single ASCII lines; [`Frame::Data`] carries application bytes.
///
/// ```
/// use pulsewire::protocol::Frame;
///
/// let mut wire = bytes::BytesMut::new();
/// Frame::Pulse { seq: 7 }.encode(&mut wire);
/// assert_eq!(&wire[..], b"PULSE 7\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `HELLO <version> <client-id>`: the client opens the handshake.
    Hello {
        /// The protocol version the client speaks.
        version: u32,
        /// The name the peer will have in the online list.
        client_id: ClientId,
    },
    /// `WELCOME <session-id> <interval-ms> <max-missed>`: the server accepts the peer and
    /// announces the cadence both sides use.
    Welcome {
        /// The session the server opened for this connection.
        session: SessionId,
        /// The pulse interval (sent in whole milliseconds, at least 1).
        interval: Duration,
        /// How many missed pulses are tolerated before the connection counts as lost.
        max_missed: u32,
    },
    /// `PULSE <seq>`: "are you there?"; each side numbers its own pulses.
    Pulse {
        /// The sender's sequence number.
        seq: u64,
    },
    /// `ALIVE <seq>`: the answer to the pulse with the same number.
    Alive {
        /// The sequence number of the pulse being answered.
        seq: u64,
    },
    /// `DATA <len>` followed by `len` raw bytes: an application message.
    Data(Bytes),
    /// `BYE <reason-word>`: a graceful leave.
    Bye {
        /// Why the sender leaves, one word (may be empty when the peer sent a bare `BYE`).
        reason: String,
    },
    /// `ERROR <code> <text>`: a protocol error; the sender closes right after.
    Error {
        /// The machine-readable code.
        code: ErrorCode,
        /// A human-readable explanation (printable ASCII, possibly empty).
        text: String,
    },
}

impl Frame {
    /// Builds an `ERROR` frame, making `text` safe for the wire: characters outside printable
    /// ASCII become `?` and the text is cut so that the line fits in [`MAX_LINE`].
    ///
    /// ```
    /// use pulsewire::protocol::{ErrorCode, Frame};
    ///
    /// let frame = Frame::error(ErrorCode::Malformed, "bad\nline ✓");
    /// assert_eq!(frame, Frame::Error { code: ErrorCode::Malformed, text: "bad?line ?".into() });
    /// ```
    pub fn error(code: ErrorCode, text: impl AsRef<str>) -> Frame {
        let budget = MAX_LINE - "ERROR  \n".len() - code.as_str().len();
        let text = text.as_ref().chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).take(budget).collect();
        Frame::Error { code, text }
    }

    /// Builds a `BYE` frame; `reason` is reduced to one safe word (see [`Frame::error`]).
    ///
    /// ```
    /// use pulsewire::protocol::Frame;
    /// assert_eq!(Frame::bye("quit"), Frame::Bye { reason: "quit".into() });
    /// ```
    pub fn bye(reason: impl AsRef<str>) -> Frame {
        let reason =
            reason.as_ref().chars().map(|c| if ('!'..='~').contains(&c) { c } else { '_' }).take(MAX_TOKEN).collect();
        Frame::Bye { reason }
    }

    /// The verb that starts this frame's line.
    pub fn verb(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "HELLO",
            Frame::Welcome { .. } => "WELCOME",
            Frame::Pulse { .. } => "PULSE",
            Frame::Alive { .. } => "ALIVE",
            Frame::Data(_) => "DATA",
            Frame::Bye { .. } => "BYE",
            Frame::Error { .. } => "ERROR",
        }
    }

    /// Appends this frame's wire form to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        use std::fmt::Write as _;
        let mut line = LineWriter(dst);
        // Writing into a BytesMut never fails, so the fmt::Result is always Ok.
        let _ = match self {
            Frame::Hello { version, client_id } => writeln!(line, "HELLO {version} {client_id}"),
            Frame::Welcome { session, interval, max_missed } => {
                writeln!(line, "WELCOME {session} {} {max_missed}", interval.as_millis())
            }
            Frame::Pulse { seq } => writeln!(line, "PULSE {seq}"),
            Frame::Alive { seq } => writeln!(line, "ALIVE {seq}"),
            Frame::Data(payload) => {
                let result = writeln!(line, "DATA {}", payload.len());
                dst.put_slice(payload);
                result
            }
            Frame::Bye { reason } if reason.is_empty() => writeln!(line, "BYE"),
            Frame::Bye { reason } => writeln!(line, "BYE {reason}"),
            Frame::Error { code, text } if text.is_empty() => writeln!(line, "ERROR {code}"),
            Frame::Error { code, text } => writeln!(line, "ERROR {code} {text}"),
        };
    }

    /// This frame's wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }
}

impl fmt::Display for Frame {
    /// The frame as it appears on the wire, without the newline; `DATA` shows its length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Data(payload) => write!(f, "DATA {}", payload.len()),
            other => {
                let wire = other.to_bytes();
                f.write_str(String::from_utf8_lossy(&wire).trim_end())
            }
        }
    }
}

struct LineWriter<'a>(&'a mut BytesMut);

impl fmt::Write for LineWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// The code of an `ERROR` frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A line that does not parse: unknown verb, bad argument, not ASCII.
    Malformed,
    /// A line longer than [`MAX_LINE`] or a payload above the receiver's limit.
    TooLarge,
    /// A valid frame at the wrong moment (e.g. `DATA` before `WELCOME`).
    Unexpected,
    /// An unsupported protocol version in `HELLO`.
    Version,
    /// A client id outside the allowed characters or length.
    BadId,
    /// No `HELLO` in time, or too many missed pulses.
    Timeout,
    /// Another connection with the same client id took this one's place.
    Replaced,
    /// The server is shutting down.
    Shutdown,
    /// The server holds as many peers as it may.
    Full,
    /// A code this version does not know (kept for forward compatibility).
    Other(String),
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Unexpected => "unexpected",
            ErrorCode::Version => "version",
            ErrorCode::BadId => "bad-id",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Replaced => "replaced",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Full => "full",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses a code; any lowercase word (`a-z`, `-`) is accepted, unknown ones as
    /// [`ErrorCode::Other`].
    ///
    /// ```
    /// use pulsewire::protocol::ErrorCode;
    /// assert_eq!(ErrorCode::parse("too-large"), Some(ErrorCode::TooLarge));
    /// assert_eq!(ErrorCode::parse("Nope"), None);
    /// ```
    pub fn parse(word: &str) -> Option<ErrorCode> {
        let known = match word {
            "malformed" => ErrorCode::Malformed,
            "too-large" => ErrorCode::TooLarge,
            "unexpected" => ErrorCode::Unexpected,
            "version" => ErrorCode::Version,
            "bad-id" => ErrorCode::BadId,
            "timeout" => ErrorCode::Timeout,
            "replaced" => ErrorCode::Replaced,
            "shutdown" => ErrorCode::Shutdown,
            "full" => ErrorCode::Full,
            other => {
                let valid = !other.is_empty()
                    && other.len() <= MAX_TOKEN
                    && other.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
                return valid.then(|| ErrorCode::Other(other.to_owned()));
            }
        };
        Some(known)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client id: 1–64 characters of `A-Z a-z 0-9 . _ : -`. It names the peer in the online list.
///
/// ```
/// use pulsewire::protocol::ClientId;
///
/// let id = ClientId::new("desk-42").unwrap();
/// assert_eq!(id.as_str(), "desk-42");
/// assert!(ClientId::new("no spaces").is_err());
/// assert!(ClientId::new("").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<ClientId, InvalidClientId> {
        let id = id.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if id.is_empty() || id.len() > MAX_TOKEN || !id.chars().all(valid_char) {
            return Err(InvalidClientId { len: id.chars().count() });
        }
        // Shared, not copied: the server holds each id in its online list, its index, every
        // event and every snapshot of the list.
        Ok(ClientId(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ClientId {
    type Err = InvalidClientId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientId::new(s)
    }
}

/// The error of [`ClientId::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidClientId {
    len: usize,
}

impl fmt::Display for InvalidClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid client id ({} characters): it must be 1-{MAX_TOKEN} characters of A-Z a-z 0-9 . _ : -",
            self.len
        )
    }
}

impl std::error::Error for InvalidClientId {}

/// A session id, chosen by the server in `WELCOME`: 1–64 printable ASCII characters, no spaces.
///
/// ```
/// use pulsewire::protocol::SessionId;
/// assert_eq!(SessionId::new("7f3a9c").unwrap().as_str(), "7f3a9c");
/// assert!(SessionId::new("a b").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Validates `id`; `None` when it is empty, too long or not printable ASCII without spaces.
    pub fn new(id: impl Into<String>) -> Option<SessionId> {
        let id = id.into();
        is_token(&id).then(|| SessionId(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn is_token(word: &str) -> bool {
    !word.is_empty() && word.len() <= MAX_TOKEN && word.bytes().all(|b| b.is_ascii_graphic())
}
