//! The wire protocol, version 1: frames, their encoding and a streaming decoder.
//!
//! This module is pure: no sockets, no clocks. See `docs/protocol.md` for the protocol itself.

mod decode;
mod frame;

pub use decode::{DecodeError, Decoder};
pub use frame::{
    ClientId, ErrorCode, Frame, InvalidClientId, SessionId, DEFAULT_MAX_PAYLOAD, MAX_LINE, MAX_TOKEN, PROTOCOL_VERSION,
};
