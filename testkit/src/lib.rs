//! The child processes of pulsewire's end-to-end tests (`tests/`) and of its benchmark
//! (`bench/`), in one place: binaries of the workspace built by cargo, servers started with the
//! demo server's command line and waited for by their listening line, JSON lines read with the
//! moment they came, and every child killed and reaped, whatever happens to the caller; and
//! the certificates of the TLS tests, made at test time.

pub mod certs;
mod child;
mod server;

pub use child::{signal, Line, Process, Reaped};
pub use server::{build, build_demo_server, is_listening, listening_addr, server_command, Profile};
