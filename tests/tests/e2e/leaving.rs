use std::time::{Duration, Instant};

use pulsewire::protocol::ErrorCode;
use pulsewire::{Client, CloseReason, DisconnectReason, Event};
use pulsewire_tests::{next_event, DemoServer, RawPeer};

use crate::{client_config, patience};

/// A slow cadence: a peer evicted by missed pulses would take at least 4 s here, so anything
/// faster is the leave path under test.
const SLOW: [&str; 2] = ["--interval", "1s"];

#[test]
fn bye_removes_the_peer_at_once() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &SLOW)?;
    let (mut peer, _) = RawPeer::hello(server.addr, "leaver")?;
    server.process.wait_event(patience(), "online", "leaver")?;

    peer.send(b"BYE quit\n")?;
    let said = Instant::now();
    let gone = server.process.wait_event(patience(), "offline", "leaver")?;
    eprintln!("BYE to offline: {:?}", gone.at - said);
    assert_eq!(gone.str("reason"), "goodbye");
    assert!(gone.at - said < Duration::from_secs(1), "not at once: {:?}", gone.at - said);
    assert!(peer.closed_by_server());
    server.process.wait_for(patience(), |line| line.event() == "online_list")?;
    assert_eq!(server.last_online_list(), Some(vec![]));
    Ok(())
}

#[test]
fn duplicate_id_replaces_the_old_connection() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &SLOW)?;
    let (mut old, _) = RawPeer::hello(server.addr, "twin")?;
    server.process.wait_event(patience(), "online", "twin")?;
    let (_new, welcome) = RawPeer::hello(server.addr, "twin")?;
    let new_session = welcome.split(' ').nth(1).unwrap_or_default().to_owned();

    let told = old.line_skipping_pulses()?;
    assert!(told.starts_with("ERROR replaced "), "{told:?}");
    assert!(old.closed_by_server());

    let gone = server.process.wait_event(patience(), "offline", "twin")?;
    assert_eq!(gone.str("reason"), "replaced");
    let back = server.process.wait_event(patience(), "online", "twin")?;
    assert_eq!(back.str("session"), new_session);
    server.process.wait_for(patience(), |line| line.event() == "online_list")?;
    assert_eq!(server.last_online_list(), Some(vec!["twin".to_owned()]));
    Ok(())
}

#[test]
fn sdk_client_replaced_by_a_twin_stops_instead_of_fighting_back() -> anyhow::Result<()> {
    let server = DemoServer::start("127.0.0.1:0", &SLOW)?;
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(server.addr, "twin-sdk"));
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        let (_twin, _) = RawPeer::hello(server.addr, "twin-sdk")?;

        let (lost, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        assert!(
            matches!(
                &lost,
                Event::Disconnected { reason: DisconnectReason::ServerError { code: ErrorCode::Replaced, .. } }
            ),
            "{lost:?}"
        );
        let (closed, _, between) = next_event(&mut events, patience(), |e| matches!(e, Event::Closed { .. })).await?;
        assert!(matches!(closed, Event::Closed { reason: CloseReason::Rejected { code: ErrorCode::Replaced, .. } }));
        assert!(!between.iter().any(|e| matches!(e, Event::Connecting { .. })), "no reconnect: {between:?}");
        assert!(client.is_finished());
        Ok(())
    })
}
