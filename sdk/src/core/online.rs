//! The server's online list: who is connected, and the per-peer miss bookkeeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::Subject;
use crate::protocol::{ClientId, SessionId};

/// A unique number the server gives each accepted connection (client ids can repeat across
/// connections; keys never do).
pub type ConnKey = u64;

/// One online peer as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The id the peer announced in `HELLO`.
    pub id: ClientId,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The session the server opened for it.
    pub session: SessionId,
    /// When it came online.
    pub connected_since: Instant,
    /// When its last frame arrived.
    pub last_seen: Instant,
    /// The round trip of its last answered pulse.
    pub last_rtt: Option<Duration>,
    /// Pulse ticks in a row with no frame from it.
    pub misses: u32,
    /// Who it authenticated as (`None`: anonymous, on a server without an authenticator).
    pub subject: Option<Subject>,
    /// Whether it connected over TLS.
    pub tls: bool,
}

/// What the owner of the list learned about a peer outside it: the server's connection tasks
/// record the time of each frame and each pulse's round trip themselves, and the list picks them
/// up when it needs them ([`OnlineList::tick_observed`], [`OnlineList::observe`]) instead of
/// taking one message per frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// When the peer's last frame arrived, if any arrived.
    pub last_heard: Option<Instant>,
    /// The round trip of its last answered pulse, if one was measured.
    pub rtt: Option<Duration>,
}

/// A peer that left the list, handed back with the link the caller stored for it.
#[derive(Debug)]
pub struct Departed<L> {
    /// The connection key.
    pub key: ConnKey,
    /// The peer's last state.
    pub info: PeerInfo,
    /// The caller's link to the peer (its outbound queue, in the server).
    pub link: L,
}

/// Why [`OnlineList::tick`] removed a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// More than `max_missed` ticks in a row with nothing from the peer.
    Timeout {
        /// The miss count that crossed the limit.
        misses: u32,
    },
    /// The pulse could not be queued: the peer does not drain what it is sent.
    Stalled,
}

struct Peer<L> {
    info: PeerInfo,
    link: L,
    seen_since_tick: bool,
    next_seq: u64,
}

impl<L> Peer<L> {
    fn apply(&mut self, seen: Observation) {
        apply(&mut self.info, &mut self.seen_since_tick, seen);
    }
}

/// What a connection observed, applied to its peer's record: a frame heard after the last one
/// known counts as seen at the next tick; a round trip replaces the last one.
fn apply(info: &mut PeerInfo, seen_since_tick: &mut bool, seen: Observation) {
    if let Some(at) = seen.last_heard.filter(|&at| at > info.last_seen) {
        info.last_seen = at;
        *seen_since_tick = true;
    }
    if let Some(rtt) = seen.rtt {
        info.last_rtt = Some(rtt);
    }
}

/// The online list with the server's liveness rule, as a plain data structure: no sockets, no
/// tasks, no clock. The server's hub task is its one owner.
///
/// At each tick, a peer that sent anything since the previous tick has its miss count reset,
/// any other has it incremented, and a peer whose count exceeds `max_missed` is evicted; every
/// remaining peer gets a pulse. A peer that falls silent is thus evicted between
/// `(max_missed + 1) × interval` and `(max_missed + 2) × interval` after its last frame.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pulsewire::core::{Eviction, OnlineList};
/// use pulsewire::protocol::{ClientId, SessionId};
///
/// let t0 = Instant::now();
/// let mut list = OnlineList::new(1);
/// let id = ClientId::new("desk-1").unwrap();
/// list.join(1, id, "127.0.0.1:5000".parse().unwrap(), "link", SessionId::new("s1").unwrap(), t0);
///
/// let mut pulses = Vec::new();
/// let tick = Duration::from_secs(1);
/// list.tick(t0 + tick, |_, seq| { pulses.push(seq); true }); // joined: counts as seen
/// list.tick(t0 + tick * 2, |_, _| true); // silent: 1 miss
/// let evicted = list.tick(t0 + tick * 3, |_, _| true); // silent: 2 misses > 1
/// assert_eq!(pulses, vec![1]);
/// assert_eq!(evicted.len(), 1);
/// assert_eq!(evicted[0].1, Eviction::Timeout { misses: 2 });
/// assert!(list.is_empty());
/// ```
pub struct OnlineList<L> {
    /// Boxed: the table keeps up to twice as many slots as peers, and a slot of a key and a
    /// pointer is a tenth of a peer's size.
    peers: HashMap<ConnKey, Box<Peer<L>>>,
    by_id: HashMap<ClientId, ConnKey>,
    max_missed: u32,
}

impl<L> std::fmt::Debug for OnlineList<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineList").field("peers", &self.peers.len()).field("max_missed", &self.max_missed).finish()
    }
}

/// The outcome of [`OnlineList::join`].
#[derive(Debug)]
pub struct Joined<L> {
    /// The new session.
    pub session: SessionId,
    /// The connection with the same client id that this one replaced.
    pub replaced: Option<Departed<L>>,
}

impl<L> OnlineList<L> {
    /// An empty list evicting past `max_missed` misses.
    pub fn new(max_missed: u32) -> OnlineList<L> {
        OnlineList { peers: HashMap::new(), by_id: HashMap::new(), max_missed }
    }

    /// Adds a peer that completed the handshake, in `session`; an online peer with the same id
    /// is removed and handed back in [`Joined::replaced`].
    pub fn join(
        &mut self,
        key: ConnKey,
        id: ClientId,
        addr: SocketAddr,
        link: L,
        session: SessionId,
        now: Instant,
    ) -> Joined<L> {
        let replaced = self.by_id.get(&id).copied().and_then(|old| self.leave(old));
        let info = PeerInfo {
            id: id.clone(),
            addr,
            session: session.clone(),
            connected_since: now,
            last_seen: now,
            last_rtt: None,
            misses: 0,
            subject: None,
            tls: false,
        };
        self.by_id.insert(id, key);
        self.peers.insert(key, Box::new(Peer { info, link, seen_since_tick: true, next_seq: 1 }));
        Joined { session, replaced }
    }

    /// Applies what `observe` reports for every peer: a frame heard after the last one the list
    /// knows counts as seen at the next tick, a round trip replaces the last one.
    pub fn observe(&mut self, mut observe: impl FnMut(&L) -> Observation) {
        for peer in self.peers.values_mut() {
            peer.apply(observe(&peer.link));
        }
    }

    /// Removes a peer (it left, failed, or the caller drops it).
    pub fn leave(&mut self, key: ConnKey) -> Option<Departed<L>> {
        let peer = self.peers.remove(&key)?;
        if self.by_id.get(&peer.info.id) == Some(&key) {
            self.by_id.remove(&peer.info.id);
        }
        Some(Departed { key, info: peer.info, link: peer.link })
    }

    /// One pulse tick at `now`: applies the miss rule, then calls `pulse(link, seq)` for every
    /// peer still online. A peer for which `pulse` returns false is evicted as
    /// [`Eviction::Stalled`]. Returns the evicted peers.
    ///
    /// The rule counts ticks, not time, so `now` decides nothing: the caller times its pulses
    /// (the server's peer records when each one went out and measures its answer).
    pub fn tick(&mut self, now: Instant, pulse: impl FnMut(&L, u64) -> bool) -> Vec<(Departed<L>, Eviction)> {
        self.tick_observed(now, |_| Observation::default(), pulse)
    }

    /// [`OnlineList::tick`], first applying what `observe` reports for each peer (as
    /// [`OnlineList::observe`] does), in the same pass.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pulsewire::core::{Observation, OnlineList};
    /// use pulsewire::protocol::{ClientId, SessionId};
    ///
    /// let t0 = Instant::now();
    /// let s = Duration::from_secs(1);
    /// let mut list = OnlineList::new(1);
    /// let session = SessionId::new("s1").unwrap();
    /// list.join(1, ClientId::new("desk-1").unwrap(), "127.0.0.1:5000".parse().unwrap(), (), session, t0);
    /// // The connection heard from its peer at t0 + 1.5 s, 2.5 s, …: never a miss.
    /// for n in 1..10u32 {
    ///     let heard = Observation { last_heard: Some(t0 + s * n - s / 2), rtt: None };
    ///     assert!(list.tick_observed(t0 + s * n, |_| heard, |_, _| true).is_empty());
    /// }
    /// assert_eq!(list.peer(1).unwrap().misses, 0);
    /// ```
    pub fn tick_observed(
        &mut self,
        now: Instant,
        mut observe: impl FnMut(&L) -> Observation,
        mut pulse: impl FnMut(&L, u64) -> bool,
    ) -> Vec<(Departed<L>, Eviction)> {
        self.tick_visit(now, |link, rule| match rule(observe(link)) {
            Some(seq) => pulse(link, seq),
            None => true,
        })
    }

    /// [`OnlineList::tick_observed`] in one visit per peer, for a caller whose look at a peer
    /// and whose pulse to it cost one lock together: `visit(link, rule)` hands `rule` what the
    /// peer's connection observed and gets the pulse to send (`None`: the peer is evicted as
    /// [`Eviction::Timeout`], send nothing); it returns false when the pulse could not be
    /// queued ([`Eviction::Stalled`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pulsewire::core::{Eviction, Observation, OnlineList};
    /// use pulsewire::protocol::{ClientId, SessionId};
    ///
    /// let t0 = Instant::now();
    /// let mut list = OnlineList::new(0);
    /// let session = SessionId::new("s1").unwrap();
    /// list.join(1, ClientId::new("desk-1").unwrap(), "127.0.0.1:5000".parse().unwrap(), (), session, t0);
    /// let mut sent = Vec::new();
    /// // Joined counts as seen: pulse 1 goes out.
    /// let evicted = list.tick_visit(t0, |_, rule| {
    ///     sent.extend(rule(Observation::default()));
    ///     true
    /// });
    /// assert!(evicted.is_empty());
    /// // Nothing heard since: one miss is past the limit of 0, and no pulse is asked for.
    /// let evicted = list.tick_visit(t0, |_, rule| {
    ///     sent.extend(rule(Observation::default()));
    ///     true
    /// });
    /// assert_eq!(sent, vec![1]);
    /// assert_eq!(evicted[0].1, Eviction::Timeout { misses: 1 });
    /// ```
    pub fn tick_visit(
        &mut self,
        _now: Instant,
        mut visit: impl FnMut(&L, &mut dyn FnMut(Observation) -> Option<u64>) -> bool,
    ) -> Vec<(Departed<L>, Eviction)> {
        let max_missed = self.max_missed;
        let mut evicted = Vec::new();
        for (&key, peer) in &mut self.peers {
            let Peer { info, link, seen_since_tick, next_seq } = &mut **peer;
            let mut timed_out = None;
            let mut rule = |seen: Observation| {
                apply(info, seen_since_tick, seen);
                info.misses = if *seen_since_tick { 0 } else { info.misses.saturating_add(1) };
                *seen_since_tick = false;
                if info.misses > max_missed {
                    timed_out = Some(info.misses);
                    return None;
                }
                let seq = *next_seq;
                *next_seq += 1;
                Some(seq)
            };
            let queued = visit(link, &mut rule);
            if let Some(misses) = timed_out {
                evicted.push((key, Eviction::Timeout { misses }));
            } else if !queued {
                evicted.push((key, Eviction::Stalled));
            }
        }
        evicted.into_iter().filter_map(|(key, why)| self.leave(key).map(|gone| (gone, why))).collect()
    }

    /// Records who the peer under `key` authenticated as, and whether it came over TLS.
    pub fn set_identity(&mut self, key: ConnKey, subject: Option<Subject>, tls: bool) {
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.info.subject = subject;
            peer.info.tls = tls;
        }
    }

    /// The online peer named `id`.
    pub fn peer_by_id(&self, id: &ClientId) -> Option<&PeerInfo> {
        self.by_id.get(id).and_then(|key| self.peer(*key))
    }

    /// The connection of the online peer named `id`.
    pub fn key(&self, id: &ClientId) -> Option<ConnKey> {
        self.by_id.get(id).copied()
    }

    /// The link of the connection `key`, if it is online.
    pub fn link_of(&self, key: ConnKey) -> Option<&L> {
        self.peers.get(&key).map(|peer| &peer.link)
    }

    /// The link of the online peer with this id.
    pub fn link(&self, id: &ClientId) -> Option<&L> {
        self.by_id.get(id).and_then(|key| self.peers.get(key)).map(|peer| &peer.link)
    }

    /// Every online peer's key and link.
    pub fn links(&self) -> impl Iterator<Item = (ConnKey, &L)> + '_ {
        self.peers.iter().map(|(key, peer)| (*key, &peer.link))
    }

    /// The online peers, sorted by id.
    pub fn snapshot(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<_> = self.peers.values().map(|peer| peer.info.clone()).collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers
    }

    /// The peer under `key`.
    pub fn peer(&self, key: ConnKey) -> Option<&PeerInfo> {
        self.peers.get(&key).map(|peer| &peer.info)
    }

    /// How many peers are online.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is online.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Removes every peer (the server is shutting down).
    pub fn drain(&mut self) -> Vec<Departed<L>> {
        let keys: Vec<_> = self.peers.keys().copied().collect();
        keys.into_iter().filter_map(|key| self.leave(key)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);

    fn id(name: &str) -> ClientId {
        ClientId::new(name).unwrap()
    }

    fn session(key: ConnKey) -> SessionId {
        SessionId::new(format!("s{key}")).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// What the server's peer reports when its last frame arrived at `at`: the same observation
    /// at every tick, as from a peer that fell silent then.
    fn heard(at: Instant) -> impl Fn(&()) -> Observation {
        move |_| Observation { last_heard: Some(at), rtt: None }
    }

    /// Ticks every interval from `t0`, observing a last frame at `last_frame`, until the peer
    /// under key 1 is evicted; returns the time.
    fn evicted_at(list: &mut OnlineList<()>, t0: Instant, last_frame: Instant, max_ticks: u32) -> Option<Instant> {
        (1..=max_ticks)
            .map(|n| t0 + I * n)
            .find(|&now| !list.tick_observed(now, heard(last_frame), |_, _| true).is_empty())
    }

    #[test]
    fn peer_is_evicted_within_the_protocol_window_after_its_last_frame() {
        for max_missed in 1..=5u32 {
            for offset_ms in [1u64, 50, 99] {
                let t0 = Instant::now();
                let mut list = OnlineList::new(max_missed);
                list.join(1, id("a"), addr(), (), session(1), t0);
                let last_frame = t0 + Duration::from_millis(offset_ms);
                let gone = evicted_at(&mut list, t0, last_frame, 100).unwrap();
                let silent = gone - last_frame;
                assert!(
                    silent > I * (max_missed + 1) && silent <= I * (max_missed + 2),
                    "max {max_missed}: {silent:?}"
                );
            }
        }
    }

    #[test]
    fn answering_peer_is_never_evicted_and_misses_stay_zero() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(1);
        list.join(1, id("a"), addr(), (), session(1), t0);
        let rtt = Duration::from_millis(3);
        // Each pulse is answered 3 ms after it went out; the next tick observes the answer.
        let answered = |n: u32| move |_: &()| Observation { last_heard: Some(t0 + I * n + rtt), rtt: Some(rtt) };
        for n in 1..=1000u32 {
            assert!(list.tick_observed(t0 + I * n, answered(n - 1), |_, _| true).is_empty());
            assert_eq!(list.peer(1).unwrap().misses, 0);
        }
        assert_eq!(list.snapshot()[0].last_rtt, Some(rtt));
    }

    #[test]
    fn observed_frames_count_as_seen_and_only_newer_ones() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(1);
        list.join(1, id("a"), addr(), (), session(1), t0);
        let heard = |at| move |_: &()| Observation { last_heard: Some(at), rtt: Some(Duration::from_millis(2)) };
        // Heard after each tick: never evicted.
        for n in 1..=5u32 {
            assert!(list.tick_observed(t0 + I * n, heard(t0 + I * n - I / 2), |_, _| true).is_empty());
        }
        assert_eq!(list.peer(1).unwrap().last_rtt, Some(Duration::from_millis(2)));
        // The same old time again is not a new frame: two silent ticks evict (max_missed 1).
        let stale = t0 + I * 5 - I / 2;
        assert!(list.tick_observed(t0 + I * 6, heard(stale), |_, _| true).is_empty());
        let evicted = list.tick_observed(t0 + I * 7, heard(stale), |_, _| true);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0.info.last_seen, stale);
    }

    #[test]
    fn observe_updates_the_snapshot() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(1);
        list.join(1, id("a"), addr(), (), session(1), t0);
        list.observe(|_| Observation { last_heard: Some(t0 + I), rtt: Some(I / 10) });
        let peer = &list.snapshot()[0];
        assert_eq!((peer.last_seen, peer.last_rtt), (t0 + I, Some(I / 10)));
    }

    #[test]
    fn a_frame_without_a_round_trip_counts_as_seen_and_keeps_the_last_round_trip() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(1);
        list.join(1, id("a"), addr(), (), session(1), t0);
        list.observe(|_| Observation { last_heard: Some(t0 + I / 2), rtt: Some(I / 10) });
        list.tick(t0 + I, |_, _| true);
        list.tick(t0 + I * 2, |_, _| true);
        assert_eq!(list.peer(1).unwrap().misses, 1);
        // A frame that answers no pulse (data, or an answer to an older pulse): no round trip.
        let frame = Observation { last_heard: Some(t0 + I * 2 + I / 2), rtt: None };
        assert!(list.tick_observed(t0 + I * 3, |_| frame, |_, _| true).is_empty());
        let peer = list.peer(1).unwrap();
        assert_eq!((peer.misses, peer.last_seen, peer.last_rtt), (0, frame.last_heard.unwrap(), Some(I / 10)));
    }

    #[test]
    fn pulse_numbers_increase_per_peer() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(10);
        list.join(1, id("a"), addr(), 1u8, session(1), t0);
        list.tick(t0 + I, |_, _| true);
        list.join(2, id("b"), addr(), 2u8, session(2), t0 + I);
        let mut seen = Vec::new();
        list.tick(t0 + I * 2, |link, seq| {
            seen.push((*link, seq));
            true
        });
        seen.sort();
        assert_eq!(seen, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn peer_whose_queue_is_full_is_evicted_as_stalled() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(3);
        list.join(1, id("slow"), addr(), false, session(1), t0);
        list.join(2, id("fast"), addr(), true, session(2), t0);
        let evicted = list.tick(t0 + I, |accepts, _| *accepts);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0.info.id, id("slow"));
        assert_eq!(evicted[0].1, Eviction::Stalled);
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn duplicate_id_replaces_the_old_connection() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(3);
        let first = list.join(1, id("desk"), addr(), "old", session(1), t0);
        let second = list.join(2, id("desk"), addr(), "new", session(2), t0);
        let replaced = second.replaced.unwrap();
        assert_eq!((replaced.key, replaced.link), (1, "old"));
        assert_ne!(first.session, second.session);
        assert_eq!(list.len(), 1);
        assert_eq!(list.link(&id("desk")), Some(&"new"));
        // The old connection's own leave arrives later and must not remove the new one.
        assert!(list.leave(1).is_none());
        assert_eq!(list.link(&id("desk")), Some(&"new"));
    }

    #[test]
    fn drain_empties_the_list() {
        let t0 = Instant::now();
        let mut list = OnlineList::new(3);
        list.join(1, id("a"), addr(), (), session(1), t0);
        list.join(2, id("b"), addr(), (), session(2), t0);
        assert_eq!(list.drain().len(), 2);
        assert!(list.is_empty());
        assert!(list.link(&id("a")).is_none());
    }
}
