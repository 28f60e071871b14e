//! The wire protocol, versions 1 and 2: frames, their encoding and a streaming decoder.
//!
//! This module is pure: no sockets, no clocks, no randomness of its own. See `docs/protocol.md`
//! for the protocol itself.

mod decode;
mod frame;

pub use decode::{DecodeError, Decoder};
pub use frame::{
    ClientId, ErrorCode, Frame, InvalidClientId, Resume, ResumeSecret, SessionId, Token, WelcomeResume,
    DEFAULT_MAX_PAYLOAD, MAX_HELLO_LINE, MAX_LINE, MAX_TOKEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
