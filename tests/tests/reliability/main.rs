//! The reliability suite: real network faults, load, hostile input, operator limits, and the
//! promises that nothing accepted is lost and nothing is left running. See docs/reliability.md.
//!
//! Every test here takes [`serial`] first: they count the whole process's file descriptors and
//! tasks, load both cores, and time heartbeats, so they run one at a time. The default run is
//! the fast version of each; `--features soak` runs the long ones (see [`scale`]). Each test
//! prints what it measured (run with `-- --nocapture` to see it).

mod auth_storm;
mod decoder_memory;
mod delivery;
mod hostile;
mod limits;
mod netns;
mod netns_keep;
mod nothing_lost;
mod restart;
mod shutdown;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pulsewire::{ClientConfig, ClientConfigBuilder, Server, ServerConfig, ServerConfigBuilder, ServerEvents};

/// Takes the suite's lock: one reliability test at a time in this process.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one must still run.
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `fast` in the default run, `soak` with `--features soak`.
pub fn scale<T>(fast: T, soak: T) -> T {
    if cfg!(feature = "soak") {
        soak
    } else {
        fast
    }
}

/// A generous deadline for what should take milliseconds.
pub fn patience() -> Duration {
    Duration::from_secs(15)
}

/// A server builder on a free loopback port.
pub fn server_config(interval: Duration) -> ServerConfigBuilder {
    let listen = "127.0.0.1:0".parse().expect("a valid address");
    ServerConfig::builder().listen(listen).interval(interval)
}

/// Binds an in-process server.
pub async fn bind(config: ServerConfigBuilder) -> anyhow::Result<(Server, ServerEvents)> {
    Ok(Server::bind(config.build()?).await?)
}

/// A client builder with quick reconnects and short timeouts, for tests.
pub fn client_config(server: SocketAddr, id: &str) -> ClientConfigBuilder {
    ClientConfig::builder(server.to_string(), id)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .handshake_timeout(Duration::from_millis(1000))
        .connect_timeout(Duration::from_millis(1000))
}
