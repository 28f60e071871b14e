//! What the client tells the application: events, states, reasons and errors.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{IoError, ProtocolViolation};
use crate::protocol::{ErrorCode, SessionId};

/// Something that happened to the connection. Read them from [`Events`](crate::Events).
///
/// Every message [`Client::send`](crate::Client::send) accepted ends in exactly one of
/// [`Event::Delivered`], [`Event::Expired`] and [`Event::Undelivered`] (a volatile message's
/// outcome is the result of its send).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connect attempt starts (attempts count from 1 in each offline period).
    Connecting {
        /// The attempt number.
        attempt: u32,
    },
    /// The handshake completed: the client is online.
    Connected {
        /// The session the server opened, or the one it resumed.
        session: SessionId,
        /// Whether the server resumed the client's session: nothing was lost or duplicated
        /// across the reconnect. When false the session is new (the first connect, or the
        /// server lost the old one; see [`Event::Undelivered`]).
        resumed: bool,
        /// The pulse interval the server announced.
        interval: Duration,
        /// The miss limit the server announced.
        max_missed: u32,
    },
    /// The server pulsed and the client answered `ALIVE`.
    Pulse {
        /// The server's sequence number.
        seq: u64,
        /// How many missed pulses this pulse forgave (0 on a healthy link).
        misses_reset: u32,
    },
    /// A checker interval passed with nothing from the server.
    Missed {
        /// Missed pulses in a row.
        count: u32,
        /// The limit; reaching it loses the connection.
        max: u32,
    },
    /// The connection ended; unless the client was closed, it reconnects.
    Disconnected {
        /// Why it ended.
        reason: DisconnectReason,
    },
    /// The client waits before its next connect attempt.
    BackingOff {
        /// The attempt that will follow the delay.
        attempt: u32,
        /// How long it waits.
        delay: Duration,
        /// How long it has been offline.
        elapsed: Duration,
        /// What went wrong last.
        last_error: Option<Failure>,
    },
    /// A message from the server, handed over once and in order. `seq` is its number in the
    /// session (from 1; 0 for a volatile message, which is not numbered).
    Message {
        /// Its number in the session.
        seq: u64,
        /// The message.
        payload: Bytes,
    },
    /// The server's application has every message up to `up_to` (cumulative, in ticket
    /// order): each reliable message with a ticket up to it that had no other outcome yet is
    /// delivered. Any other outcome of a lower ticket came before this event.
    Delivered {
        /// The highest ticket delivered.
        up_to: Ticket,
        /// How many messages this event delivers.
        count: usize,
    },
    /// A message whose time to live passed before it could be written; it was never sent.
    Expired {
        /// Its ticket.
        ticket: Ticket,
        /// The message, handed back.
        payload: Bytes,
    },
    /// A message the client gives up on, handed back: the client was closed (or refused for
    /// good) before it was acknowledged, or the server started a fresh session (it lost the
    /// old one: restarted, or kept it for less time than the client was away).
    ///
    /// `maybe_delivered` is true when it was written on a connection and may have reached the
    /// server's application; pulsewire never sends such a message again on its own, so an
    /// application that sends it again gets it at least once. When false, it never left the
    /// client.
    Undelivered {
        /// Its ticket.
        ticket: Ticket,
        /// The message, handed back.
        payload: Bytes,
        /// Whether it was written and may have arrived.
        maybe_delivered: bool,
    },
    /// The client stopped for good; this is the last event.
    Closed {
        /// Why it stopped.
        reason: CloseReason,
    },
}

/// The receipt of an accepted message: the events about it name it. Tickets count up from 1
/// in the order messages are accepted, for the life of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub(crate) u64);

impl Ticket {
    /// The ticket as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The client's state as [`Client::state`](crate::Client::state) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Not connected, about to decide what to do.
    Offline,
    /// A connect attempt (TCP connect and handshake) is under way.
    Connecting {
        /// The attempt number.
        attempt: u32,
    },
    /// Connected and pulsing.
    Online {
        /// The session.
        session: SessionId,
        /// Missed pulses in a row right now (0 on a healthy link).
        misses: u32,
    },
    /// Waiting before the next attempt.
    BackingOff {
        /// The attempt that will follow.
        attempt: u32,
        /// The whole delay.
        next_delay: Duration,
        /// When the attempt starts.
        retry_at: Instant,
    },
    /// Stopped for good.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a live connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The checker counted `missed` missed pulses in a row: the server is dead, frozen or
    /// unreachable, even if TCP said nothing.
    PulseTimeout {
        /// Missed pulses in a row.
        missed: u32,
    },
    /// The server said `BYE` with this word (`shutdown` when it is stopping).
    ServerGoodbye {
        /// The server's reason word.
        reason: String,
    },
    /// The server sent `ERROR` and closed.
    ServerError {
        /// The code.
        code: ErrorCode,
        /// The server's explanation.
        text: String,
    },
    /// The server closed the connection without a word.
    Eof,
    /// The connection was reset.
    Reset,
    /// Another socket error.
    Io(IoError),
    /// The server broke the protocol; the client sent it `ERROR` and closed.
    Protocol(ProtocolViolation),
    /// The application closed the client.
    ClosedByApplication,
}

impl DisconnectReason {
    pub(crate) fn from_io(error: &io::Error) -> DisconnectReason {
        match error.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                DisconnectReason::Reset
            }
            io::ErrorKind::UnexpectedEof => DisconnectReason::Eof,
            _ => DisconnectReason::Io(IoError::from(error)),
        }
    }

    /// Whether the server told this client not to come back (`replaced`, `version`, `bad-id`):
    /// reconnecting would only repeat the refusal or fight the other connection.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DisconnectReason::ServerError { code, .. } if is_fatal_code(code))
    }
}

/// The server's refusals that the same client would meet again: the client stops. (The
/// token is the client's configuration, so a refused token is refused again.)
pub(crate) fn is_fatal_code(code: &ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Replaced
            | ErrorCode::Version
            | ErrorCode::BadId
            | ErrorCode::AuthRequired
            | ErrorCode::AuthFailed
            | ErrorCode::AuthExpired
            | ErrorCode::Forbidden
            | ErrorCode::TlsRequired
    )
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PulseTimeout { missed } => {
                write!(f, "no pulse from the server ({missed} missed)")
            }
            DisconnectReason::ServerGoodbye { reason } => {
                write!(f, "the server said goodbye ({reason})")
            }
            DisconnectReason::ServerError { code, text } => {
                write!(f, "the server sent error {code}: {text}")
            }
            DisconnectReason::Eof => f.write_str("the server closed the connection"),
            DisconnectReason::Reset => f.write_str("the connection was reset"),
            DisconnectReason::Io(error) => write!(f, "socket error: {error}"),
            DisconnectReason::Protocol(violation) => {
                write!(f, "the server broke the protocol: {violation}")
            }
            DisconnectReason::ClosedByApplication => f.write_str("closed by the application"),
        }
    }
}

/// Why a connect attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// Resolving or connecting failed (refused, unreachable, …).
    Io(IoError),
    /// The TCP connect took longer than the connect timeout.
    ConnectTimeout(Duration),
    /// The server did not answer `HELLO` within the handshake timeout.
    HandshakeTimeout(Duration),
    /// The server closed the connection during the handshake.
    Eof,
    /// The server answered `HELLO` with `ERROR`.
    Rejected {
        /// The code.
        code: ErrorCode,
        /// The server's explanation.
        text: String,
    },
    /// The server's answer broke the protocol.
    Protocol(ProtocolViolation),
    /// The token provider failed, or gave something that is not a token; nothing was sent.
    TokenProvider(String),
    /// The TLS handshake failed: the server's certificate was refused (with the reason), or
    /// the server does not speak TLS on that port. The client backs off and tries again, as
    /// for any failed attempt: an operator may fix the server meanwhile.
    Tls(crate::tls::TlsError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(error) => write!(f, "connect failed: {error}"),
            ConnectError::ConnectTimeout(limit) => write!(f, "connect timed out after {limit:?}"),
            ConnectError::HandshakeTimeout(limit) => write!(f, "no WELCOME within {limit:?}"),
            ConnectError::Eof => f.write_str("the server closed the connection during the handshake"),
            ConnectError::Rejected { code, text } => {
                write!(f, "the server refused: {code}: {text}")
            }
            ConnectError::Protocol(violation) => write!(f, "bad handshake answer: {violation}"),
            ConnectError::TokenProvider(why) => write!(f, "no token: {why}"),
            ConnectError::Tls(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What ended the previous attempt or connection, as reported in [`Event::BackingOff`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A connect attempt failed.
    Connect(ConnectError),
    /// A live connection ended.
    Disconnected(DisconnectReason),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(error) => error.fmt(f),
            Failure::Disconnected(reason) => reason.fmt(f),
        }
    }
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Client::close`](crate::Client::close) was called, or every handle was dropped.
    Application,
    /// The reconnect policy's attempt or time limit was reached.
    GaveUp {
        /// Attempts made in the last offline period.
        attempts: u32,
        /// How long that period lasted.
        elapsed: Duration,
    },
    /// The server refused this client in a way retrying cannot fix (`replaced`, `version`,
    /// `bad-id`, and with this client's token `auth-required`, `auth-failed`, `auth-expired`,
    /// `forbidden`, `tls-required`).
    Rejected {
        /// The code.
        code: ErrorCode,
        /// The server's explanation.
        text: String,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Application => f.write_str("closed by the application"),
            CloseReason::GaveUp { attempts, elapsed } => {
                write!(f, "gave up after {attempts} attempts in {elapsed:?}")
            }
            CloseReason::Rejected { code, text } => {
                write!(f, "rejected by the server: {code}: {text}")
            }
        }
    }
}

/// Why [`Client::send`](crate::Client::send) or [`Client::try_send`](crate::Client::try_send)
/// refused a message. Every variant hands the payload back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// A volatile message while the client is not online: volatile messages are never kept for
    /// later (every other message is queued in the outbox, online or offline).
    Offline(Bytes),
    /// The outbox is full (its [`OutboxLimits`](crate::core::OutboxLimits)): from `try_send`, and
    /// from `send` while offline (online, `send` waits for room).
    Full(Bytes),
    /// The payload is above the configured limit.
    TooLarge {
        /// The payload.
        payload: Bytes,
        /// The limit.
        max: usize,
    },
    /// The client is closed.
    Closed(Bytes),
}

impl SendError {
    /// The refused payload.
    pub fn into_payload(self) -> Bytes {
        match self {
            SendError::Offline(payload)
            | SendError::Full(payload)
            | SendError::Closed(payload)
            | SendError::TooLarge { payload, .. } => payload,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Offline(_) => f.write_str("not sent: the client is offline"),
            SendError::Full(_) => f.write_str("not sent: the send queue is full"),
            SendError::TooLarge { payload, max } => {
                write!(f, "not sent: {} bytes exceed the limit of {max}", payload.len())
            }
            SendError::Closed(_) => f.write_str("not sent: the client is closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why [`Client::probe`](crate::Client::probe) has no round trip to report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeError {
    /// The client is not online.
    Offline,
    /// The connection ended before the answer came.
    Disconnected,
    /// Too many probes are waiting for answers already.
    TooMany,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Offline => f.write_str("probe failed: the client is offline"),
            ProbeError::Disconnected => f.write_str("probe failed: the connection ended before the answer"),
            ProbeError::TooMany => f.write_str("probe failed: too many probes in flight"),
        }
    }
}

impl std::error::Error for ProbeError {}
