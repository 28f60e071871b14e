//! Nothing hangs, nothing is left behind: with a thousand peers connected, the server's
//! shutdown and the clients' `close()` finish within their bounds, and afterwards no task runs
//! and no socket is open (every timer belongs to a task, so none is left either).

use std::time::{Duration, Instant};

use futures::StreamExt;
use pulsewire::{ClientConfig, CloseReason, DisconnectReason, Event, OfflineReason, Server, ServerEvent, State};
use pulsewire_tests::crowd::Crowd;
use pulsewire_tests::{open_fds, poll_until, within};

use crate::{bind, client_config, patience, scale, serial, server_config};

/// The pulse interval: slow enough that a thousand peers are a light load.
const INTERVAL: Duration = Duration::from_millis(500);
/// Extra time allowed on top of a configured bound, for a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(1);

fn crowd_configs(server: &Server, n: usize) -> anyhow::Result<Vec<ClientConfig>> {
    (0..n)
        .map(|i| {
            Ok(client_config(server.local_addr(), &format!("peer-{i:04}"))
                .initial_delay(Duration::from_millis(250))
                .max_delay(Duration::from_secs(1))
                .connect_timeout(Duration::from_secs(5))
                .handshake_timeout(Duration::from_secs(5))
                .build()?)
        })
        .collect()
}

/// The process's descriptors once the runtimes are warm (they open their own once).
async fn warm_baseline() -> anyhow::Result<usize> {
    let (warm, _) = bind(server_config(INTERVAL)).await?;
    let crowd = Crowd::start(crowd_configs(&warm, 1)?);
    drop(crowd);
    warm.shutdown().await;
    Ok(open_fds())
}

/// Waits until every descriptor opened since `baseline` is closed.
fn assert_descriptors_back_to(baseline: usize) {
    let settled = poll_until(patience(), || (open_fds() == baseline).then_some(()));
    assert!(settled.is_some(), "{} descriptors open, {baseline} before", open_fds());
}

#[test]
fn server_shutdown_with_a_thousand_peers_finishes_within_its_grace_and_leaves_nothing_running() -> anyhow::Result<()> {
    let n: usize = scale(1000, 1000);
    let _serial = serial();
    smol::block_on(async {
        let baseline = warm_baseline().await?;
        let (server, mut server_events) = bind(server_config(INTERVAL)).await?;
        let grace = Duration::from_millis(500);
        let mut crowd = Crowd::start(crowd_configs(&server, n)?);
        let connecting = Instant::now();
        crowd.wait_each(patience(), &vec![0; n], |e| matches!(e, Event::Connected { .. }))?;
        eprintln!("{n} clients online after {:?}", connecting.elapsed());
        assert_eq!(server.online().await.len(), n);
        assert_eq!(server.live_tasks(), 2 + n, "accept loop, hub, and one task per peer");
        assert_eq!(crowd.live_tasks(), 4 * n, "per client: reconnector, responder, checker, writer");

        let mark = crowd.mark();
        let stopping = Instant::now();
        server.shutdown().await;
        let took = stopping.elapsed();
        eprintln!("server shutdown with {n} peers took {took:?} (grace {grace:?})");
        assert!(took <= grace + MARGIN, "shutdown took {took:?}");
        assert_eq!(server.live_tasks(), 0, "no server task outlives shutdown");

        // Every peer was told, and left the list as `Shutdown`.
        let bye = DisconnectReason::ServerGoodbye { reason: "shutdown".into() };
        crowd.wait_each(patience(), &mark, |e| e == &Event::Disconnected { reason: bye.clone() })?;
        let mut offline = 0;
        while let Some(event) = within(patience(), server_events.next()).await.flatten() {
            if let ServerEvent::PeerOffline { reason, .. } = event {
                assert_eq!(reason, OfflineReason::Shutdown);
                offline += 1;
            }
        }
        assert_eq!(offline, n, "every peer left the list");

        // The clients now back off (no server): closing them is quick too.
        let closed_in = crowd.close_all();
        eprintln!("{n} reconnecting clients closed in {closed_in:?}");
        assert!(closed_in <= Duration::from_secs(1) + MARGIN, "close took {closed_in:?}");
        assert_eq!(crowd.live_tasks(), 0, "no client task outlives close()");
        assert!(crowd.clients.iter().all(|c| c.state() == State::Closed { reason: CloseReason::Application }));
        drop(crowd);
        drop(server);
        assert_descriptors_back_to(baseline);
        anyhow::Ok(())
    })
}

#[test]
fn a_thousand_connected_clients_close_at_once_within_the_close_timeout_delivering_everything() -> anyhow::Result<()> {
    let n: usize = scale(1000, 1000);
    let _serial = serial();
    smol::block_on(async {
        let baseline = warm_baseline().await?;
        let (server, mut server_events) = bind(server_config(INTERVAL)).await?;
        let mut crowd = Crowd::start(crowd_configs(&server, n)?);
        crowd.wait_each(patience(), &vec![0; n], |e| matches!(e, Event::Connected { .. }))?;
        assert_eq!(server.online().await.len(), n);

        // Each has a last message queued when it closes: close() flushes it, waits for the
        // server to confirm it, says BYE, and ends every task.
        for (i, client) in crowd.clients.iter().enumerate() {
            client.try_send(format!("last words {i}"))?;
        }
        let closed_in = crowd.close_all();
        eprintln!("{n} connected clients closed at once in {closed_in:?}");
        assert!(closed_in <= Duration::from_secs(1) + MARGIN, "close took {closed_in:?}");
        assert_eq!(crowd.live_tasks(), 0, "no client task outlives close()");
        let closed = Event::Closed { reason: CloseReason::Application };
        crowd.wait_each(patience(), &vec![0; n], |e| e == &closed)?;
        for (i, log) in crowd.log.iter().enumerate() {
            assert!(
                !log.iter().any(|(e, _)| matches!(e, Event::Undelivered { .. })),
                "client {i} had a message handed back"
            );
        }

        // The server got every last message, then every goodbye.
        let (mut messages, mut goodbyes) = (0, 0);
        while goodbyes < n {
            let Some(Some(event)) = within(patience(), server_events.next()).await else {
                anyhow::bail!("{goodbyes} of {n} goodbyes, {messages} messages");
            };
            match event {
                ServerEvent::Message { .. } => messages += 1,
                ServerEvent::PeerOffline { peer, reason, .. } => {
                    assert_eq!(reason, OfflineReason::Goodbye { reason: "quit".into() }, "{}", peer.id);
                    goodbyes += 1;
                }
                _ => {}
            }
        }
        assert_eq!(messages, n);
        assert!(server.online().await.is_empty());
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
        drop(crowd);
        drop(server);
        assert_descriptors_back_to(baseline);
        anyhow::Ok(())
    })
}
