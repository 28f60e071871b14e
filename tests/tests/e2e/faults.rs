use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pulsewire::{Client, ConnectError, DisconnectReason, Event, Failure};
use pulsewire_tests::{missed_counts, next_event, start_client_process, DemoServer};

use crate::{client_config, patience, INTERVAL, INTERVAL_ARG, MAX_MISSED};

fn is_connected(event: &Event) -> bool {
    matches!(event, Event::Connected { .. })
}

#[test]
fn killed_server_is_noticed_at_once_and_the_client_reconnects_to_a_new_one() -> anyhow::Result<()> {
    let first = DemoServer::start("127.0.0.1:0", &INTERVAL_ARG)?;
    let addr = first.addr;
    smol::block_on(async {
        let (_client, mut events) = Client::start(client_config(addr, "desk-kill"));
        next_event(&mut events, patience(), is_connected).await?;
        next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;

        first.process.signal(Signal::SIGKILL)?;
        let killed = Instant::now();
        let (lost, at, _) = next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        eprintln!("SIGKILL noticed after {:?}", at - killed);
        // Noticed from the socket (end of file or reset), not by waiting out missed pulses.
        assert!(
            matches!(lost, Event::Disconnected { reason: DisconnectReason::Eof | DisconnectReason::Reset }),
            "{lost:?}"
        );

        // While no server listens, attempts fail and the client backs off.
        let refused =
            |e: &Event| matches!(e, Event::BackingOff { last_error: Some(Failure::Connect(ConnectError::Io(_))), .. });
        next_event(&mut events, patience(), refused).await?;

        let _second = DemoServer::start(&addr.to_string(), &INTERVAL_ARG)?;
        let restarted = Instant::now();
        let (_, at, _) = next_event(&mut events, patience(), is_connected).await?;
        eprintln!("online again {:?} after the new server listened", at - restarted);
        Ok(())
    })
}

#[test]
fn frozen_server_is_detected_by_missed_pulses_and_the_client_reconnects_after_sigcont() -> anyhow::Result<()> {
    let server = DemoServer::start("127.0.0.1:0", &INTERVAL_ARG)?;
    smol::block_on(async {
        let (_client, mut events) = Client::start(client_config(server.addr, "desk-freeze"));
        next_event(&mut events, patience(), is_connected).await?;
        for _ in 0..3 {
            next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        }

        server.process.signal(Signal::SIGSTOP)?;
        let frozen = Instant::now();
        let (lost, at, before) =
            next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        let detected = at - frozen;
        eprintln!(
            "frozen server detected after {detected:?} (window after the last pulse: {:?}..{:?})",
            INTERVAL * MAX_MISSED,
            INTERVAL * (MAX_MISSED + 1)
        );
        assert_eq!(lost, Event::Disconnected { reason: DisconnectReason::PulseTimeout { missed: MAX_MISSED } });
        // The misses were counted up one by one before the loss was declared.
        let counts = missed_counts(&before);
        assert!(counts.ends_with(&[1, 2]), "missed events before the loss: {counts:?}");
        // The last pulse came at most an interval before the freeze, so the loss cannot be
        // declared sooner than (max_missed - 1) intervals after it, nor later than the window.
        assert!(detected >= INTERVAL * (MAX_MISSED - 1), "declared too early: {detected:?}");
        assert!(
            detected <= INTERVAL * (MAX_MISSED + 1) + Duration::from_millis(500),
            "declared too late: {detected:?}"
        );

        server.process.signal(Signal::SIGCONT)?;
        next_event(&mut events, patience(), is_connected).await?;
        Ok(())
    })
}

#[test]
fn frozen_client_process_is_evicted_within_the_window_and_its_session_is_kept_detached() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &INTERVAL_ARG)?;
    let mut client = start_client_process(server.addr, "frozen-1")?;
    server.process.wait_event(patience(), "online", "frozen-1")?;
    for _ in 0..3 {
        client.wait_for(patience(), |line| line.event() == "pulse")?;
    }

    client.signal(Signal::SIGSTOP)?;
    let frozen = Instant::now();
    let gone = server.process.wait_event(patience(), "detached", "frozen-1")?;
    let evicted = gone.at - frozen;
    eprintln!(
        "frozen client evicted after {evicted:?} (window after its last frame: {:?}..{:?})",
        INTERVAL * (MAX_MISSED + 1),
        INTERVAL * (MAX_MISSED + 2)
    );
    assert_eq!(gone.str("reason"), "timeout");
    assert!(evicted >= INTERVAL * MAX_MISSED, "evicted too early: {evicted:?}");
    assert!(evicted <= INTERVAL * (MAX_MISSED + 2) + Duration::from_millis(500), "evicted too late: {evicted:?}");

    server.process.wait_for(patience(), |line| line.event() == "online_list")?;
    assert_eq!(server.last_online_list(), Some(vec![]));
    Ok(())
}

#[test]
fn client_started_before_its_server_connects_once_the_server_appears() -> anyhow::Result<()> {
    // Find a free port, then leave it free.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    smol::block_on(async {
        let (_client, mut events) = Client::start(client_config(addr, "early-bird"));
        let (first, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::BackingOff { .. })).await?;
        assert!(matches!(first, Event::BackingOff { attempt: 2, .. }), "{first:?}");
        let _server = DemoServer::start(&addr.to_string(), &INTERVAL_ARG)?;
        next_event(&mut events, patience(), is_connected).await?;
        Ok(())
    })
}
