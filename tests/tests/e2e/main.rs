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

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
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

/// A directory of one test's own for its certificates, token files, secrets and logs; removed
/// when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A directory named after the test module (`kind`) and the test.
    pub fn new(kind: &str, test: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("pulsewire-e2e-{kind}-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the file `name`, readable by its owner only (it holds secrets).
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path(name);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        file.write_all(text.as_bytes())?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A token or secret that nothing could print by accident: `prefix-` and 32 random hex digits.
pub fn random_text(prefix: &str) -> String {
    // Each `RandomState` is keyed afresh (from the OS's randomness, then counted up): two of
    // them hash the same (empty) input differently.
    let word = || RandomState::new().build_hasher().finish();
    format!("{prefix}-{:016x}{:016x}", word(), word())
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}
