//! The client: a handle for the application, a stream of events, and a driver running the
//! reconnector, responder and checker.

mod config;
mod driver;
mod event;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::{Stream, StreamExt as _};

use crate::core::{ClientMachine, ClientMachineConfig, ConnectionEnd, OutboxStatus, ResumeState, SendOptions};
use driver::Emit;

pub use config::{ClientConfig, ClientConfigBuilder, TokenProvider};
pub use event::{CloseReason, ConnectError, DisconnectReason, Event, Failure, ProbeError, SendError, State, Ticket};

/// The application's handle to a client connection. Cheap to clone; every clone controls the
/// same connection.
///
/// The connection itself is kept by a [`Driver`] future: [`Client::start`] spawns it for you,
/// [`Client::new`] hands it over so you can run it on the executor of your choice. When every
/// handle is dropped, the driver closes the connection as [`Client::close`] would.
///
/// ```no_run
/// use futures::StreamExt;
/// use pulsewire::{Client, ClientConfig, Event};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ClientConfig::builder("127.0.0.1:7878", "desk-42").build()?;
/// let (client, mut events) = Client::start(config);
/// while let Some(event) = events.next().await {
///     match event {
///         Event::Connected { session, .. } => {
///             println!("online, session {session}");
///             client.send("hello").await?;
///         }
///         Event::Message { payload, .. } => println!("server says {payload:?}"),
///         Event::Disconnected { reason } => println!("lost: {reason}"),
///         Event::Closed { .. } => break,
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<ClientConfig>,
    shared: Arc<Shared>,
    /// Closed (or dropped with the last handle) to tell the driver to stop.
    close: async_channel::Sender<()>,
    /// Fails once the driver has finished.
    done: async_channel::Receiver<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.config.server)
            .field("client_id", &self.inner.config.client_id)
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Starts a client whose driver runs on the reactor's thread whenever the reactor wakes
    /// it: no executor thread.
    ///
    /// The driver's first step (starting to connect) runs inside this call; after that, a
    /// pulse wakes the reactor's thread, which answers it at once, and a call that hands the
    /// driver work ([`Client::send`], [`Client::probe`], [`Client::close`], dropping the last
    /// handle) wakes a helper thread of the SDK's, which runs that step. No step waits for I/O
    /// or time: it decodes, writes what the socket takes at once, re-arms a timer or hands an
    /// event over. An idle client thus costs one wake-up per pulse interval, of the reactor's
    /// thread. To run the driver on an executor or a thread of your choice instead, use
    /// [`Client::new`].
    pub fn start(config: ClientConfig) -> (Client, Events) {
        let (client, events, driver) = Client::new(config);
        crate::rt::local::spawn(driver);
        (client, events)
    }

    /// Creates a client and its driver without running it: poll the [`Driver`] on any
    /// executor (`smol::spawn`, `tokio::spawn`, a thread with `futures::executor::block_on`).
    /// Nothing connects until the driver runs; messages sent meanwhile wait in the outbox.
    ///
    /// Sockets and timers wait on async-io's reactor, which has a thread of its own, so the
    /// executor needs no I/O support. Note that while any thread of the process runs
    /// `async_io::block_on` (`smol::block_on`, async-std's executor threads), the reactor's
    /// thread naps in short steps after every event, several wake-ups per pulse where it
    /// would otherwise sleep until the next one.
    ///
    /// ```
    /// use pulsewire::{Client, ClientConfig, State};
    ///
    /// let config = ClientConfig::builder("127.0.0.1:7878", "desk-42").build().unwrap();
    /// let (client, _events, driver) = Client::new(config);
    /// assert_eq!(client.state(), State::Offline);
    /// std::thread::spawn(move || futures::executor::block_on(driver));
    /// ```
    pub fn new(config: ClientConfig) -> (Client, Events, Driver) {
        let config = Arc::new(config);
        let machine_config = ClientMachineConfig {
            client_id: config.client_id.clone(),
            token: config.token.clone(),
            max_payload: config.max_payload,
            handshake_timeout: config.handshake_timeout,
            close_timeout: config.close_timeout,
            ack_delay: crate::core::DEFAULT_ACK_DELAY,
            outbox: config.outbox,
        };
        let machine = ClientMachine::new(machine_config, config.resume.clone());
        let (event_tx, event_rx) = mpsc::unbounded();
        let shared = Arc::new(Shared {
            machine: Mutex::new(machine),
            phase: Mutex::new(Phase::Offline),
            tasks: TaskCount::default(),
            emit: Emit(event_tx),
            rings: Rings::default(),
            end: Mutex::new(None),
            probes: Mutex::new(HashMap::new()),
            room: event_listener::Event::new(),
        });
        let (close_tx, close_rx) = async_channel::bounded(1);
        let (done_tx, done_rx) = async_channel::bounded(1);
        let driver = driver::run(config.clone(), shared.clone(), close_rx, done_tx);
        let inner = Inner { config, shared, close: close_tx, done: done_rx };
        (Client { inner: Arc::new(inner) }, Events { rx: event_rx }, Driver(Box::pin(driver)))
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        if let Some((session, misses)) = self.inner.shared.machine().online() {
            return State::Online { session: session.clone(), misses };
        }
        match &*lock(&self.inner.shared.phase) {
            Phase::Offline => State::Offline,
            Phase::Connecting { attempt } => State::Connecting { attempt: *attempt },
            Phase::BackingOff { attempt, next_delay, retry_at } => {
                State::BackingOff { attempt: *attempt, next_delay: *next_delay, retry_at: *retry_at }
            }
            Phase::Closed(reason) => State::Closed { reason: reason.clone() },
        }
    }

    /// What the outbox holds right now: messages waiting to be written, and written but not
    /// yet acknowledged.
    pub fn outbox(&self) -> OutboxStatus {
        self.inner.shared.machine().outbox()
    }

    /// The session as an application would save it to resume after its own process restarts
    /// (see [`ResumeState`]); `None` before the first connection.
    pub fn resume_state(&self) -> Option<ResumeState> {
        self.inner.shared.machine().resume_state()
    }

    /// Accepts a message for the server without waiting, online or offline: it goes into the
    /// outbox and is written as soon as a connection is up. Returns its ticket; the events
    /// [`Event::Delivered`], [`Event::Expired`] or [`Event::Undelivered`] tell its outcome,
    /// exactly one of them. Every refusal ([`SendError`]) hands the payload back.
    ///
    /// While a session resumes, a message is delivered exactly once; see [`Event::Undelivered`]
    /// for what happens when the server starts a fresh session instead.
    pub fn try_send(&self, payload: impl Into<Bytes>) -> Result<Ticket, SendError> {
        self.try_send_with(payload, SendOptions::new())
    }

    /// [`Client::try_send`] with options: a time to live, or volatile (written now on the
    /// live connection or refused, never kept or acknowledged).
    pub fn try_send_with(&self, payload: impl Into<Bytes>, options: SendOptions) -> Result<Ticket, SendError> {
        let payload = payload.into();
        self.inner.shared.with_machine(|machine| machine.send(payload, options, Instant::now()))
    }

    /// Accepts a message for the server; while the outbox is full and the client is online,
    /// waits for room (acknowledgements make it). Offline, a full outbox refuses at once.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<Ticket, SendError> {
        self.send_with(payload, SendOptions::new()).await
    }

    /// [`Client::send`] with options (see [`Client::try_send_with`]).
    pub async fn send_with(&self, payload: impl Into<Bytes>, options: SendOptions) -> Result<Ticket, SendError> {
        let mut payload = payload.into();
        loop {
            let listener = self.inner.shared.room.listen();
            match self.try_send_with(payload, options) {
                Err(SendError::Full(back)) if self.inner.shared.machine().is_online() => payload = back,
                other => return other,
            }
            listener.await;
        }
    }

    /// Sends a `PULSE` of the client's own and waits for the server's `ALIVE`: the round trip
    /// right now. Useful after the application was suspended, to check the link at once. A
    /// probe answered or not also feeds the miss counter as any frame does.
    ///
    /// It resolves with an error when the connection ends first, so a dead server makes it
    /// fail within the miss window; wrap it in a timeout for a tighter bound.
    pub async fn probe(&self) -> Result<Duration, ProbeError> {
        let shared = &self.inner.shared;
        let (answer_tx, answer_rx) = oneshot::channel();
        shared.with_machine(|machine| {
            let seq = machine.probe(Instant::now())?;
            lock(&shared.probes).insert(seq, answer_tx);
            Ok(())
        })?;
        answer_rx.await.map_err(|_| ProbeError::Disconnected)
    }

    /// Closes the client: what is in the outbox is written and its acknowledgement awaited,
    /// `BYE quit` is sent, the connection and every task end, and [`Event::Closed`] is the last
    /// event. All of that takes at most the close timeout: messages the server has not
    /// acknowledged by then come back as [`Event::Undelivered`]. Returns once the driver has
    /// finished, or after the close timeout plus a second if the driver is stuck or never ran.
    pub async fn close(&self) {
        self.inner.close.close();
        let bound = self.inner.config.close_timeout + Duration::from_secs(1);
        // `recv` fails once the driver dropped its end: that is the signal, not an error.
        let _ = crate::rt::timeout(bound, self.inner.done.recv()).await;
    }

    /// How many of the client's tasks are running: the reconnector while the driver runs, and
    /// while a connection is up its responder, checker and writer. 0 once the driver has
    /// finished ([`Client::close`] returned, or the client gave up or was refused), and also
    /// before it first ran. Every timer and socket of the client belongs to one of them, so 0
    /// means none is left.
    ///
    /// ```
    /// use pulsewire::{Client, ClientConfig};
    ///
    /// futures::executor::block_on(async {
    ///     let config = ClientConfig::builder("127.0.0.1:9", "desk-42").build().unwrap();
    ///     let (client, _events) = Client::start(config);
    ///     client.close().await;
    ///     assert_eq!(client.live_tasks(), 0);
    /// });
    /// ```
    pub fn live_tasks(&self) -> usize {
        self.inner.shared.tasks.live()
    }

    /// Whether the client has stopped for good (after [`Client::close`], a give-up or a
    /// refusal): its connection and tasks are gone, and [`Event::Closed`] is on its way.
    pub fn is_finished(&self) -> bool {
        matches!(*lock(&self.inner.shared.phase), Phase::Closed(_))
    }
}

/// The future that keeps the connection: reconnector, responder and checker run inside it.
/// Poll it to completion on any executor; it ends after the client is closed, gives up, or is
/// refused for good. Dropping it stops everything at once (without a `BYE`).
#[must_use = "the client does nothing unless its driver runs"]
pub struct Driver(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Driver")
    }
}

impl Future for Driver {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// The client's events, in order, as a [`Stream`]; it ends after [`Event::Closed`].
///
/// Events are buffered without bound, so the driver never waits for the application: read
/// them steadily (a GUI calls [`Events::try_next`] each frame), or drop the stream to ignore
/// them.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_next_unpin(cx)
    }
}

/// What the handle and the driver share: the machine, behind one lock that every step takes
/// briefly, and the rings that wake the driver's tasks.
pub(crate) struct Shared {
    machine: Mutex<ClientMachine>,
    phase: Mutex<Phase>,
    tasks: TaskCount,
    emit: Emit,
    rings: Rings,
    /// How the connection ended, once the machine said so.
    end: Mutex<Option<ConnectionEnd>>,
    /// The probes waiting for their answer.
    probes: Mutex<HashMap<u64, oneshot::Sender<Duration>>>,
    /// Notified when the outbox may have room, or the client went offline.
    room: event_listener::Event,
}

/// A ring is a channel of one: ringing a full one is a no-op, the woken task looks at the
/// machine for what to do.
type Ring = (async_channel::Sender<()>, async_channel::Receiver<()>);

#[derive(Debug)]
pub(crate) struct Rings {
    /// The machine has bytes to write: the writer.
    transmit_ready: Ring,
    /// The machine's next deadline may have moved: the checker.
    deadline_moved: Ring,
    /// The connection is over: the connection's loop.
    ended: Ring,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            transmit_ready: async_channel::bounded(1),
            deadline_moved: async_channel::bounded(1),
            ended: async_channel::bounded(1),
        }
    }
}

impl Rings {
    /// Forgets rings meant for an earlier connection.
    fn clear(&self) {
        for ring in [&self.transmit_ready, &self.deadline_moved, &self.ended] {
            while ring.1.try_recv().is_ok() {}
        }
    }
}

fn ring(ring: &Ring) {
    // Full: it is rung already.
    let _ = ring.0.try_send(());
}

/// Counts the client's running tasks (futures inside the driver): each holds a [`TaskGuard`].
#[derive(Debug, Default)]
pub(crate) struct TaskCount(Arc<AtomicUsize>);

/// Held by a running task; dropping it (the task ended or was dropped) counts it out.
#[derive(Debug)]
pub(crate) struct TaskGuard(Arc<AtomicUsize>);

impl TaskCount {
    pub(crate) fn enter(&self) -> TaskGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.0.clone())
    }

    fn live(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    fn machine(&self) -> MutexGuard<'_, ClientMachine> {
        lock(&self.machine)
    }

    fn set(&self, phase: Phase) {
        *lock(&self.phase) = phase;
    }

    fn emit(&self, event: Event) {
        self.emit.send(event);
    }

    fn end_events(&self) {
        self.emit.0.close_channel();
    }

    fn take_end(&self) -> Option<ConnectionEnd> {
        lock(&self.end).take()
    }

    /// Runs one step of the machine, then hands on everything it produced: its events (in
    /// order, under the lock, so that steps on two threads cannot reorder them), probe
    /// answers, and rings for the writer, the checker and the connection's end.
    fn with_machine<R>(&self, step: impl FnOnce(&mut ClientMachine) -> R) -> R {
        let mut machine = self.machine();
        let result = step(&mut machine);
        let mut room = false;
        while let Some(event) = machine.poll_event() {
            room |= matches!(event, Event::Delivered { .. } | Event::Undelivered { .. } | Event::Expired { .. });
            self.emit.send(event);
        }
        while let Some((seq, rtt)) = machine.poll_probe() {
            if let Some(answer) = lock(&self.probes).remove(&seq) {
                let _ = answer.send(rtt);
            }
        }
        if let Some(end) = machine.poll_end() {
            // Probes still waiting fail with `Disconnected`; `send` waiters look again.
            lock(&self.probes).clear();
            *lock(&self.end) = Some(end);
            room = true;
            ring(&self.rings.ended);
        }
        if machine.has_transmit() {
            ring(&self.rings.transmit_ready);
        }
        drop(machine);
        ring(&self.rings.deadline_moved);
        if room {
            self.room.notify(usize::MAX);
        }
        result
    }
}

pub(crate) enum Phase {
    Offline,
    Connecting { attempt: u32 },
    BackingOff { attempt: u32, next_delay: Duration, retry_at: Instant },
    Closed(CloseReason),
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a plain assignment or map update).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
