//! Nothing accepted is lost, nothing is duplicated: every message that `send` accepted ends in
//! exactly one outcome the client's application sees (`Delivered`, or `Undelivered` with
//! whether it may have arrived), whatever happens to the connection and the server; every
//! message it refused came back in the error.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use pulsewire::{Client, Event, SendError, ServerEvent, Ticket};
use pulsewire_tests::next_event;

use crate::{bind, client_config, patience, scale, serial, server_config};

fn message(n: usize) -> Bytes {
    Bytes::from(format!("message {n:06}"))
}

/// What each accepted message came to, from the client's events.
#[derive(Debug, Default)]
struct Outcomes {
    delivered: HashSet<Ticket>,
    /// The ticket of every message handed back, with whether it may have arrived.
    undelivered: HashMap<Ticket, bool>,
    /// The highest `Delivered` seen, and how many messages those events covered.
    delivered_count: usize,
}

impl Outcomes {
    /// Reads one event; `accepted` lists the tickets sent, in order.
    fn note(&mut self, event: &Event, accepted: &[Ticket]) {
        match event {
            Event::Delivered { up_to, count } => {
                // Cumulative: every ticket up to `up_to` without another outcome is delivered.
                let newly: Vec<Ticket> = accepted
                    .iter()
                    .filter(|t| *t <= up_to && !self.delivered.contains(t) && !self.undelivered.contains_key(t))
                    .copied()
                    .collect();
                assert_eq!(newly.len(), *count, "Delivered counts what it delivers");
                self.delivered.extend(newly);
                self.delivered_count += count;
            }
            Event::Undelivered { ticket, maybe_delivered, .. } => {
                assert!(!self.delivered.contains(ticket), "{ticket} delivered, then handed back");
                assert!(self.undelivered.insert(*ticket, *maybe_delivered).is_none(), "{ticket} handed back twice");
            }
            _ => {}
        }
    }

    fn settled(&self, accepted: &[Ticket]) -> bool {
        self.delivered.len() + self.undelivered.len() == accepted.len()
    }
}

#[test]
fn a_server_crash_mid_stream_gives_every_accepted_message_exactly_one_outcome_and_no_duplicate() -> anyhow::Result<()> {
    // Abort once this many reached the server: the client is streaming at full speed then.
    let delivered_before_crash: usize = scale(2_000, 20_000);
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(Duration::from_millis(100))).await?;
        let addr = server.local_addr();
        let config = client_config(addr, "streamer").outbox(256, 1 << 20).build()?;
        let (client, mut events) = Client::start(config);
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;

        // Send as fast as the outbox takes them (waiting for room while online), until the
        // outbox is full while the client is offline: that refusal hands the payload back.
        let sending = async {
            let mut accepted = Vec::new();
            loop {
                let payload = message(accepted.len());
                match client.send(payload.clone()).await {
                    Ok(ticket) => accepted.push((ticket, payload)),
                    Err(error) => {
                        assert!(matches!(error, SendError::Full(_)), "{error:?}");
                        assert_eq!(error.into_payload(), payload, "the refused message comes back in the error");
                        return accepted;
                    }
                }
            }
        };
        // Meanwhile, crash the server (every connection cut, nothing said) in mid-stream, and
        // take every message its application got.
        let crashing = async {
            let mut delivered = Vec::new();
            while let Some(event) = server_events.next().await {
                if let ServerEvent::Message { payload, .. } = event {
                    delivered.push(payload);
                    if delivered.len() == delivered_before_crash {
                        server.abort().await;
                    }
                }
            }
            delivered
        };
        let (accepted, before_crash) = futures::join!(sending, crashing);
        let tickets: Vec<Ticket> = accepted.iter().map(|(ticket, _)| *ticket).collect();

        // A new server on the same port: it knows nothing of the old session, so the client
        // starts a fresh one, hands back what may have arrived, and sends what never left.
        let (server, mut server_events) = bind(server_config(Duration::from_millis(100)).listen(addr)).await?;
        let mut outcomes = Outcomes::default();
        let mut after_crash = Vec::new();
        let settle = async {
            loop {
                futures::select! {
                    event = events.next().fuse() => {
                        let event = event.expect("the client runs");
                        outcomes.note(&event, &tickets);
                        if outcomes.settled(&tickets) {
                            break;
                        }
                    }
                    event = server_events.next().fuse() => {
                        if let Some(ServerEvent::Message { payload, .. }) = event {
                            after_crash.push(payload);
                        }
                    }
                }
            }
        };
        pulsewire_tests::within(patience(), settle).await.ok_or_else(|| anyhow::anyhow!("outcomes never settled"))?;

        // Both servers' applications together got each message at most once, in order.
        let payloads: Vec<Bytes> = accepted.iter().map(|(_, payload)| payload.clone()).collect();
        let d = before_crash.len();
        assert_eq!(before_crash[..], payloads[..d], "delivered in order, nothing the client did not send");
        let received: HashSet<&Bytes> = before_crash.iter().chain(&after_crash).collect();
        assert_eq!(received.len(), before_crash.len() + after_crash.len(), "no message reached a server twice");
        // Handed back: only messages that were written before the crash ("maybe delivered"),
        // never resent on their own; everything else the new session delivered.
        let maybe = outcomes.undelivered.values().filter(|maybe| **maybe).count();
        assert_eq!(maybe, outcomes.undelivered.len(), "what never left was sent, not handed back");
        for (ticket, payload) in &accepted {
            if outcomes.undelivered.contains_key(ticket) {
                assert!(!after_crash.contains(payload), "{ticket} was handed back and also resent");
            }
        }
        eprintln!(
            "server crash in mid-stream: {} accepted, {d} delivered before the crash, {} after it in a fresh session, \
             {} handed back as maybe delivered ({} of them had arrived), 0 lost, 0 duplicated",
            accepted.len(),
            after_crash.len(),
            outcomes.undelivered.len(),
            outcomes
                .undelivered
                .keys()
                .filter(|t| accepted.iter().any(|(ticket, p)| ticket == *t && before_crash.contains(p)))
                .count(),
        );
        assert!(outcomes.settled(&tickets));
        assert!(!after_crash.is_empty() || !outcomes.undelivered.is_empty(), "messages were in flight at the crash");

        client.close().await;
        server.shutdown().await;
        assert_eq!(client.live_tasks(), 0);
        anyhow::Ok(())
    })
}

#[test]
fn messages_written_but_never_read_by_the_server_are_handed_back_as_maybe_delivered() -> anyhow::Result<()> {
    const SENT: usize = 50;
    let _serial = serial();
    // A server that completes the handshake and pulses, then never reads another byte, and
    // dies once everything the client sent sits unread in its socket: the client's writes all
    // succeeded, and none of it was delivered or acknowledged.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let data_bytes: usize =
        (0..SENT).map(|n| format!("DATA {} {}\n", message(n).len(), n + 1).len() + message(n).len()).sum();
    let deaf = std::thread::spawn(move || -> anyhow::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut hello = String::new();
        let mut reader = BufReader::new(stream.try_clone()?);
        reader.read_line(&mut hello)?;
        stream.write_all(b"WELCOME deaf 100 3 resumed=0 rx=0 resume=s3cret keep=0\nPULSE 1\n")?;
        // Look without taking: the bytes stay unread in the socket.
        let unread = pulsewire_tests::poll_until(Duration::from_secs(15), || {
            let mut buf = vec![0u8; 1 << 16];
            let n = stream.peek(&mut buf).ok()?;
            (n >= "ALIVE 1\n".len() + data_bytes).then_some(n)
        });
        // Dropped with unread input: the client's side is reset.
        unread.ok_or_else(|| anyhow::anyhow!("the client never wrote its {data_bytes} bytes of messages"))
    });
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(addr, "talker").max_attempts(1).build()?);
        next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        let mut tickets = Vec::new();
        for n in 0..SENT {
            tickets.push(client.try_send(message(n))?);
        }
        // The connection breaks, the one reconnect finds nobody: the client gives up, and every
        // message comes back, in order, as maybe delivered (it was written).
        let (_, _, before) = next_event(&mut events, patience(), |e| matches!(e, Event::Closed { .. })).await?;
        let undelivered: Vec<(Ticket, Bytes, bool)> = before
            .into_iter()
            .filter_map(|e| match e {
                Event::Undelivered { ticket, payload, maybe_delivered } => Some((ticket, payload, maybe_delivered)),
                _ => None,
            })
            .collect();
        let expected: Vec<(Ticket, Bytes, bool)> =
            tickets.iter().enumerate().map(|(n, ticket)| (*ticket, message(n), true)).collect();
        assert_eq!(undelivered, expected, "every message the server never read comes back, in order");
        client.close().await;
        anyhow::Ok(())
    })?;
    let unread = deaf.join().map_err(|_| anyhow::anyhow!("deaf server panicked"))??;
    eprintln!("{SENT} messages ({unread} bytes) written into a socket never read: all {SENT} handed back");
    Ok(())
}
