//! TLS against the real demo server and the real example client: a certificate the server makes
//! at start (`--tls-self-signed`) and one from PEM files made by a test CA; a token that logs in
//! over TLS and never shows in any output, nor does a key; each verification failure typed;
//! plaintext on the TLS port answered in plaintext; the command line's refusals and the start's
//! warnings.
//!
//! Certificates, keys and tokens are made at test time into a directory of the test's own,
//! removed when the test ends.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use nix::sys::signal::Signal;
use pulsewire::tls::{ClientTls, TlsError};
use pulsewire::{Client, ClientConfig, ConnectError, Event, Failure};
use pulsewire_testkit::certs::{TestCa, Validity};
use pulsewire_testkit::{is_listening, listening_addr, Reaped};
use pulsewire_tests::{client_example_bin, demo_server_bin, next_event, Line, Process, RawPeer};

use crate::{arg, patience, random_text, Scratch, INTERVAL_ARG};

/// What no output may ever hold: the header of a PEM private key.
const KEY_HEADER: &str = "PRIVATE KEY";

/// A command for `program args…` whose standard error goes to the file `log` (`sh` sets it up
/// and becomes the program), at its most talkative; its standard output is left for [`Process`].
fn logged(log: &Path, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", r#"exec "$0" "$@" 2>"$PULSEWIRE_STDERR_LOG""#]).arg(program).args(args);
    command.env("PULSEWIRE_STDERR_LOG", log).env("RUST_LOG", "debug,pulsewire=trace,demo_server=trace");
    command
}

/// Starts `demo-server --json args…`, its stderr in `server.log` in `scratch`, and waits until
/// it listens; returns it and its listening line.
fn spawn_server(scratch: &Scratch, args: &[&str]) -> anyhow::Result<(Process, Line)> {
    let args = [&["--json"][..], args].concat();
    let mut process = Process::spawn(logged(&scratch.path("server.log"), &demo_server_bin(), &args))?;
    let listening = process.wait_for(Duration::from_secs(30), |line| is_listening(&line.json))?;
    Ok((process, listening))
}

/// A running `demo-server --json` with a TLS listener, its log in a file.
struct TlsServer {
    process: Process,
    /// The listening line.
    listening: Line,
    /// The plaintext listener (`addr` of the listening line).
    addr: SocketAddr,
    /// The TLS listener.
    tls_addr: SocketAddr,
    /// Its standard error.
    log: PathBuf,
}

impl TlsServer {
    /// Starts the demo server on `127.0.0.1:0` with `args` (its TLS flags among them), pulsing
    /// every 50 ms, and waits until it listens.
    fn start(scratch: &Scratch, args: &[&str]) -> anyhow::Result<TlsServer> {
        let args = [&["--listen", "127.0.0.1:0"][..], &INTERVAL_ARG[..], args].concat();
        let (process, listening) = spawn_server(scratch, &args)?;
        let addr = listening_addr(&listening.json)?;
        let tls_addr =
            listening.str("tls_addr").parse().with_context(|| format!("no tls_addr in {}", listening.json))?;
        Ok(TlsServer { process, listening, addr, tls_addr, log: scratch.path("server.log") })
    }

    /// The CA file of a self-signed certificate, as the listening line names it.
    fn ca_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.listening.json["ca_file"]
            .as_str()
            .with_context(|| format!("no ca_file in {}", self.listening.json))?;
        Ok(PathBuf::from(path))
    }
}

/// Starts the example client with `args` (after `--json --max-delay-ms 200`), its log in the
/// file `log`.
fn example_client(log: &Path, args: &[&str]) -> anyhow::Result<Process> {
    let args = [&["--json", "--max-delay-ms", "200"][..], args].concat();
    Process::spawn(logged(log, &client_example_bin(), &args))
}

/// Everything a process printed on stdout (as JSON lines), once it has exited.
fn all_lines(process: &mut Process) -> String {
    // The reader thread ends at the end of the output; then no line comes any more.
    let _ = process.wait_for(patience(), |_| false);
    process.seen.iter().map(|line| format!("{}\n", line.json)).collect()
}

/// An SDK client of `server` over `tls`, with quick reconnects.
fn tls_client(server: SocketAddr, id: &str, tls: ClientTls) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder(server.to_string(), id)
        .tls(tls)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(2))
        .build()?)
}

/// The first connect error an SDK client with `config` reports (it must not connect).
async fn first_connect_error(config: ClientConfig) -> anyhow::Result<ConnectError> {
    let (client, mut events) = Client::start(config);
    let (event, _, before) = next_event(&mut events, patience(), |e| {
        matches!(e, Event::BackingOff { last_error: Some(Failure::Connect(_)), .. } | Event::Connected { .. })
    })
    .await?;
    client.close().await;
    match event {
        Event::BackingOff { last_error: Some(Failure::Connect(error)), .. } => Ok(error),
        other => anyhow::bail!("expected a connect error, got {other:?} after {before:?}"),
    }
}

/// Sends `HELLO 2 desk-1` in plaintext to `addr` and returns the first line of the answer.
fn plaintext_hello(addr: SocketAddr) -> anyhow::Result<String> {
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(patience()))?;
    socket.write_all(b"HELLO 2 desk-1\n")?;
    let mut line = String::new();
    BufReader::new(socket).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn the_example_client_logs_in_over_tls_to_a_self_signed_server_and_its_lines_come_back() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "self-signed")?;
    let token = random_text("alice");
    let tokens = scratch.write("tokens", &format!("desk-1 alice {token}\n"))?;
    let token_file = scratch.write("alice.token", &format!("{token}\n"))?;
    let ca_out = scratch.path("ca.pem");
    let mut server = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&ca_out)?, "--tokens", arg(&tokens)?],
    )?;
    eprintln!("listening: {}", server.listening.json);
    assert_ne!(server.addr, server.tls_addr, "two listeners");
    assert_eq!(server.listening.json["plaintext"], true);
    assert_eq!(server.ca_file()?, ca_out, "the listening line names the CA file, absolute");
    let ca_pem = std::fs::read_to_string(&ca_out)?;
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----") && !ca_pem.contains(KEY_HEADER), "{ca_pem}");

    let tls_addr = server.tls_addr.to_string();
    let client_log = scratch.path("client.log");
    let mut client = example_client(
        &client_log,
        &["--server", &tls_addr, "--id", "desk-1", "--ca", arg(&ca_out)?, "--token-file", arg(&token_file)?],
    )?;
    client.wait_for(patience(), |line| line.event() == "connected")?;
    let online = server.process.wait_event(patience(), "online", "desk-1")?;
    assert_eq!((online.str("subject"), online.json["tls"].as_bool()), ("alice", Some(true)), "{}", online.json);
    let list = server.process.wait_for(patience(), |line| line.event() == "online_list")?;
    assert_eq!(list.json["peers"][0]["tls"], true, "{}", list.json);

    // A line typed into the client is echoed back over TLS.
    client.type_line("hello over tls")?;
    let message = server.process.wait_event(patience(), "message", "desk-1")?;
    assert_eq!(message.str("text"), "hello over tls");
    let echo = client.wait_for(patience(), |line| line.event() == "message")?;
    assert_eq!(echo.str("text"), "hello over tls");

    // A person with `nc` on the TLS port learns why nothing works.
    let answer = plaintext_hello(server.tls_addr)?;
    assert!(answer.starts_with("ERROR tls-required "), "{answer:?}");

    // Everything both sides printed, to the end.
    client.kill();
    server.process.signal(Signal::SIGTERM)?;
    assert_eq!(server.process.wait_exit(patience())?, Some(0), "a graceful shutdown");
    let outputs = [
        ("server stdout", all_lines(&mut server.process)),
        ("server log", std::fs::read_to_string(&server.log)?),
        ("client stdout", all_lines(&mut client)),
        ("client log", std::fs::read_to_string(&client_log)?),
    ];
    for (name, text) in &outputs {
        eprintln!("{name}: {} lines, {} bytes", text.lines().count(), text.len());
        assert!(!text.contains(&token), "the token appears in the {name}");
        assert!(!text.contains(KEY_HEADER), "key material appears in the {name}");
    }
    // The search found something to search.
    assert!(outputs[1].1.contains("tls=true"), "the server log was captured");
    assert!(outputs[2].1.contains("hello over tls"), "the client's events were captured");
    // And the server wrote no key anywhere: its directory holds the CA's certificate and the
    // test's own files.
    for entry in std::fs::read_dir(&scratch.0)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        assert!(!text.contains(KEY_HEADER), "{} holds a key", path.display());
    }
    Ok(())
}

#[test]
fn certificate_files_verify_only_for_their_ca_and_their_names() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "files")?;
    let ca = TestCa::new("e2e CA")?;
    let issued = ca.issue(&["localhost", "127.0.0.1"], Validity::Now)?;
    let cert = scratch.write("chain.pem", &issued.chain_pem)?;
    let key = scratch.write("key.pem", &issued.key_pem)?;
    let ca_file = scratch.write("ca.pem", &ca.pem())?;
    let stranger = TestCa::new("another CA")?;
    let stranger_file = scratch.write("stranger.pem", &stranger.pem())?;
    let mut server = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-cert", arg(&cert)?, "--tls-key", arg(&key)?],
    )?;
    assert!(server.listening.json["ca_file"].is_null(), "{}", server.listening.json);
    let tls_addr = server.tls_addr;

    smol::block_on(async {
        let trusts = || ClientTls::ca_pem(ca.pem().as_bytes());
        let error =
            first_connect_error(tls_client(tls_addr, "desk-1", ClientTls::ca_pem(stranger.pem().as_bytes())?)?).await?;
        eprintln!("trusting another CA: {error}");
        assert_eq!(error, ConnectError::Tls(TlsError::UnknownIssuer));
        let error =
            first_connect_error(tls_client(tls_addr, "desk-1", trusts()?.server_name("elsewhere.example"))?).await?;
        eprintln!("checking a name not on the certificate: {error}");
        assert_eq!(error, ConnectError::Tls(TlsError::WrongName { expected: "elsewhere.example".into() }));

        // The control: the right CA and a name on the certificate.
        for name in ["127.0.0.1", "localhost"] {
            let (client, mut events) = Client::start(tls_client(tls_addr, name, trusts()?.server_name(name))?);
            next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
            client.close().await;
        }
        anyhow::Ok(())
    })?;
    let online = server.process.wait_event(patience(), "online", "localhost")?;
    assert_eq!(online.json["tls"], true);

    // The example client says why, on every attempt, and never comes online.
    let log = scratch.path("client.log");
    let tls_addr = tls_addr.to_string();
    let mut client = example_client(&log, &["--server", &tls_addr, "--id", "desk-2", "--ca", arg(&stranger_file)?])?;
    let refused = client.wait_for(patience(), |line| line.event() == "backing_off")?;
    assert_eq!(refused.str("error"), TlsError::UnknownIssuer.to_string(), "{}", refused.json);
    client.kill();
    let mut client = example_client(
        &log,
        &["--server", &tls_addr, "--id", "desk-2", "--ca", arg(&ca_file)?, "--server-name", "elsewhere.example"],
    )?;
    let refused = client.wait_for(patience(), |line| line.event() == "backing_off")?;
    assert!(refused.str("error").contains("not valid for \"elsewhere.example\""), "{}", refused.json);
    client.kill();
    assert!(!server.process.seen.iter().any(|l| l.event() == "online" && l.str("peer") == "desk-2"));

    server.process.kill();
    let log = std::fs::read_to_string(&server.log)?;
    assert!(!log.contains(KEY_HEADER) && !log.contains(&issued.key_pem[40..80]), "key material in the server log");
    Ok(())
}

#[test]
fn plaintext_on_the_demo_servers_tls_port_is_answered_tls_required_and_the_plaintext_port_still_works(
) -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "plaintext")?;
    let server = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&scratch.path("ca.pem"))?],
    )?;
    let answer = plaintext_hello(server.tls_addr)?;
    eprintln!("plaintext on the TLS port: {answer:?}");
    assert!(answer.starts_with("ERROR tls-required "), "{answer:?}");
    let (_peer, welcome) = RawPeer::hello(server.addr, "desk-1")?;
    assert!(welcome.starts_with("WELCOME "), "{welcome}");
    Ok(())
}

#[test]
fn a_tls_only_server_lists_its_tls_address_and_has_no_plaintext_port() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "tls-only")?;
    let ca_out = scratch.path("ca.pem");
    let mut server = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&ca_out)?, "--no-plaintext"],
    )?;
    assert_eq!(server.listening.json["plaintext"], false, "{}", server.listening.json);
    assert_eq!(server.addr, server.tls_addr, "addr is where to connect: the TLS listener");
    smol::block_on(async {
        let (client, mut events) = Client::start(tls_client(server.addr, "desk-1", ClientTls::ca_file(&ca_out)?)?);
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        client.close().await;
        anyhow::Ok(())
    })?;
    let online = server.process.wait_event(patience(), "online", "desk-1")?;
    assert_eq!(online.json["tls"], true);
    Ok(())
}

#[test]
fn a_client_still_trusting_an_earlier_runs_self_signed_ca_is_told_the_authority_is_unknown() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "new-ca")?;
    let (earlier, later) = (scratch.path("earlier.pem"), scratch.path("later.pem"));
    let first = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&earlier)?],
    )?;
    drop(first);
    let second = TlsServer::start(
        &scratch,
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&later)?],
    )?;
    smol::block_on(async {
        let error = first_connect_error(tls_client(second.tls_addr, "desk-1", ClientTls::ca_file(&earlier)?)?).await?;
        eprintln!("trusting the CA of an earlier run: {error}");
        assert_eq!(error, ConnectError::Tls(TlsError::UnknownIssuer));
        let (client, mut events) = Client::start(tls_client(second.tls_addr, "desk-1", ClientTls::ca_file(&later)?)?);
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        client.close().await;
        anyhow::Ok(())
    })
}

/// Starts `demo-server args…` and waits for it to exit; returns its exit code and stderr.
fn run_to_exit(args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = Command::new(demo_server_bin());
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = Reaped::new(command.spawn()?);
    let code = child.wait_exit(patience())?;
    let mut stderr = String::new();
    child.child().stderr.take().context("stderr is piped")?.read_to_string(&mut stderr)?;
    Ok((code, stderr))
}

#[test]
fn tls_flags_that_do_not_go_together_and_bad_pem_files_exit_2_with_a_readable_error() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "refusals")?;
    let ca = TestCa::new("e2e CA")?;
    let issued = ca.issue(&["localhost"], Validity::Now)?;
    let cert = scratch.write("chain.pem", &issued.chain_pem)?;
    let key = scratch.write("key.pem", &issued.key_pem)?;
    let (cert, key) = (arg(&cert)?, arg(&key)?);
    let missing = scratch.path("missing.pem");
    let missing = arg(&missing)?;
    let listen = ["--listen", "127.0.0.1:0"];
    let cases: [(&[&str], String); 6] = [
        (&["--tls-listen", "127.0.0.1:0"], "error: --tls-listen needs a certificate".to_owned()),
        (
            &["--tls-self-signed"],
            "error: a certificate (--tls-cert, --tls-key or --tls-self-signed) needs --tls-listen".to_owned(),
        ),
        (&["--tls-listen", "127.0.0.1:0", "--tls-cert", cert], "error: --tls-cert needs --tls-key".to_owned()),
        (
            &["--tls-listen", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", key],
            format!("error: reading --tls-cert {missing}: "),
        ),
        // The files swapped: the key file holds no certificate, and is not shown.
        (
            &["--tls-listen", "127.0.0.1:0", "--tls-cert", key, "--tls-key", cert],
            format!("error: --tls-cert {key}: the PEM holds no certificate"),
        ),
        (
            &["--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", cert],
            format!("error: --tls-key {cert}: the PEM holds no private key"),
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_to_exit(&[&listen[..], args].concat())?;
        eprintln!("demo-server {args:?}: exit {code:?}, {stderr:?}");
        assert_eq!(code, Some(2), "a configuration error: {stderr}");
        assert!(stderr.starts_with(&expected), "{stderr:?} does not start with {expected:?}");
        assert!(!stderr.contains(KEY_HEADER) && !stderr.contains(&issued.key_pem[40..80]), "{stderr:?}");
    }
    Ok(())
}

/// The start-up log (stderr) of a demo server started with `args`, once it listens.
fn start_log(scratch: &Scratch, args: &[&str]) -> anyhow::Result<String> {
    let (mut server, _) = spawn_server(scratch, args)?;
    server.kill();
    Ok(std::fs::read_to_string(scratch.path("server.log"))?)
}

/// An IPv4 address of this machine that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifaddr| {
        let ip = ifaddr.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some(ip)
    })
}

#[test]
fn the_start_warns_of_an_open_listener_and_of_logins_that_would_be_refused_but_not_when_tls_carries_them(
) -> anyhow::Result<()> {
    let scratch = Scratch::new("tls", "warnings")?;
    let tokens = scratch.write("tokens", &format!("desk-1 alice {}\n", random_text("alice")))?;
    let tokens = arg(&tokens)?;
    let ca_out = scratch.path("ca.pem");
    let self_signed = ["--tls-listen", "127.0.0.1:0", "--tls-self-signed", "--tls-ca-out", arg(&ca_out)?];
    let open = "without authentication";
    let refused = "cannot log in";
    let clear = "in the clear";
    let cases: [(Vec<&str>, Option<&str>); 5] = [
        (vec!["--listen", "127.0.0.1:0", "--tokens", tokens], None),
        (vec!["--listen", "0.0.0.0:0"], Some(open)),
        (vec!["--listen", "0.0.0.0:0", "--tokens", tokens], Some(refused)),
        ([&["--listen", "0.0.0.0:0", "--tokens", tokens][..], &self_signed[..]].concat(), None),
        (vec!["--listen", "0.0.0.0:0", "--tokens", tokens, "--allow-plaintext-tokens"], Some(clear)),
    ];
    for (args, expected) in cases {
        let log = start_log(&scratch, &args)?;
        let warnings: Vec<&str> = log.lines().filter(|line| line.contains("WARN")).collect();
        eprintln!("{args:?}: {warnings:#?}");
        match expected {
            Some(expected) => {
                ensure!(
                    warnings.len() == 1 && warnings[0].contains(expected),
                    "{args:?}: expected {expected:?}, got {warnings:#?}"
                )
            }
            None => ensure!(warnings.is_empty(), "{args:?}: no warning expected, got {warnings:#?}"),
        }
        std::fs::remove_file(scratch.path("server.log"))?;
    }
    Ok(())
}

#[test]
fn a_token_from_beyond_loopback_logs_in_over_tls_and_is_refused_over_plaintext() -> anyhow::Result<()> {
    let Some(ip) = non_loopback_ipv4() else {
        return pulsewire_tests::skip(
            "a_token_from_beyond_loopback_logs_in_over_tls",
            anyhow::anyhow!("no address beyond loopback"),
        );
    };
    let scratch = Scratch::new("tls", "remote")?;
    let token = random_text("alice");
    let tokens = scratch.write("tokens", &format!("desk-1 alice {token}\n"))?;
    let ca_out = scratch.path("ca.pem");
    let listen = SocketAddr::new(IpAddr::V4(ip), 0).to_string();
    let args = [
        &["--listen", &listen, "--tls-listen", &listen, "--tls-self-signed"][..],
        &["--tls-ca-out", arg(&ca_out)?, "--tokens", arg(&tokens)?],
        &INTERVAL_ARG[..],
    ]
    .concat();
    let (mut process, listening) = spawn_server(&scratch, &args)?;
    let addr = listening_addr(&listening.json)?;
    let tls_addr: SocketAddr = listening.str("tls_addr").parse()?;

    // Connected to the machine's own address, the peer's address is that one too: not loopback.
    let mut peer = RawPeer::connect(addr)?;
    peer.send(format!("HELLO 2 desk-1 token={token}\n").as_bytes())?;
    let answer = peer.line()?;
    assert!(answer.starts_with("ERROR tls-required ") && !answer.contains(&token), "{answer:?}");

    // The certificate made at start names the listen address: the client checks it as is.
    smol::block_on(async {
        let config = ClientConfig::builder(tls_addr.to_string(), "desk-1")
            .tls(ClientTls::ca_file(&ca_out)?)
            .token(token.as_str())
            .initial_delay(Duration::from_millis(20))
            .handshake_timeout(Duration::from_secs(2))
            .build()?;
        let (client, mut events) = Client::start(config);
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        client.close().await;
        anyhow::Ok(())
    })?;
    let online = process.wait_event(patience(), "online", "desk-1")?;
    assert!(online.str("addr").starts_with(&ip.to_string()), "{}", online.json);
    assert_eq!((online.str("subject"), online.json["tls"].as_bool()), ("alice", Some(true)));
    eprintln!("from {ip}: refused over plaintext, online over TLS");
    Ok(())
}
