//! `bench`: pulsewire's load generator and benchmark report.
//!
//! - `bench report [--quick]` builds the real `demo-server`, starts it and load generators
//!   (this same binary, `bench swarm`), and prints the figures of issue 5 as tables, and as
//!   JSON under `target/bench/`. See `docs/benchmarks.md`.
//! - `bench swarm …` is one load generator process: many real SDK clients.
//! - `bench embedded …` is one idle client, as a desktop application embeds it.
//!
//! The codec micro-benchmarks are in `benches/codec.rs` (`cargo bench -p bench`).

mod clock;
mod embedded;
mod observer;
mod procfs;
mod records;
mod report;
mod serve;
mod stats;
mod swarm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pulsewire's load generator and benchmark report.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark report: steady state, detection, reconnect storm, idle client.
    Report(report::ReportArgs),
    /// One load generator process (started by `report`).
    Swarm(swarm::SwarmArgs),
    /// One idle embedded client (started by `report`).
    Embedded(embedded::EmbeddedArgs),
    /// The SDK's server alone, printing the demo server's JSON event lines (`report --server sdk`).
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report(args) => report::run(args),
        Command::Swarm(args) => swarm::run(args),
        Command::Embedded(args) => embedded::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_flags_come_together() {
        let swarm = |extra: &[&str]| {
            let base = ["bench", "swarm", "--server", "127.0.0.2:1", "--count", "1", "--prefix", "p"];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        assert!(swarm(&[]).is_ok());
        assert!(swarm(&["--tls"]).is_err(), "--tls without a CA to trust");
        assert!(swarm(&["--ca", "ca.pem"]).is_err(), "a CA without --tls");
        assert!(swarm(&["--tls", "--ca", "ca.pem", "--server-name", "localhost"]).is_ok());
        assert!(Cli::try_parse_from(["bench", "serve", "--ca-out", "ca.pem"]).is_err(), "--ca-out without --tls");
        assert!(Cli::try_parse_from(["bench", "serve", "--tls", "0.0.0.0:0", "--ca-out", "ca.pem"]).is_ok());
    }

    #[test]
    fn the_tls_section_is_selectable() {
        let cli =
            Cli::try_parse_from(["bench", "report", "--only", "steady-tls", "--tls-sizes", "5000,19000"]).unwrap();
        let Command::Report(args) = cli.command else { panic!("not the report") };
        assert_eq!(args.only, [report::Section::SteadyTls]);
        assert_eq!(args.tls_sizes, [5000, 19_000]);
    }
}
