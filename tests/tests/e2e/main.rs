//! End-to-end tests: the real `demo-server` binary, the real example client, real sockets.
//!
//! Intervals are short (50 ms) so faults show quickly; bounds are generous so a busy machine
//! does not fail them. Each timing test prints what it measured.

mod auth;
mod bad_input;
mod faults;
mod happy_path;
mod leaving;
mod lifecycle;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use pulsewire::ClientConfig;

/// The pulse interval the tests run the server with.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// The server's default miss limit.
pub const MAX_MISSED: u32 = 3;
/// The `--interval` argument matching [`INTERVAL`].
pub const INTERVAL_ARG: [&str; 2] = ["--interval", "50ms"];

/// A generous deadline for things that should take milliseconds.
pub fn patience() -> Duration {
    Duration::from_secs(10)
}

/// A client configuration with quick reconnects, for tests.
pub fn client_config(server: SocketAddr, id: &str) -> ClientConfig {
    ClientConfig::builder(server.to_string(), id)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .handshake_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("valid test config")
}
