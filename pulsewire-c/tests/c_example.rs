//! `examples/echo.c`, compiled with gcc against the committed header and the built library,
//! run against a real demo-server.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use pulsewire_testkit::{build_demo_server, is_listening, listening_addr, server_command, Process, Profile};

/// Reports a test that cannot run here as skipped (as pulsewire-tests' `skip` does); with
/// `PULSEWIRE_REQUIRE_C_TOOLS=1` a missing tool is an error instead.
fn skip(test: &str, why: anyhow::Error) -> anyhow::Result<()> {
    if std::env::var_os("PULSEWIRE_REQUIRE_C_TOOLS").is_some_and(|v| v != "0") {
        return Err(why.context(format!("{test} cannot run, and PULSEWIRE_REQUIRE_C_TOOLS is set")));
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why:#}");
    Ok(())
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `libpulsewire_c.so`, built for this test's profile.
fn library_dir() -> anyhow::Result<PathBuf> {
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

fn run(command: &mut Command) -> anyhow::Result<Output> {
    command.output().with_context(|| format!("running {command:?}"))
}

/// Whether gcc builds and runs a program with AddressSanitizer here.
fn asan_works(dir: &Path, name: &str) -> bool {
    let src = dir.join(format!("{name}-asan-probe.c"));
    let exe = dir.join(format!("{name}-asan-probe"));
    std::fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && run(Command::new("gcc").arg("-fsanitize=address").arg(&src).arg("-o").arg(&exe))
            .is_ok_and(|o| o.status.success())
        && run(&mut Command::new(&exe)).is_ok_and(|o| o.status.success())
}

/// Compiles echo.c; `None` when gcc is missing.
fn compile_echo(name: &str, sanitize: bool) -> anyhow::Result<Option<PathBuf>> {
    if run(Command::new("gcc").arg("--version")).is_err() {
        return Ok(None);
    }
    let lib = library_dir()?;
    let dir = lib.join("c-example");
    std::fs::create_dir_all(&dir)?;
    let exe = dir.join(name);
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples/echo.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpulsewire_c")
        .arg("-o")
        .arg(&exe);
    if sanitize && asan_works(&dir, name) {
        gcc.arg("-fsanitize=address");
    }
    let out = run(&mut gcc)?;
    if !out.status.success() {
        bail!("gcc failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Some(exe))
}

/// A demo-server on a port of its own (or on `listen`), and its address.
fn demo_server(listen: &str) -> anyhow::Result<(Process, String)> {
    let program = build_demo_server(Profile::Current)?;
    let mut server = Process::spawn(server_command(&program, &[] as &[&str], listen, &[]))?;
    let line = server.wait_for(Duration::from_secs(30), |line| is_listening(&line.json))?;
    let addr = listening_addr(&line.json)?.to_string();
    Ok((server, addr))
}

/// Runs the example to its end (within a minute) and returns what it printed.
fn run_echo(exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    let child = Command::new(exe).args(args).stdout(std::process::Stdio::piped()).spawn()?;
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output()?;
    drop(watchdog);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("echo exited with {}; it printed:\n{stdout}", out.status);
    }
    Ok(stdout)
}

fn has_line(output: &str, prefix: &str) -> bool {
    output.lines().any(|line| line.starts_with(prefix))
}

#[test]
fn the_c_example_connects_echoes_100_kb_probes_and_closes() -> anyhow::Result<()> {
    let test = "the_c_example_connects_echoes_100_kb_probes_and_closes";
    let Some(exe) = compile_echo("echo", true)? else {
        return skip(test, anyhow::anyhow!("gcc is not installed"));
    };
    let (_server, addr) = demo_server("127.0.0.1:0")?;
    let output = run_echo(&exe, &[&addr, "c-echo"])?;
    for expected in [
        "abi major=0 minor=1 version=",
        "connecting attempt=1",
        "connected resumed=0 session=",
        "sent ticket=1 len=102400",
        "grow from=16 to=",
        "message seq=1 len=102400 echo=ok",
        "probe token=1 answered rtt_us=",
        "state kind=3",
        "closing",
        "closed reason=9",
    ] {
        assert!(has_line(&output, expected), "no line {expected:?} in:\n{output}");
    }
    Ok(())
}

/// The example running in the background, its lines read on a thread.
struct Echo {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Echo {
    fn spawn(exe: &Path, args: &[&str]) -> anyhow::Result<Echo> {
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

    fn wait_line(&mut self, prefix: &str) -> anyhow::Result<String> {
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

#[test]
fn the_c_example_reconnects_after_the_server_is_killed_and_restarted() -> anyhow::Result<()> {
    let test = "the_c_example_reconnects_after_the_server_is_killed_and_restarted";
    let Some(exe) = compile_echo("echo-restart", true)? else {
        return skip(test, anyhow::anyhow!("gcc is not installed"));
    };
    let (mut server, addr) = demo_server("127.0.0.1:0")?;
    let mut echo = Echo::spawn(&exe, &[&addr, "c-restart", "", "2"])?;
    echo.wait_line("connected resumed=0")?;
    echo.wait_line("probe token=1 answered")?;
    server.kill();
    echo.wait_line("disconnected reason=")?;
    echo.wait_line("backing_off attempt=1")?;
    let (_server, again) = demo_server(&addr)?;
    assert_eq!(again, addr);
    // A killed server lost the session: the client starts a fresh one.
    echo.wait_line("connected resumed=0")?;
    echo.wait_line("closed reason=9")?;
    let status = echo.child.wait()?;
    assert!(status.success(), "{status}; seen:\n{}", echo.seen.join("\n"));
    Ok(())
}

#[test]
fn the_c_example_resumes_its_session_from_the_resume_state_file_after_a_crash() -> anyhow::Result<()> {
    let test = "the_c_example_resumes_its_session_from_the_resume_state_file_after_a_crash";
    let Some(exe) = compile_echo("echo-resume", true)? else {
        return skip(test, anyhow::anyhow!("gcc is not installed"));
    };
    let (_server, addr) = demo_server("127.0.0.1:0")?;
    let file = library_dir()?.join(format!("c-example/resume-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().context("a UTF-8 path")?;
    let mut first = Echo::spawn(&exe, &[&addr, "c-resume", path, "1000"])?;
    first.wait_line("message seq=1 len=102400 echo=ok")?;
    let saved = std::fs::read_to_string(&file)?;
    assert!(saved.starts_with("pulsewire-resume 1 ") && saved.ends_with(" 1"), "{saved:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600, "it holds a secret");
    }
    drop(first); // killed: no goodbye, the server keeps the session for its peer
    let output = run_echo(&exe, &[&addr, "c-resume", path])?;
    assert!(has_line(&output, "connected resumed=1"), "{output}");
    assert!(has_line(&output, "message seq=2 len=102400 echo=ok"), "{output}");
    std::fs::remove_file(&file)?;
    Ok(())
}

#[test]
fn the_c_example_leaks_nothing_under_valgrind() -> anyhow::Result<()> {
    let test = "the_c_example_leaks_nothing_under_valgrind";
    if run(Command::new("valgrind").arg("--version")).is_err() {
        return skip(test, anyhow::anyhow!("valgrind is not installed"));
    }
    let Some(exe) = compile_echo("echo-plain", false)? else {
        return skip(test, anyhow::anyhow!("gcc is not installed"));
    };
    let (_server, addr) = demo_server("127.0.0.1:0")?;
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--leak-check=full", "--errors-for-leak-kinds=definite", "--error-exitcode=99", "-q"])
        .arg(&exe)
        .args([&addr, "c-valgrind"]);
    let out = run(&mut valgrind)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}; stdout:\n{stdout}\nvalgrind:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_line(&stdout, "closed reason=9"), "{stdout}");
    Ok(())
}
