//! One connection as the hub and its connection task share it: the socket, and the connection's
//! [`ServerMachine`] behind one lock.
//!
//! Whoever runs a step of the machine ([`Peer::step`]: the hub pulsing, sending or closing; the
//! connection task handing it input) writes what the step produced to the socket at once, with
//! one non-blocking write: a pulse from the hub or an `ALIVE` from the connection task costs no
//! task switch. Only what the socket does not take stays in the machine's transmit buffer, and
//! the connection task is woken to write it when the socket drains. The lock orders all writes,
//! so frames never interleave. The application's events (messages, acknowledgements) are handed
//! on under the same lock, so that they keep the machine's order whoever runs the step.

use std::io::{self, BufRead as _, Write as _};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::ServerEvent;
use crate::core::{ConnEnd, ConnKey, PeerLink, ServerMachine, ServerMachineEvent};
use crate::protocol::{ClientId, ErrorCode, Resume, Token};
use crate::rt::Socket;

pub(super) struct Peer {
    socket: Socket,
    key: ConnKey,
    state: Mutex<State>,
    /// The connection task, woken to write what is pending, to answer a `HELLO` or to close.
    task: AtomicWaker,
    events: async_channel::Sender<ServerEvent>,
}

struct State {
    machine: ServerMachine,
    /// The peer's id, from its `HELLO`: the application's events name it.
    id: Option<ClientId>,
    /// A `HELLO` the connection task has not handed to the hub yet (boxed, as the end below:
    /// each is there for a moment of a connection's life, and every connection holds the slot).
    hello: Option<Box<Hello>>,
    /// How the machine ended the connection, once it did.
    end: Option<Box<ConnEnd>>,
    /// Close at once, without writing anything more (the server was aborted).
    cut: bool,
    /// The TLS session of a connection on the TLS listener (`None`: plaintext). rustls'
    /// synchronous connection runs here, under the lock, so that a pulse is still one
    /// non-blocking write by whoever runs the step.
    tls: Option<Box<Tls>>,
}

/// A connection's TLS session.
pub(super) struct Tls {
    conn: rustls::ServerConnection,
    /// Whether its first byte came (and was a TLS handshake record).
    started: bool,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// The most encrypted bytes rustls holds for a peer that does not read (its default is
/// 64 KiB): beyond them the machine keeps the frames, and its limits apply.
const TLS_SEND_LIMIT: usize = 16 * 1024;

impl Tls {
    pub(super) fn new(config: std::sync::Arc<rustls::ServerConfig>) -> Result<Box<Tls>, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(TLS_SEND_LIMIT));
        Ok(Box::new(Tls { conn, started: false }))
    }
}

/// What came of bytes read from a TLS connection's socket.
pub(super) enum TlsInput {
    /// Handed on; keep reading.
    Read,
    /// The peer closed its TLS session (`close_notify`).
    Closed,
    /// They were not TLS: the peer was answered `ERROR tls-required`, and the connection is
    /// closing.
    NotTls,
}

/// A `HELLO`, as the connection task hands it to the hub.
pub(super) struct Hello {
    pub(super) version: u32,
    pub(super) client_id: ClientId,
    /// For the authenticator; never logged.
    pub(super) token: Option<Token>,
    pub(super) resume: Option<Resume>,
}

/// The state of a connection, as its task looks at it.
pub(super) struct Status {
    /// The `HELLO` to hand to the hub, taken.
    pub(super) hello: Option<Hello>,
    /// The machine's next deadline.
    pub(super) deadline: Option<std::time::Instant>,
    /// Bytes waiting for the socket.
    pub(super) pending: usize,
    /// Whether the machine takes input now (not while its `HELLO` waits for the hub's answer).
    pub(super) wants_input: bool,
    /// Bytes of a frame received in part (0 between frames, and always 0 over TLS).
    pub(super) buffered: usize,
    /// Whether input goes through TLS ([`Peer::tls_input`]).
    pub(super) tls: bool,
}

/// What the connection task must do after waiting on its outbox.
pub(super) enum Outgoing {
    /// Everything is written; keep serving.
    Idle,
    /// Everything is written and the machine ended the connection: close it.
    Ended(ConnEnd),
    /// The server was aborted: cut the connection now.
    Cut,
}

impl Peer {
    pub(super) fn new(
        socket: Socket,
        key: ConnKey,
        machine: ServerMachine,
        events: async_channel::Sender<ServerEvent>,
        tls: Option<Box<Tls>>,
    ) -> Peer {
        let state = State { machine, id: None, hello: None, end: None, cut: false, tls };
        Peer { socket, key, state: Mutex::new(state), task: AtomicWaker::new(), events }
    }

    pub(super) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(super) fn key(&self) -> ConnKey {
        self.key
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data: a panic elsewhere while it was locked leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `step` on the machine, then writes what it produced (one non-blocking write) and
    /// hands its events on: the application's at once, a `HELLO` or the connection's end to
    /// the connection task, which is woken for them and for whatever the socket did not take.
    pub(super) fn step<R>(&self, step: impl FnOnce(&mut ServerMachine) -> R) -> R {
        self.run(|state| step(&mut state.machine))
    }

    /// [`Peer::step`], with the TLS session at hand too.
    fn run<R>(&self, step: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state();
        let waited = !state.machine.wants_input();
        let result = step(&mut state);
        let State { machine, id, hello, end, .. } = &mut *state;
        // The connection task stops reading while a `HELLO` waits for the hub: the `WELCOME`
        // (or anything else that lets the machine take input again) must wake it.
        let mut wake = waited && machine.wants_input();
        while let Some(event) = machine.poll_event() {
            match event {
                ServerMachineEvent::Hello { version, client_id, token, resume } => {
                    *id = Some(client_id.clone());
                    *hello = Some(Box::new(Hello { version, client_id, token, resume }));
                    wake = true;
                }
                ServerMachineEvent::Message { seq, payload } => {
                    if let Some(peer) = id.clone() {
                        // Unbounded: fails only when the application dropped its events.
                        let _ = self.events.try_send(ServerEvent::Message { peer, seq, payload });
                    }
                }
                ServerMachineEvent::Delivered { up_to } => {
                    if let Some(peer) = id.clone() {
                        let _ = self.events.try_send(ServerEvent::Delivered { peer, up_to });
                    }
                }
                ServerMachineEvent::Closed { reason } => {
                    *end = Some(Box::new(reason));
                    wake = true;
                }
            }
        }
        // A failed write is left for the connection task, which meets the error again.
        let _ = self.transmit(&mut state);
        wake |= pending(&mut state) > 0;
        drop(state);
        if wake {
            self.task.wake();
        }
        result
    }

    /// What the connection task needs to know to go on, under one lock.
    pub(super) fn status(&self) -> Status {
        let mut state = self.state();
        Status {
            hello: state.hello.take().map(|hello| *hello),
            deadline: state.machine.poll_timeout(),
            pending: pending(&mut state),
            wants_input: state.machine.wants_input(),
            // Over TLS every byte goes through rustls: never straight into the machine.
            buffered: if state.tls.is_some() { 0 } else { state.machine.buffered() },
            tls: state.tls.is_some(),
        }
    }

    /// Whether the connection is on the TLS listener (and is still TLS: not refused as
    /// plaintext).
    pub(super) fn is_tls(&self) -> bool {
        self.state().tls.is_some()
    }

    /// Writes what the machine produced to the socket, through TLS on a TLS connection, as
    /// far as the socket takes it now. `WouldBlock` when it took less than all.
    fn transmit(&self, state: &mut State) -> io::Result<()> {
        let State { machine, tls, .. } = state;
        let Some(tls) = tls else {
            while !machine.transmit().is_empty() {
                match self.socket.try_write(machine.transmit())? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => machine.written(n),
                }
            }
            return Ok(());
        };
        loop {
            if !machine.transmit().is_empty() {
                // Into rustls, which encrypts it (or holds it until the handshake is done);
                // it takes less at its limit.
                let taken = tls.conn.writer().write(machine.transmit())?;
                machine.written(taken);
            }
            if !tls.conn.wants_write() {
                // All written, or all rustls will take before its handshake is done (a
                // refusal, a timeout's `ERROR`: frames before the `WELCOME` are small).
                return Ok(());
            }
            if tls.conn.write_tls(&mut SocketWriter(&self.socket))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
    }

    /// Hands bytes read from a TLS connection's socket to rustls, and what they decrypt to to
    /// the machine; writes what rustls answers (its handshake) and what the machine answers.
    /// A rustls error is returned after its alert is written (as far as the socket takes it).
    pub(super) fn tls_input(&self, mut bytes: &[u8], now: std::time::Instant) -> Result<TlsInput, TlsFailure> {
        self.run(|state| {
            let State { machine, tls: slot, .. } = state;
            let Some(tls) = slot.as_mut() else {
                // Refused as plaintext already: the machine ignores it, closed.
                machine.handle_input(bytes, now);
                return Ok(TlsInput::Read);
            };
            if !tls.started && !bytes.is_empty() {
                tls.started = true;
                if bytes[0] != TLS_HANDSHAKE {
                    // A person with `nc`, or a plaintext client on the TLS port: tell them in
                    // plaintext.
                    *slot = None;
                    machine.refuse(
                        ErrorCode::TlsRequired,
                        "this port speaks TLS: connect with TLS, or to the plaintext port",
                    );
                    return Ok(TlsInput::NotTls);
                }
            }
            let mut closed = false;
            while !bytes.is_empty() {
                tls.conn.read_tls(&mut bytes).map_err(|error| TlsFailure(error.to_string()))?;
                if let Err(error) = tls.conn.process_new_packets() {
                    // rustls queued an alert that says why: one try to write it.
                    let _ = tls.conn.write_tls(&mut SocketWriter(&self.socket));
                    return Err(TlsFailure(error.to_string()));
                }
                loop {
                    let mut reader = tls.conn.reader();
                    match reader.fill_buf() {
                        Ok([]) => {
                            closed = true;
                            break;
                        }
                        Ok(plain) => {
                            let n = plain.len();
                            machine.handle_input(plain, now);
                            reader.consume(n);
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => return Err(TlsFailure(error.to_string())),
                    }
                }
            }
            Ok(if closed { TlsInput::Closed } else { TlsInput::Read })
        })
    }

    /// When the handshake must be over, until the peer is welcomed.
    pub(super) fn handshake_deadline(&self) -> Option<std::time::Instant> {
        self.state().machine.handshake_deadline()
    }

    /// Bytes waiting for the socket.
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.state().machine.transmit().len()
    }

    /// The `HELLO` waiting to be handed to the hub, if one is.
    #[cfg(test)]
    pub(super) fn take_hello(&self) -> Option<Hello> {
        self.state().hello.take().map(|hello| *hello)
    }

    /// Reads the rest of a frame straight into the machine's buffer; returns how much was
    /// read, and how much room there was.
    pub(super) fn poll_read_into_machine(&self, cx: &mut Context<'_>) -> Poll<io::Result<(usize, usize)>> {
        let read = {
            let mut state = self.state();
            let region = state.machine.read_buf();
            let room = region.len();
            let read = self.socket.poll_read(cx, region);
            let n = match &read {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            state.machine.filled(n, std::time::Instant::now());
            read.map_ok(|n| (n, room))
        };
        if matches!(read, Poll::Ready(Ok((n, _))) if n > 0) {
            // The frame may be complete: hand on what it produced.
            self.step(|_| ());
        }
        read
    }

    /// Closes the connection at once, whatever is pending (the server was aborted).
    pub(super) fn cut(&self) {
        self.state().cut = true;
        self.task.wake();
    }

    /// Writes what is pending; registers the task to be woken when there is more to do.
    pub(super) fn poll_outgoing(&self, cx: &mut Context<'_>) -> Poll<io::Result<Outgoing>> {
        self.task.register(cx.waker());
        let mut state = self.state();
        if state.cut {
            return Poll::Ready(Ok(Outgoing::Cut));
        }
        while pending(&mut state) > 0 {
            match self.transmit(&mut state) {
                Ok(()) => break,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.poll_writable(cx)?.is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(match state.end.take() {
            Some(end) => Outgoing::Ended(*end),
            None => Outgoing::Idle,
        }))
    }
}

/// Bytes waiting for the socket: the machine's, and whether rustls holds encrypted ones.
fn pending(state: &mut State) -> usize {
    let tls = state.tls.as_ref().map_or(0, |tls| usize::from(tls.conn.wants_write()));
    state.machine.transmit().len() + tls
}

/// A TLS session failed (a bad record, a refused handshake): its text, for the log.
#[derive(Debug)]
pub(super) struct TlsFailure(pub(super) String);

/// The socket as rustls writes to it: each write is one non-blocking write.
struct SocketWriter<'a>(&'a Socket);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PeerLink for std::sync::Arc<Peer> {
    fn with_machine<R>(&self, step: impl FnOnce(&mut ServerMachine) -> R) -> R {
        self.step(step)
    }

    fn peek<R>(&self, read: impl FnOnce(&ServerMachine) -> R) -> R {
        read(&self.state().machine)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::{ServerMachineConfig, ServerSession, SessionLimits, WelcomeTerms};
    use crate::protocol::{Frame, SessionId};
    use crate::rt;

    /// A welcomed version 1 peer over a real loopback connection, and the client's end of it.
    fn pair() -> (Peer, BufReader<TcpStream>, async_channel::Receiver<ServerEvent>) {
        futures::executor::block_on(async {
            let listener = rt::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            let (events_tx, events) = async_channel::unbounded();
            let now = Instant::now();
            let peer = Peer::new(socket, 1, ServerMachine::new(now, ServerMachineConfig::default()), events_tx, None);
            peer.step(|machine| machine.handle_input(b"HELLO 1 desk\n", now));
            let hello = peer.take_hello().expect("the HELLO is handed on");
            let session =
                ServerSession::new(SessionId::new("s").unwrap(), hello.client_id, [1; 16], SessionLimits::default());
            let terms = WelcomeTerms {
                interval: Duration::from_secs(1),
                max_missed: 3,
                keep: Duration::ZERO,
                resumed: false,
                expires_in: None,
            };
            peer.step(|machine| machine.welcome(session, terms, now));
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "WELCOME s 1000 3\n");
            let _ = &mut client;
            (peer, reader, events)
        })
    }

    fn poll_outgoing(peer: &Peer) -> Poll<io::Result<Outgoing>> {
        peer.poll_outgoing(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[test]
    fn a_pulse_is_written_at_once_without_any_task() {
        let (peer, mut client, _) = pair();
        peer.step(|machine| machine.pulse(7, Instant::now()));
        assert_eq!(peer.pending(), 0);
        let mut line = String::new();
        client.read_line(&mut line).unwrap();
        assert_eq!(line, "PULSE 7\n");
    }

    #[test]
    fn messages_reach_the_application_in_order_from_whoever_runs_the_step() {
        let (peer, _client, events) = pair();
        peer.step(|machine| machine.handle_input(b"DATA 1\naDATA 1\nb", Instant::now()));
        let payloads: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|event| match event {
                ServerEvent::Message { payload, .. } => payload,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(payloads, vec![bytes::Bytes::from("a"), bytes::Bytes::from("b")]);
    }

    #[test]
    fn a_peer_that_does_not_read_keeps_what_waits_in_order() {
        let (peer, client, _) = pair();
        let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while peer.pending() == 0 {
            peer.step(|machine| machine.send(payload.clone())).unwrap();
            sent += 1;
            assert!(sent < 1000, "the socket never filled up");
        }
        peer.step(|machine| machine.send(payload.clone())).unwrap();
        sent += 1;
        peer.step(|machine| machine.close_with(Frame::bye("shutdown")));
        let mut client = client.into_inner();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        // No task to wake here: poll until the reader has drained the socket (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        let flushed = loop {
            match poll_outgoing(&peer) {
                Poll::Ready(result) => break result,
                Poll::Pending if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Poll::Pending => panic!("the pending frames were never written"),
            }
        };
        assert!(matches!(flushed, Ok(Outgoing::Ended(ConnEnd::ClosedByServer))));
        peer.socket().shutdown();
        let all = reader.join().unwrap();
        let header = format!("DATA {}\n", payload.len());
        let frame_len = header.len() + payload.len();
        assert_eq!(all.len(), sent * frame_len + "BYE shutdown\n".len());
        assert!(all.ends_with(b"xBYE shutdown\n"), "frames in order, none torn");
    }

    /// A server holds one `Peer` per connection for the connection's life: its size is a
    /// budget (the bench's memory per peer counts it), and a field added without need fails
    /// here first.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_connection_stays_within_its_memory_budget() {
        use std::mem::size_of;
        // (Authentication added 32 of them: the session's subject, the credential's expiry;
        // TLS 8 to `Peer`, the pointer to a TLS connection's rustls session.)
        assert!(size_of::<ServerMachine>() <= 464, "ServerMachine: {} bytes", size_of::<ServerMachine>());
        assert!(size_of::<Peer>() <= 576, "Peer: {} bytes", size_of::<Peer>());
    }

    #[test]
    fn a_cut_peer_stops_at_once() {
        let (peer, _client, _) = pair();
        peer.cut();
        assert!(matches!(poll_outgoing(&peer), Poll::Ready(Ok(Outgoing::Cut))));
    }
}
