//! The servers the tests and the bench run as processes: built by cargo, started with the demo
//! server's command line, and ready once they print their listening line.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde_json::Value;

/// The profile a binary of the workspace is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The profile and target the caller was built in (the tests: a debug test run builds a
    /// debug server).
    Current,
    /// Release (the benchmark measures nothing else).
    Release,
}

/// Builds `build` with cargo in `profile`, from the workspace's manifest whatever the current
/// directory, and returns the binary's path. Built every time it is called (cargo makes that
/// quick when nothing changed), so a stale binary is never run.
pub fn build(build: escargot::CargoBuild, profile: Profile) -> anyhow::Result<PathBuf> {
    let build = build.manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
    let build = match profile {
        Profile::Current => build.current_release().current_target(),
        Profile::Release => build.release(),
    };
    Ok(build.run()?.path().to_path_buf())
}

/// Builds the `demo-server` binary in `profile`; returns its path.
pub fn build_demo_server(profile: Profile) -> anyhow::Result<PathBuf> {
    let demo = escargot::CargoBuild::new().package("demo-server").bin("demo-server");
    build(demo, profile).context("cargo build -p demo-server")
}

/// The command line of a server that prints its events as JSON lines (`demo-server`, or
/// `bench serve`, whose subcommand is `prefix`): `PROGRAM [PREFIX…] --json --listen LISTEN
/// [ARGS…]`.
pub fn server_command<S: AsRef<OsStr>>(program: &Path, prefix: &[S], listen: &str, args: &[S]) -> Command {
    let mut command = Command::new(program);
    command.args(prefix).args(["--json", "--listen", listen]).args(args);
    command
}

/// Whether `line` is the one such a server prints once it listens,
/// `{"event":"listening","addr":"…"}`.
pub fn is_listening(line: &Value) -> bool {
    line["event"] == "listening"
}

/// The address of a listening line (see [`is_listening`]).
pub fn listening_addr(line: &Value) -> anyhow::Result<SocketAddr> {
    let addr = line["addr"].as_str().with_context(|| format!("no address in {line}"))?;
    addr.parse().with_context(|| format!("listening address {addr:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_names_the_address() {
        let line: Value = serde_json::from_str(r#"{"event":"listening","addr":"127.0.0.1:7000"}"#).unwrap();
        assert!(is_listening(&line));
        assert_eq!(listening_addr(&line).unwrap(), "127.0.0.1:7000".parse().unwrap());
        let other: Value = serde_json::from_str(r#"{"event":"online","peer":"a"}"#).unwrap();
        assert!(!is_listening(&other));
        assert!(listening_addr(&other).is_err());
    }

    #[test]
    fn the_server_command_puts_the_subcommand_first() {
        let command = server_command(Path::new("bench"), &["serve"], "127.0.0.1:0", &["--interval", "1s"]);
        let args: Vec<_> = command.get_args().map(|arg| arg.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["serve", "--json", "--listen", "127.0.0.1:0", "--interval", "1s"]);
    }
}
