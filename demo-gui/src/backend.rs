//! The background worker: owns the embedded server, the fault relay, the main client and the
//! extra clients, carries out the UI's commands, and reports everything through the [`Feed`].
//!
//! The UI only ever *sends* a [`Command`] (which never blocks) and reads the feed. Everything
//! that waits — binding, shutting down, closing clients, asking the server for its online list
//! — happens here or on the small threads this module starts:
//!
//! - the worker thread: commands, and every 250 ms the online list and the extra clients'
//!   states (sent only when they changed);
//! - per main client: one thread running its driver, one forwarding its events, one probing
//!   the round trip each second;
//! - per embedded server: one thread that is the server's application: it forwards the
//!   server's events, echoes messages back, and sends the stream's server → client messages;
//! - the stream thread: while the stream switch is on, it sends the stream's client → server
//!   messages and tells the server's thread when to send the next one of its own;
//! - the hijacker's thread, while the hijack fault plays out: a second client with the main
//!   client's id and another subject's token, watched until the server refuses it.
//!
//! The embedded server requires a login ([`DemoJwt`]): the main client gets its tokens from a
//! [`Minter`], each extra client has a token of its own, and nothing is sent to an external
//! server, which cannot know the app's signing key.
//!
//! The embedded server listens twice: in plaintext, and for TLS with a certificate made at
//! start ([`DemoPki`]). The main client takes the TLS listener by default, trusting the demo
//! CA; [`Command::SetTransport`] restarts it over the other listener, or trusting the wrong CA,
//! and the new client resumes the old one's session (see `Worker::let_go`). The extra
//! clients and the hijacker use the plaintext listener.
//!
//! Every send to the main client's peer happens on the server's thread, in one sequence with
//! the server's events, so the model can tell which message each of the server's
//! acknowledgements is about (see [`ServerSends`](crate::ledger::ServerSends)).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures::channel::mpsc as async_mpsc;
use futures::channel::oneshot;
use futures::executor::block_on;
use futures::{future, stream, StreamExt};
use pulsewire::core::{KeptSession, OutboxStatus, SendOptions};
use pulsewire::protocol::ClientId;
use pulsewire::{
    Client, ClientConfig, CloseReason, Driver, Event, Events, PeerInfo, ResumeState, Server, ServerEvent, ServerEvents,
    State,
};

use crate::auth::{DemoJwt, Minter, SigningKey, AUTH_GRACE, CUT_SHORT_TO, HIJACKER, SUBJECT};
use crate::feed::{ExtraCounts, Feed, HijackOutcome, Input, ServerStatus};
use crate::ledger::Sent;
use crate::pki::{DemoPki, Trust};
use crate::relay::{Blackhole, Relay};
use crate::settings::{Settings, Target};
use crate::stream::{self as numbered, Direction};

/// How often the online list and the extra clients' states are read.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// How often the main client probes the round trip while online.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long the hijack fault waits for the server's answer to the hijacker.
pub const HIJACK_PATIENCE: Duration = Duration::from_secs(10);

/// How long a transport switch waits for the main client's outbox to drain (everything it sent
/// acknowledged) before it closes the client instead of stopping it.
pub const HANDOVER_PATIENCE: Duration = Duration::from_secs(3);

/// Where the relay points before there is any server (the discard port: nobody listens).
const NOWHERE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9));

/// What the UI asks the worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start the embedded server (on the port it had before, if it ran before).
    StartServer,
    /// Stop it gracefully: every peer gets `BYE shutdown`.
    StopServer,
    /// Stop it gracefully and start it again on the same port.
    RestartServer,
    /// Kill it: every connection is cut without a word, as a crash would.
    KillServer,
    /// Start the main client (closing the one before, if any).
    Connect,
    /// Close the main client: it says `BYE` and stops for good.
    Close,
    /// Send a text message from the main client.
    Send(String),
    /// Turn the stream of numbered messages both ways on or off.
    SetStream(bool),
    /// Black-hole directions of the relay, or restore them.
    SetBlackhole(Blackhole),
    /// Cut every connection through the relay: both sides see a close.
    CutLink,
    /// Restore everything: the relay forwards both ways, the embedded server runs.
    RestoreAll,
    /// Start this many more extra clients against the server.
    SpawnExtras(usize),
    /// Close the extra clients.
    StopExtras,
    /// The hijack fault: a second client with the main client's id and a token of another
    /// subject (allowed every id) asks the embedded server for the id; it must be refused.
    Hijack,
    /// The expire-token fault: the main client's credential expires now (in
    /// [`CUT_SHORT_TO`]); past the grace the server ends the connection with `auth-expired`, and
    /// the client gets a new token and resumes.
    ExpireToken,
    /// Restart the main client over this transport (the embedded server's plaintext or TLS
    /// listener, trusting the demo CA or the wrong one); the new client resumes the old one's
    /// session.
    SetTransport(Transport),
    /// Use these settings, restarting what they affect.
    Apply(Settings),
}

/// How the main client reaches the embedded server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The plaintext listener.
    Plaintext,
    /// The TLS listener, trusting this authority.
    Tls(Trust),
}

impl Default for Transport {
    /// TLS, trusting the demo CA.
    fn default() -> Transport {
        Transport::Tls(Trust::DemoCa)
    }
}

/// The handle the UI holds. Dropping it closes every client, stops the server and waits for the
/// worker to finish (a few seconds at most).
#[derive(Debug)]
pub struct Backend {
    commands: Option<Sender<Command>>,
    worker: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts the worker: it starts the embedded server and the relay, then connects the main
    /// client, reporting each step through `feed`.
    pub fn start(settings: Settings, feed: Feed) -> std::io::Result<Backend> {
        let key = SigningKey::random()?;
        let pki = DemoPki::generate().map_err(std::io::Error::other)?;
        let (commands, inbox) = mpsc::channel();
        let worker = thread::Builder::new().name("demo-worker".into()).spawn(move || {
            let mut worker = Worker::new(settings, key, pki, feed);
            worker.boot();
            worker.run(&inbox);
            worker.quit();
        })?;
        Ok(Backend { commands: Some(commands), worker: Some(worker) })
    }

    /// Queues a command; never blocks.
    pub fn send(&self, command: Command) {
        if let Some(commands) = &self.commands {
            // Fails only when the worker is gone (it never stops before the handle is dropped).
            let _ = commands.send(command);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Everything the worker owns.
struct Worker {
    settings: Settings,
    feed: Feed,
    /// The embedded server's signing key, kept across its restarts.
    key: SigningKey,
    /// The embedded server's authenticator (one for every run of it).
    authenticator: Arc<DemoJwt>,
    /// The embedded server's certificate and the authorities a client may trust.
    pki: DemoPki,
    /// How the main client reaches the embedded server (an external one: always plaintext).
    transport: Transport,
    /// The main client's token provider (none while it sends no token).
    minter: Option<Minter>,
    /// The hijacker's thread, while the hijack fault plays out.
    hijack: Option<JoinHandle<()>>,
    relay: Option<Relay>,
    server: Option<Server>,
    /// The embedded server's port, kept across restarts (0 until it first ran).
    port: u16,
    /// Its TLS port, likewise.
    tls_port: u16,
    /// Which run of the embedded server is the current one (0 before the first).
    instance: u64,
    client: Option<MainClient>,
    generation: u64,
    extras: Vec<Client>,
    stream: Option<StreamThread>,
    last_online: Option<Vec<PeerInfo>>,
    /// The detached sessions as last reported, each with the moment it ends.
    last_detached: Option<Vec<(KeptSession, Instant)>>,
    last_outbox: Option<OutboxStatus>,
    last_extras: ExtraCounts,
}

/// The main client, and the threads that run for it.
struct MainClient {
    client: Client,
    /// Dropping it stops the driver where it stands.
    stop: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
    /// Dropping it ends the probe thread.
    stop_probing: Option<Sender<()>>,
    probe: Option<JoinHandle<()>>,
}

impl MainClient {
    /// Ends the probe thread, waiting for a probe under way (it resolves with the server's
    /// answer or the connection's end).
    fn stop_probing(&mut self) {
        drop(self.stop_probing.take());
        if let Some(probe) = self.probe.take() {
            let _ = probe.join();
        }
    }

    /// Stops the driver where it stands: every task ends and the connection is dropped without
    /// `BYE`, as when the process ends. (After [`Client::close`] it has ended already.)
    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }

    /// Closes the client (what is unwritten is handed back, `BYE` if connected) and waits for
    /// its threads.
    fn close(&mut self) {
        block_on(self.client.close());
        self.stop_probing();
        self.halt();
    }
}

/// The stream thread and the way to it.
struct StreamThread {
    control: Sender<StreamControl>,
    thread: JoinHandle<()>,
}

impl Worker {
    fn new(settings: Settings, key: SigningKey, pki: DemoPki, feed: Feed) -> Worker {
        let authenticator = Arc::new(DemoJwt::new(&key, feed.clone()));
        Worker {
            settings,
            feed,
            key,
            authenticator,
            pki,
            transport: Transport::default(),
            minter: None,
            hijack: None,
            relay: None,
            server: None,
            port: 0,
            tls_port: 0,
            instance: 0,
            client: None,
            generation: 0,
            extras: Vec::new(),
            stream: None,
            last_online: None,
            last_detached: None,
            last_outbox: None,
            last_extras: ExtraCounts::default(),
        }
    }

    /// Tells the stream thread something (it is started on first use).
    fn tell_stream(&mut self, control: StreamControl) {
        if self.stream.is_none() {
            let (tx, rx) = mpsc::channel();
            let feed = self.feed.clone();
            match thread::Builder::new().name("stream".into()).spawn(move || Pacer::new(feed).run(&rx)) {
                Ok(thread) => self.stream = Some(StreamThread { control: tx, thread }),
                Err(error) => {
                    self.feed.note(format!("cannot start the stream thread: {error}"));
                    return;
                }
            }
        }
        if let Some(stream) = &self.stream {
            // Fails only if the thread panicked; the stream then just stops.
            let _ = stream.control.send(control);
        }
    }

    fn boot(&mut self) {
        if self.settings.target == Target::Embedded {
            self.start_server();
        }
        match Relay::start(NOWHERE) {
            Ok(relay) => self.relay = Some(relay),
            Err(error) => self.feed.note(format!("the fault relay could not start ({error}); faults are off")),
        }
        self.point_relay();
        self.report_relay();
        self.connect(None);
    }

    fn run(&mut self, inbox: &Receiver<Command>) {
        let mut next_poll = Instant::now();
        loop {
            match inbox.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_poll {
                self.poll();
                next_poll = Instant::now() + POLL_EVERY;
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::StartServer => {
                if self.server.is_none() {
                    self.start_server();
                }
            }
            Command::StopServer => self.stop_server(),
            Command::RestartServer => {
                self.stop_server();
                self.start_server();
            }
            Command::KillServer => {
                if let Some(server) = self.server.take() {
                    self.tell_stream(StreamControl::Server(None));
                    block_on(server.abort());
                    self.feed.send(Input::Server(ServerStatus::Killed));
                }
            }
            Command::Connect => self.connect(None),
            Command::Close => self.close_client(),
            Command::Send(text) => self.send(text),
            Command::SetStream(on) => self.set_stream(on),
            Command::SetBlackhole(blackhole) => {
                if let Some(relay) = &self.relay {
                    relay.set_blackhole(blackhole);
                }
                self.report_relay();
            }
            Command::CutLink => {
                if let Some(relay) = &self.relay {
                    let cut = relay.cut();
                    self.feed.note(format!("cut {cut} relayed connection(s): both sides see a close"));
                }
            }
            Command::RestoreAll => {
                if let Some(relay) = &self.relay {
                    relay.set_blackhole(Blackhole::default());
                }
                self.report_relay();
                if self.server.is_none() && self.settings.target == Target::Embedded {
                    self.start_server();
                }
                if self.transport == Transport::Tls(Trust::WrongCa) {
                    self.set_transport(Transport::Tls(Trust::DemoCa));
                }
            }
            Command::SpawnExtras(count) => self.spawn_extras(count),
            Command::StopExtras => self.stop_extras(),
            Command::Hijack => self.hijack(),
            Command::ExpireToken => self.expire_token(),
            Command::SetTransport(transport) => self.set_transport(transport),
            Command::Apply(settings) => self.apply(settings),
        }
    }

    /// Whether the embedded server runs and the main client talks to it: only then do the app's
    /// tokens mean anything.
    fn embedded_running(&self) -> bool {
        self.settings.target == Target::Embedded && self.server.is_some()
    }

    /// The hijack fault: starts the hijacker on its own thread.
    fn hijack(&mut self) {
        if !self.embedded_running() {
            self.feed.note("no hijack: it needs the embedded server running (only it knows the app's signing key)");
            return;
        }
        if self.hijack.as_ref().is_some_and(|hijack| !hijack.is_finished()) {
            self.feed.note("no hijack: the last one is still under way");
            return;
        }
        if let Some(done) = self.hijack.take() {
            let _ = done.join();
        }
        let id = self.settings.client_id.clone();
        // Any id is allowed to mallory: the server must refuse this one because alice holds it.
        let token = self.key.mint(HIJACKER, Some(&["*"]), Some(Duration::from_secs(60)));
        let config = match self.settings.client_builder(&self.server_address(), &id).token(token).build() {
            Ok(config) => config,
            Err(error) => {
                self.feed.note(format!("no hijack: {error}"));
                return;
            }
        };
        self.feed.send(Input::HijackStarted { client_id: id, subject: HIJACKER.to_owned() });
        let feed = self.feed.clone();
        match thread::Builder::new().name("hijacker".into()).spawn(move || hijack(config, &feed)) {
            Ok(thread) => self.hijack = Some(thread),
            Err(error) => self.feed.note(format!("no hijack: cannot start its thread: {error}")),
        }
    }

    /// The expire-token fault: the server cuts the main client's credential short at its next
    /// `HELLO`, and the link is cut so that the client says `HELLO` now.
    fn expire_token(&mut self) {
        if !self.embedded_running() || self.minter.is_none() {
            self.feed.note("no expire token: it needs the embedded server running and a client that logs in to it");
            return;
        }
        let id = self.settings.client_id.clone();
        self.authenticator.cut_short_next(&id, SUBJECT);
        let how = match (&self.relay, self.settings.via_relay) {
            (Some(relay), true) => {
                relay.cut();
                "the relay cuts its connection"
            }
            _ => {
                if let Some(server) = &self.server {
                    block_on(server.drop_connections());
                }
                "the server drops every connection (the client does not go through the relay)"
            }
        };
        self.feed.note(format!(
            "expire token: the server will hold {id}'s credential to expire {} after its next HELLO, and {how} so \
             that it says HELLO now; {} past the expiry the server ends the connection with auth-expired",
            crate::words::seconds(&CUT_SHORT_TO),
            crate::words::seconds(&AUTH_GRACE),
        ));
    }

    /// Restarts the main client over `transport`, carrying its session over.
    fn set_transport(&mut self, transport: Transport) {
        if self.settings.target != Target::Embedded {
            self.feed.note(
                "no TLS switch: only the embedded server has the demo certificate; the client of an external server \
                 connects in plaintext",
            );
            return;
        }
        if transport == self.transport && self.client.is_some() {
            return;
        }
        self.transport = transport;
        let resume = self.let_go();
        self.connect(resume);
    }

    /// Lets the main client go so that the next one can resume its session, and returns the
    /// session (as [`Client::resume_state`] gives it, what an application saves to resume after
    /// a restart).
    ///
    /// [`Client::close`] would say `BYE`, and the server ends a session whose client said
    /// goodbye. So: the stream stops sending through this client; once it is online with
    /// everything it sent acknowledged, its driver is stopped where it stands, its connection
    /// dropped without a word (the server keeps the session, as for any lost connection), and
    /// nothing is lost with it. A client that is offline (backing off, or failing every TLS
    /// handshake) has no connection to say `BYE` on: it is closed, and hands back what it
    /// still holds. One whose outbox does not drain within [`HANDOVER_PATIENCE`] (a dead link)
    /// is closed too: the server ends the session if the `BYE` reaches it.
    fn let_go(&mut self) -> Option<ResumeState> {
        let mut main = self.client.take()?;
        self.release_stream();
        main.stop_probing();
        let deadline = Instant::now() + HANDOVER_PATIENCE;
        let how = loop {
            let online = matches!(main.client.state(), State::Online { .. });
            let outbox = main.client.outbox();
            if online && outbox.queued + outbox.unacked == 0 {
                main.halt();
                break "stopped without BYE, everything it sent acknowledged: the server keeps its session";
            }
            if !online || Instant::now() >= deadline {
                let how = if online {
                    "closed: its outbox did not drain in time; its BYE ends the session"
                } else {
                    "closed while offline (no connection to say BYE on); what it held is handed back"
                };
                main.close();
                break how;
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.minter = None;
        let resume = main.client.resume_state();
        let session = resume.as_ref().map_or_else(|| "none yet".to_owned(), |state| state.session().to_string());
        self.feed.note(format!("client {} {how} (its session: {session})", main.client.config().client_id()));
        resume
    }

    /// Stops the embedded server gracefully, if it runs.
    fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.tell_stream(StreamControl::Server(None));
            block_on(server.shutdown());
            self.feed.send(Input::Server(ServerStatus::Stopped));
        }
    }

    fn set_stream(&mut self, on: bool) {
        if on && self.settings.target != Target::Embedded {
            self.feed.note("the stream needs the embedded server: its receiver counts what arrives");
            return;
        }
        self.tell_stream(StreamControl::Run(on));
    }

    /// Binds the embedded server on its ports and starts its application thread.
    fn start_server(&mut self) {
        let authenticator: Arc<dyn pulsewire::auth::Authenticator> = self.authenticator.clone();
        let tls = Some((self.tls_port, self.pki.server()));
        let config = match self.settings.server_config(self.port, tls, Some(authenticator)) {
            Ok(config) => config,
            Err(error) => {
                self.feed.send(Input::Server(ServerStatus::Failed(error.to_string())));
                return;
            }
        };
        let (interval, max_missed, keep) = (config.interval(), config.max_missed(), config.keep());
        match block_on(Server::bind(config)) {
            Ok((server, events)) => {
                let (addr, tls_addr) = (server.local_addr(), server.tls_addr());
                self.port = addr.port();
                self.tls_port = tls_addr.map_or(0, |addr| addr.port());
                self.instance += 1;
                let instance = self.instance;
                let (ticks_tx, ticks) = async_mpsc::unbounded();
                spawn(&self.feed, "server-app", {
                    let (server, feed) = (server.clone(), self.feed.clone());
                    move || serve(&server, events, ticks, instance, &feed)
                });
                self.server = Some(server);
                self.last_online = None;
                self.last_detached = None;
                self.feed.send(Input::Server(ServerStatus::Running { addr, tls_addr, interval, max_missed, keep }));
                self.tell_stream(StreamControl::Server(Some(ticks_tx)));
                self.point_relay();
            }
            Err(error) => {
                let (port, tls_port) = (self.port, self.tls_port);
                let ports = format!("ports {port} and {tls_port} (TLS)");
                self.feed.send(Input::Server(ServerStatus::Failed(format!("cannot listen on {ports}: {error}"))));
            }
        }
    }

    /// How the main client reaches its server: an external one in plaintext.
    fn main_transport(&self) -> Transport {
        match self.settings.target {
            Target::Embedded => self.transport,
            Target::External(_) => Transport::Plaintext,
        }
    }

    /// The embedded server's listener for the main client's transport.
    fn main_listener(&self) -> SocketAddr {
        let port = if self.main_transport() == Transport::Plaintext { self.port } else { self.tls_port };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Where the main client's server is, as an address the relay can connect to.
    fn upstream(&self) -> Result<SocketAddr, String> {
        match &self.settings.target {
            Target::Embedded => Ok(self.main_listener()),
            Target::External(addr) => addr
                .to_socket_addrs()
                .map_err(|error| format!("cannot resolve {addr}: {error}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to no address")),
        }
    }

    /// Points the relay at the current server.
    fn point_relay(&self) {
        let Some(relay) = &self.relay else { return };
        match self.upstream() {
            Ok(upstream) if upstream.port() != 0 => relay.set_upstream(upstream),
            Ok(_) => {}
            Err(error) => self.feed.note(error),
        }
    }

    fn report_relay(&self) {
        if let Some(relay) = &self.relay {
            self.feed.send(Input::Relay { addr: relay.local_addr(), blackhole: relay.blackhole() });
        }
    }

    /// The address the main client connects to: the relay, or the server itself.
    fn client_target(&self) -> String {
        match (&self.relay, self.settings.via_relay, &self.settings.target) {
            (Some(relay), true, _) => relay.local_addr().to_string(),
            (_, _, Target::Embedded) => self.main_listener().to_string(),
            (_, _, Target::External(addr)) => addr.clone(),
        }
    }

    /// The server's own address (the embedded server's plaintext listener), as the extra
    /// clients and the hijacker use it.
    fn server_address(&self) -> String {
        match &self.settings.target {
            Target::Embedded => SocketAddr::from(([127, 0, 0, 1], self.port)).to_string(),
            Target::External(addr) => addr.clone(),
        }
    }

    /// Starts a new main client, closing the one before; it resumes `resume` if given.
    fn connect(&mut self, resume: Option<ResumeState>) {
        self.close_client();
        // The relay forwards new connections to the listener of the client's transport.
        self.point_relay();
        let transport = self.main_transport();
        let target = self.client_target();
        let generation = self.generation + 1;
        let id = self.settings.client_id.clone();
        let mut builder = self.settings.client_builder(&target, &id);
        if let Transport::Tls(trust) = transport {
            builder = builder.tls(self.pki.client(trust));
        }
        if let Some(state) = &resume {
            builder = builder.resume(state.clone());
        }
        // Tokens for the embedded server only: an external one cannot know the app's key.
        let minter = (self.settings.target == Target::Embedded).then(|| {
            let lifetime = self.settings.token_lifetime();
            Minter::new(self.key.clone(), &id, generation, lifetime, self.feed.clone())
        });
        if let Some(minter) = &minter {
            let minter = minter.clone();
            builder = builder.token_provider(move || {
                let token = minter.mint();
                async move { Ok::<_, String>(token) }
            });
        }
        let config = match builder.build() {
            Ok(config) => config,
            Err(error) => {
                self.feed.note(format!("cannot start the client: {error}"));
                return;
            }
        };
        self.generation = generation;
        let via_relay = self.relay.is_some() && self.settings.via_relay;
        let subject = minter.as_ref().map(|_| SUBJECT.to_owned());
        // What the configuration says, not what was asked for.
        let tls = match transport {
            Transport::Tls(trust) if config.uses_tls() => Some(trust),
            _ => None,
        };
        let resumes = resume.map(|state| state.session().to_string());
        self.feed.send(Input::ClientStarted { generation, client_id: id, target, via_relay, subject, tls, resumes });
        self.minter = minter;
        let (client, events, driver) = Client::new(config);
        let (stop, stopped) = oneshot::channel();
        let driver = match thread::Builder::new().name("client-driver".into()).spawn(move || drive(driver, stopped)) {
            Ok(thread) => Some(thread),
            Err(error) => {
                self.feed.note(format!("cannot start the client's driver thread: {error}"));
                return;
            }
        };
        spawn(&self.feed, "client-events", {
            let feed = self.feed.clone();
            move || forward_client_events(events, generation, &feed)
        });
        let (stop_probing, probing) = mpsc::channel();
        let probe = thread::Builder::new().name("client-probe".into()).spawn({
            let (client, feed) = (client.clone(), self.feed.clone());
            move || probe_loop(&client, &probing, generation, &feed)
        });
        let probe = probe.map_err(|error| self.feed.note(format!("cannot start the probe thread: {error}"))).ok();
        self.last_outbox = None;
        self.tell_stream(StreamControl::Client(Some((generation, client.clone()))));
        self.client = Some(MainClient { client, stop: Some(stop), driver, stop_probing: Some(stop_probing), probe });
    }

    fn close_client(&mut self) {
        if let Some(mut main) = self.client.take() {
            main.close();
            self.tell_stream(StreamControl::Client(None));
        }
        self.minter = None;
    }

    /// Makes the stream thread let go of the main client, and waits until it has (it answers
    /// between two sends; one waits at most while the client is online with a full outbox).
    fn release_stream(&mut self) {
        let Some(stream) = &self.stream else { return };
        let (released, answer) = mpsc::channel();
        if stream.control.send(StreamControl::Release(released)).is_ok() {
            let _ = answer.recv_timeout(HANDOVER_PATIENCE);
        }
    }

    fn send(&self, text: String) {
        let Some(MainClient { client, .. }) = &self.client else {
            self.feed.note("not sent: no client (press Connect)");
            return;
        };
        if Direction::looks_like_stream(&text) {
            self.feed.note(format!("not sent: texts that start with \"c2s \" or \"s2c \" are the stream's: {text:?}"));
            return;
        }
        match client.try_send(text.clone()) {
            Ok(ticket) => {
                let generation = self.generation;
                self.feed.send(Input::ClientSent { generation, ticket: ticket.get(), sent: Sent::Text(text) });
            }
            Err(error) => self.feed.note(format!("{error}: {text:?}")),
        }
    }

    fn spawn_extras(&mut self, count: usize) {
        let server = self.server_address();
        let embedded = self.settings.target == Target::Embedded;
        let first = self.extras.len() + 1;
        let mut started = 0;
        for n in first..first + count {
            let id = format!("extra-{n:03}");
            let mut builder = self.settings.client_builder(&server, &id);
            if embedded {
                // Each its own subject, named like its id, with a token that does not expire.
                builder = builder.token(self.key.mint(&id, None, None));
            }
            match builder.build() {
                Ok(config) => {
                    // Their events are not read: the online list and their states tell the story.
                    let (client, _events) = Client::start(config);
                    self.extras.push(client);
                    started += 1;
                }
                Err(error) => {
                    self.feed.note(format!("cannot start {id}: {error}"));
                    break;
                }
            }
        }
        self.feed.note(format!("started {started} extra client(s) against {server} (direct, not through the relay)"));
    }

    fn stop_extras(&mut self) {
        let extras = std::mem::take(&mut self.extras);
        if !extras.is_empty() {
            block_on(futures::future::join_all(extras.iter().map(Client::close)));
            self.feed.note(format!("closed {} extra client(s)", extras.len()));
        }
    }

    fn apply(&mut self, settings: Settings) {
        if let Err(error) = settings.validate() {
            self.feed.note(format!("settings not applied: {error}"));
            return;
        }
        let before = std::mem::replace(&mut self.settings, settings);
        self.feed.note("settings applied");
        let embedded = self.settings.target == Target::Embedded;
        if !embedded {
            self.tell_stream(StreamControl::Run(false));
        }
        if embedded && (self.server.is_none() || before.server_changed(&self.settings)) {
            self.stop_server();
            self.start_server();
        }
        self.point_relay();
        let client_changed = (&before.client_id, &before.target, before.via_relay)
            != (&self.settings.client_id, &self.settings.target, self.settings.via_relay)
            || backoff(&before) != backoff(&self.settings);
        if client_changed && self.client.is_some() {
            self.connect(None);
        } else if before.token_lifetime_s != self.settings.token_lifetime_s {
            if let Some(minter) = &self.minter {
                minter.set_lifetime(self.settings.token_lifetime());
                self.feed.note(format!(
                    "the next tokens live {}: the current one keeps its expiry",
                    crate::words::seconds(&self.settings.token_lifetime())
                ));
            }
        }
        if client_changed && !self.extras.is_empty() {
            let count = self.extras.len();
            self.stop_extras();
            self.spawn_extras(count);
        }
    }

    /// Reads the online list, the detached sessions, the main client's outbox and the extra
    /// clients' states; reports what changed.
    fn poll(&mut self) {
        if let Some(server) = &self.server {
            let peers = block_on(server.online());
            if self.last_online.as_deref().is_none_or(|last| !same_view(last, &peers)) {
                self.feed.send(Input::Online(peers.clone()));
                self.last_online = Some(peers);
            }
            let now = Instant::now();
            let detached: Vec<(KeptSession, Instant)> =
                block_on(server.detached()).into_iter().map(|kept| (kept.clone(), now + kept.left)).collect();
            if self.last_detached.as_deref().is_none_or(|last| !same_sessions(last, &detached)) {
                self.feed.send(Input::Detached(detached.iter().map(|(kept, _)| kept.clone()).collect()));
                self.last_detached = Some(detached);
            }
        }
        if let Some(MainClient { client, .. }) = &self.client {
            let status = client.outbox();
            if self.last_outbox != Some(status) {
                self.feed.send(Input::Outbox { generation: self.generation, status });
                self.last_outbox = Some(status);
            }
        }
        let counts = count_states(&self.extras);
        if counts != self.last_extras {
            self.last_extras = counts;
            self.feed.send(Input::Extras(counts));
        }
    }

    fn quit(&mut self) {
        self.stop_extras();
        // Closing the client first ends a stream send that waits for room in its outbox.
        self.close_client();
        if let Some(stream) = self.stream.take() {
            drop(stream.control);
            let _ = stream.thread.join();
        }
        // Ends within HIJACK_PATIENCE.
        if let Some(hijack) = self.hijack.take() {
            let _ = hijack.join();
        }
        if let Some(server) = self.server.take() {
            block_on(server.shutdown());
        }
        self.relay = None;
    }
}

/// Whether two lists of detached sessions look the same on screen: the same sessions holding
/// the same messages, ending at the same moment (give or take the time a poll takes).
fn same_sessions(a: &[(KeptSession, Instant)], b: &[(KeptSession, Instant)]) -> bool {
    const SLACK: Duration = Duration::from_millis(100);
    a.len() == b.len()
        && a.iter().zip(b).all(|((a, a_ends), (b, b_ends))| {
            let ends_apart = a_ends.max(b_ends).saturating_duration_since(*a_ends.min(b_ends));
            (&a.client_id, &a.session, a.queued, a.bytes) == (&b.client_id, &b.session, b.queued, b.bytes)
                && ends_apart <= SLACK
        })
}

fn backoff(settings: &Settings) -> (u64, u64, f64, f64) {
    (settings.initial_delay_ms, settings.max_delay_ms, settings.multiplier, settings.jitter)
}

/// Whether two online lists look the same on screen (`last_seen` changes with every frame and
/// is not shown).
fn same_view(a: &[PeerInfo], b: &[PeerInfo]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            (&a.id, a.addr, &a.session, a.connected_since, a.last_rtt, a.misses, &a.subject, a.tls)
                == (&b.id, b.addr, &b.session, b.connected_since, b.last_rtt, b.misses, &b.subject, b.tls)
        })
}

fn count_states(clients: &[Client]) -> ExtraCounts {
    let mut counts = ExtraCounts { total: clients.len(), ..ExtraCounts::default() };
    for client in clients {
        match client.state() {
            State::Online { .. } => counts.online += 1,
            State::Connecting { .. } => counts.connecting += 1,
            State::BackingOff { .. } => counts.backing_off += 1,
            _ => {}
        }
    }
    counts
}

/// Runs `body` on a named thread; a failure to start one is reported, not fatal.
fn spawn(feed: &Feed, name: &str, body: impl FnOnce() + Send + 'static) {
    if let Err(error) = thread::Builder::new().name(name.into()).spawn(body) {
        feed.note(format!("cannot start thread {name}: {error}"));
    }
}

/// The hijacker: a client with `config` (the main client's id, another subject's token),
/// watched until the server admits or refuses it, or [`HIJACK_PATIENCE`] passes; then closed,
/// and what happened reported.
fn hijack(config: ClientConfig, feed: &Feed) {
    let (client, mut events) = Client::start(config);
    let deadline = Instant::now() + HIJACK_PATIENCE;
    let mut last_error = None;
    let outcome = loop {
        match events.try_next() {
            Some(Event::Connected { .. }) => break HijackOutcome::Admitted,
            Some(Event::Closed { reason: CloseReason::Rejected { code, text } }) => {
                break HijackOutcome::Refused { code, text }
            }
            Some(Event::Closed { reason }) => break HijackOutcome::Ended(reason.to_string()),
            Some(Event::BackingOff { last_error: Some(error), .. }) => last_error = Some(crate::words::failure(&error)),
            Some(_) => {}
            None if Instant::now() >= deadline => {
                break last_error.map_or(HijackOutcome::NoAnswer, HijackOutcome::Ended)
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    block_on(client.close());
    feed.send(Input::Hijack { outcome, tasks_left: client.live_tasks() });
}

/// Forwards the main client's events until its stream ends (after `Closed`).
fn forward_client_events(mut events: Events, generation: u64, feed: &Feed) {
    block_on(async {
        while let Some(event) = events.next().await {
            feed.send(Input::Client { generation, event });
        }
    });
}

/// Runs a main client's driver until it ends (the client closed, gave up or was refused), or
/// until `stop` resolves: then the driver is dropped where it stands, and with it every task
/// and the connection, without `BYE`.
fn drive(driver: Driver, stop: oneshot::Receiver<()>) {
    block_on(future::select(driver, stop));
}

/// Probes the round trip every [`PROBE_EVERY`] while online, until the client is finished or
/// `stop` is dropped.
fn probe_loop(client: &Client, stop: &Receiver<()>, generation: u64, feed: &Feed) {
    while !client.is_finished() {
        match stop.recv_timeout(PROBE_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if matches!(client.state(), State::Online { .. }) {
            // Resolves when the answer comes or the connection ends, whichever is first.
            let result = block_on(client.probe());
            feed.send(Input::Probe { generation, result });
        }
    }
}

/// What the stream thread is told.
enum StreamControl {
    /// The switch.
    Run(bool),
    /// The main client to stream from (none while there is no client).
    Client(Option<(u64, Client)>),
    /// Let go of the main client, and say so once no send through it is under way.
    Release(Sender<()>),
    /// The running embedded server's application thread, to be told when to send (none while
    /// no embedded server runs).
    Server(Option<async_mpsc::UnboundedSender<Tick>>),
}

/// The server's turn to send stream number `n` to the main client `to`.
#[derive(Debug)]
struct Tick {
    to: ClientId,
    n: u64,
}

/// The stream thread: [`numbered::RATE`] times a second, while the switch is on, it sends the
/// next client → server number with `Client::send` and hands the server's thread the next
/// server → client number.
///
/// Every number is tried once: one the SDK refuses (`SendError`, `ServerSendError`) is
/// reported as refused, so that the receiver's check knows it never left.
struct Pacer {
    feed: Feed,
    on: bool,
    client: Option<(u64, Client)>,
    /// The main client's id, kept while there is no client: the server still sends to it
    /// (to its detached session, or refused).
    to: Option<ClientId>,
    server: Option<async_mpsc::UnboundedSender<Tick>>,
    /// The next number, per direction.
    next: [u64; 2],
}

impl Pacer {
    fn new(feed: Feed) -> Pacer {
        Pacer { feed, on: false, client: None, to: None, server: None, next: [1, 1] }
    }

    fn run(mut self, control: &Receiver<StreamControl>) {
        let mut due = Instant::now();
        loop {
            let message = if self.on {
                control.recv_timeout(due.saturating_duration_since(Instant::now()))
            } else {
                control.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match message {
                Ok(StreamControl::Run(on)) => {
                    if on != self.on {
                        self.on = on;
                        due = Instant::now();
                        self.feed.send(Input::Streaming(on));
                    }
                }
                Ok(StreamControl::Client(client)) => {
                    if let Some((_, client)) = &client {
                        self.to = Some(client.config().client_id().clone());
                    }
                    self.client = client;
                }
                Ok(StreamControl::Release(released)) => {
                    self.client = None;
                    let _ = released.send(());
                }
                Ok(StreamControl::Server(server)) => self.server = server,
                Err(RecvTimeoutError::Timeout) => {
                    self.tick();
                    // A tick that waited (a full outbox) is not made up for: the rate stays steady.
                    let now = Instant::now();
                    while due <= now {
                        due += numbered::EVERY;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn tick(&mut self) {
        if let Some((generation, client)) = &self.client {
            let direction = Direction::ClientToServer;
            let n = self.next[direction.index()];
            self.next[direction.index()] += 1;
            let options = SendOptions::new().ttl(numbered::TTL);
            // Waits only while the client is online and its outbox full: the stream slows down.
            match block_on(client.send_with(direction.payload(n), options)) {
                Ok(ticket) => {
                    let sent = Sent::Stream(n);
                    self.feed.send(Input::ClientSent { generation: *generation, ticket: ticket.get(), sent });
                }
                Err(error) => self.feed.send(Input::StreamRefused { direction, n, reason: error.to_string() }),
            }
        }
        if let (Some(server), Some(to)) = (&self.server, &self.to) {
            let index = Direction::ServerToClient.index();
            let n = self.next[index];
            if server.unbounded_send(Tick { to: to.clone(), n }).is_ok() {
                self.next[index] += 1;
            } else {
                // The server's thread has finished: the server stopped.
                self.server = None;
            }
        }
    }
}

/// What wakes the embedded server's application thread.
enum Wake {
    Event(ServerEvent),
    Tick(Tick),
    Ended,
}

/// The embedded server's application, until the server stops: forwards its events, echoes
/// each message that is not the stream's to its sender (as `demo-server` does), and sends the
/// stream's server → client numbers when told. Every send and every event is reported in the
/// order this thread saw them.
fn serve(
    server: &Server,
    events: ServerEvents,
    mut ticks: async_mpsc::UnboundedReceiver<Tick>,
    instance: u64,
    feed: &Feed,
) {
    block_on(async {
        let events = events.map(Wake::Event).chain(stream::once(future::ready(Wake::Ended)));
        let mut wakes = stream::select(events, (&mut ticks).map(Wake::Tick));
        while let Some(wake) = wakes.next().await {
            match wake {
                Wake::Event(event) => {
                    let echo = match &event {
                        ServerEvent::Message { peer, payload, .. }
                            if Direction::ClientToServer.number(payload).is_none() =>
                        {
                            Some((peer.clone(), payload.clone()))
                        }
                        _ => None,
                    };
                    feed.send(Input::ServerEvent { instance, event });
                    if let Some((peer, payload)) = echo {
                        let sent = Sent::Text(String::from_utf8_lossy(&payload).into_owned());
                        match server.send(&peer, payload).await {
                            Ok(seq) => feed.send(Input::ServerSent { instance, peer, seq, sent }),
                            Err(error) => feed.note(format!("echo to {peer} failed: {error}")),
                        }
                    }
                }
                Wake::Tick(Tick { to, n }) => {
                    let direction = Direction::ServerToClient;
                    match server.send(&to, direction.payload(n)).await {
                        Ok(seq) => feed.send(Input::ServerSent { instance, peer: to, seq, sent: Sent::Stream(n) }),
                        Err(error) => feed.send(Input::StreamRefused { direction, n, reason: error.to_string() }),
                    }
                }
                Wake::Ended => break,
            }
        }
    });
    // Numbers handed over that this thread will never send: the stream thread learns from the
    // closed channel, the model from these refusals.
    ticks.close();
    while let Ok(Tick { n, .. }) = ticks.try_recv() {
        let reason = "not sent: the server has stopped".to_owned();
        feed.send(Input::StreamRefused { direction: Direction::ServerToClient, n, reason });
    }
    feed.send(Input::ServerEnded { instance });
}
