//! Property tests for the codec (`pulsewire::protocol`), both protocol versions: whatever bytes
//! arrive and however the socket splits them, the decoder yields exactly the frames that were
//! sent (options included), never panics, never lets a line or a payload grow past its limit,
//! and stays failed once it failed; no frame shows its token or resume secret.
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
    ClientId, DecodeError, Decoder, ErrorCode, Frame, Resume, ResumeSecret, SessionId, Token, WelcomeResume,
    DEFAULT_MAX_PAYLOAD, MAX_HELLO_LINE, MAX_LINE, MAX_TOKEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
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

/// The error codes the protocol gives a meaning to.
fn known_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    vec![
        Malformed,
        TooLarge,
        Unexpected,
        Version,
        BadId,
        Timeout,
        Replaced,
        Shutdown,
        Full,
        AuthRequired,
        AuthFailed,
        AuthExpired,
        Forbidden,
        AuthUnavailable,
        TlsRequired,
        Resumed,
    ]
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

/// `len` printable ASCII characters, no space (`=` among them, which a value may hold).
fn word(len: impl Into<proptest::sample::SizeRange>) -> impl Strategy<Value = String> {
    vec(0x21u8..=0x7e, len).prop_map(printable)
}

/// A token: short, long, or the longest allowed (often).
fn token() -> impl Strategy<Value = Token> {
    prop_oneof![word(1..=48), word(Token::MAX_LEN), word(1..=Token::MAX_LEN)]
        .prop_map(|token| Token::new(token).expect("the strategy only yields valid tokens"))
}

/// A resume secret: random hex as a server makes them, or any valid text up to the limit.
fn secret() -> impl Strategy<Value = ResumeSecret> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(ResumeSecret::from_random),
        prop_oneof![word(1..=ResumeSecret::MAX_LEN), word(ResumeSecret::MAX_LEN)]
            .prop_map(|secret| ResumeSecret::new(secret).expect("the strategy only yields valid secrets")),
    ]
}

/// Any `HELLO` the decoder accepts: version 1 (no options) or 2 (every combination of them).
fn hello_frame() -> impl Strategy<Value = Frame> {
    // A HELLO for another version is refused by the decoder (see the property below).
    let resume = (secret(), any::<u64>()).prop_map(|(secret, rx)| Resume { secret, rx });
    prop_oneof![
        1 => client_id().prop_map(|client_id| Frame::Hello {
            version: MIN_PROTOCOL_VERSION,
            client_id,
            token: None,
            resume: None
        }),
        3 => (client_id(), proptest::option::of(token()), proptest::option::of(resume)).prop_map(
            |(client_id, token, resume)| Frame::Hello { version: PROTOCOL_VERSION, client_id, token, resume }
        ),
        // Every field at its longest: the line is exactly MAX_HELLO_LINE bytes.
        1 => ("[A-Za-z0-9._:-]{64}", word(Token::MAX_LEN), word(ResumeSecret::MAX_LEN)).prop_map(|(id, token, secret)| {
            Frame::Hello {
                version: PROTOCOL_VERSION,
                client_id: ClientId::new(id).expect("a valid id"),
                token: Token::new(token),
                resume: Some(Resume { secret: ResumeSecret::new(secret).expect("a valid secret"), rx: u64::MAX }),
            }
        }),
    ]
}

/// Any `WELCOME`: version 1, or with the version-2 options (`exp` or not).
fn welcome_frame() -> impl Strategy<Value = Frame> {
    let terms = (any::<bool>(), any::<u64>(), secret(), any::<u64>(), proptest::option::of(any::<u64>())).prop_map(
        |(resumed, rx, secret, keep_ms, exp_s)| WelcomeResume {
            resumed,
            rx,
            secret,
            keep: Duration::from_millis(keep_ms),
            expires_in: exp_s.map(Duration::from_secs),
        },
    );
    (session_id(), 1..=u64::MAX, any::<u32>(), proptest::option::of(terms)).prop_map(
        |(session, ms, max_missed, resume)| Frame::Welcome {
            session,
            interval: Duration::from_millis(ms),
            max_missed,
            resume,
        },
    )
}

/// Any frame of any variant, valid for a decoder accepting `MAX_PAYLOAD`.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        hello_frame(),
        welcome_frame(),
        any::<u64>().prop_map(|seq| Frame::Pulse { seq }),
        any::<u64>().prop_map(|seq| Frame::Alive { seq }),
        (proptest::option::of(any::<u64>()), payload(MAX_PAYLOAD))
            .prop_map(|(seq, payload)| Frame::Data { seq, payload }),
        any::<u64>().prop_map(|seq| Frame::Ack { seq }),
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
        Frame::Data { payload, .. } => frame.to_bytes().len() - payload.len(),
        other => other.to_bytes().len(),
    }
}

/// The longest line the decoder accepts for this frame's verb.
fn line_limit(frame: &Frame) -> usize {
    match frame {
        Frame::Hello { .. } => MAX_HELLO_LINE,
        _ => MAX_LINE,
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
            control_line_len(&frame) <= line_limit(&frame),
            "{frame} is written as a line longer than its limit"
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
        if control_line_len(&frame) + 1 > line_limit(&frame) {
            prop_assert_eq!(decoded, Err(DecodeError::LineTooLong { limit: line_limit(&frame) }));
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
    "ACK",
    "HELLO 1 ",
    "HELLO 2 ",
    "AUTH",
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
    "auth-expired",
    "token=",
    "resume=",
    "rx=",
    "resumed=",
    "keep=",
    "exp=",
    "zone=",
    "Token=",
    "=",
    "==",
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
        (1..=MAX_HELLO_LINE + MAX_LINE, any::<u8>()).prop_map(|(len, byte)| {
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
                        // Waiting is only legal for part of a line (under MAX_LINE, or
                        // MAX_HELLO_LINE for a HELLO), or a `DATA` header (at most MAX_LINE)
                        // and part of its payload (under max_payload): anything more must have
                        // produced a frame or an error.
                        prop_assert!(
                            held_at_least < MAX_HELLO_LINE.max(MAX_LINE + max_payload),
                            "the decoder waits while holding at least {} bytes",
                            held_at_least
                        );
                        break;
                    }
                    Ok(Some(frame)) => {
                        held_at_least = 0;
                        if let Frame::Data { payload, .. } = &frame {
                            prop_assert!(
                                payload.len() <= max_payload,
                                "a {}-byte payload passed a limit of {}",
                                payload.len(),
                                max_payload
                            );
                        }
                        // Whatever it accepted is a frame it could have been sent.
                        prop_assert!(control_line_len(&frame) <= line_limit(&frame));
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
            .filter(|frame| !matches!(frame, Frame::Data { payload, .. } if payload.len() > max_payload))
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
        seq in proptest::option::of(any::<u64>()),
        given in any::<Index>(),
    ) {
        let mut decoder = Decoder::new(max_payload);
        let header = match seq {
            None => format!("DATA {len}\n"),
            Some(seq) => format!("DATA {len} {seq}\n"),
        };
        decoder.extend(header.as_bytes());
        // Any strict prefix of the payload leaves the decoder waiting, without error.
        let given = given.index(len + 1);
        let payload = vec![b'\n'; len];
        decoder.extend(&payload[..given]);
        if given < len {
            prop_assert_eq!(decoder.next_frame(), Ok(None));
            decoder.extend(&payload[given..]);
        }
        prop_assert_eq!(decoder.next_frame(), Ok(Some(Frame::Data { seq, payload: payload.into() })));
    }

    #[test]
    fn no_newline_within_the_line_limit_is_too_large(
        before in vec(frame(), 0..4),
        // A line starting with `HELLO ` has the larger limit.
        hello in any::<bool>(),
        run in (MAX_LINE..=MAX_HELLO_LINE + MAX_LINE).prop_flat_map(|len| {
            vec(any::<u8>().prop_map(|b| if b == b'\n' { b'\r' } else { b }), len)
        }),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let run = if hello { [&b"HELLO "[..], &run].concat() } else { run };
        let limit = if run.starts_with(b"HELLO ") { MAX_HELLO_LINE } else { MAX_LINE };
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
            if run_fed >= limit {
                let error = DecodeError::LineTooLong { limit };
                prop_assert_eq!(result, Err(error.clone()));
                prop_assert_eq!(error.code(), ErrorCode::TooLarge);
                prop_assert_eq!(&decoded, &before);
                return Ok(());
            }
            prop_assert_eq!(result, Ok(()), "{} bytes of the run are not yet too many", run_fed);
        }
        // A HELLO run may be shorter than its limit: then it only waits.
        prop_assert!(run.len() < limit, "the run was never rejected");
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
    let mut longest_hello = 0;
    let mut longest_token = 0;
    let mut longest_payload = 0;
    let mut verbs = std::collections::BTreeSet::new();
    // Which forms were generated: v1 and v2 HELLO, with token, with resume, WELCOME with and
    // without options and with `exp`, DATA with and without seq.
    let mut forms = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let frame = frame().new_tree(&mut runner).expect("the frame strategy never rejects").current();
        match &frame {
            Frame::Hello { version, token, resume, .. } => {
                longest_hello = longest_hello.max(control_line_len(&frame));
                longest_token = longest_token.max(token.as_ref().map_or(0, |token| token.as_str().len()));
                forms.insert(format!("hello-{version}"));
                if token.is_some() {
                    forms.insert("hello-token".to_owned());
                }
                if resume.is_some() {
                    forms.insert("hello-resume".to_owned());
                }
            }
            Frame::Welcome { resume, .. } => {
                longest_line = longest_line.max(control_line_len(&frame));
                forms.insert(match resume {
                    None => "welcome-1".to_owned(),
                    Some(terms) => format!("welcome-2-exp-{}", terms.expires_in.is_some()),
                });
            }
            Frame::Data { seq, payload } => {
                longest_line = longest_line.max(control_line_len(&frame));
                longest_payload = longest_payload.max(payload.len());
                forms.insert(format!("data-seq-{}", seq.is_some()));
            }
            Frame::Bye { reason } => {
                assert!(reason.len() <= MAX_TOKEN);
                longest_line = longest_line.max(control_line_len(&frame));
            }
            _ => longest_line = longest_line.max(control_line_len(&frame)),
        }
        verbs.insert(frame.verb());
    }
    assert_eq!(longest_line, MAX_LINE, "ERROR lines of exactly MAX_LINE bytes are generated");
    assert_eq!(longest_hello, MAX_HELLO_LINE, "HELLO lines of exactly MAX_HELLO_LINE bytes are generated");
    assert_eq!(longest_token, Token::MAX_LEN, "tokens of exactly the limit are generated");
    assert_eq!(longest_payload, MAX_PAYLOAD, "payloads of exactly the limit are generated");
    assert_eq!(verbs.len(), 8, "every variant is generated: {verbs:?}");
    assert_eq!(forms.len(), 9, "every form is generated: {forms:?}");
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn hello_for_any_other_version_is_a_version_error_whatever_follows(
        version in (0..u64::MAX).prop_filter("not ours", |v| {
            !(u64::from(MIN_PROTOCOL_VERSION)..=u64::from(PROTOCOL_VERSION)).contains(v)
        }),
        rest in "[ -~]{0,64}",
    ) {
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        decoder.extend(format!("HELLO {version} {rest}\n").as_bytes());
        let error = decoder.next_frame().expect_err("another version");
        prop_assert_eq!(error.code(), ErrorCode::Version);
    }

    #[test]
    fn no_frame_shows_its_token_or_secret(frame in prop_oneof![hello_frame(), welcome_frame()]) {
        let secrets: Vec<String> = match &frame {
            Frame::Hello { version, token, resume, .. } => {
                let mut secrets: Vec<String> = token.iter().map(|token| token.as_str().to_owned()).collect();
                secrets.extend(resume.iter().map(|resume| resume.secret.as_str().to_owned()));
                if *version == PROTOCOL_VERSION {
                    let wire = String::from_utf8_lossy(&frame.to_bytes()).into_owned();
                    prop_assert!(secrets.iter().all(|secret| wire.contains(secret.as_str())), "the wire carries them");
                }
                secrets
            }
            Frame::Welcome { resume, .. } => resume.iter().map(|terms| terms.secret.as_str().to_owned()).collect(),
            _ => unreachable!("only HELLO and WELCOME carry secrets"),
        };
        // Every other field is shown, so only a secret long enough not to turn up in them by
        // chance proves anything.
        for secret in secrets.iter().filter(|secret| secret.len() >= 12) {
            for shown in [format!("{frame}"), format!("{frame:?}"), format!("{frame:#?}")] {
                prop_assert!(!shown.contains(secret.as_str()), "{} shows a secret", shown);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One frame of every kind and form, the stream cut at every byte.

fn one_of_every_form() -> Vec<Frame> {
    let id = ClientId::new("desk-42").expect("a valid id");
    let session = SessionId::new("91ddcd751").expect("a valid session");
    let secret = ResumeSecret::from_random([0x5a; 16]);
    let terms = |expires_in| WelcomeResume {
        resumed: true,
        rx: 7,
        secret: secret.clone(),
        keep: Duration::from_millis(120_000),
        expires_in,
    };
    vec![
        Frame::Hello { version: 1, client_id: id.clone(), token: None, resume: None },
        Frame::Hello { version: 2, client_id: id.clone(), token: None, resume: None },
        Frame::Hello {
            version: 2,
            client_id: id.clone(),
            token: Token::new("eyJhbGciOiJIUzI1NiJ9.e30=.c2ln"),
            resume: Some(Resume { secret: secret.clone(), rx: 3 }),
        },
        // A HELLO line longer than MAX_LINE.
        Frame::Hello { version: 2, client_id: id, token: Token::new("t".repeat(2 * MAX_LINE)), resume: None },
        Frame::Welcome { session: session.clone(), interval: Duration::from_secs(1), max_missed: 3, resume: None },
        Frame::Welcome {
            session: session.clone(),
            interval: Duration::from_secs(1),
            max_missed: 3,
            resume: Some(terms(None)),
        },
        Frame::Welcome {
            session,
            interval: Duration::from_secs(1),
            max_missed: 3,
            resume: Some(terms(Some(Duration::from_secs(3600)))),
        },
        Frame::Pulse { seq: 1 },
        Frame::Alive { seq: 1 },
        Frame::data("hello\nworld"),
        Frame::Data { seq: Some(1), payload: "DATA 3 2\n".into() },
        Frame::Data { seq: Some(0), payload: Bytes::new() },
        Frame::Ack { seq: 1 },
        Frame::bye("quit"),
        Frame::error(ErrorCode::AuthExpired, "token expired"),
    ]
}

#[test]
fn a_stream_of_every_form_cut_at_any_byte_decodes_to_the_same_frames() {
    let frames = one_of_every_form();
    let wire = encode_all(&frames);
    for cut in 0..=wire.len() {
        let mut decoder = Decoder::new(MAX_PAYLOAD);
        let mut decoded = Vec::new();
        for piece in [&wire[..cut], &wire[cut..]] {
            decoder.extend(piece);
            drain(&mut decoder, &mut decoded).unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        }
        assert_eq!(decoded, frames, "cut at {cut}");
        assert_eq!(decoder.buffered(), 0);
    }
    // And one byte at a time.
    let mut decoder = Decoder::new(MAX_PAYLOAD);
    let mut decoded = Vec::new();
    for byte in &wire {
        decoder.extend(std::slice::from_ref(byte));
        drain(&mut decoder, &mut decoded).expect("a valid stream");
    }
    assert_eq!(decoded, frames);
}
