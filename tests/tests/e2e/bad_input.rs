use pulsewire::{Client, Event, State};
use pulsewire_tests::{next_event, DemoServer, RawPeer};

use crate::{client_config, patience};

/// Sends `input` on a fresh connection (after a handshake when `hello` is set) and returns the
/// server's first line that is not a pulse, checking that the server then closes.
fn answer_to(server: &DemoServer, hello: bool, input: &[u8]) -> anyhow::Result<String> {
    let mut peer = if hello { RawPeer::hello(server.addr, "bad-peer")?.0 } else { RawPeer::connect(server.addr)? };
    peer.send(input)?;
    let answer = peer.line_skipping_pulses()?;
    assert!(peer.closed_by_server(), "the server must close after {answer:?}");
    Ok(answer)
}

#[test]
fn bad_input_gets_the_right_error_and_a_healthy_peer_misses_no_pulse() -> anyhow::Result<()> {
    // A 200 ms cadence: the healthy peer must see no miss, and a loaded machine (the other tests
    // run alongside) may delay a pulse by tens of milliseconds without that being a miss.
    let args = ["--interval", "200ms", "--handshake-timeout", "300ms", "--max-payload", "65536"];
    let server = DemoServer::start("127.0.0.1:0", &args)?;
    smol::block_on(async {
        let (healthy, mut events) = Client::start(client_config(server.addr, "healthy"));
        next_event(&mut events, patience(), |e| matches!(e, Event::Connected { .. })).await?;

        let long_id = format!("HELLO 1 {}\n", "a".repeat(10 * 1024));
        let no_newline = vec![b'a'; 2000];
        let cases: [(bool, &[u8], &str); 12] = [
            (false, b"JUMP 1\n", "malformed"),
            (false, b"DATA 5\nhello", "unexpected"),
            (false, b"HELLO 3 desk\n", "version"),
            (false, b"HELLO 1 bad/id\n", "bad-id"),
            (false, long_id.as_bytes(), "too-large"),
            (false, b"\xff\xfe\n", "malformed"),
            (false, b"", "timeout"),
            (true, b"DATA 4294967295\n", "too-large"),
            (true, &no_newline, "too-large"),
            (true, b"PULSE \xff\n", "malformed"),
            (true, b"WELCOME s 10 3\n", "unexpected"),
            (true, b"HELLO 1 again\n", "unexpected"),
        ];
        for (hello, input, code) in cases {
            let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
            let answer = answer_to(&server, hello, input)?;
            assert!(answer.starts_with(&format!("ERROR {code}")), "{shown:?} got {answer:?}, expected {code}");
        }

        // A flood of probes is answered in order and affects nobody else.
        let (mut flooder, _) = RawPeer::hello(server.addr, "flooder")?;
        let flood: String = (1..=10_000).map(|seq| format!("PULSE {seq}\n")).collect();
        flooder.send(flood.as_bytes())?;
        let mut last = 0u64;
        while last < 10_000 {
            let line = flooder.line_skipping_pulses()?;
            let seq: u64 = line.strip_prefix("ALIVE ").and_then(|n| n.parse().ok()).unwrap_or(0);
            assert_eq!(seq, last + 1, "answers come in order: {line:?}");
            last = seq;
        }

        // The healthy peer was online throughout, never missed a pulse, and still gets them:
        // read its events up to the first pulse the attacks did not already see, checking all.
        let already = events_so_far(&mut events);
        let (_, _, later) = next_event(&mut events, patience(), |e| matches!(e, Event::Pulse { .. })).await?;
        for event in already.iter().chain(&later) {
            assert!(!matches!(event, Event::Missed { .. } | Event::Disconnected { .. }), "healthy peer saw {event:?}");
        }
        assert!(already.iter().any(|e| matches!(e, Event::Pulse { .. })), "pulses flowed during the attacks");
        assert!(matches!(healthy.state(), State::Online { misses: 0, .. }), "{:?}", healthy.state());
        Ok(())
    })
}

/// Every event already waiting, without waiting for more.
fn events_so_far(events: &mut pulsewire::Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_next()).collect()
}
