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

use async_io::Async;
use futures::future::{self, Either};
use futures::io::{AsyncRead as _, AsyncWriteExt as _};

pub(crate) mod local;

pub(crate) use async_std::net::TcpStream;

/// Resolves `addr` ("host:port") and connects to the first address that answers.
pub(crate) async fn connect(addr: &str) -> io::Result<TcpStream> {
    let addrs = resolve(addr).await?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Frames are small and latency-sensitive: do not let Nagle hold pulses back.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"))))
}

/// The addresses of "host:port". An address in numbers is used as it is; a name is looked up on
/// a thread that ends with the lookup, not on async-std's blocking pool, which would start
/// async-std's executor threads in a process that otherwise needs none (see [`local`]).
async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(addr) = addr.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (found, lookup) = futures::channel::oneshot::channel();
    let name = addr.to_owned();
    std::thread::Builder::new().name("pulsewire-resolve".into()).spawn(move || {
        use std::net::ToSocketAddrs as _;
        let _ = found.send(name.to_socket_addrs().map(Vec::from_iter));
    })?;
    lookup.await.unwrap_or_else(|_| Err(io::Error::other("the name lookup thread stopped")))
}

/// Binds a listening socket.
///
/// The accept queue holds [`LISTEN_BACKLOG`] connections (the kernel caps it at
/// `net.core.somaxconn`): a reconnect storm of thousands of clients must queue, not be dropped
/// (the standard library's `listen(128)` overflowed in the benchmark's storm).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<Listener> {
    use socket2::{Domain, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As the standard library does on Unix: a restarted server can bind its port at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(Listener(Async::new(std::net::TcpListener::from(socket))?))
}

/// The listen backlog asked of the kernel.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket on the reactor.
#[derive(Debug)]
pub(crate) struct Listener(Async<std::net::TcpListener>);

impl Listener {
    /// The next connection, with Nagle off (frames are small and latency-sensitive).
    pub(crate) async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        stream.get_ref().set_nodelay(true)?;
        Ok((Socket(stream), addr))
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

/// A server-side connection: a non-blocking socket on the reactor that a task can wait on and
/// that anyone holding it can write to at once ([`Socket::try_write`]), without a task switch.
#[derive(Debug)]
pub(crate) struct Socket(Async<std::net::TcpStream>);

impl Socket {
    /// Reads into `buf`, registering for readiness when nothing is there.
    pub(crate) fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.0).poll_read(cx, buf)
    }

    /// Ready when the reactor reported the socket readable since the last call (which may be
    /// the readiness a read already consumed); otherwise registers for the next report.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }

    /// Reads into `buf`.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        future::poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write as _;
        let mut stream: &std::net::TcpStream = self.0.get_ref();
        stream.write(buf)
    }

    /// [`Socket::try_write`] of several buffers, in one system call.
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use std::io::Write as _;
        let mut stream: &std::net::TcpStream = self.0.get_ref();
        stream.write_vectored(bufs)
    }

    /// Ready once the socket may take more bytes (registering for it otherwise).
    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_writable(cx)
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf).await
    }

    /// Shuts both directions; a concurrent read then returns end-of-file.
    pub(crate) fn shutdown(&self) {
        // The peer may be gone already; there is nothing left to do about a failure here.
        let _ = self.0.get_ref().shutdown(Shutdown::Both);
    }

    /// Closes the write side (the peer reads end-of-file) and keeps reading possible.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.0.get_ref().shutdown(Shutdown::Write);
    }
}

/// Shuts both directions of a socket; a concurrent read then returns end-of-file.
pub(crate) fn shutdown(stream: &TcpStream) {
    // The peer may be gone already; there is nothing left to do about a failure here.
    let _ = stream.shutdown(Shutdown::Both);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_takes_numbers_as_they_are_and_looks_names_up() {
        futures::executor::block_on(async {
            let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let port = listener.local_addr().unwrap().port();
            for addr in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
                let stream = connect(&addr).await.unwrap_or_else(|error| panic!("{addr}: {error}"));
                let (_, from) = listener.accept().await.unwrap();
                assert_eq!(stream.local_addr().unwrap(), from, "{addr}");
            }
            let error = connect("no port here").await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        });
    }
}
