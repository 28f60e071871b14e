//! Drawing the window from the [`Model`]; clicks become [`Command`]s for the backend.
//!
//! Nothing here touches the network or asks for repaints on the network's behalf: the only
//! repaint requested here is the short timer that animates a countdown while one runs.

mod charts;
mod controls;
mod delivery;
mod identity;
mod lists;
mod status;

use std::time::Instant;

use eframe::egui;

use crate::backend::Command;
use crate::model::{Model, Phase};
use crate::settings::{Settings, Target};

/// The colour of each phase, for the headline and the timeline.
pub fn phase_color(phase: Phase) -> egui::Color32 {
    match phase {
        Phase::Online => egui::Color32::from_rgb(46, 204, 113),
        Phase::Suspect => egui::Color32::from_rgb(241, 196, 15),
        Phase::BackingOff => egui::Color32::from_rgb(230, 126, 34),
        Phase::Connecting => egui::Color32::from_rgb(52, 152, 219),
        Phase::Offline => egui::Color32::from_rgb(149, 165, 166),
        Phase::Closed => egui::Color32::from_rgb(231, 76, 60),
    }
}

/// What the user is editing: the settings form and the message box. Apply hands the draft to
/// the backend.
#[derive(Debug, Clone)]
pub struct Form {
    /// The settings being edited.
    pub draft: Settings,
    /// The external server address being typed (kept while "embedded" is selected).
    pub external_addr: String,
    /// The message to send.
    pub message: String,
    /// How many extra clients Spawn starts.
    pub extra_clients: usize,
    /// Why the last Apply was refused.
    pub error: Option<String>,
}

impl Form {
    /// A form showing `settings`.
    pub fn new(settings: Settings) -> Form {
        let external_addr = match &settings.target {
            Target::External(addr) => addr.clone(),
            Target::Embedded => "127.0.0.1:7878".to_owned(),
        };
        Form { draft: settings, external_addr, message: "hello".to_owned(), extra_clients: 50, error: None }
    }
}

/// Draws the whole window for `model` at `now` and returns what the user asked for.
pub fn show(ui: &mut egui::Ui, model: &Model, form: &mut Form, now: Instant) -> Vec<Command> {
    let mut commands = Vec::new();
    egui::Panel::top("headline").show(ui, |ui| status::headline(ui, model, now));
    egui::Panel::bottom("log").resizable(true).default_size(200.0).show(ui, |ui| {
        lists::event_log(ui, model);
    });
    egui::Panel::left("controls").resizable(false).exact_size(310.0).show(ui, |ui| {
        egui::ScrollArea::vertical().id_salt("controls-scroll").show(ui, |ui| {
            controls::show(ui, model, form, &mut commands);
        });
    });
    egui::Panel::right("server").resizable(true).default_size(370.0).show(ui, |ui| {
        lists::server_panel(ui, model, now);
    });
    egui::CentralPanel::default().show(ui, |ui| {
        status::liveness(ui, model, now);
        ui.separator();
        identity::show(ui, model, now);
        ui.separator();
        delivery::show(ui, model, now);
        ui.separator();
        charts::show(ui, model, now);
    });
    commands
}
