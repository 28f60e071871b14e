//! Who the client is: the subject the server sees, the token and its expiry, how many tokens
//! the provider minted, the transport's security, and the last renewal and hijack.

use std::time::Instant;

use eframe::egui::{self, RichText};

use crate::auth::AUTH_GRACE;
use crate::feed::HijackOutcome;
use crate::model::{hijack_words, victim_words, Model, TlsView};
use crate::pki::{Trust, DEMO_CA, SERVER_NAMES};
use crate::words;

const GOOD: egui::Color32 = egui::Color32::from_rgb(46, 204, 113);

/// The identity block of the central panel.
pub fn show(ui: &mut egui::Ui, model: &Model, now: Instant) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("Identity").strong());
        let subject = model.subject().unwrap_or("- (not in the online list)");
        ui.label(format!("Subject: {subject}")).on_hover_text(
            "PeerInfo.subject: who the embedded server's authenticator says this client is, as its online list \
             shows it. A client that sends no token (to an external server) is anonymous.",
        );
        ui.separator();
        token(ui, model, now);
        ui.separator();
        ui.label(format!("Tokens minted: {}", model.tokens_minted())).on_hover_text(
            "How many tokens the client's token provider has minted: one before the first connect, and one each \
             time the server ended the connection with auth-expired.",
        );
        ui.separator();
        tls(ui, model);
    });
    if model.renewal().is_some() || model.hijack().is_some() {
        ui.horizontal_wrapped(|ui| {
            renewal(ui, model, now);
            hijack(ui, model);
        });
    }
}

fn token(ui: &mut egui::Ui, model: &Model, now: Instant) {
    let grace = words::seconds(&AUTH_GRACE);
    let Some(token) = model.token() else {
        let text = if model.logs_in() { "Token: none yet" } else { "Token: none (anonymous)" };
        ui.label(text);
        return;
    };
    let by = if token.cut_short { ", cut short by the server" } else { "" };
    let text = if token.expires > now {
        format!("Token #{} expires in {}{by}", token.n, words::seconds(&(token.expires - now)))
    } else {
        format!("Token #{} expired {} ago{by}", token.n, words::seconds(&now.saturating_duration_since(token.expires)))
    };
    ui.label(text).on_hover_text(format!(
        "A JWT for {} and this client id, minted with a lifetime of {}. {grace} past its expiry the server ends \
         the connection with auth-expired; the client asks its provider for a new token and resumes its session.",
        token.subject,
        words::seconds(&token.lifetime),
    ));
}

/// The transport's security, from the client's configuration, its last handshake and the
/// server's online list.
fn tls(ui: &mut egui::Ui, model: &Model) {
    let view = model.tls();
    let names = SERVER_NAMES.join(" and ");
    let (text, hover) = match &view {
        TlsView::Off => (
            RichText::new(view.words()),
            "The client connects to the server's plaintext listener: HELLO and its token travel readable by \
             anyone on the path, which the server accepts from loopback only. Click TLS (under Client) to \
             switch."
                .to_owned(),
        ),
        TlsView::Verified { trust } => (
            RichText::new(view.words()).color(GOOD),
            format!(
                "The client trusts only {ca}, made when the app started, and checked the server's certificate \
                 (made out to {names}, signed by {ca}) against the address it connects to. The server's online \
                 list says this peer came over TLS (PeerInfo.tls).",
                ca = trust.ca_name()
            ),
        ),
        TlsView::Refused { trust, error } => (
            RichText::new(view.words()).color(ui.visuals().error_fg_color),
            format!(
                "Every handshake fails before HELLO ({}), and the client backs off and tries again. The server's \
                 certificate is signed by {DEMO_CA}; this client trusts {} only{}.",
                words::tls(error),
                trust.ca_name(),
                if *trust == Trust::WrongCa { " (the wrong-CA fault: click Wrong CA again to heal)" } else { "" }
            ),
        ),
        TlsView::Pending { trust } => (
            RichText::new(view.words()),
            format!("The client connects over TLS, trusting {}; not online over it yet.", trust.ca_name()),
        ),
    };
    ui.label(text).on_hover_text(hover);
}

fn renewal(ui: &mut egui::Ui, model: &Model, now: Instant) {
    let Some(renewal) = model.renewal() else { return };
    let token = renewal.token.map_or_else(|| "no new token yet".to_owned(), |n| format!("token #{n}"));
    let text = match &renewal.next {
        None => format!("Credential expired: the server said auth-expired; {token}, reconnecting"),
        Some(next) => {
            let ago = words::seconds(&now.saturating_duration_since(next.at));
            let session = if renewal.resumed_the_same_session() {
                format!("session {} resumed", next.session)
            } else {
                format!("fresh session {} (the old one was not resumed)", next.session)
            };
            format!("Last renewal: auth-expired, {token}, {session} ({ago} ago)")
        }
    };
    let text = RichText::new(text);
    let text = if renewal.resumed_the_same_session() { text.color(GOOD) } else { text };
    ui.label(text).on_hover_text(format!("{} renewal(s) so far", model.renewals()));
    ui.separator();
}

fn hijack(ui: &mut egui::Ui, model: &Model) {
    let Some(hijack) = model.hijack() else { return };
    let color = match hijack.outcome.as_ref().map(|(outcome, _)| outcome) {
        Some(HijackOutcome::Refused { .. }) => GOOD,
        Some(HijackOutcome::Admitted) => ui.visuals().error_fg_color,
        _ => ui.visuals().warn_fg_color,
    };
    let hover = match hijack.outcome.as_ref().map(|(outcome, _)| outcome) {
        Some(HijackOutcome::Refused { text, .. }) => format!("The server said: {text}"),
        _ => format!("A second client asks for {} with {}'s token.", hijack.client_id, hijack.subject),
    };
    ui.label(RichText::new(hijack_words(hijack)).color(color)).on_hover_text(hover);
    if hijack.outcome.is_some() {
        let victim = RichText::new(victim_words(hijack));
        ui.label(if hijack.victim_untouched() { victim.color(GOOD) } else { victim.color(ui.visuals().warn_fg_color) });
    }
}
