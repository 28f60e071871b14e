//! Nothing accepted is lost: every message that `send` accepted is either delivered to the
//! server's application or handed back to the client's (`Event::Undelivered`), whatever happens
//! to the connection; every message it refused came back in the error.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pulsewire::{Client, DisconnectReason, Event, SendError, ServerEvent};
use pulsewire_tests::next_event;

use crate::{bind, client_config, patience, scale, serial, server_config};

fn message(n: usize) -> Bytes {
    Bytes::from(format!("message {n:06}"))
}

#[test]
fn every_accepted_message_is_delivered_or_handed_back_across_a_server_crash_with_messages_in_flight(
) -> anyhow::Result<()> {
    // Abort once this many reached the server: the client is streaming at full speed then.
    let delivered_before_crash: usize = scale(2_000, 20_000);
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(Duration::from_millis(100))).await?;
        let config = client_config(server.local_addr(), "streamer").send_queue(64).build()?;
        let (client, mut events) = Client::start(config);
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;

        // Send as fast as the queue takes them, until the client finds itself offline.
        let sending = async {
            let mut accepted = Vec::new();
            loop {
                let payload = message(accepted.len());
                match client.send(payload.clone()).await {
                    Ok(()) => accepted.push(payload),
                    Err(error) => {
                        let refused = error.clone().into_payload();
                        assert!(matches!(error, SendError::Offline(_)), "{error:?}");
                        assert_eq!(refused, payload, "the refused message comes back in the error");
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
        let (accepted, delivered) = futures::join!(sending, crashing);

        let (lost, _, before) =
            next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        assert!(matches!(lost, Event::Disconnected { reason: DisconnectReason::Eof | DisconnectReason::Reset }));
        let undelivered: Vec<Bytes> =
            before.into_iter().filter_map(|e| if let Event::Undelivered(p) = e { Some(p) } else { None }).collect();

        // Delivered: a prefix of what was accepted, in order, each once. Handed back: a suffix.
        // Together they cover everything accepted, with no gap; where they overlap, messages
        // reached the server but their confirmation was cut off (at least once, never zero).
        let d = delivered.len();
        let u = undelivered.len();
        assert_eq!(delivered[..], accepted[..d], "delivered in order, nothing the client did not send");
        assert_eq!(undelivered[..], accepted[accepted.len() - u..], "handed back in order: the last ones sent");
        let overlap = (d + u).saturating_sub(accepted.len());
        eprintln!(
            "server crash in mid-stream: {} accepted, {d} delivered, {u} handed back ({overlap} of them delivered but \
             unconfirmed), {} lost",
            accepted.len(),
            accepted.len() - (d + u - overlap)
        );
        assert!(
            d + u >= accepted.len(),
            "{} accepted messages were neither delivered nor handed back",
            accepted.len() - d - u
        );
        assert!(u > 0, "messages were in flight at the crash");

        client.close().await;
        assert_eq!(client.live_tasks(), 0);
        anyhow::Ok(())
    })
}

#[test]
fn messages_written_but_never_read_by_the_server_are_handed_back() -> anyhow::Result<()> {
    const SENT: usize = 50;
    let _serial = serial();
    // A server that completes the handshake and pulses, then never reads another byte, and
    // dies once everything the client sent sits unread in its socket: the client's writes all
    // succeeded, and none of it was delivered.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let data_bytes: usize = (0..SENT).map(|n| format!("DATA {}\n", message(n).len()).len() + message(n).len()).sum();
    let deaf = std::thread::spawn(move || -> anyhow::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut hello = String::new();
        let mut reader = BufReader::new(stream.try_clone()?);
        reader.read_line(&mut hello)?;
        stream.write_all(b"WELCOME deaf 100 3\nPULSE 1\n")?;
        // Look without taking: the bytes stay unread in the socket.
        let unread = pulsewire_tests::poll_until(Duration::from_secs(15), || {
            let mut buf = vec![0u8; 1 << 16];
            let n = stream.peek(&mut buf).ok()?;
            (n >= data_bytes).then_some(n)
        });
        // Dropped with unread input: the client's side is reset.
        unread.ok_or_else(|| anyhow::anyhow!("the client never wrote its {data_bytes} bytes of messages"))
    });
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(addr, "talker").max_attempts(1).build()?);
        next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        for n in 0..SENT {
            client.try_send(message(n))?;
        }
        let (_, _, before) = next_event(&mut events, patience(), |e| matches!(e, Event::Disconnected { .. })).await?;
        let undelivered: Vec<Bytes> =
            before.into_iter().filter_map(|e| if let Event::Undelivered(p) = e { Some(p) } else { None }).collect();
        let expected: Vec<Bytes> = (0..SENT).map(message).collect();
        assert_eq!(undelivered, expected, "every message the server never read comes back, in order");
        client.close().await;
        anyhow::Ok(())
    })?;
    let unread = deaf.join().map_err(|_| anyhow::anyhow!("deaf server panicked"))??;
    eprintln!("{SENT} messages ({unread} bytes) written into a socket never read: all {SENT} handed back");
    Ok(())
}
