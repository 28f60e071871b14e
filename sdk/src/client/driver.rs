//! The driver: the reconnector loop, and for each connection the responder, the checker and the
//! writer. A thin shell: every decision is taken by the pure core (`BackoffSchedule`,
//! `MissWatch`, `Decoder`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::future::FusedFuture;
use futures::future::{self, Either};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{pin_mut, select_biased, FutureExt};

use super::event::is_fatal_code;
use super::ledger::Ledger;
use super::{lock, ClientConfig, CloseReason, ConnectError, DisconnectReason, Event, Failure, Link, Phase};
use super::{Probe, Shared, TaskCount};
use crate::core::{BackoffSchedule, FirstAttempt, MissWatch, Tick};
use crate::error::{IoError, ProtocolViolation};
use crate::protocol::{Decoder, ErrorCode, Frame, SessionId, PROTOCOL_VERSION};
use crate::rt::{self, TcpStream};

/// The writer gathers ready frames into one write of up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// Room for `ALIVE` answers and probes waiting to be written.
const CONTROL_QUEUE: usize = 64;

/// Hands events to the application; the channel is unbounded, so this never waits.
///
/// It is `futures`' channel rather than async-channel's: that one wakes the reader with its
/// listener list locked, and a reader woken on another core then often finds the list still
/// locked and sleeps once more on the lock, a second wake-up of the application per event.
pub(super) struct Emit(mpsc::UnboundedSender<Event>);

impl Emit {
    fn send(&self, event: Event) {
        // Fails only when the application dropped its `Events`: it chose not to listen.
        let _ = self.0.unbounded_send(event);
    }
}

/// The reconnector: runs until the client is closed, gives up, or is refused for good.
pub(super) async fn run(
    config: Arc<ClientConfig>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    close: async_channel::Receiver<()>,
    done: async_channel::Sender<()>,
) {
    let task = shared.tasks.enter();
    let emit = Emit(events);
    let mut schedule = BackoffSchedule::new(config.reconnect.clone(), fastrand::u64(..));
    schedule.reset(Instant::now(), FirstAttempt::Immediate);
    let mut last_error: Option<Failure> = None;
    let reason = loop {
        let now = Instant::now();
        let Some(delay) = schedule.next_attempt(now) else {
            break CloseReason::GaveUp { attempts: schedule.attempts(), elapsed: schedule.elapsed(now) };
        };
        let attempt = schedule.attempts();
        if !delay.is_zero() {
            shared.set(Phase::BackingOff { attempt, next_delay: delay, retry_at: now + delay });
            let elapsed = schedule.elapsed(now);
            emit.send(Event::BackingOff { attempt, delay, elapsed, last_error: last_error.clone() });
            if until_closed(&close, rt::sleep(delay)).await.is_none() {
                break CloseReason::Application;
            }
        }
        shared.set(Phase::Connecting { attempt });
        emit.send(Event::Connecting { attempt });
        let handshake = match until_closed(&close, connect(&config)).await {
            None => break CloseReason::Application,
            Some(Ok(handshake)) => handshake,
            Some(Err(ConnectError::Rejected { code, text })) if is_fatal_code(&code) => {
                break CloseReason::Rejected { code, text };
            }
            Some(Err(error)) => {
                tracing::debug!(server = %config.server, attempt, %error, "connect attempt failed");
                last_error = Some(Failure::Connect(error));
                continue;
            }
        };
        tracing::info!(server = %config.server, session = %handshake.session, "online");
        let outcome = session(handshake, &config, &shared, &emit, &close).await;
        tracing::info!(server = %config.server, reason = %outcome.reason, "offline");
        emit.send(Event::Disconnected { reason: outcome.reason.clone() });
        match outcome.reason {
            DisconnectReason::ClosedByApplication => break CloseReason::Application,
            DisconnectReason::ServerError { code, text } if is_fatal_code(&code) => {
                break CloseReason::Rejected { code, text };
            }
            _ => {}
        }
        // Whether this was a recovery or a server that accepts and drops at once: the core decides.
        schedule.connection_ended(Instant::now(), outcome.healthy);
        last_error = Some(Failure::Disconnected(outcome.reason));
    };
    shared.set(Phase::Closed(reason.clone()));
    emit.send(Event::Closed { reason });
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

/// A connection that completed the handshake.
struct Handshake {
    stream: TcpStream,
    /// May already hold frames that arrived right behind `WELCOME`.
    decoder: Decoder,
    session: SessionId,
    interval: Duration,
    max_missed: u32,
}

/// Connects and runs the handshake, each step within its timeout.
async fn connect(config: &ClientConfig) -> Result<Handshake, ConnectError> {
    let stream = match rt::timeout(config.connect_timeout, rt::connect(&config.server)).await {
        Err(rt::Elapsed) => return Err(ConnectError::ConnectTimeout(config.connect_timeout)),
        Ok(Err(error)) => return Err(ConnectError::Io(IoError::from(&error))),
        Ok(Ok(stream)) => stream,
    };
    let mut decoder = Decoder::new(config.max_payload);
    let hello = Frame::Hello { version: PROTOCOL_VERSION, client_id: config.client_id.clone() };
    let exchange = handshake(&stream, &mut decoder, hello);
    let result = match rt::timeout(config.handshake_timeout, exchange).await {
        Err(rt::Elapsed) => Err(ConnectError::HandshakeTimeout(config.handshake_timeout)),
        Ok(result) => result,
    };
    match result {
        Ok((session, interval, max_missed)) => Ok(Handshake { stream, decoder, session, interval, max_missed }),
        Err(error) => {
            if let ConnectError::Protocol(violation) = &error {
                let farewell = Frame::error(violation.code(), violation.to_string()).to_bytes();
                let _ = rt::timeout(config.close_timeout, (&stream).write_all(&farewell)).await;
            }
            rt::shutdown(&stream);
            Err(error)
        }
    }
}

async fn handshake(
    stream: &TcpStream,
    decoder: &mut Decoder,
    hello: Frame,
) -> Result<(SessionId, Duration, u32), ConnectError> {
    let mut socket = stream;
    socket.write_all(&hello.to_bytes()).await.map_err(|e| ConnectError::Io(IoError::from(&e)))?;
    loop {
        let frame = decoder.next_frame().map_err(|e| ConnectError::Protocol(ProtocolViolation::Decode(e)))?;
        match frame {
            Some(Frame::Welcome { session, interval, max_missed }) => return Ok((session, interval, max_missed)),
            Some(Frame::Error { code, text }) => return Err(ConnectError::Rejected { code, text }),
            Some(other) => return Err(ConnectError::Protocol(ProtocolViolation::Unexpected { verb: other.verb() })),
            None => {}
        }
        let read = socket.read(decoder.read_buf()).await;
        match read {
            Ok(0) => return Err(ConnectError::Eof),
            Ok(n) => decoder.filled(n),
            Err(error) => return Err(ConnectError::Io(IoError::from(&error))),
        }
    }
}

/// How a session ended.
struct Outcome {
    reason: DisconnectReason,
    /// Whether at least one pulse arrived: the server really was up.
    healthy: bool,
}

/// What the writer does last.
enum Finish {
    /// The application closes: write every queued message, then `BYE quit`.
    Flush,
    /// The connection is over: write this farewell, if any, and stop.
    Farewell(Option<Frame>),
}

/// One live connection: the responder, the checker and the writer run side by side until one
/// of them, or a close, ends it; then the writer gets a bounded chance to say goodbye.
async fn session(
    handshake: Handshake,
    config: &ClientConfig,
    shared: &Shared,
    emit: &Emit,
    close: &async_channel::Receiver<()>,
) -> Outcome {
    let Handshake { stream, decoder, session, interval, max_missed } = handshake;
    let (control_tx, control_rx) = async_channel::bounded(CONTROL_QUEUE);
    let (data_tx, data_rx) = async_channel::bounded(config.send_queue);
    let (finish_tx, finish_rx) = async_channel::bounded(1);
    // The responder rings this whenever an answer confirmed messages; a closing writer waits on it.
    let (confirmed_tx, confirmed_rx) = async_channel::bounded(1);
    let watch = MissWatch::new(Instant::now(), interval, max_missed);
    let max_missed = watch.max_missed();
    let link = Arc::new(Link {
        session,
        watch: Mutex::new(watch),
        control: control_tx,
        data: data_tx,
        ledger: Mutex::default(),
    });
    // Online before the application hears of it, so that a send right after `Connected` works.
    shared.set(Phase::Online(link.clone()));
    emit.send(Event::Connected { session: link.session.clone(), interval, max_missed });
    let healthy = AtomicBool::new(false);
    // The responder rings this on every frame: the checker's deadline moved.
    let (frame_tx, frame_rx) = async_channel::bounded(1);
    let tasks = &shared.tasks;

    let responder = responder(&stream, decoder, &link, emit, &healthy, &frame_tx, &confirmed_tx, tasks).fuse();
    let checker = checker(&link.watch, emit, &frame_rx, tasks).fuse();
    let queues = WriterQueues { control: &control_rx, data: &data_rx, finish: &finish_rx, confirmed: &confirmed_rx };
    let writer = writer(&stream, queues, &link.ledger, tasks).fuse();
    let closed = close.recv().fuse();
    pin_mut!(responder, checker, writer, closed);
    let (reason, writer_done) = select_biased! {
        _ = closed => (DisconnectReason::ClosedByApplication, false),
        reason = writer => (reason, true),
        reason = responder => (reason, false),
        reason = checker => (reason, false),
    };
    // From here on the handle cannot reach this connection: sends fail with `Offline`.
    shared.set(Phase::Offline);
    if !writer_done {
        let finish = match &reason {
            DisconnectReason::ClosedByApplication => Finish::Flush,
            DisconnectReason::Protocol(violation) => {
                Finish::Farewell(Some(Frame::error(violation.code(), violation.to_string())))
            }
            DisconnectReason::PulseTimeout { missed } => {
                Finish::Farewell(Some(Frame::error(ErrorCode::Timeout, format!("no pulse for {missed} intervals"))))
            }
            _ => Finish::Farewell(None),
        };
        // A closing writer waits for the server to confirm what it flushed, so the responder
        // keeps reading meanwhile; it stops waiting if the connection ends under it.
        let confirming = matches!(finish, Finish::Flush) && !responder.is_terminated();
        // The writer picks this up as soon as its current write is done; a writer stuck on a
        // dead socket is abandoned after the close timeout.
        let _ = finish_tx.try_send(finish);
        let farewell = async {
            if confirming {
                select_biased! {
                    _ = writer => {},
                    _ = responder => {},
                }
            } else {
                writer.await;
            }
        };
        let _ = rt::timeout(config.close_timeout, farewell).await;
    }
    rt::shutdown(&stream);

    // Hand back every message the server did not confirm, in the order they were sent. The
    // ledger is taken out first: events and failed probes wake the application, which must
    // find no lock held.
    data_rx.close();
    let mut ledger = std::mem::take(&mut *lock(&link.ledger));
    let mut unsent = ledger.unconfirmed();
    while let Ok(payload) = data_rx.try_recv() {
        unsent.push(payload);
    }
    for payload in unsent {
        emit.send(Event::Undelivered(payload));
    }
    // Probes still waiting fail with `Disconnected`.
    ledger.clear_probes();
    Outcome { reason, healthy: healthy.load(Ordering::Relaxed) }
}

/// The responder: reads frames, answers each `PULSE` with `ALIVE` at once, resets the miss
/// count on every frame (and tells the checker), delivers messages, and settles the client's
/// own pulses (probe round trips, message confirmations).
#[allow(clippy::too_many_arguments)]
async fn responder(
    stream: &TcpStream,
    mut decoder: Decoder,
    link: &Link,
    emit: &Emit,
    healthy: &AtomicBool,
    frame_seen: &async_channel::Sender<()>,
    confirmed: &async_channel::Sender<()>,
    tasks: &TaskCount,
) -> DisconnectReason {
    let _task = tasks.enter();
    let mut socket = stream;
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return DisconnectReason::Protocol(ProtocolViolation::Decode(error)),
            };
            let now = Instant::now();
            let forgiven = match frame {
                Frame::Pulse { .. } => lock(&link.watch).pulse(now),
                _ => lock(&link.watch).frame(now),
            };
            // A full channel already holds a ring: the checker looks at the watch.
            let _ = frame_seen.try_send(());
            match frame {
                Frame::Pulse { seq } => {
                    // The control queue lives as long as the link: sending cannot fail here.
                    let _ = link.control.send(Frame::Alive { seq }).await;
                    healthy.store(true, Ordering::Relaxed);
                    emit.send(Event::Pulse { seq, misses_reset: forgiven });
                }
                Frame::Alive { seq } => {
                    let (probe, confirmed_now) = lock(&link.ledger).alive(seq);
                    if let Some((sent, answer)) = probe {
                        let _ = answer.send(sent.elapsed());
                    }
                    if confirmed_now > 0 {
                        // A full channel already holds a ring: the writer looks at the ledger.
                        let _ = confirmed.try_send(());
                    }
                }
                Frame::Data(payload) => emit.send(Event::Message(payload)),
                Frame::Bye { reason } => return DisconnectReason::ServerGoodbye { reason },
                Frame::Error { code, text } => return DisconnectReason::ServerError { code, text },
                other @ (Frame::Hello { .. } | Frame::Welcome { .. }) => {
                    return DisconnectReason::Protocol(ProtocolViolation::Unexpected { verb: other.verb() });
                }
            }
        }
        match socket.read(decoder.read_buf()).await {
            Ok(0) => return DisconnectReason::Eof,
            Ok(n) => decoder.filled(n),
            Err(error) => return DisconnectReason::from_io(&error),
        }
    }
}

/// The checker: sleeps until the watch's deadline, the first tick at which a miss can be
/// reported, and then applies every tick that elapsed; past the limit the connection is lost.
/// Every frame moves the deadline (the responder rings), so while pulses keep arriving the
/// timer is re-armed and never fires.
async fn checker(
    watch: &Mutex<MissWatch>,
    emit: &Emit,
    frame_seen: &async_channel::Receiver<()>,
    tasks: &TaskCount,
) -> DisconnectReason {
    let _task = tasks.enter();
    let mut armed = lock(watch).deadline();
    let mut timer = rt::Timer::at(armed);
    let max = lock(watch).max_missed();
    loop {
        let fired = select_biased! {
            // The responder's ring goes first: a frame that arrived with the deadline counts.
            // (Its sender lives in `session` as long as this checker: `recv` cannot fail.)
            _ = frame_seen.recv().fuse() => false,
            () = (&mut timer).fuse() => true,
        };
        let now = Instant::now();
        loop {
            // One tick at a time, so that no lock is held while the application is told.
            let tick = lock(watch).poll(now);
            match tick {
                None => break,
                Some(Tick::Healthy) => {}
                Some(Tick::Missed { missed }) => emit.send(Event::Missed { count: missed, max }),
                Some(Tick::Lost { missed }) => return DisconnectReason::PulseTimeout { missed },
            }
        }
        let deadline = lock(watch).deadline();
        if fired || deadline != armed {
            timer.reset(deadline);
            armed = deadline;
        }
    }
}

/// What the writer reads from.
struct WriterQueues<'a> {
    /// `ALIVE` answers and probes.
    control: &'a async_channel::Receiver<Frame>,
    /// The application's messages.
    data: &'a async_channel::Receiver<Bytes>,
    /// How to finish, once the connection is over or the application closes.
    finish: &'a async_channel::Receiver<Finish>,
    /// Rings when an answer confirmed messages.
    confirmed: &'a async_channel::Receiver<()>,
}

/// The writer: one task owns the socket's write side, so frames never interleave. Control
/// frames (`ALIVE`, probes) go before queued messages; whatever is ready is written at once, and
/// a batch that holds messages ends with a `PULSE` of the client's own whose answer confirms
/// them (see the ledger).
async fn writer(
    stream: &TcpStream,
    queues: WriterQueues<'_>,
    ledger: &Mutex<Ledger<Probe>>,
    tasks: &TaskCount,
) -> DisconnectReason {
    let _task = tasks.enter();
    let mut writer = Writer { socket: stream, queues, ledger, buf: BytesMut::new() };
    match writer.run().await {
        Ok(()) => DisconnectReason::ClosedByApplication,
        Err(error) => DisconnectReason::from_io(&error),
    }
}

struct Writer<'a> {
    socket: &'a TcpStream,
    queues: WriterQueues<'a>,
    ledger: &'a Mutex<Ledger<Probe>>,
    /// The batch being put together.
    buf: BytesMut,
}

impl Writer<'_> {
    /// Writes until told to finish, then finishes as told.
    async fn run(&mut self) -> std::io::Result<()> {
        let farewell = loop {
            select_biased! {
                frame = self.queues.control.recv().fuse() => match frame {
                    Ok(frame) => frame.encode(&mut self.buf),
                    Err(_) => break None,
                },
                how = self.queues.finish.recv().fuse() => match how {
                    Ok(Finish::Flush) => return self.flush().await,
                    Ok(Finish::Farewell(frame)) => break frame,
                    Err(_) => break None,
                },
                payload = self.queues.data.recv().fuse() => match payload {
                    Ok(payload) => self.take(payload),
                    Err(_) => break None,
                },
            }
            self.gather();
            self.write_batch().await?;
        };
        // The connection is over: a last word, if any, and nothing more.
        if let Some(frame) = farewell {
            frame.encode(&mut self.buf);
        }
        self.write_batch().await
    }

    /// A message goes into the batch; the ledger keeps it until the server confirms it.
    fn take(&mut self, payload: Bytes) {
        Frame::Data(payload.clone()).encode(&mut self.buf);
        lock(self.ledger).take(payload);
    }

    /// Adds whatever else is ready to the batch, up to its size.
    fn gather(&mut self) {
        while self.buf.len() < BATCH_BYTES {
            if let Ok(frame) = self.queues.control.try_recv() {
                frame.encode(&mut self.buf);
            } else if let Ok(payload) = self.queues.data.try_recv() {
                self.take(payload);
            } else {
                break;
            }
        }
    }

    /// Seals the batch (a `PULSE` after its messages, if it has any) and writes it.
    async fn write_batch(&mut self) -> std::io::Result<()> {
        if let Some(seq) = lock(self.ledger).seal() {
            Frame::Pulse { seq }.encode(&mut self.buf);
        }
        if !self.buf.is_empty() {
            let mut socket = self.socket;
            socket.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The application closes: writes every queued message, waits until the server confirmed
    /// them all, then says `BYE quit`. The caller bounds the whole by the close timeout.
    async fn flush(&mut self) -> std::io::Result<()> {
        loop {
            self.gather();
            if self.buf.is_empty() {
                break;
            }
            self.write_batch().await?;
        }
        // The responder keeps answering the server's pulses meanwhile: write its answers too.
        while !lock(self.ledger).is_settled() {
            select_biased! {
                rang = self.queues.confirmed.recv().fuse() => if rang.is_err() {
                    break;
                },
                frame = self.queues.control.recv().fuse() => match frame {
                    Ok(frame) => {
                        frame.encode(&mut self.buf);
                        self.write_batch().await?;
                    }
                    Err(_) => break,
                },
            }
        }
        Frame::bye("quit").encode(&mut self.buf);
        self.write_batch().await
    }
}
