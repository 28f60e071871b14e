//! The one channel from the background threads to the UI.
//!
//! Every thread that learns something (an SDK event, a probe result, the online list) stamps
//! it with the time it happened and sends it through a [`Feed`], which then wakes the UI. The
//! UI drains the [`Inbox`] at the start of each frame without ever blocking. The wake-up is a
//! function handed in by the caller: `egui::Context::request_repaint_after` in the app,
//! nothing in tests, so the UI code itself never asks for repaints on behalf of the network.
//!
//! Each input says how soon the UI should show it ([`Input::show_within`]): changes of state
//! at once, routine news (a pulse answered, a round trip measured, the online list's numbers)
//! within a second, so that a healthy, idle connection costs about one frame per second.

use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulsewire::core::{KeptSession, OutboxStatus};
use pulsewire::protocol::{ClientId, ErrorCode};
use pulsewire::{Event, PeerInfo, ProbeError, ServerEvent};

use crate::ledger::Sent;
use crate::pki::Trust;
use crate::relay::Blackhole;
use crate::stream::Direction;

/// Something the UI should know, as a background thread reports it.
#[derive(Debug, Clone)]
pub enum Input {
    /// A new client (the main one) was started.
    ClientStarted {
        /// Tells this client's events from those of the clients before it.
        generation: u64,
        /// Its id.
        client_id: String,
        /// The address it connects to.
        target: String,
        /// Whether it connects through the fault relay.
        via_relay: bool,
        /// The subject its tokens name (`None`: it sends no token, and is anonymous).
        subject: Option<String>,
        /// The authority it trusts when its configuration says TLS (`None`: plaintext).
        tls: Option<Trust>,
        /// The session it carries over from the client before it, to resume.
        resumes: Option<String>,
    },
    /// The main client's token provider minted a token.
    TokenMinted {
        /// Which client asked for it.
        generation: u64,
        /// How many tokens this client's provider has minted, this one included.
        n: u32,
        /// The subject it names.
        subject: String,
        /// The lifetime it was minted with.
        lifetime: Duration,
        /// When it expires (its `exp`).
        expires: Instant,
    },
    /// The embedded server's authenticator cut a credential short (the expire-token fault).
    CredentialCutShort {
        /// Whose.
        client_id: String,
        /// When it expires now.
        expires: Instant,
    },
    /// The hijack fault started: a second client with the main client's id and another
    /// subject's token.
    HijackStarted {
        /// The id it asks for.
        client_id: String,
        /// The subject its token names.
        subject: String,
    },
    /// What became of the hijack.
    Hijack {
        /// What the server did.
        outcome: HijackOutcome,
        /// How many of the hijacker's tasks still ran once it was closed (0: cleaned up).
        tasks_left: usize,
    },
    /// An event of the main client.
    Client {
        /// Which client it came from.
        generation: u64,
        /// The event.
        event: Event,
    },
    /// The result of a periodic `probe()` by the main client.
    Probe {
        /// Which client probed.
        generation: u64,
        /// The round trip, or why there is none.
        result: Result<Duration, ProbeError>,
    },
    /// The main client accepted a message (a stream number or a text typed in).
    ClientSent {
        /// Which client.
        generation: u64,
        /// The ticket its events will name the message by.
        ticket: u64,
        /// What the message was.
        sent: Sent,
    },
    /// The main client's outbox, when it changed.
    Outbox {
        /// Which client.
        generation: u64,
        /// Queued, unacknowledged, bytes.
        status: OutboxStatus,
    },
    /// The embedded server state changed.
    Server(ServerStatus),
    /// An event of the embedded server.
    ServerEvent {
        /// Which run of the embedded server (each start is a new one).
        instance: u64,
        /// The event.
        event: ServerEvent,
    },
    /// The embedded server accepted a message for a peer.
    ServerSent {
        /// Which run of the embedded server.
        instance: u64,
        /// The peer.
        peer: ClientId,
        /// The message's number in the peer's session.
        seq: u64,
        /// What the message was.
        sent: Sent,
    },
    /// The embedded server's events ended: it stopped or was killed, and will say no more
    /// about the messages it accepted.
    ServerEnded {
        /// Which run of the embedded server.
        instance: u64,
    },
    /// The embedded server's online list changed.
    Online(Vec<PeerInfo>),
    /// The embedded server's detached sessions changed (their time left aside).
    Detached(Vec<KeptSession>),
    /// The stream switch was turned on or off.
    Streaming(bool),
    /// A stream number that the sender's SDK refused at once: it was never sent.
    StreamRefused {
        /// Its direction.
        direction: Direction,
        /// The number.
        n: u64,
        /// Why, in the SDK's words.
        reason: String,
    },
    /// The extra clients' states, counted.
    Extras(ExtraCounts),
    /// The fault relay: where it listens and what it black-holes.
    Relay {
        /// The address clients connect to.
        addr: SocketAddr,
        /// What is black-holed now.
        blackhole: Blackhole,
    },
    /// A line for the event log from the app itself (commands, errors).
    Note(String),
}

/// How soon the UI shows a change of state (a short delay merges bursts into one frame).
pub const PROMPTLY: Duration = Duration::from_millis(15);

/// How soon the UI shows routine news.
pub const ROUTINELY: Duration = Duration::from_secs(1);

/// How soon the UI shows message traffic (about four frames a second while the stream runs).
pub const LIVELY: Duration = Duration::from_millis(250);

impl Input {
    /// How soon the UI should show this input.
    pub fn show_within(&self) -> Duration {
        match self {
            Input::Client { event: Event::Pulse { misses_reset: 0, .. }, .. }
            | Input::Probe { .. }
            | Input::Online(_)
            | Input::Detached(_)
            | Input::Outbox { .. }
            | Input::Extras(_) => ROUTINELY,
            Input::Client { event: Event::Message { .. } | Event::Delivered { .. }, .. }
            | Input::ServerEvent { event: ServerEvent::Message { .. } | ServerEvent::Delivered { .. }, .. }
            | Input::ClientSent { .. }
            | Input::ServerSent { .. }
            | Input::StreamRefused { .. } => LIVELY,
            _ => PROMPTLY,
        }
    }
}

/// The embedded server's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// Running and accepting connections.
    Running {
        /// Where it listens.
        addr: SocketAddr,
        /// Where it listens for TLS.
        tls_addr: Option<SocketAddr>,
        /// Its pulse interval.
        interval: Duration,
        /// Its miss limit.
        max_missed: u32,
        /// How long it keeps a session whose connection is lost.
        keep: Duration,
    },
    /// Stopped gracefully (every peer got `BYE shutdown`).
    Stopped,
    /// Killed: every connection cut without a word, as a crash would.
    Killed,
    /// Could not start.
    Failed(String),
}

/// What became of a hijack attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HijackOutcome {
    /// The server refused it, as it should.
    Refused {
        /// The server's `ERROR` code.
        code: ErrorCode,
        /// The server's text.
        text: String,
    },
    /// The server let it in: the id changed hands to another subject (a security bug).
    Admitted,
    /// Neither within the time the fault waits.
    NoAnswer,
    /// It ended another way (it could not connect, say).
    Ended(String),
}

/// How many of the extra clients are in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraCounts {
    /// All of them.
    pub total: usize,
    /// Online.
    pub online: usize,
    /// Connecting.
    pub connecting: usize,
    /// Waiting before their next attempt.
    pub backing_off: usize,
}

/// An input and the moment it happened.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// When the sending thread saw it.
    pub at: Instant,
    /// What it saw.
    pub input: Input,
}

/// The function that wakes the UI: it is asked to redraw within the given time.
pub type Wake = Arc<dyn Fn(Duration) + Send + Sync>;

/// The sending side: cheap to clone, one per background thread.
#[derive(Clone)]
pub struct Feed {
    tx: Sender<Stamped>,
    wake: Wake,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// Sends `input`, stamped now, and wakes the UI.
    pub fn send(&self, input: Input) {
        let within = input.show_within();
        // Fails only when the UI is gone, and then nobody needs to know.
        if self.tx.send(Stamped { at: Instant::now(), input }).is_ok() {
            (self.wake)(within);
        }
    }

    /// Sends a line for the event log.
    pub fn note(&self, text: impl Into<String>) {
        self.send(Input::Note(text.into()));
    }
}

/// The receiving side, drained by the UI each frame.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Stamped>,
}

impl Inbox {
    /// Everything that arrived since the last call, oldest first, without waiting.
    pub fn drain(&self) -> impl Iterator<Item = Stamped> + '_ {
        self.rx.try_iter()
    }
}

/// A feed that calls `wake` after each input, and the inbox it fills.
pub fn channel(wake: Wake) -> (Feed, Inbox) {
    let (tx, rx) = mpsc::channel();
    (Feed { tx, wake }, Inbox { rx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_input_wakes_the_ui_once_and_arrives_in_order() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = wakes.clone();
        let (feed, inbox) = channel(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        feed.note("one");
        feed.clone().note("two");
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        let notes: Vec<String> = inbox
            .drain()
            .filter_map(|stamped| match stamped.input {
                Input::Note(text) => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(notes, ["one", "two"]);
        assert_eq!(inbox.drain().count(), 0, "drained inputs are gone");
    }

    #[test]
    fn state_changes_are_shown_promptly_and_routine_news_within_a_second() {
        let pulse = Input::Client { generation: 1, event: Event::Pulse { seq: 4, misses_reset: 0 } };
        let forgiving_pulse = Input::Client { generation: 1, event: Event::Pulse { seq: 5, misses_reset: 1 } };
        let missed = Input::Client { generation: 1, event: Event::Missed { count: 1, max: 3 } };
        assert_eq!(pulse.show_within(), ROUTINELY);
        assert_eq!(Input::Online(Vec::new()).show_within(), ROUTINELY);
        assert_eq!(missed.show_within(), PROMPTLY);
        assert_eq!(forgiving_pulse.show_within(), PROMPTLY, "Suspect turns Online at once");
        assert_eq!(Input::Note("x".into()).show_within(), PROMPTLY);
    }

    #[test]
    fn message_traffic_is_shown_a_few_times_a_second() {
        let message = Input::Client { generation: 1, event: Event::Message { seq: 3, payload: "s2c 3".into() } };
        let sent = Input::ClientSent { generation: 1, ticket: 3, sent: Sent::Stream(3) };
        let ended = Input::ServerEnded { instance: 1 };
        assert_eq!(message.show_within(), LIVELY);
        assert_eq!(sent.show_within(), LIVELY);
        assert_eq!(ended.show_within(), PROMPTLY, "messages gone with a server are news");
    }
}
