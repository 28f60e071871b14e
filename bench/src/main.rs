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
