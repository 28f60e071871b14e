//! What survives a connection on the server (protocol 2): a [`ServerSession`], and the hub's
//! [`SessionTable`] of sessions whose connection is gone, kept for a while so that their peer
//! can resume them.
//!
//! Both are plain data: no sockets, no tasks, no clock reads and no randomness of their own. The
//! random bytes of a resume secret come in as an argument, time comes in as `now`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::delivery::{Inbound, Outbound};
use crate::auth::Subject;
use crate::protocol::{ClientId, ResumeSecret, SessionId};

/// The default of [`SessionLimits::max_messages`]: 256 messages.
pub const DEFAULT_SESSION_MESSAGES: usize = 256;

/// The default of [`SessionLimits::max_bytes`]: 256 KiB.
pub const DEFAULT_SESSION_BYTES: usize = 256 * 1024;

/// The default time a session is kept once its connection is lost: 120 s.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(120);

/// The default of [`DetachedLimits::max_bytes`]: 64 MiB.
pub const DEFAULT_DETACHED_BYTES: usize = 64 * 1024 * 1024;

/// How many server messages one session may hold: written and not yet acknowledged, plus
/// queued while its connection is gone.
///
/// A message is refused when the session holds `max_messages`, or when its payload would take
/// the session above `max_bytes`; a session that holds nothing takes one message of any size,
/// so that a payload above `max_bytes` is not refused for ever.
///
/// ```
/// use pulsewire::core::SessionLimits;
///
/// let limits = SessionLimits::default();
/// assert_eq!((limits.max_messages, limits.max_bytes), (256, 256 * 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// The most messages held at once (default 256).
    pub max_messages: usize,
    /// The most payload bytes held at once (default 256 KiB).
    pub max_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { max_messages: DEFAULT_SESSION_MESSAGES, max_bytes: DEFAULT_SESSION_BYTES }
    }
}

/// Why a message for a peer was not taken; the payload is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendRefused {
    /// The session holds its limit of messages or bytes ([`SessionLimits`]), or the detached
    /// sessions together hold theirs ([`DetachedLimits::max_bytes`]): try again once the peer
    /// acknowledged some.
    Full(Bytes),
    /// There is no open session to take it: the connection is not welcomed yet or is closed
    /// ([`ServerMachine::send`](super::ServerMachine::send)), or no session is kept for the id
    /// ([`SessionTable::send`]).
    Closed(Bytes),
}

impl SendRefused {
    /// The message that was refused.
    ///
    /// ```
    /// use pulsewire::core::SendRefused;
    /// assert_eq!(&SendRefused::Full("hi".into()).into_payload()[..], b"hi");
    /// ```
    pub fn into_payload(self) -> Bytes {
        match self {
            SendRefused::Full(payload) | SendRefused::Closed(payload) => payload,
        }
    }
}

impl fmt::Display for SendRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendRefused::Full(_) => f.write_str("the session holds its limit of messages or bytes"),
            SendRefused::Closed(_) => f.write_str("no open session for this peer"),
        }
    }
}

impl std::error::Error for SendRefused {}

/// A server message that never got acknowledged, handed back when its session ends
/// ([`ServerSession::drain_undelivered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// Its number in the session.
    pub seq: u64,
    /// The message.
    pub payload: Bytes,
    /// Whether it was ever written to a connection: then the peer may have had it ("maybe
    /// delivered"); otherwise it certainly did not.
    pub maybe_delivered: bool,
}

/// A protocol-2 session on the server: what survives its connections.
///
/// It holds the session id (public: logs, the online list), the client id, the resume secret
/// that authorizes a resume, the server's messages to the peer that are not acknowledged yet
/// ([`Outbound`]), and what the server's application has been given from the peer
/// ([`Inbound`]). A [`ServerMachine`](super::ServerMachine) works on it while a connection is
/// attached; the hub's [`SessionTable`] keeps it while none is.
///
/// ```
/// use pulsewire::core::{ServerSession, SessionLimits};
/// use pulsewire::protocol::{ClientId, ResumeSecret, SessionId};
///
/// let id = SessionId::new("91ddcd751").unwrap();
/// let client = ClientId::new("desk-42").unwrap();
/// let mut session = ServerSession::new(id, client, [7; 16], SessionLimits::default());
/// assert!(session.matches(&ResumeSecret::from_random([7; 16])));
///
/// // Every WELCOME hands out a fresh secret; the old one works until the client shows it got
/// // the new one (it answers a pulse), in case that WELCOME was lost with its connection.
/// session.rotate_secret([9; 16]);
/// assert!(session.matches(&ResumeSecret::from_random([7; 16])));
/// session.forget_previous_secret();
/// assert!(!session.matches(&ResumeSecret::from_random([7; 16])));
/// assert!(session.matches(&ResumeSecret::from_random([9; 16])));
///
/// // Messages queued while no connection is attached are written on resume, or handed back
/// // when the session ends.
/// assert_eq!(session.queue("hello".into()), Ok(1));
/// let back = session.drain_undelivered();
/// assert_eq!((back[0].seq, back[0].maybe_delivered), (1, false));
/// ```
#[derive(Debug)]
pub struct ServerSession {
    id: SessionId,
    client_id: ClientId,
    /// Who opened it (`None`: anonymous): only the same subject may resume it.
    subject: Option<Subject>,
    secret: ResumeSecret,
    /// The secret before the last rotation, still good until the client shows it has the new
    /// one: a `WELCOME` lost with its connection must not cost the client its session.
    previous: Option<ResumeSecret>,
    /// Whether `secret` went out in a `WELCOME` already: the next one needs a fresh secret.
    pub(super) secret_handed_out: bool,
    /// Server → client messages.
    pub(super) outbound: Outbound<()>,
    /// Client → server messages.
    pub(super) inbound: Inbound,
    limits: SessionLimits,
}

impl ServerSession {
    /// A new session (nothing sent or received yet) whose resume secret is made of `random`, 16
    /// bytes the caller took from a secure random source.
    pub fn new(id: SessionId, client_id: ClientId, random: [u8; 16], limits: SessionLimits) -> ServerSession {
        ServerSession {
            id,
            client_id,
            subject: None,
            secret: ResumeSecret::from_random(random),
            previous: None,
            secret_handed_out: false,
            outbound: Outbound::new(),
            inbound: Inbound::new(0),
            limits,
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The client id the session belongs to.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The same session, opened by `subject` (only the same subject may resume it).
    pub fn with_subject(self, subject: Option<Subject>) -> ServerSession {
        ServerSession { subject, ..self }
    }

    /// Who opened the session (`None`: anonymous).
    pub fn subject(&self) -> Option<&Subject> {
        self.subject.as_ref()
    }

    /// The current resume secret, as the next `WELCOME` hands it out: never log it.
    pub fn secret(&self) -> &ResumeSecret {
        &self.secret
    }

    /// Whether `secret` is the current resume secret, compared in constant time.
    pub fn matches(&self, secret: &ResumeSecret) -> bool {
        // Both compared, whichever matches, so that the time taken says nothing.
        let current = self.secret == *secret;
        let previous = self.previous.as_ref().is_some_and(|previous| previous == secret);
        current | previous
    }

    /// The client answered a pulse on the connection that handed out the current secret: it
    /// has it, and the one before stops working.
    pub fn forget_previous_secret(&mut self) {
        self.previous = None;
    }

    /// The client resumed with `presented` (the current or the previous secret): after the
    /// next rotation, that is the one it still holds until it shows it got the new one.
    pub fn resumed_with(&mut self, presented: ResumeSecret) {
        self.previous = Some(presented);
    }

    /// Replaces the resume secret with one made of `random` (16 fresh random bytes). Call it
    /// before each `WELCOME` that continues the session: the protocol hands out a fresh secret
    /// every time, and the one before stops working.
    pub fn rotate_secret(&mut self, random: [u8; 16]) {
        let old = std::mem::replace(&mut self.secret, ResumeSecret::from_random(random));
        self.previous = Some(old);
        self.secret_handed_out = false;
    }

    /// The session's limits.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Whether a payload of `len` bytes fits within the limits.
    pub(super) fn has_room_for(&self, len: usize) -> bool {
        let SessionLimits { max_messages, max_bytes } = self.limits;
        self.outbound.len() < max_messages
            && (self.outbound.is_empty() || self.outbound.bytes().saturating_add(len) <= max_bytes)
    }

    /// Numbers a message for the peer and keeps it, without writing it (the machine writes it
    /// when a connection is attached); returns its number. Refused with the payload back when
    /// the session holds its limit ([`SessionLimits`]).
    pub fn queue(&mut self, payload: Bytes) -> Result<u64, SendRefused> {
        if !self.has_room_for(payload.len()) {
            return Err(SendRefused::Full(payload));
        }
        Ok(self.outbound.push(payload, ()))
    }

    /// How many server messages the session holds (written and unacknowledged, or not written).
    pub fn queued(&self) -> usize {
        self.outbound.len()
    }

    /// Their payload bytes.
    pub fn bytes(&self) -> usize {
        self.outbound.bytes()
    }

    /// The highest server message the peer acknowledged.
    pub fn acked(&self) -> u64 {
        self.outbound.acked()
    }

    /// The highest client message handed to the server's application (the `rx` of the next
    /// `WELCOME`).
    pub fn delivered(&self) -> u64 {
        self.inbound.delivered()
    }

    /// How many replayed client messages were dropped.
    pub fn replays(&self) -> u64 {
        self.inbound.replays()
    }

    /// The server → client half, to look at.
    pub fn outbound(&self) -> &Outbound<()> {
        &self.outbound
    }

    /// The client → server half, to look at.
    pub fn inbound(&self) -> &Inbound {
        &self.inbound
    }

    /// Takes every message the peer did not acknowledge out of the session, oldest first, for
    /// the server's application: the session has ended. Each says whether it was ever written
    /// ([`Undelivered::maybe_delivered`]).
    pub fn drain_undelivered(&mut self) -> Vec<Undelivered> {
        self.outbound
            .drain()
            .into_iter()
            .map(|(message, written)| Undelivered {
                seq: message.seq,
                payload: message.payload,
                maybe_delivered: written,
            })
            .collect()
    }
}

/// How much the detached sessions may hold together; past either bound the detached session
/// nearest its end is ended early.
///
/// ```
/// use pulsewire::core::DetachedLimits;
///
/// let limits = DetachedLimits::for_max_peers(100_000);
/// assert_eq!((limits.max_sessions, limits.max_bytes), (200_000, 64 * 1024 * 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachedLimits {
    /// The most detached sessions kept (default 2 × the server's max peers).
    pub max_sessions: usize,
    /// The most payload bytes they hold together (default 64 MiB).
    pub max_bytes: usize,
}

impl DetachedLimits {
    /// The defaults for a server holding at most `max_peers` peers: twice as many sessions, and
    /// 64 MiB.
    pub fn for_max_peers(max_peers: usize) -> DetachedLimits {
        DetachedLimits { max_sessions: max_peers.saturating_mul(2), max_bytes: DEFAULT_DETACHED_BYTES }
    }
}

/// One detached session as [`SessionTable::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSession {
    /// The client id.
    pub client_id: ClientId,
    /// The session id.
    pub session: SessionId,
    /// How long until it ends.
    pub left: Duration,
    /// How many server messages it holds.
    pub queued: usize,
    /// Their payload bytes.
    pub bytes: usize,
}

struct Kept {
    session: ServerSession,
    ends: Instant,
    /// Breaks ties between sessions that end at the same instant: the first detached ends first.
    order: u64,
}

/// The sessions whose connection is gone, kept for `keep` so that their peer can resume them:
/// the hub is its one owner.
///
/// A session is found again only by its client id **and** its resume secret (compared in
/// constant time); a wrong secret finds nothing and leaves the session kept. The table is
/// bounded in sessions and bytes ([`DetachedLimits`]): a detach past either bound ends the
/// detached session nearest its end early. Every session that ends (kept past `keep`, ended
/// early, taken for a fresh session) is handed back, so that its undelivered messages go back
/// to the server's application ([`ServerSession::drain_undelivered`]).
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::{DetachedLimits, ServerSession, SessionLimits, SessionTable};
/// use pulsewire::protocol::{ClientId, ResumeSecret, SessionId};
///
/// let t0 = Instant::now();
/// let keep = Duration::from_secs(120);
/// let mut table = SessionTable::new(keep, DetachedLimits::for_max_peers(10));
/// let desk = ClientId::new("desk-42").unwrap();
/// let session = ServerSession::new(SessionId::new("s1").unwrap(), desk.clone(), [7; 16], SessionLimits::default());
/// assert!(table.detach(session, t0).is_empty());
///
/// // The application sends to the offline peer: queued in its session.
/// assert_eq!(table.send(&desk, "while you were away".into()), Ok(1));
///
/// // A wrong secret finds nothing; the right one finds the session, with its message.
/// assert!(table.resume(&desk, &ResumeSecret::from_random([8; 16]), t0).is_none());
/// let mut back = table.resume(&desk, &ResumeSecret::from_random([7; 16]), t0).unwrap();
/// assert_eq!(back.queued(), 1);
///
/// // Not resumed within `keep`: the session ends, its messages go back to the application.
/// table.detach(back, t0 + keep);
/// assert_eq!(table.poll_timeout(), Some(t0 + keep * 2));
/// let mut ended = table.expire(t0 + keep * 2);
/// assert_eq!(ended[0].drain_undelivered().len(), 1);
/// assert!(table.is_empty());
/// ```
pub struct SessionTable {
    keep: Duration,
    limits: DetachedLimits,
    kept: HashMap<ClientId, Kept>,
    /// The same sessions by the time each ends, nearest first.
    ends: BTreeMap<(Instant, u64), ClientId>,
    /// The payload bytes of every kept session together.
    bytes: usize,
    detached: u64,
}

impl fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTable")
            .field("sessions", &self.kept.len())
            .field("bytes", &self.bytes)
            .field("keep", &self.keep)
            .field("limits", &self.limits)
            .finish()
    }
}

impl SessionTable {
    /// An empty table keeping each detached session for `keep`, within `limits`.
    pub fn new(keep: Duration, limits: DetachedLimits) -> SessionTable {
        SessionTable { keep, limits, kept: HashMap::new(), ends: BTreeMap::new(), bytes: 0, detached: 0 }
    }

    /// How long a detached session is kept.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// The table's bounds.
    pub fn limits(&self) -> DetachedLimits {
        self.limits
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The payload bytes the kept sessions hold together.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `session`, whose connection is gone at `now`, until `now + keep`. Returns the
    /// sessions this ends early, for the server's application: one kept before for the same
    /// client id, and, while the table is past a bound, the sessions nearest their end (the new
    /// one too, if it alone is past a bound).
    pub fn detach(&mut self, mut session: ServerSession, now: Instant) -> Vec<ServerSession> {
        let mut ended: Vec<ServerSession> = self.take(session.client_id()).into_iter().collect();
        // Nothing counts as written on the connection that resumes it.
        session.outbound.connection_lost();
        let ends = now + self.keep;
        self.detached += 1;
        let order = self.detached;
        self.bytes += session.bytes();
        self.ends.insert((ends, order), session.client_id().clone());
        self.kept.insert(session.client_id().clone(), Kept { session, ends, order });
        while self.kept.len() > self.limits.max_sessions || self.bytes > self.limits.max_bytes {
            let Some((_, nearest)) = self.ends.first_key_value() else { break };
            let nearest = nearest.clone();
            ended.extend(self.take(&nearest));
        }
        ended
    }

    /// The session kept for `client_id` whose resume secret is `secret` (compared in constant
    /// time), taken out of the table to be resumed; `None` when there is none, the secret is
    /// wrong or the session's keep has passed at `now`. Only a match takes it out: after a wrong
    /// secret the session stays kept.
    pub fn resume(&mut self, client_id: &ClientId, secret: &ResumeSecret, now: Instant) -> Option<ServerSession> {
        let kept = self.kept.get(client_id)?;
        // An expired session is left for `expire`, which hands it back to the application.
        if kept.ends <= now || !kept.session.matches(secret) {
            return None;
        }
        self.take(client_id)
    }

    /// The subject of the session kept for `client_id`, if one is kept (`Some(None)`: kept, for
    /// an anonymous peer).
    pub fn kept_subject(&self, client_id: &ClientId) -> Option<Option<&Subject>> {
        self.kept.get(client_id).map(|kept| kept.session.subject())
    }

    /// Takes the session kept for `client_id` out of the table, whatever its secret: a fresh
    /// session for this id ends it, and its messages go back to the application.
    pub fn take(&mut self, client_id: &ClientId) -> Option<ServerSession> {
        let kept = self.kept.remove(client_id)?;
        self.ends.remove(&(kept.ends, kept.order));
        self.bytes -= kept.session.bytes();
        Some(kept.session)
    }

    /// Queues a message from the server's application into the session kept for `client_id`,
    /// to be written on resume; returns its number. Refused with the payload back when no
    /// session is kept for the id ([`SendRefused::Closed`]), or when the session holds its
    /// limit or the table would go past its byte bound ([`SendRefused::Full`]): a message is
    /// refused rather than another peer's session ended to make room for it.
    pub fn send(&mut self, client_id: &ClientId, payload: Bytes) -> Result<u64, SendRefused> {
        let Some(kept) = self.kept.get_mut(client_id) else {
            return Err(SendRefused::Closed(payload));
        };
        if self.bytes.saturating_add(payload.len()) > self.limits.max_bytes {
            return Err(SendRefused::Full(payload));
        }
        let len = payload.len();
        let seq = kept.session.queue(payload)?;
        self.bytes += len;
        Ok(seq)
    }

    /// Ends every session whose keep has passed at `now` (it ends exactly at detach + `keep`),
    /// nearest end first, and hands them back.
    pub fn expire(&mut self, now: Instant) -> Vec<ServerSession> {
        let mut ended = Vec::new();
        while let Some((&(ends, _), client_id)) = self.ends.first_key_value() {
            if ends > now {
                break;
            }
            let client_id = client_id.clone();
            ended.extend(self.take(&client_id));
        }
        ended
    }

    /// When the next session ends: call [`SessionTable::expire`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ends.first_key_value().map(|(&(ends, _), _)| ends)
    }

    /// The client ids of the kept sessions.
    pub fn client_ids(&self) -> Vec<ClientId> {
        self.kept.keys().cloned().collect()
    }

    /// The kept sessions at `now`, nearest end first.
    pub fn list(&self, now: Instant) -> Vec<KeptSession> {
        self.ends
            .values()
            .filter_map(|client_id| self.kept.get(client_id))
            .map(|kept| KeptSession {
                client_id: kept.session.client_id().clone(),
                session: kept.session.id().clone(),
                left: kept.ends.saturating_duration_since(now),
                queued: kept.session.queued(),
                bytes: kept.session.bytes(),
            })
            .collect()
    }

    /// Ends every kept session (the server stops) and hands them back, nearest end first.
    pub fn drain(&mut self) -> Vec<ServerSession> {
        let order = std::mem::take(&mut self.ends);
        self.bytes = 0;
        order.into_values().filter_map(|client_id| self.kept.remove(&client_id)).map(|kept| kept.session).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(120);
    const NS: Duration = Duration::from_nanos(1);

    fn id(name: &str) -> ClientId {
        ClientId::new(name).unwrap()
    }

    fn secret(byte: u8) -> ResumeSecret {
        ResumeSecret::from_random([byte; 16])
    }

    /// A session for `name` whose secret is made of `byte`, holding `messages` of `len` bytes
    /// each (never written).
    fn session(name: &str, byte: u8, messages: usize, len: usize) -> ServerSession {
        let limits = SessionLimits { max_messages: 1000, max_bytes: 1 << 30 };
        let mut session =
            ServerSession::new(SessionId::new(format!("s-{name}")).unwrap(), id(name), [byte; 16], limits);
        for _ in 0..messages {
            session.queue(Bytes::from(vec![b'x'; len])).unwrap();
        }
        session
    }

    fn names(sessions: &[ServerSession]) -> Vec<&str> {
        sessions.iter().map(|s| s.client_id().as_str()).collect()
    }

    fn table(max_sessions: usize, max_bytes: usize) -> SessionTable {
        SessionTable::new(KEEP, DetachedLimits { max_sessions, max_bytes })
    }

    #[test]
    fn a_new_session_has_the_secret_of_its_random_bytes_and_rotating_replaces_it() {
        let mut session = session("desk", 7, 0, 0);
        assert_eq!(session.secret().as_str(), "07".repeat(16));
        assert!(session.matches(&secret(7)));
        session.rotate_secret([8; 16]);
        assert!(session.matches(&secret(7)), "good until the client shows it has the new one");
        session.forget_previous_secret();
        assert!(!session.matches(&secret(7)), "the secret before stops working");
        assert!(session.matches(&secret(8)));
        // A client that resumed with the older one keeps it good across the next rotation.
        session.resumed_with(secret(8));
        session.rotate_secret([9; 16]);
        assert!(session.matches(&secret(8)) && session.matches(&secret(9)) && !session.matches(&secret(7)));
        assert_eq!((session.acked(), session.delivered(), session.queued()), (0, 0, 0));
    }

    #[test]
    fn a_session_refuses_a_message_at_either_limit_and_hands_it_back() {
        let limits = SessionLimits { max_messages: 3, max_bytes: 10 };
        let mut session = ServerSession::new(SessionId::new("s").unwrap(), id("desk"), [1; 16], limits);
        // Nothing held: one message of any size is taken.
        assert_eq!(session.queue(Bytes::from(vec![b'x'; 25])), Ok(1));
        assert_eq!(session.queue("y".into()), Err(SendRefused::Full("y".into())), "25 bytes held, 10 allowed");
        session.drain_undelivered();
        assert_eq!(session.queue("12345".into()), Ok(2));
        assert_eq!(session.queue("12345".into()), Ok(3), "exactly the byte limit");
        assert_eq!(session.queue("1".into()), Err(SendRefused::Full("1".into())));
        assert_eq!(session.queue("".into()), Ok(4), "an empty message fits");
        assert_eq!(session.queue("".into()), Err(SendRefused::Full("".into())), "3 messages held, 3 allowed");
    }

    #[test]
    fn drain_undelivered_says_which_messages_may_have_been_delivered() {
        let mut session = session("desk", 1, 3, 2);
        let first = session.outbound.next_unwritten().unwrap().seq;
        session.outbound.written(first);
        let back: Vec<(u64, bool)> = session.drain_undelivered().iter().map(|u| (u.seq, u.maybe_delivered)).collect();
        assert_eq!(back, vec![(1, true), (2, false), (3, false)]);
        assert_eq!((session.queued(), session.bytes()), (0, 0));
        assert_eq!(session.queue("next".into()), Ok(4), "the numbering goes on");
    }

    #[test]
    fn a_kept_session_ends_exactly_at_its_keep_deadline_and_not_before() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        assert_eq!(table.poll_timeout(), None);
        assert!(table.detach(session("desk", 1, 2, 3), t0).is_empty());
        assert_eq!(table.poll_timeout(), Some(t0 + KEEP));
        assert!(table.expire(t0 + KEEP - NS).is_empty());
        assert_eq!(table.len(), 1);
        let ended = table.expire(t0 + KEEP);
        assert_eq!(names(&ended), vec!["desk"]);
        assert_eq!((table.len(), table.bytes(), table.poll_timeout()), (0, 0, None));
    }

    #[test]
    fn sessions_end_nearest_first_each_at_its_own_deadline() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("a", 1, 0, 0), t0);
        table.detach(session("b", 2, 0, 0), t0 + Duration::from_secs(5));
        table.detach(session("c", 3, 0, 0), t0 + Duration::from_secs(5));
        assert_eq!(names(&table.expire(t0 + KEEP)), vec!["a"]);
        assert_eq!(table.poll_timeout(), Some(t0 + Duration::from_secs(5) + KEEP));
        assert_eq!(names(&table.expire(t0 + KEEP * 2)), vec!["b", "c"], "a tie ends in detach order");
    }

    #[test]
    fn resume_needs_the_client_id_and_the_secret() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("desk", 7, 1, 4), t0);
        assert!(table.resume(&id("desk"), &secret(8), t0).is_none(), "wrong secret");
        assert!(table.resume(&id("other"), &secret(7), t0).is_none(), "wrong id");
        assert!(table.resume(&id("desk"), &ResumeSecret::new("07").unwrap(), t0).is_none(), "a prefix");
        assert_eq!((table.len(), table.bytes()), (1, 4), "a wrong secret leaves the session kept");
        let resumed = table.resume(&id("desk"), &secret(7), t0 + KEEP - NS).unwrap();
        assert_eq!((resumed.queued(), resumed.id().as_str()), (1, "s-desk"));
        assert!(table.is_empty() && table.bytes() == 0);
    }

    #[test]
    fn a_session_whose_keep_has_passed_is_not_resumed_but_handed_back() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("desk", 7, 1, 4), t0);
        assert!(table.resume(&id("desk"), &secret(7), t0 + KEEP).is_none());
        assert_eq!(names(&table.expire(t0 + KEEP)), vec!["desk"]);
    }

    #[test]
    fn take_ends_the_kept_session_whatever_its_secret() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("desk", 7, 2, 5), t0);
        assert!(table.take(&id("other")).is_none());
        let mut taken = table.take(&id("desk")).unwrap();
        assert_eq!(taken.drain_undelivered().len(), 2);
        assert_eq!((table.len(), table.bytes(), table.poll_timeout()), (0, 0, None));
    }

    #[test]
    fn detaching_a_second_session_for_the_same_id_ends_the_first() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("desk", 1, 1, 10), t0);
        let ended = table.detach(session("desk", 2, 1, 20), t0 + NS);
        assert_eq!(ended.len(), 1);
        assert!(ended[0].matches(&secret(1)));
        assert_eq!((table.len(), table.bytes()), (1, 20));
    }

    #[test]
    fn past_the_session_bound_the_session_nearest_its_end_is_ended_early() {
        let t0 = Instant::now();
        let mut table = table(2, 1 << 20);
        let s = Duration::from_secs(1);
        assert!(table.detach(session("a", 1, 0, 0), t0 + s).is_empty());
        assert!(table.detach(session("b", 2, 0, 0), t0).is_empty(), "b was lost earlier, but reported later");
        assert_eq!(names(&table.detach(session("c", 3, 0, 0), t0 + s * 2)), vec!["b"], "b ends first");
        assert_eq!(names(&table.detach(session("d", 4, 0, 0), t0 + s * 3)), vec!["a"]);
        let left: Vec<String> = table.list(t0).iter().map(|k| k.client_id.to_string()).collect();
        assert_eq!(left, vec!["c", "d"]);
    }

    #[test]
    fn past_the_byte_bound_the_sessions_nearest_their_end_are_ended_early() {
        let t0 = Instant::now();
        let mut table = table(100, 100);
        let s = Duration::from_secs(1);
        table.detach(session("a", 1, 4, 10), t0);
        table.detach(session("b", 2, 4, 10), t0 + s);
        assert_eq!(table.bytes(), 80);
        // 80 + 50 = 130 > 100: a (40) goes, 90 left.
        assert_eq!(names(&table.detach(session("c", 3, 5, 10), t0 + s * 2)), vec!["a"]);
        assert_eq!(table.bytes(), 90);
        // 90 + 60 = 150: b and c go, 60 left.
        assert_eq!(names(&table.detach(session("d", 4, 6, 10), t0 + s * 3)), vec!["b", "c"]);
        assert_eq!((table.len(), table.bytes()), (1, 60));
        // A session alone past the bound ends too.
        assert_eq!(names(&table.detach(session("e", 5, 11, 10), t0 + s * 4)), vec!["d", "e"]);
        assert_eq!((table.len(), table.bytes(), table.poll_timeout()), (0, 0, None));
    }

    #[test]
    fn send_queues_into_a_detached_session_within_its_limits_and_the_tables() {
        let t0 = Instant::now();
        let mut table = table(10, 30);
        let limits = SessionLimits { max_messages: 2, max_bytes: 1000 };
        let desk = ServerSession::new(SessionId::new("s1").unwrap(), id("desk"), [1; 16], limits);
        table.detach(desk, t0);
        assert_eq!(table.send(&id("nobody"), "x".into()), Err(SendRefused::Closed("x".into())));
        assert_eq!(table.send(&id("desk"), Bytes::from(vec![b'a'; 20])), Ok(1));
        assert_eq!(table.bytes(), 20);
        let big = Bytes::from(vec![b'b'; 11]);
        assert_eq!(table.send(&id("desk"), big.clone()), Err(SendRefused::Full(big)), "31 bytes > the table's 30");
        assert_eq!(table.send(&id("desk"), Bytes::from(vec![b'c'; 10])), Ok(2));
        assert_eq!(table.send(&id("desk"), "".into()), Err(SendRefused::Full("".into())), "the session's 2");
        let listed = table.list(t0 + Duration::from_secs(20));
        assert_eq!(
            listed,
            vec![KeptSession {
                client_id: id("desk"),
                session: SessionId::new("s1").unwrap(),
                left: KEEP - Duration::from_secs(20),
                queued: 2,
                bytes: 30,
            }]
        );
        let mut resumed = table.resume(&id("desk"), &secret(1), t0).unwrap();
        assert_eq!(table.bytes(), 0);
        let seqs: Vec<(u64, bool)> = resumed.drain_undelivered().iter().map(|u| (u.seq, u.maybe_delivered)).collect();
        assert_eq!(seqs, vec![(1, false), (2, false)]);
    }

    #[test]
    fn drain_ends_every_session_nearest_end_first() {
        let t0 = Instant::now();
        let mut table = table(10, 1 << 20);
        table.detach(session("late", 1, 1, 1), t0 + Duration::from_secs(1));
        table.detach(session("early", 2, 1, 1), t0);
        assert_eq!(names(&table.drain()), vec!["early", "late"]);
        assert_eq!((table.len(), table.bytes(), table.poll_timeout()), (0, 0, None));
    }

    /// Seeded runs of detaches, sends, resumes, takes and expiries against the table's
    /// invariants: its bytes are the sum of its sessions', it never holds more than its bounds
    /// after a detach, and every session it takes in comes out exactly once.
    #[test]
    fn the_table_keeps_its_bounds_and_loses_no_session_over_random_runs() {
        let t0 = Instant::now();
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let max_sessions = rng.usize(1..6);
            let max_bytes = rng.usize(10..200);
            let mut table = table(max_sessions, max_bytes);
            let mut now = t0;
            let (mut taken_in, mut came_out) = (0usize, 0usize);
            for step in 0..300u32 {
                now += Duration::from_secs(rng.u64(0..30));
                let name = format!("p{}", rng.u8(0..8));
                match rng.u8(0..5) {
                    0 | 1 => {
                        taken_in += 1;
                        let fresh = session(&name, rng.u8(..), rng.usize(0..4), rng.usize(0..20));
                        came_out += table.detach(fresh, now).len();
                        assert!(table.len() <= max_sessions && table.bytes() <= max_bytes, "seed {seed} step {step}");
                    }
                    2 => {
                        let _ = table.send(&id(&name), Bytes::from(vec![0; rng.usize(0..15)]));
                        assert!(table.bytes() <= max_bytes, "seed {seed} step {step}");
                    }
                    3 => came_out += usize::from(table.take(&id(&name)).is_some()),
                    _ => {
                        came_out += table.expire(now).len();
                        assert!(table.poll_timeout().is_none_or(|at| at > now), "seed {seed} step {step}");
                    }
                }
                let sum: usize = table.kept.values().map(|kept| kept.session.bytes()).sum();
                assert_eq!(table.bytes(), sum, "seed {seed} step {step}");
                assert_eq!(table.ends.len(), table.kept.len(), "seed {seed} step {step}");
            }
            came_out += table.drain().len();
            assert_eq!(came_out, taken_in, "seed {seed}");
        }
    }
}
