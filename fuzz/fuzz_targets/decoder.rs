//! Fuzzes the frame decoder (`pulsewire::protocol::Decoder`) with arbitrary bytes.
//!
//! The first two bytes of each input choose the payload limit and the size of the reads the
//! stream is cut into; the rest is the stream. For every input:
//!
//! - nothing panics, and a failed decoder stays failed;
//! - the stream read in small pieces through `read_buf` / `filled` (as a socket feeds it)
//!   decodes to exactly the frames and the error it gives when handed over whole;
//! - every frame it yields is one it could have been sent: within the limits, and it encodes
//!   and decodes back to itself.
//!
//! Allocations are bounded by libFuzzer itself: run with `-malloc_limit_mb=` and
//! `-rss_limit_mb=` (see docs/reliability.md), so that a decoder that reserved what a header
//! announces fails the run.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsewire::protocol::{DecodeError, Decoder, Frame, MAX_HELLO_LINE, MAX_LINE};

/// Takes every frame out until the decoder needs more bytes or fails.
fn drain(decoder: &mut Decoder, frames: &mut Vec<Frame>) -> Result<(), DecodeError> {
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let (head, stream) = data.split_at(data.len().min(2));
    // 1 byte to a little over 64 KiB: small limits are hit often, large ones are reachable.
    let max_payload = 1 + usize::from(head.first().copied().unwrap_or(0)) * 257;
    let read = 1 + usize::from(head.get(1).copied().unwrap_or(0)) % 64;

    let mut whole = Decoder::new(max_payload);
    whole.extend(stream);
    let mut expected = Vec::new();
    let expected_end = drain(&mut whole, &mut expected);

    let mut pieces = Decoder::new(max_payload);
    let mut frames = Vec::new();
    let mut end = Ok(());
    let mut rest = stream;
    while !rest.is_empty() && end.is_ok() {
        let region = pieces.read_buf();
        let n = region.len().min(read).min(rest.len());
        region[..n].copy_from_slice(&rest[..n]);
        pieces.filled(n);
        rest = &rest[n..];
        end = drain(&mut pieces, &mut frames);
    }
    assert_eq!(frames, expected, "how the stream is cut must not change the frames");
    // A stream that ends early just waits; an error is the same error, wherever it was found.
    match (&end, &expected_end) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(()), Ok(())) => {}
        other => panic!("whole and pieces disagree: {other:?}"),
    }
    if let Err(error) = end {
        assert_eq!(pieces.next_frame(), Err(error), "a failed decoder stays failed");
    }

    for frame in frames {
        if let Frame::Data { payload, .. } = &frame {
            assert!(payload.len() <= max_payload);
        }
        let bytes = frame.to_bytes();
        match &frame {
            Frame::Data { .. } => {}
            Frame::Hello { .. } => {
                assert!(bytes.len() <= MAX_HELLO_LINE, "a HELLO it accepted is within MAX_HELLO_LINE")
            }
            _ => assert!(bytes.len() <= MAX_LINE, "a control line it accepted is within MAX_LINE"),
        }
        let mut again = Decoder::new(max_payload);
        again.extend(&bytes);
        assert_eq!(again.next_frame(), Ok(Some(frame)), "what it yields encodes and decodes back");
    }
});
