//! `examples/echo.c`, compiled with gcc against the committed header and the built library,
//! run against a real demo-server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use common::{asan_works, crate_dir, demo_server, library_dir, run, skip, Echo};

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
