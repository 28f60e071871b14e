//! The backend without a window: commands in, the model's view out, against real servers on
//! loopback. These cover what the UI tests do not click: applying settings, pointing the
//! client at an external server, a kept session that runs out while the stream runs, tokens
//! that expire on their own, the hijack fault seen from the model, and the TLS switch without
//! the relay and the wrong-CA fault healed by Restore all.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use demo_gui::backend::{Backend, Command, Transport};
use demo_gui::feed::{self, HijackOutcome, Inbox, ServerStatus};
use demo_gui::model::{Cadence, Model, Phase, TlsView};
use demo_gui::pki::Trust;
use demo_gui::relay::Blackhole;
use demo_gui::stream::Direction;
use demo_gui::{Settings, Target};
use pulsewire::protocol::ErrorCode;
use pulsewire::tls::TlsError;
use pulsewire::{Server, ServerConfig};

/// A running backend and the model it feeds.
struct Watch {
    model: Model,
    inbox: Inbox,
    backend: Backend,
}

impl Watch {
    fn start(settings: Settings) -> Watch {
        let (feed, inbox) = feed::channel(Arc::new(|_| {}));
        let backend = Backend::start(settings, feed).expect("the backend starts");
        Watch { model: Model::new(Instant::now()), inbox, backend }
    }

    /// Feeds the model until `done` holds, for at most 20 s.
    #[track_caller]
    fn until(&mut self, what: &str, done: impl Fn(&Model) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for stamped in self.inbox.drain() {
                self.model.apply(stamped);
            }
            if done(&self.model) {
                return;
            }
            assert!(Instant::now() < deadline, "never saw {what}; event log:\n{}", self.model.log_text());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn fast() -> Settings {
    Settings { interval_ms: 200, initial_delay_ms: 100, max_delay_ms: 400, ..Settings::default() }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn applying_a_new_cadence_restarts_the_server_and_the_client_adopts_it() {
    let mut watch = Watch::start(fast());
    watch.until("online at 200 ms", |model| {
        model.phase() == Phase::Online && model.cadence() == Some(Cadence { interval: ms(200), max_missed: 3 })
    });

    watch.backend.send(Command::Apply(Settings { interval_ms: 250, max_missed: 2, ..fast() }));
    watch.until("online at 250 ms, 2 missed", |model| {
        model.phase() == Phase::Online && model.cadence() == Some(Cadence { interval: ms(250), max_missed: 2 })
    });
    let server = watch.model.server();
    assert!(
        matches!(server, ServerStatus::Running { interval, max_missed: 2, .. } if *interval == ms(250)),
        "{server:?}"
    );
    let last = watch.model.last_disconnect().expect("the restart cost one disconnect");
    assert_eq!(last.words, "The server shut down and said goodbye.");
}

#[test]
fn invalid_settings_are_refused_and_nothing_restarts() {
    let mut watch = Watch::start(fast());
    watch.until("online", |model| model.phase() == Phase::Online);
    watch.backend.send(Command::Apply(Settings { jitter: 3.0, ..fast() }));
    watch.until("the refusal", |model| model.log_text().contains("settings not applied: client: reconnect jitter 3"));
    assert_eq!(watch.model.disconnects(), 0);
}

#[test]
fn the_client_can_be_pointed_at_an_external_server_through_the_relay() {
    let config = ServerConfig::builder()
        .listen("127.0.0.1:0".parse().expect("an address"))
        .interval(ms(100))
        .build()
        .expect("a valid config");
    let (external, _events) = futures::executor::block_on(Server::bind(config)).expect("bind");
    let addr = external.local_addr().to_string();

    let mut watch = Watch::start(fast());
    watch.until("online with the embedded server", |model| model.phase() == Phase::Online);
    watch.backend.send(Command::Apply(Settings { target: Target::External(addr.clone()), ..fast() }));
    watch.until("online with the external server", |model| {
        let peers = futures::executor::block_on(external.online());
        model.phase() == Phase::Online && peers.iter().any(|peer| peer.id.as_str() == "desk-1")
    });
    assert!(watch.model.client().is_some_and(|(_, _, via_relay)| via_relay), "still through the relay");
    // No token to a server that cannot know the app's key: anonymous, and no identity fault.
    assert_eq!(watch.model.subject(), Some("anonymous"));
    assert_eq!((watch.model.tokens_minted(), watch.model.token()), (0, None));
    // Nor TLS: the app knows no certificate of an external server's.
    assert_eq!(watch.model.tls(), TlsView::Off);
    assert!(watch.model.own_peer().is_none(), "the embedded server's list does not show the external one's peers");
    watch.backend.send(Command::SetTransport(Transport::Tls(Trust::DemoCa)));
    watch.until("the TLS switch refused", |model| model.log_text().contains("no TLS switch: only the embedded server"));
    watch.backend.send(Command::Hijack);
    watch.until("the hijack refused for want of the embedded server", |model| {
        model.log_text().contains("no hijack: it needs the embedded server running")
    });

    // The faults reach an external server's client too: freeze its pulses.
    watch.backend.send(Command::SetBlackhole(demo_gui::relay::Blackhole { to_server: false, to_client: true }));
    watch.until("the loss noticed by missed pulses", |model| {
        model.last_disconnect().is_some_and(|last| last.words.contains("went silent"))
    });
    futures::executor::block_on(external.shutdown());
}

#[test]
fn a_kept_session_that_runs_out_hands_its_messages_back_and_the_client_starts_afresh() {
    const S2C: Direction = Direction::ServerToClient;
    let mut watch = Watch::start(Settings { keep_s: 1, ..fast() });
    watch.until("online", |model| model.phase() == Phase::Online);
    watch.backend.send(Command::SetStream(true));
    watch.until("the stream flowing", |model| model.delivery().summary(S2C, Instant::now()).received > 5);

    // The client stops answering: the server evicts it, keeps its session for 1 s, queueing the
    // stream for it, then ends the session and hands back what the client never acknowledged.
    watch.backend.send(Command::SetBlackhole(Blackhole { to_server: true, to_client: false }));
    watch.until("the kept session ended, its messages handed back", |model| {
        let outcomes = model.delivery().outcomes(S2C);
        outcomes.maybe_delivered + outcomes.not_delivered > 0
    });
    assert!(watch.model.log_text().contains("message(s) handed back"), "{}", watch.model.log_text());

    watch.backend.send(Command::RestoreAll);
    watch.until("online again, in a fresh session", |model| {
        model.phase() == Phase::Online && model.last_connect().is_some_and(|last| !last.resumed)
    });
    assert_eq!(watch.model.connects().fresh, 2);
    stop_the_stream_and_settle(&mut watch);
    for direction in Direction::BOTH {
        let summary = watch.model.delivery().summary(direction, Instant::now());
        assert_eq!((summary.lost, summary.duplicated), (0, 0), "{}: {summary:?}", direction.label());
        assert_eq!(summary.sent, summary.outcomes.total(), "{}: {summary:?}", direction.label());
    }
}

/// Switches the stream off and waits until every message in it settled, both ways.
fn stop_the_stream_and_settle(watch: &mut Watch) {
    watch.backend.send(Command::SetStream(false));
    watch.until("every message settled", |model| {
        let now = Instant::now();
        let settled = Direction::BOTH.iter().all(|&direction| {
            let summary = model.delivery().summary(direction, now);
            summary.in_flight() == 0 && summary.missing == 0 && model.delivery().open(direction) == 0
        });
        !model.streaming() && settled && model.outbox().is_some_and(|outbox| outbox.queued + outbox.unacked == 0)
    });
}

/// Waits until the stream is off and every message settled, and asserts nothing was lost or
/// duplicated either way.
fn settle_and_check_the_stream(watch: &mut Watch) {
    stop_the_stream_and_settle(watch);
    for direction in Direction::BOTH {
        let summary = watch.model.delivery().summary(direction, Instant::now());
        assert_eq!((summary.lost, summary.duplicated), (0, 0), "{}: {summary:?}", direction.label());
        assert_eq!(summary.sent, summary.received, "{}: {summary:?}", direction.label());
    }
}

#[test]
fn tokens_that_expire_while_online_are_renewed_and_each_renewal_resumes_the_session() {
    let mut watch = Watch::start(Settings { token_lifetime_s: 1, ..fast() });
    watch.until("online as alice", |model| model.phase() == Phase::Online && model.subject() == Some("alice"));
    let session = watch.model.session().map(str::to_owned).expect("online");
    watch.backend.send(Command::SetStream(true));
    // Each token lives a second; 2 s past it the server ends the connection with auth-expired.
    watch.until("two renewals, the last one over", |model| {
        model.renewals() >= 2 && model.renewal().is_some_and(|renewal| renewal.next.is_some())
    });
    let renewal = watch.model.renewal().cloned().expect("a renewal");
    assert!(renewal.resumed_the_same_session(), "{renewal:?}\n{}", watch.model.log_text());
    assert_eq!(renewal.session_before.as_deref(), Some(session.as_str()));
    assert!(watch.model.tokens_minted() >= 3, "a token per renewal, and the first");
    assert_eq!(watch.model.connects().fresh, 1, "never a fresh session: {:?}", watch.model.connects());
    assert!(watch.model.log_text().contains("desk-1 detached: its credential expired"), "{}", watch.model.log_text());
    settle_and_check_the_stream(&mut watch);
}

#[test]
fn a_hijack_is_refused_as_forbidden_and_the_victim_keeps_its_session_and_its_subject() {
    let mut watch = Watch::start(fast());
    watch.until("online as alice", |model| model.phase() == Phase::Online && model.subject() == Some("alice"));
    watch.backend.send(Command::Hijack);
    watch.until("the hijack's outcome", |model| model.hijack().is_some_and(|hijack| hijack.outcome.is_some()));
    let hijack = watch.model.hijack().cloned().expect("a hijack");
    let (outcome, _) = hijack.outcome.clone().expect("an outcome");
    assert!(matches!(outcome, HijackOutcome::Refused { code: ErrorCode::Forbidden, .. }), "{outcome:?}");
    assert!(hijack.victim_untouched(), "{hijack:?}\n{}", watch.model.log_text());
    assert_eq!(hijack.tasks_left, 0, "the hijacker is cleaned up");
    // A moment later the server still lists alice in the same session.
    let session = hijack.before.0.clone();
    let later = Instant::now() + ms(600);
    watch.until("a few pulses later", |_| Instant::now() >= later);
    let peer = watch.model.own_peer().expect("still online");
    assert_eq!(peer.subject.as_ref().map(|subject| subject.as_str()), Some("alice"));
    assert_eq!(Some(peer.session.to_string()), session);
    assert_eq!(watch.model.disconnects(), 0);
}

/// The embedded server's two listeners, as the model shows them.
fn listeners(model: &Model) -> Option<(String, String)> {
    match model.server() {
        ServerStatus::Running { addr, tls_addr: Some(tls_addr), .. } => Some((addr.to_string(), tls_addr.to_string())),
        _ => None,
    }
}

#[test]
fn without_the_relay_the_client_reaches_the_tls_listener_itself_and_the_switch_keeps_its_session() {
    let mut watch = Watch::start(fast());
    watch.until("online over TLS", |model| model.phase() == Phase::Online && model.own_peer().is_some_and(|p| p.tls));
    watch.backend.send(Command::Apply(Settings { via_relay: false, ..fast() }));
    watch.until("online again, not through the relay", |model| {
        model.phase() == Phase::Online && model.client().is_some_and(|(_, _, via_relay)| !via_relay)
    });
    let (plain, tls) = listeners(&watch.model).expect("both listeners");
    assert_eq!(watch.model.client().map(|(_, target, _)| target.to_owned()), Some(tls), "the TLS listener");
    watch.until("verified", |model| matches!(model.tls(), TlsView::Verified { trust: Trust::DemoCa }));
    let session = watch.model.session().map(str::to_owned).expect("online");
    let resumed = watch.model.connects().resumed;

    watch.backend.send(Command::SetTransport(Transport::Plaintext));
    watch.until("online in plaintext, the session resumed", |model| {
        model.phase() == Phase::Online
            && model.connects().resumed > resumed
            && model.own_peer().is_some_and(|peer| !peer.tls)
    });
    assert_eq!(watch.model.client().map(|(_, target, _)| target.to_owned()), Some(plain), "the plaintext listener");
    assert_eq!(watch.model.tls(), TlsView::Off);
    assert_eq!(watch.model.session(), Some(session.as_str()));
    assert_eq!(watch.model.own_peer().map(|peer| peer.session.to_string()), Some(session));
}

#[test]
fn restore_all_heals_the_wrong_ca_fault_and_the_session_resumes() {
    let mut watch = Watch::start(fast());
    watch.until("verified", |model| matches!(model.tls(), TlsView::Verified { trust: Trust::DemoCa }));
    let session = watch.model.session().map(str::to_owned).expect("online");
    watch.backend.send(Command::SetTransport(Transport::Tls(Trust::WrongCa)));
    watch.until("the handshake refused: unknown issuer", |model| {
        model.tls() == TlsView::Refused { trust: Trust::WrongCa, error: TlsError::UnknownIssuer }
    });
    watch.until("the session kept detached", |model| model.detached(Instant::now()).len() == 1);

    watch.backend.send(Command::RestoreAll);
    watch.until("verified again, the session resumed", |model| {
        matches!(model.tls(), TlsView::Verified { trust: Trust::DemoCa })
            && model.last_connect().is_some_and(|last| last.resumed)
    });
    assert_eq!(watch.model.session(), Some(session.as_str()), "{}", watch.model.log_text());
    assert_eq!(watch.model.connects().fresh, 1);
}
