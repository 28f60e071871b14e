use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pulsewire::{Client, CloseReason, DisconnectReason, Event, Server, ServerConfig, ServerEvent, State};
use pulsewire_tests::{next_event, within, DemoServer};

use crate::{client_config, patience, INTERVAL, INTERVAL_ARG};

#[test]
fn demo_server_says_bye_to_every_peer_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let mut server = DemoServer::start("127.0.0.1:0", &INTERVAL_ARG)?;
    smol::block_on(async {
        let (_client, mut events) = Client::start(client_config(server.addr, "desk-term"));
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;

        server.process.signal(Signal::SIGTERM)?;
        let asked = Instant::now();
        let (bye, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        assert_eq!(bye, Event::Disconnected { reason: DisconnectReason::ServerGoodbye { reason: "shutdown".into() } });
        let code = server.process.wait_exit(Duration::from_secs(5))?;
        eprintln!("demo-server exited {:?} after SIGTERM", asked.elapsed());
        assert_eq!(code, Some(0));
        assert!(asked.elapsed() < Duration::from_secs(2), "slow shutdown: {:?}", asked.elapsed());
        Ok(())
    })
}

#[test]
fn driver_runs_under_another_executor() -> anyhow::Result<()> {
    let config = ServerConfig::builder().listen("127.0.0.1:0".parse()?).interval(INTERVAL).build()?;
    let (server, _server_events) = smol::block_on(Server::bind(config))?;
    let (client, mut events, driver) = Client::new(client_config(server.local_addr(), "elsewhere"));
    // The driver runs on `futures`' own executor, on a thread of its own.
    let thread = std::thread::spawn(move || futures::executor::block_on(driver));
    smol::block_on(async {
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        client.close().await;
        let (closed, ..) = next_event(&mut events, patience(), |e| matches!(e, Event::Closed { .. })).await?;
        assert_eq!(closed, Event::Closed { reason: CloseReason::Application });
        server.shutdown().await;
        anyhow::Ok(())
    })?;
    thread.join().map_err(|_| anyhow::anyhow!("driver thread panicked"))?;
    Ok(())
}

#[test]
fn close_flushes_queued_messages_before_bye() -> anyhow::Result<()> {
    let config = ServerConfig::builder().listen("127.0.0.1:0".parse()?).interval(INTERVAL).build()?;
    smol::block_on(async {
        let (server, mut server_events) = Server::bind(config).await?;
        let (client, mut events) = Client::start(client_config(server.local_addr(), "flusher"));
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;
        for n in 0..100 {
            client.try_send(format!("message {n}"))?;
        }
        client.close().await;
        assert!(matches!(client.state(), State::Closed { reason: CloseReason::Application }));
        let mut received = Vec::new();
        let left = within(patience(), async {
            use futures::StreamExt;
            while let Some(event) = server_events.next().await {
                match event {
                    ServerEvent::Message { payload, .. } => received.push(payload),
                    ServerEvent::PeerOffline { reason, .. } => return Some(reason),
                    _ => {}
                }
            }
            None
        })
        .await;
        assert_eq!(left, Some(Some(pulsewire::OfflineReason::Goodbye { reason: "quit".into() })));
        let expected: Vec<_> = (0..100).map(|n| bytes_of(&format!("message {n}"))).collect();
        assert_eq!(received, expected, "every queued message arrives, in order, before the BYE");
        while let Some(event) = events.try_next() {
            assert!(!matches!(event, Event::Undelivered { .. }), "nothing undelivered on a graceful close");
        }
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
        anyhow::Ok(())
    })
}

fn bytes_of(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}
