//! What protocol 2 adds, live: whether the last connect resumed the session, the client's
//! outbox, every message's outcome both ways, and the stream's check of what arrived.

use std::time::Instant;

use eframe::egui::{self, RichText};

use crate::model::Model;
use crate::stream::{self, Direction};
use crate::words;

const RESUMED: egui::Color32 = egui::Color32::from_rgb(46, 204, 113);
const FRESH: egui::Color32 = egui::Color32::from_rgb(52, 152, 219);

/// The protocol 2 block of the central panel.
pub fn show(ui: &mut egui::Ui, model: &Model, now: Instant) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("Session").strong());
        match model.last_connect() {
            Some(last) => {
                let (kind, color, hover) = if last.resumed {
                    (
                        "resumed",
                        RESUMED,
                        "The server still had the session: both sides replayed what the other had not \
                         acknowledged, so nothing was lost or delivered twice.",
                    )
                } else {
                    (
                        "fresh",
                        FRESH,
                        "A new session: the first connect, or the server no longer had the old one (restarted, \
                         or kept it for less time than the client was away). Messages the old one wrote but \
                         never saw acknowledged came back as maybe delivered.",
                    )
                };
                let ago = words::seconds(&now.saturating_duration_since(last.at));
                let text = format!("Last connect: {kind} session {} ({ago} ago)", last.session);
                ui.label(RichText::new(text).strong().color(color)).on_hover_text(hover);
            }
            None => {
                ui.label(RichText::new("Last connect: none yet").weak());
            }
        }
        let connects = model.connects();
        ui.label(format!("{} fresh, {} resumed so far", connects.fresh, connects.resumed));
    });
    ui.horizontal_wrapped(|ui| {
        let outbox = match model.outbox() {
            Some(outbox) => {
                format!("Outbox: {} queued · {} unacknowledged · {} bytes", outbox.queued, outbox.unacked, outbox.bytes)
            }
            None => "Outbox: -".to_owned(),
        };
        ui.label(outbox).on_hover_text(
            "Client::outbox(), read 4 times a second: messages accepted and not written yet (queued), and \
             written but not acknowledged by the server's application (unacknowledged).",
        );
    });
    ui.label(RichText::new("Outcomes of every message").strong()).on_hover_text(
        "Each sender's SDK ends every reliable message in exactly one outcome: delivered (acknowledged by the \
         other application), handed back as maybe delivered (written, fate unknown) or not delivered (never \
         left), or expired (its time to live passed in the outbox). A killed server says nothing more: what it \
         had accepted is gone with it. Open: no outcome yet.",
    );
    for direction in Direction::BOTH {
        let counts = model.delivery().outcomes(direction);
        let open = model.delivery().open(direction);
        let last = match direction {
            Direction::ClientToServer => format!("expired {}", counts.expired),
            Direction::ServerToClient => format!("gone with a killed server {}", counts.gone),
        };
        ui.label(format!(
            "{}: delivered {} · maybe delivered {} · not delivered {} · {last} · open {open}",
            direction.label(),
            counts.delivered,
            counts.maybe_delivered,
            counts.not_delivered,
        ));
    }
    let title = if model.streaming() {
        format!("Stream check: on, {} numbered messages a second each way", stream::RATE)
    } else {
        "Stream check: off".to_owned()
    };
    ui.label(RichText::new(title).strong()).on_hover_text(format!(
        "Lost: a number the receiver never got, though the sender saw it delivered or the receiver got a later \
         one, and that the sender did not get back either (handed back, expired, refused or gone with a killed \
         server); it counts once it has been missing for {} s. Duplicated: a number received twice.",
        stream::GRACE.as_secs()
    ));
    for direction in Direction::BOTH {
        let summary = model.delivery().summary(direction, now);
        let broken = summary.lost > 0 || summary.duplicated > 0;
        let text = RichText::new(summary.line(direction));
        let text = if broken { text.color(ui.visuals().error_fg_color).strong() } else { text };
        let mut hover = format!(
            "{} in flight (no outcome yet), {} missing right now (on their way, or lost after {} s)",
            summary.in_flight(),
            summary.missing,
            stream::GRACE.as_secs()
        );
        if let Some(reason) = &summary.last_refusal {
            hover.push_str(&format!("\nlast refusal: {reason}"));
        }
        ui.label(text).on_hover_text(hover);
    }
}
