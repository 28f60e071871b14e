//! The headline (big coloured state, session, cadence, last disconnect) and the liveness row
//! (miss gauge, checker countdown, backoff countdown, round trips).

use std::time::Instant;

use eframe::egui::{self, RichText};

use super::phase_color;
use crate::model::Model;
use crate::words;

/// The top strip: what state the client is in, big, and why.
pub fn headline(ui: &mut egui::Ui, model: &Model, now: Instant) {
    let phase = model.phase();
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        ui.label(RichText::new(phase.label()).size(38.0).strong().color(phase_color(phase)));
        ui.add_space(16.0);
        ui.vertical(|ui| {
            ui.label(RichText::new(model.phase_detail(now)).size(16.0));
            ui.horizontal_wrapped(|ui| {
                let kind = match model.last_connect() {
                    Some(last) if model.session().is_some() && last.resumed => " (resumed)",
                    Some(_) if model.session().is_some() => " (fresh)",
                    _ => "",
                };
                let session = model.session().unwrap_or("-");
                ui.label(format!("Session: {session}{kind}"));
                ui.separator();
                match model.cadence() {
                    Some(cadence) => ui.label(format!(
                        "Cadence: pulse every {} ms, lost after {} missed",
                        cadence.interval.as_millis(),
                        cadence.max_missed
                    )),
                    None => ui.label("Cadence: not announced yet"),
                }
                .on_hover_text("The timing the server announced in WELCOME; the client adopts it.");
                ui.separator();
                match model.client() {
                    Some((id, target, via_relay)) => {
                        let route = if via_relay { " via the fault relay" } else { "" };
                        ui.label(format!("Client {id} -> {target}{route}"))
                    }
                    None => ui.label("No client"),
                };
            });
        });
    });
    let (text, color) = match model.last_disconnect() {
        Some(last) => (
            format!(
                "Last disconnect ({} ago): {}",
                words::seconds(&now.saturating_duration_since(last.at)),
                last.words
            ),
            ui.visuals().warn_fg_color,
        ),
        None => ("No disconnect yet.".to_owned(), ui.visuals().weak_text_color()),
    };
    let response = ui.label(RichText::new(text).color(color));
    if let Some(last) = model.last_disconnect() {
        response.on_hover_text(format!("SDK reason: {}", last.detail));
    }
    ui.add_space(4.0);
}

/// The row of live numbers: missed pulses, the checker's next tick, the backoff countdown,
/// round trips.
pub fn liveness(ui: &mut egui::Ui, model: &Model, now: Instant) {
    ui.columns(3, |columns| {
        let [misses, reconnect, rtt] = columns else { return };
        misses.vertical(|ui| {
            ui.label(RichText::new("Missed pulses").strong());
            match model.miss_gauge() {
                Some(gauge) => {
                    let color = if gauge.misses == 0 { phase_color(model.phase()) } else { ui.visuals().warn_fg_color };
                    ui.add(
                        egui::ProgressBar::new(gauge.fraction())
                            .text(format!("{} of {} missed", gauge.misses, gauge.max))
                            .fill(color),
                    );
                    if let Some(next) = model.next_check_in(now) {
                        ui.label(format!("Next check in about {}", words::seconds(&next))).on_hover_text(
                            "An estimate: the client's checker ticks every interval, half an interval \
                             after the server's pulses; this counts from the last pulse seen here.",
                        );
                    }
                }
                None => {
                    ui.add(egui::ProgressBar::new(0.0).text("not online"));
                }
            }
        });
        reconnect.vertical(|ui| {
            ui.label(RichText::new("Reconnect").strong());
            match model.retry(now) {
                Some(retry) => {
                    let total = retry.delay.as_secs_f32();
                    let done = if total > 0.0 { 1.0 - retry.left.as_secs_f32() / total } else { 1.0 };
                    ui.add(egui::ProgressBar::new(done).text(format!(
                        "attempt {} in {}",
                        retry.attempt,
                        words::seconds(&retry.left)
                    )));
                    if let Some(error) = retry.last_error {
                        ui.label(format!("Last error: {error}"));
                    }
                }
                None => {
                    ui.add(egui::ProgressBar::new(0.0).text("not backing off"));
                    ui.label(format!("Disconnects so far: {}", model.disconnects()));
                }
            }
        });
        rtt.vertical(|ui| {
            ui.label(RichText::new("Round trip").strong());
            let probe = match model.last_probe() {
                Some(Ok(rtt)) => format!("{:.2} ms", rtt.as_secs_f64() * 1000.0),
                Some(Err(error)) => error.to_string(),
                None => "-".to_owned(),
            };
            ui.label(format!("probe(): {probe}"))
                .on_hover_text("The client's own PULSE, answered at once by the server, each second.");
            let server = match model.own_peer().and_then(|peer| peer.last_rtt) {
                Some(rtt) => format!("{:.2} ms", rtt.as_secs_f64() * 1000.0),
                None => "-".to_owned(),
            };
            ui.label(format!("server's pulse: {server}")).on_hover_text(
                "How long this client took to answer the server's last PULSE, as the server measured it.",
            );
        });
    });
}
