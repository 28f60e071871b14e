//! The eframe application: drains the feed into the model each frame, draws the model, and
//! hands the user's commands to the backend.

use std::io;
use std::time::{Duration, Instant};

use eframe::egui;

use crate::backend::Backend;
use crate::feed::{self, Inbox, Wake};
use crate::model::Model;
use crate::settings::Settings;
use crate::ui::{self, Form};

/// How often a running countdown is redrawn.
const COUNTDOWN_TICK: Duration = Duration::from_millis(100);

/// The demo window's state: the model, the form, and the way to the backend.
#[derive(Debug)]
pub struct DemoApp {
    model: Model,
    inbox: Inbox,
    form: Form,
    backend: Option<Backend>,
}

impl DemoApp {
    /// Starts the backend with `settings` (embedded server, relay, client) and an app that
    /// shows it. `wake` is called from background threads whenever there is news: the real
    /// app passes `egui::Context::request_repaint_after`.
    pub fn new(settings: Settings, wake: Wake) -> io::Result<DemoApp> {
        let (feed, inbox) = feed::channel(wake);
        let backend = Backend::start(settings.clone(), feed)?;
        Ok(DemoApp { model: Model::new(Instant::now()), inbox, form: Form::new(settings), backend: Some(backend) })
    }

    /// What the window shows.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// One frame: take in what happened, draw, and pass on what the user asked for.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        for stamped in self.inbox.drain() {
            self.model.apply(stamped);
        }
        if self.model.counting_down() {
            ui.ctx().request_repaint_after(COUNTDOWN_TICK);
        }
        let commands = ui::show(ui, &self.model, &mut self.form, Instant::now());
        if let Some(backend) = &self.backend {
            for command in commands {
                backend.send(command);
            }
        }
    }

    /// Closes the clients and stops the server (blocks for a few seconds at most).
    pub fn shut_down(&mut self) {
        drop(self.backend.take());
    }
}

impl eframe::App for DemoApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        DemoApp::ui(self, ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.shut_down();
    }
}
