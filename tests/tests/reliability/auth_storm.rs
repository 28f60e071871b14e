//! A reconnect storm with credentials that expire during the outage: a thousand SDK clients
//! reach an authenticating server through a TCP proxy that the test takes down for longer than
//! their tokens have left to live. When it comes back, every client's first `HELLO` carries an
//! expired token and gets `ERROR auth-expired`; its token provider is asked once, and the
//! session resumes. Nobody asks twice, nobody loops on a stale token, no session is lost.

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use pulsewire::auth::{Jwt, JwtKey};
use pulsewire::protocol::{ErrorCode, SessionId};
use pulsewire::{ConnectError, Event, Failure, OfflineReason, ServerEvent, ServerEvents};
use pulsewire_tests::crowd::{Crowd, Logged};
use pulsewire_tests::{within, Spread};
use smol::Async;

use crate::{bind, client_config, patience, serial, server_config};

const SECRET: &[u8] = b"the auth storm's secret, 32 bytes";

/// A TCP proxy between the clients and the server that the test takes down and brings back on
/// the same port. Down, its listener is closed and every connection it carried is cut: the
/// clients lose their connections, and their reconnects are refused.
#[derive(Debug)]
struct Proxy {
    /// Where the clients connect, up or down.
    addr: SocketAddr,
    /// The server.
    target: SocketAddr,
    /// While up: the stop signal (dropping it stops the proxy) and the accept loop, which
    /// owns every link it carries and returns how many it cut.
    up: Option<(smol::channel::Sender<()>, smol::Task<usize>)>,
}

impl Proxy {
    /// A proxy to `target` on a free loopback port, up.
    fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.get_ref().local_addr()?;
        let mut proxy = Proxy { addr, target, up: None };
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&mut self, listener: Async<TcpListener>) {
        let (stop, stopped) = smol::channel::bounded(1);
        self.up = Some((stop, smol::spawn(carry_all(listener, self.target, stopped))));
    }

    /// Closes the listener and cuts every connection; returns how many were cut.
    async fn take_down(&mut self) -> usize {
        match self.up.take() {
            Some((stop, accepting)) => {
                drop(stop);
                accepting.await
            }
            None => 0,
        }
    }

    /// Listens again, on the same port.
    fn bring_up(&mut self) -> anyhow::Result<()> {
        assert!(self.up.is_none(), "the proxy is up already");
        let listener = listen(self.addr)?;
        self.serve(listener);
        Ok(())
    }
}

/// A listening socket on `addr` whose accept queue holds the whole storm: the standard
/// library's `listen(128)` drops the SYNs of the rest, and they come back a second later (the
/// server's listener asks for 4096 too, see `rt::bind` in the SDK).
fn listen(addr: SocketAddr) -> anyhow::Result<Async<TcpListener>> {
    use nix::sys::socket::SockaddrIn;
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType};
    use std::os::fd::AsRawFd as _;
    let SocketAddr::V4(v4) = addr else { anyhow::bail!("{addr} is not an IPv4 address") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // As the standard library does: the port can be bound again at once after the outage.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
    // SOMAXCONN: 4096 on Linux, as the server asks (the kernel caps it at net.core.somaxconn).
    listen(&fd, Backlog::MAXCONN)?;
    Ok(Async::new(TcpListener::from(fd))?)
}

/// The proxy's accept loop: carries each connection to `target` until `stop` closes, then
/// closes the listener and cuts every link; returns how many links were still open.
async fn carry_all(listener: Async<TcpListener>, target: SocketAddr, stop: smol::channel::Receiver<()>) -> usize {
    let mut links: Vec<smol::Task<()>> = Vec::new();
    loop {
        let accepted = smol::future::or(async { Some(listener.accept().await) }, async {
            // Only ever closed, never sent to.
            let _ = stop.recv().await;
            None
        })
        .await;
        match accepted {
            Some(Ok((client, _))) => {
                links.retain(|link| !link.is_finished());
                links.push(smol::spawn(carry(client, target)));
            }
            // Out of descriptors, say: wait a moment rather than spin.
            Some(Err(_)) => {
                smol::Timer::after(Duration::from_millis(10)).await;
            }
            None => break,
        }
    }
    drop(listener);
    links.retain(|link| !link.is_finished());
    let cut = links.len();
    for link in links {
        // Cancelling drops the link's two sockets: both ends see the connection end.
        link.cancel().await;
    }
    cut
}

/// One link of the proxy: `client` to a new connection to `target`, both ways.
async fn carry(client: Async<TcpStream>, target: SocketAddr) {
    let Ok(server) = Async::<TcpStream>::connect(target).await else { return };
    futures::future::join(pipe(&client, &server), pipe(&server, &client)).await;
}

/// Copies `from` to `to` until `from` ends, then passes the end on: a half close after an
/// end-of-file, a full close of both after an error.
async fn pipe(from: &Async<TcpStream>, mut to: &Async<TcpStream>) {
    let copied = futures::io::copy(from, &mut to).await;
    // Shutting down a socket the peer closed already fails harmlessly.
    if copied.is_ok() {
        let _ = to.get_ref().shutdown(Shutdown::Write);
    } else {
        let _ = to.get_ref().shutdown(Shutdown::Both);
        let _ = from.get_ref().shutdown(Shutdown::Both);
    }
}

/// The token provider's side: mints a token for a client id on each call, counts the calls
/// per client and remembers the latest mint, so the test knows when every token has expired.
#[derive(Debug)]
struct TokenDesk {
    lifetime: Duration,
    calls: Vec<AtomicU32>,
    /// The latest mint, in milliseconds since the epoch.
    last_mint_ms: AtomicU64,
}

impl TokenDesk {
    fn new(clients: usize, lifetime: Duration) -> TokenDesk {
        TokenDesk {
            lifetime,
            calls: (0..clients).map(|_| AtomicU32::new(0)).collect(),
            last_mint_ms: AtomicU64::new(0),
        }
    }

    /// A token for client `n`, whose id is `id`, that lives for the desk's lifetime.
    fn mint(&self, n: usize, id: &str) -> String {
        self.calls[n].fetch_add(1, Ordering::SeqCst);
        let token = Jwt::mint_hs256(SECRET, id, Some(&[id]), Some(self.lifetime));
        // Read after the mint read the clock: the token's `exp` is at most this plus the
        // lifetime (the mint rounds it down to a second).
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_mint_ms.fetch_max(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        token
    }

    fn calls(&self, n: usize) -> u32 {
        self.calls[n].load(Ordering::SeqCst)
    }

    fn total_calls(&self) -> u32 {
        (0..self.calls.len()).map(|n| self.calls(n)).sum()
    }

    /// How long until every token minted so far has expired (zero if all have).
    fn left(&self) -> Duration {
        let last_mint = UNIX_EPOCH + Duration::from_millis(self.last_mint_ms.load(Ordering::SeqCst));
        (last_mint + self.lifetime).duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// One peer, as the server's events told of it.
#[derive(Debug, Default)]
struct PeerStory {
    /// Each `PeerOnline`: the session, and whether it was resumed.
    online: Vec<(SessionId, bool)>,
    detached: usize,
    offline: Vec<OfflineReason>,
}

/// What the server's events told, per peer, and how many events there were.
#[derive(Debug, Default)]
struct ServerStory {
    peers: BTreeMap<String, PeerStory>,
    events: usize,
}

impl ServerStory {
    fn note(&mut self, event: &ServerEvent) {
        self.events += 1;
        match event {
            ServerEvent::PeerOnline { peer, resumed } => {
                self.peer(peer.id.as_str()).online.push((peer.session.clone(), *resumed));
            }
            ServerEvent::PeerDetached { peer, .. } => self.peer(peer.id.as_str()).detached += 1,
            ServerEvent::PeerOffline { peer, reason, .. } => self.peer(peer.id.as_str()).offline.push(reason.clone()),
            _ => {}
        }
    }

    fn peer(&mut self, id: &str) -> &mut PeerStory {
        self.peers.entry(id.to_owned()).or_default()
    }

    /// How many `PeerOnline`, with `resumed` as given, were seen.
    fn online(&self, resumed: bool) -> usize {
        self.peers.values().map(|peer| peer.online.iter().filter(|(_, r)| *r == resumed).count()).sum()
    }

    fn detached(&self) -> usize {
        self.peers.values().map(|peer| peer.detached).sum()
    }

    fn offline(&self) -> usize {
        self.peers.values().map(|peer| peer.offline.len()).sum()
    }

    /// Reads the server's events until `done` holds, for at most `limit`.
    async fn read_until(
        &mut self,
        events: &mut ServerEvents,
        limit: Duration,
        what: &str,
        done: impl Fn(&ServerStory) -> bool,
    ) -> anyhow::Result<()> {
        let reading = async {
            while !done(self) {
                match events.next().await {
                    Some(event) => self.note(&event),
                    None => anyhow::bail!("the server's events ended"),
                }
            }
            Ok(())
        };
        within(limit, reading).await.unwrap_or_else(|| {
            anyhow::bail!(
                "not within {limit:?}: {what}; the server saw {} fresh and {} resumed PeerOnline, {} PeerDetached, \
                 {} PeerOffline",
                self.online(false),
                self.online(true),
                self.detached(),
                self.offline()
            )
        })
    }

    /// Reads whatever events are ready, without waiting.
    fn read_ready(&mut self, events: &mut ServerEvents) {
        while let Some(event) = events.try_next() {
            self.note(&event);
        }
    }
}

/// Whether `event` reports a connect attempt refused with `auth-expired`.
fn is_auth_expired_refusal(event: &Event) -> bool {
    matches!(
        event,
        Event::BackingOff {
            last_error: Some(Failure::Connect(ConnectError::Rejected { code: ErrorCode::AuthExpired, .. })),
            ..
        }
    )
}

/// Fails naming how many of the `of` clients are in `broken` (id, what it did instead of
/// keeping `promise`), with the first few.
fn all_kept(promise: &str, broken: &[(String, String)], of: usize) -> anyhow::Result<()> {
    if broken.is_empty() {
        return Ok(());
    }
    let examples: Vec<String> = broken.iter().take(5).map(|(id, what)| format!("{id}: {what}")).collect();
    anyhow::bail!("{} of {of} clients broke \"{promise}\"; the first: {}", broken.len(), examples.join("; "))
}

/// The sessions a client's `Connected` events reported, with whether each was resumed.
fn connections(log: &[Logged]) -> Vec<(SessionId, bool)> {
    let connected = log.iter().filter_map(|(event, _)| match event {
        Event::Connected { session, resumed, .. } => Some((session.clone(), *resumed)),
        _ => None,
    });
    connected.collect()
}

/// Waits up to `limit` until every client logged, after `since`, an event matching `pred`;
/// returns for each client the first such event's moment. Like [`Crowd::wait_each`], but it
/// looks at each event once: that one rescans every log after each event it reads, which a
/// storm of tens of thousands of reconnect events turns into a minute of work.
async fn wait_each(
    crowd: &mut Crowd,
    limit: Duration,
    since: &[usize],
    pred: impl Fn(&Event) -> bool,
) -> anyhow::Result<Vec<Instant>> {
    let deadline = Instant::now() + limit;
    let mut scanned = since.to_vec();
    let mut found: Vec<Option<Instant>> = vec![None; since.len()];
    loop {
        crowd.read_ready();
        for ((log, from), at) in crowd.log.iter().zip(&mut scanned).zip(&mut found) {
            if at.is_none() {
                *at = log[*from..].iter().find(|(event, _)| pred(event)).map(|(_, at)| *at);
            }
            *from = log.len();
        }
        let missing = found.iter().filter(|at| at.is_none()).count();
        if missing == 0 {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            let example = found.iter().position(Option::is_none).unwrap_or(0);
            let tail: Vec<_> = crowd.log[example].iter().rev().take(6).map(|(event, _)| event).collect();
            anyhow::bail!(
                "{missing} of {} clients did not get there within {limit:?}; client {example}'s last events \
                 (newest first): {tail:#?}",
                crowd.log.len()
            );
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_thousand_clients_whose_tokens_expire_during_an_outage_renew_each_token_once_and_all_resume() -> anyhow::Result<()>
{
    const CLIENTS: usize = 1000;
    /// A token's lifetime; the mint rounds its `exp` down to a second, so a token lives at
    /// least a second less. The ramp must end within that.
    const LIFETIME: Duration = Duration::from_secs(6);
    /// Long enough that the server never cuts an online peer whose token expired meanwhile.
    const AUTH_GRACE: Duration = Duration::from_secs(60);
    /// How long past the last token's expiry the proxy stays down.
    const MARGIN: Duration = Duration::from_millis(250);
    /// How long after the last resume the test keeps watching for a client asking again.
    const QUIET: Duration = Duration::from_secs(2);
    let _serial = serial();
    smol::block_on(async {
        let jwt = Jwt::new(JwtKey::hs256(SECRET)).leeway(Duration::ZERO);
        // A pulse a second: the storm is what is measured, not the pulses.
        let config = server_config(Duration::from_secs(1)).authenticator(Arc::new(jwt)).auth_grace(AUTH_GRACE);
        let (server, mut server_events) = bind(config).await?;
        let keep = server.config().keep();
        let mut proxy = Proxy::start(server.local_addr())?;
        let desk = Arc::new(TokenDesk::new(CLIENTS, LIFETIME));
        let ids: Vec<String> = (0..CLIENTS).map(|i| format!("storm-{i:04}")).collect();
        let configs = ids.iter().enumerate().map(|(n, id)| {
            let (desk, owned) = (desk.clone(), id.clone());
            let provider = move || {
                let token = desk.mint(n, &owned);
                async move { Ok(token) }
            };
            // Timeouts that a storm of a thousand handshakes on two cores meets.
            let config = client_config(proxy.addr, id)
                .connect_timeout(Duration::from_secs(5))
                .handshake_timeout(Duration::from_secs(5))
                .token_provider(provider);
            config.build()
        });
        let configs = configs.collect::<Result<Vec<_>, _>>()?;

        // The ramp: every client online with its first token, well before it expires.
        let started = Instant::now();
        let mut crowd = Crowd::start(configs);
        let online_at =
            wait_each(&mut crowd, patience(), &vec![0; CLIENTS], |e| matches!(e, Event::Connected { .. })).await?;
        let ramp = online_at.iter().max().map_or(Duration::ZERO, |last| *last - started);
        let mut story = ServerStory::default();
        story.read_until(&mut server_events, patience(), "every peer online", |s| s.online(false) == CLIENTS).await?;
        crowd.read_ready();
        let asked_again: Vec<(String, String)> = (0..CLIENTS)
            .filter(|&n| desk.calls(n) != 1)
            .map(|n| (ids[n].clone(), format!("{} provider calls", desk.calls(n))))
            .collect();
        all_kept(
            &format!("online with its first token (the ramp took {ramp:?}; a token lives {LIFETIME:?} less up to 1 s)"),
            &asked_again,
            CLIENTS,
        )?;

        // The outage: longer than the tokens have left to live.
        let mark = crowd.mark();
        let down = Instant::now();
        let cut = proxy.take_down().await;
        let left = desk.left();
        wait_each(&mut crowd, patience(), &mark, |e| matches!(e, Event::Disconnected { .. })).await?;
        smol::Timer::after(desk.left() + MARGIN).await;
        proxy.bring_up()?;
        let up = Instant::now();
        let outage = up - down;

        // Back: each client is refused its expired token, asks for a new one and resumes.
        let resumed_at = wait_each(&mut crowd, Duration::from_secs(60), &mark, |e| {
            matches!(e, Event::Connected { resumed: true, .. })
        })
        .await?;
        let all_resumed = resumed_at.iter().max().map_or(Duration::ZERO, |last| *last - up);
        let resumes = Spread::of(&resumed_at.iter().map(|at| *at - up).collect::<Vec<_>>());
        // When each client heard its token was expired (the backoff that followed the refusal).
        let refused_at: Vec<Duration> = crowd
            .log
            .iter()
            .zip(&mark)
            .filter_map(|(log, &from)| {
                log[from..].iter().find(|(e, _)| is_auth_expired_refusal(e)).map(|(_, at)| *at - up)
            })
            .collect();
        let refused = Spread::of(&refused_at);
        story.read_until(&mut server_events, patience(), "every peer back", |s| s.online(true) == CLIENTS).await?;
        // A while of quiet, to catch a client that asks again or reconnects once more.
        smol::Timer::after(QUIET).await;
        crowd.read_ready();
        story.read_ready(&mut server_events);
        let online_now = server.online().await.len();
        let kept_now = server.detached().await.len();
        let calls = desk.total_calls();
        let refusals: usize =
            crowd.log.iter().map(|log| log.iter().filter(|(e, _)| is_auth_expired_refusal(e)).count()).sum();
        eprintln!(
            "{CLIENTS} clients through a proxy, tokens living {LIFETIME:?} (less up to 1 s), auth grace \
             {AUTH_GRACE:?}, keep {keep:?}: ramp {ramp:?}; proxy down with {cut} connections cut, {left:?} of the \
             tokens' life left, for {outage:?}; after it came back, refused {} and resumed {} (all within \
             {all_resumed:?}); {refusals} auth-expired refusals, {calls} provider calls in all; the server saw {} \
             events: {} fresh and {} resumed PeerOnline, {} PeerDetached, {} PeerOffline; {online_now} online and \
             {kept_now} kept at the end",
            refused.map(|s| s.to_string()).unwrap_or_default(),
            resumes.map(|s| s.to_string()).unwrap_or_default(),
            story.events,
            story.online(false),
            story.online(true),
            story.detached(),
            story.offline(),
        );

        assert_eq!(cut, CLIENTS, "the proxy carried every client's connection");
        assert!(outage > left, "the outage ({outage:?}) did not outlast the tokens ({left:?} left)");
        let mut broken = BTreeMap::<&str, Vec<(String, String)>>::new();
        for (n, (id, log)) in ids.iter().zip(&crowd.log).enumerate() {
            let mut check = |promise, kept: bool, what: String| {
                if !kept {
                    broken.entry(promise).or_default().push((id.clone(), what));
                }
            };
            let connected = connections(log);
            let session_kept = matches!(&connected[..], [(first, false), (again, true)] if first == again);
            check("resumed exactly once, in the same session", session_kept, format!("{connected:?}"));
            let calls = desk.calls(n);
            check("asked its provider exactly twice", calls == 2, format!("{calls} calls"));
            let refused = log[mark[n]..].iter().filter(|(e, _)| is_auth_expired_refusal(e)).count();
            check("refused its expired token exactly once", refused == 1, format!("{refused} auth-expired refusals"));
            let closed = log.iter().find(|(e, _)| matches!(e, Event::Closed { .. }));
            check("never closed", closed.is_none(), format!("{closed:?}"));
        }
        for (promise, clients) in &broken {
            all_kept(promise, clients, CLIENTS)?;
        }
        let mut peers_broken = Vec::new();
        for id in &ids {
            let peer = story.peer(id);
            let kept = matches!(&peer.online[..], [(first, false), (again, true)] if first == again);
            if !kept || peer.detached != 1 || !peer.offline.is_empty() {
                peers_broken.push((id.clone(), format!("{peer:?}")));
            }
        }
        all_kept("at the server: online, detached and resumed once each, never offline", &peers_broken, CLIENTS)?;
        assert_eq!((online_now, kept_now), (CLIENTS, 0), "every session online at the end, none waiting");

        let closing = crowd.close_all();
        eprintln!("all {CLIENTS} closed in {closing:?}");
        drop(crowd);
        proxy.take_down().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}
