//! `demo-gui`: run it with `cargo run -p demo-gui` (add `-- --server host:port` to start with
//! an external server instead of the embedded one).

use std::process::ExitCode;
use std::sync::Arc;

use demo_gui::{DemoApp, Settings, Target};
use eframe::egui;

const USAGE: &str = "usage: demo-gui [--server HOST:PORT] [--id CLIENT-ID]

Opens a window that embeds a pulsewire server and client and shows the heartbeat live.
  --server HOST:PORT  start with an external server instead of the embedded one
  --id CLIENT-ID      the client's id (default desk-1)";

fn main() -> ExitCode {
    let settings = match parse_args(std::env::args().skip(1)) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("error: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("pulsewire demo")
            .with_inner_size([1360.0, 900.0])
            .with_min_inner_size([1000.0, 700.0]),
        ..Default::default()
    };
    let result = eframe::run_native(
        "pulsewire demo",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let app = DemoApp::new(settings, Arc::new(move |within| ctx.request_repaint_after(within)))?;
            Ok(Box::new(app))
        }),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot open the window: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The settings from the command line; `None` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Settings>, String> {
    let mut settings = Settings::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--server" => {
                let addr = args.next().ok_or("--server needs HOST:PORT")?;
                settings.target = Target::External(addr);
            }
            "--id" => settings.client_id = args.next().ok_or("--id needs a client id")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    settings.validate()?;
    Ok(Some(settings))
}
