//! A peer that stops reading is dropped, and never delays the pulses of the others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pulsewire::{Client, ClientConfig, Event, OfflineReason, Server, ServerConfig, ServerEvent};

#[test]
fn peer_that_stops_reading_is_dropped_as_stalled_while_others_keep_their_pulses() {
    smol::block_on(async {
        let config = ServerConfig::builder()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .interval(Duration::from_millis(100))
            .outbound_queue(8)
            .build()
            .expect("config");
        let (server, mut server_events) = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();

        let healthy_config = ClientConfig::builder(addr.to_string(), "healthy").build().expect("config");
        let (_healthy, mut events) = Client::start(healthy_config);
        // A raw peer that says HELLO and then never reads again, but keeps sending a small
        // message every 50 ms: it is alive, only not reading, so misses cannot evict it.
        let mut stalled = TcpStream::connect(addr).expect("connect");
        stalled.write_all(b"HELLO 1 stalled\n").expect("hello");
        let mut welcome = [0u8; 64];
        let _ = stalled.read(&mut welcome).expect("welcome");
        let mut keepalive = stalled.try_clone().expect("clone");
        let chatter = std::thread::spawn(move || {
            // Ends when the server closes the connection (the write fails).
            while keepalive.write_all(b"DATA 1\nx").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        let mut online = 0;
        while online < 2 {
            if let Some(ServerEvent::PeerOnline { .. }) = server_events.next().await {
                online += 1;
            }
        }

        // Big messages to everyone: the stalled peer's socket buffers fill, then its queue.
        let payload = bytes::Bytes::from(vec![b'x'; 256 * 1024]);
        let started = Instant::now();
        let reason = 'waiting: loop {
            server.broadcast(payload.clone()).await;
            while let Some(event) = server_events.try_next() {
                if let ServerEvent::PeerOffline { peer, reason, .. } = event {
                    assert_eq!(peer.id.as_str(), "stalled");
                    break 'waiting reason;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the stalled peer was never dropped");
            // Pace the broadcasts; the drop itself is observed through the events above.
            smol::Timer::after(Duration::from_millis(20)).await;
        };
        assert_eq!(reason, OfflineReason::Stalled);
        assert_eq!(server.online().await.len(), 1);

        // The healthy peer kept its pulses throughout.
        while let Some(event) = events.try_next() {
            assert!(!matches!(event, Event::Missed { .. } | Event::Disconnected { .. }), "healthy peer saw {event:?}");
        }
        server.shutdown().await;
        drop(stalled);
        chatter.join().expect("chatter thread");
    });
}
