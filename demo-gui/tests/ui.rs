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
use demo_gui::{DemoApp, Settings};
use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

/// How long a test waits for the window to show something.
const PATIENCE: Duration = Duration::from_secs(20);

static TURN: Mutex<()> = Mutex::new(());

/// Waits for this test's turn (a failed test does not block the others).
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fast timing so that every fault plays out in a second or two: pulses every 200 ms, lost
/// after 3 missed; backoff without jitter, 300 ms then 600 ms.
fn fast_settings() -> Settings {
    Settings {
        interval_ms: 200,
        max_missed: 3,
        initial_delay_ms: 300,
        max_delay_ms: 600,
        jitter: 0.0,
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
        assert!(
            Instant::now() < deadline,
            "the window never showed {what}; event log:\n{}",
            harness.state().model().log_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
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

/// Clicks `button`; returns when it was clicked.
fn click(harness: &mut Harness<'static, DemoApp>, button: &str) -> Instant {
    let at = Instant::now();
    harness.get_by_label(button).click();
    harness.run_ok();
    at
}

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
        harness.state().model().log_text().contains("client  message from the server: \"hello\" (5 bytes)")
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
