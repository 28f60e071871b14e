//! SDK events turned into the fixed C struct plus the bytes that go to the host's buffer.

use pulsewire::{CloseReason, ConnectError, DisconnectReason, Event, Failure, ProbeError};

use crate::*;

/// An event waiting in the handle's queue: the struct (its `struct_size` unset) and its data.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) head: pulsewire_event,
    pub(crate) data: bytes::Bytes,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn blank(kind: u32) -> pulsewire_event {
    pulsewire_event {
        struct_size: 0,
        kind,
        data_len: 0,
        seq: 0,
        ticket: 0,
        token: 0,
        delay_ms: 0,
        elapsed_ms: 0,
        rtt_us: 0,
        count: 0,
        attempt: 0,
        max: 0,
        reason: PULSEWIRE_REASON_NONE,
        resumed: 0,
        maybe_delivered: 0,
        _padding: [0; 2],
    }
}

fn disconnect_reason(reason: &DisconnectReason) -> u32 {
    match reason {
        DisconnectReason::PulseTimeout { .. } => PULSEWIRE_REASON_PULSE_TIMEOUT,
        DisconnectReason::ServerGoodbye { .. } => PULSEWIRE_REASON_SERVER_GOODBYE,
        DisconnectReason::ServerError { .. } => PULSEWIRE_REASON_SERVER_ERROR,
        DisconnectReason::Eof => PULSEWIRE_REASON_EOF,
        DisconnectReason::Reset => PULSEWIRE_REASON_RESET,
        DisconnectReason::Io(_) => PULSEWIRE_REASON_IO,
        DisconnectReason::Protocol(_) => PULSEWIRE_REASON_PROTOCOL,
        DisconnectReason::ClosedByApplication => PULSEWIRE_REASON_CLOSED_BY_APPLICATION,
        _ => PULSEWIRE_REASON_OTHER,
    }
}

fn connect_reason(error: &ConnectError) -> u32 {
    match error {
        ConnectError::Io(_) => PULSEWIRE_REASON_CONNECT_FAILED,
        ConnectError::ConnectTimeout(_) => PULSEWIRE_REASON_CONNECT_TIMEOUT,
        ConnectError::HandshakeTimeout(_) => PULSEWIRE_REASON_HANDSHAKE_TIMEOUT,
        ConnectError::Eof => PULSEWIRE_REASON_HANDSHAKE_EOF,
        ConnectError::Rejected { .. } => PULSEWIRE_REASON_REJECTED,
        ConnectError::Protocol(_) => PULSEWIRE_REASON_PROTOCOL,
        ConnectError::TokenProvider(_) => PULSEWIRE_REASON_TOKEN_PROVIDER,
        ConnectError::Tls(_) => PULSEWIRE_REASON_TLS,
        _ => PULSEWIRE_REASON_OTHER,
    }
}

fn text(s: String) -> bytes::Bytes {
    bytes::Bytes::from(s.into_bytes())
}

/// The C form of an SDK event.
pub(crate) fn from_sdk(event: Event) -> Queued {
    let mut data = bytes::Bytes::new();
    let head = match event {
        Event::Connecting { attempt } => pulsewire_event { attempt, ..blank(PULSEWIRE_EVENT_CONNECTING) },
        Event::Connected { session, resumed, interval, max_missed } => {
            data = text(session.to_string());
            pulsewire_event {
                resumed: resumed.into(),
                delay_ms: millis(interval),
                max: max_missed,
                ..blank(PULSEWIRE_EVENT_CONNECTED)
            }
        }
        Event::Pulse { seq, misses_reset } => {
            pulsewire_event { seq, count: misses_reset.into(), ..blank(PULSEWIRE_EVENT_PULSE) }
        }
        Event::Missed { count, max } => pulsewire_event { count: count.into(), max, ..blank(PULSEWIRE_EVENT_MISSED) },
        Event::Disconnected { reason } => {
            let code = disconnect_reason(&reason);
            let missed = match reason {
                DisconnectReason::PulseTimeout { missed } => missed,
                _ => 0,
            };
            data = text(reason.to_string());
            pulsewire_event { reason: code, count: missed.into(), ..blank(PULSEWIRE_EVENT_DISCONNECTED) }
        }
        Event::BackingOff { attempt, delay, elapsed, last_error } => {
            let reason = match &last_error {
                None => PULSEWIRE_REASON_NONE,
                Some(Failure::Connect(error)) => connect_reason(error),
                Some(Failure::Disconnected(reason)) => disconnect_reason(reason),
                Some(_) => PULSEWIRE_REASON_OTHER,
            };
            if let Some(error) = last_error {
                data = text(error.to_string());
            }
            pulsewire_event {
                attempt,
                delay_ms: millis(delay),
                elapsed_ms: millis(elapsed),
                reason,
                ..blank(PULSEWIRE_EVENT_BACKING_OFF)
            }
        }
        Event::Message { seq, payload } => {
            data = payload;
            pulsewire_event { seq, ..blank(PULSEWIRE_EVENT_MESSAGE) }
        }
        Event::Delivered { up_to, count } => pulsewire_event {
            ticket: up_to.get(),
            count: u64::try_from(count).unwrap_or(u64::MAX),
            ..blank(PULSEWIRE_EVENT_DELIVERED)
        },
        Event::Expired { ticket, payload } => {
            data = payload;
            pulsewire_event { ticket: ticket.get(), ..blank(PULSEWIRE_EVENT_EXPIRED) }
        }
        Event::Undelivered { ticket, payload, maybe_delivered } => {
            data = payload;
            pulsewire_event {
                ticket: ticket.get(),
                maybe_delivered: maybe_delivered.into(),
                ..blank(PULSEWIRE_EVENT_UNDELIVERED)
            }
        }
        Event::Closed { reason } => {
            let (code, attempt, elapsed_ms) = match &reason {
                CloseReason::Application => (PULSEWIRE_REASON_CLOSED_BY_APPLICATION, 0, 0),
                CloseReason::GaveUp { attempts, elapsed } => (PULSEWIRE_REASON_GAVE_UP, *attempts, millis(*elapsed)),
                CloseReason::Rejected { .. } => (PULSEWIRE_REASON_REJECTED, 0, 0),
                _ => (PULSEWIRE_REASON_OTHER, 0, 0),
            };
            data = text(reason.to_string());
            pulsewire_event { reason: code, attempt, elapsed_ms, ..blank(PULSEWIRE_EVENT_CLOSED) }
        }
        // An SDK event newer than this library: the host hears that one was skipped.
        other => {
            data = text(format!("{other:?}"));
            blank(PULSEWIRE_EVENT_DROPPED)
        }
    };
    Queued { head, data }
}

/// The PROBE event for `token`: its round trip or why there is none.
pub(crate) fn probe(token: u64, result: Result<std::time::Duration, ProbeError>) -> Queued {
    match result {
        Ok(rtt) => Queued {
            head: pulsewire_event {
                token,
                rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                ..blank(PULSEWIRE_EVENT_PROBE)
            },
            data: bytes::Bytes::new(),
        },
        Err(error) => {
            let reason = match error {
                ProbeError::Offline => PULSEWIRE_REASON_PROBE_OFFLINE,
                ProbeError::Disconnected => PULSEWIRE_REASON_PROBE_DISCONNECTED,
                ProbeError::TooMany => PULSEWIRE_REASON_PROBE_TOO_MANY,
                _ => PULSEWIRE_REASON_OTHER,
            };
            Queued {
                head: pulsewire_event { token, reason, ..blank(PULSEWIRE_EVENT_PROBE) },
                data: text(error.to_string()),
            }
        }
    }
}
