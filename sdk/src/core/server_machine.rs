//! One server connection as a pure machine, from its first byte to its close: the handshake,
//! welcome gating, dispatch of every frame, numbered and acknowledged messages (protocol 2),
//! and the bytes to write.
//!
//! The machine never touches a socket or reads the clock, and holds no randomness of its own:
//! the shell feeds it what the socket read ([`ServerMachine::handle_input`]), writes what it
//! asks for ([`ServerMachine::transmit`]), sleeps until [`ServerMachine::poll_timeout`] and then
//! calls [`ServerMachine::handle_timeout`], and passes its events
//! ([`ServerMachine::poll_event`]) to the hub. The hub answers a [`ServerMachineEvent::Hello`]
//! with [`ServerMachine::welcome`] or [`ServerMachine::refuse`], pulses, sends and closes.
//! Every method is cheap and never blocks, so the shell can share one machine between the hub
//! and the connection's task behind one lock.
//!
//! A version-1 connection behaves byte for byte as the version-1 server did: no options in
//! `WELCOME`, no numbers on `DATA`, no `ACK`.
//!
//! # Sessions, from the hub's side
//!
//! - A `HELLO 2` with `resume`: when the id's connection is still attached (a half-open link)
//!   and its [`ServerMachine::session`] matches the secret, the hub closes it with
//!   `ERROR resumed` ([`ServerMachine::close_with`]: its input stops at once, so nothing more
//!   is delivered) and takes its session ([`ServerMachine::take_session`]); otherwise it asks
//!   its [`SessionTable`](super::SessionTable) ([`SessionTable::resume`](super::SessionTable::resume)).
//!   Found: [`ServerSession::rotate_secret`], then [`ServerMachine::welcome`] with
//!   `resumed: true`. Not found: a new [`ServerSession`] (a session still kept for the id ends:
//!   [`SessionTable::take`](super::SessionTable::take)), welcomed with `resumed: false`.
//! - [`ServerMachineEvent::Closed`]: the hub takes the session and keeps it detached
//!   ([`SessionTable::detach`](super::SessionTable::detach)); a version-1 session has nothing
//!   to keep.
//! - A message for a peer: [`ServerMachine::send`] while it is online,
//!   [`SessionTable::send`](super::SessionTable::send) while its session is detached.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::delivery::{Receipt, DEFAULT_ACK_DELAY};
use super::online::Observation;
use super::sessions::{SendRefused, ServerSession};
use crate::error::ProtocolViolation;
use crate::protocol::{
    ClientId, DecodeError, Decoder, ErrorCode, Frame, Resume, Token, WelcomeResume, DEFAULT_MAX_PAYLOAD,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// Bytes reserved for a frame's control line before it is encoded (a pulse, an `ALIVE` or an
/// `ACK` fits many times over; a `WELCOME` with its options fits).
const LINE_ROOM: usize = 128;

/// The settings of one connection's machine.
///
/// ```
/// use std::time::Duration;
/// use pulsewire::core::ServerMachineConfig;
///
/// let config = ServerMachineConfig::default();
/// assert_eq!(config.handshake_timeout, Duration::from_secs(5));
/// assert_eq!(config.ack_delay, Duration::from_millis(20));
/// assert_eq!(config.max_payload, 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMachineConfig {
    /// The largest `DATA` payload accepted from the peer (default 1 MiB).
    pub max_payload: usize,
    /// How long the peer may take to send `HELLO` (default 5 s).
    pub handshake_timeout: Duration,
    /// How soon a client message handed to the application is acknowledged at the latest
    /// (default 20 ms; protocol 2).
    pub ack_delay: Duration,
    /// How long past its credential's expiry a peer may stay connected (default 25 s): then it
    /// gets `ERROR auth-expired` and is closed (its session is kept, for the resume with a new
    /// credential).
    pub auth_grace: Duration,
}

impl Default for ServerMachineConfig {
    fn default() -> Self {
        ServerMachineConfig {
            max_payload: DEFAULT_MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(5),
            ack_delay: DEFAULT_ACK_DELAY,
            auth_grace: DEFAULT_AUTH_GRACE,
        }
    }
}

/// The default of [`ServerMachineConfig::auth_grace`].
pub const DEFAULT_AUTH_GRACE: Duration = Duration::from_secs(25);

/// What the hub tells a peer in its `WELCOME`, besides the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeTerms {
    /// The pulse interval.
    pub interval: Duration,
    /// How many missed pulses are tolerated.
    pub max_missed: u32,
    /// How long the session is kept once the connection is lost (protocol 2).
    pub keep: Duration,
    /// Whether the session is the one the peer asked to resume (protocol 2): then every
    /// message above the peer's `rx` is written again. When false, the session must be new.
    pub resumed: bool,
    /// How long until the peer's credential expires, if it does (protocol 2).
    pub expires_in: Option<Duration>,
}

/// What the hub (and, through it, the application) must hear from a connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMachineEvent {
    /// A valid `HELLO`: answer with [`ServerMachine::welcome`] or [`ServerMachine::refuse`].
    /// Whatever the peer sends after it is held, not decoded, until then.
    Hello {
        /// The protocol version the peer speaks (1 or 2).
        version: u32,
        /// The id it asks for.
        client_id: ClientId,
        /// Its credential, if it sent one (protocol 2): for the authenticator, never logged.
        token: Option<Token>,
        /// The session it asks to resume, if any (protocol 2).
        resume: Option<Resume>,
    },
    /// A message from the peer for the application, in order and exactly once per session.
    Message {
        /// Its number in the session; 0 for a volatile message and for every version-1 message.
        seq: u64,
        /// The message.
        payload: Bytes,
    },
    /// The peer acknowledged the server's messages `1..=up_to`: they are delivered (protocol 2).
    Delivered {
        /// The highest message acknowledged.
        up_to: u64,
    },
    /// The connection is over. The machine wrote its last frame (an `ERROR`, say) into
    /// [`ServerMachine::transmit`]: the shell writes what is left there, then closes the
    /// socket. Comes once, last.
    Closed {
        /// Why.
        reason: ConnEnd,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEnd {
    /// The peer said `BYE`.
    Goodbye {
        /// The reason word it gave (possibly empty).
        reason: String,
    },
    /// The peer sent `ERROR`.
    PeerError {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        text: String,
    },
    /// The peer broke the protocol; it was sent `ERROR` with the violation's code.
    Violation(ProtocolViolation),
    /// No `HELLO` within the handshake timeout; the peer was sent `ERROR timeout`.
    HandshakeTimeout,
    /// The shell saw end-of-file or a socket error ([`ServerMachine::connection_lost`]).
    Lost,
    /// The server closed it: [`ServerMachine::refuse`] or [`ServerMachine::close_with`].
    ClosedByServer,
    /// The peer's credential expired (past the grace); it was sent `ERROR auth-expired`.
    CredentialExpired,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `HELLO`.
    Handshake,
    /// `HELLO` came; waiting for the hub's answer. Input is held undecoded.
    AwaitingWelcome,
    /// `WELCOME` went out: the peer may speak.
    Open,
    /// Over: input is ignored, sends are refused.
    Closed,
}

/// The machine's timers; each one's deadline is derived from the state it guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// No `HELLO` yet: `ERROR timeout` when it passes.
    Handshake,
    /// A client message is unacknowledged: `ACK` when it passes.
    Ack,
    /// The peer's credential expires (plus the grace): `ERROR auth-expired` when it passes.
    Expiry,
}

impl Timer {
    const ALL: [Timer; 3] = [Timer::Handshake, Timer::Ack, Timer::Expiry];
}

/// The bytes to write, and how many frames went in since the shell last emptied them.
#[derive(Debug, Default)]
struct Transmit {
    buf: BytesMut,
    frames: usize,
}

impl Transmit {
    fn push(&mut self, frame: &Frame) {
        if self.buf.is_empty() {
            self.settle();
        }
        // Room for a control line at once: encoding it piece by piece would grow the buffer
        // (an allocation each) two or three times.
        let payload = match frame {
            Frame::Data { payload, .. } => payload.len(),
            _ => 0,
        };
        self.buf.reserve(LINE_ROOM + payload);
        frame.encode(&mut self.buf);
        self.frames += 1;
    }

    /// Forgets what the socket took: the frame count restarts and the buffer is given back (a
    /// server holds thousands of connections, nearly all with nothing to write; a pulse's
    /// allocation costs far less than its write).
    fn settle(&mut self) {
        if self.buf.is_empty() {
            self.frames = 0;
            if self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
        }
    }
}

/// One server connection, pure: handshake, welcome gating, dispatch, numbered messages.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::{
///     ServerMachine, ServerMachineConfig, ServerMachineEvent, ServerSession, SessionLimits, WelcomeTerms,
/// };
/// use pulsewire::protocol::SessionId;
///
/// let t0 = Instant::now();
/// let mut machine = ServerMachine::new(t0, ServerMachineConfig::default());
/// assert_eq!(machine.poll_timeout(), Some(t0 + Duration::from_secs(5))); // the handshake timeout
///
/// // HELLO, and a message right behind it: the message waits for the WELCOME.
/// machine.handle_input(b"HELLO 2 desk-42\nDATA 2 1\nhi", t0);
/// let Some(ServerMachineEvent::Hello { client_id, .. }) = machine.poll_event() else { panic!() };
/// assert_eq!(machine.poll_event(), None);
///
/// // The hub opens a session and welcomes the peer; the held message is handled after it.
/// let session = ServerSession::new(SessionId::new("s1").unwrap(), client_id, [7; 16], SessionLimits::default());
/// let terms = WelcomeTerms {
///     interval: Duration::from_secs(1),
///     max_missed: 3,
///     keep: Duration::from_secs(120),
///     resumed: false,
///     expires_in: None,
/// };
/// machine.welcome(session, terms, t0);
/// let secret = "07".repeat(16);
/// let welcome = format!("WELCOME s1 1000 3 resumed=0 rx=0 resume={secret} keep=120000\n");
/// assert_eq!(machine.transmit().split().freeze(), welcome.as_bytes());
/// assert_eq!(machine.poll_event(), Some(ServerMachineEvent::Message { seq: 1, payload: "hi".into() }));
///
/// // The message is acknowledged within the ack delay; the server's own messages are numbered.
/// assert_eq!(machine.poll_timeout(), Some(t0 + Duration::from_millis(20)));
/// machine.handle_timeout(t0 + Duration::from_millis(20));
/// assert_eq!(machine.send("hello".into()), Ok(1));
/// assert_eq!(machine.transmit().split().freeze(), &b"ACK 1\nDATA 5 1\nhello"[..]);
/// ```
pub struct ServerMachine {
    phase: Phase,
    /// The peer's protocol version, from its `HELLO` (0 before).
    version: u32,
    ack_delay: Duration,
    decoder: Decoder,
    transmit: Transmit,
    /// Boxed, and only while events wait: a server holds thousands of quiet connections, and
    /// a box is a third of an empty queue's size.
    #[allow(clippy::box_collection)]
    events: Option<Box<VecDeque<ServerMachineEvent>>>,
    /// Until `WELCOME`: what only the handshake needs (boxed: gone for the connection's life).
    handshake: Option<Box<HandshakeState>>,
    /// When the peer's credential has expired, grace included.
    expiry: Option<Instant>,
    /// The session, from `WELCOME` on.
    session: Option<ServerSession>,
    last_heard: Option<Instant>,
    rtt: Option<Duration>,
    /// The last pulse the hub sent: its number and when.
    last_pulse: Option<(u64, Instant)>,
}

/// What a connection needs only until its `WELCOME`.
#[derive(Debug)]
struct HandshakeState {
    deadline: Instant,
    timeout: Duration,
    auth_grace: Duration,
    /// The `rx` of the peer's `HELLO`: the highest server message its application was given.
    resume_rx: Option<u64>,
}

impl std::fmt::Debug for ServerMachine {
    /// A summary: never the bytes to write (a `WELCOME` carries the resume secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMachine")
            .field("phase", &self.phase)
            .field("version", &self.version)
            .field("decoder", &self.decoder)
            .field("pending", &self.transmit.buf.len())
            .field("session", &self.session)
            .field("last_heard", &self.last_heard)
            .finish_non_exhaustive()
    }
}

impl ServerMachine {
    /// A connection accepted at `now`: it must send `HELLO` within the handshake timeout.
    pub fn new(now: Instant, config: ServerMachineConfig) -> ServerMachine {
        let handshake = HandshakeState {
            deadline: now + config.handshake_timeout,
            timeout: config.handshake_timeout,
            auth_grace: config.auth_grace,
            resume_rx: None,
        };
        ServerMachine {
            phase: Phase::Handshake,
            version: 0,
            ack_delay: config.ack_delay,
            decoder: Decoder::new(config.max_payload),
            transmit: Transmit::default(),
            events: None,
            handshake: Some(Box::new(handshake)),
            expiry: None,
            session: None,
            last_heard: None,
            rtt: None,
            last_pulse: None,
        }
    }

    /// Bytes the socket read at `now`. Before the hub answered the `HELLO` they are held; after
    /// the connection closed they are ignored.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.decoder.extend(bytes);
        self.process(now);
    }

    /// A region to read the socket into without a copy (a large payload goes straight into
    /// the decoder's buffer); report how much was read with [`ServerMachine::filled`].
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.decoder.read_buf()
    }

    /// The socket put `n` bytes into the region of [`ServerMachine::read_buf`] at `now`: as
    /// [`ServerMachine::handle_input`] with those bytes.
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.decoder.filled(n);
        if self.phase == Phase::Closed {
            self.decoder = Decoder::new(self.decoder.max_payload());
            return;
        }
        self.process(now);
    }

    /// How many received bytes wait for the rest of their frame, or for the hub's answer to
    /// the `HELLO`.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Whether the shell should read the socket: not while the hub has not answered the
    /// `HELLO` (what the peer sends waits for that, in the socket rather than in memory), nor
    /// once the connection is closed.
    pub fn wants_input(&self) -> bool {
        matches!(self.phase, Phase::Handshake | Phase::Open)
    }

    /// Call when `now` reaches [`ServerMachine::poll_timeout`]: the handshake times out, or an
    /// `ACK` is written. Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if self.deadline(timer).is_some_and(|at| at <= now) {
                match timer {
                    Timer::Handshake => {
                        let timeout = self.handshake.as_ref().map_or(Duration::ZERO, |h| h.timeout);
                        let text = format!("no HELLO within {} ms", timeout.as_millis());
                        self.end(ConnEnd::HandshakeTimeout, Some(Frame::error(ErrorCode::Timeout, text)));
                    }
                    Timer::Ack => self.write_ack(),
                    Timer::Expiry => {
                        let text = "the credential has expired: reconnect with a new one";
                        self.end(ConnEnd::CredentialExpired, Some(Frame::error(ErrorCode::AuthExpired, text)));
                    }
                }
            }
        }
    }

    /// When the handshake must be over (the `HELLO` in, and the peer authenticated), until
    /// the peer is welcomed or the connection ends.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        self.handshake.as_ref().map(|handshake| handshake.deadline)
    }

    /// The earliest deadline of the machine's timers, if one runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Timer::ALL.into_iter().filter_map(|timer| self.deadline(timer)).min()
    }

    fn deadline(&self, timer: Timer) -> Option<Instant> {
        match (timer, self.phase) {
            (Timer::Handshake, Phase::Handshake) => self.handshake.as_ref().map(|h| h.deadline),
            (Timer::Ack, Phase::Open) => self.session.as_ref()?.inbound.ack_deadline(),
            (Timer::Expiry, Phase::Open) => self.expiry,
            _ => None,
        }
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<ServerMachineEvent> {
        let event = self.events.as_mut()?.pop_front();
        if event.is_none() {
            // Drained: a server with thousands of quiet peers keeps no queue per peer.
            self.events = None;
        }
        event
    }

    /// Whether events wait to be taken.
    pub fn has_events(&self) -> bool {
        self.events.as_ref().is_some_and(|events| !events.is_empty())
    }

    fn emit(&mut self, event: ServerMachineEvent) {
        self.events.get_or_insert_with(Box::default).push_back(event);
    }

    /// The bytes to write, in order: the shell writes from the front and advances the buffer
    /// past what the socket took.
    pub fn transmit(&mut self) -> &mut BytesMut {
        self.transmit.settle();
        &mut self.transmit.buf
    }

    /// The socket took the first `n` bytes of [`ServerMachine::transmit`].
    pub fn written(&mut self, n: usize) {
        let n = n.min(self.transmit.buf.len());
        self.transmit.buf.advance(n);
        self.transmit.settle();
    }

    /// How many frames went into [`ServerMachine::transmit`] since it was last empty: the
    /// shell's measure of a peer that does not read (its stall rule).
    pub fn queued_frames(&self) -> usize {
        if self.transmit.buf.is_empty() {
            0
        } else {
            self.transmit.frames
        }
    }

    /// The hub's answer to [`ServerMachineEvent::Hello`]: writes `WELCOME` for `session`, then
    /// (protocol 2) every message of the session the peer has not had, in order, then handles
    /// what the peer sent meanwhile.
    ///
    /// Protocol 1 gets the version-1 `WELCOME`, without options. Protocol 2 gets
    /// `resumed= rx= resume= keep= [exp=]`: when `terms.resumed`, the messages at or below the
    /// `rx` of the peer's `HELLO` are released (a [`ServerMachineEvent::Delivered`]) and the
    /// rest are written again; a session welcomed with `resumed: false` must be new. Call
    /// [`ServerSession::rotate_secret`] before welcoming a session again: each `WELCOME` hands
    /// out a fresh secret.
    ///
    /// A machine that closed meanwhile writes nothing and keeps `session` for
    /// [`ServerMachine::take_session`].
    pub fn welcome(&mut self, mut session: ServerSession, terms: WelcomeTerms, now: Instant) {
        if self.phase != Phase::AwaitingWelcome {
            debug_assert_eq!(self.phase, Phase::Closed, "welcome() answers a Hello, once");
            debug_assert!(self.session.is_none(), "welcome() answers a Hello, once");
            if self.session.is_none() {
                session.outbound.connection_lost();
                self.session = Some(session);
            }
            return;
        }
        let WelcomeTerms { interval, max_missed, keep, resumed, expires_in } = terms;
        let resume = if self.version == MIN_PROTOCOL_VERSION {
            None
        } else {
            let rx = if resumed { self.handshake.as_ref().and_then(|h| h.resume_rx).unwrap_or(0) } else { 0 };
            if resumed {
                match session.outbound.resume(rx) {
                    Ok(released) => {
                        if !released.is_empty() {
                            self.emit(ServerMachineEvent::Delivered { up_to: session.outbound.acked() });
                        }
                    }
                    Err(above) => {
                        self.session = Some(session);
                        return self.violation(malformed("HELLO", format!("resume rx: {above}")));
                    }
                }
            } else {
                debug_assert!(
                    session.outbound.last() == 0 && session.inbound.delivered() == 0,
                    "a session that is not resumed is new"
                );
            }
            debug_assert!(!session.secret_handed_out, "rotate the secret before welcoming a session again");
            session.secret_handed_out = true;
            session.inbound.told();
            Some(WelcomeResume {
                resumed,
                rx: session.inbound.delivered(),
                secret: session.secret().clone(),
                keep,
                expires_in,
            })
        };
        self.transmit.push(&Frame::Welcome { session: session.id().clone(), interval, max_missed, resume });
        self.session = Some(session);
        self.phase = Phase::Open;
        let grace = self.handshake.take().map_or(DEFAULT_AUTH_GRACE, |handshake| handshake.auth_grace);
        self.expiry = expires_in.map(|left| now + left + grace);
        self.write_unwritten();
        self.process(now);
    }

    /// Refuses the peer (the hub's other answer to a `HELLO`, or at any time): writes
    /// `ERROR <code> <text>` and closes.
    pub fn refuse(&mut self, code: ErrorCode, text: &str) {
        self.close_with(Frame::error(code, text));
    }

    /// Closes the connection with `frame` as its last (`ERROR timeout`, `ERROR replaced`,
    /// `ERROR resumed`, `BYE shutdown`, …). A closed machine ignores it.
    pub fn close_with(&mut self, frame: Frame) {
        if self.phase != Phase::Closed {
            self.end(ConnEnd::ClosedByServer, Some(frame));
        }
    }

    /// Closes the connection without a last frame (a peer that does not read gets nothing
    /// more). A closed machine ignores it.
    pub fn close(&mut self) {
        if self.phase != Phase::Closed {
            self.end(ConnEnd::ClosedByServer, None);
        }
    }

    /// A pulse from the hub's pulse loop at `now`: writes `PULSE <seq>` and remembers it, to
    /// time its `ALIVE`. Ignored unless the connection is open.
    pub fn pulse(&mut self, seq: u64, now: Instant) {
        if self.phase == Phase::Open {
            self.last_pulse = Some((seq, now));
            self.transmit.push(&Frame::Pulse { seq });
        }
    }

    /// A message from the server's application. Protocol 2: numbered in the session, kept until
    /// the peer acknowledges it and written at once; returns its number, or refuses it with the
    /// payload back when the session holds its limit ([`SendRefused::Full`]). Protocol 1:
    /// written as `DATA <len>`, unnumbered; returns 0. Refused ([`SendRefused::Closed`]) before
    /// `WELCOME`, and once closed unless a protocol 2 session is still in the machine (then the
    /// message is queued in it, for the resume).
    pub fn send(&mut self, payload: Bytes) -> Result<u64, SendRefused> {
        if let (Phase::Closed, Some(session)) = (self.phase, self.session.as_mut()) {
            // Closed, but its session not taken yet (its leave is on the way to the hub): a
            // protocol 2 session keeps the message for the resume, as a detached one would.
            if self.version > MIN_PROTOCOL_VERSION {
                return session.queue(payload);
            }
        }
        let (Phase::Open, Some(session)) = (self.phase, self.session.as_mut()) else {
            return Err(SendRefused::Closed(payload));
        };
        if self.version == MIN_PROTOCOL_VERSION {
            self.transmit.push(&Frame::data(payload));
            return Ok(0);
        }
        let seq = session.queue(payload)?;
        self.write_unwritten();
        Ok(seq)
    }

    /// The shell saw end-of-file or a socket error: the connection is over (nothing more can
    /// be written; what waited in [`ServerMachine::transmit`] is dropped). The session stays for
    /// [`ServerMachine::take_session`].
    pub fn connection_lost(&mut self, now: Instant) {
        // Nothing here depends on the time: `now` keeps the shape every machine shares.
        let _ = now;
        self.transmit.buf.clear();
        if self.phase != Phase::Closed {
            self.end(ConnEnd::Lost, None);
        }
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The peer's protocol version, once its `HELLO` came.
    pub fn version(&self) -> Option<u32> {
        (self.version != 0).then_some(self.version)
    }

    /// The session, from `WELCOME` on.
    pub fn session(&self) -> Option<&ServerSession> {
        self.session.as_ref()
    }

    /// Takes the session out of a closed machine, with everything delivered and unacknowledged
    /// in it, for the hub to keep detached (protocol 2) or to end. `None` while the connection
    /// is open: closing comes first (that stops its input, so nothing more is delivered).
    pub fn take_session(&mut self) -> Option<ServerSession> {
        if self.phase != Phase::Closed {
            return None;
        }
        self.session.take()
    }

    /// When the peer's last frame arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// The round trip of the last pulse the peer answered, if its answer came.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// [`ServerMachine::last_heard`] and [`ServerMachine::rtt`], for the online list.
    pub fn observation(&self) -> Observation {
        Observation { last_heard: self.last_heard, rtt: self.rtt }
    }

    /// Decodes and handles frames while the phase lets it.
    fn process(&mut self, now: Instant) {
        while matches!(self.phase, Phase::Handshake | Phase::Open) {
            let next = if self.version == MIN_PROTOCOL_VERSION {
                // Version 1 refuses the version-2 forms exactly as the version-1 decoder did.
                self.decoder.next_version_1_frame()
            } else {
                self.decoder.next_frame()
            };
            match next {
                Ok(None) => return,
                Ok(Some(frame)) if self.phase == Phase::Handshake => self.handshake(frame, now),
                Ok(Some(frame)) => self.dispatch(frame, now),
                Err(error) => self.violation(ProtocolViolation::Decode(error)),
            }
        }
    }

    fn handshake(&mut self, frame: Frame, now: Instant) {
        let Frame::Hello { version, client_id, token, resume } = frame else {
            let text = format!("expected HELLO, got {}", frame.verb());
            let violation = ProtocolViolation::Unexpected { verb: frame.verb() };
            return self.end(ConnEnd::Violation(violation), Some(Frame::error(ErrorCode::Unexpected, text)));
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            // The decoder refuses other versions already; this keeps the machine safe without it.
            return self
                .violation(ProtocolViolation::Decode(DecodeError::UnsupportedVersion { version: u64::from(version) }));
        }
        self.version = version;
        self.last_heard = Some(now);
        if let Some(handshake) = self.handshake.as_mut() {
            handshake.resume_rx = resume.as_ref().map(|resume| resume.rx);
        }
        self.phase = Phase::AwaitingWelcome;
        self.emit(ServerMachineEvent::Hello { version, client_id, token, resume });
    }

    fn dispatch(&mut self, frame: Frame, now: Instant) {
        self.last_heard = Some(now);
        match frame {
            Frame::Pulse { seq } => {
                // Everything the peer sent before this pulse was handed over: its ACK goes first.
                self.write_ack();
                self.transmit.push(&Frame::Alive { seq });
            }
            Frame::Alive { seq } => {
                if let Some((_, sent)) = self.last_pulse.filter(|&(last, _)| last == seq) {
                    self.rtt = Some(now.saturating_duration_since(sent));
                    // It answered a pulse written after the `WELCOME`: it has the new secret.
                    if let Some(session) = self.session.as_mut() {
                        session.forget_previous_secret();
                    }
                }
            }
            Frame::Data { seq: None, payload } if self.version == MIN_PROTOCOL_VERSION => {
                self.emit(ServerMachineEvent::Message { seq: 0, payload });
            }
            Frame::Data { seq: None, .. } => self.violation(malformed("DATA", "a version 2 message needs a number")),
            Frame::Data { seq: Some(seq), payload } => self.receive(seq, payload, now),
            Frame::Ack { seq } => self.acknowledged(seq),
            Frame::Bye { reason } => self.end(ConnEnd::Goodbye { reason }, None),
            Frame::Error { code, text } => self.end(ConnEnd::PeerError { code, text }, None),
            other @ (Frame::Hello { .. } | Frame::Welcome { .. }) => {
                self.violation(ProtocolViolation::Unexpected { verb: other.verb() });
            }
        }
    }

    /// A numbered message (version 2; version 1's decoding refused the form already).
    fn receive(&mut self, seq: u64, payload: Bytes, now: Instant) {
        let Some(session) = self.session.as_mut() else { return };
        match session.inbound.receive(seq, now, self.ack_delay) {
            Ok(Receipt::Deliver) => self.emit(ServerMachineEvent::Message { seq, payload }),
            Ok(Receipt::Volatile) => self.emit(ServerMachineEvent::Message { seq: 0, payload }),
            Ok(Receipt::Replay) => {}
            Err(gap) => self.violation(malformed("DATA", gap.to_string())),
        }
    }

    /// `ACK <seq>` (version 2; version 1's decoding refused it already).
    fn acknowledged(&mut self, seq: u64) {
        let Some(session) = self.session.as_mut() else { return };
        match session.outbound.ack(seq) {
            Ok(released) if released.is_empty() => {}
            Ok(_) => {
                let up_to = session.outbound.acked();
                self.emit(ServerMachineEvent::Delivered { up_to });
            }
            Err(above) => self.violation(malformed("ACK", above.to_string())),
        }
    }

    /// Writes `ACK` when a client message is unacknowledged.
    fn write_ack(&mut self) {
        if let Some(seq) = self.session.as_mut().and_then(|session| session.inbound.take_ack()) {
            self.transmit.push(&Frame::Ack { seq });
        }
    }

    /// Writes every message of the session the connection has not written yet, in order.
    fn write_unwritten(&mut self) {
        let Some(session) = self.session.as_mut() else { return };
        while let Some(message) = session.outbound.next_unwritten() {
            let seq = message.seq;
            self.transmit.push(&Frame::Data { seq: Some(seq), payload: message.payload.clone() });
            session.outbound.written(seq);
        }
    }

    fn violation(&mut self, violation: ProtocolViolation) {
        let farewell = Frame::error(violation.code(), violation.to_string());
        self.end(ConnEnd::Violation(violation), Some(farewell));
    }

    /// Closes the connection: `last` is its last frame, input stops, and the session counts
    /// nothing as written on the connection that may resume it.
    fn end(&mut self, reason: ConnEnd, last: Option<Frame>) {
        if let Some(frame) = last {
            self.transmit.push(&frame);
        }
        self.phase = Phase::Closed;
        self.handshake = None;
        // What the peer sent after this is never decoded: its memory goes now.
        self.decoder = Decoder::new(self.decoder.max_payload());
        if let Some(session) = self.session.as_mut() {
            session.outbound.connection_lost();
        }
        self.emit(ServerMachineEvent::Closed { reason });
    }
}

fn malformed(verb: &'static str, detail: impl Into<String>) -> ProtocolViolation {
    ProtocolViolation::Malformed { verb, detail: detail.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SessionLimits;
    use crate::protocol::{SessionId, MAX_HELLO_LINE};

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const NS: Duration = Duration::from_nanos(1);
    const ACK_DELAY: Duration = DEFAULT_ACK_DELAY;

    /// The secret `ServerSession::new` makes of `[byte; 16]`.
    fn secret_text(byte: u8) -> String {
        format!("{byte:02x}").repeat(16)
    }

    fn config() -> ServerMachineConfig {
        ServerMachineConfig::default()
    }

    fn terms(resumed: bool) -> WelcomeTerms {
        WelcomeTerms { interval: MS(1000), max_missed: 3, keep: Duration::from_secs(120), resumed, expires_in: None }
    }

    fn new_session(name: &str, limits: SessionLimits) -> ServerSession {
        ServerSession::new(SessionId::new("s1").unwrap(), ClientId::new(name).unwrap(), [7; 16], limits)
    }

    /// What the machine wrote since the last call, as text (payloads are ASCII in these tests).
    fn sent(machine: &mut ServerMachine) -> String {
        String::from_utf8_lossy(&machine.transmit().split()).into_owned()
    }

    fn events(machine: &mut ServerMachine) -> Vec<ServerMachineEvent> {
        std::iter::from_fn(|| machine.poll_event()).collect()
    }

    fn message(seq: u64, payload: &'static str) -> ServerMachineEvent {
        ServerMachineEvent::Message { seq, payload: Bytes::from_static(payload.as_bytes()) }
    }

    fn closed_by(machine: &mut ServerMachine) -> ConnEnd {
        match events(machine).pop() {
            Some(ServerMachineEvent::Closed { reason }) => reason,
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    /// A machine whose peer sent `hello` at `t0` and was welcomed into `session` with `terms`;
    /// the WELCOME and the events so far are consumed (and returned).
    fn welcomed(
        t0: Instant,
        hello: &str,
        session: ServerSession,
        terms: WelcomeTerms,
    ) -> (ServerMachine, String, Vec<ServerMachineEvent>) {
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(hello.as_bytes(), t0);
        assert!(matches!(machine.poll_event(), Some(ServerMachineEvent::Hello { .. })), "{hello}");
        machine.welcome(session, terms, t0);
        let wire = sent(&mut machine);
        let events = events(&mut machine);
        (machine, wire, events)
    }

    fn v1(t0: Instant) -> ServerMachine {
        welcomed(t0, "HELLO 1 desk-42\n", new_session("desk-42", SessionLimits::default()), terms(false)).0
    }

    fn v2(t0: Instant) -> ServerMachine {
        v2_with(t0, SessionLimits::default())
    }

    fn v2_with(t0: Instant, limits: SessionLimits) -> ServerMachine {
        welcomed(t0, "HELLO 2 desk-42\n", new_session("desk-42", limits), terms(false)).0
    }

    #[test]
    fn the_handshake_times_out_exactly_at_the_deadline_and_not_before() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        let deadline = t0 + Duration::from_secs(5);
        assert_eq!(machine.poll_timeout(), Some(deadline));
        machine.handle_input(b"HELLO 2 des", t0 + Duration::from_secs(4));
        machine.handle_timeout(deadline - NS);
        assert!(!machine.is_closed());
        assert_eq!(sent(&mut machine), "");
        machine.handle_timeout(deadline);
        assert_eq!(sent(&mut machine), "ERROR timeout no HELLO within 5000 ms\n");
        assert_eq!(closed_by(&mut machine), ConnEnd::HandshakeTimeout);
        assert_eq!(machine.poll_timeout(), None);
        machine.handle_input(b"k-42\n", deadline);
        assert_eq!((events(&mut machine), sent(&mut machine)), (vec![], String::new()), "too late");
    }

    #[test]
    fn a_hello_stops_the_handshake_timer() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 1 desk-42\n", t0 + MS(10));
        assert_eq!(machine.poll_timeout(), None);
        machine.handle_timeout(t0 + Duration::from_secs(60));
        assert!(!machine.is_closed(), "the hub may take its time to answer");
        assert_eq!(machine.version(), Some(1));
        assert_eq!(machine.last_heard(), Some(t0 + MS(10)));
    }

    #[test]
    fn a_first_frame_that_is_not_hello_is_unexpected() {
        let t0 = Instant::now();
        for (input, verb) in [("DATA 5\nhello", "DATA"), ("PULSE 1\n", "PULSE"), ("BYE\n", "BYE")] {
            let mut machine = ServerMachine::new(t0, config());
            machine.handle_input(input.as_bytes(), t0);
            assert_eq!(sent(&mut machine), format!("ERROR unexpected expected HELLO, got {verb}\n"));
            assert_eq!(closed_by(&mut machine), ConnEnd::Violation(ProtocolViolation::Unexpected { verb }));
        }
    }

    #[test]
    fn a_decode_error_before_hello_is_answered_with_its_code_and_text() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 1 bad/id\n", t0);
        let text = DecodeError::BadClientId.to_string();
        assert_eq!(sent(&mut machine), format!("ERROR bad-id {text}\n"));
        assert_eq!(closed_by(&mut machine), ConnEnd::Violation(ProtocolViolation::Decode(DecodeError::BadClientId)));
    }

    #[test]
    fn frames_before_welcome_are_held_and_handled_after_it_in_order() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 2 desk-42\nPULSE 7\nDATA 1 1\na", t0);
        assert!(!machine.wants_input(), "the socket keeps the rest until WELCOME");
        machine.handle_input(b"DATA 1 2\nbPULSE 8\nNOT A FRAME\n", t0 + MS(1));
        let hello = events(&mut machine);
        assert!(matches!(&hello[..], [ServerMachineEvent::Hello { version: 2, .. }]), "{hello:?}");
        assert_eq!(sent(&mut machine), "", "nothing is answered before WELCOME");
        assert_eq!(machine.poll_timeout(), None);
        machine.welcome(new_session("desk-42", SessionLimits::default()), terms(false), t0 + MS(5));
        let secret = secret_text(7);
        assert_eq!(
            sent(&mut machine),
            format!(
                "WELCOME s1 1000 3 resumed=0 rx=0 resume={secret} keep=120000\nALIVE 7\nACK 2\nALIVE 8\n\
                 ERROR malformed unknown verb \"NOT\"\n"
            )
        );
        let after = events(&mut machine);
        assert_eq!(after[..2], [message(1, "a"), message(2, "b")]);
        assert!(matches!(after[2], ServerMachineEvent::Closed { reason: ConnEnd::Violation(_) }));
    }

    #[test]
    fn a_v1_peer_is_served_byte_for_byte_as_before() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 1 desk-42\nPULSE 7\n", t0);
        let hello = events(&mut machine);
        let id = ClientId::new("desk-42").unwrap();
        assert_eq!(hello, vec![ServerMachineEvent::Hello { version: 1, client_id: id, token: None, resume: None }]);
        machine.welcome(new_session("desk-42", SessionLimits::default()), terms(false), t0);
        assert_eq!(sent(&mut machine), "WELCOME s1 1000 3\nALIVE 7\n", "no options, then the held pulse");
        machine.handle_input(b"DATA 5\nhelloDATA 0\n", t0 + MS(1));
        assert_eq!(events(&mut machine), vec![message(0, "hello"), message(0, "")]);
        machine.handle_input(b"PULSE 9\n", t0 + MS(2));
        assert_eq!(sent(&mut machine), "ALIVE 9\n", "no ACK in version 1");
        assert_eq!(machine.poll_timeout(), None, "no ack timer in version 1");
        assert_eq!(machine.send("hi".into()), Ok(0));
        assert_eq!(machine.send("yo".into()), Ok(0));
        machine.pulse(1, t0 + MS(3));
        assert_eq!(sent(&mut machine), "DATA 2\nhiDATA 2\nyoPULSE 1\n");
        machine.handle_input(b"ALIVE 1\n", t0 + MS(10));
        assert_eq!(machine.rtt(), Some(MS(7)));
        machine.handle_input(b"BYE quit\n", t0 + MS(11));
        assert_eq!(closed_by(&mut machine), ConnEnd::Goodbye { reason: "quit".into() });
        assert_eq!(sent(&mut machine), "", "a goodbye is not answered");
    }

    #[test]
    fn a_v1_peer_may_send_neither_numbered_data_nor_ack() {
        let t0 = Instant::now();
        for (input, answer) in [
            ("DATA 1 1\nx", "ERROR malformed bad DATA line: expected DATA <len>\n"),
            ("ACK 1\n", "ERROR malformed unknown verb \"ACK\"\n"),
        ] {
            let mut machine = v1(t0);
            machine.handle_input(input.as_bytes(), t0);
            assert_eq!(sent(&mut machine), answer, "{input}");
            assert!(matches!(closed_by(&mut machine), ConnEnd::Violation(ProtocolViolation::Decode(_))));
        }
    }

    #[test]
    fn a_v2_peer_may_not_send_unnumbered_data() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1\nx", t0);
        assert_eq!(sent(&mut machine), "ERROR malformed bad DATA: a version 2 message needs a number\n");
        assert!(matches!(closed_by(&mut machine), ConnEnd::Violation(ProtocolViolation::Malformed { .. })));
    }

    #[test]
    fn a_v2_welcome_carries_the_session_options() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 2 desk-42 token=abc.def\n", t0);
        let Some(ServerMachineEvent::Hello { token, resume: None, .. }) = machine.poll_event() else { panic!() };
        assert_eq!(token.as_ref().map(Token::as_str), Some("abc.def"));
        let terms = WelcomeTerms { expires_in: Some(Duration::from_secs(3600)), ..terms(false) };
        machine.welcome(new_session("desk-42", SessionLimits::default()), terms, t0);
        let secret = secret_text(7);
        assert_eq!(
            sent(&mut machine),
            format!("WELCOME s1 1000 3 resumed=0 rx=0 resume={secret} keep=120000 exp=3600\n")
        );
    }

    #[test]
    fn a_credential_that_expires_ends_the_connection_after_the_grace_and_keeps_the_session() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(25);
        let mut machine = ServerMachine::new(t0, ServerMachineConfig { auth_grace: grace, ..config() });
        machine.handle_input(b"HELLO 2 desk-42 token=abc.def\n", t0);
        let _ = machine.poll_event();
        let terms = WelcomeTerms { expires_in: Some(Duration::from_secs(10)), ..terms(false) };
        machine.welcome(new_session("desk-42", SessionLimits::default()), terms, t0);
        let _ = sent(&mut machine);
        let end = t0 + Duration::from_secs(10) + grace;
        assert_eq!(machine.poll_timeout(), Some(end));
        // Pulses and answers meanwhile change nothing.
        machine.pulse(1, t0 + Duration::from_secs(30));
        machine.handle_input(b"ALIVE 1\n", t0 + Duration::from_secs(30));
        machine.handle_timeout(end - NS);
        assert!(!machine.is_closed());
        let _ = sent(&mut machine);
        machine.handle_timeout(end);
        assert_eq!(sent(&mut machine), "ERROR auth-expired the credential has expired: reconnect with a new one\n");
        assert_eq!(closed_by(&mut machine), ConnEnd::CredentialExpired);
        assert!(machine.take_session().is_some(), "the session is there to keep");
    }

    #[test]
    fn a_credential_without_expiry_sets_no_timer() {
        let t0 = Instant::now();
        let machine = v2(t0);
        assert_eq!(machine.poll_timeout(), None);
    }

    #[test]
    fn messages_to_a_v2_peer_are_numbered_and_written_at_once() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        assert_eq!(machine.send("one".into()), Ok(1));
        assert_eq!(sent(&mut machine), "DATA 3 1\none");
        assert_eq!(machine.send("two".into()), Ok(2));
        assert_eq!(machine.send("".into()), Ok(3));
        assert_eq!(sent(&mut machine), "DATA 3 2\ntwoDATA 0 3\n");
        assert_eq!(machine.session().map(ServerSession::queued), Some(3), "kept until acknowledged");
    }

    #[test]
    fn client_messages_are_delivered_in_order_and_volatile_ones_uncounted() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 0\nvDATA 1 2\nb", t0);
        assert_eq!(events(&mut machine), vec![message(1, "a"), message(0, "v"), message(2, "b")]);
        assert_eq!(machine.session().map(ServerSession::delivered), Some(2));
    }

    #[test]
    fn a_replayed_message_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 2\nb", t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 2\nbDATA 1 3\nc", t0);
        assert_eq!(events(&mut machine), vec![message(1, "a"), message(2, "b"), message(3, "c")]);
        assert_eq!(machine.session().map(ServerSession::replays), Some(2));
        assert!(!machine.is_closed(), "a replay is no error");
    }

    #[test]
    fn a_sequence_gap_is_refused_with_error_malformed() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 3\ncPULSE 1\n", t0);
        assert_eq!(sent(&mut machine), "ERROR malformed bad DATA: sequence gap: expected message 2, got 3\n");
        let all = events(&mut machine);
        assert_eq!(all[0], message(1, "a"));
        assert!(
            matches!(&all[1], ServerMachineEvent::Closed { reason: ConnEnd::Violation(v) } if v.code() == ErrorCode::Malformed)
        );
        assert_eq!(all.len(), 2, "nothing after the gap is handled");
    }

    #[test]
    fn an_ack_above_what_was_sent_is_refused_with_error_malformed() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.send("one".into()).unwrap();
        sent(&mut machine);
        machine.handle_input(b"ACK 2\n", t0);
        assert_eq!(sent(&mut machine), "ERROR malformed bad ACK: acknowledgement of message 2 but only 1 were sent\n");
        assert!(matches!(
            closed_by(&mut machine),
            ConnEnd::Violation(ProtocolViolation::Malformed { verb: "ACK", .. })
        ));
        assert_eq!(machine.take_session().map(|s| s.queued()), Some(1), "nothing released");
    }

    #[test]
    fn an_ack_releases_messages_and_reports_them_delivered() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        for payload in ["a", "b", "c"] {
            machine.send(payload.into()).unwrap();
        }
        machine.handle_input(b"ACK 2\n", t0);
        assert_eq!(events(&mut machine), vec![ServerMachineEvent::Delivered { up_to: 2 }]);
        assert_eq!(machine.session().map(|s| (s.queued(), s.acked())), Some((1, 2)));
        machine.handle_input(b"ACK 1\nACK 2\n", t0);
        assert_eq!(events(&mut machine), vec![], "an old ack releases nothing and reports nothing");
        assert!(!machine.is_closed());
        machine.handle_input(b"ACK 3\n", t0);
        assert_eq!(events(&mut machine), vec![ServerMachineEvent::Delivered { up_to: 3 }]);
    }

    #[test]
    fn an_ack_is_written_right_before_the_next_alive() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 2\nbPULSE 4\n", t0);
        assert_eq!(sent(&mut machine), "ACK 2\nALIVE 4\n");
        assert_eq!(machine.poll_timeout(), None, "the ack is written: no timer left");
        machine.handle_input(b"PULSE 5\n", t0 + MS(1));
        assert_eq!(sent(&mut machine), "ALIVE 5\n", "nothing new to acknowledge");
        machine.handle_input(b"DATA 1 0\nvPULSE 6\n", t0 + MS(2));
        assert_eq!(sent(&mut machine), "ALIVE 6\n", "a volatile message is not acknowledged");
    }

    #[test]
    fn an_ack_is_written_exactly_at_the_ack_delay_and_not_before() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        let t1 = t0 + MS(100);
        machine.handle_input(b"DATA 1 1\na", t1);
        assert_eq!(machine.poll_timeout(), Some(t1 + ACK_DELAY));
        machine.handle_input(b"DATA 1 2\nb", t1 + MS(5));
        assert_eq!(machine.poll_timeout(), Some(t1 + ACK_DELAY), "the first unacknowledged message sets it");
        machine.handle_timeout(t1 + ACK_DELAY - NS);
        assert_eq!(sent(&mut machine), "");
        machine.handle_timeout(t1 + ACK_DELAY);
        assert_eq!(sent(&mut machine), "ACK 2\n");
        assert_eq!(machine.poll_timeout(), None);
        machine.handle_timeout(t1 + ACK_DELAY * 2);
        assert_eq!(sent(&mut machine), "", "an ack is never repeated");
    }

    /// A session that went through one connection: the peer sent 2 messages (delivered), the
    /// server wrote 4 and the peer acknowledged 1 of them; then the connection was lost.
    fn session_after_one_connection(t0: Instant) -> ServerSession {
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 2\nb", t0);
        for payload in ["m1", "m2", "m3", "m4"] {
            machine.send(payload.into()).unwrap();
        }
        machine.handle_input(b"ACK 1\n", t0);
        machine.connection_lost(t0);
        let mut session = machine.take_session().unwrap();
        session.rotate_secret([8; 16]);
        session
    }

    #[test]
    fn a_resume_writes_again_every_message_above_rx_in_order_and_nothing_at_or_below_it() {
        let t0 = Instant::now();
        let mut session = session_after_one_connection(t0);
        // Queued while detached: written after the replay.
        assert_eq!(session.queue("m5".into()), Ok(5));
        let hello = format!("HELLO 2 desk-42 resume={} rx=2\nDATA 1 2\nbDATA 1 3\nc", secret_text(7));
        let (mut machine, wire, events) = welcomed(t0, &hello, session, terms(true));
        let secret = secret_text(8);
        assert_eq!(
            wire,
            format!(
                "WELCOME s1 1000 3 resumed=1 rx=2 resume={secret} keep=120000\nDATA 2 3\nm3DATA 2 4\nm4DATA 2 5\nm5"
            )
        );
        assert_eq!(events, vec![ServerMachineEvent::Delivered { up_to: 2 }, message(3, "c")], "2 was a replay");
        assert_eq!(machine.session().map(|s| (s.queued(), s.replays())), Some((3, 1)));
        assert_eq!(machine.send("m6".into()), Ok(6));
        assert_eq!(sent(&mut machine), "DATA 2 6\nm6");
    }

    #[test]
    fn a_resume_with_rx_above_what_was_sent_is_refused() {
        let t0 = Instant::now();
        let session = session_after_one_connection(t0);
        let hello = format!("HELLO 2 desk-42 resume={} rx=9\n", secret_text(7));
        let (mut machine, wire, events) = welcomed(t0, &hello, session, terms(true));
        assert_eq!(wire, "ERROR malformed bad HELLO: resume rx: acknowledgement of message 9 but only 4 were sent\n");
        assert!(matches!(events[..], [ServerMachineEvent::Closed { reason: ConnEnd::Violation(_) }]));
        let kept = machine.take_session().unwrap();
        assert_eq!((kept.queued(), kept.acked()), (3, 1), "the session is untouched, for the hub to keep or end");
    }

    #[test]
    fn send_hands_the_payload_back_when_the_session_holds_its_limit_of_messages() {
        let t0 = Instant::now();
        let mut machine = v2_with(t0, SessionLimits { max_messages: 2, max_bytes: 1 << 20 });
        assert_eq!(machine.send("a".into()), Ok(1));
        assert_eq!(machine.send("b".into()), Ok(2));
        assert_eq!(machine.send("c".into()), Err(SendRefused::Full("c".into())));
        sent(&mut machine);
        machine.handle_input(b"ACK 1\n", t0);
        assert_eq!(machine.send("c".into()), Ok(3), "an ack makes room");
        assert_eq!(sent(&mut machine), "DATA 1 3\nc");
    }

    #[test]
    fn send_hands_the_payload_back_when_the_session_holds_its_limit_of_bytes() {
        let t0 = Instant::now();
        let mut machine = v2_with(t0, SessionLimits { max_messages: 100, max_bytes: 8 });
        assert_eq!(machine.send("12345".into()), Ok(1));
        assert_eq!(machine.send("123".into()), Ok(2), "exactly at the limit");
        assert_eq!(machine.send("x".into()), Err(SendRefused::Full("x".into())));
        machine.handle_input(b"ACK 2\n", t0);
        let big = Bytes::from(vec![b'z'; 100]);
        assert_eq!(machine.send(big.clone()), Ok(3), "an empty session takes a message of any size");
        assert_eq!(machine.send("x".into()), Err(SendRefused::Full("x".into())));
    }

    #[test]
    fn no_secret_reaches_a_debug_line() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 2 desk-42 token=tok-very-secret\nDATA 1", t0);
        let session = new_session("desk-42", SessionLimits::default());
        let secret = session.secret().as_str().to_owned();
        let _ = machine.poll_event();
        machine.welcome(session, terms(false), t0);
        let shown = format!("{machine:?}");
        assert!(!shown.contains("tok-very-secret") && !shown.contains(&secret), "{shown}");
    }

    #[test]
    fn a_closed_machine_ignores_input_and_keeps_sends_in_its_session() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.close_with(Frame::error(ErrorCode::Resumed, "a new connection resumed this session"));
        assert_eq!(sent(&mut machine), "ERROR resumed a new connection resumed this session\n");
        assert_eq!(closed_by(&mut machine), ConnEnd::ClosedByServer);
        machine.handle_input(b"DATA 1 1\naPULSE 3\nGARBAGE\n", t0);
        let region = machine.read_buf();
        region[..8].copy_from_slice(b"PULSE 4\n");
        machine.filled(8, t0);
        machine.pulse(9, t0);
        machine.handle_timeout(t0 + Duration::from_secs(60));
        // A message for it is kept in its session (for the resume), and not written.
        assert_eq!(machine.send("x".into()), Ok(1));
        assert_eq!(machine.session().map(|s| s.queued()), Some(1));
        machine.close_with(Frame::bye("shutdown"));
        machine.refuse(ErrorCode::Full, "full");
        machine.connection_lost(t0);
        assert_eq!((events(&mut machine), sent(&mut machine)), (vec![], String::new()));
        assert_eq!((machine.session().map(ServerSession::delivered), machine.buffered()), (Some(0), 0));
        assert!(!machine.wants_input());
    }

    #[test]
    fn take_session_after_closed_keeps_delivered_and_unacknowledged_state() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"DATA 1 1\naDATA 1 2\nb", t0);
        machine.send("m1".into()).unwrap();
        machine.send("m2".into()).unwrap();
        machine.handle_input(b"ACK 1\n", t0);
        assert!(machine.take_session().is_none(), "not while open");
        machine.handle_input(b"BYE quit\n", t0);
        let mut session = machine.take_session().unwrap();
        assert_eq!((session.delivered(), session.acked(), session.queued()), (2, 1, 1));
        assert_eq!(session.outbound().next_unwritten().map(|m| m.seq), Some(2), "written again on resume");
        let back = session.drain_undelivered();
        assert_eq!((back[0].seq, back[0].maybe_delivered), (2, true));
        assert!(machine.take_session().is_none(), "taken once");
    }

    #[test]
    fn bye_and_error_from_the_peer_close_the_connection_without_an_answer() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.handle_input(b"ERROR shutdown client going away\nPULSE 1\n", t0);
        let reason = ConnEnd::PeerError { code: ErrorCode::Shutdown, text: "client going away".into() };
        assert_eq!(closed_by(&mut machine), reason);
        assert_eq!(sent(&mut machine), "");
        let mut machine = v2(t0);
        machine.handle_input(b"BYE\n", t0);
        assert_eq!(closed_by(&mut machine), ConnEnd::Goodbye { reason: String::new() });
    }

    #[test]
    fn a_later_hello_or_welcome_is_unexpected() {
        let t0 = Instant::now();
        for (input, verb) in [("HELLO 2 again\n", "HELLO"), ("WELCOME s 10 3\n", "WELCOME")] {
            let mut machine = v2(t0);
            machine.handle_input(input.as_bytes(), t0);
            assert_eq!(sent(&mut machine), format!("ERROR unexpected unexpected {verb}\n"));
            assert_eq!(closed_by(&mut machine), ConnEnd::Violation(ProtocolViolation::Unexpected { verb }));
        }
    }

    #[test]
    fn an_alive_for_the_last_pulse_measures_the_round_trip_and_others_do_not() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.pulse(1, t0);
        machine.pulse(2, t0 + MS(1000));
        assert_eq!(sent(&mut machine), "PULSE 1\nPULSE 2\n");
        machine.handle_input(b"ALIVE 1\n", t0 + MS(1003));
        assert_eq!((machine.rtt(), machine.last_heard()), (None, Some(t0 + MS(1003))));
        machine.handle_input(b"ALIVE 2\n", t0 + MS(1004));
        assert_eq!(machine.observation(), Observation { last_heard: Some(t0 + MS(1004)), rtt: Some(MS(4)) });
    }

    #[test]
    fn refuse_answers_the_hello_with_an_error_and_closes() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 1 desk-42\nPULSE 1\n", t0);
        events(&mut machine);
        machine.refuse(ErrorCode::Version, "this server requires protocol 2");
        assert_eq!(sent(&mut machine), "ERROR version this server requires protocol 2\n");
        assert_eq!(closed_by(&mut machine), ConnEnd::ClosedByServer);
        assert_eq!(machine.buffered(), 0, "held input is dropped");
    }

    #[test]
    fn a_session_welcomed_into_a_machine_that_closed_meanwhile_is_kept_for_the_hub() {
        let t0 = Instant::now();
        let mut machine = ServerMachine::new(t0, config());
        machine.handle_input(b"HELLO 2 desk-42\n", t0);
        machine.connection_lost(t0);
        let mut session = new_session("desk-42", SessionLimits::default());
        session.queue("queued".into()).unwrap();
        machine.welcome(session, terms(false), t0);
        assert_eq!(sent(&mut machine), "");
        assert_eq!(machine.take_session().map(|s| s.queued()), Some(1));
    }

    #[test]
    fn connection_lost_drops_what_was_not_written_and_closes() {
        let t0 = Instant::now();
        let mut machine = v2(t0);
        machine.send("m1".into()).unwrap();
        assert_eq!(machine.queued_frames(), 1);
        machine.connection_lost(t0);
        assert_eq!((machine.transmit().len(), machine.queued_frames()), (0, 0));
        assert_eq!(closed_by(&mut machine), ConnEnd::Lost);
        let session = machine.take_session().unwrap();
        assert_eq!(
            session.outbound().next_unwritten().map(|m| m.seq),
            Some(1),
            "counted as maybe delivered, rewritten"
        );
    }

    #[test]
    fn queued_frames_counts_the_frames_since_transmit_was_last_empty() {
        let t0 = Instant::now();
        let mut machine = v1(t0);
        machine.pulse(1, t0);
        machine.send("a".into()).unwrap();
        assert_eq!(machine.queued_frames(), 2);
        let taken = machine.transmit().len() - 3;
        let _ = machine.transmit().split_to(taken);
        assert_eq!(machine.queued_frames(), 2, "part of the last frame still waits");
        let _ = machine.transmit().split();
        assert_eq!(machine.queued_frames(), 0);
        machine.pulse(2, t0);
        assert_eq!(machine.queued_frames(), 1);
    }

    /// Input that breaks the protocol, each row on a fresh machine: at the first byte (`None`),
    /// or after a version-2 welcome into a session that wrote 2 messages and delivered 1
    /// (`Some`). `None` as the code: no error (the input is dropped or handled).
    #[test]
    fn hostile_input_is_answered_with_the_right_error_code() {
        let t0 = Instant::now();
        let long_hello = format!("HELLO 2 desk-42 pad={}\n", "x".repeat(5000));
        let secret = secret_text(1);
        let rows: Vec<(bool, String, Option<&str>)> = vec![
            (false, long_hello, Some("too-large")),
            (false, format!("HELLO 2 desk-42 {}\n", "x".repeat(MAX_HELLO_LINE)), Some("too-large")),
            (false, "HELLO 2 desk-42 token=a token=b\n".into(), Some("malformed")),
            (false, "HELLO 2 desk-42 token=\n".into(), Some("malformed")),
            (false, "HELLO 2 desk-42 =x\n".into(), Some("malformed")),
            (false, format!("HELLO 2 desk-42 resume={secret}\n"), Some("malformed")),
            (false, "HELLO 2 desk-42 rx=1\n".into(), Some("malformed")),
            (false, "HELLO 1 desk-42 token=abc\n".into(), Some("malformed")),
            (false, "HELLO 3 desk-42\n".into(), Some("version")),
            (false, "HELLO 0 desk-42\n".into(), Some("version")),
            (false, "HELLO 2 desk/42\n".into(), Some("bad-id")),
            (false, "DATA 5\nhello".into(), Some("unexpected")),
            (false, "AUTH abc\n".into(), Some("malformed")),
            (false, "PULSE \u{7f}\n".into(), Some("malformed")),
            (false, "HELLO 2 desk-42 colour=blue\n".into(), None),
            (true, "ACK 3\n".into(), Some("malformed")),
            (true, "ACK 2\n".into(), None),
            (true, "DATA 1 1\na".into(), None),
            (true, "DATA 1 3\na".into(), Some("malformed")),
            (true, "DATA 1\na".into(), Some("malformed")),
            (true, "DATA 4294967295 2\n".into(), Some("too-large")),
            (true, "DATA 1 x\na".into(), Some("malformed")),
            (true, "ACK\n".into(), Some("malformed")),
            (true, "ACK -1\n".into(), Some("malformed")),
            (true, "WATCH desk\n".into(), Some("malformed")),
            (true, "WELCOME s 10 3\n".into(), Some("unexpected")),
            (true, format!("{}\n", "P".repeat(2000)), Some("too-large")),
        ];
        for (welcomed_first, input, code) in rows {
            let shown: String = input.chars().take(60).collect();
            let mut machine = ServerMachine::new(t0, config());
            if welcomed_first {
                machine = v2(t0);
                machine.send("m1".into()).unwrap();
                machine.send("m2".into()).unwrap();
                machine.handle_input(b"DATA 1 1\na", t0);
                events(&mut machine);
                sent(&mut machine);
            }
            machine.handle_input(input.as_bytes(), t0);
            let answer = sent(&mut machine);
            match code {
                Some(code) => {
                    assert!(answer.starts_with(&format!("ERROR {code} ")), "{shown:?} got {answer:?}, expected {code}");
                    assert!(machine.is_closed(), "{shown:?}");
                }
                None => assert!(!answer.starts_with("ERROR") && !machine.is_closed(), "{shown:?} got {answer:?}"),
            }
        }
    }

    /// A client that speaks version 2 to the machine over a link that breaks at random: it
    /// reads what the machine wrote (a random prefix of it, when the link breaks), acknowledges
    /// at random, and resumes with its `rx`; the server's application sends at random, also
    /// while no connection is attached. Whatever the breaks, the client's application gets
    /// every server message exactly once and in order, and the server's gets every client
    /// message exactly once and in order.
    #[test]
    fn messages_survive_any_number_of_lost_connections_exactly_once_and_in_order() {
        use crate::core::{Inbound, Outbound};

        let t0 = Instant::now();
        // How much the runs covered: messages handed over each way, links broken, WELCOMEs
        // lost, replays dropped by either side.
        let (mut to_client, mut to_server, mut breaks, mut lost_welcomes, mut replays) = (0, 0, 0, 0, 0);
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let limits = SessionLimits { max_messages: 1 + rng.usize(0..8), max_bytes: 64 };
            // The client's halves of the session, and what its application was given.
            let mut client_in = Inbound::new(0);
            let mut client_out: Outbound<()> = Outbound::new();
            let (mut client_got, mut server_got): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
            let (mut server_sent, mut client_sent) = (0u64, 0u64);
            let mut session = Some(new_session("desk-42", limits));
            let mut now = t0;
            for connection in 0..20u32 {
                let mut session_now = session.take().unwrap();
                // While detached, the server's application may queue a message or two.
                for _ in 0..rng.usize(0..3) * usize::from(connection > 0) {
                    if session_now.queue(Bytes::from(format!("s{}", server_sent + 1))).is_ok() {
                        server_sent += 1;
                    }
                }
                // The machine leaves the secret to the hub's table: any will do here. Now and
                // then the client reports less than it has (a stale rx): what the server writes
                // again is then partly a replay, which the client drops.
                let rx = match rng.u8(0..4) {
                    0 => rng.u64(0..=client_in.delivered()),
                    _ => client_in.delivered(),
                };
                let resume = (connection > 0).then(|| format!(" resume=s{connection} rx={rx}"));
                if connection > 0 {
                    session_now.rotate_secret([connection as u8; 16]);
                }
                let mut machine = ServerMachine::new(now, config());
                machine.handle_input(format!("HELLO 2 desk-42{}\n", resume.unwrap_or_default()).as_bytes(), now);
                events(&mut machine);
                machine.welcome(session_now, terms(connection > 0), now);
                client_out.connection_lost();
                let mut decoder = Decoder::new(1 << 20);
                let mut welcomed = false;
                let mut broken = false;
                for _step in 0..rng.usize(1..30) {
                    now += MS(rng.u64(0..30));
                    match rng.u8(0..6) {
                        0 => {
                            if machine.send(Bytes::from(format!("s{}", server_sent + 1))).is_ok() {
                                server_sent += 1;
                            }
                        }
                        1 => {
                            if client_out.len() < 8 {
                                client_sent += 1;
                                client_out.push(Bytes::from(format!("c{client_sent}")), ());
                            }
                        }
                        2 => machine.handle_input(format!("PULSE {}\n", rng.u64(..)).as_bytes(), now),
                        3 if welcomed => {
                            if let Some(seq) = client_in.take_ack() {
                                machine.handle_input(format!("ACK {seq}\n").as_bytes(), now);
                            }
                        }
                        3 | 4 => machine.handle_timeout(now),
                        _ => broken = rng.u8(0..3) == 0,
                    }
                    // The client reads all the machine wrote, or a random part when the link breaks.
                    let mut wire = machine.transmit().split();
                    if broken {
                        wire.truncate(rng.usize(0..=wire.len()));
                    }
                    decoder.extend(&wire);
                    while let Some(frame) = decoder.next_frame().unwrap() {
                        match frame {
                            Frame::Welcome { resume: Some(welcome), .. } => {
                                assert_eq!(welcome.resumed, connection > 0, "seed {seed}");
                                client_out.resume(welcome.rx).unwrap();
                                client_in.told();
                                welcomed = true;
                            }
                            Frame::Data { seq: Some(seq), payload } => {
                                if client_in.receive(seq, now, ACK_DELAY).unwrap() == Receipt::Deliver {
                                    assert_eq!(payload, format!("s{seq}").as_bytes(), "seed {seed}");
                                    client_got.push(seq);
                                }
                            }
                            Frame::Ack { seq } => {
                                let _released = client_out.ack(seq).unwrap();
                            }
                            Frame::Alive { .. } | Frame::Pulse { .. } => {}
                            other => panic!("seed {seed}: unexpected {other}"),
                        }
                    }
                    // The client writes what its connection has not written yet (once welcomed).
                    while let Some(message) = client_out.next_unwritten().filter(|_| welcomed && !broken) {
                        let (seq, payload) = (message.seq, message.payload.clone());
                        let mut wire = BytesMut::new();
                        Frame::Data { seq: Some(seq), payload }.encode(&mut wire);
                        machine.handle_input(&wire, now);
                        client_out.written(seq);
                    }
                    for event in events(&mut machine) {
                        match event {
                            ServerMachineEvent::Message { seq, payload } => {
                                assert_eq!(payload, format!("c{seq}").as_bytes(), "seed {seed}");
                                server_got.push(seq);
                            }
                            ServerMachineEvent::Delivered { .. } => {}
                            other => panic!("seed {seed}: unexpected {other:?}"),
                        }
                    }
                    if broken {
                        break;
                    }
                    // On a healthy link nothing waits: each side has all the other numbered.
                    if welcomed {
                        let server = machine.session().unwrap();
                        assert_eq!(client_in.delivered(), server.outbound().last(), "seed {seed}");
                        assert_eq!(server.delivered(), client_out.last(), "seed {seed}");
                    }
                }
                machine.connection_lost(now);
                let ends = events(&mut machine);
                assert_eq!(ends, vec![ServerMachineEvent::Closed { reason: ConnEnd::Lost }], "seed {seed}");
                session = machine.take_session();
                breaks += usize::from(broken);
                lost_welcomes += usize::from(!welcomed);
            }
            replays += session.as_ref().map_or(0, ServerSession::replays) + client_in.replays();
            to_client += client_got.len();
            to_server += server_got.len();
            let expected: Vec<u64> = (1..=client_got.len() as u64).collect();
            assert_eq!(client_got, expected, "seed {seed}: the client got every server message once, in order");
            let expected: Vec<u64> = (1..=server_got.len() as u64).collect();
            assert_eq!(server_got, expected, "seed {seed}: the server got every client message once, in order");
            assert!(client_got.len() as u64 <= server_sent && server_got.len() as u64 <= client_sent);
        }
        assert!(to_client > 5000 && to_server > 5000, "{to_client} and {to_server} messages handed over");
        assert!(breaks > 1000 && lost_welcomes > 100, "{breaks} links broken, {lost_welcomes} WELCOMEs lost");
        assert!(replays > 100, "{replays} replays dropped");
    }
}
