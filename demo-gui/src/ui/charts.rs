//! The charts over the last few minutes: round trips, the state timeline with its disconnect and
//! reconnect markers, and the server's online count.

use std::time::Instant;

use eframe::egui;
use egui_plot::{Legend, Line, Plot, VLine};

use super::phase_color;
use crate::history::{x, WINDOW};
use crate::model::{MarkerKind, Model, Phase};

/// The three charts, sharing the height left in the central panel.
pub fn show(ui: &mut egui::Ui, model: &Model, now: Instant) {
    let height = ((ui.available_height() - 3.0 * 22.0) / 3.0).max(70.0);
    ui.label("State timeline (red: connection lost, green: back online)");
    timeline(ui, model, now, height);
    ui.label("Round trip, ms");
    round_trips(ui, model, now, height);
    ui.label("Embedded server: online peers");
    online_count(ui, model, now, height);
}

/// A plot over the chart window, ending at now, that does not pan or zoom.
fn plot(id: &str, height: f32) -> Plot<'static> {
    Plot::new(id)
        .height(height)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .include_x(-WINDOW.as_secs_f64())
        .include_x(0.0)
        .x_axis_formatter(|mark, _| format!("{:.0} s", mark.value))
}

fn timeline(ui: &mut egui::Ui, model: &Model, now: Instant, height: f32) {
    let steps = model.timeline().steps(now);
    let segments = model.timeline().segments(now);
    let markers: Vec<_> = model.markers().map(|marker| (x(marker.at, now), marker.kind)).collect();
    plot("timeline", height)
        .include_y(Phase::Closed.level() - 0.3)
        .include_y(Phase::Online.level() + 0.3)
        .y_axis_formatter(|mark, _| {
            Phase::ALL
                .into_iter()
                .find(|phase| (phase.level() - mark.value).abs() < 1e-6)
                .map(|phase| phase.label().to_owned())
                .unwrap_or_default()
        })
        .y_axis_min_width(80.0)
        .y_grid_spacer(|_| {
            Phase::ALL.iter().map(|phase| egui_plot::GridMark { value: phase.level(), step_size: 1.0 }).collect()
        })
        .show(ui, |plot| {
            // A thin grey step line joins the phases; each phase is a thick bar in its colour.
            plot.line(Line::new("state", steps).color(egui::Color32::GRAY).width(1.0).allow_band(false));
            for (from, to, level) in segments {
                let phase = Phase::ALL.into_iter().find(|phase| phase.level() == level).unwrap_or(Phase::Offline);
                let bar = Line::new(phase.label(), vec![[from, level], [to, level]]);
                plot.line(bar.color(phase_color(phase)).width(5.0).allow_band(false));
            }
            for (x, kind) in markers {
                let (name, color) = match kind {
                    MarkerKind::Disconnect => ("disconnect", egui::Color32::from_rgb(231, 76, 60)),
                    MarkerKind::Reconnect => ("reconnect", egui::Color32::from_rgb(46, 204, 113)),
                };
                plot.add(VLine::new(name, x).color(color).width(1.5));
            }
        });
}

fn round_trips(ui: &mut egui::Ui, model: &Model, now: Instant, height: f32) {
    let probes = model.probe_rtt().points(now);
    let pulses = model.server_rtt().points(now);
    plot("rtt", height).include_y(0.0).legend(Legend::default()).y_axis_min_width(80.0).show(ui, |plot| {
        plot.line(Line::new("probe()", probes).color(egui::Color32::from_rgb(52, 152, 219)));
        plot.line(Line::new("server's pulse", pulses).color(egui::Color32::from_rgb(155, 89, 182)));
    });
}

fn online_count(ui: &mut egui::Ui, model: &Model, now: Instant, height: f32) {
    let steps = model.online_count().steps(now);
    plot("online", height).include_y(0.0).y_axis_min_width(80.0).show(ui, |plot| {
        let line = Line::new("online", steps).color(egui::Color32::from_rgb(46, 204, 113));
        plot.line(line.fill(0.0).fill_alpha(0.2).allow_band(false));
    });
}
