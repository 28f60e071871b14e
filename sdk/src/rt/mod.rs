//! The runtime seam: the only module that names `async-std` and `async-io`.
//!
//! Sockets and timers live on async-io's reactor (the one async-std itself runs on), which has a
//! thread of its own, so everything built on this module runs under any executor (async-std,
//! smol, tokio, `futures::executor`). Timers are the reactor's own: a timer costs no thread and
//! no extra wake-up, where `futures-timer` woke its own thread for every timer set or re-armed.
//! Replacing the runtime means changing this module only.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{self, Either};

pub(crate) use async_std::net::{TcpListener, TcpStream};

/// Resolves `addr` ("host:port") and connects to the first address that answers.
pub(crate) async fn connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    // Frames are small and latency-sensitive: do not let Nagle hold pulses back.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Binds a listening socket.
///
/// The accept queue holds [`LISTEN_BACKLOG`] connections (the kernel caps it at
/// `net.core.somaxconn`): a reconnect storm of thousands of clients must queue, not be dropped
/// (the standard library's `listen(128)` overflowed in the benchmark's storm).
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As the standard library does on Unix: a restarted server can bind its port at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from(std::net::TcpListener::from(socket)))
}

/// The listen backlog asked of the kernel.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Prepares an accepted socket.
pub(crate) fn accepted(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}

/// Shuts both directions of a socket; a concurrent read then returns end-of-file.
pub(crate) fn shutdown(stream: &TcpStream) {
    // The peer may be gone already; there is nothing left to do about a failure here.
    let _ = stream.shutdown(Shutdown::Both);
}

/// Closes the write side of a socket (the peer reads end-of-file) and keeps reading possible.
pub(crate) fn shutdown_write(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// Runs a task in the background on async-std's executor.
pub(crate) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // Dropping the handle detaches the task; tasks end on their own (see the server's tracker).
    drop(async_std::task::spawn(task));
}

/// Waits `duration`.
pub(crate) async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

/// The time limit of [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `task` for at most `limit`.
pub(crate) async fn timeout<F: Future>(limit: Duration, task: F) -> Result<F::Output, Elapsed> {
    let task = std::pin::pin!(task);
    match future::select(task, async_io::Timer::after(limit)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(_) => Err(Elapsed),
    }
}

/// A reusable timer on the reactor, re-armed for each deadline.
#[derive(Debug)]
pub(crate) struct Timer(async_io::Timer);

impl Timer {
    /// A timer firing at `deadline`.
    pub(crate) fn at(deadline: Instant) -> Timer {
        Timer(async_io::Timer::at(deadline))
    }

    /// Re-arms the timer for `deadline`.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.0.set_at(deadline);
    }
}

impl Future for Timer {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}
