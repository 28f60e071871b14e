//! `demo-server`: a pulsewire server you can run. It pulses every peer, evicts the silent ones,
//! keeps the sessions of the ones whose connection was lost until they resume, prints each event,
//! the online list and the detached sessions on stdout, echoes messages and broadcasts the lines
//! typed on stdin. Run `demo-server --help` for the flags; `output.rs` documents the output.
//! With `--tls-listen` it listens for TLS too (`tls.rs`: the certificate from files, or made at
//! start); it warns at start when a listener beyond loopback is open to anyone or when logins
//! from there would be refused or read on the way (`exposure.rs`).
//!
//! Exit codes: 0 after a graceful shutdown (Ctrl-C, SIGTERM), 1 when the server cannot run
//! (address in use, stdout closed), 2 for a bad command line or configuration.

mod cli;
mod exposure;
mod output;
mod serve;
mod tls;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return run_command(command);
    }
    init_logging();
    let authenticator = match cli.authenticator() {
        Ok(authenticator) => authenticator,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let identity = match tls_identity(&cli) {
        Ok(identity) => identity,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let (tls, ca) = match identity {
        Some((listen, identity)) => (Some((listen, identity.tls)), identity.ca),
        None => (None, None),
    };
    let config = match cli.server_config(authenticator, tls) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    for exposure in exposure::exposures(&config, cli.allow_plaintext_tokens) {
        tracing::warn!("{exposure}");
    }
    // Written once the configuration is known to be valid, before the server listens: a
    // client that reads the listening line finds the file.
    let ca_file = match ca.as_ref().map(tls::SelfSignedCa::write).transpose() {
        Ok(ca_file) => ca_file,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let (Some(ca), Some(ca_file)) = (&ca, &ca_file) {
        tracing::info!(names = ?ca.names, ca_file = %ca_file.display(), "made a self-signed certificate; clients trust its CA");
    }
    let options = serve::Options { format: cli.format(), echo: cli.echo(), verbose: cli.verbose(), ca_file };
    match serve::run(config, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS listener's address and certificate (read or made), if the flags ask for one.
fn tls_identity(cli: &Cli) -> anyhow::Result<Option<(SocketAddr, tls::Identity)>> {
    let Some(plan) = cli.tls_plan()? else { return Ok(None) };
    Ok(Some((plan.listen, plan.identity()?)))
}

/// Runs a subcommand.
fn run_command(command: &cli::Command) -> ExitCode {
    match command {
        cli::Command::MintToken { jwt_secret_file, subject, client_ids, lifetime } => {
            let secret = match cli::read_secret(jwt_secret_file) {
                Ok(secret) => secret,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return ExitCode::from(2);
                }
            };
            let ids: Vec<&str> = client_ids.iter().map(String::as_str).collect();
            let ids = (!ids.is_empty()).then_some(&ids[..]);
            println!("{}", pulsewire::auth::Jwt::mint_hs256(&secret, subject, ids, *lifetime));
            ExitCode::SUCCESS
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal;
/// stdout carries only events.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
