//! A half-open link that lasts longer than the server keeps a session, in a network namespace
//! of the test's own (see `netns.rs`, whose shorter case resumes): the server evicts the peer,
//! keeps its session for `keep`, then ends it and hands its messages back; once the link is
//! back the client gets a fresh session and hands back what it had written into the dead link.
//! Every message on both sides ends in exactly one outcome, checked by the ledgers of
//! `delivery.rs`.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use pulsewire::{Client, DisconnectReason, OfflineReason, ServerSendError};
use pulsewire_tests::netns::Cut;

use crate::delivery::{numbered, read_until, server_send, Ledgers, Outcome};
use crate::netns::{apply, in_namespace};
use crate::{bind, client_config, patience, serial, server_config};

#[test]
#[cfg_attr(not(netns_capable), ignore = "needs root, iptables and ip (network namespaces)")]
fn a_half_open_link_longer_than_the_keep_ends_the_session_and_every_message_on_both_sides_ends_in_one_outcome(
) -> anyhow::Result<()> {
    const INTERVAL: Duration = Duration::from_millis(100);
    const MAX_MISSED: u32 = 3;
    const KEEP: Duration = Duration::from_secs(1);
    /// Scheduling slack on a loaded 2-core machine.
    const MARGIN: Duration = Duration::from_millis(500);
    /// How much later than the hub made it an event may be read.
    const READ_JITTER: Duration = Duration::from_millis(50);
    /// Messages each way: before the cut, written into the cut link, queued while detached or
    /// offline, and (from the server) in the fresh session.
    const HEALTHY: u64 = 20;
    const INTO_THE_VOID: u64 = 20;
    const WHILE_AWAY: u64 = 10;
    const FRESH: u64 = 5;
    let _serial = serial();
    in_namespace(
        "netns_keep::a_half_open_link_longer_than_the_keep_ends_the_session_and_every_message_on_both_sides_ends_in_one_outcome",
        |netns, executor| async move {
            let (server, mut server_events) = bind(server_config(INTERVAL).max_missed(MAX_MISSED).keep(KEEP)).await?;
            let port = server.local_addr().port();
            let config = client_config(server.local_addr(), "far")
                .connect_timeout(Duration::from_millis(300))
                .max_delay(Duration::from_millis(100))
                .build()?;
            let (client, mut events, driver) = Client::new(config);
            executor.spawn(driver).detach();
            let ledgers = RefCell::new(Ledgers::default());
            let send_both = |range: std::ops::RangeInclusive<u64>| {
                let (client, server, ledgers) = (&client, &server, &ledgers);
                async move {
                    for n in range {
                        let ticket = client.send(numbered('c', n)).await?;
                        ledgers.borrow_mut().client.accepted(ticket.get(), n);
                        server_send(server, ledgers, "far", n, numbered('s', n)).await?;
                    }
                    anyhow::Ok(())
                }
            };

            // A healthy stream both ways, all delivered.
            read_until(&mut events, &mut server_events, &ledgers, patience(), "online", |l| !l.client.connected.is_empty() && !l.server.peer("far").online.is_empty())
                .await?;
            send_both(1..=HEALTHY).await?;
            read_until(
                &mut events,
                &mut server_events,
                &ledgers,
                patience(),
                "the healthy stream delivered",
                |l| {
                    l.client.settled()
                        && l.server.settled()
                        && l.client.inbox.len() as u64 == HEALTHY
                        && l.server.peer("far").inbox.len() as u64 == HEALTHY
                },
            )
            .await?;

            // Cut silently; both sides write into the dead link, unaware.
            let cutting = Instant::now();
            apply(&netns, port, Cut::Drop, true).await?;
            send_both(HEALTHY + 1..=HEALTHY + INTO_THE_VOID).await?;
            read_until(
                &mut events,
                &mut server_events,
                &ledgers,
                patience(),
                "the loss, on both sides",
                |l| !l.client.disconnected.is_empty() && !l.server.peer("far").detached.is_empty(),
            )
            .await?;
            // Now each side knows: the client queues offline, the server in the kept session.
            send_both(HEALTHY + INTO_THE_VOID + 1..=HEALTHY + INTO_THE_VOID + WHILE_AWAY).await?;
            read_until(&mut events, &mut server_events, &ledgers, patience(), "the session's end", |l| !l.server.peer("far").offline.is_empty()).await?;
            let id = pulsewire::protocol::ClientId::new("far").expect("a valid id");
            let refused = server.send(&id, numbered('s', 999)).await;
            assert_eq!(refused, Err(ServerSendError::NotOnline(numbered('s', 999))), "no session is kept any more");

            // The link is back: a fresh session; the client hands back what it wrote into the
            // void and sends what it queued; the server sends anew.
            apply(&netns, port, Cut::Drop, false).await?;
            let lifted = Instant::now();
            read_until(&mut events, &mut server_events, &ledgers, patience(), "a fresh session", |l| l.client.connected.len() == 2 && l.server.peer("far").online.len() == 2)
                .await?;
            let back = lifted.elapsed();
            let first_fresh = HEALTHY + INTO_THE_VOID + WHILE_AWAY + 1;
            for n in first_fresh..first_fresh + FRESH {
                server_send(&server, &ledgers, "far", n, numbered('s', n)).await?;
            }
            read_until(
                &mut events,
                &mut server_events,
                &ledgers,
                patience(),
                "everything settled",
                move |l| {
                    l.client.settled()
                        && l.server.settled()
                        && l.client.inbox.len() as u64 == HEALTHY + FRESH
                        && l.server.peer("far").inbox.len() as u64 == HEALTHY + WHILE_AWAY
                },
            )
            .await?;

            let mut ledgers = ledgers.into_inner();
            let (client_tally, server_tally) = (ledgers.client.tally(), ledgers.server.tally());
            let (lost, lost_at) = ledgers.client.disconnected[0].clone();
            let far = ledgers.server.peer("far");
            let (detach_reason, detached_at) = far.detached[0].clone();
            let (_, ended_at, undelivered) = far.offline[0].clone();
            let kept_for = ended_at - detached_at;
            eprintln!(
                "DROP for longer than keep ({KEEP:?}): the client lost the link after {:?}, the server evicted after {:?} \
                 and ended the session {kept_for:?} later with {} undelivered; online again {back:?} after the rule was \
                 lifted, fresh session on both sides; client {client_tally}; server {server_tally}",
                lost_at - cutting,
                detached_at - cutting,
                undelivered.len(),
            );
            assert_eq!(lost, DisconnectReason::PulseTimeout { missed: MAX_MISSED });
            assert_eq!(detach_reason, OfflineReason::Timeout { misses: MAX_MISSED + 1 });
            assert!(detached_at - cutting <= INTERVAL * (MAX_MISSED + 2) + MARGIN, "evicted late");
            // The moments are those at which the test read the two events, each a little
            // after the hub made it: hence the tolerance below the keep.
            assert!(kept_for + READ_JITTER >= KEEP, "the session ended early: {kept_for:?}");
            assert!(kept_for <= KEEP + INTERVAL + MARGIN, "the session ended late: {kept_for:?}");
            let fresh: Vec<bool> = far.online.iter().map(|(resumed, _)| *resumed).collect();
            assert_eq!(fresh, [false, false], "the server opened a fresh session");
            let connected: Vec<bool> = ledgers.client.connected.iter().map(|(resumed, _)| *resumed).collect();
            assert_eq!(connected, [false, false], "the client was told so");

            // The server: what it wrote into the void is maybe delivered, what it queued while
            // detached never left; both came back when the session ended.
            let void: Vec<u64> = (HEALTHY + 1..=HEALTHY + INTO_THE_VOID).collect();
            let away: Vec<u64> = (HEALTHY + INTO_THE_VOID + 1..=HEALTHY + INTO_THE_VOID + WHILE_AWAY).collect();
            let shown: Vec<(u64, bool)> = undelivered.iter().map(|u| (u.seq, u.maybe_delivered)).collect();
            let expected: Vec<(u64, bool)> = void.iter().map(|n| (*n, true)).chain(away.iter().map(|n| (*n, false))).collect();
            assert_eq!(shown, expected, "the kept session's messages, in order");
            assert_eq!(far.numbers_where(|o| o == Some(Outcome::Undelivered { maybe_delivered: true })), void);
            assert_eq!(far.numbers_where(|o| o == Some(Outcome::Undelivered { maybe_delivered: false })), away);
            // The server's inbox: the healthy stream, then in the fresh session what the client
            // had queued offline; nothing written into the void.
            assert_eq!(far.inbox.numbers_in(1), (1..=HEALTHY).collect::<Vec<_>>());
            assert_eq!(far.inbox.numbers_in(2), away);
            // The client: the same, the other way round.
            let near = &ledgers.client;
            assert_eq!(near.numbers_where(|o| o == Some(Outcome::Undelivered { maybe_delivered: true })), void);
            assert_eq!(near.numbers_where(|o| o == Some(Outcome::Delivered { session: 2 })), away);
            assert_eq!(near.inbox.numbers_in(1), (1..=HEALTHY).collect::<Vec<_>>());
            assert_eq!(near.inbox.numbers_in(2), (first_fresh..first_fresh + FRESH).collect::<Vec<_>>());
            assert_eq!(client_tally.pending + server_tally.pending, 0);

            client.close().await;
            server.shutdown().await;
            assert_eq!((client.live_tasks(), server.live_tasks()), (0, 0));
            Ok(())
        },
    )
}
