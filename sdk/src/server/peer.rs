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

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::ServerEvent;
use crate::core::{ConnEnd, ConnKey, PeerLink, ServerMachine, ServerMachineEvent};
use crate::protocol::{ClientId, Resume, Token};
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
    /// Bytes of a frame received in part (0 between frames).
    pub(super) buffered: usize,
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
    ) -> Peer {
        let state = State { machine, id: None, hello: None, end: None, cut: false };
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
        let mut state = self.state();
        let waited = !state.machine.wants_input();
        let result = step(&mut state.machine);
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
        let transmit = machine.transmit();
        if !transmit.is_empty() {
            // A failed write is left for the connection task, which meets the error again.
            if let Ok(n) = self.socket.try_write(transmit) {
                machine.written(n);
            }
            wake |= !machine.transmit().is_empty();
        }
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
            pending: state.machine.transmit().len(),
            wants_input: state.machine.wants_input(),
            buffered: state.machine.buffered(),
        }
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
        while !state.machine.transmit().is_empty() {
            match self.socket.try_write(state.machine.transmit()) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => state.machine.written(n),
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
            let peer = Peer::new(socket, 1, ServerMachine::new(now, ServerMachineConfig::default()), events_tx);
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
        // (Authentication added 32 of them: the session's subject, the credential's expiry.)
        assert!(size_of::<ServerMachine>() <= 464, "ServerMachine: {} bytes", size_of::<ServerMachine>());
        assert!(size_of::<Peer>() <= 568, "Peer: {} bytes", size_of::<Peer>());
    }

    #[test]
    fn a_cut_peer_stops_at_once() {
        let (peer, _client, _) = pair();
        peer.cut();
        assert!(matches!(poll_outgoing(&peer), Poll::Ready(Ok(Outgoing::Cut))));
    }
}
