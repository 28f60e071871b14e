//! Codec micro-benchmarks: frames decoded and encoded per second, bytes per frame.
//!
//! `cargo bench -p bench` prints the wire size of each frame, then divan's timings with
//! frames/s (items) and bytes/s for each case.

use bytes::BytesMut;
use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use pulsewire::protocol::{ClientId, Decoder, Frame, SessionId, DEFAULT_MAX_PAYLOAD};

/// Frames per decoded buffer: enough to amortise the setup, small enough to stay in cache.
const FRAMES: usize = 1000;

fn main() {
    println!("bytes per frame on the wire:");
    for (name, frame) in cases() {
        println!("  {name:<10} {:>5} B  {:?}", frame.to_bytes().len(), frame.to_string());
    }
    println!();
    divan::main();
}

/// The frames of a session: the steady ones (pulse, alive) at realistic sequence numbers.
fn cases() -> Vec<(&'static str, Frame)> {
    let id = ClientId::new("desk-42").expect("valid id");
    let session = SessionId::new("91ddcd751").expect("valid session");
    vec![
        ("pulse", Frame::Pulse { seq: 86_400 }),
        ("alive", Frame::Alive { seq: 86_400 }),
        ("hello", Frame::Hello { version: 1, client_id: id, token: None, resume: None }),
        (
            "welcome",
            Frame::Welcome { session, interval: std::time::Duration::from_secs(1), max_missed: 3, resume: None },
        ),
        ("data-64", Frame::data(vec![b'x'; 64])),
        ("data-4k", Frame::data(vec![b'x'; 4096])),
        ("bye", Frame::bye("quit")),
    ]
}

fn frame(name: &str) -> Frame {
    cases().into_iter().find(|(n, _)| *n == name).map(|(_, f)| f).expect("known case")
}

/// `FRAMES` copies of a frame, back to back, as a socket would deliver them.
fn stream(frame: &Frame) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES {
        frame.encode(&mut wire);
    }
    wire.to_vec()
}

#[divan::bench(args = ["pulse", "alive", "hello", "welcome", "data-64", "data-4k", "bye"])]
fn decode(bencher: Bencher<'_, '_>, name: &str) {
    let wire = stream(&frame(name));
    bencher.counter(ItemsCount::new(FRAMES)).counter(BytesCount::new(wire.len())).bench(|| {
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        decoder.extend(black_box(&wire));
        let mut n = 0;
        while let Ok(Some(frame)) = decoder.next_frame() {
            black_box(frame);
            n += 1;
        }
        assert_eq!(n, FRAMES);
    });
}

/// Decoding through `read_buf`/`filled` in 512-byte reads, the way the SDK reads a socket.
#[divan::bench(args = ["pulse", "data-64"])]
fn decode_in_reads(bencher: Bencher<'_, '_>, name: &str) {
    let wire = stream(&frame(name));
    bencher.counter(ItemsCount::new(FRAMES)).counter(BytesCount::new(wire.len())).bench(|| {
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut n = 0;
        for chunk in black_box(&wire).chunks(512) {
            let region = decoder.read_buf();
            region[..chunk.len()].copy_from_slice(chunk);
            decoder.filled(chunk.len());
            while let Ok(Some(frame)) = decoder.next_frame() {
                black_box(frame);
                n += 1;
            }
        }
        assert_eq!(n, FRAMES);
    });
}

#[divan::bench(args = ["pulse", "alive", "welcome", "data-64"])]
fn encode(bencher: Bencher<'_, '_>, name: &str) {
    let frame = frame(name);
    let size = frame.to_bytes().len();
    let mut wire = BytesMut::with_capacity(size * FRAMES);
    bencher.counter(ItemsCount::new(FRAMES)).counter(BytesCount::new(size * FRAMES)).bench_local(|| {
        wire.clear();
        for _ in 0..FRAMES {
            black_box(&frame).encode(&mut wire);
        }
        black_box(&wire);
    });
}
