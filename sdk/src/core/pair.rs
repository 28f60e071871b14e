//! A client machine and a server (hub core plus one connection machine per connection) driven
//! on a virtual clock over in-memory links that can delay, cut at any byte, black-hole and
//! reset, as quinn-proto's test `Pair` does. Handshake, replacement, eviction, the miss
//! windows, acknowledgements, resume and replay are tested here in microseconds, including a
//! property test of the delivery guarantees.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::client_machine::{ClientMachine, ClientMachineConfig, ConnectionEnd, SendOptions};
use super::hub::{HubConfig, HubCore, Join, PeerLink, Welcome};
use super::server_machine::{ConnEnd, ServerMachine, ServerMachineConfig, ServerMachineEvent};
use super::sessions::{DetachedLimits, SessionLimits};
use crate::auth::Subject;
use crate::client::{DisconnectReason, Event, Ticket};
use crate::protocol::{ClientId, ErrorCode};
use crate::server::{OfflineReason, ServerEvent};

const INTERVAL: Duration = Duration::from_millis(100);
const MAX_MISSED: u32 = 3;
const LATENCY: Duration = Duration::from_millis(1);
const RECONNECT_DELAY: Duration = Duration::from_millis(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connection machine as the hub core reaches it.
#[derive(Clone)]
struct TestLink(Rc<RefCell<ServerMachine>>);

impl PeerLink for TestLink {
    fn with_machine<R>(&self, step: impl FnOnce(&mut ServerMachine) -> R) -> R {
        step(&mut self.0.borrow_mut())
    }
}

/// One direction of a connection: bytes in flight with the instant each chunk arrives.
#[derive(Default)]
struct Pipe {
    chunks: VecDeque<(Instant, Bytes)>,
}

impl Pipe {
    fn push(&mut self, at: Instant, bytes: Bytes) {
        self.chunks.push_back((at, bytes));
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.chunks.front().map(|(at, _)| *at)
    }

    fn take_due(&mut self, now: Instant) -> Vec<Bytes> {
        let mut due = Vec::new();
        while self.chunks.front().is_some_and(|(at, _)| *at <= now) {
            due.extend(self.chunks.pop_front().map(|(_, bytes)| bytes));
        }
        due
    }

    /// Keeps only the first `keep` bytes in flight (the rest is lost with the connection).
    fn truncate(&mut self, mut keep: usize) {
        for (_, bytes) in self.chunks.iter_mut() {
            let take = bytes.len().min(keep);
            bytes.truncate(take);
            keep -= take;
        }
        self.chunks.retain(|(_, bytes)| !bytes.is_empty());
    }
}

/// The link between the two machines.
struct Conn {
    key: u64,
    server: TestLink,
    to_server: Pipe,
    to_client: Pipe,
    /// Whatever is written is lost (a cable pulled, a firewall dropping): neither side hears.
    black_hole: bool,
    joined: bool,
}

/// Both endpoints and the link, on one virtual clock.
struct Pair {
    now: Instant,
    client: ClientMachine,
    hub: HubCore<TestLink>,
    conn: Option<Conn>,
    reconnect_at: Option<Instant>,
    next_key: u64,
    next_random: u8,
    client_events: Vec<(Instant, Event)>,
    server_events: Vec<(Instant, ServerEvent)>,
    /// While true, the link refuses new connections (the server is unreachable).
    unreachable: bool,
    /// How each of the client's connections ended, and when.
    ends: Vec<(Instant, ConnectionEnd)>,
    /// Who the client authenticates as (`None`: anonymous).
    subject: Option<Subject>,
}

fn hub_config(keep: Duration) -> HubConfig {
    HubConfig {
        interval: INTERVAL,
        max_missed: MAX_MISSED,
        max_peers: 100,
        keep,
        outbound_queue: 64,
        session_limits: SessionLimits::default(),
        detached_limits: DetachedLimits::for_max_peers(100),
    }
}

impl Pair {
    fn new(keep: Duration) -> Pair {
        let now = Instant::now();
        let client = ClientMachine::new(ClientMachineConfig::new(ClientId::new("desk-1").unwrap()), None);
        Pair {
            now,
            client,
            hub: HubCore::new(hub_config(keep), now, 0xabc),
            conn: None,
            reconnect_at: Some(now),
            next_key: 0,
            next_random: 0,
            client_events: Vec::new(),
            server_events: Vec::new(),
            unreachable: false,
            ends: Vec::new(),
            subject: None,
        }
    }

    fn connect(&mut self) {
        self.next_key += 1;
        let machine = ServerMachine::new(self.now, ServerMachineConfig::default());
        let server = TestLink(Rc::new(RefCell::new(machine)));
        self.conn = Some(Conn {
            key: self.next_key,
            server,
            to_server: Pipe::default(),
            to_client: Pipe::default(),
            black_hole: false,
            joined: false,
        });
        self.client.connect(self.now);
    }

    /// The next instant something is due anywhere.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = vec![Some(self.hub.poll_timeout()), self.client.poll_timeout(), self.reconnect_at];
        if let Some(conn) = &self.conn {
            next.push(conn.server.0.borrow().poll_timeout());
            next.push(conn.to_server.next_arrival());
            next.push(conn.to_client.next_arrival());
        }
        next.into_iter().flatten().min()
    }

    /// Runs everything due up to `until`, in order.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..1_000_000 {
            self.settle();
            match self.next_deadline() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.on_timers();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        self.settle();
    }

    fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    fn on_timers(&mut self) {
        let now = self.now;
        if self.reconnect_at.is_some_and(|at| at <= now) && self.conn.is_none() {
            self.reconnect_at = None;
            if self.client.is_closed() {
                return;
            }
            if self.unreachable {
                self.reconnect_at = Some(now + RECONNECT_DELAY);
            } else {
                self.connect();
            }
        }
        if self.client.poll_timeout().is_some_and(|at| at <= now) {
            self.client.handle_timeout(now);
        }
        if self.hub.poll_timeout() <= now {
            self.hub.handle_timeout(now);
        }
        if let Some(conn) = &self.conn {
            let server = conn.server.clone();
            if server.0.borrow().poll_timeout().is_some_and(|at| at <= now) {
                server.0.borrow_mut().handle_timeout(now);
            }
        }
    }

    /// Moves bytes and events until nothing more happens at `now`.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.shuffle() {
                return;
            }
        }
        panic!("the pair never settled");
    }

    fn shuffle(&mut self) -> bool {
        let now = self.now;
        let mut progressed = false;
        while let Some(event) = self.hub.poll_event() {
            self.server_events.push((now, event));
            progressed = true;
        }
        while let Some(event) = self.client.poll_event() {
            self.client_events.push((now, event));
            progressed = true;
        }
        let Some(conn) = self.conn.as_mut() else {
            // No connection: what the client wants to write goes nowhere.
            progressed |= self.client.poll_transmit().is_some();
            if let Some(end) = self.client.poll_end() {
                self.client_ended(end);
                progressed = true;
            }
            return progressed;
        };
        if let Some(bytes) = self.client.poll_transmit() {
            if !conn.black_hole {
                conn.to_server.push(now + LATENCY, bytes);
            }
            progressed = true;
        }
        let server = conn.server.clone();
        let written = server.0.borrow_mut().transmit().split().freeze();
        if !written.is_empty() {
            if !conn.black_hole {
                conn.to_client.push(now + LATENCY, written);
            }
            progressed = true;
        }
        for bytes in conn.to_server.take_due(now) {
            server.0.borrow_mut().handle_input(&bytes, now);
            progressed = true;
        }
        for bytes in conn.to_client.take_due(now) {
            self.client.handle_input(&bytes, now);
            progressed = true;
        }
        let key = conn.key;
        loop {
            let event = server.0.borrow_mut().poll_event();
            let Some(event) = event else { break };
            progressed = true;
            self.server_event(key, server.clone(), event);
        }
        if let Some(end) = self.client.poll_end() {
            self.client_ended(end);
            progressed = true;
        }
        progressed
    }

    fn server_event(&mut self, key: u64, link: TestLink, event: ServerMachineEvent) {
        let now = self.now;
        match event {
            ServerMachineEvent::Hello { version, client_id, resume, .. } => {
                self.next_random = self.next_random.wrapping_add(1);
                let addr = "127.0.0.1:5000".parse().unwrap();
                let join = Join {
                    key,
                    version,
                    client_id,
                    resume,
                    addr,
                    subject: self.subject.clone(),
                    expires_in: None,
                    tls: false,
                };
                if let Some(conn) = self.conn.as_mut().filter(|conn| conn.key == key) {
                    conn.joined = true;
                }
                if let Some(welcome) = self.hub.join(join, link, [self.next_random; 16], now) {
                    while let Some(event) = self.hub.poll_event() {
                        self.server_events.push((now, event));
                    }
                    welcome.send(now);
                }
            }
            ServerMachineEvent::Message { seq, payload } => {
                let peer = ClientId::new("desk-1").unwrap();
                self.server_events.push((now, ServerEvent::Message { peer, seq, payload }));
            }
            ServerMachineEvent::Delivered { up_to } => {
                let peer = ClientId::new("desk-1").unwrap();
                self.server_events.push((now, ServerEvent::Delivered { peer, up_to }));
            }
            ServerMachineEvent::Closed { reason } => {
                let reason = match reason {
                    ConnEnd::Goodbye { reason } => Some(OfflineReason::Goodbye { reason }),
                    ConnEnd::PeerError { code, text } => Some(OfflineReason::PeerError { code, text }),
                    ConnEnd::Violation(violation) => Some(OfflineReason::Protocol(violation)),
                    ConnEnd::Lost => Some(OfflineReason::Eof),
                    _ => None,
                };
                if let Some(reason) = reason {
                    self.hub.leave(key, reason, now);
                }
                // The server closes its socket once it wrote its last frame: the client hears
                // the end after what is in flight.
                if let Some(conn) = self.conn.as_mut().filter(|conn| conn.key == key) {
                    let last = conn.server.0.borrow_mut().transmit().split().freeze();
                    if !last.is_empty() && !conn.black_hole {
                        conn.to_client.push(now + LATENCY, last);
                    }
                    if !conn.black_hole {
                        for bytes in conn.to_client.take_due(now + LATENCY) {
                            self.client.handle_input(&bytes, now + LATENCY);
                        }
                        self.client.connection_lost(DisconnectReason::Eof, now);
                    }
                }
            }
        }
    }

    /// The client ended its connection: the server sees end of file, and the client comes back
    /// after a short delay.
    fn client_ended(&mut self, end: ConnectionEnd) {
        let now = self.now;
        self.ends.push((now, end));
        if let Some(conn) = self.conn.take() {
            let last = self.client.poll_transmit();
            let server = conn.server.clone();
            if !conn.black_hole {
                for bytes in conn.to_server.chunks.iter().map(|(_, b)| b.clone()).chain(last) {
                    server.0.borrow_mut().handle_input(&bytes, now);
                }
                server.0.borrow_mut().connection_lost(now);
            }
            let key = conn.key;
            loop {
                let event = server.0.borrow_mut().poll_event();
                let Some(event) = event else { break };
                self.server_event(key, server.clone(), event);
            }
        }
        if !self.client.is_closed() {
            self.reconnect_at = Some(now + RECONNECT_DELAY);
        }
    }

    /// Resets the connection after only the first `keep_bytes` of what is in flight each way
    /// arrived (a cut at any byte): both sides see the reset at once.
    fn cut(&mut self, keep_to_server: usize, keep_to_client: usize) {
        let now = self.now;
        let Some(mut conn) = self.conn.take() else { return };
        conn.to_server.truncate(keep_to_server);
        conn.to_client.truncate(keep_to_client);
        let server = conn.server.clone();
        for (_, bytes) in conn.to_server.chunks.drain(..) {
            server.0.borrow_mut().handle_input(&bytes, now);
        }
        for (_, bytes) in conn.to_client.chunks.drain(..) {
            self.client.handle_input(&bytes, now);
        }
        server.0.borrow_mut().connection_lost(now);
        let key = conn.key;
        loop {
            let event = server.0.borrow_mut().poll_event();
            let Some(event) = event else { break };
            match event {
                ServerMachineEvent::Closed { .. } => {
                    if conn.joined {
                        self.hub.leave(key, OfflineReason::Reset, now);
                    }
                }
                ServerMachineEvent::Hello { .. } => {
                    conn.joined = true;
                    self.server_event(key, server.clone(), event);
                }
                other => self.server_event(key, server.clone(), other),
            }
        }
        self.client.connection_lost(DisconnectReason::Reset, now);
        while let Some(end) = self.client.poll_end() {
            self.ends.push((now, end));
        }
        let _ = self.client.poll_transmit();
        if !self.client.is_closed() {
            self.reconnect_at = Some(now + RECONNECT_DELAY);
        }
        self.settle();
    }

    fn black_hole(&mut self, on: bool) {
        if let Some(conn) = self.conn.as_mut() {
            conn.black_hole = on;
            if on {
                conn.to_server.chunks.clear();
                conn.to_client.chunks.clear();
            }
        }
    }

    fn send(&mut self, text: String) -> Option<Ticket> {
        self.client.send(Bytes::from(text), SendOptions::new(), self.now).ok()
    }

    fn server_send(&mut self, text: String) -> Option<u64> {
        self.hub.send(&ClientId::new("desk-1").unwrap(), Bytes::from(text)).ok()
    }

    fn client_messages(&self) -> Vec<String> {
        self.client_events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message { payload, .. } => Some(String::from_utf8_lossy(payload).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn server_messages(&self) -> Vec<String> {
        self.server_events
            .iter()
            .filter_map(|(_, e)| match e {
                ServerEvent::Message { payload, .. } => Some(String::from_utf8_lossy(payload).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn connected(&self) -> Vec<bool> {
        self.client_events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Connected { resumed, .. } => Some(*resumed),
                _ => None,
            })
            .collect()
    }
}

/// The outcomes of the client's messages, from its events: each ticket at most once.
fn client_outcomes(events: &[(Instant, Event)], accepted: &[Ticket]) -> HashMap<Ticket, &'static str> {
    let mut outcome = HashMap::new();
    for (_, event) in events {
        match event {
            Event::Delivered { up_to, count } => {
                let newly: Vec<Ticket> =
                    accepted.iter().filter(|t| *t <= up_to && !outcome.contains_key(*t)).copied().collect();
                assert_eq!(
                    newly.len(),
                    *count,
                    "Delivered {{ up_to: {up_to}, count: {count} }} counts what it delivers"
                );
                for ticket in newly {
                    outcome.insert(ticket, "delivered");
                }
            }
            Event::Undelivered { ticket, maybe_delivered, .. } => {
                let was = outcome.insert(*ticket, if *maybe_delivered { "maybe" } else { "never-sent" });
                assert!(was.is_none(), "{ticket} had an outcome already: {was:?}");
            }
            Event::Expired { ticket, .. } => {
                assert!(outcome.insert(*ticket, "expired").is_none(), "{ticket} had an outcome already");
            }
            _ => {}
        }
    }
    outcome
}

/// The outcomes of the server's messages: the highest seq delivered in the last session, and
/// every message handed back (its text, and whether it may have arrived).
fn server_outcomes(events: &[(Instant, ServerEvent)]) -> (u64, Vec<(String, bool)>) {
    let mut delivered_up_to = 0;
    let mut handed_back = Vec::new();
    for (_, event) in events {
        match event {
            ServerEvent::Delivered { up_to, .. } => delivered_up_to = delivered_up_to.max(*up_to),
            ServerEvent::PeerOffline { undelivered, .. } => handed_back.extend(
                undelivered.iter().map(|u| (String::from_utf8_lossy(&u.payload).into_owned(), u.maybe_delivered)),
            ),
            _ => {}
        }
    }
    (delivered_up_to, handed_back)
}

#[test]
fn a_fresh_session_carries_messages_both_ways_and_acknowledges_them() {
    let mut pair = Pair::new(Duration::from_secs(120));
    let ticket = pair.send("hello".into()).unwrap();
    pair.run_for(ms(50));
    assert_eq!(pair.connected(), vec![false]);
    assert_eq!(pair.server_messages(), vec!["hello"]);
    assert_eq!(pair.server_send("hi".into()), Some(1));
    pair.run_for(ms(50));
    assert_eq!(pair.client_messages(), vec!["hi"]);
    let outcomes = client_outcomes(&pair.client_events, &[ticket]);
    assert_eq!(outcomes.get(&ticket), Some(&"delivered"));
    assert!(pair.server_events.iter().any(|(_, e)| matches!(e, ServerEvent::Delivered { up_to: 1, .. })));
    // The acknowledgements come within the ack delay, not at the next pulse.
    let acked = pair.client_events.iter().find(|(_, e)| matches!(e, Event::Delivered { .. })).unwrap().0;
    let sent = pair.client_events.iter().find(|(_, e)| matches!(e, Event::Connected { .. })).unwrap().0;
    assert!(acked - sent <= ms(25), "acknowledged after {:?}", acked - sent);
}

#[test]
fn a_silent_link_is_noticed_by_both_sides_inside_their_windows() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.run_for(ms(550));
    let last_frame = pair.now;
    pair.black_hole(true);
    pair.unreachable = true;
    pair.run_for(ms(1000));
    let missed: Vec<u32> = pair
        .client_events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Missed { count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(missed, vec![1, 2], "the client counted its misses one by one");
    let (client_lost, end) = pair.ends.first().cloned().expect("the client declared the connection lost");
    assert_eq!(
        end,
        ConnectionEnd::Disconnected { reason: DisconnectReason::PulseTimeout { missed: MAX_MISSED }, healthy: true }
    );
    let since = client_lost - last_frame;
    // The last frame may be up to one interval before the black hole opened.
    assert!(since >= INTERVAL * (MAX_MISSED - 1) && since <= INTERVAL * (MAX_MISSED + 1), "client: {since:?}");
    let (evicted_at, reason) = pair
        .server_events
        .iter()
        .find_map(|(at, e)| match e {
            ServerEvent::PeerDetached { reason, .. } => Some((*at, reason.clone())),
            _ => None,
        })
        .expect("the server evicted the silent peer and kept its session");
    assert_eq!(reason, OfflineReason::Timeout { misses: MAX_MISSED + 1 });
    let since = evicted_at - last_frame;
    assert!(since >= INTERVAL * MAX_MISSED && since <= INTERVAL * (MAX_MISSED + 2), "server: {since:?}");
}

#[test]
fn a_cut_mid_stream_resumes_and_delivers_everything_exactly_once() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.run_for(ms(50));
    let mut tickets = Vec::new();
    for n in 0..20 {
        tickets.push(pair.send(format!("c{n}")).unwrap());
        pair.server_send(format!("s{n}")).unwrap();
        pair.run_for(ms(1));
        if n == 10 {
            // In flight both ways; half of it arrives.
            pair.cut(7, 9);
        }
    }
    pair.run_for(ms(500));
    assert_eq!(pair.connected(), vec![false, true], "resumed after the cut");
    let expected = |p: &str| (0..20).map(|n| format!("{p}{n}")).collect::<Vec<_>>();
    assert_eq!(pair.server_messages(), expected("c"));
    assert_eq!(pair.client_messages(), expected("s"));
    let outcomes = client_outcomes(&pair.client_events, &tickets);
    assert!(tickets.iter().all(|t| outcomes.get(t) == Some(&"delivered")), "{outcomes:?}");
    let (delivered, back) = server_outcomes(&pair.server_events);
    assert_eq!((delivered, back.len()), (20, 0));
}

#[test]
fn a_session_not_resumed_within_keep_ends_and_hands_back_both_sides() {
    let mut pair = Pair::new(ms(300));
    pair.run_for(ms(50));
    pair.black_hole(true);
    pair.unreachable = true;
    let ticket = pair.send("into the void".into()).unwrap();
    pair.server_send("to nobody".into()).unwrap();
    pair.run_for(ms(2000));
    pair.unreachable = false;
    pair.run_for(ms(500));
    assert_eq!(pair.connected(), vec![false, false], "the kept session ended: a fresh one");
    let offline = pair.server_events.iter().find_map(|(_, e)| match e {
        ServerEvent::PeerOffline { reason, undelivered, .. } => Some((reason.clone(), undelivered.clone())),
        _ => None,
    });
    let (reason, undelivered) = offline.expect("the session ended after keep");
    assert_eq!(reason, OfflineReason::Timeout { misses: MAX_MISSED + 1 });
    assert_eq!(undelivered.len(), 1);
    assert!(undelivered[0].maybe_delivered, "it was written into the black hole");
    let outcomes = client_outcomes(&pair.client_events, &[ticket]);
    assert_eq!(outcomes.get(&ticket), Some(&"maybe"), "written, never acknowledged: handed back");
    assert!(pair.server_messages().is_empty() && pair.client_messages().is_empty());
}

/// A second connection for the pair's id, as `subject`, joined through the hub directly (no
/// resume); its welcome, unless it was refused.
fn join_twin(pair: &mut Pair, subject: Option<&str>) -> (TestLink, Option<Welcome<TestLink>>) {
    let twin = TestLink(Rc::new(RefCell::new(ServerMachine::new(pair.now, ServerMachineConfig::default()))));
    twin.0.borrow_mut().handle_input(b"HELLO 2 desk-1\n", pair.now);
    let _ = twin.0.borrow_mut().poll_event();
    let join = Join {
        key: 99,
        version: 2,
        client_id: ClientId::new("desk-1").unwrap(),
        resume: None,
        addr: "127.0.0.1:6000".parse().unwrap(),
        subject: subject.map(Subject::new),
        expires_in: None,
        tls: false,
    };
    let welcome = pair.hub.join(join, twin.clone(), [9; 16], pair.now);
    (twin, welcome)
}

#[test]
fn another_subject_cannot_take_an_id_over_and_disturbs_nothing() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.subject = Some(Subject::new("alice"));
    pair.run_for(ms(50));
    pair.send("before".into()).unwrap();
    pair.run_for(ms(50));
    let (twin, welcome) = join_twin(&mut pair, Some("mallory"));
    assert!(welcome.is_none(), "refused");
    let wire = twin.0.borrow_mut().transmit().split().freeze();
    assert_eq!(&wire[..], b"ERROR forbidden this client id is held by another subject\n");
    assert!(twin.0.borrow().is_closed());
    // The real client misses nothing: online, its session and its pulses go on.
    pair.send("after".into()).unwrap();
    pair.run_for(INTERVAL * (MAX_MISSED + 2));
    assert!(pair.ends.is_empty(), "the real client was never disconnected: {:?}", pair.ends);
    assert_eq!(pair.server_messages(), vec!["before", "after"]);
    assert_eq!(pair.hub.online()[0].subject, Some(Subject::new("alice")));
    // Detached, its session is held for it alone just the same.
    pair.black_hole(true);
    pair.unreachable = true;
    pair.run_for(INTERVAL * (MAX_MISSED + 3));
    assert_eq!(pair.hub.len(), 0);
    let (_, welcome) = join_twin(&mut pair, Some("mallory"));
    assert!(welcome.is_none(), "a kept session is not another subject's to take");
    assert_eq!(pair.hub.detached(pair.now).len(), 1);
    assert!(!pair.server_events.iter().any(|(_, e)| matches!(e, ServerEvent::PeerOffline { .. })));
}

#[test]
fn the_same_subject_takes_its_id_over() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.subject = Some(Subject::new("alice"));
    pair.run_for(ms(50));
    let (_, welcome) = join_twin(&mut pair, Some("alice"));
    welcome.expect("welcomed").send(pair.now);
    pair.run_for(ms(10));
    assert!(matches!(
        pair.ends.first(),
        Some((
            _,
            ConnectionEnd::Disconnected { reason: DisconnectReason::ServerError { code: ErrorCode::Replaced, .. }, .. }
        ))
    ));
    assert_eq!(pair.hub.len(), 1);
}

#[test]
fn a_second_connection_with_the_same_id_replaces_the_first() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.run_for(ms(50));
    // A twin (same id, no resume, anonymous as the first) joins through the hub directly.
    let (_twin, welcome) = join_twin(&mut pair, None);
    let welcome = welcome.expect("welcomed");
    welcome.send(pair.now);
    pair.run_for(ms(10));
    let replaced = ConnectionEnd::Disconnected {
        reason: DisconnectReason::ServerError {
            code: ErrorCode::Replaced,
            text: "a new connection took this client id".into(),
        },
        healthy: false,
    };
    assert_eq!(pair.ends.first().map(|(_, end)| end), Some(&replaced), "the first connection was told");
    assert!(pair
        .server_events
        .iter()
        .any(|(_, e)| matches!(e, ServerEvent::PeerOffline { reason: OfflineReason::Replaced, .. })));
    assert_eq!(pair.hub.len(), 1);
}

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Op {
    ClientSends(u8),
    ServerSends(u8),
    Wait(u16),
    /// A reset after only part of what is in flight arrived, each way.
    Cut(u16, u16),
    /// The link goes silent (and new connections cannot get through) for so many ms.
    Silence(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..8u8).prop_map(Op::ClientSends),
        3 => (1..8u8).prop_map(Op::ServerSends),
        3 => (0..300u16).prop_map(Op::Wait),
        1 => (0..200u16, 0..200u16).prop_map(|(a, b)| Op::Cut(a, b)),
        1 => (50..1500u16).prop_map(Op::Silence),
    ]
}

/// Runs a scenario; returns whether every resume could succeed (no silence as long as `keep`).
fn run_scenario(ops: &[Op], keep: Duration) -> (Pair, Vec<(Ticket, String)>, Vec<String>) {
    let mut pair = Pair::new(keep);
    let (mut sent, mut server_sent) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            Op::ClientSends(n) => {
                for _ in 0..*n {
                    let text = format!("c{}", sent.len());
                    if let Some(ticket) = pair.send(text.clone()) {
                        sent.push((ticket, text));
                    }
                }
            }
            Op::ServerSends(n) => {
                for _ in 0..*n {
                    let text = format!("s{}", server_sent.len());
                    if pair.server_send(text.clone()).is_some() {
                        server_sent.push(text);
                    }
                }
            }
            Op::Wait(n) => pair.run_for(ms(u64::from(*n))),
            Op::Cut(a, b) => pair.cut(usize::from(*a), usize::from(*b)),
            Op::Silence(n) => {
                pair.black_hole(true);
                pair.unreachable = true;
                pair.run_for(ms(u64::from(*n)));
                pair.unreachable = false;
            }
        }
    }
    // Heal, let everything settle, then close: every message must have its outcome.
    pair.run_for(Duration::from_secs(5));
    pair.client.close(pair.now);
    pair.run_for(Duration::from_secs(2));
    pair.client.finish();
    pair.settle();
    (pair, sent, server_sent)
}

/// The numbers of `messages` (`c17` → 17), which must rise strictly: no gap of order, no
/// duplicate.
fn numbers(messages: &[String]) -> Vec<usize> {
    let numbers: Vec<usize> = messages.iter().map(|m| m[1..].parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated: {numbers:?}");
    numbers
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// For random message streams both ways, random cuts (at any byte) and random silences:
    /// what each application received is duplicate-free and in order, every accepted message
    /// of the client ends in exactly one outcome consistent with what the server received, and
    /// while every silence is shorter than `keep`, everything is delivered, exactly once.
    #[test]
    fn what_each_side_receives_is_in_order_once_and_every_message_ends_in_one_outcome(
        ops in proptest::collection::vec(op(), 1..40),
        short_keep in any::<bool>(),
    ) {
        let keep = if short_keep { ms(400) } else { Duration::from_secs(600) };
        let (pair, sent, server_sent) = run_scenario(&ops, keep);
        let received = pair.server_messages();
        let client_received = pair.client_messages();
        let received_numbers = numbers(&received);
        numbers(&client_received);

        let tickets: Vec<Ticket> = sent.iter().map(|(t, _)| *t).collect();
        let outcomes = client_outcomes(&pair.client_events, &tickets);
        let received_set: HashSet<&String> = received.iter().collect();
        for (ticket, text) in &sent {
            let outcome = outcomes.get(ticket).copied();
            prop_assert!(outcome.is_some(), "{ticket} ({text}) has no outcome");
            match outcome {
                Some("delivered") => prop_assert!(received_set.contains(text), "{text} delivered but never received"),
                Some("never-sent") => prop_assert!(!received_set.contains(text), "{text} never sent but received"),
                _ => {}
            }
        }
        // The server received only what the client accepted.
        prop_assert!(received_numbers.iter().all(|n| *n < sent.len()));

        // Server to client: the client received only what the server accepted.
        let (_, handed_back) = server_outcomes(&pair.server_events);
        prop_assert!(numbers(&client_received).iter().all(|n| *n < server_sent.len()));

        if !short_keep {
            // Every resume succeeded: nothing lost, nothing handed back, in both directions.
            prop_assert!(pair.connected().iter().skip(1).all(|resumed| *resumed), "{:?}", pair.connected());
            let all: Vec<String> = sent.iter().map(|(_, text)| text.clone()).collect();
            prop_assert_eq!(&received, &all);
            prop_assert!(tickets.iter().all(|t| outcomes.get(t) == Some(&"delivered")));
            // Server to client: all of it, but for what went to a session the client never
            // heard of (its connection was cut before the `WELCOME` arrived): those messages
            // came back to the server's application when the client's first session began, as
            // maybe delivered when they had been written behind the lost `WELCOME` (the server
            // cannot know they never arrived); they are the first ones sent.
            let orphaned = handed_back.len();
            let first: Vec<String> = handed_back.iter().map(|(text, _)| text.clone()).collect();
            prop_assert_eq!(&first[..], &server_sent[..orphaned]);
            prop_assert_eq!(&client_received[..], &server_sent[orphaned..]);
        }
    }
}

#[test]
fn a_welcome_lost_with_its_connection_does_not_cost_the_session() {
    let mut pair = Pair::new(Duration::from_secs(120));
    pair.run_for(ms(50));
    pair.send("before".into()).unwrap();
    pair.run_for(ms(5));
    pair.cut(0, 0);
    // The client resumes; the server's `WELCOME` (with a fresh secret) is cut off in flight.
    pair.run_for(RECONNECT_DELAY + LATENCY);
    pair.cut(usize::MAX, 0);
    pair.run_for(ms(500));
    assert_eq!(pair.connected(), vec![false, true], "resumed with the secret it had");
    assert_eq!(pair.server_messages(), vec!["before"]);
}
