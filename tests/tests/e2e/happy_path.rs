use pulsewire::{Client, Event, State};
use pulsewire_tests::{next_event, DemoServer};

use crate::{client_config, patience, INTERVAL, INTERVAL_ARG, MAX_MISSED};

#[test]
fn client_connects_appears_online_pulses_flow_and_messages_go_both_ways() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &INTERVAL_ARG)?;
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(server.addr, "desk-1"));
        let (connected, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        let Event::Connected { interval, max_missed, .. } = connected else { unreachable!() };
        assert_eq!((interval, max_missed), (INTERVAL, MAX_MISSED), "the client adopts the server's cadence");

        // The server lists the peer.
        server.process.wait_event(patience(), "online", "desk-1")?;
        server.process.wait_for(patience(), |line| line.event() == "online_list")?;
        assert_eq!(server.last_online_list(), Some(vec!["desk-1".to_owned()]));

        // Pulses flow, numbered upwards, and the client answers them (it stays online).
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let (pulse, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
            let Event::Pulse { seq, .. } = pulse else { unreachable!() };
            seqs.push(seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "pulse numbers increase: {seqs:?}");
        assert!(matches!(client.state(), State::Online { .. }));

        // Client to server: the server reports the message and echoes it back.
        client.send("ping from desk-1").await?;
        server.process.wait_for(patience(), |l| l.event() == "message" && l.str("text") == "ping from desk-1")?;
        next_event(
            &mut events,
            patience(),
            |e| matches!(e, Event::Message { payload, .. } if payload == "ping from desk-1"),
        )
        .await?;

        // Server to client: a line typed into the server is broadcast.
        server.process.type_line("hello desks")?;
        next_event(
            &mut events,
            patience(),
            |e| matches!(e, Event::Message { payload, .. } if payload == "hello desks"),
        )
        .await?;

        // The client's own pulse measures the round trip.
        let rtt = client.probe().await?;
        eprintln!("probe round trip on loopback: {rtt:?}");
        assert!(rtt < patience());

        client.close().await;
        let gone = server.process.wait_event(patience(), "offline", "desk-1")?;
        assert_eq!(gone.str("reason"), "goodbye");
        Ok(())
    })
}

/// A burst of arrivals prints every `online` line, but the online list at most once per 100 ms
/// (each list is a snapshot of every peer), and the last list holds them all.
#[test]
fn a_burst_of_arrivals_prints_every_join_and_few_online_lists() -> anyhow::Result<()> {
    const PEERS: usize = 300;
    // Raw peers do not answer pulses: a long interval keeps them online however slowly this
    // machine connects them.
    let mut server = DemoServer::start("127.0.0.1:0", &["--interval", "60s"])?;
    let started = std::time::Instant::now();
    let peers: Vec<_> = (0..PEERS)
        .map(|n| pulsewire_tests::RawPeer::hello(server.addr, &format!("burst-{n}")))
        .collect::<anyhow::Result<_>>()?;
    server.process.wait_for(patience(), |line| {
        line.event() == "online_list" && line.json["peers"].as_array().is_some_and(|list| list.len() == PEERS)
    })?;
    let span = started.elapsed();
    let seen = &server.process.seen;
    let joins = seen.iter().filter(|line| line.event() == "online").count();
    let lists = seen.iter().filter(|line| line.event() == "online_list").count();
    assert_eq!(joins, PEERS, "every arrival has its own line");
    let most = (span.as_millis() / 100) as usize + 1;
    assert!(lists <= most, "{lists} online lists in {span:?}: at most one per 100 ms ({most})");
    drop(peers);
    Ok(())
}

/// A peer that sends frames right behind its `HELLO`, before `WELCOME` came back, gets them
/// answered after the `WELCOME`, every time (and its message is reported after it came online).
#[test]
fn frames_sent_with_hello_are_answered_after_welcome() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &["--interval", "60s"])?;
    for n in 0..20 {
        let id = format!("eager-{n}");
        let mut peer = pulsewire_tests::RawPeer::connect(server.addr)?;
        peer.send(format!("HELLO 1 {id}\nPULSE 7\n").as_bytes())?;
        let welcome = peer.line()?;
        assert!(welcome.starts_with("WELCOME "), "{welcome}");
        assert_eq!(peer.line_skipping_pulses()?, "ALIVE 7");

        // A message right behind the `HELLO` (the demo server echoes it: not read here).
        let id = format!("eager-data-{n}");
        let mut peer = pulsewire_tests::RawPeer::connect(server.addr)?;
        peer.send(format!("HELLO 1 {id}\nDATA 2\nhi").as_bytes())?;
        let online = server.process.wait_event(patience(), "online", &id)?;
        let message = server.process.wait_for(patience(), |l| l.event() == "message" && l.str("peer") == id)?;
        assert!(online.at <= message.at, "the message comes after the peer is online");
    }
    Ok(())
}
