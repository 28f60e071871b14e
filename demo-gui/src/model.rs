//! What the window shows, as a plain value: inputs in ([`Model::apply`]), view data out.
//!
//! No egui, no sockets, no clock: every input carries the time it happened and every question
//! about countdowns takes `now`, so the tests drive the model on a made-up timeline.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pulsewire::core::{KeptSession, OutboxStatus};
use pulsewire::protocol::ErrorCode;
use pulsewire::tls::TlsError;
use pulsewire::{ConnectError, DisconnectReason, Event, Failure, PeerInfo, ProbeError, ServerEvent};

use crate::delivery::Delivery;
use crate::feed::{ExtraCounts, HijackOutcome, Input, ServerStatus, Stamped};
use crate::history::{Series, WINDOW};
use crate::ledger::{Outcome, Sent};
use crate::pki::Trust;
use crate::relay::Blackhole;
use crate::stream::{self, Direction};
use crate::words;

/// How many lines the event log keeps.
pub const LOG_LINES: usize = 5000;

/// The main client's condition, as the headline names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not connected and not trying yet (before the first attempt, or right after a loss).
    Offline,
    /// A connect attempt is under way.
    Connecting,
    /// Connected, and the server's pulses arrive.
    Online,
    /// Connected, but pulses are missing: the link may be dead.
    Suspect,
    /// Waiting before the next connect attempt.
    BackingOff,
    /// Stopped for good.
    Closed,
}

impl Phase {
    /// The headline text.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Offline => "Offline",
            Phase::Connecting => "Connecting",
            Phase::Online => "Online",
            Phase::Suspect => "Suspect",
            Phase::BackingOff => "Backing off",
            Phase::Closed => "Closed",
        }
    }

    /// The height of this phase on the state timeline chart (healthier is higher).
    pub fn level(self) -> f64 {
        match self {
            Phase::Closed => 0.0,
            Phase::Offline => 1.0,
            Phase::BackingOff => 2.0,
            Phase::Connecting => 3.0,
            Phase::Suspect => 4.0,
            Phase::Online => 5.0,
        }
    }

    /// Every phase, in timeline order.
    pub const ALL: [Phase; 6] =
        [Phase::Closed, Phase::Offline, Phase::BackingOff, Phase::Connecting, Phase::Suspect, Phase::Online];
}

/// The connection as the model tracks it.
#[derive(Debug, Clone, PartialEq)]
enum Conn {
    Offline,
    Connecting { attempt: u32 },
    Online,
    BackingOff { attempt: u32, delay: Duration, retry_at: Instant, last_error: Option<String> },
    Closed { reason: String },
}

/// A vertical mark on the state timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// The connection was lost.
    Disconnect,
    /// Online again after a loss.
    Reconnect,
}

/// When the connection was lost or came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// When.
    pub at: Instant,
    /// Which.
    pub kind: MarkerKind,
}

/// Who a log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The main client's SDK events.
    Client,
    /// The embedded server's SDK events.
    Server,
    /// The app: commands, faults, errors.
    App,
}

impl Source {
    /// The column text.
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Server => "server",
            Source::App => "app",
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Time since the app started.
    pub at: Duration,
    /// Who it is about.
    pub source: Source,
    /// What happened.
    pub text: String,
}

impl LogLine {
    /// The line as copied: `  12.345 s  client  connected …`.
    pub fn render(&self) -> String {
        format!("{:>9.3} s  {:<6}  {}", self.at.as_secs_f64(), self.source.label(), self.text)
    }
}

/// The miss counter against its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissGauge {
    /// Missed pulses in a row.
    pub misses: u32,
    /// The limit: reaching it loses the connection.
    pub max: u32,
}

impl MissGauge {
    /// How full the gauge is, 0.0–1.0.
    pub fn fraction(&self) -> f32 {
        if self.max == 0 {
            return 0.0;
        }
        (self.misses as f32 / self.max as f32).min(1.0)
    }
}

/// The wait before the next connect attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The attempt that follows the wait.
    pub attempt: u32,
    /// The whole wait.
    pub delay: Duration,
    /// What is left of it.
    pub left: Duration,
    /// What went wrong last, in plain words.
    pub last_error: Option<String>,
}

/// The server's announced timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// The pulse interval.
    pub interval: Duration,
    /// The miss limit.
    pub max_missed: u32,
}

/// The last loss of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDisconnect {
    /// When it happened.
    pub at: Instant,
    /// Why, in plain words.
    pub words: String,
    /// The SDK's own wording.
    pub detail: String,
}

/// The last completed handshake: did the server resume the session or open a fresh one?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastConnect {
    /// When.
    pub at: Instant,
    /// The session id.
    pub session: String,
    /// Whether the server resumed the session the client had.
    pub resumed: bool,
}

/// The main client's current token, as its provider minted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its number: how many tokens the provider has minted, this one included.
    pub n: u32,
    /// The subject it names.
    pub subject: String,
    /// The lifetime it was minted with.
    pub lifetime: Duration,
    /// When it expires (its `exp`, or sooner when the server cut it short).
    pub expires: Instant,
    /// Whether the embedded server cut it short (the expire-token fault).
    pub cut_short: bool,
}

/// The last renewal of the main client's credential: the server ended the connection with
/// `auth-expired`, the provider minted a new token, and the client connected again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// When the server ended the connection.
    pub expired_at: Instant,
    /// The session the ended connection had.
    pub session_before: Option<String>,
    /// The token minted since (the last one, if there were several).
    pub token: Option<u32>,
    /// The connect that followed, once it happened.
    pub next: Option<LastConnect>,
}

impl Renewal {
    /// Whether it is over and lost nothing: the client resumed the session it had.
    pub fn resumed_the_same_session(&self) -> bool {
        self.next.as_ref().is_some_and(|next| next.resumed && self.session_before.as_deref() == Some(&*next.session))
    }
}

/// The last hijack fault: another subject asked for the main client's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hijack {
    /// When it started.
    pub at: Instant,
    /// The id it asked for.
    pub client_id: String,
    /// The subject of its token.
    pub subject: String,
    /// The victim's session and disconnect count when it started.
    pub before: (Option<String>, u32),
    /// What the server did, and the victim's session and disconnect count then (none yet).
    pub outcome: Option<(HijackOutcome, (Option<String>, u32))>,
    /// How many of the hijacker's tasks were left after it was closed.
    pub tasks_left: usize,
}

impl Hijack {
    /// Whether the victim was untouched: online in the same session, with no disconnect
    /// between the start and the outcome.
    pub fn victim_untouched(&self) -> bool {
        self.outcome.as_ref().is_some_and(|(_, after)| after.0.is_some() && *after == self.before)
    }
}

/// The main client's transport security, as the window shows it: from its configuration, the
/// last connect attempt and the server's online list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsView {
    /// No client yet, or one whose configuration says plaintext.
    Off,
    /// TLS, online, and the server's online list says the peer came over TLS: the client has
    /// verified the server's certificate against the authority it trusts.
    Verified {
        /// The authority.
        trust: Trust,
    },
    /// TLS, and the last handshake failed.
    Refused {
        /// The authority the client trusts.
        trust: Trust,
        /// Why, as the SDK typed it.
        error: TlsError,
    },
    /// TLS, not online yet (or not in the server's online list as a TLS peer yet).
    Pending {
        /// The authority the client trusts.
        trust: Trust,
    },
}

impl TlsView {
    /// Whether the client's configuration says TLS.
    pub fn on(&self) -> bool {
        !matches!(self, TlsView::Off)
    }

    /// The authority the client trusts, when it uses TLS.
    pub fn trust(&self) -> Option<Trust> {
        match self {
            TlsView::Off => None,
            TlsView::Verified { trust } | TlsView::Refused { trust, .. } | TlsView::Pending { trust } => Some(*trust),
        }
    }

    /// The identity line's words: `TLS: on (verified: pulsewire demo CA)`.
    pub fn words(&self) -> String {
        match self {
            TlsView::Off => "TLS: off (plaintext)".to_owned(),
            TlsView::Verified { trust } => format!("TLS: on (verified: {})", trust.ca_name()),
            TlsView::Refused { trust, error } => {
                format!("TLS: on, handshake refused: {error} (trusting {})", trust.ca_name())
            }
            TlsView::Pending { trust } => format!("TLS: on (trusting {}; not verified yet)", trust.ca_name()),
        }
    }
}

/// How many handshakes resumed a session and how many opened a fresh one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connects {
    /// Fresh sessions (the first connect is one).
    pub fresh: u32,
    /// Resumed sessions.
    pub resumed: u32,
}

/// Stream messages the client got back since its last connect, told in one log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HandedBack {
    maybe_delivered: u64,
    not_delivered: u64,
    expired: u64,
}

impl HandedBack {
    fn words(self) -> Option<String> {
        let parts: Vec<String> = [
            (self.maybe_delivered, "handed back as maybe delivered"),
            (self.not_delivered, "handed back as not delivered"),
            (self.expired, "expired unwritten"),
        ]
        .into_iter()
        .filter(|&(count, _)| count > 0)
        .map(|(count, what)| format!("{count} stream message(s) {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A detached session and the moment it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    session: KeptSession,
    ends: Instant,
}

/// Everything the window shows.
#[derive(Debug, Clone)]
pub struct Model {
    started: Instant,
    generation: Option<u64>,
    client_id: Option<String>,
    target: Option<String>,
    via_relay: bool,
    conn: Conn,
    misses: u32,
    session: Option<String>,
    cadence: Option<Cadence>,
    connected_at: Option<Instant>,
    last_pulse: Option<Instant>,
    last_disconnect: Option<LastDisconnect>,
    ever_connected: bool,
    disconnects: u32,
    last_probe: Option<Result<Duration, ProbeError>>,
    probe_rtt: Series,
    server_rtt: Series,
    online_count: Series,
    timeline: Series,
    markers: VecDeque<Marker>,
    log: VecDeque<LogLine>,
    server: ServerStatus,
    peers: Vec<PeerInfo>,
    relay: Option<(SocketAddr, Blackhole)>,
    extras: ExtraCounts,
    last_connect: Option<LastConnect>,
    connects: Connects,
    handed_back: HandedBack,
    outbox: Option<OutboxStatus>,
    detached: Vec<Kept>,
    streaming: bool,
    delivery: Delivery,
    /// The subject the main client's tokens name (`None`: it sends none).
    client_subject: Option<String>,
    /// The authority the main client trusts, when its configuration says TLS.
    client_tls: Option<Trust>,
    /// Why the main client's last TLS handshake failed (cleared when it connects).
    tls_refusal: Option<TlsError>,
    token: Option<TokenInfo>,
    renewal: Option<Renewal>,
    renewals: u32,
    hijack: Option<Hijack>,
}

impl Model {
    /// An empty model for an app started at `started`.
    pub fn new(started: Instant) -> Model {
        let mut timeline = Series::default();
        timeline.push(started, Phase::Offline.level());
        Model {
            started,
            generation: None,
            client_id: None,
            target: None,
            via_relay: false,
            conn: Conn::Offline,
            misses: 0,
            session: None,
            cadence: None,
            connected_at: None,
            last_pulse: None,
            last_disconnect: None,
            ever_connected: false,
            disconnects: 0,
            last_probe: None,
            probe_rtt: Series::default(),
            server_rtt: Series::default(),
            online_count: Series::default(),
            timeline,
            markers: VecDeque::new(),
            log: VecDeque::new(),
            server: ServerStatus::Stopped,
            peers: Vec::new(),
            relay: None,
            extras: ExtraCounts::default(),
            last_connect: None,
            connects: Connects::default(),
            handed_back: HandedBack::default(),
            outbox: None,
            detached: Vec::new(),
            streaming: false,
            delivery: Delivery::default(),
            client_subject: None,
            client_tls: None,
            tls_refusal: None,
            token: None,
            renewal: None,
            renewals: 0,
            hijack: None,
        }
    }

    /// Takes in one input.
    pub fn apply(&mut self, stamped: Stamped) {
        let Stamped { at, input } = stamped;
        match input {
            Input::ClientStarted { generation, client_id, target, via_relay, subject, tls, resumes } => {
                self.generation = Some(generation);
                self.client_subject = subject;
                self.client_tls = tls;
                self.tls_refusal = None;
                self.token = None;
                self.renewal = None;
                self.renewals = 0;
                self.client_id = Some(client_id.clone());
                self.target = Some(target.clone());
                self.via_relay = via_relay;
                self.conn = Conn::Offline;
                self.misses = 0;
                self.session = None;
                self.connected_at = None;
                self.last_pulse = None;
                self.outbox = None;
                self.delivery.forget_settled_clients(generation);
                let route = if via_relay { " through the fault relay" } else { "" };
                let security = match tls {
                    Some(trust) => format!(" over TLS, trusting {}", trust.ca_name()),
                    None => " in plaintext".to_owned(),
                };
                let login = match &self.client_subject {
                    Some(subject) => format!(", logs in as {subject} with tokens from its provider"),
                    None => ", sends no token (anonymous)".to_owned(),
                };
                let carried = resumes.map(|session| format!(", to resume session {session}")).unwrap_or_default();
                self.note(
                    at,
                    Source::App,
                    format!("client {client_id} started: connects to {target}{route}{security}{login}{carried}"),
                );
            }
            Input::Client { generation, event } => self.client_event(at, generation, event),
            Input::ClientSent { generation, ticket, sent } => {
                if let Sent::Text(text) = &sent {
                    self.note(at, Source::App, format!("sent {} (ticket #{ticket})", quote(text.as_bytes())));
                }
                if let Some(text) = self.delivery.client_sent(generation, ticket, sent, at) {
                    self.note(at, Source::Client, format!("the server has {}", quote(text.as_bytes())));
                }
            }
            Input::Outbox { generation, status } => {
                if self.generation == Some(generation) {
                    self.outbox = Some(status);
                }
            }
            Input::Probe { generation, result } => {
                if self.generation == Some(generation) {
                    if let Ok(rtt) = result {
                        self.probe_rtt.push(at, millis(rtt));
                    }
                    self.last_probe = Some(result);
                }
            }
            Input::Server(status) => self.server_status(at, status),
            Input::ServerEvent { instance, event } => self.server_event(at, instance, event),
            Input::ServerSent { instance, peer, seq, sent } => {
                self.delivery.server_sent(instance, peer.as_str(), seq, sent, at);
            }
            Input::ServerEnded { instance } => {
                let gone = self.delivery.server_ended(instance, at);
                if gone > 0 {
                    let line =
                        format!("{gone} message(s) the stopped server had accepted and never settled are gone with it");
                    self.note(at, Source::Server, line);
                }
            }
            Input::Online(peers) => self.online(at, peers),
            Input::Detached(sessions) => {
                self.detached = sessions.into_iter().map(|session| Kept { ends: at + session.left, session }).collect();
            }
            Input::Streaming(on) => {
                self.streaming = on;
                let line = if on {
                    format!("stream on: {} numbered messages a second each way", stream::RATE)
                } else {
                    "stream off".to_owned()
                };
                self.note(at, Source::App, line);
            }
            Input::StreamRefused { direction, n, reason } => self.delivery.refused(direction, n, reason),
            Input::Extras(counts) => self.extras = counts,
            Input::Relay { addr, blackhole } => {
                let before = self.relay.map(|(_, blackhole)| blackhole);
                self.relay = Some((addr, blackhole));
                if before.is_some_and(|before| before != blackhole) {
                    self.note(at, Source::App, relay_note(blackhole));
                }
            }
            Input::TokenMinted { generation, n, subject, lifetime, expires } if self.generation == Some(generation) => {
                let line = format!(
                    "token #{n} minted for {subject}: expires in {} (lifetime {})",
                    words::seconds(&expires.saturating_duration_since(at)),
                    words::seconds(&lifetime)
                );
                self.token = Some(TokenInfo { n, subject, lifetime, expires, cut_short: false });
                if let Some(renewal) = self.renewal.as_mut().filter(|renewal| renewal.next.is_none()) {
                    renewal.token = Some(n);
                }
                self.note(at, Source::App, line);
            }
            Input::TokenMinted { .. } => {}
            Input::CredentialCutShort { client_id, expires } => {
                let line = format!(
                    "the server cut {client_id}'s credential short: it expires in {}",
                    words::seconds(&expires.saturating_duration_since(at))
                );
                if self.client_id.as_deref() == Some(&*client_id) {
                    if let Some(token) = &mut self.token {
                        token.expires = expires;
                        token.cut_short = true;
                    }
                }
                self.note(at, Source::Server, line);
            }
            Input::HijackStarted { client_id, subject } => {
                let line = format!("hijack: a client with {subject}'s token asks the server for {client_id}");
                let before = (self.session.clone(), self.disconnects);
                self.hijack = Some(Hijack { at, client_id, subject, before, outcome: None, tasks_left: 0 });
                self.note(at, Source::App, line);
            }
            Input::Hijack { outcome, tasks_left } => {
                let after = (self.session.clone(), self.disconnects);
                if let Some(hijack) = &mut self.hijack {
                    hijack.outcome = Some((outcome, after));
                    hijack.tasks_left = tasks_left;
                    let line = format!(
                        "{}; {}; the hijacker closed, {tasks_left} task(s) of it left",
                        hijack_words(hijack),
                        victim_words(hijack)
                    );
                    self.note(at, Source::App, line);
                }
            }
            Input::Note(text) => self.note(at, Source::App, text),
        }
        self.record_phase(at);
        self.prune(at);
    }

    fn client_event(&mut self, at: Instant, generation: u64, event: Event) {
        // What a message became is counted whichever client it was (an old one hands its
        // messages back as it closes); everything else is about the current one only.
        let current = self.generation == Some(generation);
        let line = match event {
            Event::Message { seq, payload } => {
                if self.delivery.received(Direction::ServerToClient, &payload, at) {
                    return;
                }
                format!("message {seq} from the server: {}", quote(&payload))
            }
            Event::Delivered { up_to, .. } => {
                let texts = self.delivery.client_delivered(generation, up_to.get(), at);
                for text in texts {
                    self.note(at, Source::Client, format!("the server has {}", quote(text.as_bytes())));
                }
                return;
            }
            Event::Expired { ticket, payload } => {
                match self.delivery.client_handed_back(generation, ticket.get(), &payload, Outcome::Expired, at) {
                    Sent::Stream(_) => {
                        self.handed_back.expired += 1;
                        return;
                    }
                    Sent::Text(_) => format!("expired before it could be written: {}", quote(&payload)),
                }
            }
            Event::Undelivered { ticket, payload, maybe_delivered } => {
                let outcome = Outcome::handed_back(maybe_delivered);
                match self.delivery.client_handed_back(generation, ticket.get(), &payload, outcome, at) {
                    Sent::Stream(_) if maybe_delivered => {
                        self.handed_back.maybe_delivered += 1;
                        return;
                    }
                    Sent::Stream(_) => {
                        self.handed_back.not_delivered += 1;
                        return;
                    }
                    Sent::Text(_) if maybe_delivered => {
                        format!("handed back, maybe delivered (the server may have it): {}", quote(&payload))
                    }
                    Sent::Text(_) => format!("handed back, never sent: {}", quote(&payload)),
                }
            }
            _ if !current => return,
            Event::Connecting { attempt } => {
                self.conn = Conn::Connecting { attempt };
                format!("connecting (attempt {attempt})")
            }
            Event::Connected { session, resumed, interval, max_missed } => {
                if let Some(renewal) = self.renewal.as_mut().filter(|renewal| renewal.next.is_none()) {
                    renewal.next = Some(LastConnect { at, session: session.to_string(), resumed });
                    self.renewals += 1;
                }
                self.conn = Conn::Online;
                self.misses = 0;
                self.tls_refusal = None;
                self.session = Some(session.to_string());
                self.cadence = Some(Cadence { interval, max_missed });
                self.connected_at = Some(at);
                self.last_pulse = None;
                if self.ever_connected {
                    self.markers.push_back(Marker { at, kind: MarkerKind::Reconnect });
                }
                self.ever_connected = true;
                self.last_connect = Some(LastConnect { at, session: session.to_string(), resumed });
                if resumed {
                    self.connects.resumed += 1;
                } else {
                    self.connects.fresh += 1;
                }
                let kind = if resumed { "resumed session" } else { "fresh session" };
                let mut line = format!(
                    "connected: {kind} {session}, pulse every {} ms, at most {max_missed} missed",
                    interval.as_millis()
                );
                if let Some(back) = std::mem::take(&mut self.handed_back).words() {
                    line.push_str(&format!("; {back}"));
                }
                line
            }
            Event::Pulse { seq, misses_reset } => {
                self.misses = 0;
                self.last_pulse = Some(at);
                if misses_reset > 0 {
                    format!("pulse {seq} answered; it forgave {misses_reset} missed")
                } else {
                    format!("pulse {seq} answered")
                }
            }
            Event::Missed { count, max } => {
                self.misses = count;
                format!("missed pulse: {count} of {max} in a row")
            }
            Event::Disconnected { reason } => {
                if matches!(reason, DisconnectReason::ServerError { code: ErrorCode::AuthExpired, .. }) {
                    let session_before = self.session.clone();
                    self.renewal = Some(Renewal { expired_at: at, session_before, token: None, next: None });
                }
                self.conn = Conn::Offline;
                self.misses = 0;
                self.session = None;
                self.disconnects += 1;
                self.markers.push_back(Marker { at, kind: MarkerKind::Disconnect });
                self.last_disconnect =
                    Some(LastDisconnect { at, words: words::disconnect(&reason), detail: reason.to_string() });
                format!("disconnected: {reason}")
            }
            Event::BackingOff { attempt, delay, elapsed, last_error } => {
                if let Some(Failure::Connect(ConnectError::Tls(error))) = &last_error {
                    self.tls_refusal = Some(error.clone());
                }
                let error_words = last_error.as_ref().map(words::failure);
                self.conn = Conn::BackingOff { attempt, delay, retry_at: at + delay, last_error: error_words.clone() };
                let last = last_error.map(|error| format!("; last error: {error}")).unwrap_or_default();
                format!(
                    "backing off {} ms before attempt {attempt} (offline for {}{last})",
                    delay.as_millis(),
                    words::seconds(&elapsed)
                )
            }
            Event::Closed { reason } => {
                self.conn = Conn::Closed { reason: words::close(&reason) };
                self.misses = 0;
                self.session = None;
                self.outbox = None;
                let mut line = format!("closed: {reason}");
                if let Some(back) = std::mem::take(&mut self.handed_back).words() {
                    line.push_str(&format!("; {back}"));
                }
                line
            }
            other => format!("{other:?}"),
        };
        self.note(at, Source::Client, line);
    }

    fn server_status(&mut self, at: Instant, status: ServerStatus) {
        let line = match &status {
            ServerStatus::Running { addr, tls_addr, interval, max_missed, keep } => format!(
                "embedded server listening on {addr}{}: pulse every {} ms, evict after {max_missed} missed, keep \
                 sessions {}",
                tls_addr.map(|tls| format!(" and for TLS on {tls}")).unwrap_or_default(),
                interval.as_millis(),
                words::seconds(keep)
            ),
            ServerStatus::Stopped => "embedded server stopped (every peer got BYE shutdown)".to_owned(),
            ServerStatus::Killed => "embedded server killed: every connection cut without a word".to_owned(),
            ServerStatus::Failed(error) => format!("embedded server could not start: {error}"),
        };
        if !matches!(status, ServerStatus::Running { .. }) {
            self.online(at, Vec::new());
            self.detached.clear();
        }
        self.server = status;
        self.note(at, Source::App, line);
    }

    fn server_event(&mut self, at: Instant, instance: u64, event: ServerEvent) {
        let line = match event {
            ServerEvent::PeerOnline { peer, resumed } => {
                let kind = if resumed { "resumed session" } else { "fresh session" };
                format!("{} online from {} ({kind} {})", peer.id, peer.addr, peer.session)
            }
            ServerEvent::PeerDetached { peer, reason } => {
                format!(
                    "{} detached: {}; session {} kept for it to resume",
                    peer.id,
                    words::offline(&reason),
                    peer.session
                )
            }
            ServerEvent::PeerOffline { peer, reason, undelivered } => {
                let end = self.delivery.server_session_ended(instance, peer.id.as_str(), &undelivered, at);
                let mut line = format!("{} offline: {}", peer.id, words::offline(&reason));
                if !end.handed_back.is_empty() {
                    let maybe =
                        end.handed_back.iter().filter(|(_, outcome)| *outcome == Outcome::MaybeDelivered).count();
                    let count = end.handed_back.len();
                    line.push_str(&format!(
                        "; session {} ended, {count} message(s) handed back ({maybe} maybe delivered)",
                        peer.session
                    ));
                }
                if !end.unaccounted.is_empty() {
                    let count = end.unaccounted.len();
                    line.push_str(&format!("; {count} message(s) of it got no outcome at all"));
                }
                line
            }
            ServerEvent::Message { peer, seq, payload } => {
                if self.delivery.received(Direction::ClientToServer, &payload, at) {
                    return;
                }
                format!("message {seq} from {peer}: {} (echoed back)", quote(&payload))
            }
            ServerEvent::Delivered { peer, up_to } => {
                let texts = self.delivery.server_delivered(instance, peer.as_str(), up_to, at);
                for text in texts {
                    self.note(at, Source::Server, format!("{peer} has {}", quote(text.as_bytes())));
                }
                return;
            }
            other => format!("{other:?}"),
        };
        self.note(at, Source::Server, line);
    }

    fn online(&mut self, at: Instant, peers: Vec<PeerInfo>) {
        let count = peers.len() as f64;
        if self.online_count.last() != Some(count) {
            self.online_count.push(at, count);
        }
        let mine = self.client_id.as_deref().and_then(|id| peers.iter().find(|peer| peer.id.as_str() == id));
        if let Some(rtt) = mine.and_then(|peer| peer.last_rtt) {
            let before = self.own_peer().and_then(|peer| peer.last_rtt);
            if before != Some(rtt) {
                self.server_rtt.push(at, millis(rtt));
            }
        }
        self.peers = peers;
    }

    fn record_phase(&mut self, at: Instant) {
        let level = self.phase().level();
        if self.timeline.last() != Some(level) {
            self.timeline.push(at, level);
        }
    }

    fn prune(&mut self, now: Instant) {
        self.probe_rtt.prune(now, false);
        self.server_rtt.prune(now, false);
        self.online_count.prune(now, true);
        self.timeline.prune(now, true);
        if let Some(start) = now.checked_sub(WINDOW) {
            while self.markers.front().is_some_and(|marker| marker.at < start) {
                self.markers.pop_front();
            }
        }
    }

    fn note(&mut self, at: Instant, source: Source, text: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { at: at.saturating_duration_since(self.started), source, text });
    }

    // ---- view data ----

    /// The headline phase.
    pub fn phase(&self) -> Phase {
        match self.conn {
            Conn::Offline => Phase::Offline,
            Conn::Connecting { .. } => Phase::Connecting,
            Conn::Online if self.misses > 0 => Phase::Suspect,
            Conn::Online => Phase::Online,
            Conn::BackingOff { .. } => Phase::BackingOff,
            Conn::Closed { .. } => Phase::Closed,
        }
    }

    /// A line under the headline that says more about the phase.
    pub fn phase_detail(&self, now: Instant) -> String {
        match &self.conn {
            Conn::Offline if self.generation.is_none() => "No client yet: press Connect.".to_owned(),
            Conn::Offline => "Connection lost; about to retry.".to_owned(),
            Conn::Connecting { attempt } => format!("Attempt {attempt}: TCP connect and HELLO."),
            Conn::Online if self.misses > 0 => {
                format!("{} pulse(s) missed in a row: the server or the link may be dead.", self.misses)
            }
            Conn::Online => match self.connected_at {
                Some(since) => format!("Pulses arrive; connected for {}.", words::seconds(&(now - since))),
                None => "Pulses arrive.".to_owned(),
            },
            Conn::BackingOff { attempt, retry_at, .. } => {
                format!("Attempt {attempt} in {}.", words::seconds(&retry_at.saturating_duration_since(now)))
            }
            Conn::Closed { reason } => reason.clone(),
        }
    }

    /// The session id while online.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The timing the server announced last.
    pub fn cadence(&self) -> Option<Cadence> {
        self.cadence
    }

    /// The main client's id and where it connects.
    pub fn client(&self) -> Option<(&str, &str, bool)> {
        Some((self.client_id.as_deref()?, self.target.as_deref()?, self.via_relay))
    }

    /// The last loss of the connection.
    pub fn last_disconnect(&self) -> Option<&LastDisconnect> {
        self.last_disconnect.as_ref()
    }

    /// How many times the connection was lost.
    pub fn disconnects(&self) -> u32 {
        self.disconnects
    }

    /// The miss counter against its limit, while online.
    pub fn miss_gauge(&self) -> Option<MissGauge> {
        match self.conn {
            Conn::Online => Some(MissGauge { misses: self.misses, max: self.cadence?.max_missed }),
            _ => None,
        }
    }

    /// An estimate of the time left until the client's checker ticks next, while online.
    ///
    /// The checker ticks every interval, half an interval after the pulses (it aligns on the
    /// first one); before any pulse it ticks one interval after `WELCOME`. This takes the last
    /// pulse this app saw (or the connect time) as the reference, so it is an estimate.
    pub fn next_check_in(&self, now: Instant) -> Option<Duration> {
        if self.conn != Conn::Online {
            return None;
        }
        let interval = self.cadence?.interval;
        if interval.is_zero() {
            return None;
        }
        let first = match (self.last_pulse, self.connected_at) {
            (Some(pulse), _) => pulse + interval / 2,
            (None, Some(connected)) => connected + interval,
            (None, None) => return None,
        };
        if first > now {
            return Some(first - now);
        }
        let behind = now.duration_since(first).as_nanos();
        let ticks = behind / interval.as_nanos() + 1;
        let next = first + interval * u32::try_from(ticks).unwrap_or(u32::MAX);
        Some(next.saturating_duration_since(now))
    }

    /// The wait before the next attempt, while backing off.
    pub fn retry(&self, now: Instant) -> Option<Retry> {
        match &self.conn {
            Conn::BackingOff { attempt, delay, retry_at, last_error } => Some(Retry {
                attempt: *attempt,
                delay: *delay,
                left: retry_at.saturating_duration_since(now),
                last_error: last_error.clone(),
            }),
            _ => None,
        }
    }

    /// Whether something on screen counts down, so the window should redraw by itself for a
    /// while: missed pulses, a backoff wait, a detached session's time left, or a stream number
    /// on its way to counting as lost.
    pub fn counting_down(&self) -> bool {
        matches!(self.phase(), Phase::Suspect | Phase::BackingOff)
            || !self.detached.is_empty()
            || Direction::BOTH.iter().any(|&direction| self.delivery.missing(direction) > 0)
    }

    /// The last probe's result.
    pub fn last_probe(&self) -> Option<&Result<Duration, ProbeError>> {
        self.last_probe.as_ref()
    }

    /// Round trips measured by the client's probes, in ms.
    pub fn probe_rtt(&self) -> &Series {
        &self.probe_rtt
    }

    /// Round trips of the server's pulses to this client, in ms, as the server measured them.
    pub fn server_rtt(&self) -> &Series {
        &self.server_rtt
    }

    /// The embedded server's online count over time.
    pub fn online_count(&self) -> &Series {
        &self.online_count
    }

    /// The phase over time, as [`Phase::level`] values.
    pub fn timeline(&self) -> &Series {
        &self.timeline
    }

    /// Disconnects and reconnects within the chart window.
    pub fn markers(&self) -> impl Iterator<Item = &Marker> {
        self.markers.iter()
    }

    /// The event log, oldest first.
    pub fn log(&self) -> impl ExactSizeIterator<Item = &LogLine> {
        self.log.iter()
    }

    /// The whole event log as text, one line per event.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for line in &self.log {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{}", line.render());
        }
        text
    }

    /// The embedded server's condition.
    pub fn server(&self) -> &ServerStatus {
        &self.server
    }

    /// The embedded server's online list, sorted by id.
    pub fn peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    /// This client's entry in the server's online list.
    pub fn own_peer(&self) -> Option<&PeerInfo> {
        let id = self.client_id.as_deref()?;
        self.peers.iter().find(|peer| peer.id.as_str() == id)
    }

    /// The relay's address and what it black-holes.
    pub fn relay(&self) -> Option<(SocketAddr, Blackhole)> {
        self.relay
    }

    /// The extra clients' states.
    pub fn extras(&self) -> ExtraCounts {
        self.extras
    }

    /// The last handshake: fresh or resumed, and the session.
    pub fn last_connect(&self) -> Option<&LastConnect> {
        self.last_connect.as_ref()
    }

    /// How many handshakes opened a fresh session and how many resumed one.
    pub fn connects(&self) -> Connects {
        self.connects
    }

    /// The main client's outbox, as last read.
    pub fn outbox(&self) -> Option<OutboxStatus> {
        self.outbox
    }

    /// The embedded server's detached sessions, each with its time left at `now`.
    pub fn detached(&self, now: Instant) -> Vec<KeptSession> {
        let with_left =
            |kept: &Kept| KeptSession { left: kept.ends.saturating_duration_since(now), ..kept.session.clone() };
        self.detached.iter().map(with_left).collect()
    }

    /// Whether the stream runs.
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Every message's outcome, and the stream's check.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Who the server says the main client is: the subject in the embedded server's online
    /// list (`anonymous` for a peer it did not authenticate), `anonymous` for a client that
    /// sends no token (an external server's list is not visible here), and `None` while the
    /// client is not in the online list.
    pub fn subject(&self) -> Option<&str> {
        match self.own_peer() {
            Some(peer) => Some(peer.subject.as_ref().map_or("anonymous", |subject| subject.as_str())),
            None if self.client_id.is_some() && self.client_subject.is_none() => Some("anonymous"),
            None => None,
        }
    }

    /// The main client's transport security: what its configuration says, verified when it is
    /// online and the server's online list says it came over TLS.
    pub fn tls(&self) -> TlsView {
        let Some(trust) = self.client_tls else { return TlsView::Off };
        let listed_tls = self.own_peer().is_some_and(|peer| peer.tls);
        match &self.tls_refusal {
            _ if self.session.is_some() && listed_tls => TlsView::Verified { trust },
            Some(error) => TlsView::Refused { trust, error: error.clone() },
            None => TlsView::Pending { trust },
        }
    }

    /// Whether the main client logs in with tokens from the app's provider.
    pub fn logs_in(&self) -> bool {
        self.client_subject.is_some()
    }

    /// The main client's current token.
    pub fn token(&self) -> Option<&TokenInfo> {
        self.token.as_ref()
    }

    /// How many tokens the main client's provider has minted.
    pub fn tokens_minted(&self) -> u32 {
        self.token.as_ref().map_or(0, |token| token.n)
    }

    /// The last renewal of the credential (under way or over).
    pub fn renewal(&self) -> Option<&Renewal> {
        self.renewal.as_ref()
    }

    /// How many renewals completed with a connect.
    pub fn renewals(&self) -> u32 {
        self.renewals
    }

    /// The last hijack fault.
    pub fn hijack(&self) -> Option<&Hijack> {
        self.hijack.as_ref()
    }
}

/// What the server did with a hijack: `hijack refused: forbidden`.
pub fn hijack_words(hijack: &Hijack) -> String {
    match hijack.outcome.as_ref().map(|(outcome, _)| outcome) {
        None => format!("hijack: {} asks for {}...", hijack.subject, hijack.client_id),
        Some(HijackOutcome::Refused { code, .. }) => format!("hijack refused: {code}"),
        Some(HijackOutcome::Admitted) => {
            format!("hijack ADMITTED: {} took {} from its subject (a security bug)", hijack.subject, hijack.client_id)
        }
        Some(HijackOutcome::NoAnswer) => "hijack: no answer from the server".to_owned(),
        Some(HijackOutcome::Ended(why)) => format!("hijack ended without an answer: {why}"),
    }
}

/// What a hijack did to its victim: `desk-1 stayed online: session s1 unchanged, no disconnect`.
pub fn victim_words(hijack: &Hijack) -> String {
    let Some((_, (session, disconnects))) = &hijack.outcome else { return String::new() };
    let id = &hijack.client_id;
    if hijack.victim_untouched() {
        let session = session.as_deref().unwrap_or("-");
        return format!("{id} stayed online: session {session} unchanged, no disconnect");
    }
    let lost = disconnects.saturating_sub(hijack.before.1);
    match (&hijack.before.0, session) {
        (None, _) => format!("{id} was not online when it started"),
        (_, None) => format!("{id} is offline ({lost} disconnect(s) since the hijack started)"),
        (Some(before), Some(after)) => {
            format!("{id} moved from session {before} to {after} ({lost} disconnect(s) since the hijack started)")
        }
    }
}

fn relay_note(blackhole: Blackhole) -> String {
    match (blackhole.to_server, blackhole.to_client) {
        (false, false) => "relay restored: bytes flow both ways".to_owned(),
        (true, true) => "relay black-holes the link: nothing passes either way, nothing is closed".to_owned(),
        (false, true) => "relay freezes the server's pulses: nothing passes server -> client".to_owned(),
        (true, false) => "relay silences the client: nothing passes client -> server".to_owned(),
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A payload for the log: text in quotes (escaped), at most 200 characters.
fn quote(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut quoted: String = text.chars().take(200).collect::<String>().escape_debug().collect();
    if text.chars().count() > 200 {
        quoted.push_str("...");
    }
    format!("\"{quoted}\" ({} bytes)", payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsewire::core::Undelivered;
    use pulsewire::protocol::{ClientId, SessionId};
    use pulsewire::{CloseReason, ConnectError, DisconnectReason, Failure};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A model with a started client, and a clock to feed it.
    struct Script {
        model: Model,
        t0: Instant,
        now: Instant,
    }

    impl Script {
        fn new() -> Script {
            let t0 = Instant::now();
            let mut script = Script { model: Model::new(t0), t0, now: t0 };
            script.input(Input::ClientStarted {
                generation: 1,
                client_id: "desk".into(),
                target: "127.0.0.1:9".into(),
                via_relay: true,
                subject: None,
                tls: None,
                resumes: None,
            });
            script
        }

        fn at(&mut self, millis: u64) -> &mut Script {
            self.now = self.t0 + ms(millis);
            self
        }

        fn input(&mut self, input: Input) -> &mut Script {
            self.model.apply(Stamped { at: self.now, input });
            self
        }

        fn event(&mut self, event: Event) -> &mut Script {
            self.input(Input::Client { generation: 1, event })
        }

        fn connected(&mut self) -> &mut Script {
            self.event(Event::Connecting { attempt: 1 }).event(Event::Connected {
                session: session("s1"),
                resumed: false,
                interval: ms(1000),
                max_missed: 3,
            })
        }
    }

    fn session(id: &str) -> SessionId {
        SessionId::new(id).expect("a valid session id")
    }

    fn peer(id: &str, rtt: Option<u64>) -> PeerInfo {
        let now = Instant::now();
        PeerInfo {
            id: ClientId::new(id).expect("a valid id"),
            addr: "127.0.0.1:5000".parse().expect("an address"),
            session: session("s1"),
            connected_since: now,
            last_seen: now,
            last_rtt: rtt.map(ms),
            misses: 0,
            subject: None,
            tls: false,
        }
    }

    #[test]
    fn the_headline_follows_the_client_from_connecting_to_online() {
        let mut script = Script::new();
        assert_eq!(script.model.phase(), Phase::Offline);
        script.event(Event::Connecting { attempt: 1 });
        assert_eq!(script.model.phase(), Phase::Connecting);
        script.at(5).connected();
        assert_eq!(script.model.phase(), Phase::Online);
        assert_eq!(script.model.session(), Some("s1"));
        assert_eq!(script.model.cadence(), Some(Cadence { interval: ms(1000), max_missed: 3 }));
    }

    #[test]
    fn missed_pulses_make_the_client_suspect_and_a_pulse_forgives_them() {
        let mut script = Script::new();
        script.connected().at(2500).event(Event::Missed { count: 1, max: 3 });
        assert_eq!(script.model.phase(), Phase::Suspect);
        assert_eq!(script.model.miss_gauge(), Some(MissGauge { misses: 1, max: 3 }));
        assert!(script.model.counting_down());
        script.event(Event::Missed { count: 2, max: 3 });
        assert!((script.model.miss_gauge().map(|gauge| gauge.fraction()).unwrap_or(0.0) - 2.0 / 3.0).abs() < 1e-6);
        script.at(2600).event(Event::Pulse { seq: 3, misses_reset: 2 });
        assert_eq!(script.model.phase(), Phase::Online);
        assert!(!script.model.counting_down(), "a healthy link needs no ticking");
        assert!(script.model.log().any(|line| line.text == "pulse 3 answered; it forgave 2 missed"));
    }

    #[test]
    fn a_disconnect_keeps_its_reason_in_plain_words_and_marks_the_timeline() {
        let mut script = Script::new();
        script.connected().at(4000).event(Event::Disconnected { reason: DisconnectReason::PulseTimeout { missed: 3 } });
        let last = script.model.last_disconnect().expect("a disconnect is recorded");
        assert!(last.words.contains("went silent"), "{}", last.words);
        assert_eq!(last.detail, "no pulse from the server (3 missed)");
        assert_eq!(script.model.phase(), Phase::Offline);
        assert_eq!(script.model.session(), None);
        assert_eq!(script.model.disconnects(), 1);
        let markers: Vec<_> = script.model.markers().map(|marker| marker.kind).collect();
        assert_eq!(markers, [MarkerKind::Disconnect]);

        script.at(4300).connected();
        let markers: Vec<_> = script.model.markers().map(|marker| marker.kind).collect();
        assert_eq!(markers, [MarkerKind::Disconnect, MarkerKind::Reconnect], "the first connect is no reconnect");
    }

    #[test]
    fn backing_off_counts_down_to_the_next_attempt_with_the_last_error() {
        let mut script = Script::new();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        script.at(1000).event(Event::BackingOff {
            attempt: 2,
            delay: ms(400),
            elapsed: ms(20),
            last_error: Some(Failure::Connect(ConnectError::Io((&refused).into()))),
        });
        assert_eq!(script.model.phase(), Phase::BackingOff);
        let retry = script.model.retry(script.t0 + ms(1100)).expect("backing off");
        assert_eq!((retry.attempt, retry.delay, retry.left), (2, ms(400), ms(300)));
        assert_eq!(retry.last_error.as_deref(), Some("nobody listens at the server address"));
        assert_eq!(script.model.retry(script.t0 + ms(2000)).map(|retry| retry.left), Some(Duration::ZERO));
        assert!(script.model.counting_down());
        assert_eq!(script.model.phase_detail(script.t0 + ms(1100)), "Attempt 2 in 0.3 s.");
    }

    #[test]
    fn the_next_check_is_estimated_half_an_interval_after_the_last_pulse() {
        let mut script = Script::new();
        script.connected();
        assert_eq!(script.model.next_check_in(script.t0 + ms(200)), Some(ms(800)), "before any pulse: one interval");
        script.at(300).event(Event::Pulse { seq: 1, misses_reset: 0 });
        assert_eq!(script.model.next_check_in(script.t0 + ms(500)), Some(ms(300)), "tick at 800 ms");
        assert_eq!(script.model.next_check_in(script.t0 + ms(900)), Some(ms(900)), "then at 1800 ms");
        assert_eq!(script.model.next_check_in(script.t0 + ms(3850)), Some(ms(950)), "and every interval after");
        script.at(4000).event(Event::Disconnected { reason: DisconnectReason::Eof });
        assert_eq!(script.model.next_check_in(script.t0 + ms(4000)), None, "no checker while offline");
    }

    #[test]
    fn events_of_a_replaced_client_are_ignored() {
        let mut script = Script::new();
        script.connected();
        script.input(Input::ClientStarted {
            generation: 2,
            client_id: "desk".into(),
            target: "127.0.0.1:9".into(),
            via_relay: false,
            subject: None,
            tls: None,
            resumes: None,
        });
        script.event(Event::Closed { reason: CloseReason::Application }); // generation 1
        assert_eq!(script.model.phase(), Phase::Offline, "the old client's close is not this one's");
        script.input(Input::Client { generation: 2, event: Event::Connecting { attempt: 1 } });
        assert_eq!(script.model.phase(), Phase::Connecting);
    }

    #[test]
    fn closing_shows_the_reason() {
        let mut script = Script::new();
        script.connected().event(Event::Disconnected { reason: DisconnectReason::ClosedByApplication });
        script.event(Event::Closed { reason: CloseReason::Application });
        assert_eq!(script.model.phase(), Phase::Closed);
        assert_eq!(script.model.phase_detail(script.now), "Closed by this app (it said BYE).");
    }

    #[test]
    fn the_timeline_records_each_phase_change_once() {
        let mut script = Script::new();
        script.at(10).connected();
        for n in 1..=5 {
            script.at(10 + n * 1000).event(Event::Pulse { seq: n, misses_reset: 0 });
        }
        script.at(9000).event(Event::Disconnected { reason: DisconnectReason::Reset });
        let levels: Vec<f64> = script.model.timeline().points(script.now).iter().map(|point| point[1]).collect();
        let expected = [Phase::Offline, Phase::Connecting, Phase::Online, Phase::Offline].map(Phase::level);
        assert_eq!(levels, expected);
    }

    #[test]
    fn the_online_list_feeds_the_count_chart_and_the_server_measured_rtt() {
        let mut script = Script::new();
        script.at(100).input(Input::Online(vec![peer("desk", Some(2)), peer("extra-001", None)]));
        script.at(200).input(Input::Online(vec![peer("desk", Some(2)), peer("extra-001", None)]));
        script.at(300).input(Input::Online(vec![peer("desk", Some(3))]));
        assert_eq!(script.model.online_count().points(script.now), vec![[-0.2, 2.0], [0.0, 1.0]]);
        let rtts: Vec<f64> = script.model.server_rtt().points(script.now).iter().map(|point| point[1]).collect();
        assert_eq!(rtts, [2.0, 3.0], "a repeated value is one sample");
        assert_eq!(script.model.own_peer().map(|peer| peer.id.as_str()), Some("desk"));
    }

    #[test]
    fn a_server_that_stops_empties_the_online_list() {
        let mut script = Script::new();
        script.input(Input::Online(vec![peer("desk", None)]));
        script.at(50).input(Input::Server(ServerStatus::Killed));
        assert!(script.model.peers().is_empty());
        assert_eq!(script.model.online_count().last(), Some(0.0));
        assert!(script.model.log().any(|line| line.text.contains("killed")));
    }

    #[test]
    fn probes_of_the_current_client_feed_the_rtt_chart() {
        let mut script = Script::new();
        script.at(10).input(Input::Probe { generation: 1, result: Ok(ms(4)) });
        script.input(Input::Probe { generation: 7, result: Ok(ms(99)) });
        script.input(Input::Probe { generation: 1, result: Err(ProbeError::Offline) });
        assert_eq!(script.model.probe_rtt().last(), Some(4.0));
        assert_eq!(script.model.probe_rtt().len(), 1);
        assert_eq!(script.model.last_probe(), Some(&Err(ProbeError::Offline)));
    }

    #[test]
    fn the_log_is_timestamped_and_copies_as_text() {
        let mut script = Script::new();
        script.at(1500).event(Event::Message { seq: 4, payload: (&b"hi \"you\"\n"[..]).into() });
        let text = script.model.log_text();
        let last = text.lines().last().unwrap_or_default();
        assert_eq!(last, r#"    1.500 s  client  message 4 from the server: "hi \"you\"\n" (9 bytes)"#);
        assert_eq!(text.lines().count(), script.model.log().len());
    }

    #[test]
    fn the_log_keeps_only_the_newest_lines() {
        let mut script = Script::new();
        for n in 0..(LOG_LINES + 10) {
            script.input(Input::Note(format!("note {n}")));
        }
        assert_eq!(script.model.log().len(), LOG_LINES);
        assert_eq!(script.model.log().last().map(|line| line.text.as_str()), Some("note 5009"));
    }

    #[test]
    fn relay_changes_are_logged_in_words() {
        let mut script = Script::new();
        let addr: SocketAddr = "127.0.0.1:4000".parse().expect("an address");
        script.input(Input::Relay { addr, blackhole: Blackhole::default() });
        script.input(Input::Relay { addr, blackhole: Blackhole { to_server: false, to_client: true } });
        assert!(script.model.log().any(|line| line.text.contains("freezes the server's pulses")));
        assert_eq!(script.model.relay(), Some((addr, Blackhole { to_server: false, to_client: true })));
    }

    fn connected_as(resumed: bool) -> Event {
        Event::Connected { session: session("s1"), resumed, interval: ms(1000), max_missed: 3 }
    }

    fn server_event(event: ServerEvent) -> Input {
        Input::ServerEvent { instance: 1, event }
    }

    fn client_id(id: &str) -> ClientId {
        ClientId::new(id).expect("a valid id")
    }

    #[test]
    fn a_resumed_session_is_told_apart_from_a_fresh_one() {
        let mut script = Script::new();
        script.at(10).event(connected_as(false));
        let last = script.model.last_connect().cloned().expect("a connect");
        assert_eq!((last.session.as_str(), last.resumed), ("s1", false));
        script.at(500).event(Event::Disconnected { reason: DisconnectReason::Eof });
        assert_eq!(script.model.last_connect().map(|last| last.resumed), Some(false), "kept while offline");
        script.at(900).event(connected_as(true));
        assert_eq!(script.model.last_connect().map(|last| (last.resumed, last.at)), Some((true, script.t0 + ms(900))));
        assert_eq!(script.model.connects(), Connects { fresh: 1, resumed: 1 });
        assert!(script.model.log().any(|line| line.text.starts_with("connected: resumed session s1")));
    }

    #[test]
    fn stream_messages_are_counted_both_ways_and_stay_out_of_the_log() {
        let mut script = Script::new();
        script.connected();
        let lines = script.model.log().len();
        for n in 1..=3 {
            let sent = Sent::Stream(n);
            script.input(Input::ClientSent { generation: 1, ticket: n, sent: sent.clone() });
            let payload = Direction::ClientToServer.payload(n).into();
            script.input(server_event(ServerEvent::Message { peer: client_id("desk"), seq: n, payload }));
            script.input(Input::ServerSent { instance: 1, peer: client_id("desk"), seq: n, sent });
            script.event(Event::Message { seq: n, payload: Direction::ServerToClient.payload(n).into() });
        }
        script.input(server_event(ServerEvent::Delivered { peer: client_id("desk"), up_to: 3 }));
        assert_eq!(script.model.log().len(), lines, "nothing logged per stream message");
        let later = script.now + stream::GRACE * 2;
        let c2s = script.model.delivery().summary(Direction::ClientToServer, later);
        assert_eq!(c2s.line(Direction::ClientToServer), "client->server: sent 3 · received 3 · lost 0 · duplicated 0");
        let s2c = script.model.delivery().summary(Direction::ServerToClient, later);
        assert_eq!((s2c.received, s2c.outcomes.delivered, s2c.in_flight()), (3, 3, 0));
        assert_eq!(script.model.delivery().open(Direction::ClientToServer), 3, "no Delivered from the client yet");
    }

    #[test]
    fn a_typed_message_and_its_echo_are_logged_with_their_outcomes() {
        let mut script = Script::new();
        script.connected();
        script.input(Input::ClientSent { generation: 1, ticket: 1, sent: Sent::Text("hi".into()) });
        script.input(server_event(ServerEvent::Message { peer: client_id("desk"), seq: 1, payload: "hi".into() }));
        script.input(Input::ServerSent { instance: 1, peer: client_id("desk"), seq: 1, sent: Sent::Text("hi".into()) });
        script.event(Event::Message { seq: 1, payload: "hi".into() });
        script.input(server_event(ServerEvent::Delivered { peer: client_id("desk"), up_to: 1 }));
        let text = script.model.log_text();
        for expected in [
            "app     sent \"hi\" (2 bytes) (ticket #1)",
            "server  message 1 from desk: \"hi\" (2 bytes) (echoed back)",
            "client  message 1 from the server: \"hi\" (2 bytes)",
            "server  desk has \"hi\" (2 bytes)",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert_eq!(script.model.delivery().outcomes(Direction::ServerToClient).delivered, 1);
    }

    #[test]
    fn a_session_that_ends_hands_its_messages_back_and_a_killed_server_leaves_the_rest_gone() {
        let mut script = Script::new();
        let desk = client_id("desk");
        for seq in 1..=2 {
            script.input(Input::ServerSent { instance: 1, peer: desk.clone(), seq, sent: Sent::Stream(seq) });
        }
        let undelivered = vec![Undelivered { seq: 2, payload: "s2c 2".into(), maybe_delivered: true }];
        let mut gone = peer("desk", None);
        gone.session = session("s1");
        let ended = ServerEvent::PeerOffline { peer: gone, reason: pulsewire::OfflineReason::Eof, undelivered };
        script.input(server_event(ServerEvent::Delivered { peer: desk.clone(), up_to: 1 }));
        script.input(server_event(ended));
        assert!(script.model.log().any(|line| line.text.ends_with("1 message(s) handed back (1 maybe delivered)")));
        script.input(Input::ServerSent { instance: 1, peer: desk, seq: 1, sent: Sent::Stream(3) });
        script.input(Input::ServerEnded { instance: 1 });
        let outcomes = script.model.delivery().outcomes(Direction::ServerToClient);
        assert_eq!((outcomes.delivered, outcomes.maybe_delivered, outcomes.gone), (1, 1, 1));
        assert!(script.model.log().any(|line| line.text.starts_with("1 message(s) the stopped server had accepted")));
    }

    #[test]
    fn detached_sessions_count_down_until_the_server_stops() {
        let mut script = Script::new();
        let kept = KeptSession {
            client_id: client_id("desk"),
            session: session("s1"),
            left: ms(10_000),
            queued: 4,
            bytes: 24,
        };
        script.at(1000).input(Input::Detached(vec![kept]));
        let shown = script.model.detached(script.t0 + ms(5000));
        assert_eq!(shown.iter().map(|kept| (kept.left, kept.queued)).collect::<Vec<_>>(), [(ms(6000), 4)]);
        assert_eq!(script.model.detached(script.t0 + ms(60_000))[0].left, Duration::ZERO);
        assert!(script.model.counting_down(), "the time left is redrawn");
        script.input(Input::Server(ServerStatus::Killed));
        assert!(script.model.detached(script.now).is_empty());
    }

    #[test]
    fn the_outbox_of_a_replaced_client_is_not_shown() {
        let mut script = Script::new();
        let status = OutboxStatus { queued: 2, unacked: 1, bytes: 30 };
        script.input(Input::Outbox { generation: 1, status });
        assert_eq!(script.model.outbox(), Some(status));
        script.input(Input::Outbox { generation: 7, status: OutboxStatus::default() });
        assert_eq!(script.model.outbox(), Some(status));
        script.input(Input::ClientStarted {
            generation: 2,
            client_id: "desk".into(),
            target: "x:1".into(),
            via_relay: true,
            subject: None,
            tls: None,
            resumes: None,
        });
        assert_eq!(script.model.outbox(), None);
    }

    #[test]
    fn the_stream_switch_is_logged_and_a_refused_number_is_counted() {
        let mut script = Script::new();
        script.input(Input::Streaming(true));
        assert!(script.model.streaming());
        let reason = "not sent: no such peer online".to_owned();
        script.input(Input::StreamRefused { direction: Direction::ServerToClient, n: 1, reason });
        let summary = script.model.delivery().summary(Direction::ServerToClient, script.now);
        assert_eq!((summary.sent, summary.refused), (0, 1));
        script.input(Input::Streaming(false));
        assert!(script.model.log().any(|line| line.text.starts_with("stream on: 20 numbered messages")));
        assert!(!script.model.streaming());
    }

    fn alice_started(script: &mut Script) {
        script.input(Input::ClientStarted {
            generation: 1,
            client_id: "desk".into(),
            target: "127.0.0.1:9".into(),
            via_relay: true,
            subject: Some("alice".into()),
            tls: None,
            resumes: None,
        });
    }

    fn minted(script: &mut Script, n: u32, lifetime_ms: u64) {
        let expires = script.now + ms(lifetime_ms);
        let (subject, lifetime) = ("alice".to_owned(), ms(lifetime_ms));
        script.input(Input::TokenMinted { generation: 1, n, subject, lifetime, expires });
    }

    fn peer_as(subject: Option<&str>) -> PeerInfo {
        PeerInfo { subject: subject.map(pulsewire::auth::Subject::new), ..peer("desk", None) }
    }

    #[test]
    fn the_subject_is_the_one_in_the_servers_online_list_and_anonymous_without_a_token() {
        let mut script = Script::new();
        assert_eq!(script.model.subject(), Some("anonymous"), "a client that sends no token");
        script.input(Input::Online(vec![peer_as(None)]));
        assert_eq!(script.model.subject(), Some("anonymous"), "a peer the server did not authenticate");

        alice_started(&mut script);
        script.input(Input::Online(Vec::new()));
        assert_eq!(script.model.subject(), None, "not in the online list: not known");
        script.input(Input::Online(vec![peer_as(Some("alice"))]));
        assert_eq!(script.model.subject(), Some("alice"));
        assert!(script.model.logs_in());
    }

    #[test]
    fn tokens_are_counted_per_client_and_count_down_to_their_expiry() {
        let mut script = Script::new();
        alice_started(&mut script);
        assert_eq!(script.model.tokens_minted(), 0);
        script.at(100);
        minted(&mut script, 1, 30_000);
        minted(&mut script, 2, 30_000);
        assert_eq!(script.model.tokens_minted(), 2);
        let token = script.model.token().cloned().expect("a token");
        assert_eq!((token.n, token.subject.as_str(), token.expires), (2, "alice", script.t0 + ms(30_100)));
        script.input(Input::TokenMinted {
            generation: 7,
            n: 9,
            subject: "alice".into(),
            lifetime: ms(1),
            expires: script.now,
        });
        assert_eq!(script.model.tokens_minted(), 2, "another client's token is not this one's");

        let expires = script.t0 + ms(3000);
        script.at(2000).input(Input::CredentialCutShort { client_id: "desk".into(), expires });
        let token = script.model.token().cloned().expect("a token");
        assert_eq!((token.expires, token.cut_short), (script.t0 + ms(3000), true));
        assert!(script
            .model
            .log()
            .any(|line| line.text == "the server cut desk's credential short: it expires in 1.0 s"));

        alice_started(&mut script);
        assert_eq!(script.model.tokens_minted(), 0, "a new client, a new provider");
    }

    #[test]
    fn auth_expired_then_a_new_token_then_a_resume_is_one_renewal() {
        let mut script = Script::new();
        alice_started(&mut script);
        minted(&mut script, 1, 1000);
        script.connected();
        let expired = DisconnectReason::ServerError {
            code: ErrorCode::AuthExpired,
            text: "the credential has expired: reconnect with a new one".into(),
        };
        script.at(3000).event(Event::Disconnected { reason: expired });
        let renewal = script.model.renewal().cloned().expect("under way");
        assert_eq!((renewal.session_before.as_deref(), renewal.token, renewal.next), (Some("s1"), None, None));
        minted(&mut script, 2, 1000);
        assert_eq!(script.model.renewal().and_then(|renewal| renewal.token), Some(2));
        assert_eq!(script.model.renewals(), 0, "not over before the connect");
        script.at(3100).event(connected_as(true));
        let renewal = script.model.renewal().cloned().expect("over");
        assert!(renewal.resumed_the_same_session(), "{renewal:?}");
        assert_eq!(script.model.renewals(), 1);
        // Another loss is no renewal.
        script.at(4000).event(Event::Disconnected { reason: DisconnectReason::Eof });
        script.event(connected_as(false));
        assert_eq!(script.model.renewals(), 1);
        assert!(script.model.renewal().is_some_and(Renewal::resumed_the_same_session), "the last renewal stays");
        assert_eq!(
            script.model.last_disconnect().map(|last| last.words.as_str()),
            Some("The server closed the connection without a word (it stopped or crashed).")
        );
    }

    #[test]
    fn a_renewal_into_a_fresh_session_is_told_apart() {
        let mut script = Script::new();
        alice_started(&mut script);
        script.connected();
        let expired = DisconnectReason::ServerError { code: ErrorCode::AuthExpired, text: "x".into() };
        script.event(Event::Disconnected { reason: expired });
        minted(&mut script, 1, 1000);
        script.event(Event::Connected { session: session("s2"), resumed: false, interval: ms(1000), max_missed: 3 });
        assert!(!script.model.renewal().is_some_and(Renewal::resumed_the_same_session));
    }

    fn tls_started(script: &mut Script, trust: Trust) {
        script.input(Input::ClientStarted {
            generation: 1,
            client_id: "desk".into(),
            target: "127.0.0.1:9".into(),
            via_relay: true,
            subject: Some("alice".into()),
            tls: Some(trust),
            resumes: Some("s1".into()),
        });
    }

    fn peer_over(tls: bool) -> PeerInfo {
        PeerInfo { tls, ..peer("desk", None) }
    }

    #[test]
    fn tls_is_verified_only_online_and_listed_by_the_server_as_tls() {
        let mut script = Script::new();
        assert_eq!(script.model.tls(), TlsView::Off);
        assert_eq!(script.model.tls().words(), "TLS: off (plaintext)");
        tls_started(&mut script, Trust::DemoCa);
        assert!(script.model.log().any(|line| line.text.ends_with(
            "connects to 127.0.0.1:9 through the fault relay \
             in plaintext, sends no token (anonymous)"
        )));
        let started = "over TLS, trusting pulsewire demo CA, logs in as alice with tokens from its provider, to \
                       resume session s1";
        assert!(script.model.log().any(|line| line.text.ends_with(started)), "{}", script.model.log_text());
        assert_eq!(script.model.tls(), TlsView::Pending { trust: Trust::DemoCa });
        script.connected();
        assert_eq!(script.model.tls(), TlsView::Pending { trust: Trust::DemoCa }, "not in the online list yet");
        script.input(Input::Online(vec![peer_over(false)]));
        assert_eq!(script.model.tls(), TlsView::Pending { trust: Trust::DemoCa }, "the server says plaintext");
        script.input(Input::Online(vec![peer_over(true)]));
        assert_eq!(script.model.tls(), TlsView::Verified { trust: Trust::DemoCa });
        assert_eq!(script.model.tls().words(), "TLS: on (verified: pulsewire demo CA)");
        script.event(Event::Disconnected { reason: DisconnectReason::Eof });
        assert_eq!(script.model.tls(), TlsView::Pending { trust: Trust::DemoCa }, "offline: nothing verified");
    }

    #[test]
    fn a_refused_handshake_shows_the_typed_tls_error_until_the_client_connects() {
        let mut script = Script::new();
        tls_started(&mut script, Trust::WrongCa);
        let refused = Failure::Connect(ConnectError::Tls(TlsError::UnknownIssuer));
        script.event(Event::BackingOff { attempt: 2, delay: ms(300), elapsed: ms(5), last_error: Some(refused) });
        let error = TlsError::UnknownIssuer;
        assert_eq!(script.model.tls(), TlsView::Refused { trust: Trust::WrongCa, error });
        assert_eq!(
            script.model.tls().words(),
            "TLS: on, handshake refused: the server's certificate is signed by an unknown authority (trusting \
             another demo CA)"
        );
        let retry = script.model.retry(script.now).expect("backing off");
        assert!(retry.last_error.is_some_and(|words| words.starts_with("TLS refused: ")));
        assert!(script.model.log().any(|line| line
            .text
            .ends_with("last error: the server's certificate is signed by an unknown authority)")));

        tls_started(&mut script, Trust::DemoCa);
        assert_eq!(script.model.tls(), TlsView::Pending { trust: Trust::DemoCa }, "a new client, no refusal yet");
        script.input(Input::Online(vec![peer_over(true)]));
        script.connected();
        assert_eq!(script.model.tls(), TlsView::Verified { trust: Trust::DemoCa });
    }

    #[test]
    fn a_refused_hijack_leaves_the_victim_untouched_and_says_so() {
        let mut script = Script::new();
        script.connected();
        script.input(Input::HijackStarted { client_id: "desk".into(), subject: "mallory".into() });
        let hijack = script.model.hijack().cloned().expect("started");
        assert_eq!(hijack_words(&hijack), "hijack: mallory asks for desk...");
        let refused = HijackOutcome::Refused {
            code: ErrorCode::Forbidden,
            text: "this client id is held by another subject".into(),
        };
        script.input(Input::Hijack { outcome: refused.clone(), tasks_left: 0 });
        let hijack = script.model.hijack().cloned().expect("over");
        assert_eq!(hijack_words(&hijack), "hijack refused: forbidden");
        assert!(hijack.victim_untouched());
        assert_eq!(victim_words(&hijack), "desk stayed online: session s1 unchanged, no disconnect");

        // A victim that lost its connection meanwhile is not untouched.
        script.input(Input::HijackStarted { client_id: "desk".into(), subject: "mallory".into() });
        script.event(Event::Disconnected { reason: DisconnectReason::Eof });
        script.input(Input::Hijack { outcome: refused, tasks_left: 0 });
        let hijack = script.model.hijack().cloned().expect("over");
        assert!(!hijack.victim_untouched());
        assert_eq!(victim_words(&hijack), "desk is offline (1 disconnect(s) since the hijack started)");
        script.input(Input::HijackStarted { client_id: "desk".into(), subject: "mallory".into() });
        script.input(Input::Hijack { outcome: HijackOutcome::Admitted, tasks_left: 0 });
        let hijack = script.model.hijack().cloned().expect("over");
        assert!(hijack_words(&hijack).starts_with("hijack ADMITTED"));
    }
}
