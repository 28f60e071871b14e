//! Headless UI tests: the real window code, driven by egui_kittest (no display, no GPU),
//! clicking the real buttons against a real embedded server, relay and client on loopback.
//! Each test asserts what the window shows, by the labels a person would read.
//!
//! The tests take turns (one lock): each runs a real server and client on a fast cadence, and
//! on a loaded 2-core machine several at once would starve each other's heartbeats.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use demo_gui::model::Phase;
use demo_gui::model::TlsView;
use demo_gui::pki::Trust;
use demo_gui::stream::Direction;
use demo_gui::{DemoApp, Settings};
use eframe::egui;
use eframe::egui::accesskit::Role;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;

/// How long a test waits for the window to show something.
const PATIENCE: Duration = Duration::from_secs(20);

static TURN: Mutex<()> = Mutex::new(());

/// Waits for this test's turn (a failed test does not block the others).
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fast timing so that every fault plays out in a second or two: pulses every 200 ms, lost
/// after 3 missed; backoff without jitter, 300 ms then 600 ms. Tokens live 10 minutes, so that
/// no test but the one that expires a token sees a renewal.
fn fast_settings() -> Settings {
    Settings {
        interval_ms: 200,
        max_missed: 3,
        initial_delay_ms: 300,
        max_delay_ms: 600,
        jitter: 0.0,
        token_lifetime_s: 600,
        ..Settings::default()
    }
}

/// The app in a headless harness; its backend runs for real. Nothing wakes the harness: the
/// tests step it themselves.
fn harness() -> Harness<'static, DemoApp> {
    let app = DemoApp::new(fast_settings(), Arc::new(|_| {})).expect("the backend starts");
    Harness::builder().with_size(egui::vec2(1360.0, 900.0)).build_ui_state(|ui, app: &mut DemoApp| app.ui(ui), app)
}

/// Steps the harness until `shown` holds, for at most [`PATIENCE`].
#[track_caller]
fn wait_until(
    harness: &mut Harness<'static, DemoApp>,
    what: &str,
    mut shown: impl FnMut(&Harness<'static, DemoApp>) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        harness.run_ok();
        if shown(harness) {
            return;
        }
        assert!(Instant::now() < deadline, "the window never showed {what}; {}", report(harness));
        thread::sleep(Duration::from_millis(10));
    }
}

/// What the model holds, for a failure message: the stream and outcome numbers, the outbox,
/// and the event log.
fn report(harness: &Harness<'static, DemoApp>) -> String {
    let model = harness.state().model();
    let now = Instant::now();
    let mut text = String::new();
    for direction in Direction::BOTH {
        let summary = model.delivery().summary(direction, now);
        let outcomes = model.delivery().outcomes(direction);
        let open = model.delivery().open(direction);
        text.push_str(&format!("{}: {summary:?}\n  every message: {outcomes:?}, open {open}\n", direction.label()));
    }
    text.push_str(&format!("outbox: {:?}\nevent log:\n{}", model.outbox(), model.log_text()));
    text
}

#[track_caller]
fn wait_for_label(harness: &mut Harness<'static, DemoApp>, label: &str) {
    wait_until(harness, &format!("{label:?}"), |harness| harness.query_by_label(label).is_some());
}

/// Waits until the window shows `phase`: in the headline, or — for a phase that lasts less
/// than a frame on a loaded machine — as a bar on the state timeline chart, entered after
/// `since`.
#[track_caller]
fn wait_for_phase(harness: &mut Harness<'static, DemoApp>, phase: Phase, since: Instant) {
    wait_until(harness, &format!("{:?} in the headline or on the timeline", phase.label()), |harness| {
        let now = Instant::now();
        let after = -now.saturating_duration_since(since).as_secs_f64();
        let timeline = harness.state().model().timeline().points(now);
        let on_timeline = timeline.iter().any(|point| point[0] >= after && point[1] == phase.level());
        harness.query_by_label(phase.label()).is_some() || on_timeline
    });
}

#[track_caller]
fn wait_for_text(harness: &mut Harness<'static, DemoApp>, text: &str) {
    wait_until(harness, &format!("a label containing {text:?}"), |harness| {
        harness.query_all_by_label_contains(text).next().is_some()
    });
}

/// The text of the first label that contains `text`, as the window shows it.
fn shown(harness: &Harness<'static, DemoApp>, text: &str) -> Option<String> {
    // A label's text is its accessibility value.
    let node = harness.query_all_by_label_contains(text).next()?;
    node.accesskit_node().value().or_else(|| node.accesskit_node().label())
}

/// The stream check's line for `direction`: `client->server: sent 12 · received 12 · lost 0 …`.
fn stream_line(harness: &Harness<'static, DemoApp>, direction: Direction) -> Option<String> {
    shown(harness, &format!("{}: sent ", direction.label()))
}

/// The outcome line for `direction`: `client→server: delivered 12 · maybe delivered 0 …`.
fn outcome_line(harness: &Harness<'static, DemoApp>, direction: Direction) -> Option<String> {
    shown(harness, &format!("{}: delivered ", direction.label()))
}

/// The number after `name ` in a line of `name value · name value` parts.
fn count(line: &str, name: &str) -> Option<u64> {
    line.split(" · ").find_map(|part| part.rsplit_once(' ').filter(|(key, _)| key.ends_with(name)))?.1.parse().ok()
}

/// How many stream messages the window shows received, client → server and server → client.
fn received_both_ways(harness: &Harness<'static, DemoApp>) -> Option<(u64, u64)> {
    let received = |direction| count(&stream_line(harness, direction)?, "received");
    Some((received(Direction::ClientToServer)?, received(Direction::ServerToClient)?))
}

/// Waits until both directions show more than `at_least` received.
#[track_caller]
fn wait_for_received(harness: &mut Harness<'static, DemoApp>, what: &str, at_least: (u64, u64)) -> (u64, u64) {
    wait_until(harness, what, |harness| {
        received_both_ways(harness).is_some_and(|(c2s, s2c)| c2s > at_least.0 && s2c > at_least.1)
    });
    received_both_ways(harness).unwrap_or_default()
}

/// Turns the stream off and waits until every number it sent has its outcome and everything
/// shown is settled: nothing in flight, nothing missing, the client's outbox empty.
#[track_caller]
fn stop_stream_and_settle(harness: &mut Harness<'static, DemoApp>) {
    click(harness, "Stream");
    wait_until(harness, "the stream off and every message settled", |harness| {
        let model = harness.state().model();
        let now = Instant::now();
        let settled = Direction::BOTH.iter().all(|&direction| {
            let summary = model.delivery().summary(direction, now);
            summary.in_flight() == 0 && summary.missing == 0 && model.delivery().open(direction) == 0
        });
        let empty = model.outbox().is_some_and(|outbox| (outbox.queued, outbox.unacked) == (0, 0));
        !model.streaming() && settled && empty
    });
}

/// Asserts that the window shows nothing lost and nothing duplicated, both ways.
#[track_caller]
fn assert_nothing_lost_or_duplicated(harness: &Harness<'static, DemoApp>) {
    for direction in Direction::BOTH {
        let line = stream_line(harness, direction).expect("the stream line is shown");
        assert!(line.contains("lost 0 · duplicated 0"), "{line}\n{}", report(harness));
    }
}

/// Clicks `button`; returns when it was clicked.
fn click(harness: &mut Harness<'static, DemoApp>, button: &str) -> Instant {
    let at = Instant::now();
    harness.get_by_label(button).click();
    harness.run_ok();
    at
}

/// Clicks the button `label` (a label of the same text elsewhere does not count).
fn click_button(harness: &mut Harness<'static, DemoApp>, label: &str) -> Instant {
    let at = Instant::now();
    harness.get_by_role_and_label(Role::Button, label).click();
    harness.run_ok();
    at
}

/// How many peers the online list marks as on TLS and as plaintext.
fn transports(harness: &Harness<'static, DemoApp>) -> (usize, usize) {
    let marked = |text| harness.query_all_by_role_and_label(Role::Label, text).count();
    (marked("TLS"), marked("plain"))
}

const VERIFIED: &str = "TLS: on (verified: pulsewire demo CA)";

#[test]
fn killing_the_server_shows_backing_off_until_a_restart_brings_the_client_back_online() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, "1 online");

    click(&mut harness, "Kill server");
    wait_for_label(&mut harness, "Backing off");
    assert!(harness.query_by_label("Online").is_none());
    wait_for_text(&mut harness, "Last disconnect");
    wait_for_label(&mut harness, "0 online");

    click(&mut harness, "Start server");
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, "1 online");
    assert_eq!(harness.state().model().disconnects(), 1);
}

#[test]
fn freezing_server_pulses_makes_the_client_suspect_then_lost_until_restored() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    let frozen = click(&mut harness, "Freeze server pulses");
    wait_for_phase(&mut harness, Phase::Suspect, frozen);
    wait_for_text(&mut harness, "pulses in a row never came");
    wait_for_phase(&mut harness, Phase::BackingOff, frozen);

    click(&mut harness, "Restore all");
    wait_for_label(&mut harness, "Online");
}

#[test]
fn a_client_that_stops_answering_is_evicted_by_the_server_and_comes_back_after_restore() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    click(&mut harness, "Client stops answering");
    wait_for_text(&mut harness, "stopped hearing from this client and evicted it");

    click(&mut harness, "Restore all");
    wait_for_label(&mut harness, "Online");
}

#[test]
fn a_black_holed_link_is_noticed_by_missed_pulses_alone() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    let cut_off = click(&mut harness, "Black-hole link");
    wait_for_phase(&mut harness, Phase::Suspect, cut_off);
    wait_for_text(&mut harness, "pulses in a row never came");

    click(&mut harness, "Black-hole link"); // the same button restores
    wait_for_label(&mut harness, "Online");
}

#[test]
fn a_sent_message_comes_back_as_the_servers_echo() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    click(&mut harness, "Send");
    wait_until(&mut harness, "the echo in the event log", |harness| {
        harness.state().model().log_text().contains("client  message 1 from the server: \"hello\" (5 bytes)")
    });
}

#[test]
fn closing_the_client_shows_closed_and_why() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    click(&mut harness, "Close");
    wait_for_label(&mut harness, "Closed");
    wait_for_text(&mut harness, "Closed by this app (it said BYE).");
    wait_for_label(&mut harness, "0 online");

    click(&mut harness, "Connect");
    wait_for_label(&mut harness, "Online");
}

#[test]
fn extra_clients_fill_the_online_list_and_come_back_after_a_restart() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    click(&mut harness, "Spawn");
    wait_for_label(&mut harness, "51 online");
    wait_for_text(&mut harness, "50 running: 50 online");

    click(&mut harness, "Restart server");
    wait_until(&mut harness, "the restart in the event log", |harness| {
        harness.state().model().log_text().contains("embedded server stopped")
    });
    wait_for_label(&mut harness, "51 online");
    wait_for_text(&mut harness, "50 running: 50 online");
    let counts: Vec<f64> =
        harness.state().model().online_count().points(Instant::now()).iter().map(|point| point[1]).collect();
    assert!(counts.contains(&0.0), "the chart shows the drop to 0: {counts:?}");
    assert_eq!(counts.last(), Some(&51.0));
}

#[test]
fn cutting_the_link_is_seen_at_once_and_the_client_reconnects() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");

    click(&mut harness, "Cut link");
    wait_for_text(&mut harness, "The server closed the connection without a word");
    wait_for_label(&mut harness, "Online");
}

#[test]
fn streaming_through_a_cut_link_resumes_the_session_and_loses_nothing_either_way() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    click(&mut harness, "Stream");
    let before = wait_for_received(&mut harness, "stream messages arriving both ways", (10, 10));
    let disconnects = harness.state().model().disconnects();

    click(&mut harness, "Cut link");
    wait_until(&mut harness, "the cut noticed", |harness| harness.state().model().disconnects() > disconnects);
    wait_until(&mut harness, "online again, the session resumed", |harness| {
        harness.state().model().phase() == Phase::Online && shown(harness, "Last connect: resumed session").is_some()
    });
    let after =
        wait_for_received(&mut harness, "more stream messages than before the cut", (before.0 + 20, before.1 + 20));
    assert_nothing_lost_or_duplicated(&harness);

    stop_stream_and_settle(&mut harness);
    assert_nothing_lost_or_duplicated(&harness);
    for (direction, before, after) in
        [(Direction::ClientToServer, before.0, after.0), (Direction::ServerToClient, before.1, after.1)]
    {
        let line = stream_line(&harness, direction).expect("shown");
        let (sent, received) = (count(&line, "sent"), count(&line, "received"));
        assert_eq!(sent, received, "a resumed session delivers every number: {line}");
        assert!(received >= Some(after) && after > before, "{line}: {before} before the cut");
    }
    assert!(harness.state().model().connects().resumed >= 1);
}

#[test]
fn a_killed_server_starts_a_fresh_session_and_hands_back_what_may_have_arrived() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    click(&mut harness, "Stream");
    let before = wait_for_received(&mut harness, "stream messages arriving both ways", (10, 10));

    click(&mut harness, "Kill server");
    wait_for_label(&mut harness, "Backing off");
    // Offline, the client's stream messages wait in its outbox.
    wait_until(&mut harness, "messages queued in the outbox", |harness| {
        let queued = |line: String| line.strip_prefix("Outbox: ")?.split_once(" queued")?.0.parse::<u64>().ok();
        shown(harness, "Outbox: ").and_then(queued).is_some_and(|queued| queued > 0)
    });

    click(&mut harness, "Start server");
    wait_until(&mut harness, "online again in a fresh session", |harness| {
        harness.state().model().phase() == Phase::Online && shown(harness, "Last connect: fresh session").is_some()
    });
    wait_for_received(&mut harness, "more stream messages than before the kill", (before.0 + 20, before.1 + 20));

    stop_stream_and_settle(&mut harness);
    assert_nothing_lost_or_duplicated(&harness);
    let model = harness.state().model();
    assert_eq!(model.connects().fresh, 2, "the first connect and the one after the kill");
    // What the window shows is what the model counted from the client's Undelivered events.
    let counted = model.delivery().outcomes(Direction::ClientToServer);
    let line = outcome_line(&harness, Direction::ClientToServer).expect("the outcome line is shown");
    assert_eq!(count(&line, "maybe delivered"), Some(counted.maybe_delivered), "{line}");
    assert_eq!(count(&line, "delivered"), Some(counted.delivered), "{line}");
    // Every stream number ended in exactly one outcome; the handed-back ones were told in the log.
    let c2s = model.delivery().summary(Direction::ClientToServer, Instant::now());
    assert_eq!(c2s.sent, c2s.outcomes.total(), "{c2s:?}");
    if c2s.outcomes.maybe_delivered > 0 {
        let told = format!("{} stream message(s) handed back as maybe delivered", c2s.outcomes.maybe_delivered);
        assert!(model.log_text().contains(&told), "{told:?} in the log:\n{}", model.log_text());
    }
    // The killed server never settled what it had accepted: gone, not lost.
    let s2c = model.delivery().summary(Direction::ServerToClient, Instant::now());
    assert_eq!(s2c.sent, s2c.outcomes.total(), "{s2c:?}");
}

#[test]
fn a_silent_client_is_kept_detached_and_resumes_its_stream_after_restore() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    click(&mut harness, "Stream");
    let before = wait_for_received(&mut harness, "stream messages arriving both ways", (10, 10));

    click(&mut harness, "Client stops answering");
    wait_for_text(&mut harness, "stopped hearing from this client and evicted it");
    wait_for_label(&mut harness, "1 detached");
    // The server keeps sending to the detached session: its queue grows.
    wait_until(&mut harness, "server messages queued in the detached session", |harness| {
        harness.state().model().detached(Instant::now()).first().is_some_and(|kept| kept.queued > 5)
    });

    click(&mut harness, "Restore all");
    wait_until(&mut harness, "online again, the session resumed", |harness| {
        harness.state().model().phase() == Phase::Online && shown(harness, "Last connect: resumed session").is_some()
    });
    wait_for_label(&mut harness, "0 detached");
    wait_for_received(&mut harness, "more stream messages than before", (before.0 + 20, before.1 + 20));
    stop_stream_and_settle(&mut harness);
    assert_nothing_lost_or_duplicated(&harness);
}

/// The main client's session id, as the headline shows it (`Session: 3f2a… (fresh)`).
fn headline_session(harness: &Harness<'static, DemoApp>) -> Option<String> {
    let line = shown(harness, "Session: ")?;
    let session = line.strip_prefix("Session: ")?.split(' ').next()?;
    (session != "-").then(|| session.to_owned())
}

#[test]
fn a_hijack_with_another_subjects_token_is_refused_and_the_victim_stays_online_in_its_session() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, "Subject: alice");
    wait_for_label(&mut harness, VERIFIED);
    let session = headline_session(&harness).expect("a session while online");
    let disconnects = harness.state().model().disconnects();

    click(&mut harness, "Hijack id");
    wait_for_text(&mut harness, "hijack refused: forbidden");
    wait_for_text(&mut harness, &format!("desk-1 stayed online: session {session} unchanged, no disconnect"));
    // Several pulse intervals later the victim is still there, untouched.
    let later = Instant::now() + Duration::from_secs(1);
    wait_until(&mut harness, "a second after the refusal", |_| Instant::now() >= later);
    assert!(harness.query_by_label("Online").is_some(), "{}", report(&harness));
    assert_eq!(headline_session(&harness).as_deref(), Some(session.as_str()), "the same session");
    assert!(harness.query_by_label("Subject: alice").is_some(), "the server still lists alice");
    let model = harness.state().model();
    assert_eq!(model.disconnects(), disconnects, "no disconnect: {}", model.log_text());
    let peer = model.own_peer().expect("in the online list");
    assert_eq!(peer.session.to_string(), session, "the server kept alice's session");
    assert!(model.log_text().contains("the hijacker closed, 0 task(s) of it left"), "{}", model.log_text());
}

#[test]
fn an_expired_token_is_renewed_and_the_session_resumes_with_nothing_lost_either_way() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, "Tokens minted: 1");
    wait_for_text(&mut harness, "Token #1 expires in ");
    let session = headline_session(&harness).expect("a session while online");
    click(&mut harness, "Stream");
    let before = wait_for_received(&mut harness, "stream messages arriving both ways", (10, 10));

    click(&mut harness, "Expire token");
    wait_for_text(&mut harness, "cut short by the server");
    let renewed = format!("Last renewal: auth-expired, token #2, session {session} resumed");
    wait_for_text(&mut harness, &renewed);
    wait_for_label(&mut harness, "Tokens minted: 2");
    let model = harness.state().model();
    assert!(model.log_text().contains("auth-expired"), "the server said auth-expired: {}", model.log_text());
    let last = model.last_disconnect().expect("the expiry ended a connection");
    assert!(last.words.contains("credential expired"), "{}", last.words);
    assert_eq!(headline_session(&harness).as_deref(), Some(session.as_str()), "the same session");
    wait_for_received(&mut harness, "more stream messages than before the expiry", (before.0 + 20, before.1 + 20));
    assert_nothing_lost_or_duplicated(&harness);

    stop_stream_and_settle(&mut harness);
    assert_nothing_lost_or_duplicated(&harness);
    for direction in Direction::BOTH {
        let line = stream_line(&harness, direction).expect("shown");
        assert_eq!(count(&line, "sent"), count(&line, "received"), "every number arrived: {line}");
    }
    let connects = harness.state().model().connects();
    assert_eq!(connects.fresh, 1, "only the first connect opened a session: {connects:?}");
    assert!(harness.state().model().renewals() >= 1);
}

#[test]
fn the_client_is_on_tls_by_default_and_the_tls_switch_moves_it_to_plaintext_and_back_resuming_its_session() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, VERIFIED);
    wait_until(&mut harness, "the online list marking the client as on TLS", |harness| transports(harness) == (1, 0));
    let session = headline_session(&harness).expect("a session while online");
    click(&mut harness, "Stream");
    let before = wait_for_received(&mut harness, "stream messages arriving both ways", (10, 10));

    click_button(&mut harness, "TLS");
    wait_until(&mut harness, "plaintext, online again in the same session", |harness| {
        let model = harness.state().model();
        harness.query_by_label("TLS: off (plaintext)").is_some()
            && model.phase() == Phase::Online
            && model.connects().resumed == 1
            && transports(harness) == (0, 1)
    });
    assert_eq!(headline_session(&harness).as_deref(), Some(session.as_str()), "{}", report(&harness));
    assert!(harness.state().model().log_text().contains("stopped without BYE"), "{}", report(&harness));
    let middle = wait_for_received(&mut harness, "the stream flowing in plaintext", (before.0 + 20, before.1 + 20));

    click_button(&mut harness, "TLS");
    wait_until(&mut harness, "TLS again, online in the same session", |harness| {
        let model = harness.state().model();
        harness.query_by_label(VERIFIED).is_some() && model.connects().resumed == 2 && transports(harness) == (1, 0)
    });
    assert_eq!(headline_session(&harness).as_deref(), Some(session.as_str()), "{}", report(&harness));
    wait_for_received(&mut harness, "the stream flowing over TLS again", (middle.0 + 20, middle.1 + 20));

    stop_stream_and_settle(&mut harness);
    assert_nothing_lost_or_duplicated(&harness);
    for direction in Direction::BOTH {
        let line = stream_line(&harness, direction).expect("shown");
        assert_eq!(count(&line, "sent"), count(&line, "received"), "every number arrived: {line}");
    }
    let connects = harness.state().model().connects();
    assert_eq!(connects.fresh, 1, "only the first connect opened a session: {connects:?}");
    assert_eq!(harness.state().model().disconnects(), 0, "a handover is no disconnect: {}", report(&harness));
}

#[test]
fn a_client_trusting_the_wrong_ca_is_refused_with_a_typed_error_and_backs_off_until_trust_is_restored() {
    let _turn = turn();
    let mut harness = harness();
    wait_for_label(&mut harness, "Online");
    wait_for_label(&mut harness, VERIFIED);
    let session = headline_session(&harness).expect("a session while online");

    let wrong = click(&mut harness, "Wrong CA");
    let refused = "TLS: on, handshake refused: the server's certificate is signed by an unknown authority (trusting \
                   another demo CA)";
    wait_for_label(&mut harness, refused);
    wait_for_phase(&mut harness, Phase::BackingOff, wrong);
    // The client keeps trying, and every attempt is refused in the same typed words.
    let typed = "last error: the server's certificate is signed by an unknown authority";
    wait_until(&mut harness, "three refused attempts in the event log", |harness| {
        harness.state().model().log_text().matches(typed).count() >= 3
    });
    assert!(harness.state().model().log_text().contains("before attempt 3"), "{}", report(&harness));
    // Never online meanwhile: the server keeps the session detached for it.
    wait_for_label(&mut harness, "1 detached");
    wait_for_label(&mut harness, "0 online");
    let model = harness.state().model();
    assert_eq!(model.tls().trust(), Some(Trust::WrongCa));
    assert_eq!(model.connects().resumed, 0, "no handshake got through: {}", report(&harness));

    click(&mut harness, "Wrong CA");
    wait_until(&mut harness, "trusting the demo CA again, online in the same session", |harness| {
        let model = harness.state().model();
        harness.query_by_label(VERIFIED).is_some() && model.phase() == Phase::Online && model.connects().resumed == 1
    });
    assert_eq!(headline_session(&harness).as_deref(), Some(session.as_str()), "{}", report(&harness));
    assert!(matches!(harness.state().model().tls(), TlsView::Verified { trust: Trust::DemoCa }));
    wait_for_label(&mut harness, "0 detached");
    wait_until(&mut harness, "the online list marking it as on TLS", |harness| transports(harness) == (1, 0));
}
