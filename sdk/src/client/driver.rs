//! The driver: the reconnector, and for each connection the responder, the checker and the
//! writer. A thin shell around [`ClientMachine`]: these tasks move bytes, sleep until the
//! machine's next deadline and hand its events on; every decision is the machine's (or, between
//! connections, the [`BackoffSchedule`]'s).

use std::sync::Arc;
use std::time::Instant;

use futures::channel::mpsc;
use futures::future::{self, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::{pin_mut, select_biased, FutureExt};

use super::{ClientConfig, CloseReason, ConnectError, DisconnectReason, Event, Failure, Phase, Shared};
use crate::core::{BackoffSchedule, ConnectionEnd, TokenRenewal};
use crate::error::IoError;
use crate::protocol::Token;
use crate::rt::{self, TcpStream};
use crate::tls::TlsError;

/// Bytes read per system call.
const READ_CHUNK: usize = 16 * 1024;

/// Hands events to the application; the channel is unbounded, so this never waits.
///
/// It is `futures`' channel rather than async-channel's: that one wakes the reader with its
/// listener list locked, and a reader woken on another core then often finds the list still
/// locked and sleeps once more on the lock, a second wake-up of the application per event.
pub(super) struct Emit(pub(super) mpsc::UnboundedSender<Event>);

impl Emit {
    pub(super) fn send(&self, event: Event) {
        // Fails only when the application dropped its `Events`: it chose not to listen.
        let _ = self.0.unbounded_send(event);
    }
}

/// The reconnector: runs until the client is closed, gives up, or is refused for good.
pub(super) async fn run(
    config: Arc<ClientConfig>,
    shared: Arc<Shared>,
    close: async_channel::Receiver<()>,
    done: async_channel::Sender<()>,
) {
    let task = shared.tasks.enter();
    let mut schedule = BackoffSchedule::new(config.reconnect.clone(), fastrand::u64(..), Instant::now());
    let mut last_error: Option<Failure> = None;
    let provider = config.token_provider.0.clone();
    // When the provider is asked, and when a refusal of the token is final: the core's rule.
    let mut renewal = TokenRenewal::new(provider.is_some());
    let reason = loop {
        if shared.machine().is_closed() {
            break CloseReason::Application;
        }
        let now = Instant::now();
        let Some(delay) = schedule.next_attempt(now) else {
            break CloseReason::GaveUp { attempts: schedule.attempts(), elapsed: schedule.elapsed(now) };
        };
        let attempt = schedule.attempts();
        if !delay.is_zero() {
            shared.set(Phase::BackingOff { attempt, next_delay: delay, retry_at: now + delay });
            let elapsed = schedule.elapsed(now);
            shared.emit(Event::BackingOff { attempt, delay, elapsed, last_error: last_error.clone() });
            if until_closed(&close, while_watching(&shared, rt::sleep(delay))).await.is_none() {
                break CloseReason::Application;
            }
        }
        shared.set(Phase::Connecting { attempt });
        shared.emit(Event::Connecting { attempt });
        if let (true, Some(provider)) = (renewal.needs_token(), &provider) {
            let Some(token) = until_closed(&close, provider.token()).await else { break CloseReason::Application };
            match token.and_then(|text| Token::new(text).ok_or_else(|| "not a valid token".to_owned())) {
                Ok(token) => {
                    shared.with_machine(|machine| machine.set_token(Some(token)));
                    renewal.got_token();
                }
                Err(why) => {
                    tracing::warn!(server = %config.server, attempt, %why, "the token provider failed");
                    last_error = Some(Failure::Connect(ConnectError::TokenProvider(why)));
                    continue;
                }
            }
        }
        let connected = match until_closed(&close, rt::timeout(config.connect_timeout, open(&config))).await {
            None => break CloseReason::Application,
            Some(Err(rt::Elapsed)) => Err(ConnectError::ConnectTimeout(config.connect_timeout)),
            Some(Ok(opened)) => opened,
        };
        let end = match connected {
            Ok(Transport::Plain(stream)) => connection(&stream, &stream, &stream, &shared, &close).await,
            Ok(Transport::Tls(stream, tls)) => {
                let (reader, writer) = tls.split();
                connection(&stream, reader, writer, &shared, &close).await
            }
            Err(error) => ConnectionEnd::Refused(error),
        };
        // A refused token is asked for again when a provider can give another.
        if let ConnectionEnd::Disconnected { .. } = &end {
            renewal.was_online();
        }
        let refused_token = match &end {
            ConnectionEnd::Refused(ConnectError::Rejected { code, .. })
            | ConnectionEnd::Disconnected { reason: DisconnectReason::ServerError { code, .. }, .. } => {
                let used = shared.machine().token().cloned();
                renewal.refused(code, used.as_ref())
            }
            _ => false,
        };
        match end {
            ConnectionEnd::Refused(ConnectError::Rejected { code, text })
                if !refused_token && super::event::is_fatal_code(&code) =>
            {
                break CloseReason::Rejected { code, text };
            }
            ConnectionEnd::Refused(error) => {
                tracing::debug!(server = %config.server, attempt, %error, "connect attempt failed");
                last_error = Some(Failure::Connect(error));
            }
            ConnectionEnd::Disconnected { reason, healthy } => {
                tracing::info!(server = %config.server, %reason, "offline");
                shared.set(Phase::Offline);
                shared.emit(Event::Disconnected { reason: reason.clone() });
                match reason {
                    DisconnectReason::ClosedByApplication => break CloseReason::Application,
                    DisconnectReason::ServerError { code, text }
                        if !refused_token && super::event::is_fatal_code(&code) =>
                    {
                        break CloseReason::Rejected { code, text };
                    }
                    _ => {}
                }
                // Whether this was a recovery or a server that accepts and drops at once: the
                // core decides.
                schedule.connection_ended(Instant::now(), healthy);
                last_error = Some(Failure::Disconnected(reason));
            }
        }
    };
    // Every message without an outcome is handed back before `Closed`.
    shared.with_machine(|machine| machine.finish());
    shared.set(Phase::Closed(reason.clone()));
    shared.emit(Event::Closed { reason });
    // `Closed` is the last event: the stream ends after it, even while handles live on.
    shared.end_events();
    // Counted out before `close()` hears that the driver is done.
    drop(task);
    drop(done);
}

/// Runs `task` unless the client is closed first (`None`).
async fn until_closed<F: std::future::Future>(close: &async_channel::Receiver<()>, task: F) -> Option<F::Output> {
    let task = std::pin::pin!(task);
    let closed = std::pin::pin!(close.recv());
    match future::select(task, closed).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// Runs `task` while the reconnector keeps the machine's deadlines between connections (the
/// time to live of a message waiting in the outbox).
async fn while_watching<F: std::future::Future>(shared: &Shared, task: F) -> F::Output {
    let task = std::pin::pin!(task);
    let watching = std::pin::pin!(watch_deadlines(shared));
    match future::select(task, watching).await {
        Either::Left((output, _)) => output,
        Either::Right((never, _)) => match never {},
    }
}

/// A connected socket, plain or with its TLS handshake done.
enum Transport {
    Plain(TcpStream),
    /// The TLS stream, and the socket under it (to shut it down).
    Tls(TcpStream, Box<futures_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to the server, and does the TLS handshake when the client is configured for TLS.
async fn open(config: &ClientConfig) -> Result<Transport, ConnectError> {
    let stream = rt::connect(&config.server).await.map_err(|error| ConnectError::Io(IoError::from(&error)))?;
    let Some(tls) = &config.tls else { return Ok(Transport::Plain(stream)) };
    let connector = futures_rustls::TlsConnector::from(tls.config.clone());
    match connector.connect(tls.name.clone(), stream.clone()).await {
        Ok(tls_stream) => Ok(Transport::Tls(stream, Box::new(tls_stream))),
        Err(error) => {
            rt::shutdown(&stream);
            Err(match TlsError::from_io(&error, &tls.name) {
                Some(tls_error) => ConnectError::Tls(tls_error),
                None if error.kind() == std::io::ErrorKind::UnexpectedEof => ConnectError::Eof,
                None => ConnectError::Io(IoError::from(&error)),
            })
        }
    }
}

/// One connection, from `HELLO` to its end: the responder, the checker and the writer run side
/// by side until the machine says it is over; then the writer gets a bounded chance to write
/// the farewell. `read` and `write` are the two sides of `stream` (itself for plaintext, the
/// halves of its TLS stream otherwise).
async fn connection(
    stream: &TcpStream,
    read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin,
    shared: &Shared,
    close: &async_channel::Receiver<()>,
) -> ConnectionEnd {
    let rings = &shared.rings;
    rings.clear();
    shared.with_machine(|machine| machine.connect(Instant::now()));
    {
        let responder = responder(read, shared).fuse();
        let checker = checker(shared).fuse();
        let writer = writer(&mut write, shared).fuse();
        let ended = rings.ended.1.recv().fuse();
        let closed = close.recv().fuse();
        pin_mut!(responder, checker, writer, ended, closed);
        loop {
            select_biased! {
                _ = ended => break,
                // The application closes (or dropped every handle): the machine flushes, waits
                // for the acknowledgements and says goodbye, or gives up at the close timeout.
                _ = closed => shared.with_machine(|machine| machine.close(Instant::now())),
                () = responder => {},
                () = checker => {},
                () = writer => {},
            }
        }
    }
    let end =
        shared.take_end().unwrap_or(ConnectionEnd::Disconnected { reason: DisconnectReason::Eof, healthy: false });
    // The farewell (`BYE`, `ERROR`) is in the transmit buffer: one bounded try to write it.
    let farewell = shared.with_machine(|machine| machine.poll_transmit());
    if let Some(bytes) = farewell {
        let _ = rt::timeout(crate::server::LINGER, async {
            write.write_all(&bytes).await?;
            write.flush().await
        })
        .await;
    }
    rt::shutdown(stream);
    end
}

/// The responder: reads what the server sends and hands it to the machine, which answers each
/// `PULSE` with `ALIVE` at once, resets the miss count on every frame and delivers messages in
/// order. It ends when the socket does, after telling the machine.
async fn responder(mut socket: impl AsyncRead + Unpin, shared: &Shared) {
    let _task = shared.tasks.enter();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = socket.read(&mut buf).await;
        let now = Instant::now();
        match read {
            Ok(0) => return shared.with_machine(|machine| machine.connection_lost(DisconnectReason::Eof, now)),
            Ok(n) => shared.with_machine(|machine| machine.handle_input(&buf[..n], now)),
            Err(error) => {
                let reason = DisconnectReason::from_io(&error);
                return shared.with_machine(|machine| machine.connection_lost(reason, now));
            }
        }
    }
}

/// The checker: sleeps until the machine's next deadline (the first tick at which a miss could
/// be reported, a delayed `ACK`, the handshake or close timeout, a message's time to live) and
/// lets the machine act on it. Whatever moves the deadline rings it.
async fn checker(shared: &Shared) {
    let _task = shared.tasks.enter();
    match watch_deadlines(shared).await {}
}

/// Sleeps until the machine's next deadline and lets it act, for ever.
async fn watch_deadlines(shared: &Shared) -> std::convert::Infallible {
    let rings = &shared.rings;
    let mut armed = shared.machine().poll_timeout();
    let mut timer = rt::Timer::at(armed.unwrap_or_else(far_future));
    loop {
        select_biased! {
            // Its sender lives in `Shared` as long as this task: `recv` cannot fail.
            _ = rings.deadline_moved.1.recv().fuse() => {},
            () = (&mut timer).fuse() => {
                shared.with_machine(|machine| machine.handle_timeout(Instant::now()));
                armed = None;
            }
        }
        let deadline = shared.machine().poll_timeout();
        if deadline != armed || armed.is_none() {
            timer.reset(deadline.unwrap_or_else(far_future));
            armed = deadline;
        }
    }
}

/// A deadline that is never reached: the timer sleeps until something moves it.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// The writer: one task owns the socket's write side and writes what the machine asks for, in
/// order, in as few writes as the socket allows.
async fn writer(socket: &mut (impl AsyncWrite + Unpin), shared: &Shared) {
    let _task = shared.tasks.enter();
    let rings = &shared.rings;
    loop {
        let bytes = shared.with_machine(|machine| machine.poll_transmit());
        match bytes {
            Some(bytes) => {
                // (A flush writes what TLS still holds; on a plain socket it costs nothing.)
                let written = async {
                    socket.write_all(&bytes).await?;
                    socket.flush().await
                };
                if let Err(error) = written.await {
                    let reason = DisconnectReason::from_io(&error);
                    return shared.with_machine(|machine| machine.connection_lost(reason, Instant::now()));
                }
            }
            // Its sender lives in `Shared`: `recv` cannot fail while this task runs.
            None => {
                let _ = rings.transmit_ready.1.recv().await;
            }
        }
    }
}
