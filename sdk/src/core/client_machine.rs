//! The client's connection machine (protocol 2): the handshake, the online life (pulses,
//! misses, probes, the outbox, acknowledgements, replay) and the close, as one plain type.
//!
//! It never touches a socket or reads the clock: the shell feeds it the bytes it read
//! ([`ClientMachine::handle_input`]) and the time, writes what it asks for
//! ([`ClientMachine::poll_transmit`]), sleeps until [`ClientMachine::poll_timeout`] and hands
//! its events to the application ([`ClientMachine::poll_event`]). The session (its id, resume
//! secret, what was delivered each way and the outbox) outlives each connection: a new
//! connection ([`ClientMachine::connect`]) resumes it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::delivery::{Inbound, Outbound, Receipt};
use super::miss::{MissWatch, Tick};
use crate::client::{ConnectError, DisconnectReason, Event, ProbeError, SendError, Ticket};
use crate::error::ProtocolViolation;
use crate::protocol::{ClientId, Decoder, ErrorCode, Frame, Resume, ResumeSecret, SessionId, Token, WelcomeResume};

/// How many probes may wait for their answer at once.
pub const MAX_PROBES: usize = 64;

/// The client's outbox bounds (protocol 2 defaults: 1024 messages and 1 MiB), counting the
/// messages not yet written and those written but not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Messages at most.
    pub max_messages: usize,
    /// Payload bytes at most.
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { max_messages: 1024, max_bytes: 1024 * 1024 }
    }
}

/// What a [`ClientMachine`] needs to know.
#[derive(Debug, Clone)]
pub struct ClientMachineConfig {
    /// The id the client announces.
    pub client_id: ClientId,
    /// The credential sent in `HELLO`, if any.
    pub token: Option<Token>,
    /// The largest `DATA` payload accepted (and sent).
    pub max_payload: usize,
    /// How long the server may take to answer `HELLO`.
    pub handshake_timeout: Duration,
    /// How long a close waits for the server to acknowledge what was sent.
    pub close_timeout: Duration,
    /// How soon a delivered message is acknowledged at the latest.
    pub ack_delay: Duration,
    /// The outbox bounds.
    pub outbox: OutboxLimits,
}

impl ClientMachineConfig {
    /// A configuration with the protocol's defaults for `client_id`.
    pub fn new(client_id: ClientId) -> ClientMachineConfig {
        ClientMachineConfig {
            client_id,
            token: None,
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
            ack_delay: super::delivery::DEFAULT_ACK_DELAY,
            outbox: OutboxLimits::default(),
        }
    }
}

/// How one message is to be sent.
///
/// ```
/// use std::time::Duration;
/// use pulsewire::SendOptions;
///
/// let expiring = SendOptions::new().ttl(Duration::from_secs(30));
/// let cursor = SendOptions::new().volatile();
/// assert!(cursor.is_volatile() && !expiring.is_volatile());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    ttl: Option<Duration>,
    volatile: bool,
}

impl SendOptions {
    /// A reliable message with no time limit: numbered, acknowledged, kept across reconnects.
    pub fn new() -> SendOptions {
        SendOptions::default()
    }

    /// The message expires ([`Event::Expired`]) if it is still unwritten this long after it
    /// was accepted (a message already written is never expired: it may have arrived).
    pub fn ttl(mut self, ttl: Duration) -> SendOptions {
        self.ttl = Some(ttl);
        self
    }

    /// A volatile message: written now on the live connection, or refused; never numbered,
    /// acknowledged, kept or replayed. Its outcome is the result of the send.
    pub fn volatile(mut self) -> SendOptions {
        self.volatile = true;
        self
    }

    /// Whether the message is volatile.
    pub fn is_volatile(&self) -> bool {
        self.volatile
    }

    /// Its time to live, if any.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl
    }
}

/// What a client must keep to resume its session after its own process restarts: the session
/// id, the resume secret of the last `WELCOME` and the highest message the application was
/// given. Save it after every [`Event::Connected`] and [`Event::Message`]; hand it to a new
/// client with [`ClientConfigBuilder::resume`](crate::ClientConfigBuilder::resume).
///
/// Its `Debug` hides the secret; [`ResumeState::to_text`] writes it (keep that file private).
///
/// ```
/// use pulsewire::ResumeState;
///
/// let text = "pulsewire-resume 1 9f2c session-7 3";
/// let state = ResumeState::from_text(text).unwrap();
/// assert_eq!((state.session().as_str(), state.delivered()), ("session-7", 3));
/// assert_eq!(state.to_text(), text);
/// assert!(!format!("{state:?}").contains("9f2c"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeState {
    session: SessionId,
    secret: ResumeSecret,
    delivered: u64,
}

impl fmt::Debug for ResumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeState")
            .field("session", &self.session)
            .field("secret", &"<redacted>")
            .field("delivered", &self.delivered)
            .finish()
    }
}

const STATE_MAGIC: &str = "pulsewire-resume 1";

impl ResumeState {
    /// A state from its parts.
    pub fn new(session: SessionId, secret: ResumeSecret, delivered: u64) -> ResumeState {
        ResumeState { session, secret, delivered }
    }

    /// The session.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The highest server message the application was given.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// One line of text: `pulsewire-resume 1 <secret> <session> <delivered>`. It holds the
    /// secret: store it where only the user can read it.
    pub fn to_text(&self) -> String {
        format!("{STATE_MAGIC} {} {} {}", self.secret.as_str(), self.session, self.delivered)
    }

    /// Reads what [`ResumeState::to_text`] wrote; `None` when it is not such a line.
    pub fn from_text(text: &str) -> Option<ResumeState> {
        let rest = text.trim().strip_prefix(STATE_MAGIC)?.strip_prefix(' ')?;
        let mut words = rest.split(' ');
        let secret = ResumeSecret::new(words.next()?)?;
        let session = SessionId::new(words.next()?)?;
        let delivered = words.next()?.parse().ok()?;
        words.next().is_none().then_some(ResumeState { session, secret, delivered })
    }
}

/// How a connection ended, as the shell must hear it ([`ClientMachine::poll_end`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The handshake did not complete.
    Refused(ConnectError),
    /// An online connection ended.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// Whether at least one pulse arrived (the server really was up).
        healthy: bool,
    },
}

/// A summary of the outbox, for a status display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Messages accepted and not written yet.
    pub queued: usize,
    /// Messages written and not acknowledged yet.
    pub unacked: usize,
    /// Their payload bytes together.
    pub bytes: usize,
}

/// One connection's life.
#[derive(Debug)]
enum Link {
    /// No connection.
    Offline,
    /// `HELLO` written, `WELCOME` awaited until the deadline.
    Handshaking {
        decoder: Decoder,
        deadline: Instant,
    },
    Online(Box<Online>),
}

#[derive(Debug)]
struct Online {
    decoder: Decoder,
    session: SessionId,
    watch: MissWatch,
    healthy: bool,
    /// The application closes: by this instant the `BYE` goes out, acknowledged or not.
    closing: Option<Instant>,
}

/// A message accepted and not written yet.
#[derive(Debug)]
struct Queued {
    ticket: Ticket,
    payload: Bytes,
    expires: Option<Instant>,
}

/// The client's side of a pulsewire session; see the module documentation.
///
/// ```
/// use std::time::Instant;
/// use pulsewire::core::{ClientMachine, ClientMachineConfig};
/// use pulsewire::protocol::ClientId;
/// use pulsewire::{Event, SendOptions};
///
/// let now = Instant::now();
/// let config = ClientMachineConfig::new(ClientId::new("desk-42").unwrap());
/// let mut client = ClientMachine::new(config, None);
/// // Offline, a message waits in the outbox.
/// let ticket = client.send("hello".into(), SendOptions::new(), now).unwrap();
/// client.connect(now);
/// assert_eq!(&client.poll_transmit().unwrap()[..], b"HELLO 2 desk-42\n");
/// client.handle_input(b"WELCOME s1 1000 3 resumed=0 rx=0 resume=abc keep=120000\n", now);
/// assert!(matches!(client.poll_event(), Some(Event::Connected { resumed: false, .. })));
/// assert_eq!(&client.poll_transmit().unwrap()[..], b"DATA 5 1\nhello");
/// client.handle_input(b"ACK 1\n", now);
/// assert_eq!(client.poll_event(), Some(Event::Delivered { up_to: ticket, count: 1 }));
/// ```
pub struct ClientMachine {
    config: ClientMachineConfig,
    /// The session to resume, from the last `WELCOME` (or a saved state).
    resume: Option<(SessionId, ResumeSecret)>,
    inbound: Inbound,
    outbound: Outbound<Ticket>,
    /// The outbox was not carried over from a previous connection of this process (a saved
    /// state): a resume numbers on from the server's `rx`.
    outbound_unknown: bool,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// The earliest expiry in the queue.
    next_expiry: Option<Instant>,
    last_ticket: u64,
    link: Link,
    transmit: BytesMut,
    events: VecDeque<Event>,
    end: Option<ConnectionEnd>,
    probes: HashMap<u64, Instant>,
    answers: VecDeque<(u64, Duration)>,
    last_pulse: u64,
    closed: bool,
}

impl fmt::Debug for ClientMachine {
    /// A summary: never the bytes in flight (a `HELLO` holds the token) nor the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = match &self.link {
            Link::Offline => "offline",
            Link::Handshaking { .. } => "handshaking",
            Link::Online(_) => "online",
        };
        f.debug_struct("ClientMachine")
            .field("client_id", &self.config.client_id)
            .field("link", &link)
            .field("session", &self.resume.as_ref().map(|(session, _)| session))
            .field("delivered", &self.inbound.delivered())
            .field("outbox", &self.outbox())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ClientMachine {
    /// A machine for a new session, or for the saved one given.
    pub fn new(config: ClientMachineConfig, saved: Option<ResumeState>) -> ClientMachine {
        let (resume, inbound, outbound_unknown) = match saved {
            Some(state) => (Some((state.session, state.secret)), Inbound::new(state.delivered), true),
            None => (None, Inbound::new(0), false),
        };
        ClientMachine {
            config,
            resume,
            inbound,
            outbound: Outbound::new(),
            outbound_unknown,
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_expiry: None,
            last_ticket: 0,
            link: Link::Offline,
            transmit: BytesMut::new(),
            events: VecDeque::new(),
            end: None,
            probes: HashMap::new(),
            answers: VecDeque::new(),
            last_pulse: 0,
            closed: false,
        }
    }

    /// A new connection is up (TCP connected): writes `HELLO`, resuming the session if there
    /// is one, and waits for `WELCOME` until the handshake timeout.
    pub fn connect(&mut self, now: Instant) {
        self.transmit.clear();
        self.end = None;
        self.outbound.connection_lost();
        let resume =
            self.resume.as_ref().map(|(_, secret)| Resume { secret: secret.clone(), rx: self.inbound.delivered() });
        let hello = Frame::Hello {
            version: crate::protocol::PROTOCOL_VERSION,
            client_id: self.config.client_id.clone(),
            token: self.config.token.clone(),
            resume,
        };
        hello.encode(&mut self.transmit);
        let decoder = Decoder::new(self.config.max_payload);
        self.link = Link::Handshaking { decoder, deadline: now + self.config.handshake_timeout };
    }

    /// Whether a connection is online.
    pub fn is_online(&self) -> bool {
        matches!(self.link, Link::Online(_))
    }

    /// Whether the application closed the client (or it stopped for good): no message is
    /// accepted any more.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The session of the online connection, and its missed pulses right now.
    pub fn online(&self) -> Option<(&SessionId, u32)> {
        match &self.link {
            Link::Online(online) => Some((&online.session, online.watch.missed())),
            _ => None,
        }
    }

    /// What an application would save to resume after a restart; `None` before the first
    /// `WELCOME`.
    pub fn resume_state(&self) -> Option<ResumeState> {
        self.resume.as_ref().map(|(session, secret)| ResumeState {
            session: session.clone(),
            secret: secret.clone(),
            delivered: self.inbound.delivered(),
        })
    }

    /// The outbox right now.
    pub fn outbox(&self) -> OutboxStatus {
        OutboxStatus {
            queued: self.queue.len(),
            unacked: self.outbound.len(),
            bytes: self.queued_bytes + self.outbound.bytes(),
        }
    }

    /// Whether the outbox has room for a message of `len` bytes.
    fn has_room(&self, len: usize) -> bool {
        let limits = self.config.outbox;
        self.queue.len() + self.outbound.len() < limits.max_messages
            && self.queued_bytes + self.outbound.bytes() + len <= limits.max_bytes
    }

    /// Accepts a message: a reliable one goes into the outbox (written at once when online),
    /// a volatile one is written now or refused. Every refusal hands the payload back.
    pub fn send(&mut self, payload: Bytes, options: SendOptions, now: Instant) -> Result<Ticket, SendError> {
        if self.closed {
            return Err(SendError::Closed(payload));
        }
        let max = self.config.max_payload;
        if payload.len() > max {
            return Err(SendError::TooLarge { payload, max });
        }
        if options.volatile {
            if !self.is_online() {
                return Err(SendError::Offline(payload));
            }
            // Bounded like the outbox, so that a volatile stream cannot outrun the socket.
            if self.transmit.len() + payload.len() > self.config.outbox.max_bytes {
                return Err(SendError::Full(payload));
            }
            Frame::Data { seq: Some(0), payload }.encode(&mut self.transmit);
            return Ok(self.next_ticket());
        }
        if !self.has_room(payload.len()) {
            return Err(SendError::Full(payload));
        }
        let ticket = self.next_ticket();
        let expires = options.ttl.map(|ttl| now + ttl);
        self.queued_bytes += payload.len();
        self.queue.push_back(Queued { ticket, payload, expires });
        if let Some(at) = expires {
            self.next_expiry = Some(self.next_expiry.map_or(at, |next| next.min(at)));
        }
        if self.is_online() {
            self.write_queue();
        }
        Ok(ticket)
    }

    fn next_ticket(&mut self) -> Ticket {
        self.last_ticket += 1;
        Ticket(self.last_ticket)
    }

    /// Writes a `PULSE` of the client's own; its round trip comes back from
    /// [`ClientMachine::poll_probe`] under the returned number.
    pub fn probe(&mut self, now: Instant) -> Result<u64, ProbeError> {
        if !self.is_online() {
            return Err(ProbeError::Offline);
        }
        if self.probes.len() >= MAX_PROBES {
            return Err(ProbeError::TooMany);
        }
        self.last_pulse += 1;
        let seq = self.last_pulse;
        self.probes.insert(seq, now);
        Frame::Pulse { seq }.encode(&mut self.transmit);
        Ok(seq)
    }

    /// A probe's answer: its number and round trip.
    pub fn poll_probe(&mut self) -> Option<(u64, Duration)> {
        self.answers.pop_front()
    }

    /// The application closes the client. Online, what is written is given until the close
    /// timeout to be acknowledged, then `BYE quit` goes out and the connection ends; offline,
    /// the client stops at once. Either way every message without an outcome is handed back
    /// as [`Event::Undelivered`] when the machine [finishes](ClientMachine::finish).
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        let close_timeout = self.config.close_timeout;
        match &mut self.link {
            Link::Online(online) => {
                online.closing = Some(now + close_timeout);
                self.write_queue();
                self.try_finish_close();
            }
            Link::Handshaking { .. } => self.end_connection(DisconnectReason::ClosedByApplication, None),
            Link::Offline => {}
        }
    }

    /// The token the next `HELLO` carries (a token provider's new one).
    pub fn set_token(&mut self, token: Option<Token>) {
        self.config.token = token;
    }

    /// The token the `HELLO`s carry.
    pub fn token(&self) -> Option<&Token> {
        self.config.token.as_ref()
    }

    /// The client stops for good (closed, gave up, or refused): every message still in the
    /// outbox is handed back, the unwritten ones as not delivered, the written ones as maybe
    /// delivered.
    pub fn finish(&mut self) {
        self.closed = true;
        if !matches!(self.link, Link::Offline) {
            self.end_connection(DisconnectReason::ClosedByApplication, None);
        }
        self.hand_back_unacked();
        self.queued_bytes = 0;
        self.next_expiry = None;
        for queued in std::mem::take(&mut self.queue) {
            self.events.push_back(Event::Undelivered {
                ticket: queued.ticket,
                payload: queued.payload,
                maybe_delivered: false,
            });
        }
    }

    fn hand_back_unacked(&mut self) {
        for (message, written) in self.outbound.drain() {
            self.events.push_back(Event::Undelivered {
                ticket: message.meta,
                payload: message.payload,
                maybe_delivered: written,
            });
        }
    }

    /// The shell saw the connection end (end of file, reset, a socket error).
    pub fn connection_lost(&mut self, reason: DisconnectReason, _now: Instant) {
        match &self.link {
            Link::Offline => {}
            Link::Handshaking { .. } => {
                let error = match reason {
                    DisconnectReason::Io(error) => ConnectError::Io(error),
                    _ => ConnectError::Eof,
                };
                self.link = Link::Offline;
                self.end = Some(ConnectionEnd::Refused(error));
            }
            Link::Online(_) => self.end_connection(reason, None),
        }
    }

    /// How the last connection ended, once it has: the shell writes what is left to transmit
    /// (a farewell) and closes the socket.
    pub fn poll_end(&mut self) -> Option<ConnectionEnd> {
        self.end.take()
    }

    /// The next bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// Whether there are bytes to write.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`ClientMachine::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Offline => None,
            Link::Handshaking { deadline, .. } => Some(*deadline),
            Link::Online(online) => {
                let ack = self.inbound.ack_deadline();
                [Some(online.watch.deadline()), online.closing, ack].into_iter().flatten().min()
            }
        };
        [link, self.next_expiry].into_iter().flatten().min()
    }

    /// Does what is due at `now`: the handshake timeout, the checker's ticks, a delayed `ACK`,
    /// the close timeout, expired messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        let (lost, closing_over) = match &mut self.link {
            Link::Offline => return,
            Link::Handshaking { deadline, .. } => {
                if now >= *deadline {
                    let timeout = self.config.handshake_timeout;
                    self.link = Link::Offline;
                    self.end = Some(ConnectionEnd::Refused(ConnectError::HandshakeTimeout(timeout)));
                }
                return;
            }
            Link::Online(online) => {
                let max = online.watch.max_missed();
                let mut lost = None;
                while let Some(tick) = online.watch.poll(now) {
                    match tick {
                        Tick::Healthy => {}
                        Tick::Missed { missed } => self.events.push_back(Event::Missed { count: missed, max }),
                        Tick::Lost { missed } => {
                            lost = Some(missed);
                            break;
                        }
                    }
                }
                (lost, online.closing.is_some_and(|at| now >= at))
            }
        };
        if let Some(missed) = lost {
            let farewell = Frame::error(ErrorCode::Timeout, format!("no pulse for {missed} intervals"));
            return self.end_connection(DisconnectReason::PulseTimeout { missed }, Some(farewell));
        }
        if self.inbound.ack_deadline().is_some_and(|at| now >= at) {
            self.write_ack();
        }
        if closing_over {
            self.end_connection(DisconnectReason::ClosedByApplication, Some(Frame::bye("quit")));
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|at| now < at) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for queued in std::mem::take(&mut self.queue) {
            if queued.expires.is_some_and(|at| now >= at) {
                self.queued_bytes -= queued.payload.len();
                self.events.push_back(Event::Expired { ticket: queued.ticket, payload: queued.payload });
            } else {
                kept.push_back(queued);
            }
        }
        self.queue = kept;
        self.next_expiry = self.queue.iter().filter_map(|queued| queued.expires).min();
    }

    /// Bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        match &mut self.link {
            Link::Offline => return,
            Link::Handshaking { decoder, .. } => decoder.extend(bytes),
            Link::Online(online) => online.decoder.extend(bytes),
        }
        loop {
            let next = match &mut self.link {
                Link::Offline => return,
                Link::Handshaking { decoder, .. } => decoder.next_frame(),
                Link::Online(online) => online.decoder.next_frame(),
            };
            match next {
                Ok(None) => return,
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Err(error) => self.violation(ProtocolViolation::Decode(error)),
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if let Link::Handshaking { .. } = self.link {
            return self.handle_handshake(frame, now);
        }
        let Link::Online(online) = &mut self.link else { return };
        let forgiven = match frame {
            Frame::Pulse { .. } => online.watch.pulse(now),
            _ => online.watch.frame(now),
        };
        match frame {
            Frame::Pulse { seq } => {
                online.healthy = true;
                self.write_ack();
                Frame::Alive { seq }.encode(&mut self.transmit);
                self.events.push_back(Event::Pulse { seq, misses_reset: forgiven });
            }
            Frame::Alive { seq } => {
                if let Some(sent) = self.probes.remove(&seq) {
                    self.answers.push_back((seq, now.saturating_duration_since(sent)));
                }
            }
            Frame::Data { seq: Some(seq), payload } => match self.inbound.receive(seq, now, self.config.ack_delay) {
                Ok(Receipt::Deliver | Receipt::Volatile) => self.events.push_back(Event::Message { seq, payload }),
                Ok(Receipt::Replay) => {}
                Err(gap) => self.violation(malformed("DATA", gap.to_string())),
            },
            Frame::Data { seq: None, .. } => self.violation(malformed("DATA", "a version 2 message needs a number")),
            Frame::Ack { seq } => match self.outbound.ack(seq) {
                Ok(released) => {
                    if let Some(last) = released.last() {
                        let up_to = last.meta;
                        self.events.push_back(Event::Delivered { up_to, count: released.len() });
                    }
                    self.try_finish_close();
                }
                Err(error) => self.violation(malformed("ACK", error.to_string())),
            },
            Frame::Bye { reason } => self.end_connection(DisconnectReason::ServerGoodbye { reason }, None),
            Frame::Error { code, text } => self.end_connection(DisconnectReason::ServerError { code, text }, None),
            other => self.violation(ProtocolViolation::Unexpected { verb: other.verb() }),
        }
    }

    fn handle_handshake(&mut self, frame: Frame, now: Instant) {
        let (session, interval, max_missed, terms) = match frame {
            Frame::Welcome { session, interval, max_missed, resume: Some(terms) } => {
                (session, interval, max_missed, terms)
            }
            Frame::Welcome { resume: None, .. } => {
                return self.refused(ConnectError::Protocol(malformed("WELCOME", "version 2 options missing")));
            }
            Frame::Error { code, text } => return self.refused(ConnectError::Rejected { code, text }),
            other => return self.refused(ConnectError::Protocol(ProtocolViolation::Unexpected { verb: other.verb() })),
        };
        let Link::Handshaking { decoder, .. } = std::mem::replace(&mut self.link, Link::Offline) else { return };
        let WelcomeResume { resumed, rx, secret, .. } = terms;
        let same_session = self.resume.as_ref().is_some_and(|(old, _)| *old == session);
        if resumed && same_session {
            if self.outbound_unknown {
                self.outbound = Outbound::resuming_from(rx);
                self.outbound_unknown = false;
            }
            match self.outbound.resume(rx) {
                Ok(released) => {
                    if let Some(last) = released.last() {
                        self.events.push_back(Event::Delivered { up_to: last.meta, count: released.len() });
                    }
                }
                Err(error) => return self.refused(ConnectError::Protocol(malformed("WELCOME", error.to_string()))),
            }
        } else {
            // A fresh session: what the old one wrote may or may not have arrived, and is
            // handed back; what it never wrote is sent in the new one.
            self.hand_back_unacked();
            self.outbound = Outbound::new();
            self.outbound_unknown = false;
            self.inbound = Inbound::new(0);
        }
        self.inbound.told();
        self.resume = Some((session.clone(), secret));
        let watch = MissWatch::new(now, interval, max_missed);
        let max_missed = watch.max_missed();
        let online = Online { decoder, session: session.clone(), watch, healthy: false, closing: None };
        self.link = Link::Online(Box::new(online));
        self.events.push_back(Event::Connected { session, resumed: resumed && same_session, interval, max_missed });
        self.write_queue();
        if self.closed {
            // Closed while connecting: flush, then leave.
            if let Link::Online(online) = &mut self.link {
                online.closing = Some(now + self.config.close_timeout);
            }
            self.try_finish_close();
        }
    }

    /// Writes what the other side lacks after a resume, then every queued message.
    fn write_queue(&mut self) {
        while let Some(message) = self.outbound.next_unwritten() {
            let seq = message.seq;
            Frame::Data { seq: Some(seq), payload: message.payload.clone() }.encode(&mut self.transmit);
            self.outbound.written(seq);
        }
        while let Some(queued) = self.queue.pop_front() {
            self.queued_bytes -= queued.payload.len();
            let seq = self.outbound.push(queued.payload.clone(), queued.ticket);
            Frame::Data { seq: Some(seq), payload: queued.payload }.encode(&mut self.transmit);
            self.outbound.written(seq);
        }
        self.next_expiry = None;
    }

    fn write_ack(&mut self) {
        if let Some(seq) = self.inbound.take_ack() {
            Frame::Ack { seq }.encode(&mut self.transmit);
        }
    }

    /// A closing connection ends once everything written is acknowledged.
    fn try_finish_close(&mut self) {
        let closing = matches!(&self.link, Link::Online(online) if online.closing.is_some());
        if closing && self.queue.is_empty() && self.outbound.is_settled() {
            self.write_ack();
            self.end_connection(DisconnectReason::ClosedByApplication, Some(Frame::bye("quit")));
        }
    }

    fn violation(&mut self, violation: ProtocolViolation) {
        match self.link {
            Link::Online(_) => {
                let farewell = Frame::error(violation.code(), violation.to_string());
                self.end_connection(DisconnectReason::Protocol(violation), Some(farewell));
            }
            _ => self.refused(ConnectError::Protocol(violation)),
        }
    }

    fn refused(&mut self, error: ConnectError) {
        if let ConnectError::Protocol(violation) = &error {
            Frame::error(violation.code(), violation.to_string()).encode(&mut self.transmit);
        }
        self.link = Link::Offline;
        self.end = Some(ConnectionEnd::Refused(error));
    }

    /// Ends the online connection: writes the farewell, if any, and keeps the session.
    fn end_connection(&mut self, reason: DisconnectReason, farewell: Option<Frame>) {
        let healthy = match std::mem::replace(&mut self.link, Link::Offline) {
            Link::Online(online) => online.healthy,
            _ => false,
        };
        if let Some(frame) = farewell {
            frame.encode(&mut self.transmit);
        }
        self.outbound.connection_lost();
        self.probes.clear();
        self.end = Some(ConnectionEnd::Disconnected { reason, healthy });
    }
}

fn malformed(verb: &'static str, detail: impl Into<String>) -> ProtocolViolation {
    ProtocolViolation::Malformed { verb, detail: detail.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WELCOME_FRESH: &[u8] = b"WELCOME s1 100 3 resumed=0 rx=0 resume=secret1 keep=120000\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn machine() -> ClientMachine {
        ClientMachine::new(ClientMachineConfig::new(ClientId::new("desk-1").unwrap()), None)
    }

    fn sent(client: &mut ClientMachine) -> String {
        let mut all = Vec::new();
        while let Some(bytes) = client.poll_transmit() {
            all.extend_from_slice(&bytes);
        }
        String::from_utf8(all).unwrap()
    }

    fn events(client: &mut ClientMachine) -> Vec<Event> {
        std::iter::from_fn(|| client.poll_event()).collect()
    }

    /// A machine online in a fresh session `s1` at `t0`, with its output drained.
    fn online(t0: Instant) -> ClientMachine {
        let mut client = machine();
        client.connect(t0);
        client.handle_input(WELCOME_FRESH, t0);
        sent(&mut client);
        events(&mut client);
        client
    }

    fn send(client: &mut ClientMachine, text: &'static str, now: Instant) -> Ticket {
        client.send(Bytes::from_static(text.as_bytes()), SendOptions::new(), now).unwrap()
    }

    #[test]
    fn a_message_sent_offline_is_written_once_online_and_delivered_by_the_ack() {
        let t0 = Instant::now();
        let mut client = machine();
        let ticket = send(&mut client, "hello", t0);
        assert_eq!(client.outbox(), OutboxStatus { queued: 1, unacked: 0, bytes: 5 });
        assert_eq!(client.poll_transmit(), None, "nothing is written while offline");
        client.connect(t0);
        assert_eq!(sent(&mut client), "HELLO 2 desk-1\n");
        client.handle_input(WELCOME_FRESH, t0 + ms(1));
        assert_eq!(sent(&mut client), "DATA 5 1\nhello");
        assert_eq!(client.outbox(), OutboxStatus { queued: 0, unacked: 1, bytes: 5 });
        client.handle_input(b"ACK 1\n", t0 + ms(2));
        let events = events(&mut client);
        assert!(matches!(events[0], Event::Connected { resumed: false, .. }));
        assert_eq!(events[1], Event::Delivered { up_to: ticket, count: 1 });
        assert_eq!(client.outbox(), OutboxStatus::default());
    }

    #[test]
    fn the_handshake_times_out_exactly_at_its_deadline() {
        let t0 = Instant::now();
        let mut client = machine();
        client.connect(t0);
        let deadline = t0 + Duration::from_secs(5);
        assert_eq!(client.poll_timeout(), Some(deadline));
        client.handle_timeout(deadline - ms(1));
        assert_eq!(client.poll_end(), None);
        client.handle_timeout(deadline);
        assert_eq!(
            client.poll_end(),
            Some(ConnectionEnd::Refused(ConnectError::HandshakeTimeout(Duration::from_secs(5))))
        );
    }

    #[test]
    fn a_refusal_in_the_handshake_is_reported_with_its_code() {
        let t0 = Instant::now();
        let mut client = machine();
        client.connect(t0);
        client.handle_input(b"ERROR bad-id nope\n", t0);
        let end = client.poll_end();
        assert_eq!(
            end,
            Some(ConnectionEnd::Refused(ConnectError::Rejected { code: ErrorCode::BadId, text: "nope".into() }))
        );
    }

    #[test]
    fn a_pulse_is_answered_at_once_and_a_due_ack_goes_right_before_the_alive() {
        let t0 = Instant::now();
        let mut client = online(t0);
        client.handle_input(b"DATA 2 1\nhiPULSE 7\n", t0 + ms(5));
        assert_eq!(sent(&mut client), "ACK 1\nALIVE 7\n");
        let events = events(&mut client);
        assert_eq!(events[0], Event::Message { seq: 1, payload: "hi".into() });
        assert_eq!(events[1], Event::Pulse { seq: 7, misses_reset: 0 });
        assert_eq!(client.poll_timeout().map(|at| at > t0 + ms(100)), Some(true), "no ack left due");
    }

    #[test]
    fn a_message_is_acknowledged_within_the_ack_delay_and_not_before() {
        let t0 = Instant::now();
        let mut client = online(t0);
        client.handle_input(b"DATA 1 1\na", t0 + ms(3));
        client.handle_input(b"DATA 1 2\nb", t0 + ms(10));
        assert_eq!(client.poll_timeout(), Some(t0 + ms(23)), "the first unacknowledged message sets it");
        client.handle_timeout(t0 + ms(22));
        assert_eq!(sent(&mut client), "");
        client.handle_timeout(t0 + ms(23));
        assert_eq!(sent(&mut client), "ACK 2\n");
    }

    #[test]
    fn replays_are_dropped_and_a_gap_breaks_the_connection() {
        let t0 = Instant::now();
        let mut client = online(t0);
        client.handle_input(b"DATA 1 1\naDATA 1 1\naDATA 1 0\nv", t0);
        assert_eq!(
            events(&mut client),
            vec![Event::Message { seq: 1, payload: "a".into() }, Event::Message { seq: 0, payload: "v".into() }]
        );
        client.handle_input(b"DATA 1 3\nc", t0);
        assert!(sent(&mut client).starts_with("ERROR malformed bad DATA: sequence gap: expected message 2, got 3"));
        assert!(matches!(
            client.poll_end(),
            Some(ConnectionEnd::Disconnected { reason: DisconnectReason::Protocol(_), .. })
        ));
        assert!(!client.is_online());
    }

    #[test]
    fn an_ack_above_what_was_sent_breaks_the_connection() {
        let t0 = Instant::now();
        let mut client = online(t0);
        send(&mut client, "x", t0);
        sent(&mut client);
        client.handle_input(b"ACK 2\n", t0);
        assert!(sent(&mut client).starts_with("ERROR malformed bad ACK"));
        assert_eq!(client.outbox().unacked, 1, "a bad ack releases nothing");
    }

    #[test]
    fn a_silent_server_is_lost_inside_the_protocol_window() {
        let t0 = Instant::now();
        let mut client = online(t0);
        let mut now;
        let lost_at = loop {
            let Some(at) = client.poll_timeout() else { panic!("the checker must keep a deadline") };
            now = at;
            client.handle_timeout(now);
            if let Some(end) = client.poll_end() {
                assert_eq!(
                    end,
                    ConnectionEnd::Disconnected {
                        reason: DisconnectReason::PulseTimeout { missed: 3 },
                        healthy: false
                    }
                );
                break now;
            }
        };
        // Interval 100 ms, max missed 3: between 300 and 400 ms after the last frame.
        assert!(lost_at >= t0 + ms(300) && lost_at <= t0 + ms(400), "{:?}", lost_at - t0);
        let missed: Vec<Event> = events(&mut client);
        assert_eq!(missed, vec![Event::Missed { count: 1, max: 3 }, Event::Missed { count: 2, max: 3 }]);
        assert_eq!(sent(&mut client), "ERROR timeout no pulse for 3 intervals\n");
    }

    #[test]
    fn a_resumed_session_replays_only_what_the_server_lacks_then_the_queue() {
        let t0 = Instant::now();
        let mut client = online(t0);
        let first = send(&mut client, "a", t0);
        let second = send(&mut client, "b", t0);
        send(&mut client, "c", t0);
        sent(&mut client);
        client.handle_input(b"DATA 1 1\nz", t0);
        client.connection_lost(DisconnectReason::Reset, t0 + ms(1));
        assert!(matches!(client.poll_end(), Some(ConnectionEnd::Disconnected { reason: DisconnectReason::Reset, .. })));
        send(&mut client, "d", t0 + ms(2));
        client.connect(t0 + ms(3));
        assert_eq!(sent(&mut client), "HELLO 2 desk-1 resume=secret1 rx=1\n");
        client.handle_input(b"WELCOME s1 100 3 resumed=1 rx=2 resume=secret2 keep=120000\n", t0 + ms(4));
        assert_eq!(sent(&mut client), "DATA 1 3\ncDATA 1 4\nd");
        let events = events(&mut client);
        assert_eq!(events[1], Event::Delivered { up_to: second, count: 2 });
        assert!(matches!(events[2], Event::Connected { resumed: true, .. }));
        assert!(first < second);
        assert_eq!(client.resume_state().unwrap().to_text(), "pulsewire-resume 1 secret2 s1 1");
    }

    #[test]
    fn a_fresh_session_hands_back_what_was_written_and_sends_what_was_not() {
        let t0 = Instant::now();
        let mut client = online(t0);
        let written = send(&mut client, "a", t0);
        sent(&mut client);
        client.handle_input(b"DATA 1 1\nz", t0);
        client.connection_lost(DisconnectReason::Eof, t0);
        client.poll_end();
        let queued = send(&mut client, "b", t0);
        client.connect(t0);
        sent(&mut client);
        client.handle_input(b"WELCOME s2 100 3 resumed=0 rx=0 resume=other keep=120000\n", t0);
        assert_eq!(sent(&mut client), "DATA 1 1\nb", "the new session numbers from 1");
        let events = events(&mut client);
        assert_eq!(events[1], Event::Undelivered { ticket: written, payload: "a".into(), maybe_delivered: true });
        assert!(matches!(events[2], Event::Connected { resumed: false, .. }));
        client.handle_input(b"DATA 1 1\ny", t0);
        assert_eq!(client.poll_event(), Some(Event::Message { seq: 1, payload: "y".into() }));
        client.handle_input(b"ACK 1\n", t0);
        assert_eq!(client.poll_event(), Some(Event::Delivered { up_to: queued, count: 1 }));
    }

    #[test]
    fn a_saved_state_resumes_in_a_new_process_and_numbers_on_from_the_servers_rx() {
        let t0 = Instant::now();
        let state = ResumeState::from_text("pulsewire-resume 1 sec s9 4").unwrap();
        let config = ClientMachineConfig::new(ClientId::new("desk-1").unwrap());
        let mut client = ClientMachine::new(config, Some(state));
        client.connect(t0);
        assert_eq!(sent(&mut client), "HELLO 2 desk-1 resume=sec rx=4\n");
        client.handle_input(b"WELCOME s9 100 3 resumed=1 rx=6 resume=sec2 keep=1000\n", t0);
        send(&mut client, "n", t0);
        assert_eq!(sent(&mut client), "DATA 1 7\nn");
        client.handle_input(b"DATA 1 4\nrDATA 1 5\nm", t0);
        let messages: Vec<Event> =
            events(&mut client).into_iter().filter(|e| matches!(e, Event::Message { .. })).collect();
        assert_eq!(
            messages,
            vec![Event::Message { seq: 5, payload: "m".into() }],
            "4 was delivered before the restart"
        );
    }

    #[test]
    fn a_message_expires_exactly_at_its_time_to_live_unless_written() {
        let t0 = Instant::now();
        let mut client = machine();
        let options = SendOptions::new().ttl(ms(50));
        let doomed = client.send("x".into(), options, t0).unwrap();
        let kept = client.send("y".into(), SendOptions::new().ttl(ms(80)), t0 + ms(10)).unwrap();
        assert_eq!(client.poll_timeout(), Some(t0 + ms(50)));
        client.handle_timeout(t0 + ms(49));
        assert_eq!(client.poll_event(), None);
        client.handle_timeout(t0 + ms(50));
        assert_eq!(client.poll_event(), Some(Event::Expired { ticket: doomed, payload: "x".into() }));
        assert_eq!(client.poll_timeout(), Some(t0 + ms(90)));
        client.connect(t0 + ms(60));
        client.handle_input(WELCOME_FRESH, t0 + ms(60));
        assert!(sent(&mut client).ends_with("DATA 1 1\ny"));
        client.handle_timeout(t0 + ms(200));
        assert!(
            !events(&mut client).iter().any(|e| matches!(e, Event::Expired { .. })),
            "{kept} was written: it never expires"
        );
    }

    #[test]
    fn a_full_outbox_refuses_with_the_payload_back_at_either_bound() {
        let t0 = Instant::now();
        let mut config = ClientMachineConfig::new(ClientId::new("desk-1").unwrap());
        config.outbox = OutboxLimits { max_messages: 3, max_bytes: 10 };
        let mut client = ClientMachine::new(config, None);
        for _ in 0..3 {
            client.send("ab".into(), SendOptions::new(), t0).unwrap();
        }
        assert_eq!(client.send("c".into(), SendOptions::new(), t0), Err(SendError::Full("c".into())));
        let mut client = machine();
        client.config.outbox = OutboxLimits { max_messages: 100, max_bytes: 10 };
        client.send(Bytes::from(vec![0; 9]), SendOptions::new(), t0).unwrap();
        assert_eq!(client.send("ab".into(), SendOptions::new(), t0), Err(SendError::Full("ab".into())));
        client.send("a".into(), SendOptions::new(), t0).unwrap();
    }

    #[test]
    fn a_volatile_message_is_written_now_or_refused() {
        let t0 = Instant::now();
        let mut client = machine();
        let volatile = SendOptions::new().volatile();
        assert_eq!(client.send("v".into(), volatile, t0), Err(SendError::Offline("v".into())));
        let mut client = online(t0);
        client.send("v".into(), volatile, t0).unwrap();
        assert_eq!(sent(&mut client), "DATA 1 0\nv");
        assert_eq!(client.outbox(), OutboxStatus::default(), "a volatile message is not kept");
    }

    #[test]
    fn close_waits_for_the_ack_then_says_bye() {
        let t0 = Instant::now();
        let mut client = online(t0);
        let ticket = send(&mut client, "a", t0);
        client.close(t0);
        assert_eq!(sent(&mut client), "DATA 1 1\na");
        assert_eq!(client.poll_end(), None);
        assert!(matches!(client.send("late".into(), SendOptions::new(), t0), Err(SendError::Closed(_))));
        client.handle_input(b"ACK 1\n", t0 + ms(20));
        assert_eq!(sent(&mut client), "BYE quit\n");
        assert!(matches!(
            client.poll_end(),
            Some(ConnectionEnd::Disconnected { reason: DisconnectReason::ClosedByApplication, .. })
        ));
        client.finish();
        assert_eq!(events(&mut client), vec![Event::Delivered { up_to: ticket, count: 1 }]);
    }

    #[test]
    fn close_gives_up_waiting_at_the_close_timeout_and_hands_back_the_rest() {
        let t0 = Instant::now();
        let mut client = online(t0);
        // A long pulse interval: the checker has nothing to say before the close timeout.
        client.handle_input(b"PULSE 1\n", t0);
        client.link = match std::mem::replace(&mut client.link, Link::Offline) {
            Link::Online(mut online) => {
                online.watch = MissWatch::new(t0, Duration::from_secs(60), 3);
                Link::Online(online)
            }
            other => other,
        };
        events(&mut client);
        let ticket = send(&mut client, "a", t0);
        client.close(t0);
        sent(&mut client);
        let deadline = t0 + Duration::from_secs(1);
        assert_eq!(client.poll_timeout(), Some(deadline));
        client.handle_timeout(deadline);
        assert_eq!(sent(&mut client), "BYE quit\n");
        assert!(client.poll_end().is_some());
        client.finish();
        assert_eq!(
            events(&mut client),
            vec![Event::Undelivered { ticket, payload: "a".into(), maybe_delivered: true }]
        );
    }

    #[test]
    fn closing_offline_hands_everything_back_as_never_sent() {
        let t0 = Instant::now();
        let mut client = machine();
        let ticket = send(&mut client, "a", t0);
        client.close(t0);
        client.finish();
        assert_eq!(
            events(&mut client),
            vec![Event::Undelivered { ticket, payload: "a".into(), maybe_delivered: false }]
        );
        assert_eq!(client.outbox(), OutboxStatus::default());
    }

    #[test]
    fn probes_are_answered_with_their_round_trip() {
        let t0 = Instant::now();
        let mut client = online(t0);
        let seq = client.probe(t0).unwrap();
        assert_eq!(sent(&mut client), format!("PULSE {seq}\n"));
        client.handle_input(format!("ALIVE {seq}\n").as_bytes(), t0 + ms(3));
        assert_eq!(client.poll_probe(), Some((seq, ms(3))));
        let mut offline = machine();
        assert_eq!(offline.probe(t0), Err(ProbeError::Offline));
    }

    #[test]
    fn a_welcome_without_version_2_options_is_refused() {
        let t0 = Instant::now();
        let mut client = machine();
        client.connect(t0);
        client.handle_input(b"WELCOME s1 100 3\n", t0);
        assert!(matches!(client.poll_end(), Some(ConnectionEnd::Refused(ConnectError::Protocol(_)))));
    }

    #[test]
    fn no_secret_reaches_a_debug_line() {
        let t0 = Instant::now();
        let mut client = machine();
        client.config.token = Token::new("tok-very-secret");
        client.connect(t0);
        client.handle_input(WELCOME_FRESH, t0);
        let shown = format!("{client:?} {:?}", client.resume_state());
        assert!(!shown.contains("secret1") && !shown.contains("tok-very-secret"), "{shown}");
    }
}
