//! The client: a handle for the application, a stream of events, and a driver running the
//! reconnector, responder and checker.

mod config;
mod driver;
mod event;
mod ledger;

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

use crate::core::MissWatch;
use crate::protocol::{Frame, SessionId};
use ledger::Ledger;

pub use config::{ClientConfig, ClientConfigBuilder};
pub use event::{CloseReason, ConnectError, DisconnectReason, Event, Failure, ProbeError, SendError, State};

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
///         Event::Message(bytes) => println!("server says {bytes:?}"),
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
    /// Nothing connects until the driver runs.
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
        let shared = Arc::new(Shared { phase: Mutex::new(Phase::Offline), tasks: TaskCount::default() });
        let (close_tx, close_rx) = async_channel::bounded(1);
        let (done_tx, done_rx) = async_channel::bounded(1);
        let (event_tx, event_rx) = mpsc::unbounded();
        let driver = driver::run(config.clone(), shared.clone(), event_tx, close_rx, done_tx);
        let inner = Inner { config, shared, close: close_tx, done: done_rx };
        (Client { inner: Arc::new(inner) }, Events { rx: event_rx }, Driver(Box::pin(driver)))
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        match &*self.inner.shared.phase() {
            Phase::Offline => State::Offline,
            Phase::Connecting { attempt } => State::Connecting { attempt: *attempt },
            Phase::Online(link) => State::Online { session: link.session.clone(), misses: lock(&link.watch).missed() },
            Phase::BackingOff { attempt, next_delay, retry_at } => {
                State::BackingOff { attempt: *attempt, next_delay: *next_delay, retry_at: *retry_at }
            }
            Phase::Closed(reason) => State::Closed { reason: reason.clone() },
        }
    }

    /// Queues a message for the server without waiting.
    ///
    /// Messages are only accepted while online; see [`SendError`] for every refusal, each of
    /// which hands the payload back. A message accepted here is either confirmed by the server
    /// (its application has it) or handed back in [`Event::Undelivered`] when the connection
    /// ends first: nothing accepted is lost without a word.
    pub fn try_send(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let link = self.link_for(payload.into())?;
        let (link, payload) = link;
        link.data.try_send(payload).map_err(|error| match error {
            async_channel::TrySendError::Full(payload) => SendError::Full(payload),
            async_channel::TrySendError::Closed(payload) => SendError::Offline(payload),
        })
    }

    /// Queues a message for the server, waiting while the send queue is full.
    ///
    /// Fails at once when the client is offline (nothing is queued across reconnects) and when
    /// the connection ends while waiting; the error hands the payload back.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let (link, payload) = self.link_for(payload.into())?;
        link.data.send(payload).await.map_err(|error| SendError::Offline(error.0))
    }

    fn link_for(&self, payload: Bytes) -> Result<(Arc<Link>, Bytes), SendError> {
        let max = self.inner.config.max_payload;
        if payload.len() > max {
            return Err(SendError::TooLarge { payload, max });
        }
        match &*self.inner.shared.phase() {
            Phase::Online(link) => Ok((link.clone(), payload)),
            Phase::Closed(_) => Err(SendError::Closed(payload)),
            _ => Err(SendError::Offline(payload)),
        }
    }

    /// Sends a `PULSE` of the client's own and waits for the server's `ALIVE`: the round trip
    /// right now. Useful after the application was suspended, to check the link at once. A
    /// probe answered or not also feeds the miss counter as any frame does.
    ///
    /// It resolves with an error when the connection ends first, so a dead server makes it
    /// fail within the miss window; wrap it in a timeout for a tighter bound.
    pub async fn probe(&self) -> Result<Duration, ProbeError> {
        let link = match &*self.inner.shared.phase() {
            Phase::Online(link) => link.clone(),
            _ => return Err(ProbeError::Offline),
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        let seq = lock(&link.ledger).probe((Instant::now(), answer_tx)).ok_or(ProbeError::TooMany)?;
        if link.control.send(Frame::Pulse { seq }).await.is_err() {
            lock(&link.ledger).forget_probe(seq);
            return Err(ProbeError::Disconnected);
        }
        answer_rx.await.map_err(|_| ProbeError::Disconnected)
    }

    /// Closes the client: queued messages are flushed and their confirmation awaited, `BYE
    /// quit` is sent, the connection and every task end, and [`Event::Closed`] is the last
    /// event. All of that takes at most the close timeout: messages the server has not
    /// confirmed by then come back as [`Event::Undelivered`]. Returns once the driver has
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
        matches!(*self.inner.shared.phase(), Phase::Closed(_))
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

/// What the handle and the driver share.
pub(crate) struct Shared {
    phase: Mutex<Phase>,
    tasks: TaskCount,
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
    fn phase(&self) -> MutexGuard<'_, Phase> {
        lock(&self.phase)
    }

    fn set(&self, phase: Phase) {
        *self.phase() = phase;
    }
}

pub(crate) enum Phase {
    Offline,
    Connecting { attempt: u32 },
    Online(Arc<Link>),
    BackingOff { attempt: u32, next_delay: Duration, retry_at: Instant },
    Closed(CloseReason),
}

/// One live connection, as the handle reaches it.
pub(crate) struct Link {
    session: SessionId,
    /// When the checker looks next, and the misses it counted; the responder resets it.
    watch: Mutex<MissWatch>,
    control: async_channel::Sender<Frame>,
    data: async_channel::Sender<Bytes>,
    /// Probes waiting for their answer, messages waiting for their confirmation.
    ledger: Mutex<Ledger<Probe>>,
}

/// A waiting probe: when its pulse was queued, and where its round trip goes.
pub(crate) type Probe = (Instant, oneshot::Sender<Duration>);

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a plain assignment or map update).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
