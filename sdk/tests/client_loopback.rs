//! The client and the server engine over real loopback sockets: the contract of `send`,
//! `probe`, giving up, and the server's own sending.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use futures::StreamExt;
use pulsewire::{
    Client, ClientConfig, CloseReason, Event, Events, ProbeError, SendError, Server, ServerConfig, ServerEvent,
    ServerSendError, State,
};

const PATIENCE: Duration = Duration::from_secs(10);

/// A port with nothing listening on it.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

async fn wait_for(events: &mut Events, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let found = smol::future::or(
        async {
            while let Some(event) = events.next().await {
                if pred(&event) {
                    return Some(event);
                }
            }
            None
        },
        async {
            smol::Timer::after(PATIENCE).await;
            None
        },
    )
    .await;
    found.expect("the expected event within the deadline")
}

async fn server() -> (Server, pulsewire::ServerEvents) {
    let config = ServerConfig::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .interval(Duration::from_millis(50))
        .build()
        .expect("config");
    Server::bind(config).await.expect("bind")
}

fn quick(addr: &str, id: &str) -> pulsewire::ClientConfigBuilder {
    ClientConfig::builder(addr, id).initial_delay(Duration::from_millis(10)).max_delay(Duration::from_millis(50))
}

#[test]
fn messages_sent_offline_wait_in_the_outbox_and_come_back_when_the_client_closes() {
    smol::block_on(async {
        let (client, mut events) = Client::start(quick(&closed_port(), "lonely").build().expect("config"));
        let a = client.try_send("a").expect("accepted offline");
        let b = client.send("b").await.expect("accepted offline");
        assert!(a < b);
        assert_eq!(client.outbox().queued, 2);
        let volatile = pulsewire::SendOptions::new().volatile();
        assert_eq!(client.try_send_with("v", volatile), Err(SendError::Offline("v".into())));
        assert_eq!(client.probe().await, Err(ProbeError::Offline));
        client.close().await;
        assert_eq!(client.try_send("c"), Err(SendError::Closed("c".into())));
        let mut back = Vec::new();
        wait_for(&mut events, |e| {
            if let Event::Undelivered { ticket, payload, maybe_delivered } = e {
                back.push((*ticket, payload.clone(), *maybe_delivered));
            }
            matches!(e, Event::Closed { .. })
        })
        .await;
        assert_eq!(back, vec![(a, "a".into(), false), (b, "b".into(), false)], "never sent, handed back in order");
    });
}

#[test]
fn oversized_message_is_refused_with_its_payload() {
    smol::block_on(async {
        let config = quick(&closed_port(), "big").max_payload(8).build().expect("config");
        let (client, _events) = Client::start(config);
        let error = client.try_send("123456789").expect_err("too large");
        assert!(matches!(&error, SendError::TooLarge { max: 8, .. }), "{error:?}");
        assert_eq!(error.into_payload(), "123456789");
        client.close().await;
    });
}

#[test]
fn client_gives_up_after_max_attempts_with_growing_delays() {
    smol::block_on(async {
        let config = quick(&closed_port(), "quitter").jitter(0.0).max_attempts(4).build().expect("config");
        let (client, mut events) = Client::start(config);
        let mut delays = Vec::new();
        let closed = wait_for(&mut events, |event| {
            if let Event::BackingOff { delay, .. } = event {
                delays.push(*delay);
            }
            matches!(event, Event::Closed { .. })
        })
        .await;
        assert!(matches!(closed, Event::Closed { reason: CloseReason::GaveUp { attempts: 4, .. } }), "{closed:?}");
        // The first attempt is immediate, then 10 ms, 20 ms, 40 ms (no jitter), capped at 50 ms.
        let ms = Duration::from_millis;
        assert_eq!(delays, vec![ms(10), ms(20), ms(40)]);
        assert!(client.is_finished());
        assert!(matches!(client.state(), State::Closed { reason: CloseReason::GaveUp { .. } }));
    });
}

#[test]
fn probe_measures_a_round_trip_and_server_sends_to_one_peer_or_all() {
    smol::block_on(async {
        let (server, mut server_events) = server().await;
        let addr = server.local_addr().to_string();
        let (a, mut a_events) = Client::start(quick(&addr, "a").build().expect("config"));
        let (b, mut b_events) = Client::start(quick(&addr, "b").build().expect("config"));
        wait_for(&mut a_events, |e| matches!(e, Event::Connected { .. })).await;
        wait_for(&mut b_events, |e| matches!(e, Event::Connected { .. })).await;

        let rtt = a.probe().await.expect("probe answered");
        assert!(rtt < PATIENCE);

        let peer_a = pulsewire::protocol::ClientId::new("a").expect("id");
        server.send(&peer_a, "just for a").await.expect("queued");
        assert_eq!(
            wait_for(&mut a_events, |e| matches!(e, Event::Message { .. })).await,
            Event::Message { seq: 1, payload: "just for a".into() }
        );
        assert_eq!(server.broadcast("for all").await, 2);
        let message = |seq| Event::Message { seq, payload: "for all".into() };
        assert_eq!(wait_for(&mut a_events, |e| matches!(e, Event::Message { .. })).await, message(2));
        assert_eq!(wait_for(&mut b_events, |e| matches!(e, Event::Message { .. })).await, message(1));

        let nobody = pulsewire::protocol::ClientId::new("nobody").expect("id");
        assert_eq!(server.send(&nobody, "x").await, Err(ServerSendError::NotOnline("x".into())));

        let online = server.online().await;
        assert_eq!(online.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        a.close().await;
        b.close().await;
        let mut offline = 0;
        while offline < 2 {
            if let Some(ServerEvent::PeerOffline { .. }) = server_events.next().await {
                offline += 1;
            }
        }
        server.shutdown().await;
        assert_eq!(server.online().await, vec![]);
        assert_eq!(server.send(&peer_a, "late").await, Err(ServerSendError::Stopped("late".into())));
    });
}

#[test]
fn every_message_accepted_comes_back_as_undelivered_when_the_client_gives_up() {
    // A server that welcomes the client, never reads, then drops the connection and is gone.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut hello = [0u8; 64];
        let _ = socket.read(&mut hello).expect("hello");
        socket.write_all(b"WELCOME s1 60000 3 resumed=0 rx=0 resume=abc keep=0\n").expect("welcome");
        dropped_rx.recv().expect("told to drop");
        drop(socket);
    });
    smol::block_on(async {
        let config =
            quick(&addr, "stuck").max_payload(64 * 1024).outbox(512, 32 << 20).max_attempts(1).build().expect("config");
        let (client, mut events) = Client::start(config);
        wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await;
        // Far more than the socket buffers hold: the writer blocks, the outbox fills.
        let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let mut accepted = 0;
        while client.try_send(payload.clone()).is_ok() {
            accepted += 1;
        }
        assert!(accepted > 0);
        dropped_tx.send(()).expect("server thread alive");
        let (mut undelivered, mut maybe) = (0, 0);
        let closed = wait_for(&mut events, |e| {
            if let Event::Undelivered { payload: p, maybe_delivered, .. } = e {
                assert_eq!(*p, payload);
                undelivered += 1;
                maybe += usize::from(*maybe_delivered);
            }
            assert!(!matches!(e, Event::Delivered { .. }), "nothing was acknowledged");
            matches!(e, Event::Closed { .. })
        })
        .await;
        assert!(matches!(closed, Event::Closed { .. }));
        assert_eq!(undelivered, accepted, "every accepted message has its one outcome");
        assert!(maybe > 0 && maybe <= accepted, "{maybe} of {accepted} were written");
    });
    server.join().expect("server thread");
}

#[test]
fn aborted_server_is_noticed_from_the_socket_without_a_goodbye() {
    smol::block_on(async {
        let (server, _server_events) = server().await;
        let (_client, mut events) =
            Client::start(quick(&server.local_addr().to_string(), "crash").build().expect("config"));
        wait_for(&mut events, |e| matches!(e, Event::Pulse { .. })).await;
        server.abort().await;
        assert_eq!(server.live_tasks(), 0);
        let lost = wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
        assert!(
            matches!(
                lost,
                Event::Disconnected { reason: pulsewire::DisconnectReason::Eof | pulsewire::DisconnectReason::Reset }
            ),
            "{lost:?}"
        );
    });
}

#[test]
fn silent_server_is_reported_missed_then_lost_inside_the_protocol_window() {
    // A server that welcomes the client (50 ms interval, 3 misses), pulses five times, then
    // falls silent with the connection open.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let interval = Duration::from_millis(50);
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut hello = [0u8; 64];
        let _ = socket.read(&mut hello).expect("hello");
        socket.write_all(b"WELCOME s1 50 3 resumed=0 rx=0 resume=abc keep=0\n").expect("welcome");
        for seq in 1..=5 {
            std::thread::sleep(interval);
            socket.write_all(format!("PULSE {seq}\n").as_bytes()).expect("pulse");
        }
        // Read until the client gives up: its answers, then its `ERROR timeout`.
        let mut heard = Vec::new();
        let _ = socket.read_to_end(&mut heard);
        String::from_utf8_lossy(&heard).into_owned()
    });
    smol::block_on(async {
        let config = quick(&addr, "patient").max_attempts(1).build().expect("config");
        let (_client, mut events) = Client::start(config);
        wait_for(&mut events, |e| matches!(e, Event::Pulse { seq: 5, .. })).await;
        let last_pulse = std::time::Instant::now();
        let mut missed = Vec::new();
        let lost = wait_for(&mut events, |e| {
            if let Event::Missed { count, max } = e {
                missed.push((*count, *max, last_pulse.elapsed()));
            }
            matches!(e, Event::Disconnected { .. })
        })
        .await;
        let window = last_pulse.elapsed();
        assert_eq!(lost, Event::Disconnected { reason: pulsewire::DisconnectReason::PulseTimeout { missed: 3 } });
        assert_eq!(missed.iter().map(|&(count, max, _)| (count, max)).collect::<Vec<_>>(), [(1, 3), (2, 3)]);
        // Missed 1 at the second tick after the last pulse, one interval after the first.
        let first = missed[0].2;
        assert!(first > interval - Duration::from_millis(10) && first < interval * 3, "missed 1 after {first:?}");
        // Lost between 3 and 4 intervals after the last pulse (a little slack for scheduling).
        assert!(window > interval * 3 - Duration::from_millis(10) && window < interval * 5, "lost after {window:?}");
    });
    let heard = server.join().expect("server thread");
    assert!(heard.contains("ALIVE 5\n"), "every pulse was answered: {heard:?}");
    assert!(heard.contains("ERROR timeout"), "the client said why it left: {heard:?}");
}
