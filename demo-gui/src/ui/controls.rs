//! The left column: the embedded server, the client and its stream switch, the faults, the
//! extra clients and the settings. Every button only queues a [`Command`].

use eframe::egui::{self, RichText};

use super::Form;
use crate::auth::{AUTH_GRACE, CUT_SHORT_TO, HIJACKER, SUBJECT};
use crate::backend::{Command, Transport};
use crate::feed::ServerStatus;
use crate::model::Model;
use crate::pki::{Trust, DEMO_CA, WRONG_CA};
use crate::relay::Blackhole;
use crate::settings::Target;
use crate::stream;
use crate::words;

/// Draws every control group.
pub fn show(ui: &mut egui::Ui, model: &Model, form: &mut Form, commands: &mut Vec<Command>) {
    server(ui, model, commands);
    ui.separator();
    client(ui, model, form, commands);
    ui.separator();
    faults(ui, model, commands);
    ui.separator();
    extras(ui, model, form, commands);
    ui.separator();
    settings(ui, form, commands);
}

fn heading(ui: &mut egui::Ui, text: &str) {
    ui.label(RichText::new(text).heading().size(17.0));
}

fn button(ui: &mut egui::Ui, enabled: bool, text: &str, hover: &str) -> bool {
    ui.add_enabled(enabled, egui::Button::new(text)).on_hover_text(hover).clicked()
}

fn server(ui: &mut egui::Ui, model: &Model, commands: &mut Vec<Command>) {
    heading(ui, "Embedded server");
    let running = matches!(model.server(), ServerStatus::Running { .. });
    ui.label(match model.server() {
        ServerStatus::Running { addr, tls_addr: Some(tls_addr), .. } => format!("Running on {addr}, TLS on {tls_addr}"),
        ServerStatus::Running { addr, .. } => format!("Running on {addr}"),
        ServerStatus::Stopped => "Stopped".to_owned(),
        ServerStatus::Killed => "Killed".to_owned(),
        ServerStatus::Failed(error) => format!("Failed: {error}"),
    });
    ui.horizontal(|ui| {
        if button(ui, !running, "Start server", "Start it again on the same port.") {
            commands.push(Command::StartServer);
        }
        if button(ui, running, "Stop server", "Graceful: every peer gets BYE shutdown, then it stops.") {
            commands.push(Command::StopServer);
        }
        if button(ui, true, "Restart server", "Stop gracefully (if running), then start on the same port.") {
            commands.push(Command::RestartServer);
        }
    });
}

fn client(ui: &mut egui::Ui, model: &Model, form: &mut Form, commands: &mut Vec<Command>) {
    heading(ui, "Client");
    ui.horizontal(|ui| {
        if button(ui, true, "Connect", "Start the client (a new one, if one is running).") {
            commands.push(Command::Connect);
        }
        if button(ui, true, "Close", "Close the client: queued messages are flushed, it says BYE and stops.") {
            commands.push(Command::Close);
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Message:");
        let edit = ui.add(egui::TextEdit::singleline(&mut form.message).desired_width(150.0)).labelled_by(label.id);
        let entered = edit.lost_focus() && ui.input(|input| input.key_pressed(egui::Key::Enter));
        if button(ui, true, "Send", "Send the text; the embedded server echoes it back.") || entered {
            commands.push(Command::Send(form.message.clone()));
        }
    });
    streaming(ui, model, commands);
    transport(ui, model, commands);
}

/// The TLS switch: the client is restarted over the server's other listener and resumes its
/// session.
fn transport(ui: &mut egui::Ui, model: &Model, commands: &mut Vec<Command>) {
    let on = model.tls().on();
    // Only the embedded server has the demo certificate.
    let possible = model.logs_in() && matches!(model.server(), ServerStatus::Running { tls_addr: Some(_), .. });
    ui.horizontal(|ui| {
        let hover = format!(
            "Restart the client over the server's {} listener. It hands its session over: once everything it \
             sent is acknowledged it stops without BYE, and the new client resumes the session, nothing lost. \
             Over TLS it trusts only {DEMO_CA}, made at start with the server's certificate.",
            if on { "plaintext" } else { "TLS" }
        );
        let response = ui.add_enabled(possible, egui::Button::new("TLS").selected(on)).on_hover_text(hover);
        if response.clicked() {
            commands.push(Command::SetTransport(if on { Transport::Plaintext } else { Transport::default() }));
        }
        if on {
            ui.colored_label(ui.visuals().warn_fg_color, "on: the TLS listener");
        } else {
            ui.label(RichText::new("off: the plaintext listener").weak());
        }
    });
}

/// The stream switch: numbered messages both ways, checked by their receivers.
fn streaming(ui: &mut egui::Ui, model: &Model, commands: &mut Vec<Command>) {
    let on = model.streaming();
    ui.horizontal(|ui| {
        let hover = format!(
            "While on, {rate} numbered messages a second go each way: \"c2s 1\", \"c2s 2\", ... with \
             Client::send (each may wait {ttl} s in the outbox before it expires), \"s2c 1\", ... with \
             Server::send. Each receiver checks the numbers: cut, freeze or kill things and watch that nothing \
             is lost or duplicated.",
            rate = stream::RATE,
            ttl = stream::TTL.as_secs()
        );
        let response = ui.add(egui::Button::new("Stream").selected(on)).on_hover_text(hover);
        if response.clicked() {
            commands.push(Command::SetStream(!on));
        }
        if on {
            ui.colored_label(ui.visuals().warn_fg_color, format!("on: {}/s each way", stream::RATE));
        } else {
            ui.label(RichText::new("off: numbered messages both ways").weak());
        }
    });
}

fn faults(ui: &mut egui::Ui, model: &Model, commands: &mut Vec<Command>) {
    heading(ui, "Faults");
    let running = matches!(model.server(), ServerStatus::Running { .. });
    if button(ui, running, "Kill server", "Abort the embedded server: every connection is cut without BYE, as a crash.")
    {
        commands.push(Command::KillServer);
    }
    let relay = model.relay();
    let has_relay = relay.is_some();
    let blackhole = relay.map(|(_, blackhole)| blackhole).unwrap_or_default();
    let via_relay = model.client().is_some_and(|(_, _, via_relay)| via_relay);
    let toggles = [
        (
            "Freeze server pulses",
            Blackhole { to_server: false, to_client: true },
            "The relay stops forwarding server -> client without closing anything: the client must notice by \
             missed pulses.",
        ),
        (
            "Client stops answering",
            Blackhole { to_server: true, to_client: false },
            "The relay stops forwarding client -> server without closing anything: the server must evict the \
             client.",
        ),
        (
            "Black-hole link",
            Blackhole::BOTH,
            "Nothing passes either way and nobody sees a close: a true half-open connection.",
        ),
    ];
    for (text, fault, hover) in toggles {
        let active = blackhole == fault;
        ui.horizontal(|ui| {
            let response = ui.add_enabled(has_relay, egui::Button::new(text).selected(active)).on_hover_text(hover);
            if response.clicked() {
                let next = if active { Blackhole::default() } else { fault };
                commands.push(Command::SetBlackhole(next));
            }
            if active {
                ui.colored_label(ui.visuals().warn_fg_color, "active: click to restore");
            }
        });
    }
    ui.horizontal(|ui| {
        if button(ui, has_relay, "Cut link", "Close every relayed connection: both sides see it at once.") {
            commands.push(Command::CutLink);
        }
        if button(ui, true, "Restore all", "The relay forwards both ways again; a stopped server is started.") {
            commands.push(Command::RestoreAll);
        }
    });
    if !via_relay {
        ui.label(RichText::new("The client does not go through the relay: link faults do not reach it.").weak());
    }
    // Only the embedded server knows the app's signing key.
    let logs_in = running && model.logs_in();
    ui.horizontal(|ui| {
        let hover = format!(
            "A second client asks the server for this client's id with {HIJACKER}'s token (allowed every id): the \
             id is held by {SUBJECT}, so the server must refuse it (forbidden) and leave this client online in its \
             session."
        );
        if button(ui, logs_in, "Hijack id", &hover) {
            commands.push(Command::Hijack);
        }
        let hover = format!(
            "The server holds this client's credential to expire {} after its next HELLO, and the link is cut so \
             that it says HELLO now. {} past the expiry the server ends the connection with auth-expired; the \
             client's provider mints a new token and the session resumes, nothing lost.",
            words::seconds(&CUT_SHORT_TO),
            words::seconds(&AUTH_GRACE)
        );
        if button(ui, logs_in, "Expire token", &hover) {
            commands.push(Command::ExpireToken);
        }
    });
    let wrong_ca = model.tls().trust() == Some(Trust::WrongCa);
    ui.horizontal(|ui| {
        let hover = format!(
            "Restart the client over TLS trusting {WRONG_CA} instead of {DEMO_CA} (it hands its session over \
             as the TLS switch does): every handshake fails with a typed error, the server's certificate signed \
             by an unknown authority, and the client backs off while the server keeps its session. Click again \
             (or Restore all) to trust {DEMO_CA}: the session resumes."
        );
        let response = ui.add_enabled(logs_in, egui::Button::new("Wrong CA").selected(wrong_ca)).on_hover_text(hover);
        if response.clicked() {
            let trust = if wrong_ca { Trust::DemoCa } else { Trust::WrongCa };
            commands.push(Command::SetTransport(Transport::Tls(trust)));
        }
        if wrong_ca {
            ui.colored_label(ui.visuals().warn_fg_color, "active: click to restore");
        }
    });
    if !logs_in {
        ui.label(RichText::new("The client does not log in to the embedded server: no identity or TLS faults.").weak());
    }
}

fn extras(ui: &mut egui::Ui, model: &Model, form: &mut Form, commands: &mut Vec<Command>) {
    heading(ui, "Extra clients");
    let counts = model.extras();
    ui.horizontal(|ui| {
        let label = ui.label("How many:");
        ui.add(egui::DragValue::new(&mut form.extra_clients).range(1..=500)).labelled_by(label.id);
        if button(ui, true, "Spawn", "Start that many more clients against the server (direct, not via the relay).") {
            commands.push(Command::SpawnExtras(form.extra_clients));
        }
        if button(ui, counts.total > 0, "Stop extras", "Close every extra client.") {
            commands.push(Command::StopExtras);
        }
    });
    ui.label(format!(
        "{} running: {} online, {} connecting, {} backing off",
        counts.total, counts.online, counts.connecting, counts.backing_off
    ));
}

fn settings(ui: &mut egui::Ui, form: &mut Form, commands: &mut Vec<Command>) {
    heading(ui, "Settings");
    let draft = &mut form.draft;
    egui::Grid::new("settings-grid").num_columns(2).show(ui, |ui| {
        let label = ui.label("Client id");
        ui.add(egui::TextEdit::singleline(&mut draft.client_id).desired_width(140.0)).labelled_by(label.id);
        ui.end_row();

        ui.label("Server");
        let mut external = matches!(draft.target, Target::External(_));
        ui.horizontal(|ui| {
            ui.radio_value(&mut external, false, "embedded");
            ui.radio_value(&mut external, true, "external:");
        });
        ui.end_row();

        ui.label("");
        let edit = ui.add_enabled(external, egui::TextEdit::singleline(&mut form.external_addr).desired_width(140.0));
        edit.on_hover_text("host:port of a pulsewire server, e.g. one started with cargo run -p demo-server");
        draft.target = if external { Target::External(form.external_addr.clone()) } else { Target::Embedded };
        ui.end_row();

        ui.label("Route");
        ui.checkbox(&mut draft.via_relay, "client via the fault relay");
        ui.end_row();

        let label = ui.label("Pulse every");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut draft.interval_ms).range(1..=60_000).suffix(" ms")).labelled_by(label.id);
            let missed = ui.label("max missed");
            ui.add(egui::DragValue::new(&mut draft.max_missed).range(1..=100)).labelled_by(missed.id);
        })
        .response
        .on_hover_text("The embedded server's cadence; the client adopts it from WELCOME.");
        ui.end_row();

        let label = ui.label("Keep sessions");
        ui.add(egui::DragValue::new(&mut draft.keep_s).range(0..=3600).suffix(" s"))
            .labelled_by(label.id)
            .on_hover_text(
                "How long the embedded server keeps the session of a client whose connection is lost (0: not at \
                 all). A client back within it resumes: nothing lost, nothing twice. After it, the session ends \
                 and its messages come back undelivered.",
            );
        ui.end_row();

        let label = ui.label("Token lifetime");
        ui.add(egui::DragValue::new(&mut draft.token_lifetime_s).range(1..=3600).suffix(" s"))
            .labelled_by(label.id)
            .on_hover_text(format!(
                "The lifetime of the tokens the client's provider mints for the embedded server. {} past a \
                 token's expiry the server ends the connection with auth-expired; the client gets a new token \
                 and resumes. Applies to the next token.",
                words::seconds(&AUTH_GRACE)
            ));
        ui.end_row();

        let label = ui.label("Backoff");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut draft.initial_delay_ms).range(1..=60_000).suffix(" ms"))
                .labelled_by(label.id);
            let to = ui.label("up to");
            ui.add(egui::DragValue::new(&mut draft.max_delay_ms).range(1..=600_000).suffix(" ms")).labelled_by(to.id);
        })
        .response
        .on_hover_text("The first retry waits up to the initial delay; each failure multiplies it, up to the max.");
        ui.end_row();

        let label = ui.label("Growth");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut draft.multiplier).range(1.0..=10.0).speed(0.1).prefix("x"))
                .labelled_by(label.id);
            let jitter = ui.label("jitter");
            ui.add(egui::DragValue::new(&mut draft.jitter).range(0.0..=1.0).speed(0.05)).labelled_by(jitter.id);
        })
        .response
        .on_hover_text("Jitter 1.0 draws each delay anywhere from 0 to its base: reconnects spread out.");
        ui.end_row();
    });
    let apply = ui
        .button("Apply")
        .on_hover_text("Restarts the embedded server if its timing changed, and the clients if theirs did.");
    if apply.clicked() {
        match form.draft.validate() {
            Ok(()) => {
                form.error = None;
                commands.push(Command::Apply(form.draft.clone()));
            }
            Err(error) => form.error = Some(error),
        }
    }
    if let Some(error) = &form.error {
        ui.colored_label(ui.visuals().error_fg_color, error);
    }
}
