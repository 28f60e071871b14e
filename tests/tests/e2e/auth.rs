//! Authentication against the real demo server: who may take an id that is online or kept, what
//! a refused login disturbs (nothing), what the same subject may do (take over, or resume with
//! the session's secret), that tokens and resume secrets reach no log, JWTs minted by
//! `demo-server mint-token`, and the command line's refusals.
//!
//! Tokens and secrets are random and written at test time into a directory of the test's own,
//! removed when the test ends.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures::StreamExt;
use nix::sys::signal::Signal;
use pulsewire::protocol::ErrorCode;
use pulsewire::{Client, ClientConfig, ClientConfigBuilder, CloseReason, DisconnectReason, Event, Events};
use pulsewire::{ResumeState, State};
use pulsewire_testkit::{is_listening, listening_addr, Reaped};
use pulsewire_tests::{client_example_bin, demo_server_bin, next_event, poll_until, DemoServer, Process, RawPeer};

use crate::{arg, patience, random_text, Scratch, INTERVAL_ARG};

/// How many server pulses a peer that must be untouched is watched for.
const WATCHED_PULSES: usize = 6;

/// A token file: alice holds `desk-1` (with two tokens), mallory may use any id.
struct Tokens {
    /// Alice's token for `desk-1`.
    alice: String,
    /// Another token of alice's for `desk-1`: the same subject, another credential.
    alice_other: String,
    /// Mallory's token, for any id.
    mallory: String,
    path: PathBuf,
}

impl Tokens {
    fn write(scratch: &Scratch) -> anyhow::Result<Tokens> {
        let (alice, alice_other, mallory) = (random_text("alice"), random_text("alice2"), random_text("mallory"));
        let text = format!(
            "# client-id  subject  token\n\
             desk-1 alice {alice}\n\
             desk-1 alice {alice_other}\n\
             * mallory {mallory}\n"
        );
        let path = scratch.write("tokens", &text)?;
        Ok(Tokens { alice, alice_other, mallory, path })
    }

    /// A demo server authenticating with this file, pulsing every [`INTERVAL`] unless `args`
    /// says otherwise.
    fn server(&self, args: &[&str]) -> anyhow::Result<DemoServer> {
        let interval = if args.contains(&"--interval") { &[][..] } else { &INTERVAL_ARG[..] };
        let args = [interval, &["--tokens", arg(&self.path)?], args].concat();
        DemoServer::start("127.0.0.1:0", &args)
    }
}

/// A client configuration with quick reconnects (as [`crate::client_config`]) and `token`.
fn config_with_token(server: SocketAddr, id: &str, token: &str) -> ClientConfigBuilder {
    ClientConfig::builder(server.to_string(), id)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .handshake_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .token(token)
}

/// Connects and sends `hello` (a line, without its newline); returns the peer and the server's
/// first answer.
fn raw_hello(addr: SocketAddr, hello: &str) -> anyhow::Result<(RawPeer, String)> {
    let mut peer = RawPeer::connect(addr)?;
    peer.send(format!("{hello}\n").as_bytes())?;
    let answer = peer.line()?;
    Ok((peer, answer))
}

/// The first three words of a `HELLO`, to name it in a message without its token.
fn shown(hello: &str) -> String {
    hello.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// A login the server must refuse with `ERROR <code>` and a close; returns the `ERROR` line.
fn refused(addr: SocketAddr, hello: &str, code: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let (mut peer, answer) = raw_hello(addr, hello)?;
    let took = started.elapsed();
    let expected = format!("ERROR {code} ");
    ensure!(answer.starts_with(&expected), "{}… got {answer:?}, expected {expected:?}…", shown(hello));
    ensure!(peer.closed_by_server(), "the server closes the refused connection of {}…", shown(hello));
    eprintln!("{}… refused in {took:?}: {answer}", shown(hello));
    Ok(answer)
}

/// A raw login the server must welcome; returns the peer and the `WELCOME` line.
fn welcomed(addr: SocketAddr, hello: &str) -> anyhow::Result<(RawPeer, String)> {
    let (peer, answer) = raw_hello(addr, hello)?;
    ensure!(answer.starts_with("WELCOME "), "{}… got {answer:?}, expected a WELCOME", shown(hello));
    Ok((peer, answer))
}

/// Reads lines until one that contains `needle` (a `DATA` payload runs into the line of the
/// frame after it, so lines are searched, not compared); returns every line read.
fn read_until(peer: &mut RawPeer, needle: &str) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|line: &String| line.contains(needle)) {
        lines.push(peer.line().with_context(|| format!("no {needle:?} after {lines:?}"))?);
    }
    Ok(lines)
}

/// The value of option `key` in a `WELCOME` line (`resume=…`).
fn welcome_option<'a>(welcome: &'a str, key: &str) -> anyhow::Result<&'a str> {
    welcome
        .split(' ')
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {welcome:?}"))
}

/// The session id of a `WELCOME` line.
fn welcome_session(welcome: &str) -> anyhow::Result<&str> {
    welcome.split(' ').nth(1).with_context(|| format!("no session in {welcome:?}"))
}

/// The resume secret a state holds (its text is `pulsewire-resume 1 <secret> <session> <n>`).
fn secret_of(state: &ResumeState) -> anyhow::Result<String> {
    let text = state.to_text();
    let secret = text.split(' ').nth(2).context("a resume state's text holds its secret")?;
    Ok(secret.to_owned())
}

/// The state an SDK client resumes `session` with, knowing its `secret`.
fn state_for(session: &str, secret: &str) -> anyhow::Result<ResumeState> {
    ResumeState::from_text(&format!("pulsewire-resume 1 {secret} {session} 0")).context("a valid resume state")
}

/// What broke the peace of an online client, among `events`.
fn disturbances(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. } | Event::Closed { .. } | Event::Connected { .. }))
        .collect()
}

/// An SDK client online as `desk-1` (or another id), watched for anything that disturbs it.
struct Victim {
    client: Client,
    events: Events,
    /// The session it was given.
    session: String,
}

impl Victim {
    /// Starts the client and waits until it is online and has answered a pulse (the session's
    /// secret is then the one [`Client::resume_state`] holds).
    async fn connect(config: ClientConfig) -> anyhow::Result<Victim> {
        let (client, mut events) = Client::start(config);
        let (connected, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        let Event::Connected { session, .. } = connected else { unreachable!("matched above") };
        let (_, _, before) = next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        ensure!(disturbances(&before).is_empty(), "disturbed at once: {before:?}");
        Ok(Victim { client, events, session: session.as_str().to_owned() })
    }

    /// Asserts that nothing happened to the client since it connected: over
    /// [`WATCHED_PULSES`] more pulses it reported no loss and no new connection, it is online in
    /// the same session, and a probe comes back.
    async fn is_untouched(&mut self) -> anyhow::Result<()> {
        let watched = Instant::now();
        for _ in 0..WATCHED_PULSES {
            let (_, _, before) = next_event(&mut self.events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
            let disturbed = disturbances(&before);
            ensure!(disturbed.is_empty(), "the online client was disturbed: {disturbed:?}");
        }
        let rtt = self.client.probe().await?;
        match self.client.state() {
            State::Online { session, .. } => ensure!(session.as_str() == self.session, "a new session {session}"),
            other => bail!("the client is {other:?}, not online"),
        }
        eprintln!("untouched: {WATCHED_PULSES} pulses answered in {:?}, probe round trip {rtt:?}", watched.elapsed());
        Ok(())
    }
}

/// Asserts that the server never let `id` go since line `since` of its output: another peer
/// comes online (`marker`, with a `token` that may use that id), and no line between says `id`
/// went offline or detached; the online list printed after it shows `id` with no miss.
fn server_kept(server: &mut DemoServer, id: &str, since: usize, marker: &str, token: &str) -> anyhow::Result<()> {
    let (mut peer, _) = welcomed(server.addr, &format!("HELLO 2 {marker} token={token}"))?;
    server.process.wait_event(patience(), "online", marker)?;
    let gone: Vec<_> = server.process.seen[since..]
        .iter()
        .filter(|line| matches!(line.event(), "offline" | "detached") && line.str("peer") == id)
        .map(|line| line.json.to_string())
        .collect();
    ensure!(gone.is_empty(), "the server let {id} go: {gone:#?}");
    let list = server.process.wait_for(patience(), |line| line.event() == "online_list")?;
    let peers = list.json["peers"].as_array().context("an online list has peers")?;
    let held = peers.iter().find(|peer| peer["id"] == id).with_context(|| format!("{id} is not online: {peers:?}"))?;
    ensure!(held["misses"] == 0, "{id} missed pulses: {held}");
    peer.send(b"BYE done\n")?;
    Ok(())
}

#[test]
fn another_subject_cannot_take_an_online_id_and_the_peer_holding_it_is_untouched() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "hijack")?;
    let tokens = Tokens::write(&scratch)?;
    let mut server = tokens.server(&[])?;
    smol::block_on(async {
        let mut victim = Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice).build()?).await?;
        let online = server.process.wait_event(patience(), "online", "desk-1")?;
        assert_eq!(online.str("subject"), "alice");
        assert_eq!(online.str("session"), victim.session);
        let since = server.process.seen.len();

        // Mallory's token allows any id, but desk-1 is alice's while she is online; again and
        // again, with and without a made-up resume secret.
        for attempt in 0..3 {
            let hello = match attempt {
                0 => format!("HELLO 2 desk-1 token={}", tokens.mallory),
                _ => format!("HELLO 2 desk-1 token={} resume={} rx=0", tokens.mallory, random_text("guess")),
            };
            let answer = refused(server.addr, &hello, "forbidden")?;
            assert!(answer.contains("held by another subject"), "{answer}");
            assert!(!answer.contains(&tokens.mallory), "an error text never shows a token: {answer}");
        }

        victim.is_untouched().await?;
        server_kept(&mut server, "desk-1", since, "marker-1", &tokens.mallory)?;
        Ok(())
    })
}

#[test]
fn a_refused_login_for_an_online_id_disturbs_nothing() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "refused")?;
    let tokens = Tokens::write(&scratch)?;
    let mut server = tokens.server(&[])?;
    smol::block_on(async {
        let mut victim = Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice).build()?).await?;
        server.process.wait_event(patience(), "online", "desk-1")?;
        let since = server.process.seen.len();
        let secret = secret_of(&victim.client.resume_state().context("an online client has a session")?)?;

        let wrong = random_text("wrong");
        let cases = [
            (format!("HELLO 2 desk-1 token={wrong}"), "auth-failed"),
            // The session's real secret does not stand in for a token.
            (format!("HELLO 2 desk-1 token={wrong} resume={secret} rx=0"), "auth-failed"),
            ("HELLO 2 desk-1".to_owned(), "auth-required"),
            (format!("HELLO 2 desk-1 resume={secret} rx=0"), "auth-required"),
            ("HELLO 1 desk-1".to_owned(), "version"),
            // Alice's token, for an id that is not hers.
            (format!("HELLO 2 desk-2 token={}", tokens.alice), "forbidden"),
        ];
        for (hello, code) in &cases {
            let answer = refused(server.addr, hello, code)?;
            for secret in [&wrong, &tokens.alice, &secret] {
                assert!(!answer.contains(secret.as_str()), "an error text never shows a secret: {answer}");
            }
            victim.is_untouched().await?;
        }
        server_kept(&mut server, "desk-1", since, "marker-1", &tokens.mallory)?;
        Ok(())
    })
}

#[test]
fn the_same_subject_takes_over_its_id_and_the_old_client_stops_replaced() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "takeover")?;
    let tokens = Tokens::write(&scratch)?;
    let mut server = tokens.server(&[])?;
    smol::block_on(async {
        let mut first = Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice).build()?).await?;
        server.process.wait_event(patience(), "online", "desk-1")?;

        // Alice again, from elsewhere, with her other token: the same subject.
        let started = Instant::now();
        let mut second =
            Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice_other).build()?).await?;
        assert_ne!(second.session, first.session, "a takeover without the secret opens a fresh session");
        let (closed, at, before) =
            next_event(&mut first.events, patience(), |e| matches!(e, Event::Closed { .. })).await?;
        eprintln!("the first client stopped {:?} after the second started", at - started);
        assert!(
            matches!(&closed, Event::Closed { reason: CloseReason::Rejected { code: ErrorCode::Replaced, .. } }),
            "{closed:?}"
        );
        let lost: Vec<_> = before.iter().filter(|e| matches!(e, Event::Disconnected { .. })).collect();
        assert!(
            matches!(
                lost[..],
                [Event::Disconnected { reason: DisconnectReason::ServerError { code: ErrorCode::Replaced, .. } }]
            ),
            "{lost:?}"
        );
        // Closed is the last event: the first client does not come back to fight for the id.
        assert!(first.events.next().await.is_none(), "no event after Closed");

        let gone = server.process.wait_for(patience(), |l| l.event() == "offline" && l.str("peer") == "desk-1")?;
        assert_eq!(gone.str("reason"), "replaced");
        let online =
            server.process.wait_for(patience(), |l| l.event() == "online" && l.str("session") == second.session)?;
        assert_eq!((online.str("peer"), online.str("subject")), ("desk-1", "alice"));
        let since = server.process.seen.len();

        second.is_untouched().await?;
        server_kept(&mut server, "desk-1", since, "marker-1", &tokens.mallory)?;
        Ok(())
    })
}

#[test]
fn another_subject_presenting_the_online_sessions_secret_is_forbidden() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "resume-forbidden")?;
    let tokens = Tokens::write(&scratch)?;
    let mut server = tokens.server(&[])?;
    smol::block_on(async {
        let mut victim = Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice).build()?).await?;
        server.process.wait_event(patience(), "online", "desk-1")?;
        let since = server.process.seen.len();
        let state = victim.client.resume_state().context("an online client has a session")?;
        assert_eq!(state.session().as_str(), victim.session);
        let secret = secret_of(&state)?;

        let stolen = format!("HELLO 2 desk-1 token={} resume={secret} rx={}", tokens.mallory, state.delivered());
        let answer = refused(server.addr, &stolen, "forbidden")?;
        assert!(!answer.contains(&secret), "an error text never shows the secret: {answer}");
        refused(server.addr, &format!("HELLO 2 desk-1 resume={secret} rx=0"), "auth-required")?;

        victim.is_untouched().await?;
        server_kept(&mut server, "desk-1", since, "marker-1", &tokens.mallory)?;
        // The secret still resumes the session for its subject: the refusals did not spend it.
        assert_eq!(secret_of(&victim.client.resume_state().context("still a session")?)?, secret);
        Ok(())
    })
}

/// The design: a `HELLO` of the subject that holds an online id takes it over; without the
/// session's secret it gets a fresh session (`resumed=0 rx=0`) and none of the old session's
/// messages, which go back to the server's application. With the secret, they are written to it.
#[test]
fn the_same_subject_with_a_wrong_secret_gets_a_fresh_session_and_none_of_the_old_messages() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "wrong-secret")?;
    let tokens = Tokens::write(&scratch)?;
    // No pulse in the test's time: raw peers that never answer stay online, and the first line
    // after a WELCOME is what the server chose to write, not a pulse.
    let mut server = tokens.server(&["--interval", "60s"])?;
    let (mut holder, welcome) = welcomed(server.addr, &format!("HELLO 2 desk-1 token={}", tokens.alice))?;
    let old_session = welcome_session(&welcome)?.to_owned();
    server.process.wait_event(patience(), "online", "desk-1")?;
    // Two messages for desk-1 that it never acknowledges: the server echoes each message it
    // gets, and reports the message once its echo is in the session.
    holder.send(b"DATA 5 1\nfirstDATA 6 2\nsecond")?;
    let echoed = server.process.wait_for(patience(), |l| l.event() == "message" && l.str("text") == "second")?;
    assert_eq!(echoed.json["echo_seq"], 2, "{}", echoed.json);

    let hello = format!("HELLO 2 desk-1 token={} resume={} rx=0", tokens.alice, random_text("wrong"));
    let (mut newcomer, welcome) = welcomed(server.addr, &hello)?;
    eprintln!("the same subject with a wrong secret got: {}", welcome.split(" resume=").next().unwrap_or(""));
    let new_session = welcome_session(&welcome)?.to_owned();
    assert_ne!(new_session, old_session, "a wrong secret never resumes: {welcome}");
    assert_eq!((welcome_option(&welcome, "resumed")?, welcome_option(&welcome, "rx")?), ("0", "0"));
    // The server writes a resumed session's messages before anything new: an answer to a probe
    // that comes first proves none of the old ones were handed over.
    newcomer.send(b"PULSE 1\n")?;
    assert_eq!(newcomer.line()?, "ALIVE 1", "the first frame after a fresh WELCOME answers the probe");

    // The old connection is told, and its session ends with both messages undelivered.
    read_until(&mut holder, "ERROR replaced")?;
    let gone = server.process.wait_for(patience(), |l| l.event() == "offline" && l.str("peer") == "desk-1")?;
    assert_eq!(gone.str("reason"), "replaced");
    assert_eq!(gone.json["undelivered"], 2, "the old session's messages go back to the application: {}", gone.json);
    let online = server.process.wait_event(patience(), "online", "desk-1")?;
    assert_eq!((online.str("session"), online.json["resumed"].as_bool()), (new_session.as_str(), Some(false)));

    // The control: with the right secret, the session's unacknowledged message is written to
    // the peer that resumes it (and the connection it had is told `resumed`).
    newcomer.send(b"DATA 5 1\nthird")?;
    let echoed = server.process.wait_for(patience(), |l| l.event() == "message" && l.str("text") == "third")?;
    assert_eq!(echoed.json["echo_seq"], 1, "{}", echoed.json);
    let secret = welcome_option(&welcome, "resume")?;
    smol::block_on(async {
        let config = config_with_token(server.addr, "desk-1", &tokens.alice).resume(state_for(&new_session, secret)?);
        let (_client, mut events) = Client::start(config.build()?);
        let (connected, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        assert!(
            matches!(&connected, Event::Connected { session, resumed: true, .. } if session.as_str() == new_session)
        );
        next_event(&mut events, patience(), |e| matches!(e, Event::Message { payload, .. } if payload == "third"))
            .await?;
        anyhow::Ok(())
    })?;
    read_until(&mut newcomer, "ERROR resumed")?;
    Ok(())
}

#[test]
fn a_kept_session_is_held_for_its_subject_alone() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "kept")?;
    let tokens = Tokens::write(&scratch)?;
    let mut server = tokens.server(&[])?;
    let (holder, welcome) = welcomed(server.addr, &format!("HELLO 2 desk-1 token={}", tokens.alice))?;
    let session = welcome_session(&welcome)?.to_owned();
    let secret = welcome_option(&welcome, "resume")?.to_owned();
    drop(holder);
    server.process.wait_event(patience(), "detached", "desk-1")?;
    let since = server.process.seen.len();
    // A broadcast, for every peer online or detached: once the peer online has it (answering
    // pulses meanwhile), it is done, and the kept session holds it too.
    let (mut other, _) = welcomed(server.addr, &format!("HELLO 2 other-1 token={}", tokens.mallory))?;
    server.process.type_line("while you were away")?;
    loop {
        let line = other.line()?;
        if let Some(seq) = line.strip_prefix("PULSE ") {
            other.send(format!("ALIVE {seq}\n").as_bytes())?;
            continue;
        }
        assert!(line.starts_with("DATA "), "{line}");
        break;
    }
    other.send(b"BYE done\n")?;

    // Nobody online holds desk-1, but its session is kept for alice.
    let answer = refused(server.addr, &format!("HELLO 2 desk-1 token={}", tokens.mallory), "forbidden")?;
    assert!(answer.contains("held by another subject"), "{answer}");
    refused(server.addr, &format!("HELLO 2 desk-1 token={} resume={secret} rx=0", tokens.mallory), "forbidden")?;
    refused(server.addr, &format!("HELLO 2 desk-1 resume={secret} rx=0"), "auth-required")?;

    // Alice resumes it, and gets what was sent meanwhile.
    smol::block_on(async {
        let config = config_with_token(server.addr, "desk-1", &tokens.alice).resume(state_for(&session, &secret)?);
        let (_client, mut events) = Client::start(config.build()?);
        let (connected, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        assert!(matches!(&connected, Event::Connected { session: s, resumed: true, .. } if s.as_str() == session));
        next_event(
            &mut events,
            patience(),
            |e| matches!(e, Event::Message { payload, .. } if payload == "while you were away"),
        )
        .await?;
        anyhow::Ok(())
    })?;
    let online = server.process.wait_event(patience(), "online", "desk-1")?;
    assert_eq!((online.str("session"), online.json["resumed"].as_bool()), (session.as_str(), Some(true)));
    let ended: Vec<_> = server.process.seen[since..]
        .iter()
        .filter(|l| l.event() == "offline" && l.str("peer") == "desk-1")
        .map(|l| l.json.to_string())
        .collect();
    assert!(ended.is_empty(), "a refused login ended the kept session: {ended:?}");
    Ok(())
}

/// A command for `program args…` whose standard error goes to the file `log` (`sh` sets it up
/// and becomes the program: the same process), its standard output left for [`Process`].
fn stderr_to(log: &Path, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", r#"exec "$0" "$@" 2>"$PULSEWIRE_STDERR_LOG""#]).arg(program).args(args);
    command.env("PULSEWIRE_STDERR_LOG", log);
    command
}

/// Everything a process printed on stdout (as JSON lines), once it has exited.
fn all_lines(process: &mut Process) -> String {
    // The reader thread ends at the end of the output; then no line comes any more.
    let _ = process.wait_for(patience(), |_| false);
    process.seen.iter().map(|line| format!("{}\n", line.json)).collect()
}

/// The secret in the example client's state file, once the file holds one other than `old`
/// (polled: the client prints nothing once it has saved the file).
fn saved_secret(path: &Path, old: Option<&str>) -> anyhow::Result<String> {
    let read = || {
        let state = ResumeState::from_text(&std::fs::read_to_string(path).ok()?)?;
        secret_of(&state).ok().filter(|secret| Some(secret.as_str()) != old)
    };
    poll_until(patience(), read).with_context(|| format!("no new secret in {}", path.display()))
}

#[test]
fn no_token_or_resume_secret_reaches_a_log_or_the_output() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "logs")?;
    let tokens = Tokens::write(&scratch)?;
    let token_file = scratch.write("alice.token", &format!("{}\n", tokens.alice))?;
    let state_file = scratch.path("desk-1.state");
    let wrong = random_text("wrong");
    // Our crates at their most talkative, the others at debug.
    let filter = "debug,pulsewire=trace,demo_server=trace";

    let server_log = scratch.path("server.log");
    let args = [&INTERVAL_ARG[..], &["--json", "--listen", "127.0.0.1:0", "--tokens", arg(&tokens.path)?]].concat();
    let mut command = stderr_to(&server_log, &demo_server_bin(), &args);
    command.env("RUST_LOG", filter);
    let mut process = Process::spawn(command)?;
    let listening = process.wait_for(Duration::from_secs(30), |line| is_listening(&line.json))?;
    let mut server = DemoServer { addr: listening_addr(&listening.json)?, process };

    let addr = server.addr.to_string();
    let client_args = [
        "--json",
        "--server",
        &addr,
        "--id",
        "desk-1",
        "--max-delay-ms",
        "200",
        "--token-file",
        arg(&token_file)?,
        "--state-file",
        arg(&state_file)?,
    ];
    let client = |run: &str| -> anyhow::Result<Process> {
        let mut command = stderr_to(&scratch.path(&format!("client-{run}.log")), &client_example_bin(), &client_args);
        command.env("RUST_LOG", filter);
        Process::spawn(command)
    };

    // A connect.
    let mut first = client("1")?;
    first.wait_for(patience(), |line| line.event() == "connected")?;
    let online = server.process.wait_event(patience(), "online", "desk-1")?;
    assert_eq!(online.str("subject"), "alice");
    let secret_1 = saved_secret(&state_file, None)?;

    // Refused logins, with a token of the file and with an unknown one.
    refused(server.addr, &format!("HELLO 2 desk-1 token={}", tokens.mallory), "forbidden")?;
    refused(server.addr, &format!("HELLO 2 desk-1 token={wrong} resume={secret_1} rx=0"), "auth-failed")?;

    // A raw peer's session, lost and resumed: two more secrets pass through the server.
    let (raw, welcome) = welcomed(server.addr, &format!("HELLO 2 raw-1 token={}", tokens.mallory))?;
    let raw_secret_1 = welcome_option(&welcome, "resume")?.to_owned();
    drop(raw);
    server.process.wait_event(patience(), "detached", "raw-1")?;
    let hello = format!("HELLO 2 raw-1 token={} resume={raw_secret_1} rx=0", tokens.mallory);
    let (mut raw, welcome) = welcomed(server.addr, &hello)?;
    assert_eq!(welcome_option(&welcome, "resumed")?, "1", "{}", shown(&welcome));
    let raw_secret_2 = welcome_option(&welcome, "resume")?.to_owned();
    raw.send(b"BYE done\n")?;

    // The example client dies and resumes its session from its state file.
    first.signal(Signal::SIGKILL)?;
    server.process.wait_event(patience(), "detached", "desk-1")?;
    let mut second = client("2")?;
    let connected = second.wait_for(patience(), |line| line.event() == "connected")?;
    assert_eq!(connected.json["resumed"], true, "{}", connected.json);
    server
        .process
        .wait_for(patience(), |l| l.event() == "online" && l.str("peer") == "desk-1" && l.json["resumed"] == true)?;
    let secret_2 = saved_secret(&state_file, Some(&secret_1))?;
    second.type_line("a message after the resume")?;
    second.wait_for(patience(), |line| line.event() == "delivered")?;

    // Everything they printed, to the end.
    second.kill();
    server.process.signal(Signal::SIGTERM)?;
    assert_eq!(server.process.wait_exit(patience())?, Some(0), "a graceful shutdown");
    let outputs = [
        ("server stdout", all_lines(&mut server.process)),
        ("server log", std::fs::read_to_string(&server_log)?),
        ("first client stdout", all_lines(&mut first)),
        ("first client log", std::fs::read_to_string(scratch.path("client-1.log"))?),
        ("second client stdout", all_lines(&mut second)),
        ("second client log", std::fs::read_to_string(scratch.path("client-2.log"))?),
    ];
    let secrets = [
        ("alice's token", &tokens.alice),
        ("mallory's token", &tokens.mallory),
        ("an unknown token", &wrong),
        ("desk-1's first resume secret", &secret_1),
        ("desk-1's resume secret after its resume", &secret_2),
        ("raw-1's first resume secret", &raw_secret_1),
        ("raw-1's resume secret after its resume", &raw_secret_2),
    ];
    for (name, text) in &outputs {
        eprintln!("{name}: {} lines, {} bytes", text.lines().count(), text.len());
        for (secret_name, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret_name} appears in the {name}");
        }
    }
    // The search found something to search: the logs and the events were captured.
    let server_log = &outputs[1].1;
    for expected in ["peer online", "connection refused", "subject=\"alice\""] {
        assert!(server_log.contains(expected), "the server log lacks {expected:?}");
    }
    assert!(outputs[0].1.contains("\"subject\":\"alice\""), "the server's events were captured");
    assert!(outputs[4].1.contains("\"resumed\":true"), "the client's events were captured");
    Ok(())
}

/// Runs `demo-server mint-token` and returns the token it printed.
fn mint(secret_file: &Path, subject: &str, client_ids: &[&str]) -> anyhow::Result<String> {
    mint_for(secret_file, subject, client_ids, "1h")
}

/// Runs `demo-server mint-token … --lifetime <lifetime>` and returns the token it printed.
fn mint_for(secret_file: &Path, subject: &str, client_ids: &[&str], lifetime: &str) -> anyhow::Result<String> {
    let mut command = Command::new(demo_server_bin());
    command.args(["mint-token", "--jwt-secret-file", arg(secret_file)?, "--subject", subject, "--lifetime", lifetime]);
    for id in client_ids {
        command.args(["--client-id", id]);
    }
    let out = command.output().context("demo-server mint-token")?;
    ensure!(out.status.success(), "mint-token failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout)?.trim_end().to_owned();
    ensure!(token.split('.').count() == 3, "a JWT has three parts: {token:?}");
    Ok(token)
}

#[test]
fn a_jwt_minted_by_the_demo_server_logs_in_as_its_subject_and_a_forged_one_fails() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "jwt")?;
    let secret_file = scratch.write("jwt.secret", &format!("{}\n", random_text("hs256")))?;
    let other_secret = scratch.write("other.secret", &random_text("other"))?;
    let alice = mint(&secret_file, "alice", &["desk-1"])?;
    let ops = mint(&secret_file, "ops", &["*"])?;
    let args = [&INTERVAL_ARG[..], &["--jwt-secret-file", arg(&secret_file)?]].concat();
    let mut server = DemoServer::start("127.0.0.1:0", &args)?;
    smol::block_on(async {
        let mut victim = Victim::connect(config_with_token(server.addr, "desk-1", &alice).build()?).await?;
        let online = server.process.wait_event(patience(), "online", "desk-1")?;
        assert_eq!(online.str("subject"), "alice");
        let since = server.process.seen.len();

        // The right claims signed with another secret: authentication comes before the id.
        let forged = mint(&other_secret, "alice", &["desk-1"])?;
        refused(server.addr, &format!("HELLO 2 desk-1 token={forged}"), "auth-failed")?;
        // A token without client ids may use its subject as its id only.
        let bare = mint(&secret_file, "alice", &[])?;
        refused(server.addr, &format!("HELLO 2 desk-1 token={bare}"), "forbidden")?;
        welcomed(server.addr, &format!("HELLO 2 alice token={bare}"))?.0.send(b"BYE done\n")?;
        // Another subject allowed the id by its claims, while alice holds it.
        let bob = mint(&secret_file, "bob", &["desk-*"])?;
        let answer = refused(server.addr, &format!("HELLO 2 desk-1 token={bob}"), "forbidden")?;
        assert!(answer.contains("held by another subject"), "{answer}");

        // The SDK client stops at once on a refused token: the same token would be refused again.
        let started = Instant::now();
        let (_refused, mut events) = Client::start(config_with_token(server.addr, "desk-2", &forged).build()?);
        let (closed, at, before) = next_event(&mut events, patience(), |e| matches!(e, Event::Closed { .. })).await?;
        eprintln!("a client with a forged token stopped after {:?}", at - started);
        assert!(
            matches!(&closed, Event::Closed { reason: CloseReason::Rejected { code: ErrorCode::AuthFailed, .. } }),
            "{closed:?}"
        );
        let attempts = before.iter().filter(|e| matches!(e, Event::Connecting { .. })).count();
        assert_eq!(attempts, 1, "one attempt, no retry: {before:?}");

        victim.is_untouched().await?;
        server_kept(&mut server, "desk-1", since, "marker-1", &ops)?;
        Ok(())
    })
}

/// `Jwt`'s documentation: a token past its `exp` by less than the leeway (30 s by default) is
/// accepted, "with its own expiry" (`a_token_expired_within_the_leeway_is_accepted_with_its_own_expiry`
/// in `sdk/src/auth/jwt.rs`), so that a server whose clock runs a little ahead of the issuer's
/// lets the peer in.
#[test]
fn a_jwt_expired_within_the_leeway_is_accepted() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "jwt-leeway")?;
    let secret_file = scratch.write("jwt.secret", &random_text("hs256"))?;
    let token = mint_for(&secret_file, "alice", &["desk-1"], "1s")?;
    let args = [&INTERVAL_ARG[..], &["--jwt-secret-file", arg(&secret_file)?]].concat();
    let server = DemoServer::start("127.0.0.1:0", &args)?;
    // `exp` is a whole second at most a second away: two seconds later it has passed, by far
    // less than the leeway. (No event marks the passing of a wall-clock second.)
    std::thread::sleep(Duration::from_secs(2));
    let (_peer, answer) = raw_hello(server.addr, &format!("HELLO 2 desk-1 token={token}"))?;
    assert!(answer.starts_with("WELCOME "), "a token expired 1 s ago, within the 30 s leeway, got {answer:?}");
    Ok(())
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
fn require_auth_without_an_auth_source_exits_2_with_a_readable_error() -> anyhow::Result<()> {
    let (code, stderr) = run_to_exit(&["--require-auth", "--json", "--listen", "127.0.0.1:0"])?;
    eprintln!("demo-server --require-auth: exit {code:?}, {stderr:?}");
    assert_eq!(code, Some(2), "a configuration error: {stderr}");
    assert!(
        stderr.starts_with("error: --require-auth needs --tokens, --jwt-secret-file or --jwt-public-key"),
        "{stderr}"
    );

    // With a source it starts.
    let scratch = Scratch::new("auth", "require")?;
    let tokens = Tokens::write(&scratch)?;
    tokens.server(&["--require-auth"])?;
    Ok(())
}

#[test]
fn a_bad_token_file_stops_the_server_naming_its_line_and_never_a_token() -> anyhow::Result<()> {
    let scratch = Scratch::new("auth", "bad-file")?;
    let token = random_text("twice");
    let path = scratch.write("tokens", &format!("desk-1 alice {token}\ndesk-2 bob {token}\n"))?;
    let (code, stderr) = run_to_exit(&["--tokens", arg(&path)?, "--listen", "127.0.0.1:0"])?;
    eprintln!("demo-server with a bad token file: exit {code:?}, {stderr:?}");
    assert_eq!(code, Some(2), "a configuration error: {stderr}");
    assert!(stderr.contains("line 2: the same token as line 1"), "{stderr}");
    assert!(!stderr.contains(&token), "the error shows the token: {stderr}");
    Ok(())
}

/// An IPv4 address of this machine that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifaddr| {
        let ip = ifaddr.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some(ip)
    })
}

#[test]
fn a_token_over_plaintext_from_a_remote_address_is_refused_unless_allowed() -> anyhow::Result<()> {
    let Some(ip) = non_loopback_ipv4() else {
        return pulsewire_tests::skip(
            "a_token_over_plaintext_from_a_remote_address",
            anyhow::anyhow!("no address beyond loopback"),
        );
    };
    let scratch = Scratch::new("auth", "plaintext")?;
    let tokens = Tokens::write(&scratch)?;
    let listen = SocketAddr::new(IpAddr::V4(ip), 0).to_string();
    let path = arg(&tokens.path)?;
    // Connected to the machine's own address, the peer's address is that one too: not loopback.
    let server = DemoServer::start(&listen, &[&INTERVAL_ARG[..], &["--tokens", path]].concat())?;
    let answer = refused(server.addr, &format!("HELLO 2 desk-1 token={}", tokens.alice), "tls-required")?;
    assert!(!answer.contains(&tokens.alice), "{answer}");
    // Without a token nothing secret crosses the wire: authentication says what is missing.
    refused(server.addr, "HELLO 2 desk-1", "auth-required")?;

    let allowed = [&INTERVAL_ARG[..], &["--tokens", path, "--allow-plaintext-tokens"]].concat();
    let mut server = DemoServer::start(&listen, &allowed)?;
    smol::block_on(async {
        let mut peer = Victim::connect(config_with_token(server.addr, "desk-1", &tokens.alice).build()?).await?;
        let online = server.process.wait_event(patience(), "online", "desk-1")?;
        assert_eq!((online.str("subject"), online.str("addr").starts_with(&ip.to_string())), ("alice", true));
        peer.is_untouched().await
    })?;
    eprintln!("from {ip}: refused without --allow-plaintext-tokens, online with it");
    Ok(())
}
