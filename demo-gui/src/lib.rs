//! `demo-gui`: a desktop window that embeds the pulsewire client and server and shows the
//! heartbeat, faults and reconnects live.
//!
//! The crate is split so that everything but the drawing is testable without a display:
//!
//! - [`model`]: what the window shows, as a plain value (inputs in, view data out);
//! - [`feed`]: the channel from the background threads to the UI, which wakes the UI;
//! - [`backend`]: the worker that owns the embedded server, the fault relay and the clients;
//! - [`auth`]: who the clients are: the embedded server's JWT key and authenticator, the main
//!   client's token provider;
//! - [`pki`]: the demo's certificates, made at start: a CA, the embedded server's certificate,
//!   and the wrong CA of the TLS fault;
//! - [`relay`]: the local TCP relay that black-holes bytes without closing anything;
//! - [`stream`], [`ledger`], [`delivery`]: protocol 2's promises checked live — numbered
//!   messages both ways, each message's outcome as its sender learns it, and what was lost
//!   or duplicated;
//! - [`settings`]: what the user can change, turned into SDK configurations;
//! - [`words`]: SDK reasons in plain words;
//! - [`history`]: time series for the charts;
//! - [`app`] and `ui`: the eframe application and its drawing.

pub mod app;
pub mod auth;
pub mod backend;
pub mod delivery;
pub mod feed;
pub mod history;
pub mod ledger;
pub mod model;
pub mod pki;
pub mod relay;
pub mod settings;
pub mod stream;
mod ui;
pub mod words;

pub use app::DemoApp;
pub use settings::{Settings, Target};
pub use ui::phase_color;
