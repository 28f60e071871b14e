//! The server panel (the embedded server's online list and detached sessions) and the event
//! log.

use std::time::Instant;

use eframe::egui::{self, RichText};

use crate::feed::ServerStatus;
use crate::model::Model;
use crate::words;

/// The right column: the embedded server and who is online, updated live.
pub fn server_panel(ui: &mut egui::Ui, model: &Model, now: Instant) {
    ui.label(RichText::new("Server: online list").heading().size(17.0));
    match model.server() {
        ServerStatus::Running { addr, tls_addr, interval, max_missed, .. } => {
            let tls = tls_addr.map(|tls| format!(" (TLS {tls})")).unwrap_or_default();
            ui.label(format!("{addr}{tls}, pulse every {} ms, evicts after {max_missed} missed", interval.as_millis()))
        }
        ServerStatus::Stopped => ui.label("stopped"),
        ServerStatus::Killed => ui.label("killed"),
        ServerStatus::Failed(error) => ui.label(format!("not running: {error}")),
    };
    if let Some((addr, blackhole)) = model.relay() {
        let state = match (blackhole.to_server, blackhole.to_client) {
            (false, false) => "forwarding both ways",
            (true, true) => "black-holing both ways",
            (false, true) => "black-holing server -> client",
            (true, false) => "black-holing client -> server",
        };
        ui.label(format!("Fault relay on {addr}: {state}"));
    }
    let peers = model.peers();
    ui.label(RichText::new(format!("{} online", peers.len())).strong());
    ui.separator();
    let online_height = (ui.available_height() * 0.6).max(80.0);
    let scroll = egui::ScrollArea::vertical().id_salt("peers-scroll").max_height(online_height);
    scroll.auto_shrink([false, false]).show(ui, |ui| {
        egui::Grid::new("peers").num_columns(6).striped(true).show(ui, |ui| {
            for title in ["id", "transport", "address", "since", "RTT", "misses"] {
                ui.label(RichText::new(title).strong());
            }
            ui.end_row();
            for peer in peers {
                ui.label(peer.id.as_str()).on_hover_text(format!("session {}", peer.session));
                // PeerInfo.tls: which listener the peer came through.
                if peer.tls {
                    ui.label(RichText::new("TLS").color(egui::Color32::from_rgb(46, 204, 113)))
                        .on_hover_text("came over the TLS listener");
                } else {
                    ui.label("plain").on_hover_text("came over the plaintext listener");
                }
                ui.label(peer.addr.to_string());
                ui.label(format!("{} ago", words::seconds(&now.saturating_duration_since(peer.connected_since))));
                ui.label(match peer.last_rtt {
                    Some(rtt) => format!("{:.2} ms", rtt.as_secs_f64() * 1000.0),
                    None => "-".to_owned(),
                });
                let misses = RichText::new(peer.misses.to_string());
                ui.label(if peer.misses > 0 { misses.color(ui.visuals().warn_fg_color) } else { misses });
                ui.end_row();
            }
        });
    });
    ui.separator();
    detached(ui, model, now);
}

/// The sessions the server keeps for peers whose connection was lost, counting down.
fn detached(ui: &mut egui::Ui, model: &Model, now: Instant) {
    let sessions = model.detached(now);
    let keep = match model.server() {
        ServerStatus::Running { keep, .. } => format!(", each kept {}", words::seconds(keep)),
        _ => String::new(),
    };
    ui.label(RichText::new(format!("{} detached", sessions.len())).strong()).on_hover_text(format!(
        "Server::detached(): peers whose connection was lost and whose session the server keeps{keep}, \
         queueing what it sends them. A peer back in time resumes the session; otherwise it ends and its \
         messages come back undelivered."
    ));
    if sessions.is_empty() {
        ui.label(RichText::new(format!("No session waits for its peer{keep}.")).weak());
        return;
    }
    egui::ScrollArea::vertical().id_salt("detached-scroll").auto_shrink([false, false]).show(ui, |ui| {
        egui::Grid::new("detached").num_columns(4).striped(true).show(ui, |ui| {
            for title in ["id", "session", "left", "queued"] {
                ui.label(RichText::new(title).strong());
            }
            ui.end_row();
            for kept in &sessions {
                ui.label(kept.client_id.as_str());
                ui.label(kept.session.to_string());
                ui.label(format!("{} left", words::seconds(&kept.left)));
                ui.label(format!("{} ({} bytes)", kept.queued, kept.bytes));
                ui.end_row();
            }
        });
    });
}

/// The bottom strip: every event, timestamped, newest at the bottom, selectable and copyable.
pub fn event_log(ui: &mut egui::Ui, model: &Model) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Event log").heading().size(17.0));
        ui.label(format!("{} lines; time since the app started", model.log().len()));
        if ui.button("Copy log").on_hover_text("Copy the whole log to the clipboard.").clicked() {
            ui.ctx().copy_text(model.log_text());
        }
    });
    let row_height = ui.text_style_height(&egui::TextStyle::Monospace);
    let lines: Vec<_> = model.log().collect();
    egui::ScrollArea::both().id_salt("log-scroll").auto_shrink([false, false]).stick_to_bottom(true).show_rows(
        ui,
        row_height,
        lines.len(),
        |ui, rows| {
            for line in &lines[rows] {
                ui.add(egui::Label::new(RichText::new(line.render()).monospace()).extend());
            }
        },
    );
}
