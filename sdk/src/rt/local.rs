//! An executor that runs a task on the reactor's thread when the reactor wakes it.
//!
//! Made for the client's driver, whose every step is short and never blocks (decode a frame,
//! write an answer, re-arm a timer, hand an event over). Under a thread-pool executor a pulse
//! wakes two threads: async-io's reactor thread, which sees the socket readable, then an
//! executor thread, which runs the driver; and while any thread sits in `async_io::block_on`
//! (as async-std's executor threads do), the reactor thread also naps in short steps after
//! every event. Here the reactor thread runs the driver itself, inside the wake-up it had
//! anyway: one wake-up per pulse, and no executor thread.
//!
//! Only the reactor thread runs a task the moment it wakes it: the reactor calls wakers with
//! none of its locks that a task could need held. Other wakers are called under locks of their
//! own (a channel notifies its listeners with its list locked), and a task run right there
//! would deadlock on the first use of that channel. A task woken anywhere else is therefore
//! handed to a helper thread (started on first need, parked while it has nothing to do):
//! those wake-ups come from the application (`send`, `probe`, `close`, dropping the last
//! handle), not from the idle heartbeat.
//!
//! The price: while the reactor thread runs a task, it serves no other socket; one step of the
//! driver, which never blocks, bounds that. A task woken while it runs (the responder hands the
//! writer an answer) is not run again recursively: each thread keeps a queue of the tasks it
//! must run, and runs them one after the other once the current one has returned.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::panic;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::{self, Thread};

use async_task::Runnable;

/// The name async-io gives its reactor thread.
const REACTOR_THREAD: &str = "async-io";

/// Runs `task` on this thread until it first waits, then wherever it is woken (see the module
/// documentation), until it ends. Nothing keeps a handle to it: it ends on its own.
pub(crate) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let (runnable, task) = async_task::spawn(task, schedule);
    task.detach();
    if let Some(runnable) = queue_if_busy(runnable) {
        run_here(runnable);
    }
}

thread_local! {
    /// The tasks this thread must run: `Some` while it runs one (wake-ups meanwhile queue up
    /// here), `None` when it runs none.
    static QUEUE: RefCell<Option<VecDeque<Runnable>>> = const { RefCell::new(None) };
}

/// Runs a woken task on this thread if it is the reactor's, else hands it to the helper.
fn schedule(runnable: Runnable) {
    let Some(runnable) = queue_if_busy(runnable) else {
        return;
    };
    if thread::current().name() == Some(REACTOR_THREAD) {
        run_here(runnable);
    } else {
        Helper::get().run(runnable);
    }
}

/// Queues the task behind the one this thread is running, if it runs one; otherwise hands it
/// back.
fn queue_if_busy(runnable: Runnable) -> Option<Runnable> {
    let mut runnable = Some(runnable);
    let access = QUEUE.try_with(|queue| {
        if let Some(waiting) = queue.borrow_mut().as_mut() {
            waiting.extend(runnable.take());
        }
    });
    match (access, runnable) {
        (_, None) => None,
        (Ok(()), Some(runnable)) => Some(runnable),
        // The thread is exiting and its queue is gone: the helper runs the task.
        (Err(_), Some(runnable)) => {
            Helper::get().run(runnable);
            None
        }
    }
}

/// Runs the task, then every task woken on this thread meanwhile, until none is left.
fn run_here(first: Runnable) {
    let entered = QUEUE.try_with(|queue| *queue.borrow_mut() = Some(VecDeque::new()));
    if entered.is_err() {
        Helper::get().run(first);
        return;
    }
    let mut next = Some(first);
    while let Some(runnable) = next {
        run(runnable);
        next = QUEUE
            .try_with(|queue| {
                let mut queue = queue.borrow_mut();
                let runnable = queue.as_mut().and_then(VecDeque::pop_front);
                if runnable.is_none() {
                    *queue = None;
                }
                runnable
            })
            .ok()
            .flatten();
    }
}

/// Runs a task until it waits or ends. A task that panics is over (async-task drops its
/// future, and with it everything the task held); the thread that ran it, which may be the
/// reactor's, carries on.
fn run(runnable: Runnable) {
    if panic::catch_unwind(|| runnable.run()).is_err() {
        tracing::error!("a client task panicked and has stopped");
    }
}

/// The helper thread: runs the tasks woken where they cannot run at once.
struct Helper {
    waiting: Mutex<VecDeque<Runnable>>,
    thread: OnceLock<Thread>,
}

impl Helper {
    fn get() -> &'static Helper {
        static HELPER: Helper = Helper { waiting: Mutex::new(VecDeque::new()), thread: OnceLock::new() };
        &HELPER
    }

    fn run(&'static self, runnable: Runnable) {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push_back(runnable);
        let thread = self.thread.get_or_init(|| {
            thread::Builder::new()
                .name("pulsewire".into())
                .spawn(move || self.serve())
                // As async-io does for its own thread: without it, nothing would run the task.
                .expect("cannot spawn the pulsewire helper thread")
                .thread()
                .clone()
        });
        thread.unpark();
    }

    fn serve(&self) {
        loop {
            let next = self.waiting.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
            match next {
                Some(runnable) => run_here(runnable),
                // An `unpark` since the last look makes this return at once.
                None => thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn task_runs_at_once_until_it_waits() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let (_tx, rx) = async_channel::bounded::<()>(1);
        spawn(async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = rx.recv().await;
        });
        assert_eq!(polls.load(Ordering::SeqCst), 1, "ran on spawn, up to its first wait");
    }

    #[test]
    fn task_woken_under_its_channel_lock_runs_on_the_helper_without_deadlock() {
        let (tx, rx) = async_channel::bounded::<u32>(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        spawn(async move {
            // Every wake-up comes from `send`, with the channel's listener list locked; the
            // task then waits on that same channel again.
            let mut sum = 0;
            while let Ok(n) = rx.recv().await {
                sum += n;
            }
            let _ = done_tx.send(sum);
        });
        for n in 1..=100 {
            futures::executor::block_on(tx.send(n)).expect("the task receives");
        }
        drop(tx);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(5050));
    }

    #[test]
    fn task_that_wakes_itself_runs_again_without_recursion() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        spawn(futures::future::poll_fn(move |cx| {
            // A task waking itself 10 000 times would overflow the stack if each wake-up ran
            // it again from inside the previous run.
            if counted.fetch_add(1, Ordering::SeqCst) < 10_000 {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        }));
        assert_eq!(runs.load(Ordering::SeqCst), 10_001);
    }

    #[test]
    fn panicking_task_stops_alone() {
        spawn(async { panic!("a bug") });
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        spawn(async move {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1, "this thread still runs tasks");
    }
}
