//! The command line: flags, their help, and the server configuration they describe.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use pulsewire::{ConfigError, ServerConfig};

use crate::output::Format;

/// A pulsewire server you can run: it pulses every peer, evicts the silent ones and prints
/// who is online.
///
/// Every event goes to stdout, one line each (text, or JSON with --json); logs go to stderr
/// (filter them with RUST_LOG, default `info`). Each line typed on stdin is sent to every
/// online peer. Ctrl-C or SIGTERM sends `BYE shutdown` to every peer and exits; a second one
/// exits at once.
#[derive(Debug, Parser)]
#[command(name = "demo-server", version, about, long_about)]
pub struct Cli {
    /// The address to listen on; port 0 picks a free port (printed on the first line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,

    /// How often every online peer is pulsed, e.g. `50ms`, `1s`, `2m`: whole milliseconds from
    /// 1 ms to 1 h.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// How many pulses in a row a peer may leave unanswered; one more and it is evicted
    /// (at least 1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_missed: u32,

    /// The largest message, in bytes, accepted from a peer; a larger one is a protocol error
    /// that closes its connection.
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576)]
    pub max_payload: usize,

    /// How long a new connection may take to send `HELLO` before it is closed, e.g. `5s`.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How many frames may wait to be written to one peer (at least 2); a peer that does not
    /// read until its queue is full is dropped.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub outbound_queue: usize,

    /// How long one write to a peer may block before the peer is dropped, e.g. `5s`.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// The most peers online at once; a `HELLO` beyond it is answered `ERROR full` (default:
    /// the SDK's, see `ServerConfigBuilder::max_peers`).
    #[arg(long, value_name = "N")]
    pub max_peers: Option<usize>,

    /// The most connections one IP address may hold at once (default: no limit).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// The most connections in their handshake at once, a bound against peers that connect and
    /// never speak (default: the SDK's, see `ServerConfigBuilder::max_handshakes`).
    #[arg(long, value_name = "N")]
    pub max_handshakes: Option<usize>,

    /// Do not echo messages: by default every message a peer sends is sent back to it.
    #[arg(long)]
    pub no_echo: bool,

    /// Print one JSON object per line instead of text, for programs to read.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The server configuration the flags describe, validated by the SDK: an out-of-range value
    /// gives a readable error such as `interval must be ...`.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let mut builder = ServerConfig::builder()
            .listen(self.listen)
            .interval(self.interval)
            .max_missed(self.max_missed)
            .max_payload(self.max_payload)
            .handshake_timeout(self.handshake_timeout)
            .outbound_queue(self.outbound_queue)
            .write_timeout(self.write_timeout);
        if let Some(peers) = self.max_peers {
            builder = builder.max_peers(peers);
        }
        if let Some(connections) = self.max_connections_per_ip {
            builder = builder.max_connections_per_ip(connections);
        }
        if let Some(handshakes) = self.max_handshakes {
            builder = builder.max_handshakes(handshakes);
        }
        builder.build()
    }

    /// The output format chosen.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Text
        }
    }

    /// Whether peers' messages are echoed back to them.
    pub fn echo(&self) -> bool {
        !self.no_echo
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("demo-server").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid command line")
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_build_a_valid_config() {
        let cli = parse(&[]);
        let config = cli.server_config().expect("defaults are valid");
        assert_eq!(config.listen(), "127.0.0.1:7878".parse().unwrap());
        assert_eq!(config.interval(), Duration::from_secs(1));
        assert_eq!(config.max_missed(), 3);
        assert_eq!(config.max_payload(), 1_048_576);
        assert_eq!(cli.format(), Format::Text);
        assert!(cli.echo());
    }

    #[test]
    fn flags_reach_the_config() {
        let cli = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "50ms",
            "--max-missed",
            "5",
            "--max-payload",
            "10",
            "--no-echo",
            "--json",
            "--max-peers",
            "7",
            "--max-connections-per-ip",
            "2",
            "--max-handshakes",
            "3",
        ]);
        let config = cli.server_config().expect("valid flags");
        assert_eq!(config.max_peers(), 7);
        assert_eq!(config.max_connections_per_ip(), Some(2));
        assert_eq!(config.max_handshakes(), 3);
        assert_eq!(config.listen().port(), 0);
        assert_eq!(config.interval(), Duration::from_millis(50));
        assert_eq!(config.max_missed(), 5);
        assert_eq!(config.max_payload(), 10);
        assert_eq!(cli.format(), Format::Json);
        assert!(!cli.echo());
    }

    #[test]
    fn zero_interval_gives_a_readable_config_error() {
        let error = parse(&["--interval", "0ms"]).server_config().unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("interval must be"), "{message:?}");
    }

    #[test]
    fn other_bad_values_name_their_setting() {
        for (args, expected) in [
            (&["--max-missed", "0"][..], "max missed"),
            (&["--outbound-queue", "1"][..], "outbound queue"),
            (&["--handshake-timeout", "0s"][..], "handshake timeout"),
            (&["--write-timeout", "0s"][..], "write timeout"),
            (&["--max-payload", "0"][..], "max payload"),
        ] {
            let message = parse(args).server_config().unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn unparsable_duration_is_a_usage_error() {
        let error = Cli::try_parse_from(["demo-server", "--interval", "soon"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
