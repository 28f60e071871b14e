//! Real network faults, in a network namespace of the test's own: `iptables` cuts the server's
//! port on the namespace's loopback in both directions, silently (`DROP`: no FIN, no RST, a
//! half-open connection that only the heartbeat can notice) or loudly (TCP resets).
//!
//! The server and the client run in this process, on a thread that entered the namespace (so
//! their sockets are there), which lets the test read both sides' events with their moments.
//! Without root or iptables these tests are built `#[ignore]`d (see `tests/build.rs`), so the
//! runner reports them as ignored; should one run anyway where the capability is missing, it
//! reports `SKIPPED` (and fails instead when `PULSEWIRE_REQUIRE_NETNS=1`, as in CI).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulsewire::{Client, ConnectError, DisconnectReason, Event, Failure, OfflineReason, ServerEvent, State};
use pulsewire_tests::netns::{Cut, Netns};
use pulsewire_tests::{missed_counts, next_event, next_in, open_fds, poll_until, skip};

use crate::{bind, client_config, patience, scale, serial, server_config};

/// Runs `test` on a thread inside a fresh namespace, under a local executor that the test can
/// spawn the client's driver on; or reports the test as skipped.
pub(crate) fn in_namespace<F>(
    name: &str,
    test: impl FnOnce(Arc<Netns>, Rc<smol::LocalExecutor<'static>>) -> F + Send + 'static,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let netns = match Netns::create() {
        Ok(netns) => Arc::new(netns),
        Err(why) => return skip(name, why),
    };
    let inside = netns.clone();
    netns.run(move || {
        let executor = Rc::new(smol::LocalExecutor::new());
        smol::block_on(executor.run(test(inside, executor.clone())))
    })?
}

/// Runs an `iptables` change off the executor thread (the client's driver runs on it).
pub(crate) async fn apply(netns: &Arc<Netns>, port: u16, cut: Cut, on: bool) -> anyhow::Result<()> {
    let netns = netns.clone();
    smol::unblock(move || if on { netns.cut(port, cut) } else { netns.restore(port, cut) }).await
}

fn is_connected(event: &Event) -> bool {
    matches!(event, Event::Connected { .. })
}

#[test]
#[cfg_attr(not(netns_capable), ignore = "needs root, iptables and ip (network namespaces)")]
fn half_open_link_is_detected_by_both_sides_within_the_protocol_windows_and_heals_without_a_loss() -> anyhow::Result<()>
{
    const INTERVAL: Duration = Duration::from_millis(100);
    const MAX_MISSED: u32 = 3;
    /// Scheduling slack on a loaded 2-core machine, on top of the protocol's windows.
    const MARGIN: Duration = Duration::from_millis(400);
    const IN_FLIGHT: usize = 20;
    let _serial = serial();
    in_namespace(
        "netns::half_open_link_is_detected_by_both_sides_within_the_protocol_windows_and_heals_without_a_loss",
        |netns, executor| async move {
            let (server, mut server_events) = bind(server_config(INTERVAL).max_missed(MAX_MISSED)).await?;
            let port = server.local_addr().port();
            let config = client_config(server.local_addr(), "half-open")
                .connect_timeout(Duration::from_millis(300))
                .max_delay(Duration::from_millis(100))
                .build()?;
            let (client, mut events, driver) = Client::new(config);
            executor.spawn(driver).detach();
            next_event(&mut events, patience(), is_connected).await?;
            for _ in 0..3 {
                next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
            }
            next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerOnline { .. })).await?;

            // Cut the link silently, both directions. The moment of the cut lies between the two
            // instants: the lower bounds are checked from the later, the upper ones from the earlier.
            let cutting = Instant::now();
            apply(&netns, port, Cut::Drop, true).await?;
            let cut = Instant::now();
            // Messages sent into the dead link are accepted (the client cannot know yet), written
            // into the socket, and never acknowledged: the session keeps them for its resume.
            let mut tickets = Vec::new();
            for n in 0..IN_FLIGHT {
                tickets.push(client.send(format!("into the void {n}")).await?);
            }
            let (session_before, _) = match client.state() {
                State::Online { session, misses } => (session, misses),
                other => anyhow::bail!("not online before the cut: {other:?}"),
            };

            let (client_side, server_side) = futures::join!(
                next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })),
                next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerDetached { .. })),
            );
            let (lost, lost_at, before) = client_side?;
            let (evicted, evicted_at, server_before) = server_side?;
            let client_took = lost_at - cutting;
            let server_took = evicted_at - cutting;
            eprintln!(
                "DROP both ways: client declared the loss after {client_took:?} (window {:?}..{:?} after the last \
             pulse), server evicted after {server_took:?} (window {:?}..{:?} after the last frame)",
                INTERVAL * MAX_MISSED,
                INTERVAL * (MAX_MISSED + 1),
                INTERVAL * (MAX_MISSED + 1),
                INTERVAL * (MAX_MISSED + 2),
            );

            // The client: by its miss counter, the misses counted up one by one.
            assert_eq!(lost, Event::Disconnected { reason: DisconnectReason::PulseTimeout { missed: MAX_MISSED } });
            let counts = missed_counts(&before);
            assert!(counts.ends_with(&[1, 2]), "missed events before the loss: {counts:?}");
            // The last pulse came at most one interval before the cut.
            assert!(lost_at - cut >= INTERVAL * (MAX_MISSED - 1), "declared too early: {client_took:?}");
            assert!(client_took <= INTERVAL * (MAX_MISSED + 1) + MARGIN, "declared too late: {client_took:?}");
            // Nothing written into the dead link is handed back: the session keeps it.
            assert!(
                !before.iter().any(|e| matches!(e, Event::Undelivered { .. } | Event::Delivered { .. })),
                "the messages in the cut link have no outcome yet: {before:?}"
            );

            // The server: by its pulse loop's miss counter; the session is kept, detached.
            let ServerEvent::PeerDetached { reason, .. } = &evicted else { unreachable!("matched above") };
            assert_eq!(reason, &OfflineReason::Timeout { misses: MAX_MISSED + 1 });
            assert!(evicted_at - cut >= INTERVAL * MAX_MISSED, "evicted too early: {server_took:?}");
            assert!(server_took <= INTERVAL * (MAX_MISSED + 2) + MARGIN, "evicted too late: {server_took:?}");
            assert!(
                !server_before.iter().any(|e| matches!(e, ServerEvent::Message { .. })),
                "nothing sent into the cut link reached the server: {server_before:?}"
            );
            assert!(server.online().await.is_empty());

            // While the rule stands, new connections cannot get through either.
            let timed_out = |e: &Event| {
                matches!(
                    e,
                    Event::BackingOff { last_error: Some(Failure::Connect(ConnectError::ConnectTimeout(_))), .. }
                )
            };
            next_event(&mut events, patience(), timed_out).await?;

            // Lift the rule: the client is back, once, in the same session, resumed.
            apply(&netns, port, Cut::Drop, false).await?;
            let lifted = Instant::now();
            let (back, back_at, _) = next_event(&mut events, patience(), is_connected).await?;
            eprintln!("online again {:?} after the rule was lifted", back_at - lifted);
            let (online, ..) =
                next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerOnline { .. })).await?;
            let (Event::Connected { session, resumed, .. }, ServerEvent::PeerOnline { peer, resumed: peer_resumed }) =
                (&back, &online)
            else {
                unreachable!("matched above")
            };
            assert!(*resumed && *peer_resumed, "the session resumed on both sides");
            assert_eq!((&peer.session, session), (&session_before, &session_before));

            // What was in the cut link arrives now, once each and in order, and is acknowledged.
            let mut received = Vec::new();
            while received.len() < IN_FLIGHT {
                let (message, ..) =
                    next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::Message { .. })).await?;
                if let ServerEvent::Message { payload, .. } = message {
                    received.push(payload);
                }
            }
            let expected: Vec<_> = (0..IN_FLIGHT).map(|n| bytes::Bytes::from(format!("into the void {n}"))).collect();
            assert_eq!(received, expected, "every message sent into the cut link arrives once, in order");
            let last = *tickets.last().expect("sent");
            next_event(&mut events, patience(), |e| matches!(e, Event::Delivered { up_to, .. } if *up_to == last))
                .await?;
            assert!(server_events.try_next().is_none_or(|e| !matches!(e, ServerEvent::Message { .. })), "no duplicate");
            let ids: Vec<_> = server.online().await.into_iter().map(|p| p.id.as_str().to_owned()).collect();
            assert_eq!(ids, vec!["half-open".to_owned()]);

            client.close().await;
            server.shutdown().await;
            assert_eq!((client.live_tasks(), server.live_tasks()), (0, 0));
            Ok(())
        },
    )
}

#[test]
#[cfg_attr(not(netns_capable), ignore = "needs root, iptables and ip (network namespaces)")]
fn flapping_link_leaks_no_descriptor_and_no_task_and_ends_online() -> anyhow::Result<()> {
    const INTERVAL: Duration = Duration::from_millis(40);
    const MAX_MISSED: u32 = 2;
    let cycles: usize = scale(20, 200);
    let _serial = serial();
    in_namespace(
        "netns::flapping_link_leaks_no_descriptor_and_no_task_and_ends_online",
        move |netns, executor| async move {
            let (server, mut server_events) = bind(server_config(INTERVAL).max_missed(MAX_MISSED)).await?;
            let port = server.local_addr().port();
            let config = client_config(server.local_addr(), "flapper")
                .connect_timeout(Duration::from_millis(200))
                .max_delay(Duration::from_millis(100))
                .build()?;
            let (client, mut events, driver) = Client::new(config);
            executor.spawn(driver).detach();
            next_event(&mut events, patience(), is_connected).await?;
            next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerOnline { .. })).await?;

            // Online, one peer: the state every cycle must come back to.
            let fds_before = open_fds();
            let tasks_before = (server.live_tasks(), client.live_tasks());
            assert_eq!(tasks_before, (2 + 1, 1 + 3), "server: accept loop, hub, one per connection; client: 4 tasks");

            let started = Instant::now();
            let mut detections = Vec::new();
            for cycle in 0..cycles {
                // Alternate silent cuts (found by the miss counters) and resets (found by the sockets).
                let cut = if cycle % 2 == 0 { Cut::Drop } else { Cut::Reset };
                apply(&netns, port, cut, true).await?;
                let cut_at = Instant::now();
                let (lost, gone) = futures::join!(
                    next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })),
                    next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerDetached { .. })),
                );
                let (_, lost_at, _) = lost.map_err(|e| e.context(format!("cycle {cycle} ({cut:?}): client")))?;
                gone.map_err(|e| e.context(format!("cycle {cycle} ({cut:?}): server")))?;
                detections.push(lost_at - cut_at);
                apply(&netns, port, cut, false).await?;
                let (back, online) = futures::join!(
                    next_event(&mut events, patience(), is_connected),
                    next_in(&mut server_events, patience(), |e| matches!(e, ServerEvent::PeerOnline { .. })),
                );
                back.map_err(|e| e.context(format!("cycle {cycle}: reconnect")))?;
                online.map_err(|e| e.context(format!("cycle {cycle}: server online")))?;
            }

            // Connections that just ended may still be closing (the server lingers 250 ms at most
            // for a peer to read its last frame): wait for the counts to settle, with a deadline.
            let settled = poll_until(patience(), || {
                let now = (open_fds(), (server.live_tasks(), client.live_tasks()));
                (now == (fds_before, tasks_before)).then_some(now)
            });
            let fds_after = open_fds();
            let tasks_after = (server.live_tasks(), client.live_tasks());
            eprintln!(
                "{cycles} flaps in {:?}: descriptors {fds_before} before, {fds_after} after; tasks (server, client) \
             {tasks_before:?} before, {tasks_after:?} after; client loss noticed after {}",
                started.elapsed(),
                pulsewire_tests::Spread::of(&detections).map(|s| s.to_string()).unwrap_or_default(),
            );
            assert!(
                settled.is_some(),
                "descriptors {fds_before} -> {fds_after}, tasks {tasks_before:?} -> {tasks_after:?}"
            );
            assert!(matches!(client.state(), State::Online { .. }), "{:?}", client.state());
            let ids: Vec<_> = server.online().await.into_iter().map(|p| p.id.as_str().to_owned()).collect();
            assert_eq!(ids, vec!["flapper".to_owned()]);

            client.close().await;
            server.shutdown().await;
            assert_eq!((client.live_tasks(), server.live_tasks()), (0, 0));
            Ok(())
        },
    )
}
