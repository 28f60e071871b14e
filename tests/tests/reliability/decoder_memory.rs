//! The decoder never allocates beyond its limits, whatever it is fed: a `DATA` header reserves
//! nothing for its payload, an endless line costs one line, and in general the memory it holds
//! at any moment stays within a small multiple of what it may hold (one line of `MAX_LINE`
//! bytes, or one header and one payload of `max_payload` bytes) plus one read.
//!
//! Allocations are counted on the calling thread (`allocation-counter`), as the decoder is fed
//! the way a connection feeds it: through `read_buf` and `filled`, in reads of a given size.

use allocation_counter::AllocationInfo;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use pulsewire::protocol::{Decoder, MAX_LINE};

use crate::{scale, serial};

/// Feeds `input` in reads of at most `read` bytes, taking every frame out (and dropping it) as
/// it comes, until the input ends or the decoder fails. Returns the peak memory it allocated.
fn peak_while_decoding(max_payload: usize, input: &[u8], read: usize) -> AllocationInfo {
    allocation_counter::measure(|| {
        let mut decoder = Decoder::new(max_payload);
        let mut rest = input;
        while !rest.is_empty() {
            let region = decoder.read_buf();
            let n = region.len().min(read).min(rest.len());
            region[..n].copy_from_slice(&rest[..n]);
            decoder.filled(n);
            rest = &rest[n..];
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => drop(frame),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    })
}

/// What the decoder may hold at most, with room for its buffer's growth by doubling (the old
/// and the new buffer are both live while it moves), and for one read region: 512 bytes, or,
/// while a payload is due, up to what is still due and at most 64 KiB (a large payload is read
/// in large steps). The input's length caps what it can hold, so a decoder that reserved what a
/// header announces is caught.
fn allowance(max_payload: usize, read: usize, input_len: usize) -> u64 {
    let may_hold = (MAX_LINE + max_payload).min(input_len);
    let region = read.max(512).max(max_payload.min(64 * 1024));
    (3 * (may_hold + region) + 4096) as u64
}

#[test]
fn a_data_header_alone_reserves_nothing_for_its_payload() {
    let _serial = serial();
    let max_payload = 1 << 30;
    for header in ["DATA 1073741824\n", "DATA 1048576\nabc", "DATA 4294967295\n", "DATA 18446744073709551615\n"] {
        let info = peak_while_decoding(max_payload, header.as_bytes(), 4096);
        assert!(info.bytes_max < 8 * 1024, "{header:?} made the decoder hold {} bytes", info.bytes_max);
    }
}

#[test]
fn ten_megabytes_without_a_newline_cost_one_line() {
    let _serial = serial();
    let input = vec![b'a'; 10 * 1024 * 1024];
    for read in [1, 512, 4096, 65536] {
        let info = peak_while_decoding(1 << 20, &input, read);
        assert!(info.bytes_max < 2 * 65536 + 8192, "reads of {read}: peak {} bytes", info.bytes_max);
    }
}

/// A piece of a hostile stream: valid frames, announced lengths of every size, long runs
/// without a newline, arbitrary bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        (0..=2 * MAX_LINE, any::<u8>()).prop_map(|(len, byte)| vec![if byte == b'\n' { b'x' } else { byte }; len]),
        prop_oneof![0..=70_000u64, any::<u64>()].prop_map(|len| format!("DATA {len}\n").into_bytes()),
        vec(any::<u8>(), 0..70_000).prop_map(|payload| {
            let mut bytes = format!("DATA {}\n", payload.len()).into_bytes();
            bytes.extend_from_slice(&payload);
            bytes
        }),
        Just(b"PULSE 1\nALIVE 2\nBYE quit\n".to_vec()),
    ]
}

#[test]
fn no_input_makes_the_decoder_allocate_beyond_its_limits() {
    // The runner is driven by hand so that the suite's lock is held for every case at once.
    let _serial = serial();
    let config = Config { cases: scale(96, 1024), failure_persistence: None, ..Config::default() };
    let inputs = (
        prop_oneof![Just(16usize), Just(4096), Just(65_536), Just(1 << 20)],
        vec(piece(), 0..10),
        prop_oneof![1..=64usize, 512..=65_536usize],
    );
    let outcome = TestRunner::new(config).run(&inputs, |(max_payload, pieces, read)| {
        let input = pieces.concat();
        let info = peak_while_decoding(max_payload, &input, read);
        let allowed = allowance(max_payload, read, input.len());
        prop_assert!(
            info.bytes_max <= allowed,
            "peak {} bytes, allowed {allowed} (max payload {max_payload}, reads of {read}, {} bytes in)",
            info.bytes_max,
            input.len()
        );
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[test]
fn the_allowance_would_catch_a_decoder_that_reserves_announced_payloads() {
    // The property is only worth something if a decoder reserving what a header announces
    // would break it: 1 MiB reserved on a 16-byte input is far above the allowance.
    let _serial = serial();
    let reserving = allocation_counter::measure(|| {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"DATA 1048576\n");
        drop(std::hint::black_box(buf));
    });
    assert!(reserving.bytes_max > allowance(1 << 20, 4096, 16));
}
