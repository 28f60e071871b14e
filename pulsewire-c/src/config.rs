//! The settings a host gives as `key = value` strings, checked one by one as they are set and
//! turned into a [`ClientConfig`] by `pulsewire_client_new`.

use std::path::PathBuf;
use std::time::Duration;

use pulsewire::tls::ClientTls;
use pulsewire::{ClientConfig, ResumeState};

use crate::error::Failure;
use crate::PULSEWIRE_E_CONFIG;

/// The keys `pulsewire_config_set` knows, in the order the docs list them.
pub(crate) const KEYS: &[&str] = &[
    "server",
    "client_id",
    "token",
    "tls",
    "tls_ca_file",
    "initial_delay_ms",
    "max_delay_ms",
    "multiplier",
    "jitter",
    "max_attempts",
    "max_elapsed_ms",
    "max_payload",
    "connect_timeout_ms",
    "handshake_timeout_ms",
    "close_timeout_ms",
    "outbox_messages",
    "outbox_bytes",
    "resume_state_file",
];

/// What the host set; `None` keeps the builder's default.
#[derive(Debug, Default, Clone)]
pub(crate) struct Settings {
    server: Option<String>,
    client_id: Option<String>,
    token: Option<String>,
    tls: Option<bool>,
    tls_ca_file: Option<PathBuf>,
    initial_delay: Option<Duration>,
    max_delay: Option<Duration>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    max_payload: Option<usize>,
    connect_timeout: Option<Duration>,
    handshake_timeout: Option<Duration>,
    close_timeout: Option<Duration>,
    outbox_messages: Option<usize>,
    outbox_bytes: Option<usize>,
    pub(crate) resume_state_file: Option<PathBuf>,
}

fn bad(key: &str, value: &str, expected: &str) -> Failure {
    Failure::new(PULSEWIRE_E_CONFIG, format!("config key {key:?}: bad value {value:?} (expected {expected})"))
}

fn number<T: std::str::FromStr>(key: &str, value: &str, expected: &str) -> Result<T, Failure> {
    value.trim().parse().map_err(|_| bad(key, value, expected))
}

fn millis(key: &str, value: &str) -> Result<Duration, Failure> {
    number::<u64>(key, value, "milliseconds as a whole number").map(Duration::from_millis)
}

fn fraction(key: &str, value: &str) -> Result<f64, Failure> {
    let x: f64 = number(key, value, "a number")?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(bad(key, value, "a finite number"))
    }
}

fn text(key: &str, value: &str) -> Result<String, Failure> {
    if value.is_empty() {
        Err(bad(key, value, "a non-empty string"))
    } else {
        Ok(value.to_string())
    }
}

impl Settings {
    /// Sets one key; an unknown key or a value that does not parse is an error naming the key.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), Failure> {
        match key {
            "server" => self.server = Some(text(key, value)?),
            "client_id" => self.client_id = Some(text(key, value)?),
            "token" => self.token = Some(text(key, value)?),
            "tls" => {
                self.tls = Some(match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(bad(key, value, "true or false")),
                })
            }
            "tls_ca_file" => self.tls_ca_file = Some(PathBuf::from(text(key, value)?)),
            "initial_delay_ms" => self.initial_delay = Some(millis(key, value)?),
            "max_delay_ms" => self.max_delay = Some(millis(key, value)?),
            "multiplier" => self.multiplier = Some(fraction(key, value)?),
            "jitter" => self.jitter = Some(fraction(key, value)?),
            "max_attempts" => self.max_attempts = Some(number(key, value, "a whole number")?),
            "max_elapsed_ms" => self.max_elapsed = Some(millis(key, value)?),
            "max_payload" => self.max_payload = Some(number(key, value, "a number of bytes")?),
            "connect_timeout_ms" => self.connect_timeout = Some(millis(key, value)?),
            "handshake_timeout_ms" => self.handshake_timeout = Some(millis(key, value)?),
            "close_timeout_ms" => self.close_timeout = Some(millis(key, value)?),
            "outbox_messages" => self.outbox_messages = Some(number(key, value, "a whole number")?),
            "outbox_bytes" => self.outbox_bytes = Some(number(key, value, "a number of bytes")?),
            "resume_state_file" => self.resume_state_file = Some(PathBuf::from(text(key, value)?)),
            _ => {
                return Err(Failure::new(
                    PULSEWIRE_E_CONFIG,
                    format!("unknown config key {key:?} (known: {})", KEYS.join(", ")),
                ))
            }
        }
        Ok(())
    }

    /// The client configuration, validated by the SDK's builder; a saved resume state is read
    /// from `resume_state_file` when that file exists.
    pub(crate) fn build(&self) -> Result<ClientConfig, Failure> {
        let required = |key: &str, value: &Option<String>| {
            value.clone().ok_or_else(|| Failure::new(PULSEWIRE_E_CONFIG, format!("config key {key:?} is required")))
        };
        let mut builder =
            ClientConfig::builder(required("server", &self.server)?, required("client_id", &self.client_id)?);
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        match (self.tls, &self.tls_ca_file) {
            (Some(false), Some(_)) => {
                return Err(Failure::new(PULSEWIRE_E_CONFIG, "config key \"tls_ca_file\" is set but \"tls\" is false"))
            }
            (_, Some(path)) => {
                let tls = ClientTls::ca_file(path).map_err(|error| {
                    Failure::new(PULSEWIRE_E_CONFIG, format!("config key \"tls_ca_file\": {}: {error}", path.display()))
                })?;
                builder = builder.tls(tls);
            }
            (Some(true), None) => builder = builder.tls(ClientTls::webpki_roots()),
            _ => {}
        }
        if let Some(v) = self.multiplier {
            builder = builder.multiplier(v);
        }
        if let Some(v) = self.max_attempts {
            builder = builder.max_attempts(v);
        }
        if let Some(v) = self.max_elapsed {
            builder = builder.max_elapsed(v);
        }
        if let Some(v) = self.max_delay {
            builder = builder.max_delay(v);
        }
        if let Some(v) = self.initial_delay {
            builder = builder.initial_delay(v);
        }
        if let Some(v) = self.jitter {
            builder = builder.jitter(v);
        }
        if let Some(v) = self.max_payload {
            builder = builder.max_payload(v);
        }
        if let Some(v) = self.connect_timeout {
            builder = builder.connect_timeout(v);
        }
        if let Some(v) = self.handshake_timeout {
            builder = builder.handshake_timeout(v);
        }
        if let Some(v) = self.close_timeout {
            builder = builder.close_timeout(v);
        }
        if self.outbox_messages.is_some() || self.outbox_bytes.is_some() {
            let defaults = pulsewire::core::OutboxLimits::default();
            builder = builder.outbox(
                self.outbox_messages.unwrap_or(defaults.max_messages),
                self.outbox_bytes.unwrap_or(defaults.max_bytes),
            );
        }
        if let Some(state) = self.saved_resume_state()? {
            builder = builder.resume(state);
        }
        builder.build().map_err(|error| Failure::new(PULSEWIRE_E_CONFIG, format!("invalid config: {error}")))
    }

    fn saved_resume_state(&self) -> Result<Option<ResumeState>, Failure> {
        let Some(path) = &self.resume_state_file else { return Ok(None) };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(Failure::new(
                    PULSEWIRE_E_CONFIG,
                    format!("config key \"resume_state_file\": {}: {error}", path.display()),
                ))
            }
        };
        ResumeState::from_text(&text).map(Some).ok_or_else(|| {
            Failure::new(
                PULSEWIRE_E_CONFIG,
                format!("config key \"resume_state_file\": {} holds no resume state", path.display()),
            )
        })
    }
}
