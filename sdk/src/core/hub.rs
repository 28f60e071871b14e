//! The hub's decisions, as a plain type: who is online, who joins, replaces, resumes or leaves,
//! when each peer is pulsed or evicted, which sessions are kept detached and when they end.
//!
//! [`HubCore`] owns the [`OnlineList`] and the [`SessionTable`] (one owner for both) and reaches
//! each connection's [`ServerMachine`] through a [`PeerLink`]. The server's hub task feeds it
//! joins, leaves, sends and the time, and hands its events to the application; a test harness
//! does the same on a virtual clock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cadence::Cadence;
use super::online::{ConnKey, Departed, Eviction, OnlineList, PeerInfo};
use super::server_machine::{ServerMachine, WelcomeTerms};
use super::sessions::{
    DetachedLimits, KeptSession, SendRefused, ServerSession, SessionLimits, SessionTable, Undelivered,
};
use crate::auth::Subject;
use crate::protocol::{ClientId, ErrorCode, Frame, Resume, SessionId, MIN_PROTOCOL_VERSION};
use crate::server::{OfflineReason, ServerEvent, ServerSendError};

/// How the hub core reaches one connection's machine.
pub trait PeerLink {
    /// Runs `step` on the connection's machine; the server's shell then writes at once what the
    /// machine asked for (one non-blocking write) and wakes the connection's task for the rest.
    fn with_machine<R>(&self, step: impl FnOnce(&mut ServerMachine) -> R) -> R;

    /// Reads the connection's machine without a step: nothing to write, nothing to hand on
    /// (the hub's look at every peer on each tick costs no more than that).
    fn peek<R>(&self, read: impl FnOnce(&ServerMachine) -> R) -> R {
        self.with_machine(|machine| read(machine))
    }
}

/// What the hub core needs to know.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The pulse interval.
    pub interval: Duration,
    /// Missed pulses tolerated before a peer is evicted.
    pub max_missed: u32,
    /// How many peers may be online at once.
    pub max_peers: usize,
    /// How long a version 2 session is kept after its connection is lost (zero: not kept).
    pub keep: Duration,
    /// A peer whose socket has not taken this many frames is evicted as stalled.
    pub outbound_queue: usize,
    /// The bounds of each session.
    pub session_limits: SessionLimits,
    /// The bounds of all detached sessions together.
    pub detached_limits: DetachedLimits,
}

/// A `HELLO` the hub must answer.
#[derive(Debug, Clone)]
pub struct Join {
    /// The connection.
    pub key: ConnKey,
    /// Its protocol version.
    pub version: u32,
    /// The id it asks for.
    pub client_id: ClientId,
    /// The session it asks to resume.
    pub resume: Option<Resume>,
    /// Its address.
    pub addr: SocketAddr,
    /// Who it authenticated as (`None`: anonymous, on a server without an authenticator).
    pub subject: Option<Subject>,
    /// How long until its credential expires, if it does (told in `WELCOME`; past it and the
    /// grace, the connection ends with `ERROR auth-expired`).
    pub expires_in: Option<Duration>,
    /// Whether it connected over TLS.
    pub tls: bool,
}

/// The answer to a `HELLO`, to send once the application has heard of the peer.
#[derive(Debug)]
pub struct Welcome<L> {
    link: L,
    session: ServerSession,
    terms: WelcomeTerms,
}

impl<L: PeerLink> Welcome<L> {
    /// Writes `WELCOME` (and, for a resumed session, what the peer has not had): only now may
    /// the peer speak, and what it sent meanwhile is handled.
    pub fn send(self, now: Instant) {
        let Welcome { link, session, terms } = self;
        link.with_machine(|machine| machine.welcome(session, terms, now));
    }
}

/// What the hub remembers of a detached session besides the session itself.
#[derive(Debug, Clone)]
struct Absent {
    info: PeerInfo,
    reason: OfflineReason,
}

/// See the module documentation.
pub struct HubCore<L> {
    config: HubConfig,
    list: OnlineList<L>,
    sessions: SessionTable,
    absent: HashMap<SessionId, Absent>,
    cadence: Cadence,
    events: VecDeque<ServerEvent>,
    session_prefix: u32,
    last_session: u64,
}

impl<L> std::fmt::Debug for HubCore<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCore")
            .field("online", &self.list.len())
            .field("detached", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl<L: PeerLink + Clone> HubCore<L> {
    /// A hub with nobody online, whose first pulse is due one interval after `now`.
    /// `session_prefix` makes this server's session ids differ from another run's.
    pub fn new(config: HubConfig, now: Instant, session_prefix: u32) -> HubCore<L> {
        HubCore {
            list: OnlineList::new(config.max_missed),
            sessions: SessionTable::new(config.keep, config.detached_limits),
            absent: HashMap::new(),
            cadence: Cadence::new(now, config.interval),
            events: VecDeque::new(),
            session_prefix,
            last_session: 0,
            config,
        }
    }

    fn emit(&mut self, event: ServerEvent) {
        self.events.push_back(event);
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`HubCore::handle_timeout`] has something to do: the next pulse, or the end of a
    /// detached session.
    pub fn poll_timeout(&self) -> Instant {
        let pulse = self.cadence.next_deadline();
        self.sessions.poll_timeout().map_or(pulse, |end| end.min(pulse))
    }

    fn new_session_id(&mut self) -> SessionId {
        self.last_session += 1;
        // Hex digits only: always a valid session id.
        SessionId::new(format!("{:08x}{:x}", self.session_prefix, self.last_session))
            .unwrap_or_else(|| unreachable!("hex digits form a valid session id"))
    }

    /// Answers a `HELLO`: refuses it when the server is full, else finds the session it resumes
    /// (taking it from a half-open connection of the same id, or from the detached sessions) or
    /// opens a new one, replaces another connection with the same id, and welcomes the peer.
    /// `random` (16 bytes from a secure source) makes the session's fresh resume secret.
    ///
    /// Returns the `WELCOME` to send, unless the peer was refused: hand the application the
    /// events ([`HubCore::poll_event`], its `PeerOnline` among them) first, then
    /// [`Welcome::send`] it, so that whatever the peer sent comes after its `PeerOnline`.
    #[must_use = "the peer waits for its WELCOME"]
    pub fn join(&mut self, join: Join, link: L, random: [u8; 16], now: Instant) -> Option<Welcome<L>> {
        let Join { key, version, client_id, resume, addr, subject, expires_in, tls } = join;
        // Only the subject that holds an id (online, or in a kept session) may take it over or
        // resume it; another gets `ERROR forbidden` and disturbs nothing. Without an
        // authenticator every peer is anonymous, and version 1's takeover rule holds.
        let holder = match self.list.peer_by_id(&client_id) {
            Some(online) => Some(online.subject.as_ref()),
            None => self.sessions.kept_subject(&client_id),
        };
        if holder.is_some_and(|holder| holder != subject.as_ref()) {
            tracing::warn!(peer = %client_id, %addr, "connection refused: the id is held by another subject");
            link.with_machine(|machine| {
                machine.refuse(ErrorCode::Forbidden, "this client id is held by another subject")
            });
            return None;
        }
        let max = self.config.max_peers;
        if self.list.len() >= max && self.list.link(&client_id).is_none() {
            tracing::warn!(peer = %client_id, %addr, max, "connection refused: the server is full");
            let text = format!("the server holds its maximum of {max} peers");
            link.with_machine(|machine| machine.refuse(ErrorCode::Full, &text));
            return None;
        }
        let mut session = None;
        let mut presented = None;
        if let Some(Resume { secret, rx }) = resume.filter(|_| version > MIN_PROTOCOL_VERSION) {
            presented = Some(secret.clone());
            // The session's connection may still be attached: a half-open link the server has
            // not noticed yet. It is stopped before its session moves.
            let attached = self.list.key(&client_id).filter(|&old| {
                self.list
                    .link_of(old)
                    .is_some_and(|link| link.peek(|m| m.session().is_some_and(|s| s.matches(&secret))))
            });
            let mut found = None;
            if let Some(old) = attached {
                if let Some(gone) = self.list.leave(old) {
                    let taken = gone.link.with_machine(|machine| {
                        machine.close_with(Frame::error(ErrorCode::Resumed, "the session resumed on a new connection"));
                        machine.take_session()
                    });
                    let info = gone.info;
                    tracing::info!(peer = %info.id, addr = %info.addr, "connection replaced by its session's resume");
                    self.emit(ServerEvent::PeerDetached { peer: info.clone(), reason: OfflineReason::Resumed });
                    found = taken.map(|s| (s, info));
                }
            } else if let Some(kept) = self.sessions.resume(&client_id, &secret, now) {
                if let Some(absent) = self.absent.remove(kept.id()) {
                    found = Some((kept, absent.info));
                }
            }
            match found {
                // A client that says it has less than it acknowledged resumes from a saved state
                // older than its last acknowledgement (its process died in between): the
                // messages between are gone from the session, so it cannot go on gap-free. It
                // gets a fresh session, as for a session not found, and the old one ends.
                Some((mut stale, info)) if rx < stale.acked() => {
                    tracing::info!(peer = %client_id, rx, acked = stale.acked(), "resume from a stale state");
                    let undelivered = stale.drain_undelivered();
                    self.offline(info, OfflineReason::Replaced, undelivered);
                }
                Some((kept, _)) => session = Some(kept),
                None => {}
            }
        }
        let resumed = session.is_some();
        let session = match session {
            Some(mut session) => {
                session.rotate_secret(random);
                if let Some(presented) = presented {
                    // Good until the client answers a pulse on the new connection: a `WELCOME`
                    // lost with its connection must not cost the client its session.
                    session.resumed_with(presented);
                }
                session
            }
            None => {
                // A fresh session for this id ends the one kept for it.
                if let Some(old) = self.sessions.take(&client_id) {
                    self.end_session(old, None);
                }
                let id = self.new_session_id();
                ServerSession::new(id, client_id.clone(), random, self.config.session_limits)
                    .with_subject(subject.clone())
            }
        };
        let joined = self.list.join(key, client_id, addr, link.clone(), session.id().clone(), now);
        self.list.set_identity(key, subject, tls);
        if let Some(old) = joined.replaced {
            let session = old.link.with_machine(|machine| {
                machine.close_with(Frame::error(ErrorCode::Replaced, "a new connection took this client id"));
                machine.take_session()
            });
            self.depart(old, session, OfflineReason::Replaced, now);
        }
        if let Some(info) = self.list.peer(key) {
            let subject = info.subject.as_ref().map_or("-", |subject| subject.as_str());
            tracing::info!(peer = %info.id, addr = %info.addr, session = %info.session, subject, tls = info.tls, resumed, "peer online");
            let peer = info.clone();
            self.emit(ServerEvent::PeerOnline { peer, resumed });
        }
        let terms = WelcomeTerms {
            interval: self.config.interval,
            max_missed: self.config.max_missed,
            keep: self.config.keep,
            resumed,
            expires_in,
        };
        Some(Welcome { link, session, terms })
    }

    /// A connection ended (its machine closed, or the socket failed): the peer leaves the
    /// online list, and its session is kept detached or ends.
    pub fn leave(&mut self, key: ConnKey, reason: OfflineReason, now: Instant) {
        if let Some(gone) = self.list.leave(key) {
            let session = gone.link.with_machine(|machine| machine.take_session());
            self.depart(gone, session, reason, now);
        }
    }

    /// Whether a connection lost for `reason` keeps its session: not when the peer said goodbye
    /// or broke the protocol, was replaced, nor when the server stops. (A peer's `ERROR`, such
    /// as the client's `ERROR timeout` when it found the server silent, keeps it: the client
    /// comes back to resume.)
    fn keeps_session(&self, reason: &OfflineReason) -> bool {
        !self.config.keep.is_zero()
            && !matches!(
                reason,
                OfflineReason::Goodbye { .. }
                    | OfflineReason::Protocol(_)
                    | OfflineReason::Replaced
                    | OfflineReason::Shutdown
            )
    }

    fn depart(&mut self, gone: Departed<L>, session: Option<ServerSession>, reason: OfflineReason, now: Instant) {
        let info = gone.info;
        let v2 = gone.link.peek(|machine| machine.version()).is_some_and(|v| v > MIN_PROTOCOL_VERSION);
        match session {
            Some(session) if v2 && self.keeps_session(&reason) => {
                tracing::info!(peer = %info.id, addr = %info.addr, %reason, "peer detached: session kept");
                let id = session.id().clone();
                self.absent.insert(id, Absent { info: info.clone(), reason: reason.clone() });
                self.emit(ServerEvent::PeerDetached { peer: info, reason });
                for ended in self.sessions.detach(session, now) {
                    self.end_session(ended, None);
                }
            }
            session => {
                let undelivered = session.map(|mut s| if v2 { s.drain_undelivered() } else { Vec::new() });
                self.offline(info, reason, undelivered.unwrap_or_default());
            }
        }
    }

    fn offline(&mut self, peer: PeerInfo, reason: OfflineReason, undelivered: Vec<Undelivered>) {
        match &reason {
            OfflineReason::Timeout { .. } | OfflineReason::Stalled | OfflineReason::WriteTimeout => {
                tracing::warn!(peer = %peer.id, addr = %peer.addr, %reason, "peer evicted");
            }
            _ => tracing::info!(peer = %peer.id, addr = %peer.addr, %reason, "peer offline"),
        }
        self.emit(ServerEvent::PeerOffline { peer, reason, undelivered });
    }

    /// A detached session ends: its undelivered messages go back to the application with the
    /// reason its connection was lost (or `reason`, when given).
    fn end_session(&mut self, mut session: ServerSession, reason: Option<OfflineReason>) {
        let undelivered = session.drain_undelivered();
        if let Some(absent) = self.absent.remove(session.id()) {
            let reason = reason.unwrap_or(absent.reason);
            self.offline(absent.info, reason, undelivered);
        }
    }

    /// Does what is due at `now`: a pulse tick (the miss rule, then a `PULSE` to every peer
    /// still online), and the end of every detached session whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.cadence.poll(now) {
            self.tick(now);
        }
        for ended in self.sessions.expire(now) {
            self.end_session(ended, None);
        }
    }

    fn tick(&mut self, now: Instant) {
        let limit = self.config.outbound_queue;
        // One step of each peer's machine: what it observed decides its misses, and its pulse
        // is written in the same step (one lock, one non-blocking write).
        let evicted = self.list.tick_visit(now, |link, rule| {
            link.with_machine(|machine| {
                let Some(seq) = rule(machine.observation()) else { return true };
                // A closed peer is leaving, and its departure is already on the way.
                if machine.is_closed() {
                    return true;
                }
                if machine.queued_frames() >= limit {
                    return false;
                }
                machine.pulse(seq, now);
                true
            })
        });
        for (gone, why) in evicted {
            let reason = match why {
                Eviction::Timeout { misses } => OfflineReason::Timeout { misses },
                Eviction::Stalled => OfflineReason::Stalled,
            };
            let session = gone.link.with_machine(|machine| {
                match reason {
                    OfflineReason::Timeout { misses } => {
                        let text = format!("no frame for {misses} pulse intervals");
                        machine.close_with(Frame::error(ErrorCode::Timeout, text));
                    }
                    // A peer that does not read gets nothing more.
                    _ => machine.close(),
                }
                machine.take_session()
            });
            self.depart(gone, session, reason, now);
        }
    }

    /// Queues a message for a peer, online or detached; returns its number in the session (0
    /// for a version 1 peer, whose messages are not numbered). Never waits: a full session
    /// hands the payload back.
    pub fn send(&mut self, peer: &ClientId, payload: Bytes) -> Result<u64, ServerSendError> {
        let refused = |refused: SendRefused| match refused {
            SendRefused::Full(payload) => ServerSendError::Full(payload),
            other => ServerSendError::NotOnline(other.into_payload()),
        };
        let limit = self.config.outbound_queue;
        if let Some(link) = self.list.link(peer) {
            return link.with_machine(|machine| send_on(machine, payload, limit)).map_err(refused);
        }
        self.sessions.send(peer, payload).map_err(refused)
    }

    /// Queues a message for every peer, online or detached; returns how many took it.
    pub fn broadcast(&mut self, payload: Bytes) -> usize {
        let limit = self.config.outbound_queue;
        let online = self
            .list
            .links()
            .filter(|(_, link)| link.with_machine(|m| send_on(m, payload.clone(), limit).is_ok()))
            .count();
        let kept = self.sessions.client_ids();
        online + kept.iter().filter(|id| self.sessions.send(id, payload.clone()).is_ok()).count()
    }

    /// The online list, with what each connection observed applied.
    pub fn online(&mut self) -> Vec<PeerInfo> {
        self.list.observe(|link| link.peek(|machine| machine.observation()));
        self.list.snapshot()
    }

    /// The detached sessions, with the time each has left at `now`.
    pub fn detached(&self, now: Instant) -> Vec<KeptSession> {
        self.sessions.list(now)
    }

    /// Every online connection's link.
    pub fn links(&self) -> Vec<L> {
        self.list.links().map(|(_, link)| link.clone()).collect()
    }

    /// How many peers are online.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The server stops: every peer gets `BYE shutdown`, every session ends, each with its
    /// `PeerOffline` and undelivered messages.
    pub fn shutdown(&mut self, now: Instant) {
        for gone in self.list.drain() {
            let session = gone.link.with_machine(|machine| {
                machine.close_with(Frame::bye("shutdown"));
                machine.take_session()
            });
            self.depart(gone, session, OfflineReason::Shutdown, now);
        }
        for session in self.sessions.drain() {
            self.end_session(session, Some(OfflineReason::Shutdown));
        }
    }

    /// The server is aborted: every link is handed back to be cut, with no word and no event.
    pub fn cut(&mut self) -> Vec<L> {
        self.sessions.drain();
        self.absent.clear();
        self.list.drain().into_iter().map(|gone| gone.link).collect()
    }
}

/// Sends on a connection's machine. A protocol 2 session bounds itself; a protocol 1 peer,
/// whose messages are not acknowledged, is refused once `limit` frames wait for its socket.
fn send_on(machine: &mut ServerMachine, payload: Bytes, limit: usize) -> Result<u64, SendRefused> {
    if machine.version() == Some(MIN_PROTOCOL_VERSION) && machine.queued_frames() >= limit {
        return Err(SendRefused::Full(payload));
    }
    machine.send(payload)
}
