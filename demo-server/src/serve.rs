//! The running server: binds, then prints every event, echoes messages (numbered, like every
//! message the server sends), broadcasts the lines typed on stdin, and shuts down gracefully
//! on Ctrl-C or SIGTERM.
//!
//! Everything runs on the main thread under `futures::executor::block_on`; the SDK runs its
//! own tasks on its internal runtime. Stdin and signals are read on threads of their own and
//! arrive here through channels.

use std::collections::HashSet;
use std::io::{self, BufRead, BufWriter, Stdout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::channel::mpsc::{self, UnboundedReceiver};
use futures::stream::{Fuse, StreamExt};
use pulsewire::protocol::ClientId;
use pulsewire::{Server, ServerConfig, ServerEvent, ServerEvents};

use crate::output::{Echo, Format, Listening, Notes, Output};

/// How the server behaves beyond its [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How events are printed.
    pub format: Format,
    /// Whether every message is sent back to the peer that sent it.
    pub echo: bool,
    /// Whether acknowledgements (`ServerEvent::Delivered`) are printed.
    pub verbose: bool,
    /// The CA certificate written for a certificate made at start (`--tls-self-signed`),
    /// named on the listening line.
    pub ca_file: Option<PathBuf>,
}

/// The context of an error writing to stdout.
const STDOUT: &str = "cannot write to stdout";

/// The online list (with the detached sessions) is printed at most this often. Every event
/// line is printed at once; the list that follows a change waits for the rest of this gap, so
/// that a storm of arrivals prints ten lists a second, not one per batch (each a snapshot of
/// every peer, megabytes at 19 000 peers).
const LIST_GAP: Duration = Duration::from_millis(100);

/// The addresses `config` listens on, for an error: `127.0.0.1:7878 and TLS 127.0.0.1:7879`.
fn listeners(config: &ServerConfig) -> String {
    match (config.plaintext(), config.tls_listen()) {
        (true, Some(tls)) => format!("{} and TLS {tls}", config.listen()),
        (false, Some(tls)) => format!("TLS {tls}"),
        (_, None) => config.listen().to_string(),
    }
}

/// Runs the server until Ctrl-C or SIGTERM. Fails when the address cannot be bound, the
/// signal handler cannot be installed, or stdout is closed.
pub fn run(config: ServerConfig, options: Options) -> anyhow::Result<()> {
    let stop = stop_requests()?;
    futures::executor::block_on(serve(config, options, stop))
}

async fn serve(config: ServerConfig, options: Options, mut stop: UnboundedReceiver<()>) -> anyhow::Result<()> {
    let listeners = listeners(&config);
    let (server, events) = Server::bind(config).await.with_context(|| format!("cannot listen on {listeners}"))?;
    let mut console = Console {
        server,
        out: Output::new(options.format, BufWriter::with_capacity(64 * 1024, io::stdout())),
        echo: options.echo,
        verbose: options.verbose,
        detached: DetachedPeers::default(),
        list_due: async_io::Timer::never(),
        pacer: ListPacer::new(Instant::now()),
    };
    let listening = Listening {
        addr: console.server.local_addr(),
        tls_addr: console.server.tls_addr(),
        plaintext: console.server.config().plaintext(),
        ca_file: options.ca_file.as_deref(),
    };
    console.out.listening(&listening).context(STDOUT)?;
    let mut events = events.fuse();
    let mut lines = stdin_lines()?;

    let outcome = console.run(&mut events, &mut lines, &mut stop).await;
    console.server.shutdown().await;
    outcome?;

    // What happened before the server stopped, the peers' shutdown departures among it;
    // the stream is closed now, so this ends.
    console.echo = false;
    if let Some(event) = events.get_mut().try_next() {
        console.batch(event, events.get_mut()).await.context(STDOUT)?;
    }
    if console.pacer.pending() {
        console.print_list().await.context(STDOUT)?;
    }
    console.out.shutdown().context(STDOUT)?;
    Ok(())
}

/// The operator's side of the server: prints what happens, answers messages, and relays the
/// lines typed on stdin.
#[derive(Debug)]
struct Console {
    server: Server,
    out: Output<BufWriter<Stdout>>,
    echo: bool,
    verbose: bool,
    /// Who is detached, to tell an `offline` that ends a kept session.
    detached: DetachedPeers,
    /// Fires when a list held back by [`LIST_GAP`] is due.
    list_due: async_io::Timer,
    /// When the online list is printed.
    pacer: ListPacer,
}

impl Console {
    /// Handles events and stdin lines until a stop is requested.
    async fn run(
        &mut self,
        events: &mut Fuse<ServerEvents>,
        lines: &mut UnboundedReceiver<Vec<u8>>,
        stop: &mut UnboundedReceiver<()>,
    ) -> anyhow::Result<()> {
        loop {
            futures::select_biased! {
                _ = stop.next() => {
                    tracing::info!("stop requested: shutting down");
                    return Ok(());
                }
                event = events.next() => match event {
                    Some(event) => self.batch(event, events.get_mut()).await.context(STDOUT)?,
                    None => bail!("the server stopped on its own"),
                },
                _ = futures::FutureExt::fuse(&mut self.list_due) => self.print_list().await.context(STDOUT)?,
                line = lines.next() => if let Some(line) = line {
                    let peers = self.server.broadcast(line).await;
                    tracing::info!(peers, "broadcast a stdin line");
                },
            }
        }
    }

    /// Handles `first` and every event already waiting behind it, then prints the online list
    /// once if anyone came, went or detached: at once, or when [`LIST_GAP`] has passed since
    /// the last one. While peers arrive faster than that (a reconnect storm), the changes gather
    /// into one list instead of one list per arrival.
    async fn batch(&mut self, first: ServerEvent, events: &mut ServerEvents) -> io::Result<()> {
        let mut changed = self.event(first).await?;
        while let Some(event) = events.try_next() {
            changed |= self.event(event).await?;
        }
        self.out.flush()?;
        if changed {
            match self.pacer.changed(Instant::now()) {
                Pace::Now => self.print_list().await?,
                Pace::At(due) => self.list_due.set_at(due),
                Pace::Pending => {}
            }
        }
        Ok(())
    }

    /// Prints the online list and the detached sessions as the server has them now (two
    /// snapshots, taken one after the other).
    async fn print_list(&mut self) -> io::Result<()> {
        let peers = self.server.online().await;
        let detached = self.server.detached().await;
        let now = Instant::now();
        self.pacer.printed(now);
        self.out.online_list(&peers, &detached, now)
    }

    /// Echoes messages, then prints `event` with the echo's seq; returns whether the online
    /// list changed. `Delivered` is printed only when verbose.
    async fn event(&mut self, event: ServerEvent) -> io::Result<bool> {
        let seen = self.detached.observe(&event);
        let mut notes = Notes { was_detached: seen.was_detached, ..Notes::default() };
        match &event {
            ServerEvent::Message { peer, payload, .. } if self.echo => {
                let echo = self.server.send(peer, payload.clone()).await;
                if let Err(error) = &echo {
                    tracing::warn!(%peer, %error, "echo failed");
                }
                notes.echo = Echo::of(&echo);
            }
            ServerEvent::Delivered { .. } if !self.verbose => return Ok(false),
            _ => {}
        }
        self.out.event(&event, notes)?;
        Ok(seen.list_changed)
    }
}

/// The peers whose session is kept detached, as the events tell: it knows which events change
/// the printed lists, and which `PeerOffline` ends a kept session rather than a connection.
/// It holds one id per detached session, so the server's detached bounds bound it.
#[derive(Debug, Default)]
struct DetachedPeers {
    ids: HashSet<ClientId>,
}

/// What an event meant to [`DetachedPeers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The online list or the detached sessions changed: the list is due.
    list_changed: bool,
    /// A `PeerOffline` ended a session that was kept detached.
    was_detached: bool,
}

impl DetachedPeers {
    fn observe(&mut self, event: &ServerEvent) -> Seen {
        let (list_changed, was_detached) = match event {
            ServerEvent::PeerOnline { peer, .. } => {
                self.ids.remove(&peer.id);
                (true, false)
            }
            ServerEvent::PeerDetached { peer, .. } => {
                self.ids.insert(peer.id.clone());
                (true, false)
            }
            ServerEvent::PeerOffline { peer, .. } => (true, self.ids.remove(&peer.id)),
            _ => (false, false),
        };
        Seen { list_changed, was_detached }
    }
}

/// When the online list is printed: right after a change, unless the last one was printed less
/// than [`LIST_GAP`] ago; then once, when the gap is over, however many changes came meanwhile.
/// Time comes in as an argument.
#[derive(Debug)]
struct ListPacer {
    /// No list is printed before this.
    next: Instant,
    /// A change waits for `next`.
    pending: bool,
}

/// What to do about a change of the online list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Print it now.
    Now,
    /// Print it at this time (and arm a timer for it).
    At(Instant),
    /// A print is already due: this change will be in it.
    Pending,
}

impl ListPacer {
    fn new(now: Instant) -> ListPacer {
        ListPacer { next: now, pending: false }
    }

    /// The list changed at `now`.
    fn changed(&mut self, now: Instant) -> Pace {
        if self.pending {
            Pace::Pending
        } else if now >= self.next {
            Pace::Now
        } else {
            self.pending = true;
            Pace::At(self.next)
        }
    }

    /// The list was printed at `now`.
    fn printed(&mut self, now: Instant) {
        self.pending = false;
        self.next = now + LIST_GAP;
    }

    /// Whether a change waits to be printed.
    fn pending(&self) -> bool {
        self.pending
    }
}

/// Installs the Ctrl-C / SIGTERM / SIGHUP handler: the first signal asks for a graceful
/// shutdown through the returned channel, a second one exits at once.
fn stop_requests() -> anyhow::Result<UnboundedReceiver<()>> {
    let (requests, stop) = mpsc::unbounded();
    let requested = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        if requested.swap(true, Ordering::SeqCst) {
            eprintln!("second stop signal: exiting without waiting");
            std::process::exit(130);
        }
        // The receiver lives as long as the event loop; after it, nobody needs to hear.
        let _ = requests.unbounded_send(());
    })
    .context("cannot install the Ctrl-C / SIGTERM handler")?;
    Ok(stop)
}

/// Reads stdin on a thread of its own; each line (without its `\n` or `\r\n`) comes out of the
/// channel, which closes at end of input.
fn stdin_lines() -> anyhow::Result<UnboundedReceiver<Vec<u8>>> {
    let (sender, lines) = mpsc::unbounded();
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut line = Vec::new();
            loop {
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        if sender.unbounded_send(std::mem::take(&mut line)).is_err() {
                            break;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stdin");
                        break;
                    }
                }
            }
            tracing::debug!("stdin closed: no more broadcasts");
        })
        .context("cannot start the stdin thread")?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use pulsewire::protocol::SessionId;
    use pulsewire::{OfflineReason, PeerInfo};

    use super::*;

    fn peer(id: &str) -> PeerInfo {
        PeerInfo {
            id: ClientId::new(id).unwrap(),
            addr: "127.0.0.1:5555".parse().unwrap(),
            session: SessionId::new("s1").unwrap(),
            connected_since: Instant::now(),
            last_seen: Instant::now(),
            last_rtt: None,
            misses: 0,
            subject: None,
            tls: false,
        }
    }

    fn online(id: &str, resumed: bool) -> ServerEvent {
        ServerEvent::PeerOnline { peer: peer(id), resumed }
    }

    fn detached(id: &str) -> ServerEvent {
        ServerEvent::PeerDetached { peer: peer(id), reason: OfflineReason::Reset }
    }

    fn offline(id: &str) -> ServerEvent {
        ServerEvent::PeerOffline { peer: peer(id), reason: OfflineReason::Reset, undelivered: Vec::new() }
    }

    const CHANGED: Seen = Seen { list_changed: true, was_detached: false };

    #[test]
    fn an_offline_after_a_detach_ends_a_kept_session() {
        let mut peers = DetachedPeers::default();
        assert_eq!(peers.observe(&online("a", false)), CHANGED);
        assert_eq!(peers.observe(&detached("a")), CHANGED);
        assert_eq!(peers.observe(&offline("a")), Seen { list_changed: true, was_detached: true });
        assert!(peers.ids.is_empty(), "an ended session is forgotten");
    }

    #[test]
    fn a_resume_or_a_live_departure_is_no_kept_session_ending() {
        let mut peers = DetachedPeers::default();
        for event in [online("a", false), detached("a"), online("a", true), offline("a"), offline("b")] {
            assert_eq!(peers.observe(&event), CHANGED, "{event:?}");
        }
        assert!(peers.ids.is_empty());
    }

    #[test]
    fn messages_and_acknowledgements_leave_the_lists_alone() {
        let mut peers = DetachedPeers::default();
        let id = ClientId::new("a").unwrap();
        let message = ServerEvent::Message { peer: id.clone(), seq: 1, payload: "hi".into() };
        let delivered = ServerEvent::Delivered { peer: id, up_to: 1 };
        for event in [message, delivered] {
            assert_eq!(peers.observe(&event), Seen { list_changed: false, was_detached: false });
        }
    }

    #[test]
    fn a_change_after_a_quiet_gap_is_printed_at_once() {
        let t0 = Instant::now();
        let mut pacer = ListPacer::new(t0);
        assert_eq!(pacer.changed(t0), Pace::Now);
        pacer.printed(t0);
        assert_eq!(pacer.changed(t0 + LIST_GAP), Pace::Now);
    }

    #[test]
    fn a_storm_of_changes_prints_once_per_gap_and_its_last_change_within_one_gap() {
        let t0 = Instant::now();
        let mut pacer = ListPacer::new(t0);
        let ms = Duration::from_millis;
        let (mut prints, mut due) = (Vec::new(), None);
        // A change every millisecond for a second; the timer fires exactly when due.
        for n in 0..1000u32 {
            let now = t0 + ms(n.into());
            if let Some(at) = due.filter(|&at| at <= now) {
                pacer.printed(at);
                prints.push(at);
                due = None;
            }
            match pacer.changed(now) {
                Pace::Now => {
                    pacer.printed(now);
                    prints.push(now);
                }
                Pace::At(at) => due = Some(at),
                Pace::Pending => assert!(due.is_some(), "a pending change has its time"),
            }
        }
        assert!(prints.windows(2).all(|w| w[1] - w[0] >= LIST_GAP), "{prints:?}");
        assert_eq!(prints.len(), 10, "one list per 100 ms over a second");
        let last_change = t0 + ms(999);
        let last_print = due.unwrap_or(*prints.last().unwrap());
        assert!(last_print >= last_change && last_print - last_change <= LIST_GAP);
        assert!(pacer.pending(), "the last changes wait for their print");
    }
}
