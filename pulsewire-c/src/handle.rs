//! What a `pulsewire_client` handle holds: the SDK client, a queue of events in C form, the
//! thread that forwards the SDK's events into it, and the thread that runs the wake callback.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use pulsewire::{Client, ClientConfig, Event, Events};

use crate::event::{self, Queued};

/// The host's wake callback and its argument (a pointer the library only hands back).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wake {
    pub(crate) call: unsafe extern "C" fn(user: *mut c_void),
    pub(crate) user: usize,
}

/// The queue and the wake bookkeeping, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) events: VecDeque<Queued>,
    /// The host found the queue empty since the last wake: the next event wakes it.
    pub(crate) armed: bool,
    pub(crate) wake: Option<Wake>,
    /// The wake thread is inside the callback.
    pub(crate) waking: bool,
    /// The SDK's event stream ended: nothing more will come but probe results.
    pub(crate) ended: bool,
    /// The handle was freed: the wake thread stops.
    pub(crate) freed: bool,
    pub(crate) wake_thread: Option<ThreadId>,
}

/// What the handle shares with its threads.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    queue: Mutex<Queue>,
    /// Notified on every change of the queue.
    changed: Condvar,
}

impl Hub {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (every change is one step).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, queued: Queued) {
        self.lock().events.push_back(queued);
        self.changed.notify_all();
    }

    /// Waits until an event is queued, the stream ended with none left, or the timeout passed
    /// (`None`: forever). True when an event is queued.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut queue = self.lock();
        loop {
            if !queue.events.is_empty() {
                return true;
            }
            if queue.ended || queue.freed {
                return false;
            }
            queue = match deadline {
                None => self.changed.wait(queue).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.changed.wait_timeout(queue, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }

    /// Sets or clears the callback; returns once no call of the old one is running (unless
    /// called from inside the callback itself, which would wait for itself).
    pub(crate) fn set_wake(&self, wake: Option<Wake>) {
        let mut queue = self.lock();
        queue.wake = wake;
        self.changed.notify_all();
        self.wait_for_no_wake(queue);
    }

    fn wait_for_no_wake(&self, mut queue: MutexGuard<'_, Queue>) {
        let here = Some(thread::current().id());
        while queue.waking && queue.wake_thread != here {
            queue = self.changed.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The handle is going away: the wake thread stops, no callback runs after this returns.
    pub(crate) fn free(&self) {
        let mut queue = self.lock();
        queue.freed = true;
        queue.wake = None;
        self.changed.notify_all();
        self.wait_for_no_wake(queue);
    }

    fn run_wakes(&self) {
        let mut queue = self.lock();
        queue.wake_thread = Some(thread::current().id());
        loop {
            if queue.freed {
                return;
            }
            match queue.wake {
                Some(wake) if queue.armed && !queue.events.is_empty() => {
                    queue.armed = false;
                    queue.waking = true;
                    drop(queue);
                    // SAFETY: the host registered this function with this argument and promised
                    // (pulsewire_set_wake's contract) that it may be called from any thread
                    // until pulsewire_set_wake or pulsewire_free returns; both wait for
                    // `waking` to clear, so the call never outlives that promise.
                    unsafe { (wake.call)(wake.user as *mut c_void) };
                    queue = self.lock();
                    queue.waking = false;
                    self.changed.notify_all();
                }
                _ => queue = self.changed.wait(queue).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }
}

/// The C handle.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) config: ClientConfig,
    pub(crate) resume_state_file: Option<PathBuf>,
    pub(crate) hub: Arc<Hub>,
    /// The SDK client once started; taken out when the handle is freed.
    pub(crate) client: Arc<Mutex<Option<Client>>>,
    pub(crate) next_token: AtomicU64,
}

fn lock_client(client: &Mutex<Option<Client>>) -> MutexGuard<'_, Option<Client>> {
    client.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handle {
    pub(crate) fn new(config: ClientConfig, resume_state_file: Option<PathBuf>) -> Handle {
        let hub = Arc::new(Hub::default());
        hub.lock().armed = true;
        Handle { config, resume_state_file, hub, client: Arc::new(Mutex::new(None)), next_token: AtomicU64::new(1) }
    }

    pub(crate) fn client(&self) -> Option<Client> {
        lock_client(&self.client).clone()
    }

    /// Starts the SDK client, the forwarding thread and the wake thread. False when started
    /// already.
    pub(crate) fn start(&self) -> std::io::Result<bool> {
        let mut slot = lock_client(&self.client);
        if slot.is_some() {
            return Ok(false);
        }
        let hub = self.hub.clone();
        thread::Builder::new().name("pulsewire-wake".into()).spawn(move || hub.run_wakes())?;
        let (client, events) = Client::start(self.config.clone());
        *slot = Some(client);
        let (hub, shared, file) = (self.hub.clone(), self.client.clone(), self.resume_state_file.clone());
        thread::Builder::new().name("pulsewire-events".into()).spawn(move || forward(events, &hub, &shared, file))?;
        Ok(true)
    }

    /// Sends a probe on a helper thread; its result comes back as a PROBE event with `token`.
    pub(crate) fn probe(&self, client: Client) -> std::io::Result<u64> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let hub = self.hub.clone();
        thread::Builder::new().name("pulsewire-probe".into()).spawn(move || {
            let result = futures::executor::block_on(client.probe());
            drop(client);
            hub.push(event::probe(token, result));
        })?;
        Ok(token)
    }

    /// Drops the SDK client (it closes as `Client::close` would) and stops the callbacks.
    pub(crate) fn free(self) {
        self.hub.free();
        lock_client(&self.client).take();
    }
}

/// Moves the SDK's events into the queue, saving the resume state first after a Connected or
/// Message event, so that a host that saw one finds it saved.
fn forward(mut events: Events, hub: &Hub, client: &Mutex<Option<Client>>, file: Option<PathBuf>) {
    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            if let (Some(file), Event::Connected { .. } | Event::Message { .. }) = (&file, &event) {
                let state = lock_client(client).as_ref().and_then(Client::resume_state);
                if let Some(state) = state {
                    save(file, &state.to_text());
                }
            }
            hub.push(event::from_sdk(event));
        }
    });
    hub.lock().ended = true;
    hub.changed.notify_all();
}

/// Writes the file atomically (a temporary file renamed over it), readable by its owner only
/// on Unix: it holds the resume secret. A failure is reported on stderr: there is no caller to
/// return it to.
fn save(file: &PathBuf, text: &str) {
    use std::io::Write as _;
    let mut tmp = file.clone().into_os_string();
    tmp.push(".tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result =
        options.open(&tmp).and_then(|mut f| f.write_all(text.as_bytes())).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(error) = result {
        eprintln!("pulsewire: cannot save the resume state to {}: {error}", file.display());
    }
}
