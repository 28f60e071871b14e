//! A crowd of SDK clients in the test process, with every event of every client logged with the
//! moment it was read, for load tests (restart storms, shutdown with a thousand peers).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use pulsewire::{Client, ClientConfig, Event};

/// One event of one client.
pub type Logged = (Event, Instant);

/// Many clients started with [`Client::start`]; one thread reads all their event streams.
#[derive(Debug)]
pub struct Crowd {
    /// The clients, in the order of their configurations.
    pub clients: Vec<Client>,
    /// Every event read so far, per client, in order.
    pub log: Vec<Vec<Logged>>,
    rx: mpsc::Receiver<(usize, Event, Instant)>,
    reader: Option<JoinHandle<()>>,
}

impl Crowd {
    /// Starts one client per configuration.
    pub fn start(configs: impl IntoIterator<Item = ClientConfig>) -> Crowd {
        let (clients, streams): (Vec<_>, Vec<_>) = configs.into_iter().map(Client::start).unzip();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let tagged = streams.into_iter().enumerate().map(|(n, events)| events.map(move |event| (n, event)));
            let mut all = futures::stream::select_all(tagged);
            futures::executor::block_on(async {
                while let Some((n, event)) = all.next().await {
                    if tx.send((n, event, Instant::now())).is_err() {
                        break;
                    }
                }
            });
        });
        let log = vec![Vec::new(); clients.len()];
        Crowd { clients, log, rx, reader: Some(reader) }
    }

    /// How many events each client has logged: a mark to look only at what comes after.
    pub fn mark(&self) -> Vec<usize> {
        self.log.iter().map(Vec::len).collect()
    }

    fn read_one(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok((n, event, at)) => {
                self.log[n].push((event, at));
                true
            }
            Err(_) => false,
        }
    }

    /// Waits up to `limit` until every client logged, after `since`, an event matching `pred`;
    /// returns for each client the first such event's moment.
    pub fn wait_each(
        &mut self,
        limit: Duration,
        since: &[usize],
        pred: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + limit;
        loop {
            let found: Vec<Option<Instant>> = self
                .log
                .iter()
                .zip(since)
                .map(|(log, &from)| log[from..].iter().find(|(event, _)| pred(event)).map(|(_, at)| *at))
                .collect();
            let missing = found.iter().filter(|at| at.is_none()).count();
            if missing == 0 {
                return Ok(found.into_iter().flatten().collect());
            }
            if !self.read_one(deadline) {
                let example = found.iter().position(Option::is_none).unwrap_or(0);
                let tail: Vec<_> = self.log[example].iter().rev().take(6).map(|(event, _)| event).collect();
                bail!(
                    "{missing} of {} clients did not get there within {limit:?}; client {example}'s last events \
                     (newest first): {tail:#?}",
                    self.log.len()
                );
            }
        }
    }

    /// Reads whatever events are ready, without waiting.
    pub fn read_ready(&mut self) {
        while self.read_one(Instant::now()) {}
    }

    /// Closes every client at once; returns how long the slowest `close()` took.
    pub fn close_all(&self) -> Duration {
        let started = Instant::now();
        futures::executor::block_on(futures::future::join_all(self.clients.iter().map(|client| async move {
            client.close().await;
            started.elapsed()
        })))
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    /// The sum of every client's live tasks.
    pub fn live_tasks(&self) -> usize {
        self.clients.iter().map(Client::live_tasks).sum()
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // Closing every client ends every stream, and with them the reader thread.
        self.close_all();
        drop(std::mem::replace(&mut self.rx, mpsc::channel().1));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
