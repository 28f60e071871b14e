//! Reasons in plain words: what a person watching the window should understand from an SDK
//! reason, without knowing the protocol. The SDK's own `Display` stays in the event log.

use pulsewire::protocol::ErrorCode;
use pulsewire::tls::TlsError;
use pulsewire::{CloseReason, ConnectError, DisconnectReason, Failure, OfflineReason};

/// Why the connection ended, for the headline.
pub fn disconnect(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::PulseTimeout { missed } => format!(
            "The server went silent: {missed} pulses in a row never came, although the connection \
             still looked open (a frozen server or a dead link)."
        ),
        DisconnectReason::ServerGoodbye { reason } if reason == "shutdown" => {
            "The server shut down and said goodbye.".to_owned()
        }
        DisconnectReason::ServerGoodbye { reason } => format!("The server said goodbye ({reason})."),
        DisconnectReason::ServerError { code: ErrorCode::Timeout, .. } => {
            "The server stopped hearing from this client and evicted it.".to_owned()
        }
        DisconnectReason::ServerError { code: ErrorCode::AuthExpired, .. } => {
            "The server ended the connection: the client's credential expired (a client with a token provider \
             gets a new token and resumes its session)."
                .to_owned()
        }
        DisconnectReason::ServerError { code, text } => format!("The server sent an error ({code}: {text})."),
        DisconnectReason::Eof => "The server closed the connection without a word (it stopped or crashed).".to_owned(),
        DisconnectReason::Reset => {
            "The connection was reset (the server crashed or the network dropped it).".to_owned()
        }
        DisconnectReason::Io(error) => format!("A network error ended the connection ({error})."),
        DisconnectReason::Protocol(violation) => {
            format!("The server broke the protocol ({violation}), so the client hung up.")
        }
        DisconnectReason::ClosedByApplication => "This app closed the connection.".to_owned(),
        other => format!("The connection ended ({other})."),
    }
}

/// Why a connect attempt failed.
pub fn connect(error: &ConnectError) -> String {
    match error {
        ConnectError::Io(error) if error.kind == std::io::ErrorKind::ConnectionRefused => {
            "nobody listens at the server address".to_owned()
        }
        ConnectError::Io(error) => format!("could not connect ({error})"),
        ConnectError::ConnectTimeout(limit) => format!("the server did not accept within {}", seconds(limit)),
        ConnectError::HandshakeTimeout(limit) => {
            format!("the server did not answer HELLO within {}", seconds(limit))
        }
        ConnectError::Eof => "the connection closed during the handshake (is the server down?)".to_owned(),
        ConnectError::Rejected { code: ErrorCode::Timeout, .. } => {
            "the server gave up waiting for this client's HELLO".to_owned()
        }
        ConnectError::Rejected { code, text } => format!("the server refused ({code}: {text})"),
        ConnectError::Protocol(violation) => format!("the server answered nonsense ({violation})"),
        ConnectError::Tls(error) => tls(error),
        other => other.to_string(),
    }
}

/// Why a TLS handshake failed: the SDK's words, and what they mean here.
pub fn tls(error: &TlsError) -> String {
    let meaning = match error {
        TlsError::UnknownIssuer => "this client does not trust the CA that signed it",
        TlsError::WrongName { .. } => "the certificate names another server",
        TlsError::Expired | TlsError::NotYetValid => "check the clocks, or renew the certificate",
        TlsError::NotTls => "the client reached a plaintext listener",
        _ => "the handshake failed, so no HELLO was sent",
    };
    format!("TLS refused: {error} ({meaning})")
}

/// What went wrong last before a retry.
pub fn failure(failure: &Failure) -> String {
    match failure {
        Failure::Connect(error) => connect(error),
        Failure::Disconnected(reason) => disconnect(reason),
        other => other.to_string(),
    }
}

/// Why the client stopped for good.
pub fn close(reason: &CloseReason) -> String {
    match reason {
        CloseReason::Application => "Closed by this app (it said BYE).".to_owned(),
        CloseReason::GaveUp { attempts, elapsed } => {
            format!("Gave up after {attempts} attempts in {}.", seconds(elapsed))
        }
        CloseReason::Rejected { code: ErrorCode::Replaced, .. } => {
            "Another client with the same id took this one's place; it will not fight back.".to_owned()
        }
        CloseReason::Rejected { code: ErrorCode::Forbidden, .. } => {
            "Refused by the server for good (forbidden): this id is held by another subject, or the token's \
             subject may not use it."
                .to_owned()
        }
        CloseReason::Rejected { code, text } => format!("Refused by the server for good ({code}: {text})."),
        other => format!("Stopped for good: {other}."),
    }
}

/// Why the server took a peer offline.
pub fn offline(reason: &OfflineReason) -> String {
    match reason {
        OfflineReason::Goodbye { reason } => format!("said goodbye ({reason})"),
        OfflineReason::Timeout { misses } => format!("evicted: silent for {misses} pulse intervals"),
        OfflineReason::PeerError { code: ErrorCode::Timeout, .. } => "gave up on the server's pulses".to_owned(),
        OfflineReason::Reset => "its connection was cut".to_owned(),
        other => other.to_string(),
    }
}

/// A duration as seconds with one decimal: "2.5 s".
pub fn seconds(duration: &std::time::Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pulse_timeout_says_the_server_went_silent_with_the_count() {
        let words = disconnect(&DisconnectReason::PulseTimeout { missed: 3 });
        assert!(words.contains("went silent") && words.contains("3 pulses"), "{words}");
    }

    #[test]
    fn an_eviction_by_the_server_is_told_apart_from_other_errors() {
        let evicted = disconnect(&DisconnectReason::ServerError { code: ErrorCode::Timeout, text: "x".into() });
        assert!(evicted.contains("evicted"), "{evicted}");
        let other = disconnect(&DisconnectReason::ServerError { code: ErrorCode::Malformed, text: "bad".into() });
        assert!(other.contains("malformed: bad"), "{other}");
    }

    #[test]
    fn a_refused_connection_says_nobody_listens() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let words = connect(&ConnectError::Io((&io).into()));
        assert_eq!(words, "nobody listens at the server address");
    }

    #[test]
    fn an_expired_credential_is_told_in_words_on_both_sides() {
        let reason = DisconnectReason::ServerError { code: ErrorCode::AuthExpired, text: "x".into() };
        assert!(disconnect(&reason).contains("credential expired"), "{}", disconnect(&reason));
        assert_eq!(offline(&OfflineReason::AuthExpired), "its credential expired");
        let refused = close(&CloseReason::Rejected { code: ErrorCode::Forbidden, text: "x".into() });
        assert!(refused.contains("held by another subject"), "{refused}");
    }

    #[test]
    fn a_refused_certificate_keeps_the_sdks_words_and_says_what_they_mean() {
        let words = connect(&ConnectError::Tls(TlsError::UnknownIssuer));
        assert_eq!(
            words,
            "TLS refused: the server's certificate is signed by an unknown authority (this client does not trust \
             the CA that signed it)"
        );
        assert!(tls(&TlsError::NotTls).ends_with("(the client reached a plaintext listener)"));
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(seconds(&Duration::from_millis(2500)), "2.5 s");
        let words = close(&CloseReason::GaveUp { attempts: 4, elapsed: Duration::from_secs(12) });
        assert_eq!(words, "Gave up after 4 attempts in 12.0 s.");
    }
}
