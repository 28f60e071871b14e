//! The limits an operator sets on the server: peers online, connections per address, handshakes
//! in flight. Each refusal is `ERROR full` with its reason, the connection is closed, the SDK
//! client backs off and gets in once there is room, and nobody already in is disturbed.

use std::net::Ipv4Addr;
use std::time::Duration;

use pulsewire::protocol::ErrorCode;
use pulsewire::{Client, ConnectError, Event, Failure, ServerEvent};
use pulsewire_tests::{next_event, next_in, poll_until, RawPeer};

use crate::{bind, client_config, patience, serial, server_config};

/// A slow cadence: a busy machine must not make the peers that are already in drop out and
/// come back while the limits are being filled.
const INTERVAL: Duration = Duration::from_millis(500);

fn refused_as_full(event: &Event) -> bool {
    matches!(
        event,
        Event::BackingOff {
            last_error: Some(Failure::Connect(ConnectError::Rejected { code: ErrorCode::Full, .. })),
            ..
        }
    )
}

/// Reads the line the server answers a connection with, and checks that it then closes.
fn refusal(peer: &mut RawPeer) -> anyhow::Result<String> {
    let line = peer.line()?;
    anyhow::ensure!(peer.closed_by_server(), "the server must close after {line:?}");
    Ok(line)
}

#[test]
fn a_full_server_refuses_newcomers_with_error_full_and_lets_them_in_once_a_peer_left() -> anyhow::Result<()> {
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(INTERVAL).max_peers(3)).await?;
        let addr = server.local_addr();
        let mut peers = Vec::new();
        for n in 0..3 {
            peers.push(RawPeer::hello(addr, &format!("peer-{n}"))?.0);
        }

        // A fourth is refused at its HELLO, and closed.
        let mut fourth = RawPeer::connect(addr)?;
        fourth.send(b"HELLO 1 fourth\n")?;
        assert_eq!(refusal(&mut fourth)?, "ERROR full the server holds its maximum of 3 peers");

        // An SDK client takes `full` as a reason to back off and retry, not to stop.
        let (late, mut events) = Client::start(client_config(addr, "late").build()?);
        next_event(&mut events, patience(), refused_as_full).await?;
        next_event(&mut events, patience(), refused_as_full).await?;
        assert!(!late.is_finished());

        // A peer whose id is online may always take its place back: the count does not grow.
        let (_again, welcome) = RawPeer::hello(addr, "peer-0")?;
        assert!(welcome.starts_with("WELCOME "), "{welcome:?}");
        assert!(peers[0].line_skipping_pulses()?.starts_with("ERROR replaced "));
        assert_eq!(server.online().await.len(), 3);

        // One leaves: the waiting client gets in, and the list is full again.
        peers[1].send(b"BYE quit\n")?;
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        let mut ids: Vec<_> = server.online().await.into_iter().map(|p| p.id.as_str().to_owned()).collect();
        ids.sort();
        assert_eq!(ids, ["late", "peer-0", "peer-2"]);
        let (joined, ..) = next_in(
            &mut server_events,
            patience(),
            |e| matches!(e, ServerEvent::PeerOnline { peer, .. } if peer.id.as_str() == "late"),
        )
        .await?;
        assert!(matches!(joined, ServerEvent::PeerOnline { .. }));

        late.close().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn connections_per_address_are_limited_and_other_addresses_are_not_affected() -> anyhow::Result<()> {
    let _serial = serial();
    let here = Ipv4Addr::new(127, 0, 0, 1);
    let there = Ipv4Addr::new(127, 0, 0, 2);
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(INTERVAL).max_connections_per_ip(2)).await?;
        let addr = server.local_addr();

        // Two from one address: one still in its handshake, one online. Both count.
        let _quiet = RawPeer::connect_from(here, addr)?;
        let mut online = RawPeer::connect_from(here, addr)?;
        online.send(b"HELLO 1 online\n")?;
        assert!(online.line()?.starts_with("WELCOME "));

        // A third from the same address is refused before it says anything.
        let mut third = RawPeer::connect_from(here, addr)?;
        assert_eq!(refusal(&mut third)?, "ERROR full too many connections from 127.0.0.1 (limit 2)");

        // Another address is not affected.
        let mut elsewhere = RawPeer::connect_from(there, addr)?;
        elsewhere.send(b"HELLO 1 elsewhere\n")?;
        assert!(elsewhere.line()?.starts_with("WELCOME "));

        // When one closes, its address has room again.
        drop(online);
        next_in(
            &mut server_events,
            patience(),
            |e| matches!(e, ServerEvent::PeerOffline { peer, .. } if peer.id.as_str() == "online"),
        )
        .await?;
        // Its place is given back when its connection task ends, a moment after it left.
        let fourth = poll_until(patience(), || {
            let mut peer = RawPeer::connect_from(here, addr).ok()?;
            peer.send(b"HELLO 1 fourth\n").ok()?;
            peer.line().ok()?.starts_with("WELCOME ").then_some(peer)
        });
        assert!(fourth.is_some(), "no room for a new connection from 127.0.0.1 after one left");

        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn handshakes_in_flight_are_bounded_and_online_peers_are_undisturbed() -> anyhow::Result<()> {
    const BOUND: usize = 4;
    let _serial = serial();
    smol::block_on(async {
        let config = server_config(INTERVAL).max_handshakes(BOUND).handshake_timeout(Duration::from_secs(30));
        let (server, _events) = bind(config).await?;
        let addr = server.local_addr();
        let (online, mut online_events) = Client::start(client_config(addr, "online").build()?);
        next_event(&mut online_events, patience(), |e| matches!(e, Event::Connected { .. })).await?;

        // Peers that connect and say nothing fill the handshakes in flight...
        let mut silent = Vec::new();
        for _ in 0..BOUND {
            silent.push(RawPeer::connect(addr)?);
        }
        poll_until(patience(), || (server.handshakes_in_flight() == BOUND).then_some(()))
            .ok_or_else(|| anyhow::anyhow!("{} handshakes in flight", server.handshakes_in_flight()))?;

        // ... and the next connection is refused at once: long before the handshake timeout.
        let mut extra = RawPeer::connect(addr)?;
        extra.set_read_timeout(Duration::from_secs(5))?;
        assert_eq!(refusal(&mut extra)?, "ERROR full too many handshakes in flight (limit 4)");
        let (newcomer, mut events) = Client::start(client_config(addr, "newcomer").build()?);
        next_event(&mut events, patience(), refused_as_full).await?;
        assert_eq!(server.handshakes_in_flight(), BOUND);

        // One silent peer finally speaks: its place frees up, and the newcomer gets in.
        silent[0].send(b"HELLO 1 slowpoke\n")?;
        assert!(silent[0].line()?.starts_with("WELCOME "));
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        // The newcomer's place is given back just after its WELCOME went out.
        poll_until(patience(), || (server.handshakes_in_flight() == BOUND - 1).then_some(()))
            .ok_or_else(|| anyhow::anyhow!("{} handshakes in flight", server.handshakes_in_flight()))?;

        // The peer online all along saw nothing of it.
        while let Some(event) = online_events.try_next() {
            assert!(!matches!(event, Event::Missed { .. } | Event::Disconnected { .. }), "{event:?}");
        }
        drop(silent);
        newcomer.close().await;
        online.close().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn refusals_are_bounded_too_beyond_them_connections_are_closed_without_a_word() -> anyhow::Result<()> {
    const BOUND: usize = 2;
    let _serial = serial();
    smol::block_on(async {
        let config = server_config(INTERVAL).max_handshakes(BOUND).handshake_timeout(Duration::from_secs(30));
        let (server, _events) = bind(config).await?;
        let addr = server.local_addr();
        let mut silent = Vec::new();
        for _ in 0..BOUND {
            silent.push(RawPeer::connect(addr)?);
        }
        poll_until(patience(), || (server.handshakes_in_flight() == BOUND).then_some(()))
            .ok_or_else(|| anyhow::anyhow!("{} handshakes in flight", server.handshakes_in_flight()))?;
        // A burst, held open: each refusal waits for its peer to close (for a moment), so at
        // most BOUND of them are told; the others are closed at once.
        let mut burst = Vec::new();
        for _ in 0..20 {
            burst.push(RawPeer::connect(addr)?);
        }
        let (mut told, mut closed) = (0, 0);
        for peer in &mut burst {
            match peer.line() {
                Ok(line) => {
                    assert!(line.starts_with("ERROR full too many handshakes in flight"), "{line:?}");
                    told += 1;
                }
                Err(_) => closed += 1,
            }
            assert!(peer.closed_by_server());
        }
        eprintln!("a burst of 20 past the bound: {told} told `full`, {closed} closed without a word");
        assert!(told >= BOUND, "{told} told");
        assert_eq!(told + closed, 20);
        assert_eq!(server.handshakes_in_flight(), BOUND);
        drop(silent);
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
        anyhow::Ok(())
    })
}
