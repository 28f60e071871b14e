//! Frames: the units both sides exchange, and how each is written on the wire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use subtle::ConstantTimeEq;

/// The highest protocol version this crate speaks (the `2` in `HELLO 2 <client-id>`).
///
/// ```
/// use pulsewire::protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
/// assert_eq!((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), (1, 2));
/// ```
pub const PROTOCOL_VERSION: u32 = 2;

/// The lowest protocol version a server still serves: version 1, the one without options.
///
/// ```
/// use pulsewire::protocol::{ClientId, Frame, MIN_PROTOCOL_VERSION};
///
/// let client_id = ClientId::new("desk-42").unwrap();
/// let hello = Frame::Hello { version: MIN_PROTOCOL_VERSION, client_id, token: None, resume: None };
/// assert_eq!(&hello.to_bytes()[..], b"HELLO 1 desk-42\n");
/// ```
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The longest control line accepted, newline included, in bytes (but see [`MAX_HELLO_LINE`]).
pub const MAX_LINE: usize = 1024;

/// The longest line starting with `HELLO `, newline included, in bytes: room for a token.
///
/// Every `HELLO` that can be built fits: [`Token::MAX_LEN`] is what is left once the longest
/// client id, resume secret and `rx` are counted.
///
/// ```
/// use pulsewire::protocol::{Decoder, MAX_HELLO_LINE, MAX_LINE};
///
/// let line = format!("HELLO 2 desk-42 pad={}\n", "x".repeat(MAX_LINE));
/// assert!(line.len() > MAX_LINE && line.len() <= MAX_HELLO_LINE);
/// let mut decoder = Decoder::new(1024);
/// decoder.extend(line.as_bytes());
/// assert!(decoder.next_frame().unwrap().is_some()); // an unknown option, ignored
/// ```
pub const MAX_HELLO_LINE: usize = 4096;

/// The default largest `DATA` payload a receiver accepts: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The longest client id, session id or reason word, in characters.
pub const MAX_TOKEN: usize = 64;

/// The version whose frames carry no options and no sequence numbers.
const VERSION_1: u32 = 1;

/// What [`Frame`]'s `Display` shows instead of a token or a resume secret.
const REDACTED: &str = "<redacted>";

/// One protocol frame.
///
/// Control frames are single ASCII lines; [`Frame::Data`] carries application bytes. `Debug`
/// and `Display` never show a [`Token`] or a [`ResumeSecret`]; only [`Frame::encode`] writes
/// them.
///
/// ```
/// use pulsewire::protocol::Frame;
///
/// let mut wire = bytes::BytesMut::new();
/// Frame::Pulse { seq: 7 }.encode(&mut wire);
/// assert_eq!(&wire[..], b"PULSE 7\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// `HELLO <version> <client-id> [token=<t>] [resume=<secret> rx=<n>]`: the client opens the
    /// handshake. The options exist from version 2 on: a version-1 `HELLO` is written without
    /// them, whatever `token` and `resume` hold.
    ///
    /// ```
    /// use pulsewire::protocol::{ClientId, Frame, Resume, ResumeSecret, Token};
    ///
    /// let hello = Frame::Hello {
    ///     version: 2,
    ///     client_id: ClientId::new("desk-42").unwrap(),
    ///     token: Token::new("eyJhbGciOi"),
    ///     resume: Some(Resume { secret: ResumeSecret::new("Q2F0c0Fy").unwrap(), rx: 1 }),
    /// };
    /// assert_eq!(&hello.to_bytes()[..], b"HELLO 2 desk-42 token=eyJhbGciOi resume=Q2F0c0Fy rx=1\n");
    /// assert_eq!(hello.to_string(), "HELLO 2 desk-42 token=<redacted> resume=<redacted> rx=1");
    /// ```
    Hello {
        /// The protocol version the client speaks.
        version: u32,
        /// The name the peer will have in the online list.
        client_id: ClientId,
        /// `token=<t>`: the credential, when the client has one (version 2 on).
        token: Option<Token>,
        /// `resume=<secret> rx=<n>`: the session the client asks to continue (version 2 on).
        resume: Option<Resume>,
    },
    /// `WELCOME <session-id> <interval-ms> <max-missed>`: the server accepts the peer and
    /// announces the cadence both sides use. Version 2 adds the options
    /// `resumed=<0|1> rx=<n> resume=<secret> keep=<ms> [exp=<s>]` ([`WelcomeResume`]); with
    /// `resume: None` the version-1 form is written.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pulsewire::protocol::{Frame, ResumeSecret, SessionId, WelcomeResume};
    ///
    /// let welcome = Frame::Welcome {
    ///     session: SessionId::new("91ddcd751").unwrap(),
    ///     interval: Duration::from_secs(1),
    ///     max_missed: 3,
    ///     resume: Some(WelcomeResume {
    ///         resumed: false,
    ///         rx: 0,
    ///         secret: ResumeSecret::new("Q2F0c0Fy").unwrap(),
    ///         keep: Duration::from_secs(120),
    ///         expires_in: None,
    ///     }),
    /// };
    /// assert_eq!(&welcome.to_bytes()[..], b"WELCOME 91ddcd751 1000 3 resumed=0 rx=0 resume=Q2F0c0Fy keep=120000\n");
    /// ```
    Welcome {
        /// The session the server opened (or continues) for this connection.
        session: SessionId,
        /// The pulse interval (sent in whole milliseconds, at least 1).
        interval: Duration,
        /// How many missed pulses are tolerated before the connection counts as lost.
        max_missed: u32,
        /// The version-2 options: the session's resume state (`None` in version 1).
        resume: Option<WelcomeResume>,
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
    /// `DATA <len>` (version 1) or `DATA <len> <seq>` (version 2), followed by `len` raw bytes:
    /// an application message. [`Frame::data`] builds the version-1 form.
    ///
    /// ```
    /// use pulsewire::protocol::Frame;
    ///
    /// let numbered = Frame::Data { seq: Some(4), payload: "hi".into() };
    /// assert_eq!(&numbered.to_bytes()[..], b"DATA 2 4\nhi");
    /// assert_eq!(&Frame::data("hi").to_bytes()[..], b"DATA 2\nhi");
    /// ```
    Data {
        /// The message's number in its direction of the session, from 1; `Some(0)` marks a
        /// volatile message; `None` is version 1's unnumbered form.
        seq: Option<u64>,
        /// The application bytes.
        payload: Bytes,
    },
    /// `ACK <seq>` (version 2): messages `1..=seq` of this session were handed to the
    /// receiver's application.
    ///
    /// ```
    /// use pulsewire::protocol::Frame;
    /// assert_eq!(&Frame::Ack { seq: 12 }.to_bytes()[..], b"ACK 12\n");
    /// ```
    Ack {
        /// The highest message number handed over, cumulative.
        seq: u64,
    },
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
    /// Builds a version-1 `DATA` frame: `payload`, unnumbered (`seq: None`).
    ///
    /// ```
    /// use pulsewire::protocol::Frame;
    /// assert_eq!(Frame::data("hi"), Frame::Data { seq: None, payload: "hi".into() });
    /// ```
    pub fn data(payload: impl Into<Bytes>) -> Frame {
        Frame::Data { seq: None, payload: payload.into() }
    }

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
    ///
    /// ```
    /// use pulsewire::protocol::Frame;
    /// assert_eq!(Frame::Ack { seq: 1 }.verb(), "ACK");
    /// ```
    pub fn verb(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "HELLO",
            Frame::Welcome { .. } => "WELCOME",
            Frame::Pulse { .. } => "PULSE",
            Frame::Alive { .. } => "ALIVE",
            Frame::Data { .. } => "DATA",
            Frame::Ack { .. } => "ACK",
            Frame::Bye { .. } => "BYE",
            Frame::Error { .. } => "ERROR",
        }
    }

    /// Appends this frame's wire form to `dst`: its line (tokens and secrets included), then a
    /// `DATA` frame's payload.
    pub fn encode(&self, dst: &mut BytesMut) {
        // Writing into a BytesMut never fails, so the fmt::Result is always Ok.
        let _ = self.write_line(&mut LineWriter(dst), Secrets::Shown);
        dst.put_u8(b'\n');
        if let Frame::Data { payload, .. } = self {
            dst.put_slice(payload);
        }
    }

    /// This frame's wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }

    /// Writes the control line, without its newline.
    fn write_line(&self, out: &mut impl fmt::Write, secrets: Secrets) -> fmt::Result {
        match self {
            Frame::Hello { version, client_id, token, resume } => {
                write!(out, "HELLO {version} {client_id}")?;
                if *version == VERSION_1 {
                    return Ok(());
                }
                if let Some(token) = token {
                    write!(out, " token={}", secrets.show(token.as_str()))?;
                }
                if let Some(Resume { secret, rx }) = resume {
                    write!(out, " resume={} rx={rx}", secrets.show(secret.as_str()))?;
                }
                Ok(())
            }
            Frame::Welcome { session, interval, max_missed, resume } => {
                write!(out, "WELCOME {session} {} {max_missed}", interval.as_millis())?;
                if let Some(WelcomeResume { resumed, rx, secret, keep, expires_in }) = resume {
                    let (resumed, secret, keep) = (u8::from(*resumed), secrets.show(secret.as_str()), keep.as_millis());
                    write!(out, " resumed={resumed} rx={rx} resume={secret} keep={keep}")?;
                    if let Some(expires_in) = expires_in {
                        write!(out, " exp={}", expires_in.as_secs())?;
                    }
                }
                Ok(())
            }
            Frame::Pulse { seq } => write!(out, "PULSE {seq}"),
            Frame::Alive { seq } => write!(out, "ALIVE {seq}"),
            Frame::Data { seq: None, payload } => write!(out, "DATA {}", payload.len()),
            Frame::Data { seq: Some(seq), payload } => write!(out, "DATA {} {seq}", payload.len()),
            Frame::Ack { seq } => write!(out, "ACK {seq}"),
            Frame::Bye { reason } if reason.is_empty() => out.write_str("BYE"),
            Frame::Bye { reason } => write!(out, "BYE {reason}"),
            Frame::Error { code, text } if text.is_empty() => write!(out, "ERROR {code}"),
            Frame::Error { code, text } => write!(out, "ERROR {code} {text}"),
        }
    }
}

impl fmt::Display for Frame {
    /// The frame's line as on the wire, without the newline, except that a token or a resume
    /// secret shows as `<redacted>`; `DATA` shows its header only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_line(f, Secrets::Redacted)
    }
}

/// Whether a line shows the secrets it carries: on the wire only.
#[derive(Clone, Copy)]
enum Secrets {
    Shown,
    Redacted,
}

impl Secrets {
    fn show(self, secret: &str) -> &str {
        match self {
            Secrets::Shown => secret,
            Secrets::Redacted => REDACTED,
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

/// `resume=<secret> rx=<n>` of a version-2 `HELLO`: the session the client asks to continue.
///
/// ```
/// use pulsewire::protocol::{Resume, ResumeSecret};
///
/// let resume = Resume { secret: ResumeSecret::new("Q2F0c0Fy").unwrap(), rx: 41 };
/// assert_eq!(format!("{resume:?}"), "Resume { secret: ResumeSecret(..redacted..), rx: 41 }");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The secret of the server's last `WELCOME` in that session.
    pub secret: ResumeSecret,
    /// The highest server `DATA` seq the client's application was given in that session.
    pub rx: u64,
}

/// The version-2 options of a `WELCOME`: `resumed=<0|1> rx=<n> resume=<secret> keep=<ms>
/// [exp=<s>]`.
///
/// ```
/// use std::time::Duration;
/// use pulsewire::protocol::{ResumeSecret, WelcomeResume};
///
/// let fresh = WelcomeResume {
///     resumed: false,
///     rx: 0,
///     secret: ResumeSecret::from_random([7; 16]),
///     keep: Duration::from_secs(120),
///     expires_in: Some(Duration::from_secs(3600)),
/// };
/// assert!(!format!("{fresh:?}").contains(fresh.secret.as_str()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeResume {
    /// `resumed=1`: the session the client asked for was found and continues.
    pub resumed: bool,
    /// The highest client `DATA` seq the server's application was given in the session (0 for
    /// a new one).
    pub rx: u64,
    /// A fresh resume secret, replacing the previous one.
    pub secret: ResumeSecret,
    /// How long the server keeps the session once its connection is lost (sent in whole
    /// milliseconds).
    pub keep: Duration,
    /// `exp=<s>`: how long until the credential expires (sent in whole seconds); `None` when it
    /// does not.
    pub expires_in: Option<Duration>,
}

/// A credential, opaque to the protocol (a JWT, an API key): 1 to [`Token::MAX_LEN`] printable
/// ASCII characters, no spaces.
///
/// Its `Debug` and `Display` never show it (`Token(..redacted..)`, `<redacted>`); comparing two
/// takes the same time wherever they differ.
///
/// ```
/// use pulsewire::protocol::Token;
///
/// let token = Token::new("eyJhbGciOiJIUzI1NiJ9").unwrap();
/// assert_eq!(token.as_str(), "eyJhbGciOiJIUzI1NiJ9");
/// assert_eq!(format!("{token:?} {token}"), "Token(..redacted..) <redacted>");
/// assert!(Token::new("two words").is_none());
/// assert!(Token::new("").is_none());
/// ```
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// The longest token, in characters: what a `HELLO` line of [`MAX_HELLO_LINE`] bytes leaves
    /// once the longest client id, resume secret and `rx` are counted.
    pub const MAX_LEN: usize =
        MAX_HELLO_LINE - "HELLO 2  token= resume= rx=18446744073709551615\n".len() - MAX_TOKEN - ResumeSecret::MAX_LEN;

    /// Validates `token`; `None` when it is empty, longer than [`Token::MAX_LEN`] or not
    /// printable ASCII without spaces.
    pub fn new(token: impl Into<String>) -> Option<Token> {
        let token = token.into();
        is_word(&token, Token::MAX_LEN).then(|| Token(token.into()))
    }

    /// The token as text, for the wire or the authenticator: never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..redacted..)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The secret that authorizes resuming a session: 1 to [`ResumeSecret::MAX_LEN`] printable
/// ASCII characters, no spaces.
///
/// Its `Debug` and `Display` never show it (`ResumeSecret(..redacted..)`, `<redacted>`), and
/// `==` compares in constant time, so that a guess learns nothing from how long a comparison
/// took. The server makes one from 16 random bytes ([`ResumeSecret::from_random`]): the pure
/// core takes its randomness as input.
///
/// ```
/// use pulsewire::protocol::ResumeSecret;
///
/// let secret = ResumeSecret::new("Q2F0c0FyZUNvb2xYWFg").unwrap();
/// assert_eq!(secret, ResumeSecret::new("Q2F0c0FyZUNvb2xYWFg").unwrap());
/// assert_ne!(secret, ResumeSecret::new("Q2F0c0FyZUNvb2xYWFh").unwrap());
/// assert_eq!(format!("{secret:?} {secret}"), "ResumeSecret(..redacted..) <redacted>");
/// ```
#[derive(Clone)]
pub struct ResumeSecret(Arc<str>);

impl ResumeSecret {
    /// The longest resume secret, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates `secret`; `None` when it is empty, longer than [`ResumeSecret::MAX_LEN`] or not
    /// printable ASCII without spaces.
    pub fn new(secret: impl Into<String>) -> Option<ResumeSecret> {
        let secret = secret.into();
        is_word(&secret, ResumeSecret::MAX_LEN).then(|| ResumeSecret(secret.into()))
    }

    /// The secret made of 16 random bytes (128 bits), written as 32 lowercase hex characters.
    ///
    /// ```
    /// use pulsewire::protocol::ResumeSecret;
    ///
    /// let secret = ResumeSecret::from_random([0x0f, 0xa1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
    /// assert_eq!(secret.as_str(), "0fa100000000000000000000000000ff");
    /// ```
    pub fn from_random(bytes: [u8; 16]) -> ResumeSecret {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(2 * bytes.len());
        for byte in bytes {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        ResumeSecret(text.into())
    }

    /// The secret as text, for the wire or a session store: never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for ResumeSecret {
    /// Constant time in the secrets' contents (a different length is told at once).
    fn eq(&self, other: &ResumeSecret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for ResumeSecret {}

impl fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeSecret(..redacted..)")
    }
}

impl fmt::Display for ResumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The code of an `ERROR` frame.
///
/// ```
/// use pulsewire::protocol::ErrorCode;
///
/// assert_eq!(ErrorCode::parse("auth-expired"), Some(ErrorCode::AuthExpired));
/// assert_eq!(ErrorCode::TlsRequired.as_str(), "tls-required");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A line that does not parse: unknown verb, bad argument or option, not ASCII.
    Malformed,
    /// A line longer than its limit ([`MAX_LINE`], [`MAX_HELLO_LINE`]) or a payload above the
    /// receiver's limit.
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
    /// `auth-required` (v2): no token, and the server requires one.
    AuthRequired,
    /// `auth-failed` (v2): the token is wrong, forged or unknown.
    AuthFailed,
    /// `auth-expired` (v2): the token has expired, at `HELLO` or while connected.
    AuthExpired,
    /// `forbidden` (v2): the subject may not use this client id, or the id is online under
    /// another subject.
    Forbidden,
    /// `auth-unavailable` (v2): the authenticator could not decide (its backend is down, it
    /// timed out).
    AuthUnavailable,
    /// `tls-required` (v2): plaintext on a TLS listener, or a token over plaintext where the
    /// server refuses that.
    TlsRequired,
    /// `resumed` (v2): a new connection resumed this one's session.
    Resumed,
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
            ErrorCode::AuthRequired => "auth-required",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::AuthExpired => "auth-expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AuthUnavailable => "auth-unavailable",
            ErrorCode::TlsRequired => "tls-required",
            ErrorCode::Resumed => "resumed",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses a code; any lowercase word (`a-z`, `-`) is accepted, unknown ones as
    /// [`ErrorCode::Other`].
    ///
    /// ```
    /// use pulsewire::protocol::ErrorCode;
    /// assert_eq!(ErrorCode::parse("too-large"), Some(ErrorCode::TooLarge));
    /// assert_eq!(ErrorCode::parse("rate-limited"), Some(ErrorCode::Other("rate-limited".into())));
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
            "auth-required" => ErrorCode::AuthRequired,
            "auth-failed" => ErrorCode::AuthFailed,
            "auth-expired" => ErrorCode::AuthExpired,
            "forbidden" => ErrorCode::Forbidden,
            "auth-unavailable" => ErrorCode::AuthUnavailable,
            "tls-required" => ErrorCode::TlsRequired,
            "resumed" => ErrorCode::Resumed,
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

/// 1 to [`MAX_TOKEN`] printable ASCII characters, no spaces.
pub(crate) fn is_token(word: &str) -> bool {
    is_word(word, MAX_TOKEN)
}

/// 1 to `max` printable ASCII characters, no spaces.
fn is_word(word: &str, max: usize) -> bool {
    !word.is_empty() && word.len() <= max && word.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Decoder;

    fn id(id: &str) -> ClientId {
        ClientId::new(id).unwrap()
    }

    fn wire(frame: &Frame) -> String {
        String::from_utf8(frame.to_bytes().to_vec()).unwrap()
    }

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu";
    const SECRET: &str = "Q2F0c0FyZUNvb2xYWFg";

    fn hello_with_secrets() -> Frame {
        Frame::Hello {
            version: 2,
            client_id: id("desk-42"),
            token: Token::new(TOKEN),
            resume: Some(Resume { secret: ResumeSecret::new(SECRET).unwrap(), rx: 9 }),
        }
    }

    fn welcome_with_secret(expires_in: Option<Duration>) -> Frame {
        Frame::Welcome {
            session: SessionId::new("91ddcd751").unwrap(),
            interval: Duration::from_millis(1000),
            max_missed: 3,
            resume: Some(WelcomeResume {
                resumed: true,
                rx: 1,
                secret: ResumeSecret::new(SECRET).unwrap(),
                keep: Duration::from_secs(120),
                expires_in,
            }),
        }
    }

    #[test]
    fn version_1_values_are_written_in_the_version_1_forms() {
        let hello = Frame::Hello {
            version: 1,
            client_id: id("desk-42"),
            token: Token::new(TOKEN),
            resume: Some(Resume { secret: ResumeSecret::new(SECRET).unwrap(), rx: 9 }),
        };
        assert_eq!(wire(&hello), "HELLO 1 desk-42\n", "version 1 has no options");
        let welcome = Frame::Welcome {
            session: SessionId::new("s").unwrap(),
            interval: Duration::from_millis(250),
            max_missed: 3,
            resume: None,
        };
        assert_eq!(wire(&welcome), "WELCOME s 250 3\n");
        assert_eq!(wire(&Frame::data("abc")), "DATA 3\nabc");
    }

    #[test]
    fn version_2_forms_write_their_options_in_the_agreed_order() {
        assert_eq!(wire(&hello_with_secrets()), format!("HELLO 2 desk-42 token={TOKEN} resume={SECRET} rx=9\n"));
        let no_options = Frame::Hello { version: 2, client_id: id("d"), token: None, resume: None };
        assert_eq!(wire(&no_options), "HELLO 2 d\n");
        assert_eq!(
            wire(&welcome_with_secret(Some(Duration::from_millis(3_600_900)))),
            format!("WELCOME 91ddcd751 1000 3 resumed=1 rx=1 resume={SECRET} keep=120000 exp=3600\n")
        );
        assert_eq!(wire(&Frame::Data { seq: Some(0), payload: "x".into() }), "DATA 1 0\nx");
        assert_eq!(wire(&Frame::Ack { seq: u64::MAX }), "ACK 18446744073709551615\n");
    }

    #[test]
    fn debug_and_display_of_frames_never_show_a_token_or_secret() {
        for frame in [hello_with_secrets(), welcome_with_secret(None), welcome_with_secret(Some(Duration::ZERO))] {
            assert!(wire(&frame).contains(SECRET), "the wire carries the secret");
            for shown in [format!("{frame:?}"), format!("{frame}"), format!("{frame:#?}")] {
                assert!(!shown.contains(TOKEN), "{shown}");
                assert!(!shown.contains(SECRET), "{shown}");
            }
        }
        assert_eq!(hello_with_secrets().to_string(), "HELLO 2 desk-42 token=<redacted> resume=<redacted> rx=9");
        assert_eq!(
            welcome_with_secret(None).to_string(),
            "WELCOME 91ddcd751 1000 3 resumed=1 rx=1 resume=<redacted> keep=120000"
        );
        let debug = format!("{:?}", hello_with_secrets());
        assert!(debug.contains("Token(..redacted..)") && debug.contains("ResumeSecret(..redacted..)"), "{debug}");
    }

    #[test]
    fn display_of_data_shows_its_header_only() {
        assert_eq!(Frame::data("hello").to_string(), "DATA 5");
        assert_eq!(Frame::Data { seq: Some(3), payload: "hello".into() }.to_string(), "DATA 5 3");
    }

    #[test]
    fn the_longest_hello_that_can_be_built_fills_max_hello_line_and_decodes() {
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            client_id: id(&"i".repeat(MAX_TOKEN)),
            token: Token::new("t".repeat(Token::MAX_LEN)),
            resume: Some(Resume {
                secret: ResumeSecret::new("s".repeat(ResumeSecret::MAX_LEN)).unwrap(),
                rx: u64::MAX,
            }),
        };
        let bytes = hello.to_bytes();
        assert_eq!(bytes.len(), MAX_HELLO_LINE);
        let mut decoder = Decoder::new(16);
        decoder.extend(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(hello)));
    }

    #[test]
    fn tokens_and_secrets_are_printable_words_within_their_limits() {
        assert!(Token::new("t".repeat(Token::MAX_LEN)).is_some());
        assert!(Token::new("t".repeat(Token::MAX_LEN + 1)).is_none());
        assert!(ResumeSecret::new("s".repeat(ResumeSecret::MAX_LEN)).is_some());
        assert!(ResumeSecret::new("s".repeat(ResumeSecret::MAX_LEN + 1)).is_none());
        for bad in ["", "a b", "tab\t", "new\nline", "é", "\u{7f}"] {
            assert!(Token::new(bad).is_none(), "{bad:?}");
            assert!(ResumeSecret::new(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Token::new("a=b=").unwrap().as_str(), "a=b=");
    }

    #[test]
    fn a_random_secret_is_32_lowercase_hex_characters() {
        let secret = ResumeSecret::from_random([0xab; 16]);
        assert_eq!(secret.as_str(), "ab".repeat(16));
        let secret = ResumeSecret::from_random(*b"\x00\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32");
        assert_eq!(secret.as_str(), "000123456789abcdeffedcba98765432");
        assert!(secret.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(ResumeSecret::from_random([0; 16]), ResumeSecret::from_random([1; 16]));
    }

    #[test]
    fn secrets_compare_by_content() {
        let a = ResumeSecret::new("abcdef").unwrap();
        assert_eq!(a, ResumeSecret::new(String::from("abcdef")).unwrap());
        assert_ne!(a, ResumeSecret::new("abcdeg").unwrap());
        assert_ne!(a, ResumeSecret::new("abcde").unwrap());
        assert_ne!(a, ResumeSecret::new("abcdefg").unwrap());
        assert_eq!(Token::new("t1"), Token::new("t1"));
        assert_ne!(Token::new("t1"), Token::new("t2"));
    }

    #[test]
    fn every_known_error_code_reads_back_as_itself() {
        use ErrorCode::*;
        let known = [
            Malformed,
            TooLarge,
            Unexpected,
            Version,
            BadId,
            Timeout,
            Replaced,
            Shutdown,
            Full,
            AuthRequired,
            AuthFailed,
            AuthExpired,
            Forbidden,
            AuthUnavailable,
            TlsRequired,
            Resumed,
        ];
        for code in known {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code.clone()), "{code}");
        }
        let version_2 = [AuthRequired, AuthFailed, AuthExpired, Forbidden, AuthUnavailable, TlsRequired, Resumed];
        let words: Vec<&str> = version_2.iter().map(ErrorCode::as_str).collect();
        assert_eq!(
            words,
            [
                "auth-required",
                "auth-failed",
                "auth-expired",
                "forbidden",
                "auth-unavailable",
                "tls-required",
                "resumed"
            ]
        );
    }
}
