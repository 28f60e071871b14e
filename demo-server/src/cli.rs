//! The command line: flags, their help, and the server configuration they describe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pulsewire::auth::{Authenticator, Jwt, JwtKey, TokenFile};
use pulsewire::core::{DEFAULT_DETACHED_BYTES, DEFAULT_SESSION_BYTES, DEFAULT_SESSION_MESSAGES};
use pulsewire::tls::ServerTls;
use pulsewire::{ConfigError, ServerConfig};

use crate::output::Format;
use crate::tls::{CertSource, TlsPlan, DEFAULT_CA_OUT};

/// A pulsewire server you can run: it pulses every peer, evicts the silent ones and prints
/// who is online.
///
/// Every event goes to stdout, one line each (text, or JSON with --json); logs go to stderr
/// (filter them with RUST_LOG, default `info`). Each line typed on stdin is sent to every
/// peer, online or detached. Ctrl-C or SIGTERM sends `BYE shutdown` to every peer and exits; a
/// second one exits at once.
///
/// A protocol 2 peer whose connection is lost is detached: its session is kept for --keep,
/// and the messages sent to it meanwhile wait in it until it resumes.
///
/// With --tokens, --jwt-secret-file or --jwt-public-key every peer must authenticate: only the
/// subject that holds a client id can take it over or resume its session.
///
/// With --tls-listen it listens for TLS too, with the certificate of --tls-cert and --tls-key,
/// or one it makes at start (--tls-self-signed, for demos: clients trust the CA certificate it
/// writes to --tls-ca-out). A token from beyond loopback is accepted over TLS only (unless
/// --allow-plaintext-tokens).
#[derive(Debug, Parser)]
#[command(name = "demo-server", version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// How long a detached session is kept, waiting for its peer to resume it, e.g. `30s`,
    /// `2m`; `0s` keeps none (at most 24 h). When it passes, the session ends and the messages
    /// it held are reported undelivered.
    #[arg(long, value_name = "DUR", default_value = "2m", value_parser = humantime::parse_duration)]
    pub keep: Duration,

    /// How many messages one session may hold: sent and not yet acknowledged, or queued while
    /// its peer is detached (at least 1). An echo or broadcast beyond it is refused.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SESSION_MESSAGES)]
    pub session_messages: usize,

    /// How many payload bytes one session may hold, counted as for --session-messages (at
    /// least 1).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SESSION_BYTES)]
    pub session_bytes: usize,

    /// The most detached sessions kept at once; beyond it the one nearest its end is ended
    /// early (default: twice --max-peers).
    #[arg(long, value_name = "N")]
    pub detached_sessions: Option<usize>,

    /// The most payload bytes all detached sessions may hold together, at least
    /// --session-bytes; beyond it the session nearest its end is ended early.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_DETACHED_BYTES)]
    pub detached_bytes: usize,

    /// Do not echo messages: by default every message a peer sends is sent back to it.
    #[arg(long)]
    pub no_echo: bool,

    /// Also print a `delivered` line each time a peer acknowledges messages sent to it. Off by
    /// default: a busy peer acknowledges up to 50 times a second.
    #[arg(long, short)]
    pub verbose: bool,

    /// Print one JSON object per line instead of text, for programs to read.
    #[arg(long)]
    pub json: bool,

    /// Authenticate peers with a token file: one `client-id subject token` a line (`#`
    /// comments; a client id may end in `*` for a prefix, or be `*` for any).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["jwt_secret_file", "jwt_public_key"])]
    pub tokens: Option<PathBuf>,

    /// Authenticate peers with JWTs signed with HS256 and the secret in FILE (its bytes, a
    /// trailing newline dropped). A token's `sub` is its subject; its `client_ids` claim (a
    /// string or a list; `prefix*` and `*` allowed) the ids it may use, else only `sub`.
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_public_key")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Authenticate peers with JWTs signed with RS256 or ES256, checked with the public key in
    /// FILE (PEM).
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Refuse to start unless peers must authenticate (one of --tokens, --jwt-secret-file,
    /// --jwt-public-key).
    #[arg(long)]
    pub require_auth: bool,

    /// Accept tokens over plaintext from peers beyond loopback (refused by default with
    /// `ERROR tls-required`: anyone on the path could read them).
    #[arg(long)]
    pub allow_plaintext_tokens: bool,

    /// Also listen for TLS on this address, beside --listen (port 0 picks a free port, printed
    /// on the first line); needs --tls-cert and --tls-key, or --tls-self-signed.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// The certificate chain of --tls-listen, PEM: the server's certificate first, then the
    /// intermediate ones (with --tls-key).
    #[arg(long, value_name = "FILE", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert's certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", conflicts_with = "tls_self_signed")]
    pub tls_key: Option<PathBuf>,

    /// Make a certificate for --tls-listen at start, for demos and tests: a new certificate
    /// authority signs one for localhost, 127.0.0.1, ::1 and --tls-listen's address (when it is
    /// not a wildcard), and its certificate is written to --tls-ca-out for clients to trust.
    /// A new one at every start: clients must read the file again.
    #[arg(long)]
    pub tls_self_signed: bool,

    /// Where --tls-self-signed writes its CA's certificate (PEM; replaced if it exists)
    /// [default: pulsewire-demo-ca.pem, in the current directory].
    #[arg(long, value_name = "FILE")]
    pub tls_ca_out: Option<PathBuf>,

    /// Serve TLS only: no plaintext listener (--listen is ignored); needs --tls-listen.
    #[arg(long)]
    pub no_plaintext: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a JWT (HS256) for a client, for demos and tests: `demo-server mint-token
    /// --jwt-secret-file secret --subject alice --client-id desk-1 --lifetime 1h`.
    MintToken {
        /// The HS256 secret, as for --jwt-secret-file.
        #[arg(long, value_name = "FILE")]
        jwt_secret_file: PathBuf,
        /// The token's subject (`sub`).
        #[arg(long)]
        subject: String,
        /// A client id the token may use (repeat for more; `prefix*` and `*` allowed); none:
        /// only the subject itself.
        #[arg(long = "client-id", value_name = "ID")]
        client_ids: Vec<String>,
        /// How long the token is valid, e.g. `1h`; none: it does not expire.
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        lifetime: Option<Duration>,
    },
}

impl Cli {
    /// The server configuration the flags describe, with `tls` (the identity of
    /// [`Cli::tls_plan`]'s listener), validated by the SDK: an out-of-range value gives a
    /// readable error such as `interval must be ...`.
    pub fn server_config(
        &self,
        authenticator: Option<Arc<dyn Authenticator>>,
        tls: Option<(SocketAddr, ServerTls)>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut builder = ServerConfig::builder()
            .listen(self.listen)
            .plaintext(!self.no_plaintext)
            .interval(self.interval)
            .max_missed(self.max_missed)
            .max_payload(self.max_payload)
            .handshake_timeout(self.handshake_timeout)
            .outbound_queue(self.outbound_queue)
            .write_timeout(self.write_timeout)
            .keep(self.keep)
            .session_limits(self.session_messages, self.session_bytes);
        if let Some(authenticator) = authenticator {
            builder = builder.authenticator(authenticator);
        }
        if let Some((addr, tls)) = tls {
            builder = builder.tls(addr, tls);
        }
        if let Some(peers) = self.max_peers {
            builder = builder.max_peers(peers);
        }
        if let Some(connections) = self.max_connections_per_ip {
            builder = builder.max_connections_per_ip(connections);
        }
        if let Some(handshakes) = self.max_handshakes {
            builder = builder.max_handshakes(handshakes);
        }
        // The builder sets both detached bounds at once; without --detached-sessions, the
        // count is the SDK's default for these max peers, read from a config built without it.
        let detached_sessions = match self.detached_sessions {
            Some(sessions) => sessions,
            None => builder.clone().build()?.detached_limits().max_sessions,
        };
        builder
            .allow_plaintext_tokens(self.allow_plaintext_tokens)
            .detached_limits(detached_sessions, self.detached_bytes)
            .build()
    }

    /// The authenticator the flags describe, loaded (`None`: peers are anonymous).
    pub fn authenticator(&self) -> anyhow::Result<Option<Arc<dyn Authenticator>>> {
        let authenticator: Option<Arc<dyn Authenticator>> = if let Some(path) = &self.tokens {
            let tokens = TokenFile::load(path).with_context(|| format!("--tokens {}", path.display()))?;
            Some(Arc::new(tokens))
        } else if let Some(path) = &self.jwt_secret_file {
            Some(Arc::new(Jwt::new(JwtKey::hs256(read_secret(path)?))))
        } else if let Some(path) = &self.jwt_public_key {
            let pem = std::fs::read(path).with_context(|| format!("reading --jwt-public-key {}", path.display()))?;
            let key =
                JwtKey::from_public_key_pem(&pem).with_context(|| format!("--jwt-public-key {}", path.display()))?;
            Some(Arc::new(Jwt::new(key)))
        } else {
            None
        };
        if self.require_auth && authenticator.is_none() {
            anyhow::bail!("--require-auth needs --tokens, --jwt-secret-file or --jwt-public-key");
        }
        Ok(authenticator)
    }

    /// The TLS listener the flags describe (`None`: there is none), once they are checked to go
    /// together: --tls-listen with one certificate source, and no TLS flag without it.
    pub fn tls_plan(&self) -> anyhow::Result<Option<TlsPlan>> {
        let source = match (&self.tls_cert, &self.tls_key, self.tls_self_signed) {
            (Some(cert), Some(key), _) => Some(CertSource::Files { cert: cert.clone(), key: key.clone() }),
            (Some(_), None, _) => anyhow::bail!("--tls-cert needs --tls-key: the private key of its certificate"),
            (None, Some(_), _) => anyhow::bail!("--tls-key needs --tls-cert: the certificate chain of its key"),
            (None, None, true) => {
                let ca_out = self.tls_ca_out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CA_OUT));
                Some(CertSource::SelfSigned { ca_out })
            }
            (None, None, false) => None,
        };
        if self.tls_ca_out.is_some() && !self.tls_self_signed {
            anyhow::bail!("--tls-ca-out needs --tls-self-signed: only a certificate made at start has a CA to write");
        }
        match (self.tls_listen, source) {
            (Some(listen), Some(source)) => Ok(Some(TlsPlan { listen, source })),
            (Some(_), None) => {
                anyhow::bail!(
                    "--tls-listen needs a certificate: --tls-cert FILE and --tls-key FILE, or --tls-self-signed"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!("a certificate (--tls-cert, --tls-key or --tls-self-signed) needs --tls-listen ADDR")
            }
            (None, None) if self.no_plaintext => {
                anyhow::bail!("--no-plaintext needs --tls-listen: without either listener nobody could connect")
            }
            (None, None) => Ok(None),
        }
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

    /// Whether acknowledgements (`delivered`) are printed.
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}

/// A shared secret from a file: its bytes, without a trailing newline (the way `echo` and
/// editors write one).
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = std::fs::read(path).with_context(|| format!("reading the secret file {}", path.display()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    anyhow::ensure!(!secret.is_empty(), "the secret file {} is empty", path.display());
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use pulsewire::core::{DetachedLimits, SessionLimits, DEFAULT_KEEP};

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
        let config = cli.server_config(None, None).expect("defaults are valid");
        assert_eq!(config.listen(), "127.0.0.1:7878".parse().unwrap());
        assert_eq!(config.interval(), Duration::from_secs(1));
        assert_eq!(config.max_missed(), 3);
        assert_eq!(config.max_payload(), 1_048_576);
        assert_eq!(cli.format(), Format::Text);
        assert!(cli.echo());
        assert!(!cli.verbose());
    }

    #[test]
    fn session_flags_default_to_the_sdks_defaults() {
        let config = parse(&[]).server_config(None, None).expect("defaults are valid");
        let sdk = ServerConfig::builder().build().expect("the SDK's defaults are valid");
        assert_eq!(config.keep(), DEFAULT_KEEP, "--keep's default is written out in its help");
        assert_eq!(config.session_limits(), sdk.session_limits());
        assert_eq!(config.detached_limits(), sdk.detached_limits());
    }

    #[test]
    fn session_flags_reach_the_config() {
        let cli = parse(&[
            "--keep",
            "30s",
            "--session-messages",
            "8",
            "--session-bytes",
            "4096",
            "--detached-sessions",
            "10",
            "--detached-bytes",
            "8192",
            "--verbose",
        ]);
        let config = cli.server_config(None, None).expect("valid flags");
        assert_eq!(config.keep(), Duration::from_secs(30));
        assert_eq!(config.session_limits(), SessionLimits { max_messages: 8, max_bytes: 4096 });
        assert_eq!(config.detached_limits(), DetachedLimits { max_sessions: 10, max_bytes: 8192 });
        assert!(cli.verbose());
        assert!(parse(&["-v"]).verbose());
    }

    #[test]
    fn detached_sessions_default_follows_max_peers_even_when_only_the_bytes_are_set() {
        let config = parse(&["--max-peers", "7", "--detached-bytes", "1048576"]).server_config(None, None).unwrap();
        assert_eq!(config.detached_limits(), DetachedLimits { max_sessions: 14, max_bytes: 1 << 20 });
    }

    #[test]
    fn a_zero_keep_is_valid_and_keeps_no_session() {
        let config = parse(&["--keep", "0s"]).server_config(None, None).expect("zero keeps none");
        assert_eq!(config.keep(), Duration::ZERO);
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
        let config = cli.server_config(None, None).expect("valid flags");
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
        let error = parse(&["--interval", "0ms"]).server_config(None, None).unwrap_err();
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
            (&["--session-messages", "0"][..], "session messages must be at least 1"),
            (&["--session-bytes", "0"][..], "session bytes must be at least 1"),
            (&["--detached-sessions", "0"][..], "detached sessions must be at least 1"),
            (&["--session-bytes", "4096", "--detached-bytes", "4095"][..], "detached bytes must be at least"),
            (&["--keep", "25h"][..], "keep must be at most 24 h"),
        ] {
            let message = parse(args).server_config(None, None).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn no_tls_flag_means_no_tls_listener() {
        assert_eq!(parse(&[]).tls_plan().expect("valid flags"), None);
        let config = parse(&[]).server_config(None, None).expect("defaults are valid");
        assert_eq!((config.tls_listen(), config.plaintext()), (None, true));
    }

    #[test]
    fn a_tls_listener_takes_its_certificate_from_files_or_makes_one() {
        let files = parse(&["--tls-listen", "127.0.0.1:7879", "--tls-cert", "chain.pem", "--tls-key", "key.pem"]);
        let plan = files.tls_plan().expect("valid flags").expect("a TLS listener");
        assert_eq!(plan.listen, "127.0.0.1:7879".parse().unwrap());
        assert_eq!(plan.source, CertSource::Files { cert: "chain.pem".into(), key: "key.pem".into() });

        let made = parse(&["--tls-listen", "0.0.0.0:0", "--tls-self-signed"]).tls_plan().expect("valid flags");
        let source = made.expect("a TLS listener").source;
        assert_eq!(source, CertSource::SelfSigned { ca_out: DEFAULT_CA_OUT.into() }, "the default CA file");
        let elsewhere = parse(&["--tls-listen", "0.0.0.0:0", "--tls-self-signed", "--tls-ca-out", "/tmp/ca.pem"]);
        let source = elsewhere.tls_plan().expect("valid flags").expect("a TLS listener").source;
        assert_eq!(source, CertSource::SelfSigned { ca_out: "/tmp/ca.pem".into() });
    }

    #[test]
    fn tls_flags_that_do_not_go_together_give_readable_errors() {
        for (args, expected) in [
            (
                &["--tls-listen", "127.0.0.1:7879"][..],
                "--tls-listen needs a certificate: --tls-cert FILE and --tls-key FILE, or --tls-self-signed",
            ),
            (&["--tls-self-signed"][..], "needs --tls-listen ADDR"),
            (&["--tls-cert", "c.pem", "--tls-key", "k.pem"][..], "needs --tls-listen ADDR"),
            (&["--tls-listen", "127.0.0.1:7879", "--tls-cert", "c.pem"][..], "--tls-cert needs --tls-key"),
            (&["--tls-listen", "127.0.0.1:7879", "--tls-key", "k.pem"][..], "--tls-key needs --tls-cert"),
            (
                &[
                    "--tls-listen",
                    "127.0.0.1:7879",
                    "--tls-cert",
                    "c.pem",
                    "--tls-key",
                    "k.pem",
                    "--tls-ca-out",
                    "ca.pem",
                ][..],
                "--tls-ca-out needs --tls-self-signed",
            ),
            (&["--no-plaintext"][..], "--no-plaintext needs --tls-listen"),
        ] {
            let message = parse(args).tls_plan().expect_err("conflicting flags").to_string();
            assert!(message.contains(expected), "{args:?}: {message:?} lacks {expected:?}");
        }
        // Two certificate sources at once: a usage error.
        let both = ["demo-server", "--tls-listen", "127.0.0.1:7879", "--tls-self-signed", "--tls-cert", "c.pem"];
        assert_eq!(Cli::try_parse_from(both).unwrap_err().kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn no_plaintext_leaves_the_tls_listener_alone() {
        let cli = parse(&["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--no-plaintext"]);
        let plan = cli.tls_plan().expect("valid flags").expect("a TLS listener");
        let tls = plan.identity().expect("a certificate is made").tls;
        let config = cli.server_config(None, Some((plan.listen, tls))).expect("valid flags");
        assert_eq!((config.tls_listen(), config.plaintext()), (Some("127.0.0.1:0".parse().unwrap()), false));
    }

    #[test]
    fn unparsable_duration_is_a_usage_error() {
        for flag in ["--interval", "--keep"] {
            let error = Cli::try_parse_from(["demo-server", flag, "soon"]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{flag}");
        }
    }
}
