//! Delivery under faults, protocol 2, with real sockets and real processes: numbered,
//! acknowledged messages both ways must arrive gap-free, once each and in order, and every
//! accepted message must end in exactly one outcome, whatever happens to the connection, the
//! server or the client in between.
//!
//! The logs are checked by three small types shared by every test here (and by the namespace
//! cases in `netns_keep.rs`):
//! - [`Inbox`]: what one application was handed, in order. Each `seq` must follow the one
//!   before it in its session (a fresh session starts again at 1), and no message number may
//!   come twice.
//! - [`ClientLedger`]: every ticket the client accepted, and its one outcome: `Delivered`
//!   (cumulative: every ticket up to `up_to` without another outcome), `Expired` or
//!   `Undelivered`. It also holds the client's [`Inbox`].
//! - [`ServerLedger`]: per peer, every seq [`Server::send`] returned, and its one outcome:
//!   `Delivered` (cumulative per peer) or the `undelivered` list of `PeerOffline`, with the
//!   server's [`Inbox`] of each peer.
//!
//! Payloads carry the application's own number (`c000042` from a client, `s000042` from a
//! server), so a log can be compared with what was sent whatever the protocol numbers were.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use nix::sys::signal::Signal;
use pulsewire::{
    Client, DisconnectReason, Event, Events, OfflineReason, SendError, SendOptions, Server, ServerEvent, ServerEvents,
    ServerSendError, Undelivered,
};
use pulsewire_tests::crowd::Crowd;
use pulsewire_tests::{
    client_example_bin, next_event, start_client_process, within, DemoServer, Line, Process, RawPeer, Spread,
};

use crate::{bind, client_config, patience, scale, serial, server_config};

/// A test message: a letter for its direction and the application's number, `c000042`.
pub(crate) fn numbered(prefix: char, n: u64) -> Bytes {
    Bytes::from(format!("{prefix}{n:06}"))
}

/// A test message of exactly `len` bytes (at least 7): [`numbered`], padded with dots.
pub(crate) fn padded(prefix: char, n: u64, len: usize) -> Bytes {
    let mut text = format!("{prefix}{n:06}");
    assert!(text.len() <= len, "{len} bytes cannot hold {text}");
    text.extend(std::iter::repeat_n('.', len - text.len()));
    Bytes::from(text)
}

/// The application's number in a test message; panics on a payload no test sent.
pub(crate) fn number_of(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload).unwrap_or("");
    let digits = text.get(1..).map(|rest| rest.trim_end_matches('.'));
    digits.and_then(|digits| digits.parse().ok()).unwrap_or_else(|| panic!("not a test message: {payload:?}"))
}

/// One message an application was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Got {
    /// The session it came in, counted from 1 (0: before any `Connected`/`PeerOnline` was seen).
    pub(crate) session: u32,
    /// Its number in the session.
    pub(crate) seq: u64,
    /// The application's number in its payload.
    pub(crate) number: u64,
}

/// What one side's application was handed, in order. [`Inbox::receive`] panics at the first
/// gap, replay or duplicate, naming it.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    got: Vec<Got>,
    session: u32,
    last_seq: u64,
    numbers: HashSet<u64>,
}

impl Inbox {
    /// A fresh session starts: its seqs start again at 1.
    pub(crate) fn fresh_session(&mut self) {
        self.session += 1;
        self.last_seq = 0;
    }

    /// The application is handed message `seq` with `payload`.
    pub(crate) fn receive(&mut self, seq: u64, payload: &[u8]) {
        let number = number_of(payload);
        assert_eq!(
            seq,
            self.last_seq + 1,
            "gap-free and duplicate-free: in session {}, seq {} came after seq {} ({payload:?})",
            self.session,
            seq,
            self.last_seq
        );
        assert!(self.numbers.insert(number), "message {number} handed over twice (now as seq {seq})");
        self.last_seq = seq;
        self.got.push(Got { session: self.session, seq, number });
    }

    /// The numbers handed over, in order.
    pub(crate) fn numbers(&self) -> Vec<u64> {
        self.got.iter().map(|got| got.number).collect()
    }

    /// The numbers handed over in `session`, in order.
    pub(crate) fn numbers_in(&self, session: u32) -> Vec<u64> {
        self.got.iter().filter(|got| got.session == session).map(|got| got.number).collect()
    }

    /// Whether message `number` was handed over.
    pub(crate) fn has(&self, number: u64) -> bool {
        self.numbers.contains(&number)
    }

    /// How many messages were handed over.
    pub(crate) fn len(&self) -> usize {
        self.got.len()
    }

    /// Everything handed over.
    pub(crate) fn got(&self) -> &[Got] {
        &self.got
    }
}

/// The one outcome of an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Acknowledged, in this session of the sender (counted from 1).
    Delivered {
        /// The session.
        session: u32,
    },
    /// Its time to live passed before it was written.
    Expired,
    /// Handed back.
    Undelivered {
        /// Whether it was written and may have arrived.
        maybe_delivered: bool,
    },
}

/// How the accepted messages of one sender ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Accepted.
    pub(crate) accepted: usize,
    /// Delivered.
    pub(crate) delivered: usize,
    /// Expired.
    pub(crate) expired: usize,
    /// Undelivered, maybe delivered.
    pub(crate) maybe_delivered: usize,
    /// Undelivered, never written.
    pub(crate) never_sent: usize,
    /// Without an outcome yet.
    pub(crate) pending: usize,
}

impl Tally {
    fn of<'a>(outcomes: impl Iterator<Item = &'a Option<Outcome>>) -> Tally {
        let mut tally = Tally::default();
        for outcome in outcomes {
            tally.accepted += 1;
            match outcome {
                None => tally.pending += 1,
                Some(Outcome::Delivered { .. }) => tally.delivered += 1,
                Some(Outcome::Expired) => tally.expired += 1,
                Some(Outcome::Undelivered { maybe_delivered: true }) => tally.maybe_delivered += 1,
                Some(Outcome::Undelivered { maybe_delivered: false }) => tally.never_sent += 1,
            }
        }
        tally
    }

    fn add(mut self, other: Tally) -> Tally {
        self.accepted += other.accepted;
        self.delivered += other.delivered;
        self.expired += other.expired;
        self.maybe_delivered += other.maybe_delivered;
        self.never_sent += other.never_sent;
        self.pending += other.pending;
        self
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accepted: {} delivered, {} expired, {} undelivered ({} maybe delivered, {} never sent), {} pending",
            self.accepted,
            self.delivered,
            self.expired,
            self.maybe_delivered + self.never_sent,
            self.maybe_delivered,
            self.never_sent,
            self.pending
        )
    }
}

/// One accepted message of a client.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    number: u64,
    outcome: Option<Outcome>,
}

/// A client's side of the delivery log: every accepted ticket with its one outcome, and what
/// its application was handed ([`ClientLedger::inbox`]). Fed by [`ClientLedger::note`] (SDK
/// events) or [`ClientLedger::note_line`] (the example client's JSON lines); panics at the first
/// broken promise.
#[derive(Debug, Default)]
pub(crate) struct ClientLedger {
    tickets: BTreeMap<u64, Accepted>,
    /// The session the client is in, counted from 1 at each fresh one.
    session: u32,
    /// Every `Connected`, with whether it resumed.
    pub(crate) connected: Vec<(bool, Instant)>,
    /// Every `Disconnected`.
    pub(crate) disconnected: Vec<(DisconnectReason, Instant)>,
    /// How many connect attempts started after the first connection was lost.
    pub(crate) attempts: usize,
    /// What the application was handed.
    pub(crate) inbox: Inbox,
    /// The highest `Delivered { up_to }` so far.
    delivered_up_to: u64,
    /// The numbers of the lines typed into an example client, waiting for its `queued` line.
    typed: VecDeque<u64>,
}

impl ClientLedger {
    /// `send` accepted message `number` with `ticket`.
    pub(crate) fn accepted(&mut self, ticket: u64, number: u64) {
        let last = self.tickets.last_key_value().map_or(0, |(ticket, _)| *ticket);
        assert!(ticket > last, "ticket {ticket} after ticket {last}: tickets count up");
        self.tickets.insert(ticket, Accepted { number, outcome: None });
    }

    /// Reads one SDK event.
    pub(crate) fn note(&mut self, event: &Event) {
        match event {
            Event::Connected { resumed, .. } => self.connected(*resumed),
            Event::Disconnected { reason } => self.disconnected.push((reason.clone(), Instant::now())),
            Event::Connecting { .. } if !self.connected.is_empty() => self.attempts += 1,
            Event::Message { seq, payload } => self.inbox.receive(*seq, payload),
            Event::Delivered { up_to, count } => self.delivered(up_to.get(), *count),
            Event::Expired { ticket, payload } => self.settle(ticket.get(), payload, Outcome::Expired),
            Event::Undelivered { ticket, payload, maybe_delivered } => {
                self.settle(ticket.get(), payload, Outcome::Undelivered { maybe_delivered: *maybe_delivered })
            }
            _ => {}
        }
    }

    /// A line with message `number` was typed into an example client: its `queued` line will
    /// name its ticket.
    pub(crate) fn typed(&mut self, number: u64) {
        self.typed.push_back(number);
    }

    /// Reads one JSON line of the example client (`--json`).
    pub(crate) fn note_line(&mut self, line: &Line) {
        let json = &line.json;
        let n = |key: &str| json[key].as_u64().unwrap_or_else(|| panic!("no {key} in {json}"));
        let text = || json["text"].as_str().unwrap_or_else(|| panic!("no text in {json}")).as_bytes().to_vec();
        match line.event() {
            "queued" => {
                let number = self.typed.pop_front().unwrap_or_else(|| panic!("queued, but nothing typed: {json}"));
                self.accepted(n("ticket"), number);
            }
            "connected" => self.connected(json["resumed"].as_bool().unwrap_or(false)),
            "disconnected" => self.disconnected.push((DisconnectReason::Eof, line.at)),
            "message" => self.inbox.receive(n("seq"), &text()),
            "delivered" => self.delivered(n("up_to"), usize::try_from(n("count")).unwrap_or(usize::MAX)),
            "expired" => self.settle(n("ticket"), &text(), Outcome::Expired),
            "undelivered" => {
                let maybe_delivered = json["maybe_delivered"].as_bool().unwrap_or_else(|| panic!("{json}"));
                self.settle(n("ticket"), &text(), Outcome::Undelivered { maybe_delivered });
            }
            _ => {}
        }
    }

    fn connected(&mut self, resumed: bool) {
        if !resumed {
            self.session += 1;
            self.inbox.fresh_session();
        }
        self.connected.push((resumed, Instant::now()));
    }

    fn delivered(&mut self, up_to: u64, count: usize) {
        assert!(up_to > self.delivered_up_to, "Delivered up to {up_to} after Delivered up to {}", self.delivered_up_to);
        let session = self.session;
        let mut newly = 0;
        for (_, accepted) in self.tickets.range_mut(..=up_to) {
            if accepted.outcome.is_none() {
                accepted.outcome = Some(Outcome::Delivered { session });
                newly += 1;
            }
        }
        assert_eq!(newly, count, "Delivered up to {up_to} counts {count}, but {newly} tickets had no outcome");
        assert!(
            matches!(self.tickets.get(&up_to), Some(Accepted { outcome: Some(Outcome::Delivered { .. }), .. })),
            "Delivered up to {up_to}: not an accepted ticket, or it ended otherwise"
        );
        self.delivered_up_to = up_to;
    }

    fn settle(&mut self, ticket: u64, payload: &[u8], outcome: Outcome) {
        let accepted =
            self.tickets.get_mut(&ticket).unwrap_or_else(|| panic!("{outcome:?} of ticket {ticket}, never accepted"));
        assert_eq!(accepted.outcome, None, "ticket {ticket}: {outcome:?} after {:?}", accepted.outcome);
        assert_eq!(number_of(payload), accepted.number, "ticket {ticket} hands back another payload");
        accepted.outcome = Some(outcome);
    }

    /// Whether every accepted ticket has its outcome.
    pub(crate) fn settled(&self) -> bool {
        self.tickets.values().all(|accepted| accepted.outcome.is_some())
    }

    /// How many tickets were accepted.
    pub(crate) fn accepted_count(&self) -> usize {
        self.tickets.len()
    }

    /// How the accepted messages ended.
    pub(crate) fn tally(&self) -> Tally {
        Tally::of(self.tickets.values().map(|accepted| &accepted.outcome))
    }

    /// The numbers of the messages that ended in `outcome` (compared as a pattern by
    /// `matches`), in ticket order.
    pub(crate) fn numbers_where(&self, matches: impl Fn(Option<Outcome>) -> bool) -> Vec<u64> {
        self.tickets.values().filter(|accepted| matches(accepted.outcome)).map(|accepted| accepted.number).collect()
    }

    /// The outcome of message `number`.
    pub(crate) fn outcome_of(&self, number: u64) -> Option<Outcome> {
        self.tickets.values().find(|accepted| accepted.number == number).and_then(|accepted| accepted.outcome)
    }

    /// How many `Connected` events said `resumed`.
    pub(crate) fn resumes(&self) -> usize {
        self.connected.iter().filter(|(resumed, _)| *resumed).count()
    }

    /// Panics unless every accepted message was delivered.
    pub(crate) fn assert_all_delivered(&self, who: &str) {
        let tally = self.tally();
        assert_eq!(tally.delivered, tally.accepted, "{who}: not every message was delivered: {tally}");
    }
}

/// One seq the server's application sent in one session of a peer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    number: u64,
    outcome: Option<Outcome>,
}

/// One session of a peer, as the server's application saw it.
#[derive(Debug, Default)]
struct SessionLedger {
    sent: BTreeMap<u64, Sent>,
    /// The highest `Delivered { up_to }`: a send whose seq is at or below it (its answer was
    /// read after the acknowledgement) is delivered when it is recorded.
    acked: u64,
    /// Its `PeerOffline` was read.
    ended: bool,
}

/// One peer of the server, as its application saw it.
#[derive(Debug, Default)]
pub(crate) struct PeerLedger {
    /// Its sessions in order; the last one is the current one unless it ended.
    sessions: Vec<SessionLedger>,
    /// What the server's application was handed from it.
    pub(crate) inbox: Inbox,
    /// Every `PeerOnline`, with whether it resumed.
    pub(crate) online: Vec<(bool, Instant)>,
    /// Every `PeerDetached`.
    pub(crate) detached: Vec<(OfflineReason, Instant)>,
    /// Every `PeerOffline`, with its undelivered messages.
    pub(crate) offline: Vec<(OfflineReason, Instant, Vec<Undelivered>)>,
}

impl PeerLedger {
    fn current(&mut self) -> &mut SessionLedger {
        if self.sessions.last().is_none_or(|session| session.ended) {
            self.sessions.push(SessionLedger::default());
        }
        self.sessions.last_mut().unwrap_or_else(|| unreachable!("pushed above"))
    }

    /// How many `PeerOnline` events said `resumed`.
    pub(crate) fn resumes(&self) -> usize {
        self.online.iter().filter(|(resumed, _)| *resumed).count()
    }

    /// How the messages sent to this peer ended.
    pub(crate) fn tally(&self) -> Tally {
        self.sessions
            .iter()
            .map(|session| Tally::of(session.sent.values().map(|sent| &sent.outcome)))
            .fold(Tally::default(), Tally::add)
    }

    /// The numbers of the messages sent to this peer that ended as `matches` says, in order.
    pub(crate) fn numbers_where(&self, matches: impl Fn(Option<Outcome>) -> bool) -> Vec<u64> {
        let all = self.sessions.iter().flat_map(|session| session.sent.values());
        all.filter(|sent| matches(sent.outcome)).map(|sent| sent.number).collect()
    }
}

/// The server's side of the delivery log, per peer: every seq [`Server::send`] returned, with
/// its one outcome, and what the application was handed. Fed by [`ServerLedger::sent`] and
/// [`ServerLedger::note`]; panics at the first broken promise.
///
/// [`Server::send`]: pulsewire::Server::send
#[derive(Debug, Default)]
pub(crate) struct ServerLedger {
    peers: BTreeMap<String, PeerLedger>,
}

impl ServerLedger {
    /// The peer's ledger (empty if nothing was heard of it).
    pub(crate) fn peer(&mut self, peer: &str) -> &mut PeerLedger {
        self.peers.entry(peer.to_owned()).or_default()
    }

    /// [`Server::send`](pulsewire::Server::send) to `peer` returned `seq` for message `number`.
    pub(crate) fn sent(&mut self, peer: &str, seq: u64, number: u64) {
        let session = self.peer(peer).current();
        let last = session.sent.last_key_value().map_or(0, |(seq, _)| *seq);
        assert_eq!(seq, last + 1, "{peer}: Server::send returned seq {seq} after seq {last} in one session");
        let outcome = (seq <= session.acked).then_some(Outcome::Delivered { session: 0 });
        session.sent.insert(seq, Sent { number, outcome });
    }

    /// Reads one server event.
    pub(crate) fn note(&mut self, event: &ServerEvent) {
        let now = Instant::now();
        match event {
            ServerEvent::PeerOnline { peer, resumed } => {
                let ledger = self.peer(peer.id.as_str());
                if !resumed {
                    ledger.inbox.fresh_session();
                }
                ledger.online.push((*resumed, now));
            }
            ServerEvent::PeerDetached { peer, reason } => {
                self.peer(peer.id.as_str()).detached.push((reason.clone(), now));
            }
            ServerEvent::Message { peer, seq, payload } => self.peer(peer.as_str()).inbox.receive(*seq, payload),
            ServerEvent::Delivered { peer, up_to } => {
                let name = peer.as_str().to_owned();
                let session = self.peer(&name).current();
                assert!(*up_to > session.acked, "{name}: Delivered up to {up_to} after up to {}", session.acked);
                for (_, sent) in session.sent.range_mut(..=*up_to) {
                    if sent.outcome.is_none() {
                        sent.outcome = Some(Outcome::Delivered { session: 0 });
                    }
                }
                session.acked = *up_to;
            }
            ServerEvent::PeerOffline { peer, reason, undelivered } => {
                let name = peer.id.as_str().to_owned();
                let ledger = self.peer(&name);
                ledger.offline.push((reason.clone(), now, undelivered.clone()));
                let Some(session) = ledger.sessions.last_mut().filter(|session| !session.ended) else {
                    assert!(undelivered.is_empty(), "{name}: undelivered messages of a session nothing was sent in");
                    return;
                };
                for message in undelivered {
                    let sent = session.sent.get_mut(&message.seq).unwrap_or_else(|| {
                        panic!("{name}: seq {} handed back, never returned by Server::send", message.seq)
                    });
                    assert_eq!(sent.outcome, None, "{name}: seq {} handed back after {:?}", message.seq, sent.outcome);
                    assert_eq!(
                        number_of(&message.payload),
                        sent.number,
                        "{name}: seq {} hands back another payload",
                        message.seq
                    );
                    sent.outcome = Some(Outcome::Undelivered { maybe_delivered: message.maybe_delivered });
                }
                let pending: Vec<u64> =
                    session.sent.iter().filter(|(_, sent)| sent.outcome.is_none()).map(|(seq, _)| *seq).collect();
                assert!(
                    pending.is_empty(),
                    "{name}: the session ended ({reason}) leaving seqs {pending:?} without an outcome"
                );
                session.ended = true;
            }
            _ => {}
        }
    }

    /// Whether every seq sent has its outcome.
    pub(crate) fn settled(&self) -> bool {
        self.peers.values().all(|peer| peer.tally().pending == 0)
    }

    /// How the messages sent to every peer ended, together.
    pub(crate) fn tally(&self) -> Tally {
        self.peers.values().map(PeerLedger::tally).fold(Tally::default(), Tally::add)
    }
}

/// Both sides' ledgers of an in-process client and server.
#[derive(Debug, Default)]
pub(crate) struct Ledgers {
    /// The client's.
    pub(crate) client: ClientLedger,
    /// The server's.
    pub(crate) server: ServerLedger,
}

/// Reads the client's and the server's events into `ledgers` until `done` holds, for at most
/// `limit`. `done` is checked before the first event and after each one; pulses keep coming,
/// so a condition that other tasks make true is noticed within an interval.
pub(crate) async fn read_until(
    events: &mut Events,
    server_events: &mut ServerEvents,
    ledgers: &RefCell<Ledgers>,
    limit: Duration,
    what: &str,
    done: impl Fn(&mut Ledgers) -> bool,
) -> anyhow::Result<()> {
    let reading = async {
        loop {
            if done(&mut ledgers.borrow_mut()) {
                return Ok(());
            }
            futures::select! {
                event = events.next().fuse() => match event {
                    Some(event) => ledgers.borrow_mut().client.note(&event),
                    None => anyhow::bail!("the client's events ended"),
                },
                event = server_events.next().fuse() => match event {
                    Some(event) => ledgers.borrow_mut().server.note(&event),
                    None => anyhow::bail!("the server's events ended"),
                },
            }
        }
    };
    match within(limit, reading).await {
        Some(result) => result,
        None => {
            let ledgers = ledgers.borrow();
            anyhow::bail!(
                "not within {limit:?}: {what}; client {}, server {}; client connected {:?}",
                ledgers.client.tally(),
                ledgers.server.tally(),
                ledgers.client.connected.iter().map(|(resumed, _)| *resumed).collect::<Vec<_>>()
            )
        }
    }
}

/// Reads a client's events into `ledger` until `done` holds, for at most `limit` (see
/// [`read_until`]; this one is for a client whose server is not in this process).
pub(crate) async fn read_client_until(
    events: &mut Events,
    ledger: &RefCell<ClientLedger>,
    limit: Duration,
    what: &str,
    done: impl Fn(&ClientLedger) -> bool,
) -> anyhow::Result<()> {
    let reading = async {
        while !done(&ledger.borrow()) {
            match events.next().await {
                Some(event) => ledger.borrow_mut().note(&event),
                None => anyhow::bail!("the client's events ended"),
            }
        }
        Ok(())
    };
    match within(limit, reading).await {
        Some(result) => result,
        None => anyhow::bail!("not within {limit:?}: {what}; client {}", ledger.borrow().tally()),
    }
}

/// A free loopback port, left free.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

// The harness of these tests: readers of event streams and of printed lines, raw peers.

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `Server::send` of message `number` (as `payload`) to `peer`, recorded in `ledgers`.
pub(crate) async fn server_send(
    server: &Server,
    ledgers: &RefCell<Ledgers>,
    peer: &str,
    number: u64,
    payload: Bytes,
) -> Result<u64, ServerSendError> {
    let id = pulsewire::protocol::ClientId::new(peer).expect("a valid id");
    let seq = server.send(&id, payload).await?;
    ledgers.borrow_mut().server.sent(peer, seq, number);
    Ok(seq)
}

/// Reads the server's events into `ledgers` until `done` holds (for a test without an SDK
/// client).
async fn read_server_until(
    server_events: &mut ServerEvents,
    ledgers: &RefCell<Ledgers>,
    what: &str,
    done: impl Fn(&mut ServerLedger) -> bool,
) -> anyhow::Result<()> {
    let reading = async {
        while !done(&mut ledgers.borrow_mut().server) {
            match server_events.next().await {
                Some(event) => ledgers.borrow_mut().server.note(&event),
                None => anyhow::bail!("the server's events ended"),
            }
        }
        Ok(())
    };
    within(patience(), reading).await.unwrap_or_else(|| anyhow::bail!("not within {:?}: {what}", patience()))
}

/// Waits until `process` printed `n` lines matching `pred`, counting those read already.
fn wait_seen(process: &mut Process, n: usize, pred: impl Fn(&Line) -> bool) -> anyhow::Result<()> {
    let mut count = process.seen.iter().filter(|line| pred(line)).count();
    if count < n {
        process.wait_for(patience(), |line| {
            count += usize::from(pred(line));
            count >= n
        })?;
    }
    Ok(())
}

/// Starts the example client as `id` with `--state-file state`, printing JSON lines.
fn start_stateful_client(server: SocketAddr, id: &str, state: &std::path::Path) -> anyhow::Result<Process> {
    let mut command = std::process::Command::new(client_example_bin());
    command.args(["--json", "--server", &server.to_string(), "--id", id, "--max-delay-ms", "200", "--state-file"]);
    command.arg(state);
    Process::spawn(command)
}

/// Types message `number` into an example client.
fn type_message(client: &mut Process, ledger: &mut ClientLedger, number: u64) -> anyhow::Result<()> {
    ledger.typed(number);
    client.type_line(std::str::from_utf8(&numbered('c', number))?)
}

/// Waits until a demo server's online list, printed after a change, shows `peer` detached with
/// at least `queued` messages in its session. The list is printed only after a change, so a
/// protocol 1 peer comes and goes to make one.
fn wait_detached_queue(server: &mut DemoServer, peer: &str, queued: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + patience();
    loop {
        // A protocol 1 peer: no session is kept for it, nothing is queued for it after.
        let (marker, _) = RawPeer::hello(server.addr, "marker")?;
        server.process.wait_event(patience(), "online", "marker")?;
        let list = server.process.wait_for(patience(), |line| line.event() == "online_list")?;
        drop(marker);
        server.process.wait_event(patience(), "offline", "marker")?;
        let detached = list.json["detached"].as_array().cloned().unwrap_or_default();
        let held = detached.iter().find(|kept| kept["id"] == peer).and_then(|kept| kept["queued"].as_u64());
        match held {
            Some(held) if held >= queued => return Ok(held),
            _ if Instant::now() < deadline => {}
            _ => anyhow::bail!("{peer}'s detached session holds {held:?} messages, not {queued}"),
        }
    }
}

/// What a `demo-server --json` printed for `peer`: its `message` lines into an [`Inbox`] (a
/// fresh session at each `online` that did not resume), with the seq each echo got.
fn server_printed(lines: &[Line], peer: &str) -> (Inbox, Vec<u64>) {
    let mut inbox = Inbox::default();
    let mut echoes = Vec::new();
    for line in lines.iter().filter(|line| line.str("peer") == peer) {
        match line.event() {
            "online" if line.json["resumed"] != true => inbox.fresh_session(),
            "message" => {
                let seq = line.json["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {}", line.json));
                inbox.receive(seq, line.str("text").as_bytes());
                echoes.extend(line.json["echo_seq"].as_u64());
            }
            _ => {}
        }
    }
    (inbox, echoes)
}

/// The highest `up_to` of the `delivered` lines (`--verbose`) a demo server printed for `peer`.
fn server_acked(lines: &[Line], peer: &str) -> u64 {
    let delivered = lines.iter().filter(|line| line.event() == "delivered" && line.str("peer") == peer);
    delivered.filter_map(|line| line.json["up_to"].as_u64()).max().unwrap_or(0)
}

/// The value of option `key` in a `WELCOME` line.
fn welcome_option<'a>(welcome: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let prefix = format!("{key}=");
    let value = welcome.split(' ').find_map(|field| field.strip_prefix(prefix.as_str()));
    value.ok_or_else(|| anyhow::anyhow!("no {key} in {welcome:?}"))
}

/// A `WELCOME` of a fresh session, as a hand-written server sends it.
const RAW_WELCOME: &[u8] = b"WELCOME raw1 1000 3 resumed=0 rx=0 resume=0123456789abcdef0123456789abcdef keep=0\n";

/// A hand-written protocol 2 peer, either end of a socket: it writes what the test says, and
/// reads frames whole (a `DATA` frame with its payload).
struct RawV2 {
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

/// What a [`RawV2`] read: a control line, or a message.
#[derive(Debug, PartialEq, Eq)]
enum RawFrame {
    Line(String),
    Data(u64, Bytes),
}

impl RawV2 {
    fn wrap(stream: std::net::TcpStream) -> anyhow::Result<RawV2> {
        stream.set_read_timeout(Some(patience()))?;
        Ok(RawV2 { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Connects, sends `hello` (one or more whole lines) and returns the first control line of
    /// the answer.
    fn hello(addr: SocketAddr, hello: &str) -> anyhow::Result<(RawV2, String)> {
        let mut peer = RawV2::wrap(std::net::TcpStream::connect(addr)?)?;
        peer.send(hello.as_bytes())?;
        let answer = peer.next_line()?;
        Ok((peer, answer))
    }

    /// Connects as `id` in a fresh session; the peer then acknowledges nothing unless told to.
    fn fresh(addr: SocketAddr, id: &str) -> anyhow::Result<RawV2> {
        let (peer, welcome) = RawV2::hello(addr, &format!("HELLO 2 {id}\n"))?;
        anyhow::ensure!(welcome.starts_with("WELCOME ") && welcome.contains(" resumed=0 "), "{welcome:?}");
        Ok(peer)
    }

    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.writer.write_all(bytes)?)
    }

    /// The next frame that is not a `PULSE` or an `ACK`.
    /// Reads up to the next `PULSE` and answers it: the client shows it got its `WELCOME`.
    fn answer_a_pulse(&mut self) -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
            if let Some(seq) = line.trim_end().strip_prefix("PULSE ") {
                self.writer.write_all(format!("ALIVE {seq}\n").as_bytes())?;
                return Ok(());
            }
        }
    }

    fn next(&mut self) -> anyhow::Result<RawFrame> {
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
            let line = line.trim_end();
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["PULSE" | "ACK", _] => {}
                ["DATA", len, seq] => {
                    let mut payload = vec![0; len.parse()?];
                    self.reader.read_exact(&mut payload)?;
                    return Ok(RawFrame::Data(seq.parse()?, payload.into()));
                }
                _ => return Ok(RawFrame::Line(line.to_owned())),
            }
        }
    }

    /// The next control line, skipping messages.
    fn next_line(&mut self) -> anyhow::Result<String> {
        loop {
            if let RawFrame::Line(line) = self.next()? {
                return Ok(line);
            }
        }
    }

    /// Whether the other end closed the connection (reads to the end).
    fn closed_by_peer(&mut self) -> bool {
        self.reader.read_to_end(&mut Vec::new()).is_ok()
    }
}

/// Sends `input` on a fresh connection (after `HELLO 2 <id>` and its `WELCOME` when `id` is
/// given; else `input` is the first line) and returns the server's first control line in
/// answer, once the server has closed the connection.
fn v2_answer(addr: SocketAddr, id: Option<&str>, input: &[u8]) -> anyhow::Result<String> {
    let (mut peer, answer) = match id {
        Some(id) => {
            let mut peer = RawV2::fresh(addr, id)?;
            peer.send(input)?;
            let answer = peer.next_line()?;
            (peer, answer)
        }
        None => RawV2::hello(addr, std::str::from_utf8(input)?)?,
    };
    anyhow::ensure!(peer.closed_by_peer(), "the server must close after {answer:?}");
    Ok(answer)
}

// The tests.

#[test]
fn five_hundred_messages_sent_before_any_server_exists_all_arrive_once_in_order_once_it_appears() -> anyhow::Result<()>
{
    const OFFLINE: u64 = 500;
    /// Among them, every 50th is followed by one with a time to live that passes before the
    /// server appears (a pause, not a synchronisation: the test waits for no event here).
    const TTL: Duration = Duration::from_millis(50);
    let _serial = serial();
    smol::block_on(async {
        let addr = free_addr()?;
        let (client, mut events) = Client::start(client_config(addr, "early").build()?);
        let ledger = RefCell::new(ClientLedger::default());
        // Nobody listens: the attempts fail, and the client backs off.
        next_event(&mut events, patience(), |e| matches!(e, Event::BackingOff { .. })).await?;
        // Offline, with room in the outbox: `send` and `try_send` both accept at once.
        let mut short_lived = 0;
        for n in 1..=OFFLINE {
            let payload = numbered('c', n);
            let ticket = if n % 2 == 0 { client.try_send(payload)? } else { client.send(payload).await? };
            ledger.borrow_mut().accepted(ticket.get(), n);
            if n % 50 == 0 {
                short_lived += 1;
                let number = 1000 + short_lived;
                let ticket = client.try_send_with(numbered('c', number), SendOptions::new().ttl(TTL))?;
                ledger.borrow_mut().accepted(ticket.get(), number);
            }
        }
        let status = client.outbox();
        let accepted = OFFLINE as usize + short_lived as usize;
        assert_eq!((status.queued, status.unacked), (accepted, 0), "all waiting in the outbox: {status:?}");
        // Their time to live passes offline (the reconnector watches the outbox's deadlines
        // while it backs off, so they expire then; one that passes during a connect attempt
        // expires when the attempt ends).
        smol::Timer::after(TTL).await;

        let (server, mut server_events) = bind(server_config(ms(100)).listen(addr)).await?;
        let appeared = Instant::now();
        let ledgers = RefCell::new(Ledgers { client: ledger.into_inner(), server: ServerLedger::default() });
        read_until(&mut events, &mut server_events, &ledgers, patience(), "all 500 delivered", |l| {
            l.client.settled() && l.server.peer("early").inbox.len() == 500
        })
        .await?;
        let took = appeared.elapsed();
        let mut ledgers = ledgers.into_inner();
        let tally = ledgers.client.tally();
        eprintln!(
            "{accepted} sends while no server existed ({short_lived} with a time to live of {TTL:?}): all accepted; the \
             server appeared and within {took:?}: {tally}"
        );
        assert_eq!(tally, Tally { accepted, delivered: 500, expired: short_lived as usize, ..Tally::default() });
        let inbox = &ledgers.server.peer("early").inbox;
        assert_eq!(inbox.numbers(), (1..=OFFLINE).collect::<Vec<_>>(), "every message once, in order, none expired");
        assert_eq!(ledgers.client.connected.len(), 1, "one connect");
        assert!(!ledgers.client.connected[0].0, "a fresh session");
        client.close().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_message_whose_time_to_live_passes_while_offline_expires_then_not_at_the_next_connection() -> anyhow::Result<()> {
    const TTL: Duration = Duration::from_millis(100);
    /// Generous: the expiry is a timer on a loaded machine.
    const SLACK: Duration = Duration::from_millis(900);
    let _serial = serial();
    smol::block_on(async {
        let addr = free_addr()?;
        // Long backoffs: the client spends the test waiting to retry, with no connection.
        let config = client_config(addr, "ttl").initial_delay(ms(500)).max_delay(Duration::from_secs(5)).build()?;
        let (client, mut events) = Client::start(config);
        next_event(&mut events, patience(), |e| matches!(e, Event::BackingOff { .. })).await?;
        let ledger = RefCell::new(ClientLedger::default());
        let accepted = Instant::now();
        for n in 1..=10 {
            let options = if n % 2 == 0 { SendOptions::new().ttl(TTL) } else { SendOptions::new() };
            ledger.borrow_mut().accepted(client.try_send_with(numbered('c', n), options)?.get(), n);
        }
        let expired = |l: &ClientLedger| l.tally().expired == 5;
        let waited = read_client_until(&mut events, &ledger, TTL + SLACK, "the expiries", expired).await;
        eprintln!(
            "5 messages with a time to live of {TTL:?} accepted offline: {} after {:?} ({waited:?})",
            ledger.borrow().tally(),
            accepted.elapsed()
        );
        waited?;
        assert_eq!(ledger.borrow().numbers_where(|o| o == Some(Outcome::Expired)), [2, 4, 6, 8, 10]);

        // The others are delivered once a server is there; the expired ones never reach it.
        let (server, mut server_events) = bind(server_config(ms(100)).listen(addr)).await?;
        let ledgers = RefCell::new(Ledgers { client: ledger.into_inner(), server: ServerLedger::default() });
        read_until(&mut events, &mut server_events, &ledgers, patience(), "delivered", |l| {
            l.client.settled() && l.server.peer("ttl").inbox.len() == 5
        })
        .await?;
        assert_eq!(ledgers.borrow_mut().server.peer("ttl").inbox.numbers(), [1, 3, 5, 7, 9]);
        client.close().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_hundred_connection_drops_mid_stream_both_ways_resume_every_time_and_lose_or_repeat_nothing() -> anyhow::Result<()>
{
    let drops: usize = scale(100, 1000);
    /// The pace of each side's stream: a message every this often.
    const PACE: Duration = Duration::from_millis(2);
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(ms(100))).await?;
        let (client, mut events) = Client::start(client_config(server.local_addr(), "resetter").build()?);
        let peer = pulsewire::protocol::ClientId::new("resetter").expect("a valid id");
        let ledgers = RefCell::new(Ledgers::default());
        read_until(&mut events, &mut server_events, &ledgers, patience(), "online", |l| {
            !l.client.connected.is_empty() && !l.server.peer("resetter").online.is_empty()
        })
        .await?;

        let streaming = std::cell::Cell::new(true);
        let refused_full = std::cell::Cell::new(0usize);
        let started = Instant::now();
        let client_stream = async {
            let mut n = 0;
            while streaming.get() {
                n += 1;
                let ticket = client.send(numbered('c', n)).await?;
                ledgers.borrow_mut().client.accepted(ticket.get(), n);
                smol::Timer::after(PACE).await;
            }
            anyhow::Ok(n)
        };
        let server_stream = async {
            let mut n = 0;
            while streaming.get() {
                match server.send(&peer, numbered('s', n + 1)).await {
                    Ok(seq) => {
                        n += 1;
                        ledgers.borrow_mut().server.sent("resetter", seq, n);
                    }
                    // The session holds its bound of unacknowledged messages: try again later.
                    Err(ServerSendError::Full(_)) => refused_full.set(refused_full.get() + 1),
                    Err(other) => anyhow::bail!("server send: {other}"),
                }
                smol::Timer::after(PACE).await;
            }
            anyhow::Ok(n)
        };
        // Cut every connection, wait for the resume, stream a little, again.
        let dropping = async {
            let mut resumes = Vec::new();
            for round in 0..drops {
                smol::Timer::after(ms(20 + 10 * (round as u64 % 5))).await;
                let cut = server.drop_connections().await;
                let at = Instant::now();
                anyhow::ensure!(cut == 1, "round {round}: {cut} connections cut");
                let resumed = |l: &mut Ledgers| l.client.resumes() == round + 1;
                read_until(&mut events, &mut server_events, &ledgers, patience(), "resumed", resumed).await?;
                resumes.push(at.elapsed());
            }
            streaming.set(false);
            anyhow::Ok(resumes)
        };
        let (sent_by_client, sent_by_server, resumes) = futures::join!(client_stream, server_stream, dropping);
        let (sent_by_client, sent_by_server, resumes) = (sent_by_client?, sent_by_server?, resumes?);
        let streamed = started.elapsed();
        read_until(&mut events, &mut server_events, &ledgers, patience(), "everything delivered", |l| {
            l.client.settled()
                && l.server.settled()
                && l.client.inbox.len() as u64 == sent_by_server
                && l.server.peer("resetter").inbox.len() as u64 == sent_by_client
        })
        .await?;

        let mut ledgers = ledgers.into_inner();
        let (client_tally, server_tally) = (ledgers.client.tally(), ledgers.server.tally());
        eprintln!(
            "{drops} connection drops in {streamed:?} while streaming both ways: resumed after {}; client {client_tally}; \
             server {server_tally} ({} sends refused as full and retried); both inboxes gap-free, once each, in order",
            Spread::of(&resumes).map(|s| s.to_string()).unwrap_or_default(),
            refused_full.get(),
        );
        assert_eq!(ledgers.client.resumes(), drops, "the client resumed after every drop");
        assert!(ledgers.client.connected.iter().skip(1).all(|(resumed, _)| *resumed), "never a fresh session");
        let at_server = ledgers.server.peer("resetter");
        assert_eq!((at_server.resumes(), at_server.detached.len()), (drops, drops));
        assert!(at_server.offline.is_empty(), "the session never ended");
        assert_eq!(at_server.inbox.numbers(), (1..=sent_by_client).collect::<Vec<_>>());
        assert_eq!(ledgers.client.inbox.numbers(), (1..=sent_by_server).collect::<Vec<_>>());
        ledgers.client.assert_all_delivered("client");
        assert_eq!(server_tally.delivered, server_tally.accepted, "server: {server_tally}");

        client.close().await;
        server.shutdown().await;
        assert_eq!((client.live_tasks(), server.live_tasks()), (0, 0));
        anyhow::Ok(())
    })
}

#[test]
fn a_server_killed_mid_stream_hands_back_only_the_maybe_delivered_and_its_successor_gets_the_rest_once(
) -> anyhow::Result<()> {
    /// Kill the server once this many messages were acknowledged, and stop once as many more
    /// were acknowledged by its successor.
    const BEFORE: usize = 100;
    const AFTER: usize = 100;
    /// Written into the frozen server's socket before it is killed.
    const IN_FLIGHT: usize = 20;
    let _serial = serial();
    let args = ["--interval", "100ms", "--keep", "10s", "--verbose"];
    let mut first = DemoServer::start_logging("127.0.0.1:0", &args, Some("warn"))?;
    let addr = first.addr;
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(addr, "streamer").build()?);
        let ledger = RefCell::new(ClientLedger::default());
        let streaming = std::cell::Cell::new(true);
        let stream = async {
            let mut n = 0;
            while streaming.get() {
                n += 1;
                let ticket = client.send(numbered('c', n)).await?;
                ledger.borrow_mut().accepted(ticket.get(), n);
                smol::Timer::after(ms(3)).await;
            }
            anyhow::Ok(n)
        };
        let crash = async {
            read_client_until(&mut events, &ledger, patience(), "delivered before the kill", |l| {
                l.tally().delivered >= BEFORE
            })
            .await?;
            // Frozen first, so that the messages written from now on stay unread and
            // unacknowledged in its socket: they are in flight when it dies.
            first.process.signal(Signal::SIGSTOP)?;
            let in_flight = |l: &ClientLedger| l.tally().pending >= IN_FLIGHT;
            read_client_until(&mut events, &ledger, patience(), "messages in flight", in_flight).await?;
            first.process.signal(Signal::SIGKILL)?;
            let killed = Instant::now();
            first.process.kill();
            let second = DemoServer::start_logging(&addr.to_string(), &args, Some("warn"))?;
            read_client_until(&mut events, &ledger, patience(), "a fresh session", |l| l.connected.len() == 2).await?;
            let back = killed.elapsed();
            let delivered_before = ledger.borrow().tally().delivered;
            read_client_until(&mut events, &ledger, patience(), "delivered after the kill", |l| {
                l.tally().delivered >= delivered_before + AFTER
            })
            .await?;
            streaming.set(false);
            anyhow::Ok((second, back))
        };
        let (sent, crash) = futures::join!(stream, crash);
        let (sent, (mut second, back)) = (sent?, crash?);
        // Every message ends in one outcome; the successor printed every message the new
        // session delivered, and every echo it sent arrived and was acknowledged.
        read_client_until(&mut events, &ledger, patience(), "settled", |l| l.settled()).await?;
        let delivered_new = ledger.borrow().numbers_where(|o| o == Some(Outcome::Delivered { session: 2 })).len();
        let printed = |l: &Line| l.event() == "message" && l.str("peer") == "streamer";
        wait_seen(&mut second.process, delivered_new, printed)?;
        let (_, echoes) = server_printed(&second.process.seen, "streamer");
        let echoed = |l: &ClientLedger| l.inbox.numbers_in(2).len() == echoes.len();
        read_client_until(&mut events, &ledger, patience(), "every echo", echoed).await?;
        let last_echo = echoes.len() as u64;
        wait_seen(&mut second.process, 1, |l| {
            l.event() == "delivered" && l.str("peer") == "streamer" && l.json["up_to"] == last_echo
        })?;
        // Everything the killed server printed (its pipe is at its end).
        let _ = first.process.wait_for(patience(), |_| false);

        let ledger = ledger.into_inner();
        let tally = ledger.tally();
        let (old, _) = server_printed(&first.process.seen, "streamer");
        let (new, new_echoes) = server_printed(&second.process.seen, "streamer");
        let handed_back = ledger.numbers_where(|o| matches!(o, Some(Outcome::Undelivered { .. })));
        let arrived_anyway = handed_back.iter().filter(|n| old.has(**n)).count();
        eprintln!(
            "server SIGKILLed after {BEFORE} acknowledged, successor online {back:?} later: client {tally}; the killed \
             server printed {}, its successor {} (its {} echoes all acknowledged); of the {} handed back, {arrived_anyway} \
             had reached the killed server",
            old.len(),
            new.len(),
            new_echoes.len(),
            handed_back.len(),
        );
        assert_eq!(tally.accepted as u64, sent);
        assert!(ledger.settled(), "{tally}");
        assert_eq!(tally.never_sent + tally.expired, 0, "only what was written is handed back: {tally}");
        assert!(tally.maybe_delivered >= IN_FLIGHT, "what was in flight is handed back: {tally}");
        assert_eq!(ledger.connected.iter().map(|(resumed, _)| *resumed).collect::<Vec<_>>(), [false, false]);
        // The killed server printed a prefix of the stream (its last lines may have died in its
        // buffer); each of them was acknowledged there or handed back as maybe delivered.
        assert_eq!(old.numbers(), (1..=old.len() as u64).collect::<Vec<_>>(), "the old session, in order");
        for n in old.numbers() {
            let outcome = ledger.outcome_of(n);
            assert!(
                matches!(
                    outcome,
                    Some(Outcome::Delivered { session: 1 } | Outcome::Undelivered { maybe_delivered: true })
                ),
                "message {n} reached the killed server, yet {outcome:?}"
            );
        }
        // The successor got exactly what the new session delivered, once each, in order, and
        // nothing the old one had.
        let delivered_new = ledger.numbers_where(|o| o == Some(Outcome::Delivered { session: 2 }));
        assert_eq!(new.numbers(), delivered_new, "the successor's messages are the new session's deliveries");
        assert!(new.numbers().iter().all(|n| !old.has(*n)), "no message reached both servers");
        // The client's inbox: the old server's echoes, then the successor's (checked gap-free
        // and once each as they came). An echo from the old server proves that it had the
        // message: delivered in the old session, or handed back as maybe delivered, never sent
        // again.
        for n in ledger.inbox.numbers_in(1) {
            let outcome = ledger.outcome_of(n);
            assert!(
                matches!(
                    outcome,
                    Some(Outcome::Delivered { session: 1 } | Outcome::Undelivered { maybe_delivered: true })
                ),
                "the killed server echoed message {n}, yet {outcome:?}"
            );
        }
        assert_eq!(ledger.inbox.numbers_in(2), new.numbers(), "every message the successor had, echoed once");
        assert_eq!(server_acked(&second.process.seen, "streamer"), new_echoes.len() as u64, "every echo acknowledged");
        client.close().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_client_killed_and_restarted_from_its_state_file_resumes_and_gets_what_was_sent_meanwhile_once(
) -> anyhow::Result<()> {
    /// Messages the client sends (and gets echoed) before its kill, and after its restart.
    const BEFORE: u64 = 20;
    const AFTER: u64 = 5;
    /// Lines the server's operator types while the client is dead.
    const MEANWHILE: u64 = 10;
    let _serial = serial();
    let state = std::env::temp_dir().join(format!("pulsewire-delivery-{}.state", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let args = ["--interval", "100ms", "--keep", "30s"];
    let mut server = DemoServer::start_logging("127.0.0.1:0", &args, Some("warn"))?;

    // The first life: a fresh session, BEFORE messages each way.
    let mut first = start_stateful_client(server.addr, "phoenix", &state)?;
    let mut ledger = ClientLedger::default();
    server.process.wait_event(patience(), "online", "phoenix")?;
    for n in 1..=BEFORE {
        type_message(&mut first, &mut ledger, n)?;
    }
    first.wait_for(patience(), |line| line.event() == "message" && line.json["seq"] == BEFORE)?;
    // The server acknowledges the client's messages after its ACK delay, which a pulse may
    // overtake: wait for the delivery of the last one (it may have come before the echo).
    first.seen_or_wait_for(patience(), |line| line.event() == "delivered" && line.json["up_to"] == BEFORE)?;
    // The state is saved right after each message is printed, before the next event: once a
    // pulse follows the last echo, the file has it (and the echo's ACK went with the ALIVE).
    first.wait_for(patience(), |line| line.event() == "pulse")?;
    for line in &first.seen {
        ledger.note_line(line);
    }
    assert!(ledger.settled(), "all acknowledged before the kill: {}", ledger.tally());
    let first_life = ledger.tally();

    first.signal(Signal::SIGKILL)?;
    let killed = Instant::now();
    first.kill();
    let detached = server.process.wait_event(patience(), "detached", "phoenix")?;
    // The operator types while the client is dead: queued in its kept session.
    // (Numbered from 1001: the inbox tells messages apart by number, whoever sent them.)
    for n in 1..=MEANWHILE {
        server.process.type_line(std::str::from_utf8(&numbered('s', 1000 + n))?)?;
    }
    let held = wait_detached_queue(&mut server, "phoenix", MEANWHILE)?;

    // The second life, from the saved state: the same session, resumed.
    let mut second = start_stateful_client(server.addr, "phoenix", &state)?;
    let restarted = Instant::now();
    let loaded = second.wait_for(patience(), |line| line.event() == "state_loaded")?;
    let connected = second.wait_for(patience(), |line| line.event() == "connected")?;
    let online = server.process.wait_event(patience(), "online", "phoenix")?;
    for n in BEFORE + 1..=BEFORE + AFTER {
        type_message(&mut second, &mut ledger, n)?;
    }
    let last_seq = BEFORE + MEANWHILE + AFTER;
    second.wait_for(patience(), |line| line.event() == "message" && line.json["seq"] == last_seq)?;
    // (The delivery of the last one may come before or after that echo.)
    second.seen_or_wait_for(patience(), |line| line.event() == "delivered" && line.json["up_to"] == AFTER)?;
    // The second process numbers its tickets from 1 again: a ledger of its own for them, one
    // inbox for both lives (the session continues).
    let mut second_ledger = ClientLedger { inbox: std::mem::take(&mut ledger.inbox), ..ClientLedger::default() };
    second_ledger.typed.extend(BEFORE + 1..=BEFORE + AFTER);
    for line in &second.seen {
        second_ledger.note_line(line);
    }
    server.process.wait_for(patience(), |line| line.event() == "message" && line.json["seq"] == BEFORE + AFTER)?;
    let (at_server, echoes) = server_printed(&server.process.seen, "phoenix");

    eprintln!(
        "client SIGKILLed after {first_life}; detached after {:?}; {MEANWHILE} lines typed at the server, {held} held in \
         its session; restarted {:?} after the kill, online again after {:?} (resumed: client {}, server {}); second \
         life {}; the client's inbox {} messages gap-free across both lives, the server's {}",
        detached.at - killed,
        restarted - killed,
        connected.at - restarted,
        connected.json["resumed"],
        online.json["resumed"],
        second_ledger.tally(),
        second_ledger.inbox.len(),
        at_server.len(),
    );
    assert_eq!(loaded.str("session"), connected.str("session"), "the saved session");
    assert_eq!((connected.json["resumed"].as_bool(), online.json["resumed"].as_bool()), (Some(true), Some(true)));
    assert_eq!(loaded.json["delivered"], BEFORE, "the state had every echo of the first life");
    assert_eq!(held, MEANWHILE, "nothing else was waiting");
    second_ledger.assert_all_delivered("the second life");
    // Seq 1..BEFORE echoes, then what was typed at the server, then the second life's echoes.
    let expected: Vec<u64> = (1..=BEFORE).chain(1001..=1000 + MEANWHILE).chain(BEFORE + 1..=BEFORE + AFTER).collect();
    assert_eq!(second_ledger.inbox.numbers(), expected, "once each, in order, across the restart");
    let seqs: Vec<u64> = second_ledger.inbox.got().iter().map(|got| got.seq).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>());
    // The server: one session, the client's messages 1..BEFORE+AFTER once each, every echo.
    assert_eq!(at_server.numbers(), (1..=BEFORE + AFTER).collect::<Vec<_>>());
    assert_eq!(echoes.len() as u64, BEFORE + AFTER);
    assert!(!server.process.seen.iter().any(|line| line.event() == "offline" && line.str("peer") == "phoenix"));
    let _ = std::fs::remove_file(&state);
    Ok(())
}

#[test]
fn a_server_frozen_for_less_than_its_keep_resumes_the_session_and_loses_or_repeats_nothing() -> anyhow::Result<()> {
    let _serial = serial();
    let args = ["--interval", "100ms", "--keep", "10s", "--verbose"];
    let mut server = DemoServer::start_logging("127.0.0.1:0", &args, Some("warn"))?;
    smol::block_on(async {
        let (client, mut events) = Client::start(client_config(server.addr, "patient").build()?);
        let ledger = RefCell::new(ClientLedger::default());
        let streaming = std::cell::Cell::new(true);
        let stream = async {
            let mut n = 0;
            while streaming.get() {
                n += 1;
                let ticket = client.send(numbered('c', n)).await?;
                ledger.borrow_mut().accepted(ticket.get(), n);
                smol::Timer::after(ms(5)).await;
            }
            anyhow::Ok(n)
        };
        let freeze = async {
            read_client_until(&mut events, &ledger, patience(), "streaming", |l| l.tally().delivered >= 50).await?;
            server.process.signal(Signal::SIGSTOP)?;
            let frozen = Instant::now();
            // Frozen long enough for the client to declare the loss by missed pulses and try to
            // reconnect (the kernel completes the TCP handshake; the HELLO waits unread).
            read_client_until(&mut events, &ledger, patience(), "the loss", |l| !l.disconnected.is_empty()).await?;
            let noticed = frozen.elapsed();
            read_client_until(&mut events, &ledger, patience(), "an attempt", |l| l.attempts > 0).await?;
            server.process.signal(Signal::SIGCONT)?;
            let thawed = Instant::now();
            read_client_until(&mut events, &ledger, patience(), "resumed", |l| l.resumes() == 1).await?;
            let back = thawed.elapsed();
            let delivered = ledger.borrow().tally().delivered;
            read_client_until(&mut events, &ledger, patience(), "streaming again", |l| {
                l.tally().delivered >= delivered + 50
            })
            .await?;
            streaming.set(false);
            anyhow::Ok((noticed, thawed - frozen, back))
        };
        let (sent, freeze) = futures::join!(stream, freeze);
        let (sent, (noticed, stopped_for, back)) = (sent?, freeze?);
        // Every message delivered, every echo in, and acknowledged.
        read_client_until(&mut events, &ledger, patience(), "all delivered and echoed", |l| {
            l.settled() && l.inbox.len() as u64 == sent
        })
        .await?;
        server.process.wait_for(patience(), |line| {
            line.event() == "delivered" && line.str("peer") == "patient" && line.json["up_to"] == sent
        })?;
        let ledger = ledger.into_inner();
        let (at_server, echoes) = server_printed(&server.process.seen, "patient");
        let detached = server.process.seen.iter().filter(|l| l.event() == "detached").count();
        eprintln!(
            "server SIGSTOPped for {stopped_for:?} (keep 10 s): the client noticed after {noticed:?}, resumed {back:?} after \
             SIGCONT; client {}; the server printed {} messages and {detached} detach(es), sent {} echoes, all acknowledged",
            ledger.tally(),
            at_server.len(),
            echoes.len()
        );
        ledger.assert_all_delivered("patient");
        assert!(matches!(ledger.disconnected[0].0, DisconnectReason::PulseTimeout { .. }), "{:?}", ledger.disconnected);
        assert_eq!(ledger.connected.iter().map(|(resumed, _)| *resumed).collect::<Vec<_>>(), [false, true]);
        assert_eq!(at_server.numbers(), (1..=sent).collect::<Vec<_>>(), "once each, in order, one session");
        assert_eq!(ledger.inbox.numbers(), (1..=sent).collect::<Vec<_>>(), "every echo once, in order");
        assert_eq!(echoes, (1..=sent).collect::<Vec<_>>(), "no echo refused");
        assert!(!server.process.seen.iter().any(|line| line.event() == "offline" && line.str("peer") == "patient"));
        client.close().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_client_frozen_for_longer_than_the_keep_loses_its_session_and_every_message_ends_in_one_outcome(
) -> anyhow::Result<()> {
    const BEFORE: u64 = 10;
    /// Typed at the server while the client is frozen, and into the frozen client.
    const MEANWHILE: u64 = 5;
    const KEEP: Duration = Duration::from_secs(1);
    const INTERVAL: Duration = Duration::from_millis(100);
    /// How much later than it was printed a line may be read.
    const READ_JITTER: Duration = Duration::from_millis(50);
    let _serial = serial();
    let args = ["--interval", "100ms", "--keep", "1s"];
    let mut server = DemoServer::start_logging("127.0.0.1:0", &args, Some("warn"))?;
    let mut client = start_client_process(server.addr, "sleeper")?;
    let mut ledger = ClientLedger::default();
    server.process.wait_event(patience(), "online", "sleeper")?;
    for n in 1..=BEFORE {
        type_message(&mut client, &mut ledger, n)?;
    }
    client.wait_for(patience(), |line| line.event() == "message" && line.json["seq"] == BEFORE)?;
    // (The delivery of the last one may come before or after that echo.)
    client.seen_or_wait_for(patience(), |line| line.event() == "delivered" && line.json["up_to"] == BEFORE)?;
    // Idle, everything acknowledged both ways (the echoes' ACK goes with the next ALIVE).
    client.wait_for(patience(), |line| line.event() == "pulse")?;

    client.signal(Signal::SIGSTOP)?;
    let frozen = Instant::now();
    let detached = server.process.wait_event(patience(), "detached", "sleeper")?;
    for n in 1..=MEANWHILE {
        server.process.type_line(std::str::from_utf8(&numbered('s', 1000 + n))?)?;
        type_message(&mut client, &mut ledger, BEFORE + n)?;
    }
    let ended = server.process.wait_event(patience(), "offline", "sleeper")?;
    client.signal(Signal::SIGCONT)?;
    let thawed = Instant::now();
    let connected = client.wait_for(patience(), |line| line.event() == "connected")?;
    // Each message typed into the frozen client ends in one outcome.
    let deadline = Instant::now() + patience();
    loop {
        let mut check = ClientLedger { typed: ledger.typed.clone(), ..ClientLedger::default() };
        for line in &client.seen {
            check.note_line(line);
        }
        if check.accepted_count() as u64 == BEFORE + MEANWHILE && check.settled() {
            ledger = check;
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not settled: {}", check.tally());
        let _ = client.wait_for(ms(100), |_| true);
    }
    let new_session = ledger.numbers_where(|o| o == Some(Outcome::Delivered { session: 2 }));
    if !new_session.is_empty() {
        let last = *new_session.last().expect("not empty");
        server
            .process
            .wait_for(patience(), |line| line.event() == "message" && line.str("text") == numbered('c', last))?;
    }
    let (at_server, _) = server_printed(&server.process.seen, "sleeper");

    let kept_for = ended.at - detached.at;
    eprintln!(
        "client SIGSTOPped: evicted after {:?}, its session ended {kept_for:?} later (keep {KEEP:?}) with {} undelivered \
         ({} maybe delivered); SIGCONT {:?} after the freeze, online again after {:?} (resumed: {}); client {}",
        detached.at - frozen,
        ended.json["undelivered"],
        ended.json["maybe_delivered"],
        thawed - frozen,
        connected.at - thawed,
        connected.json["resumed"],
        ledger.tally(),
    );
    assert_eq!(detached.str("reason"), "timeout");
    // The moments are those at which the test read the two lines, each a little after it was
    // printed: hence the tolerance below the keep.
    assert!(kept_for + READ_JITTER >= KEEP, "ended early: {kept_for:?}");
    assert!(kept_for <= KEEP + INTERVAL * 2 + Duration::from_millis(500), "ended late: {kept_for:?}");
    assert_eq!(ended.json["was_detached"], true);
    assert_eq!(ended.json["undelivered"], MEANWHILE, "what was typed at the server while the client slept");
    assert_eq!(ended.json["maybe_delivered"], 0, "none of it was ever written");
    assert_eq!(connected.json["resumed"], false, "the session is gone: a fresh one");
    let online = |line: &Line| line.str("peer") == "sleeper" && line.event() == "online";
    wait_seen(&mut server.process, 2, online)?;
    let after = server.process.seen.iter().filter(|line| online(line));
    assert_eq!(after.map(|line| line.json["resumed"].clone()).collect::<Vec<_>>(), [false, false]);
    // The first session's messages all delivered; of those typed into the frozen client, the
    // ones the new session delivered reached the server once, the ones handed back never.
    let first: Vec<u64> = (1..=BEFORE).collect();
    assert_eq!(ledger.numbers_where(|o| o == Some(Outcome::Delivered { session: 1 })), first);
    assert_eq!(at_server.numbers_in(1), first);
    assert_eq!(at_server.numbers_in(2), new_session, "the new session: what it delivered, once, in order");
    for n in ledger.numbers_where(|o| matches!(o, Some(Outcome::Undelivered { .. }))) {
        assert!(!at_server.has(n), "message {n} was handed back, yet it reached the server");
    }
    // The client never had what was typed at the server while it slept: it went back there.
    assert!((1001..=1000 + MEANWHILE).all(|n| !ledger.inbox.has(n)), "{:?}", ledger.inbox.numbers());
    assert_eq!(ledger.inbox.numbers_in(1), first, "the first session's echoes");
    Ok(())
}

#[test]
fn the_client_outbox_bounds_refuse_with_the_payload_back_and_send_waits_for_room_only_while_online(
) -> anyhow::Result<()> {
    let _serial = serial();
    // A server written by hand, to hold back its acknowledgements: it answers the HELLO when
    // the test says so, and acknowledges what the test says.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    smol::block_on(async {
        // 1. The message bound, offline (the HELLO is not answered yet).
        let config = client_config(addr, "bounded").outbox(4, 1 << 20).handshake_timeout(patience()).build()?;
        let (client, mut events) = Client::start(config);
        let ledger = RefCell::new(ClientLedger::default());
        for n in 1..=4 {
            ledger.borrow_mut().accepted(client.try_send(numbered('c', n))?.get(), n);
        }
        let refused = client.try_send(numbered('c', 5)).unwrap_err();
        assert_eq!(refused, SendError::Full(numbered('c', 5)), "try_send refuses a full outbox, the payload back");
        let asked = Instant::now();
        let refused = within(patience(), client.send(numbered('c', 5))).await;
        let refused_after = asked.elapsed();
        assert_eq!(refused, Some(Err(SendError::Full(numbered('c', 5)))), "send refuses at once while offline");

        // 2. Online: the four are written and not acknowledged; `send` waits for room.
        let mut raw = RawV2::wrap(listener.accept()?.0)?;
        assert_eq!(raw.next_line()?, "HELLO 2 bounded");
        raw.send(RAW_WELCOME)?;
        read_client_until(&mut events, &ledger, patience(), "online", |l| !l.connected.is_empty()).await?;
        for n in 1..=4 {
            assert_eq!(raw.next()?, RawFrame::Data(n, numbered('c', n)));
        }
        let mut waiting = Box::pin(client.send(numbered('c', 5)));
        assert!(within(ms(300), &mut waiting).await.is_none(), "send waits while online and full");
        assert_eq!(client.try_send(numbered('c', 6)), Err(SendError::Full(numbered('c', 6))));
        raw.send(b"ACK 1\n")?;
        let accepted = within(patience(), waiting).await.ok_or_else(|| anyhow::anyhow!("send never got room"))??;
        ledger.borrow_mut().accepted(accepted.get(), 5);
        assert_eq!(client.try_send(numbered('c', 6)), Err(SendError::Full(numbered('c', 6))), "full again");
        assert_eq!(raw.next()?, RawFrame::Data(5, numbered('c', 5)));
        raw.send(b"ACK 5\n")?;
        read_client_until(&mut events, &ledger, patience(), "all delivered", ClientLedger::settled).await?;
        ledger.borrow().assert_all_delivered("bounded");
        let online = ledger.borrow().tally();

        // A `send` waiting for room while the connection is lost looks again, and refuses: the
        // client is offline now.
        for n in 6..=9 {
            ledger.borrow_mut().accepted(client.try_send(numbered('c', n))?.get(), n);
        }
        let mut waiting = Box::pin(client.send(numbered('c', 10)));
        assert!(within(ms(200), &mut waiting).await.is_none(), "send waits while online and full");
        drop(raw);
        let lost = Instant::now();
        let refused = within(patience(), waiting).await;
        let refused_after_loss = lost.elapsed();
        assert_eq!(refused, Some(Err(SendError::Full(numbered('c', 10)))), "refused once offline");
        // Closed before any server took them back: the four written ones come back, maybe
        // delivered.
        client.close().await;
        read_client_until(&mut events, &ledger, patience(), "handed back", ClientLedger::settled).await?;
        let lost_tally = ledger.borrow().tally();
        assert_eq!(
            ledger.borrow().numbers_where(|o| o == Some(Outcome::Undelivered { maybe_delivered: true })),
            [6, 7, 8, 9]
        );

        // 3. The byte bound (1000 bytes, messages of at most 1000), offline: nothing listens.
        let config = client_config(free_addr()?, "bytes").max_payload(1000).outbox(100, 1000).build()?;
        let (bytes_client, mut bytes_events) = Client::start(config);
        let bytes = RefCell::new(ClientLedger::default());
        bytes.borrow_mut().accepted(bytes_client.try_send(padded('c', 1, 600))?.get(), 1);
        assert_eq!(bytes_client.try_send(padded('c', 2, 500)), Err(SendError::Full(padded('c', 2, 500))));
        bytes.borrow_mut().accepted(bytes_client.try_send(padded('c', 3, 400))?.get(), 3);
        assert_eq!(bytes_client.try_send(padded('c', 4, 7)), Err(SendError::Full(padded('c', 4, 7))));
        assert_eq!(bytes_client.outbox().bytes, 1000);
        let too_large = bytes_client.try_send(padded('c', 5, 1001)).unwrap_err();
        assert_eq!(too_large, SendError::TooLarge { payload: padded('c', 5, 1001), max: 1000 });
        // Closed before they could be written: both come back, never sent.
        bytes_client.close().await;
        read_client_until(&mut bytes_events, &bytes, patience(), "handed back", ClientLedger::settled).await?;
        let offline = bytes.borrow().tally();
        eprintln!(
            "outbox of 4: 4 accepted offline, the 5th refused by try_send and by send (after {refused_after:?}); online, \
             send waited until an ACK made room, then {online}; a send waiting when the connection was lost refused \
             {refused_after_loss:?} later, and closing then: {lost_tally}; outbox of 1000 bytes: 600 + 400 accepted, 500 and 7 \
             refused, 1001 too large; closed offline: {offline}"
        );
        assert_eq!(offline, Tally { accepted: 2, never_sent: 2, ..Tally::default() });
        anyhow::Ok(())
    })
}

#[test]
fn a_server_session_bound_refuses_at_once_with_the_payload_back_in_messages_and_in_bytes() -> anyhow::Result<()> {
    let _serial = serial();
    smol::block_on(async {
        let config = server_config(ms(1000)).session_limits(4, 1000).keep(Duration::ZERO);
        let (server, mut server_events) = bind(config).await?;
        let ledgers = RefCell::new(Ledgers::default());
        let mut hoarder = RawV2::fresh(server.local_addr(), "hoarder")?;
        read_server_until(&mut server_events, &ledgers, "online", |l| !l.peer("hoarder").online.is_empty()).await?;

        // The message bound: four unacknowledged, the fifth refused at once.
        for n in 1..=4 {
            server_send(&server, &ledgers, "hoarder", n, numbered('s', n)).await?;
        }
        let asked = Instant::now();
        let refused = server_send(&server, &ledgers, "hoarder", 5, numbered('s', 5)).await;
        let refused_after = asked.elapsed();
        assert_eq!(refused, Err(ServerSendError::Full(numbered('s', 5))), "refused, the payload back");
        assert!(refused_after < Duration::from_secs(1), "refused at once, not after {refused_after:?}");
        hoarder.send(b"ACK 4\n")?;
        read_server_until(&mut server_events, &ledgers, "delivered", |l| l.peer("hoarder").tally().delivered == 4)
            .await?;

        // The byte bound: 600 + 400 fit, 500 and then 7 do not.
        server_send(&server, &ledgers, "hoarder", 5, padded('s', 5, 600)).await?;
        let refused = server_send(&server, &ledgers, "hoarder", 6, padded('s', 6, 500)).await;
        assert_eq!(refused, Err(ServerSendError::Full(padded('s', 6, 500))));
        server_send(&server, &ledgers, "hoarder", 7, padded('s', 7, 400)).await?;
        let refused = server_send(&server, &ledgers, "hoarder", 8, padded('s', 8, 7)).await;
        assert_eq!(refused, Err(ServerSendError::Full(padded('s', 8, 7))));

        // The peer leaves without acknowledging them, no session is kept: both come back.
        drop(hoarder);
        read_server_until(&mut server_events, &ledgers, "offline", |l| !l.peer("hoarder").offline.is_empty()).await?;
        let mut ledgers = ledgers.into_inner();
        let tally = ledgers.server.tally();
        eprintln!(
            "session of 4 messages / 1000 bytes: the 5th message refused after {refused_after:?}; 600 + 400 bytes \
             accepted, 500 and 7 refused; the peer left: {tally}"
        );
        assert_eq!(tally, Tally { accepted: 6, delivered: 4, maybe_delivered: 2, ..Tally::default() });
        let (_, _, undelivered) = &ledgers.server.peer("hoarder").offline[0];
        assert_eq!(undelivered.iter().map(|u| u.seq).collect::<Vec<_>>(), [5, 6]);
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn the_detached_sessions_bound_ends_the_session_nearest_its_end_early_and_hands_its_messages_back() -> anyhow::Result<()>
{
    let _serial = serial();
    smol::block_on(async {
        // At most two detached sessions.
        let config = server_config(ms(1000)).keep(Duration::from_secs(60)).detached_limits(2, 1 << 20);
        let (server, mut server_events) = bind(config).await?;
        let addr = server.local_addr();
        let ledgers = RefCell::new(Ledgers::default());
        let mut number = 0;
        for id in ["a", "b", "c"] {
            let peer = RawV2::fresh(addr, id)?;
            read_server_until(&mut server_events, &ledgers, "online", |l| !l.peer(id).online.is_empty()).await?;
            // Two messages written to it and never acknowledged.
            for _ in 0..2 {
                number += 1;
                server_send(&server, &ledgers, id, number, numbered('s', number)).await?;
            }
            drop(peer);
            read_server_until(&mut server_events, &ledgers, "detached", |l| !l.peer(id).detached.is_empty()).await?;
            // One more, queued in the detached session.
            number += 1;
            server_send(&server, &ledgers, id, number, numbered('s', number)).await?;
        }
        // The third detach went past the bound: the first session, nearest its end, ended.
        read_server_until(&mut server_events, &ledgers, "a ended", |l| !l.peer("a").offline.is_empty()).await?;
        let kept: Vec<String> = server.detached().await.into_iter().map(|k| k.client_id.as_str().to_owned()).collect();
        let by_count = ledgers.borrow_mut().server.peer("a").offline[0].clone();
        // The server stops: the other sessions end too, and their messages come back.
        server.shutdown().await;
        read_server_until(&mut server_events, &ledgers, "all ended", |l| l.settled()).await?;

        // The byte bound (1000 bytes together): the second detach past it ends the first.
        let config =
            server_config(ms(1000)).keep(Duration::from_secs(60)).session_limits(256, 1000).detached_limits(10, 1000);
        let (server, mut server_events) = bind(config).await?;
        let addr = server.local_addr();
        for (id, number) in [("d", 101), ("e", 102)] {
            let peer = RawV2::fresh(addr, id)?;
            read_server_until(&mut server_events, &ledgers, "online", |l| !l.peer(id).online.is_empty()).await?;
            server_send(&server, &ledgers, id, number, padded('s', number, 600)).await?;
            drop(peer);
            read_server_until(&mut server_events, &ledgers, "detached", |l| !l.peer(id).detached.is_empty()).await?;
        }
        read_server_until(&mut server_events, &ledgers, "d ended", |l| !l.peer("d").offline.is_empty()).await?;
        // A message that would take the detached sessions past the bound is refused instead.
        let refused = server_send(&server, &ledgers, "e", 103, padded('s', 103, 500)).await;
        assert_eq!(refused, Err(ServerSendError::Full(padded('s', 103, 500))));
        let kept_bytes: Vec<(String, usize)> =
            server.detached().await.into_iter().map(|k| (k.client_id.as_str().to_owned(), k.bytes)).collect();
        server.shutdown().await;
        read_server_until(&mut server_events, &ledgers, "all ended", |l| l.settled()).await?;

        let mut ledgers = ledgers.into_inner();
        let by_bytes = ledgers.server.peer("d").offline[0].clone();
        let shown = |u: &[Undelivered]| u.iter().map(|u| (u.seq, u.maybe_delivered)).collect::<Vec<_>>();
        eprintln!(
            "2 detached sessions at most: the third detach ended a's early ({}), {:?} kept; 1000 bytes at most: e's \
             detach ended d's ({}), {kept_bytes:?} kept, a 500-byte message to e refused; every message: {}",
            by_count.0,
            kept,
            by_bytes.0,
            ledgers.server.tally()
        );
        assert_eq!(shown(&by_count.2), [(1, true), (2, true), (3, false)], "a's messages, written or queued");
        assert_eq!(kept, ["b", "c"]);
        assert_eq!(shown(&by_bytes.2), [(1, true)]);
        assert_eq!(kept_bytes, [("e".to_owned(), 600)]);
        assert!(ledgers.server.settled(), "{}", ledgers.server.tally());
        anyhow::Ok(())
    })
}

#[test]
fn hostile_v2_frames_get_the_right_error_and_a_close_while_a_healthy_client_misses_no_pulse() -> anyhow::Result<()> {
    const INTERVAL: Duration = Duration::from_millis(200);
    let _serial = serial();
    let args = ["--interval", "200ms", "--no-echo"];
    let mut server = DemoServer::start_logging("127.0.0.1:0", &args, Some("error"))?;
    let addr = server.addr;
    let mut healthy = Crowd::start([client_config(addr, "healthy").build()?]);
    healthy.wait_each(patience(), &[0], |e| matches!(e, Event::Pulse { .. }))?;
    let mut ledger = ClientLedger::default();
    let started = Instant::now();
    let mut healthy_sent = 0;
    let mut send_healthy = |ledger: &mut ClientLedger| -> anyhow::Result<()> {
        healthy_sent += 1;
        ledger.accepted(healthy.clients[0].try_send(numbered('c', healthy_sent))?.get(), healthy_sent);
        Ok(())
    };

    let long_hello = format!("HELLO 2 long pad={}\n", "x".repeat(5000));
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        (
            "a sequence gap",
            Some("gapper"),
            b"DATA 7 1\nc000001DATA 7 3\nc000003".to_vec(),
            "ERROR malformed bad DATA: sequence gap: expected message 2, got 3",
        ),
        (
            "an ACK above what was sent",
            Some("acker"),
            b"ACK 5\n".to_vec(),
            "ERROR malformed bad ACK: acknowledgement of message 5 but only 0 were sent",
        ),
        (
            "a repeated option",
            None,
            b"HELLO 2 twice token=a token=b\n".to_vec(),
            "ERROR malformed bad HELLO option: repeated key",
        ),
        (
            "an empty option value",
            None,
            b"HELLO 2 empty token=\n".to_vec(),
            "ERROR malformed bad HELLO option: empty value",
        ),
        ("a 5000-byte HELLO", None, long_hello.into_bytes(), "ERROR too-large control line longer than 4096 bytes"),
    ];
    // Round after round, for several pulse intervals, so that a disturbance would show.
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < INTERVAL * 6 {
        rounds += 1;
        // A replayed seq is dropped silently: no error, the connection stays, nothing twice.
        send_healthy(&mut ledger)?;
        let id = format!("replayer-{rounds}");
        let mut replayer = RawV2::fresh(addr, &id)?;
        replayer.send(b"DATA 7 1\nc000001DATA 7 1\nc000001DATA 7 2\nc000002DATA 7 1\nc000001PULSE 99\n")?;
        assert_eq!(replayer.next_line()?, "ALIVE 99", "replays are no error: the connection lives on");
        server.process.wait_for(patience(), |l| l.event() == "message" && l.str("peer") == id && l.json["seq"] == 2)?;
        drop(replayer);
        for (name, id, input, expected) in &cases {
            send_healthy(&mut ledger)?;
            let answer = v2_answer(addr, *id, input)?;
            assert_eq!(&answer, expected, "{name}");
        }
    }
    send_healthy(&mut ledger)?;

    // The healthy client: every pulse answered, no miss, no loss, its messages delivered once.
    let elapsed = started.elapsed();
    healthy.wait_each(
        patience(),
        &[0],
        |e| matches!(e, Event::Delivered { up_to, .. } if up_to.get() == healthy_sent),
    )?;
    server.process.wait_for(patience(), |l| {
        l.event() == "message" && l.str("peer") == "healthy" && l.json["seq"] == healthy_sent
    })?;
    healthy.read_ready();
    for (event, _) in &healthy.log[0] {
        ledger.note(event);
    }
    let log: Vec<&Event> = healthy.log[0].iter().map(|(event, _)| event).collect();
    let pulses = log.iter().filter(|e| matches!(e, Event::Pulse { .. })).count();
    let troubles: Vec<&&Event> =
        log.iter().filter(|e| matches!(e, Event::Missed { .. } | Event::Disconnected { .. })).collect();
    let (at_server, _) = server_printed(&server.process.seen, "healthy");
    eprintln!(
        "{rounds} rounds of hostile v2 frames ({} cases each: {}) in {elapsed:?}: each answered with its ERROR and \
         closed; the healthy client got {pulses} pulses (one per {INTERVAL:?}), {} missed or lost; client {}; the \
         server had its {} messages once each",
        cases.len() + 1,
        std::iter::once("a replay").chain(cases.iter().map(|case| case.0)).collect::<Vec<_>>().join(", "),
        troubles.len(),
        ledger.tally(),
        at_server.len()
    );
    assert!(troubles.is_empty(), "the healthy client was disturbed: {troubles:?}");
    assert!(pulses as u32 + 2 >= (elapsed.as_millis() / INTERVAL.as_millis()) as u32, "pulses kept coming: {pulses}");
    ledger.assert_all_delivered("healthy");
    assert_eq!(at_server.numbers(), (1..=healthy_sent).collect::<Vec<_>>());
    // Each replayer's messages: once each.
    for round in 1..=rounds {
        let (replayed, _) = server_printed(&server.process.seen, &format!("replayer-{round}"));
        assert_eq!(replayed.numbers(), [1, 2], "a replay is dropped, not handed over again");
    }
    // A protocol error ends the session: nothing is kept for the offenders.
    for id in ["gapper", "acker"] {
        wait_seen(&mut server.process, rounds, |l| l.event() == "offline" && l.str("peer") == id)?;
    }
    let offline = |id: &str| {
        let found = server.process.seen.iter().filter(|l| l.event() == "offline" && l.str("peer") == id);
        found.map(|l| (l.str("reason").to_owned(), l.json["was_detached"].as_bool())).collect::<Vec<_>>()
    };
    for id in ["gapper", "acker"] {
        assert_eq!(offline(id), vec![("protocol".to_owned(), Some(false)); rounds], "{id}");
    }
    Ok(())
}

#[test]
fn a_thousand_streaming_clients_resume_through_repeated_connection_drops_losing_and_repeating_nothing(
) -> anyhow::Result<()> {
    const CLIENTS: usize = 1000;
    /// Every client sends one message per tick; the server sends every client one per
    /// `SERVER_EVERY` ticks; every connection is cut at the `DROPS` ticks.
    const TICK: Duration = Duration::from_millis(100);
    const TICKS: u64 = 60;
    const SERVER_EVERY: u64 = 4;
    const DROPS: [u64; 3] = [10, 25, 40];
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(ms(500))).await?;
        let addr = server.local_addr();
        let ids: Vec<String> = (0..CLIENTS).map(|i| format!("storm-{i:04}")).collect();
        let configs = ids.iter().map(|id| client_config(addr, id).build()).collect::<Result<Vec<_>, _>>()?;
        let mut crowd = Crowd::start(configs);
        crowd.wait_each(patience(), &vec![0; CLIENTS], |e| matches!(e, Event::Connected { .. }))?;
        let peers: Vec<pulsewire::protocol::ClientId> =
            ids.iter().map(|id| pulsewire::protocol::ClientId::new(id.as_str()).expect("a valid id")).collect();
        let mut clients: Vec<ClientLedger> = (0..CLIENTS).map(|_| ClientLedger::default()).collect();
        let mut at_server = ServerLedger::default();

        let started = Instant::now();
        let (mut server_number, mut drops, mut cut) = (0, Vec::new(), Vec::new());
        let mut drop_mark: Option<Vec<usize>> = None;
        for tick in 1..=TICKS {
            for (ledger, client) in clients.iter_mut().zip(&crowd.clients) {
                ledger.accepted(client.try_send(numbered('c', tick))?.get(), tick);
            }
            if tick % SERVER_EVERY == 0 {
                server_number += 1;
                let payload = numbered('s', server_number);
                let sends = peers.iter().map(|peer| server.send(peer, payload.clone()));
                for (id, sent) in ids.iter().zip(futures::future::join_all(sends).await) {
                    at_server.sent(id, sent?, server_number);
                }
            }
            if DROPS.contains(&tick) {
                // Every client must be back from the previous drop by now.
                if let Some(mark) = &drop_mark {
                    crowd.wait_each(patience(), mark, |e| matches!(e, Event::Connected { resumed: true, .. }))?;
                }
                drop_mark = Some(crowd.mark());
                drops.push(Instant::now());
                cut.push(server.drop_connections().await);
            }
            while let Some(event) = server_events.try_next() {
                at_server.note(&event);
            }
            crowd.read_ready();
            let next = started + TICK * tick as u32;
            smol::Timer::at(next).await;
        }
        let streamed = started.elapsed();

        // Everything settles: each client has every server message and every ticket delivered,
        // the server every client message and every seq acknowledged.
        let mark = vec![0; CLIENTS];
        crowd.wait_each(patience(), &mark, |e| matches!(e, Event::Delivered { up_to, .. } if up_to.get() == TICKS))?;
        let last = numbered('s', server_number);
        crowd.wait_each(patience(), &mark, |e| matches!(e, Event::Message { payload, .. } if *payload == last))?;
        let settling = async {
            loop {
                let done = at_server.settled() && ids.iter().all(|id| at_server.peer(id).inbox.len() as u64 == TICKS);
                if done {
                    return;
                }
                match server_events.next().await {
                    Some(event) => at_server.note(&event),
                    None => return,
                }
            }
        };
        within(patience(), settling).await.ok_or_else(|| anyhow::anyhow!("the server never settled"))?;
        let settled = started.elapsed();
        crowd.read_ready();

        // How long each storm of resumes took, from the drop to the last client back.
        let mut storms = Vec::new();
        for (n, dropped) in drops.iter().enumerate() {
            let back = crowd.log.iter().map(|log| {
                let mut resumed = log.iter().filter(|(e, _)| matches!(e, Event::Connected { resumed: true, .. }));
                resumed.nth(n).map(|(_, at)| *at - *dropped)
            });
            storms.push(back.collect::<Option<Vec<_>>>().and_then(|back| Spread::of(&back)));
        }
        let mut tally = Tally::default();
        for (ledger, log) in clients.iter_mut().zip(&crowd.log) {
            for (event, _) in log {
                ledger.note(event);
            }
            tally = tally.add(ledger.tally());
        }
        let server_tally = at_server.tally();
        eprintln!(
            "{CLIENTS} clients streaming (one message each per {TICK:?}, the server one to each per {:?}) through {} \
             connection drops ({cut:?} cut) in {streamed:?}, settled after {settled:?}; resumes after each drop: {}; \
             clients {tally}; server {server_tally}",
            TICK * SERVER_EVERY as u32,
            DROPS.len(),
            storms.iter().map(|s| s.map(|s| s.to_string()).unwrap_or_default()).collect::<Vec<_>>().join("; "),
        );
        assert_eq!(cut, vec![CLIENTS; DROPS.len()], "every connection was up at each drop");
        let servers: Vec<u64> = (1..=server_number).collect();
        let own: Vec<u64> = (1..=TICKS).collect();
        for (n, ledger) in clients.iter().enumerate() {
            let id = &ids[n];
            ledger.assert_all_delivered(id);
            assert_eq!(ledger.resumes(), DROPS.len(), "{id} resumed after every drop");
            assert_eq!(ledger.connected.len(), DROPS.len() + 1, "{id}: never a fresh session");
            assert_eq!(ledger.inbox.numbers(), servers, "{id}: every server message once, in order");
            let peer = at_server.peer(id);
            assert_eq!(
                (peer.resumes(), peer.detached.len(), peer.offline.len()),
                (DROPS.len(), DROPS.len(), 0),
                "{id}"
            );
            assert_eq!(peer.inbox.numbers(), own, "{id}: every message at the server once, in order");
        }
        assert_eq!(server_tally.delivered, server_tally.accepted, "{server_tally}");
        let closing = crowd.close_all();
        eprintln!("all {CLIENTS} closed in {closing:?}");
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_resume_over_a_connection_the_server_still_holds_takes_the_session_over_and_replays_only_what_is_missing(
) -> anyhow::Result<()> {
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(ms(1000))).await?;
        let addr = server.local_addr();
        let ledgers = RefCell::new(Ledgers::default());
        // The first connection: three server messages written, the first acknowledged; one
        // client message delivered.
        let (mut old, welcome) = RawV2::hello(addr, "HELLO 2 taker\n")?;
        let session = welcome.split(' ').nth(1).unwrap_or_default().to_owned();
        let secret = welcome_option(&welcome, "resume")?.to_owned();
        read_server_until(&mut server_events, &ledgers, "online", |l| !l.peer("taker").online.is_empty()).await?;
        for n in 1..=3 {
            server_send(&server, &ledgers, "taker", n, numbered('s', n)).await?;
        }
        for n in 1..=3 {
            assert_eq!(old.next()?, RawFrame::Data(n, numbered('s', n)));
        }
        old.send(b"ACK 1\nDATA 7 1\nc000001")?;
        read_server_until(&mut server_events, &ledgers, "the first exchange", |l| {
            l.peer("taker").tally().delivered == 1 && l.peer("taker").inbox.len() == 1
        })
        .await?;

        // A second connection resumes while the first is still attached (as after a half-open
        // link the server has not noticed): its application had message 1 only.
        let (mut new, resumed) = RawV2::hello(addr, &format!("HELLO 2 taker resume={secret} rx=1\n"))?;
        let ousted = old.next_line()?;
        assert!(old.closed_by_peer(), "the old connection is closed");
        // What the session had written and not seen acknowledged above rx, in order, once.
        let replayed = [new.next()?, new.next()?];
        // The client goes on from where the server's application is (`rx=1` in the WELCOME):
        // message 2, then a replay of message 1, dropped; then it acknowledges everything.
        new.send(b"DATA 7 2\nc000002DATA 7 1\nc000001ACK 3\n")?;
        read_server_until(&mut server_events, &ledgers, "the resumed exchange", |l| {
            l.peer("taker").tally().delivered == 3 && l.peer("taker").inbox.len() == 2
        })
        .await?;

        // Once the client answered a pulse on the new connection (it has the new secret), the
        // old secret opens nothing any more: a HELLO with it gets a fresh session (and, the
        // same anonymous subject, takes the id over).
        new.answer_a_pulse()?;
        // The answer is in once the server measured its round trip (bounded wait).
        let answered = pulsewire_tests::within(patience(), async {
            while !server.online().await.iter().any(|p| p.id.as_str() == "taker" && p.last_rtt.is_some()) {
                smol::Timer::after(ms(5)).await;
            }
        });
        anyhow::ensure!(answered.await.is_some(), "the server never saw the answer to its pulse");
        let (_third, fresh) = RawV2::hello(addr, &format!("HELLO 2 taker resume={secret} rx=3\n"))?;
        let replaced = new.next_line()?;
        read_server_until(&mut server_events, &ledgers, "the takeover", |l| l.peer("taker").online.len() == 3).await?;

        let mut ledgers = ledgers.into_inner();
        let taker = ledgers.server.peer("taker");
        eprintln!(
            "resume over a live connection: the old one got {ousted:?}; the new one {resumed:?} and the replay \
             {replayed:?}; server {}; the old secret again: {fresh:?}, the resumed connection got {replaced:?}",
            taker.tally()
        );
        assert_eq!(ousted, "ERROR resumed the session resumed on a new connection");
        assert!(resumed.starts_with(&format!("WELCOME {session} 1000 3 resumed=1 rx=1 ")), "{resumed}");
        assert_ne!(welcome_option(&resumed, "resume")?, secret, "a fresh secret at every WELCOME");
        let expected = [RawFrame::Data(2, numbered('s', 2)), RawFrame::Data(3, numbered('s', 3))];
        assert_eq!(replayed, expected, "only what the client lacked");
        let detached: Vec<&OfflineReason> = taker.detached.iter().map(|(reason, _)| reason).collect();
        assert_eq!(detached, [&OfflineReason::Resumed]);
        let online: Vec<bool> = taker.online.iter().map(|(resumed, _)| *resumed).collect();
        assert_eq!(online, [false, true, false]);
        assert_eq!(taker.inbox.numbers(), [1, 2], "the replay of message 1 was dropped");
        assert!(fresh.contains(" resumed=0 rx=0 ") && !fresh.contains(&session), "{fresh}");
        assert!(replaced.starts_with("ERROR replaced "), "{replaced}");
        let (reason, _, undelivered) = &taker.offline[0];
        assert_eq!((reason, undelivered.len()), (&OfflineReason::Replaced, 0));
        assert_eq!(taker.tally(), Tally { accepted: 3, delivered: 3, ..Tally::default() });
        server.shutdown().await;
        anyhow::Ok(())
    })
}

#[test]
fn a_resume_accounts_for_what_the_client_had_and_a_stale_one_gets_a_fresh_session_ending_the_old() -> anyhow::Result<()>
{
    let _serial = serial();
    smol::block_on(async {
        let (server, mut server_events) = bind(server_config(ms(1000))).await?;
        let addr = server.local_addr();
        let ledgers = RefCell::new(Ledgers::default());
        let (mut first, welcome) = RawV2::hello(addr, "HELLO 2 saver\n")?;
        let secret = welcome_option(&welcome, "resume")?.to_owned();
        read_server_until(&mut server_events, &ledgers, "online", |l| !l.peer("saver").online.is_empty()).await?;
        for n in 1..=4 {
            server_send(&server, &ledgers, "saver", n, numbered('s', n)).await?;
            assert_eq!(first.next()?, RawFrame::Data(n, numbered('s', n)));
        }
        // Acknowledged: 1. Had (the application saw): 2, whose ACK the link lost.
        first.send(b"ACK 1\n")?;
        read_server_until(&mut server_events, &ledgers, "ack 1", |l| l.peer("saver").tally().delivered == 1).await?;
        drop(first);
        read_server_until(&mut server_events, &ledgers, "detached", |l| l.peer("saver").detached.len() == 1).await?;

        // Resumed with rx=2: message 2 counts as delivered, 3 and 4 are written again.
        let (mut second, resumed) = RawV2::hello(addr, &format!("HELLO 2 saver resume={secret} rx=2\n"))?;
        let replayed = [second.next()?, second.next()?];
        read_server_until(&mut server_events, &ledgers, "message 2 delivered by the resume", |l| {
            l.peer("saver").tally().delivered == 2
        })
        .await?;
        second.send(b"ACK 4\n")?;
        read_server_until(&mut server_events, &ledgers, "ack 4", |l| l.peer("saver").tally().delivered == 4).await?;
        let secret = welcome_option(&resumed, "resume")?.to_owned();
        drop(second);
        read_server_until(&mut server_events, &ledgers, "detached", |l| l.peer("saver").detached.len() == 2).await?;

        // A resume from a state older than the last acknowledgement (rx=3 < 4: a process that
        // died before saving) cannot go on gap-free: a fresh session, and the old one ends.
        let (mut third, fresh) = RawV2::hello(addr, &format!("HELLO 2 saver resume={secret} rx=3\n"))?;
        read_server_until(&mut server_events, &ledgers, "the old session ended", |l| {
            !l.peer("saver").offline.is_empty()
        })
        .await?;
        server_send(&server, &ledgers, "saver", 5, numbered('s', 5)).await?;
        assert_eq!(third.next()?, RawFrame::Data(1, numbered('s', 5)), "the fresh session numbers from 1");
        third.send(b"ACK 1\n")?;
        read_server_until(&mut server_events, &ledgers, "settled", |l| l.settled()).await?;

        let mut ledgers = ledgers.into_inner();
        let saver = ledgers.server.peer("saver");
        eprintln!(
            "resume with rx=2 over ack 1: {resumed:?}, replay {replayed:?}; resume with a stale rx=3 over ack 4: \
             {fresh:?}, the old session ended ({}); server {}",
            saver.offline[0].0,
            saver.tally()
        );
        assert!(resumed.contains(" resumed=1 "), "{resumed}");
        assert_eq!(replayed, [RawFrame::Data(3, numbered('s', 3)), RawFrame::Data(4, numbered('s', 4))]);
        assert!(fresh.contains(" resumed=0 rx=0 "), "{fresh}");
        let online: Vec<bool> = saver.online.iter().map(|(resumed, _)| *resumed).collect();
        assert_eq!(online, [false, true, false]);
        assert_eq!(saver.offline[0].2, [], "nothing was left undelivered");
        assert_eq!(saver.tally(), Tally { accepted: 5, delivered: 5, ..Tally::default() });
        server.shutdown().await;
        anyhow::Ok(())
    })
}

mod checks {
    //! The checkers catch what they are for: a gap, a duplicate, a second outcome.

    use super::*;

    #[test]
    #[should_panic(expected = "gap-free")]
    fn an_inbox_refuses_a_gap() {
        let mut inbox = Inbox::default();
        inbox.receive(1, b"c000001");
        inbox.receive(3, b"c000003");
    }

    #[test]
    #[should_panic(expected = "handed over twice")]
    fn an_inbox_refuses_a_number_twice_even_in_another_session() {
        let mut inbox = Inbox::default();
        inbox.fresh_session();
        inbox.receive(1, b"c000001");
        inbox.fresh_session();
        inbox.receive(1, b"c000001");
    }

    #[test]
    #[should_panic(expected = "after Some(Delivered")]
    fn a_client_ledger_refuses_a_second_outcome() {
        let mut ledger = ClientLedger::default();
        ledger.accepted(1, 1);
        ledger.delivered(1, 1);
        ledger.settle(1, b"c000001", Outcome::Undelivered { maybe_delivered: true });
    }

    #[test]
    fn a_cumulative_delivered_skips_the_tickets_that_ended_otherwise() {
        let mut ledger = ClientLedger::default();
        for ticket in 1..=3 {
            ledger.accepted(ticket, ticket);
        }
        ledger.settle(2, b"c000002", Outcome::Undelivered { maybe_delivered: false });
        ledger.delivered(3, 2);
        assert!(ledger.settled());
        assert_eq!(ledger.tally(), Tally { accepted: 3, delivered: 2, never_sent: 1, ..Tally::default() });
    }

    #[test]
    #[should_panic(expected = "counts 3, but 2")]
    fn a_client_ledger_checks_what_a_cumulative_delivered_counts() {
        let mut ledger = ClientLedger::default();
        for ticket in 1..=3 {
            ledger.accepted(ticket, ticket);
        }
        ledger.settle(2, b"c000002", Outcome::Undelivered { maybe_delivered: false });
        ledger.delivered(3, 3);
    }

    #[test]
    #[should_panic(expected = "without an outcome")]
    fn a_server_ledger_refuses_a_session_that_ends_with_a_message_unaccounted_for() {
        let mut ledger = ServerLedger::default();
        ledger.sent("desk", 1, 1);
        ledger.sent("desk", 2, 2);
        let peer = pulsewire::PeerInfo {
            id: pulsewire::protocol::ClientId::new("desk").unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            session: pulsewire::protocol::SessionId::new("s1").unwrap(),
            connected_since: Instant::now(),
            last_seen: Instant::now(),
            last_rtt: None,
            misses: 0,
            subject: None,
            tls: false,
        };
        let undelivered = vec![Undelivered { seq: 2, payload: numbered('s', 2), maybe_delivered: true }];
        ledger.note(&ServerEvent::PeerOffline { peer, reason: OfflineReason::Eof, undelivered });
    }
}
