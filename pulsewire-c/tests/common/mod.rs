//! What the tests of the C ABI's hosts (C, C#, AutoIt's C twin) share: the built library, a
//! real demo-server, a host program's lines, and skipping where a tool is missing.
#![allow(dead_code)] // each test binary uses a part

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use pulsewire_testkit::{build_demo_server, is_listening, listening_addr, server_command, Process, Profile};

/// Reports a test that cannot run here as skipped (as pulsewire-tests' `skip` does); with
/// `PULSEWIRE_REQUIRE_C_TOOLS=1` a missing tool is an error instead.
pub fn skip(test: &str, why: anyhow::Error) -> anyhow::Result<()> {
    if std::env::var_os("PULSEWIRE_REQUIRE_C_TOOLS").is_some_and(|v| v != "0") {
        return Err(why.context(format!("{test} cannot run, and PULSEWIRE_REQUIRE_C_TOOLS is set")));
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why:#}");
    Ok(())
}

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `libpulsewire_c.so`, built for this test's profile.
pub fn library_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/c_example-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).ok_or("no profile dir")?.to_path_buf();
        let mut cargo = Command::new(env!("CARGO"));
        // `--tests` too: the features then match this test's build, so nothing is rebuilt twice.
        cargo.args(["build", "-p", "pulsewire-c", "--lib", "--tests"]).current_dir(crate_dir());
        // The variables cargo sets for this test would make the build scripts run again.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                cargo.env_remove(key);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cargo build -p pulsewire-c: {status}"));
        }
        Ok(profile_dir)
    });
    built.clone().map_err(anyhow::Error::msg)
}

pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    command.output().with_context(|| format!("running {command:?}"))
}

/// Whether gcc builds and runs a program with AddressSanitizer here.
pub fn asan_works(dir: &Path, name: &str) -> bool {
    let src = dir.join(format!("{name}-asan-probe.c"));
    let exe = dir.join(format!("{name}-asan-probe"));
    std::fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && run(Command::new("gcc").arg("-fsanitize=address").arg(&src).arg("-o").arg(&exe))
            .is_ok_and(|o| o.status.success())
        && run(&mut Command::new(&exe)).is_ok_and(|o| o.status.success())
}

/// A demo-server on a port of its own (or on `listen`), and its address.
pub fn demo_server(listen: &str) -> anyhow::Result<(Process, String)> {
    let program = build_demo_server(Profile::Current)?;
    let mut server = Process::spawn(server_command(&program, &[] as &[&str], listen, &[]))?;
    let line = server.wait_for(Duration::from_secs(30), |line| is_listening(&line.json))?;
    let addr = listening_addr(&line.json)?.to_string();
    Ok((server, addr))
}

/// The example running in the background, its lines read on a thread.
pub struct Echo {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Echo {
    pub fn spawn(exe: &Path, args: &[&str]) -> anyhow::Result<Echo> {
        use std::io::BufRead as _;
        let mut child = Command::new(exe).args(args).stdout(std::process::Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Echo { child, lines, seen: Vec::new() })
    }

    pub fn wait_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                bail!("no line {prefix:?} within 30 s; seen:\n{}", self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
