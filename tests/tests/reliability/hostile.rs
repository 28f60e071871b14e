//! Hostile peers against the real `demo-server`: a thousand connections that never speak
//! (slowloris), floods, absurd lengths, endless lines, bytes that are not text. Each must get
//! the right `ERROR`, be closed, and cost the server bounded memory, while a healthy client
//! connected all along never misses a pulse.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulsewire::{Event, State};
use pulsewire_tests::crowd::Crowd;
use pulsewire_tests::{rss_kib, DemoServer, RawPeer};

use crate::{client_config, patience, scale, serial};

/// The server's handshake timeout in this test.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// What the server may grow by, at most, while it is attacked.
const RSS_BUDGET_KIB: u64 = 64 * 1024;

/// Samples a process's resident memory every 20 ms on a thread of its own (a bounded poll of
/// `/proc`: memory has no event to wait on), keeping the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (peak.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch { peak, done, thread: Some(thread) }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `input` on a fresh connection (after a handshake when `hello` is set) from a thread of
/// its own (the server may stop reading long before it is all sent), and returns the server's
/// first line that is not a pulse, once the server has closed the connection.
fn answer_to(addr: SocketAddr, hello: bool, input: Vec<u8>) -> anyhow::Result<String> {
    let mut peer = if hello { RawPeer::hello(addr, "hostile")?.0 } else { RawPeer::connect(addr)? };
    let mut writer = peer.try_clone_stream()?;
    let sender = std::thread::spawn(move || {
        // Fails once the server has closed: expected for the inputs it refuses midway.
        let _ = writer.write_all(&input);
    });
    let answer = peer.line_skipping_pulses()?;
    anyhow::ensure!(peer.closed_by_server(), "the server must close after {answer:?}");
    let _ = sender.join();
    Ok(answer)
}

#[test]
fn hostile_peers_get_the_right_error_and_are_closed_while_memory_stays_bounded_and_a_healthy_peer_misses_nothing(
) -> anyhow::Result<()> {
    let slowloris: usize = scale(1000, 2000);
    let _serial = serial();
    // A 200 ms cadence: a loaded 2-core machine may delay a pulse by tens of milliseconds
    // without that being a miss; the healthy client must see none.
    let args = ["--interval", "200ms", "--handshake-timeout", "1s", "--write-timeout", "1s"];
    let server = DemoServer::start_logging("127.0.0.1:0", &args, Some("error"))?;
    let addr = server.addr;
    let pid = server.process.pid();
    smol::block_on(async {
        // The healthy client's events are logged with their moments by a thread of their own.
        let mut healthy = Crowd::start([client_config(addr, "healthy").build()?]);
        healthy.wait_each(patience(), &[0], |e| matches!(e, Event::Pulse { .. }))?;
        let mut phases = vec![("connected", Instant::now())];
        let rss_before = rss_kib(pid)?;
        let watch = RssWatch::start(pid);

        // 1. Slowloris: connections that never say HELLO. Each waits out the handshake timeout
        //    (`ERROR timeout`), or is refused at once when more are in their handshake than the
        //    server allows (`ERROR full`); none is kept longer.
        phases.push(("slowloris", Instant::now()));
        let opened = Instant::now();
        let mut silent = Vec::with_capacity(slowloris);
        for _ in 0..slowloris {
            silent.push(RawPeer::connect(addr)?);
        }
        let all_open = opened.elapsed();
        let rss_loaded = rss_kib(pid)?;
        let (mut timeouts, mut full) = (0, 0);
        for (n, peer) in silent.iter_mut().enumerate() {
            let answer = peer.line()?;
            if answer.starts_with("ERROR timeout no HELLO within 1000 ms") {
                timeouts += 1;
            } else if answer.starts_with("ERROR full too many handshakes in flight") {
                full += 1;
            } else {
                anyhow::bail!("silent connection {n} got {answer:?}");
            }
            anyhow::ensure!(peer.closed_by_server(), "silent connection {n} was not closed");
        }
        let all_answered = opened.elapsed();
        drop(silent);
        eprintln!(
            "slowloris: {slowloris} silent connections opened in {all_open:?}, all answered and closed after \
             {all_answered:?} ({timeouts} timeout, {full} full); server RSS {rss_before} KiB before, {rss_loaded} KiB \
             holding them"
        );
        assert_eq!(timeouts + full, slowloris);
        // The last one was accepted by the time they were all open, at the latest.
        let bound = all_open + HANDSHAKE_TIMEOUT + Duration::from_secs(3);
        assert!(all_answered < bound, "kept too long: {all_answered:?}");

        phases.push(("probe flood", Instant::now()));
        // 2. A flood of probes, read as it is answered: every one answered, in order.
        let probes: u64 = scale(50_000, 500_000);
        let (mut flooder, _) = RawPeer::hello(addr, "flooder")?;
        let mut writer = flooder.try_clone_stream()?;
        let flood = std::thread::spawn(move || {
            let lines: String = (1..=probes).map(|seq| format!("PULSE {seq}\n")).collect();
            writer.write_all(lines.as_bytes())
        });
        let mut last = 0u64;
        while last < probes {
            let line = flooder.line_skipping_pulses()?;
            let seq: u64 = line.strip_prefix("ALIVE ").and_then(|n| n.parse().ok()).unwrap_or(0);
            assert_eq!(seq, last + 1, "answers come in order: {line:?}");
            last = seq;
        }
        flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        drop(flooder);

        phases.push(("deaf probe flood", Instant::now()));
        // 3. A flood of probes from a peer that never reads: its answers pile up, its writes
        //    block, and it is dropped (write timeout, or stalled queue), without an effect on
        //    anyone else.
        let (deaf, _) = RawPeer::hello(addr, "deaf")?;
        let mut writer = deaf.try_clone_stream()?;
        // A server that neither reads nor cuts would block the flood: that is a failure too.
        writer.set_write_timeout(Some(patience()))?;
        let flooding = Instant::now();
        let deaf_flood = std::thread::spawn(move || -> std::io::Result<()> {
            let lines: String = (1..=100_000u64).map(|seq| format!("PULSE {seq}\n")).collect();
            // Keeps sending until the server cuts it off.
            loop {
                writer.write_all(lines.as_bytes())?;
            }
        });
        let cut = deaf_flood.join().map_err(|_| anyhow::anyhow!("deaf flood thread panicked"))?.unwrap_err();
        eprintln!("a probe flood that reads nothing was cut after {:?}: {cut}", flooding.elapsed());
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        assert!(matches!(cut.kind(), BrokenPipe | ConnectionReset), "a peer that never reads is dropped: {cut}");
        drop(deaf);

        phases.push(("bad input", Instant::now()));
        // 4. Absurd lengths and bytes that are not text: the right code, and closed.
        let ten_mib_no_newline = vec![b'a'; 10 * 1024 * 1024];
        let long_id = format!("HELLO 1 {}\n", "a".repeat(10 * 1024)).into_bytes();
        let cases: Vec<(&str, bool, Vec<u8>, &str)> = vec![
            ("DATA 4294967295", true, b"DATA 4294967295\n".to_vec(), "ERROR too-large"),
            ("10 MiB, no newline, before HELLO", false, ten_mib_no_newline.clone(), "ERROR too-large"),
            ("10 MiB, no newline, online", true, ten_mib_no_newline, "ERROR too-large"),
            ("invalid UTF-8 before HELLO", false, b"\xff\xfe\xfd\n".to_vec(), "ERROR malformed"),
            ("invalid UTF-8 online", true, b"PULSE \xc3\x28\n".to_vec(), "ERROR malformed"),
            ("HELLO with a 10 KiB id", false, long_id, "ERROR too-large"),
        ];
        for (name, hello, input, expected) in cases {
            let answer = answer_to(addr, hello, input)?;
            assert!(answer.starts_with(expected), "{name}: got {answer:?}, expected {expected}");
        }

        let rss_peak = watch.peak();
        drop(watch);
        let rss_after = rss_kib(pid)?;
        eprintln!("server RSS: {rss_before} KiB before, peak {rss_peak} KiB, {rss_after} KiB after the attacks");
        assert!(
            rss_peak - rss_before.min(rss_peak) < RSS_BUDGET_KIB,
            "the server grew by {} KiB",
            rss_peak - rss_before
        );

        phases.push(("end", Instant::now()));

        // The healthy peer was online throughout and never missed a pulse.
        let client = &healthy.clients[0];
        assert!(matches!(client.state(), State::Online { misses: 0, .. }), "{:?}", client.state());
        healthy.read_ready();
        let log = &healthy.log[0];
        let phase_of =
            |at: Instant| phases.iter().rev().find(|(_, start)| *start <= at).map_or("start", |(name, _)| name);
        let pulses: Vec<Instant> =
            log.iter().filter(|(e, _)| matches!(e, Event::Pulse { .. })).map(|(_, at)| *at).collect();
        let longest = pulses.windows(2).map(|w| (w[1] - w[0], phase_of(w[1]))).max_by_key(|(gap, _)| *gap);
        eprintln!("healthy client: {} pulses, longest gap between two {longest:?}", pulses.len());
        for (event, at) in log {
            let bad = matches!(event, Event::Missed { .. } | Event::Disconnected { .. });
            assert!(!bad, "healthy peer saw {event:?} during the {} phase", phase_of(*at));
        }
        assert!(pulses.len() > 5, "pulses kept flowing to the healthy peer");
        drop(healthy);
        anyhow::Ok(())
    })
}
