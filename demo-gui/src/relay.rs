//! A local TCP relay between the client and the server that can black-hole either direction.
//!
//! The client connects to the relay; the relay opens a connection to the server for each one
//! and copies bytes both ways on two plain threads with blocking sockets. Black-holing a
//! direction stops forwarding it **without closing anything**: the bytes (and a close, if one
//! comes) wait in the relay, as they would in a network whose link went dead while TCP kept
//! retransmitting. Neither side sees an error or an EOF; only its heartbeat can tell. Restoring
//! the direction delivers what waited, in order, so the byte stream is never corrupted.
//!
//! This is what makes the GUI's faults real: "freeze server pulses" black-holes
//! server → client, "client stops answering" black-holes client → server, and "black-hole the
//! link" does both.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the relay waits for the server to accept a connection it forwards.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One direction of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server: `HELLO`, `ALIVE`, probes, the client's messages.
    ToServer,
    /// Server → client: `WELCOME`, `PULSE`, echoes.
    ToClient,
}

/// Which directions are black-holed. The default forwards both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Blackhole {
    /// Nothing from the client reaches the server.
    pub to_server: bool,
    /// Nothing from the server reaches the client.
    pub to_client: bool,
}

impl Blackhole {
    /// Both directions black-holed: a dead link that neither side can see.
    pub const BOTH: Blackhole = Blackhole { to_server: true, to_client: true };

    /// Whether `direction` is black-holed.
    pub fn blocks(self, direction: Direction) -> bool {
        match direction {
            Direction::ToServer => self.to_server,
            Direction::ToClient => self.to_client,
        }
    }

    /// Whether anything is black-holed.
    pub fn any(self) -> bool {
        self.to_server || self.to_client
    }
}

/// A running relay; dropping it closes every relayed connection and stops its threads.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let relay = demo_gui::relay::Relay::start("127.0.0.1:7878".parse().unwrap())?;
/// // Point the client at `relay.local_addr()`, then:
/// relay.set_blackhole(demo_gui::relay::Blackhole { to_server: false, to_client: true });
/// # Ok(()) }
/// ```
pub struct Relay {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.upstream())
            .field("blackhole", &self.blackhole())
            .finish()
    }
}

/// What the relay's threads share.
struct Shared {
    upstream: Mutex<SocketAddr>,
    gates: Mutex<Gates>,
    /// Signalled whenever `gates` changes.
    changed: Condvar,
    /// Both sockets of every relayed connection, so that they can be cut from outside.
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Gates {
    blackhole: Blackhole,
    stopped: bool,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, ConnSockets>,
}

struct ConnSockets {
    client: TcpStream,
    server: TcpStream,
    /// Pumps of this connection still running; the last one to finish removes the entry.
    pumps: u8,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            gates: Mutex::new(Gates::default()),
            changed: Condvar::new(),
            conns: Mutex::new(Conns::default()),
        });
        let accept_shared = shared.clone();
        let accept =
            thread::Builder::new().name("relay-accept".into()).spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(Relay { local_addr, shared, accept: Some(accept) })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where new connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        *lock(&self.shared.upstream)
    }

    /// Forwards connections made from now on to `upstream`; open ones keep their server.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// Which directions are black-holed now.
    pub fn blackhole(&self) -> Blackhole {
        lock(&self.shared.gates).blackhole
    }

    /// Black-holes or restores directions, for open connections and new ones alike.
    pub fn set_blackhole(&self, blackhole: Blackhole) {
        lock(&self.shared.gates).blackhole = blackhole;
        self.shared.changed.notify_all();
    }

    /// How many connections are being relayed.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).open.len()
    }

    /// Cuts every relayed connection: both sides see their connection closed at once.
    /// Returns how many were cut.
    pub fn cut(&self) -> usize {
        let conns = lock(&self.shared.conns);
        for sockets in conns.open.values() {
            // Errors mean the socket is closed already, which is what we want.
            let _ = sockets.client.shutdown(Shutdown::Both);
            let _ = sockets.server.shutdown(Shutdown::Both);
        }
        conns.open.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        lock(&self.shared.gates).stopped = true;
        self.shared.changed.notify_all();
        self.cut();
        // Wake the accept loop, blocked in `accept`, so that it sees the stop and returns.
        let _ = TcpStream::connect_timeout(&self.local_addr, CONNECT_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if lock(&shared.gates).stopped {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        // A thread per connection, so that a slow connect upstream holds up no other client.
        let spawned = thread::Builder::new().name("relay-conn".into()).spawn(move || relay_one(client, &shared));
        if spawned.is_err() {
            // Out of threads: the connection (moved into the failed closure) is dropped, which
            // closes it; the client retries later.
            continue;
        }
    }
}

/// Connects `client` to the server and runs the two pumps. Without a server, the client's
/// connection is closed at once.
fn relay_one(client: TcpStream, shared: &Arc<Shared>) {
    let upstream = *lock(&shared.upstream);
    let Ok(server) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    // Heartbeat frames are tiny and latency is what the demo shows: no Nagle delay.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (Ok(client_registered), Ok(server_registered)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let id = {
        let mut conns = lock(&shared.conns);
        conns.next_id += 1;
        let id = conns.next_id;
        conns.open.insert(id, ConnSockets { client: client_registered, server: server_registered, pumps: 2 });
        id
    };
    // A relay dropped while this connection was being set up has cut the others already.
    if lock(&shared.gates).stopped {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    let to_client_shared = shared.clone();
    let to_client = thread::Builder::new()
        .name("relay-to-client".into())
        .spawn(move || pump(&server_reader, &client, Direction::ToClient, &to_client_shared, id));
    if to_client.is_err() {
        // Could not run the other direction: give up on this connection.
        let _ = client_reader.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        finish_pump(shared, id);
        finish_pump(shared, id);
        return;
    }
    pump(&client_reader, &server, Direction::ToServer, shared, id);
}

/// Copies `from` into `to` until either side closes, holding the bytes while `direction` is
/// black-holed.
fn pump(from: &TcpStream, to: &TcpStream, direction: Direction, shared: &Shared, id: u64) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut reader = from;
    let mut writer = to;
    loop {
        let read = match reader.read(&mut buf) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0, // reset: pass it on as a close
        };
        // Held here while black-holed: the chunk just read, or the close, goes nowhere until
        // the direction is restored. Nothing more is read meanwhile, so the rest waits in the
        // kernel's buffers as it would on a dead link.
        if !wait_open(shared, direction) {
            break;
        }
        if read == 0 {
            let _ = to.shutdown(Shutdown::Write);
            break;
        }
        if writer.write_all(&buf[..read]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
    }
    finish_pump(shared, id);
}

/// Blocks while `direction` is black-holed; false once the relay has stopped.
fn wait_open(shared: &Shared, direction: Direction) -> bool {
    let mut gates = lock(&shared.gates);
    while !gates.stopped && gates.blackhole.blocks(direction) {
        gates = shared.changed.wait(gates).unwrap_or_else(PoisonError::into_inner);
    }
    !gates.stopped
}

fn finish_pump(shared: &Shared, id: u64) {
    let mut conns = lock(&shared.conns);
    if let Some(sockets) = conns.open.get_mut(&id) {
        sockets.pumps = sockets.pumps.saturating_sub(1);
        if sockets.pumps == 0 {
            conns.open.remove(&id);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// How long a test waits to be sure that nothing arrives.
    const QUIET: Duration = Duration::from_millis(300);

    /// A relay in front of a listener, with one connection through it: (relay, client side,
    /// server side).
    fn connected() -> (Relay, TcpStream, TcpStream) {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind the server");
        let relay = Relay::start(server.local_addr().expect("server address")).expect("start the relay");
        let client = TcpStream::connect(relay.local_addr()).expect("connect to the relay");
        let (accepted, _) = server.accept().expect("the relay connects to the server");
        for socket in [&client, &accepted] {
            socket.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
        }
        (relay, client, accepted)
    }

    fn send(mut socket: &TcpStream, bytes: &[u8]) {
        socket.write_all(bytes).expect("write");
    }

    fn receive(mut socket: &TcpStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        socket.read_exact(&mut buf).expect("read the expected bytes");
        buf
    }

    /// What a read sees within `QUIET`: `None` when nothing happened (no bytes, no close).
    fn read_within_quiet(mut socket: &TcpStream) -> Option<io::Result<usize>> {
        socket.set_read_timeout(Some(QUIET)).expect("set a read timeout");
        let mut buf = [0u8; 64];
        let result = socket.read(&mut buf);
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
        match result {
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => None,
            other => Some(other),
        }
    }

    /// Asserts that `socket` sees its connection closed (EOF or reset), not a read timeout.
    #[track_caller]
    fn assert_closed(mut socket: &TcpStream, what: &str) {
        let mut buf = [0u8; 8];
        match socket.read(&mut buf) {
            Ok(0) => {}
            Err(error) if !matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            other => panic!("{what}: expected a close, got {other:?}"),
        }
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn bytes_flow_both_ways_through_the_relay() {
        let (relay, client, server) = connected();
        send(&client, b"HELLO 1 desk\n");
        assert_eq!(receive(&server, 13), b"HELLO 1 desk\n");
        send(&server, b"WELCOME s 1000 3\n");
        assert_eq!(receive(&client, 17), b"WELCOME s 1000 3\n");
        assert_eq!(relay.connections(), 1);
    }

    #[test]
    fn a_black_holed_server_direction_passes_nothing_closes_nothing_and_resumes_on_restore() {
        let (relay, client, server) = connected();
        relay.set_blackhole(Blackhole { to_server: false, to_client: true });
        send(&server, b"PULSE 1\n");
        send(&server, b"PULSE 2\n");
        assert!(read_within_quiet(&client).is_none(), "nothing reaches the client, not even a close");
        // The other direction still flows.
        send(&client, b"ALIVE 0\n");
        assert_eq!(receive(&server, 8), b"ALIVE 0\n");

        relay.set_blackhole(Blackhole::default());
        assert_eq!(receive(&client, 16), b"PULSE 1\nPULSE 2\n", "what waited arrives, in order");
    }

    #[test]
    fn a_black_holed_client_direction_passes_nothing_closes_nothing_and_resumes_on_restore() {
        let (relay, client, server) = connected();
        relay.set_blackhole(Blackhole { to_server: true, to_client: false });
        send(&client, b"ALIVE 1\n");
        assert!(read_within_quiet(&server).is_none(), "nothing reaches the server, not even a close");
        send(&server, b"PULSE 2\n");
        assert_eq!(receive(&client, 8), b"PULSE 2\n");

        relay.set_blackhole(Blackhole::default());
        assert_eq!(receive(&server, 8), b"ALIVE 1\n");
    }

    #[test]
    fn a_black_holed_link_hides_a_close_until_it_is_restored() {
        let (relay, client, server) = connected();
        relay.set_blackhole(Blackhole::BOTH);
        drop(server);
        send(&client, b"PULSE 1\n");
        assert!(read_within_quiet(&client).is_none(), "the client sees no EOF while black-holed");

        relay.set_blackhole(Blackhole::default());
        assert_closed(&client, "after the restore the close arrives");
    }

    #[test]
    fn new_connections_are_black_holed_too() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let relay = Relay::start(server.local_addr().expect("address")).expect("relay");
        relay.set_blackhole(Blackhole { to_server: true, to_client: false });
        let client = TcpStream::connect(relay.local_addr()).expect("connect");
        let (accepted, _) = server.accept().expect("accept");
        send(&client, b"HELLO 1 desk\n");
        assert!(read_within_quiet(&accepted).is_none());
        assert_eq!(relay.blackhole(), Blackhole { to_server: true, to_client: false });
    }

    #[test]
    fn cut_closes_both_sides() {
        let (relay, client, server) = connected();
        wait_until("the connection is registered", || relay.connections() == 1);
        assert_eq!(relay.cut(), 1);
        assert_closed(&client, "the client sees the cut");
        assert_closed(&server, "the server sees the cut");
        wait_until("the cut connection is forgotten", || relay.connections() == 0);
    }

    #[test]
    fn without_a_server_the_client_connection_is_closed_at_once() {
        let unused = TcpListener::bind("127.0.0.1:0").expect("bind");
        let nobody = unused.local_addr().expect("address");
        drop(unused);
        let relay = Relay::start(nobody).expect("relay");
        let client = TcpStream::connect(relay.local_addr()).expect("connect");
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_closed(&client, "no server behind the relay");
    }

    #[test]
    fn a_new_upstream_serves_the_next_connections() {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let second = TcpListener::bind("127.0.0.1:0").expect("bind");
        let relay = Relay::start(first.local_addr().expect("address")).expect("relay");
        relay.set_upstream(second.local_addr().expect("address"));
        let client = TcpStream::connect(relay.local_addr()).expect("connect");
        let (accepted, _) = second.accept().expect("the second server gets the connection");
        accepted.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        send(&client, b"x");
        assert_eq!(receive(&accepted, 1), b"x");
    }

    #[test]
    fn dropping_the_relay_closes_its_connections() {
        let (relay, client, _server) = connected();
        wait_until("the connection is registered", || relay.connections() == 1);
        drop(relay);
        assert_closed(&client, "the relay is gone");
    }
}
