//! Property tests for the codec (`pulsewire::protocol`): whatever bytes arrive and however the
//! socket splits them, the decoder yields exactly the frames that were sent, never panics, never
//! lets a line or a payload grow past its limit, and stays failed once it failed.
//!
//! Only the public API is used. Case counts are modest so that the file runs in a few seconds;
//! raise them for a longer hunt with `PROPTEST_CASES=10000 cargo test -p pulsewire --test
//! codec_properties`.

use std::time::Duration;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config;
use pulsewire::protocol::{
    ClientId, DecodeError, Decoder, ErrorCode, Frame, SessionId, DEFAULT_MAX_PAYLOAD, MAX_LINE, MAX_TOKEN,
    PROTOCOL_VERSION,
};

/// The payload limit of the decoders in the round-trip properties: small enough that payloads
/// of exactly the limit are generated often.
const MAX_PAYLOAD: usize = 300;

/// `cases` per property, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> Config {
    let from_env = std::env::var_os("PROPTEST_CASES").is_some();
    Config {
        cases: if from_env { Config::default().cases } else { cases },
        // A failure prints its minimal input; no regression file is written next to this one.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies: every frame variant, with every field valid.

/// 1–64 characters of `A-Z a-z 0-9 . _ : -`.
fn client_id() -> impl Strategy<Value = ClientId> {
    "[A-Za-z0-9._:-]{1,64}".prop_map(|id| ClientId::new(id).expect("the pattern only yields valid client ids"))
}

/// 1–64 printable ASCII characters, no space.
fn session_id() -> impl Strategy<Value = SessionId> {
    "[!-~]{1,64}".prop_map(|id| SessionId::new(id).expect("the pattern only yields valid session ids"))
}

fn printable(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("the strategies only yield ASCII")
}

/// The error codes this protocol version gives a meaning to.
fn known_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    vec![Malformed, TooLarge, Unexpected, Version, BadId, Timeout, Replaced, Shutdown, Full]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    // Any other lowercase word is kept as `Other`; a known word decodes as its own variant.
    let other = "[a-z-]{1,64}"
        .prop_filter("a known code is not `Other`", |word| known_codes().iter().all(|code| code.as_str() != word))
        .prop_map(ErrorCode::Other);
    prop_oneof![4 => select(known_codes()), 1 => other]
}

/// `ERROR <code> <text>`: printable ASCII text, as long as the line stays within `MAX_LINE`.
fn error_frame() -> impl Strategy<Value = Frame> {
    error_code().prop_flat_map(|code| {
        // "ERROR " + code + " " + text + "\n" must fit in MAX_LINE.
        let budget = MAX_LINE - "ERROR ".len() - code.as_str().len() - " \n".len();
        // Spaces weigh heavily: they separate the code from the text and may lead or end it.
        let char = prop_oneof![3 => 0x20u8..=0x7e, 1 => Just(b' ')];
        let text = prop_oneof![vec(char.clone(), 0..=24), vec(char.clone(), budget), vec(char, 0..=budget)]
            .prop_map(printable);
        (Just(code), text).prop_map(|(code, text)| Frame::Error { code, text })
    })
}

/// `BYE` alone or with one word of 1–64 printable characters.
fn bye_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![Just(String::new()), "[!-~]{1,64}"].prop_map(|reason| Frame::Bye { reason })
}

/// Payloads of any bytes (newlines included) up to `max`, the limit itself often.
fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![vec(any::<u8>(), 0..=16), vec(any::<u8>(), max), vec(any::<u8>(), 0..=max)].prop_map(Bytes::from)
}

/// Any frame of any variant, valid for a decoder accepting `MAX_PAYLOAD`.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        // A HELLO for another version is refused by the decoder (see the property below).
        client_id().prop_map(|client_id| Frame::Hello { version: PROTOCOL_VERSION, client_id }),
        (session_id(), 1..=u64::MAX, any::<u32>()).prop_map(|(session, ms, max_missed)| {
            Frame::Welcome { session, interval: Duration::from_millis(ms), max_missed }
        }),
        any::<u64>().prop_map(|seq| Frame::Pulse { seq }),
        any::<u64>().prop_map(|seq| Frame::Alive { seq }),
        payload(MAX_PAYLOAD).prop_map(Frame::Data),
        bye_frame(),
        error_frame(),
    ]
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    for frame in frames {
        frame.encode(&mut wire);
    }
    wire.to_vec()
}

/// `bytes` cut at the given points (in order, possibly empty pieces).
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for point in points {
        pieces.push(&bytes[start..point]);
        start = point;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// Takes every complete frame out of `decoder`.
fn drain(decoder: &mut Decoder, out: &mut Vec<Frame>) -> Result<(), DecodeError> {
    while let Some(frame) = decoder.next_frame()? {
        out.push(frame);
    }
    Ok(())
}

/// The control line a frame is written as (the `DATA` header alone for a data frame).
fn control_line_len(frame: &Frame) -> usize {
    match frame {
        Frame::Data(payload) => format!("DATA {}\n", payload.len()).len(),
        other => other.to_bytes().len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Valid streams.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_valid_frame_round_trips_through_encode_and_decode(frame in frame()) {
        let wire = frame.to_bytes();
        prop_assert!(
            control_line_len(&frame) <= MAX_LINE,
            "{frame} is written as a line longer than MAX_LINE"
        );
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        decoder.extend(&wire);
        prop_assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        prop_assert_eq!(decoder.next_frame(), Ok(None), "nothing may be left over");
    }

    #[test]
    fn a_frame_whose_line_ends_in_cr_lf_decodes_the_same(frame in frame()) {
        // `\r\n` is accepted wherever `\n` is: rewrite the control line's terminator only.
        let wire = frame.to_bytes();
        let line_end = control_line_len(&frame) - 1;
        let mut crlf = wire[..line_end].to_vec();
        crlf.extend_from_slice(b"\r");
        crlf.extend_from_slice(&wire[line_end..]);
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        decoder.extend(&crlf);
        let decoded = decoder.next_frame();
        // A line already at the limit has no room for the extra `\r`.
        if control_line_len(&frame) + 1 > MAX_LINE {
            prop_assert_eq!(decoded, Err(DecodeError::LineTooLong { limit: MAX_LINE }));
        } else {
            prop_assert_eq!(decoded, Ok(Some(frame)));
            prop_assert_eq!(decoder.next_frame(), Ok(None));
        }
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn a_stream_split_at_any_points_decodes_to_the_same_frames(
        frames in vec(frame(), 0..12),
        cuts in vec(any::<Index>(), 0..24),
    ) {
        let wire = encode_all(&frames);
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        let mut decoded = Vec::new();
        for piece in split(&wire, &cuts) {
            decoder.extend(piece);
            prop_assert_eq!(drain(&mut decoder, &mut decoded), Ok(()));
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.next_frame(), Ok(None), "nothing may be left over");
    }

    #[test]
    fn a_stream_read_through_read_buf_decodes_to_the_same_frames(
        frames in vec(frame(), 0..12),
        // Per read: how many bytes the socket delivers, and whether a read was cancelled first
        // (its region scribbled on, then never reported or reported as 0 bytes).
        reads in vec((1usize..=1500, any::<Option<(bool, u8)>>()), 0..64),
    ) {
        let wire = encode_all(&frames);
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        let mut decoded = Vec::new();
        let mut sent = 0;
        let mut reads = reads.into_iter();
        while sent < wire.len() {
            let (size, cancelled) = reads.next().unwrap_or((512, None));
            if let Some((reported, scribble)) = cancelled {
                let region = decoder.read_buf();
                region.fill(scribble);
                if reported {
                    decoder.filled(0);
                }
            }
            let region = decoder.read_buf();
            prop_assert!(!region.is_empty(), "an empty region would read as end of stream");
            let n = size.min(region.len()).min(wire.len() - sent);
            region[..n].copy_from_slice(&wire[sent..sent + n]);
            decoder.filled(n);
            sent += n;
            prop_assert_eq!(drain(&mut decoder, &mut decoded), Ok(()));
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.next_frame(), Ok(None), "nothing may be left over");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile streams.

/// Words the decoder knows, so that noise often comes close to a valid frame.
const TOKENS: &[&str] = &[
    "HELLO",
    "WELCOME",
    "PULSE",
    "ALIVE",
    "DATA",
    "BYE",
    "ERROR",
    "pulse",
    " ",
    " ",
    " ",
    "\n",
    "\n",
    "\r",
    "\r\n",
    "0",
    "1",
    "7",
    "01",
    "-1",
    "64",
    "300",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "desk-42",
    "timeout",
    "Nope",
    "a b",
    "\t",
    "\u{e9}",
];

/// Bytes a hostile or broken peer might send: raw noise, near-valid lines, valid frames, large
/// `DATA` headers and long runs without a newline.
fn noise_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..48),
        vec(select(TOKENS), 0..24).prop_map(|words| words.concat().into_bytes()),
        frame().prop_map(|frame| frame.to_bytes().to_vec()),
        prop_oneof![0..=512u64, any::<u64>()].prop_map(|len| format!("DATA {len}\n").into_bytes()),
        (1..=3 * MAX_LINE, any::<u8>()).prop_map(|(len, byte)| {
            let byte = if byte == b'\n' { b'x' } else { byte };
            vec![byte; len]
        }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_buffer_stays_bounded(
        max_payload in prop_oneof![0..=16usize, 0..=400usize],
        pieces in vec(noise_piece(), 0..12),
        cuts in vec(any::<Index>(), 0..32),
    ) {
        let input = pieces.concat();
        let mut decoder = Decoder::new(max_payload);
        let mut failed: Option<DecodeError> = None;
        // Bytes fed since the decoder last yielded a frame: none of them is part of a yielded
        // frame, so the decoder still holds them all (and possibly more).
        let mut held_at_least = 0usize;
        for piece in split(&input, &cuts) {
            decoder.extend(piece);
            held_at_least += piece.len();
            loop {
                let result = decoder.next_frame();
                if let Some(error) = &failed {
                    prop_assert_eq!(&result, &Err(error.clone()), "an error must be sticky");
                    break;
                }
                match result {
                    Err(error) => failed = Some(error),
                    Ok(None) => {
                        // Waiting is only legal for part of a line (under MAX_LINE), or a
                        // `DATA` header (at most MAX_LINE) and part of its payload (under
                        // max_payload): anything more must have produced a frame or an error.
                        prop_assert!(
                            held_at_least < MAX_LINE + max_payload,
                            "the decoder waits while holding at least {} bytes",
                            held_at_least
                        );
                        break;
                    }
                    Ok(Some(frame)) => {
                        held_at_least = 0;
                        if let Frame::Data(payload) = &frame {
                            prop_assert!(
                                payload.len() <= max_payload,
                                "a {}-byte payload passed a limit of {}",
                                payload.len(),
                                max_payload
                            );
                        }
                        // Whatever it accepted is a frame it could have been sent.
                        prop_assert!(control_line_len(&frame) <= MAX_LINE);
                        let mut again = Decoder::new(max_payload);
                        again.extend(&frame.to_bytes());
                        prop_assert_eq!(again.next_frame(), Ok(Some(frame)));
                    }
                }
            }
        }
        // Once failed, it stays failed even when given more (valid) bytes.
        if let Some(error) = failed {
            decoder.extend(b"PULSE 1\n");
            prop_assert_eq!(decoder.next_frame(), Err(error.clone()));
            prop_assert_eq!(decoder.next_frame(), Err(error));
        }
    }

    #[test]
    fn oversized_data_header_is_rejected_before_the_payload(
        (max_payload, len) in prop_oneof![0..=64usize, Just(MAX_PAYLOAD), Just(DEFAULT_MAX_PAYLOAD)]
            .prop_flat_map(|max| {
                let over = max as u64 + 1;
                (Just(max), prop_oneof![Just(over), over..=over + 16, over..=u64::MAX])
            }),
        before in vec(frame(), 0..4),
        crlf in any::<bool>(),
        cuts in vec(any::<Index>(), 0..4),
    ) {
        // Valid frames may come first; only those within this decoder's limit are kept.
        let before: Vec<Frame> = before
            .into_iter()
            .filter(|frame| !matches!(frame, Frame::Data(p) if p.len() > max_payload))
            .collect();
        let mut wire = encode_all(&before);
        let header = format!("DATA {len}{}\n", if crlf { "\r" } else { "" });
        wire.extend_from_slice(header.as_bytes());
        let mut decoder = Decoder::new(max_payload);
        let mut decoded = Vec::new();
        let mut result = Ok(());
        for piece in split(&wire, &cuts) {
            decoder.extend(piece);
            result = drain(&mut decoder, &mut decoded);
            if result.is_err() {
                break;
            }
        }
        prop_assert_eq!(decoded, before);
        let expected = DecodeError::PayloadTooLarge { len, max: max_payload };
        prop_assert_eq!(result, Err(expected.clone()));
        prop_assert_eq!(expected.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn data_header_within_the_limit_waits_for_its_payload(
        (max_payload, len) in prop_oneof![0..=64usize, Just(DEFAULT_MAX_PAYLOAD)]
            .prop_flat_map(|max| (Just(max), 0..=max)),
        given in any::<Index>(),
    ) {
        let mut decoder = Decoder::new(max_payload);
        decoder.extend(format!("DATA {len}\n").as_bytes());
        // Any strict prefix of the payload leaves the decoder waiting, without error.
        let given = given.index(len + 1);
        let payload = vec![b'\n'; len];
        decoder.extend(&payload[..given]);
        if given < len {
            prop_assert_eq!(decoder.next_frame(), Ok(None));
            decoder.extend(&payload[given..]);
        }
        prop_assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data(payload.into()))));
    }

    #[test]
    fn no_newline_within_max_line_is_too_large(
        before in vec(frame(), 0..4),
        run in (MAX_LINE..=3 * MAX_LINE).prop_flat_map(|len| {
            vec(any::<u8>().prop_map(|b| if b == b'\n' { b'\r' } else { b }), len)
        }),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let prefix = encode_all(&before);
        let mut wire = prefix.clone();
        wire.extend_from_slice(&run);
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        let mut decoded = Vec::new();
        let mut fed = 0;
        for piece in split(&wire, &cuts) {
            decoder.extend(piece);
            fed += piece.len();
            let result = drain(&mut decoder, &mut decoded);
            // The run starts a new line once the prefix is through.
            let run_fed = fed.saturating_sub(prefix.len());
            if run_fed >= MAX_LINE {
                let error = DecodeError::LineTooLong { limit: MAX_LINE };
                prop_assert_eq!(result, Err(error.clone()));
                prop_assert_eq!(error.code(), ErrorCode::TooLarge);
                prop_assert_eq!(&decoded, &before);
                return Ok(());
            }
            prop_assert_eq!(result, Ok(()), "{} bytes of the run are not yet too many", run_fed);
        }
        prop_assert!(false, "the run was never rejected");
    }
}

// ---------------------------------------------------------------------------------------------
// Spot checks of the strategies themselves: a property over a strategy that cannot reach the
// edge proves nothing about the edge.

#[test]
fn strategies_reach_the_limits() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut longest_line = 0;
    let mut longest_payload = 0;
    let mut verbs = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let frame = frame().new_tree(&mut runner).expect("the frame strategy never rejects").current();
        longest_line = longest_line.max(control_line_len(&frame));
        if let Frame::Data(payload) = &frame {
            longest_payload = longest_payload.max(payload.len());
        }
        if let Frame::Bye { reason } = &frame {
            assert!(reason.len() <= MAX_TOKEN);
        }
        verbs.insert(frame.verb());
    }
    assert_eq!(longest_line, MAX_LINE, "ERROR lines of exactly MAX_LINE bytes are generated");
    assert_eq!(longest_payload, MAX_PAYLOAD, "payloads of exactly the limit are generated");
    assert_eq!(verbs.len(), 7, "every variant is generated: {verbs:?}");
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn hello_for_any_other_version_is_a_version_error_whatever_follows(
        version in (0..u64::MAX).prop_filter("not ours", |v| *v != u64::from(PROTOCOL_VERSION)),
        rest in "[ -~]{0,64}",
    ) {
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        decoder.extend(format!("HELLO {version} {rest}\n").as_bytes());
        let error = decoder.next_frame().expect_err("another version");
        prop_assert_eq!(error.code(), ErrorCode::Version);
    }
}
