//! The error types both sides share: socket errors, protocol violations, configuration errors.

use std::fmt;
use std::io;

use crate::core::PolicyError;
use crate::protocol::{DecodeError, ErrorCode, InvalidClientId};

/// An I/O error in a form that can be cloned and compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError {
    /// The kind.
    pub kind: io::ErrorKind,
    /// The operating system's message.
    pub message: String,
}

impl From<&io::Error> for IoError {
    fn from(error: &io::Error) -> Self {
        IoError { kind: error.kind(), message: error.to_string() }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A frame from the other side that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// Bytes that do not decode.
    Decode(DecodeError),
    /// A valid frame at the wrong moment.
    Unexpected {
        /// Its verb.
        verb: &'static str,
    },
    /// A frame that decodes but breaks a rule of the session: a gap in the message numbers,
    /// an `ACK` above what was sent, a version 1 form on a version 2 connection.
    Malformed {
        /// Its verb.
        verb: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl ProtocolViolation {
    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolViolation::Decode(error) => error.code(),
            ProtocolViolation::Unexpected { .. } => ErrorCode::Unexpected,
            ProtocolViolation::Malformed { .. } => ErrorCode::Malformed,
        }
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolViolation::Decode(error) => error.fmt(f),
            ProtocolViolation::Unexpected { verb } => write!(f, "unexpected {verb}"),
            ProtocolViolation::Malformed { verb, detail } => write!(f, "bad {verb}: {detail}"),
        }
    }
}

/// The largest payload limit either side accepts: 1 GiB.
pub const MAX_PAYLOAD_LIMIT: usize = 1 << 30;

pub(crate) fn validate_payload(bytes: usize) -> Result<(), ConfigError> {
    if bytes == 0 || bytes > MAX_PAYLOAD_LIMIT {
        return Err(ConfigError::MaxPayload(bytes));
    }
    Ok(())
}

/// A configuration value that was rejected, client or server.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The client id breaks the id rules.
    ClientId(InvalidClientId),
    /// The address is not `host:port` with a non-zero port.
    Address(String),
    /// The reconnect policy is inconsistent.
    Reconnect(PolicyError),
    /// A duration that must be positive is zero.
    ZeroDuration(&'static str),
    /// A count that must be positive is zero.
    ZeroCount(&'static str),
    /// The payload limit is 0 or above [`MAX_PAYLOAD_LIMIT`].
    MaxPayload(usize),
    /// The TLS server name (the host of the server address, or
    /// [`ClientTls::server_name`](crate::tls::ClientTls::server_name)) is neither a DNS name
    /// nor an IP address.
    ServerName(String),
    /// A value outside its documented range.
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ClientId(error) => error.fmt(f),
            ConfigError::Address(addr) => write!(f, "server address {addr:?} is not host:port with a non-zero port"),
            ConfigError::Reconnect(error) => error.fmt(f),
            ConfigError::ServerName(name) => {
                write!(f, "TLS server name {name:?} is neither a DNS name nor an IP address")
            }
            ConfigError::ZeroDuration(name) => write!(f, "{name} must be above zero"),
            ConfigError::ZeroCount(name) => write!(f, "{name} must be at least 1"),
            ConfigError::MaxPayload(bytes) => {
                write!(f, "max payload {bytes} must be between 1 and {MAX_PAYLOAD_LIMIT} bytes")
            }
            ConfigError::OutOfRange { name, expected } => write!(f, "{name} must be {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::ClientId(error) => Some(error),
            ConfigError::Reconnect(error) => Some(error),
            _ => None,
        }
    }
}
