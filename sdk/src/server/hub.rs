//! The hub task: the one owner of the online list and the detached sessions, and the one pulse
//! loop. A thin shell around [`HubCore`], which takes every decision: connection tasks tell the
//! hub who joins and who leaves, the application asks it to send, and the hub sleeps until the
//! core's next deadline. It never waits on a peer: a pulse is one non-blocking write, and a peer
//! whose socket has not taken its last frames is dropped as stalled, so a slow peer cannot
//! delay the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::{pin_mut, select_biased, FutureExt};

use super::peer::{Hello, Peer};
use super::{OfflineReason, ServerConfig, ServerEvent, ServerSendError};
use crate::auth::Principal;
use crate::core::{ConnKey, HubConfig, HubCore, Join, KeptSession, PeerInfo};
use crate::protocol::ClientId;
use crate::rt;

/// The hub's handle on a peer.
pub(super) type Link = Arc<Peer>;

/// How many queued messages the hub handles per wake-up before it checks its timer again.
const BATCH: usize = 256;

pub(super) enum HubMsg {
    /// A peer sent its `HELLO`. The hub answers it on the peer itself: `WELCOME`, or `ERROR`
    /// and a close.
    Join {
        hello: Hello,
        addr: SocketAddr,
        peer: Link,
        /// Who the peer authenticated as (`None`: no authenticator is configured).
        principal: Option<Principal>,
    },
    Leave {
        key: ConnKey,
        reason: OfflineReason,
    },
    Online {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Detached {
        reply: oneshot::Sender<Vec<KeptSession>>,
    },
    SendTo {
        peer: ClientId,
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, ServerSendError>>,
    },
    Broadcast {
        payload: Bytes,
        reply: oneshot::Sender<usize>,
    },
    /// Fault injection: every connection is cut as if the network failed; sessions are kept.
    DropConnections {
        reply: oneshot::Sender<usize>,
    },
}

pub(super) fn hub_config(config: &ServerConfig) -> HubConfig {
    HubConfig {
        interval: config.interval,
        max_missed: config.max_missed,
        max_peers: config.max_peers,
        keep: config.keep,
        outbound_queue: config.outbound_queue,
        session_limits: config.session_limits,
        detached_limits: config.detached_limits(),
    }
}

pub(super) async fn run(
    config: Arc<ServerConfig>,
    rx: async_channel::Receiver<HubMsg>,
    events: async_channel::Sender<ServerEvent>,
    stop: async_channel::Receiver<()>,
    halt: async_channel::Receiver<()>,
) {
    let mut core: HubCore<Link> = HubCore::new(hub_config(&config), Instant::now(), fastrand::u32(..));
    let mut timer = rt::Timer::at(core.poll_timeout());
    let stopped = stop.recv().fuse();
    let halted = halt.recv().fuse();
    pin_mut!(stopped, halted);
    let aborted = loop {
        select_biased! {
            // Aborted: the peers are cut without a word, as if the process had died.
            _ = halted => break true,
            _ = stopped => break false,
            () = (&mut timer).fuse() => core.handle_timeout(Instant::now()),
            msg = rx.recv().fuse() => {
                let Ok(msg) = msg else { break false };
                handle(&mut core, msg, &events);
                for _ in 1..BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    handle(&mut core, msg, &events);
                }
            }
        }
        emit(&mut core, &events);
        timer.reset(core.poll_timeout());
    };
    if aborted {
        for link in core.cut() {
            link.cut();
        }
    } else {
        core.shutdown(Instant::now());
        emit(&mut core, &events);
    }
    // A connection whose `Join` came too late is told the server is shutting down (or just
    // cut).
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let HubMsg::Join { peer, .. } = msg {
            if aborted {
                peer.cut();
            } else {
                peer.step(|machine| machine.close_with(crate::protocol::Frame::bye("shutdown")));
            }
        }
    }
}

fn emit(core: &mut HubCore<Link>, events: &async_channel::Sender<ServerEvent>) {
    while let Some(event) = core.poll_event() {
        // Fails only when the application dropped its `ServerEvents`: it chose not to listen.
        let _ = events.try_send(event);
    }
}

fn handle(core: &mut HubCore<Link>, msg: HubMsg, events: &async_channel::Sender<ServerEvent>) {
    let now = Instant::now();
    match msg {
        HubMsg::Join { hello, addr, peer, principal } => {
            let Hello { version, client_id, resume, .. } = hello;
            // The expiry as the time left: the hub's clock is monotonic, a credential's is not.
            let expires_in = principal
                .as_ref()
                .and_then(|principal| principal.expires)
                .map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or_default());
            let subject = principal.map(|principal| principal.subject);
            let tls = peer.is_tls();
            let join = Join { key: peer.key(), version, client_id, resume, addr, subject, expires_in, tls };
            if let Some(welcome) = core.join(join, peer, secret_bytes(), now) {
                // `PeerOnline` first: whatever the peer sent comes after it.
                emit(core, events);
                welcome.send(now);
            }
        }
        HubMsg::Leave { key, reason } => core.leave(key, reason, now),
        HubMsg::Online { reply } => {
            let _ = reply.send(core.online());
        }
        HubMsg::Detached { reply } => {
            let _ = reply.send(core.detached(now));
        }
        HubMsg::SendTo { peer, payload, reply } => {
            let _ = reply.send(core.send(&peer, payload));
        }
        HubMsg::Broadcast { payload, reply } => {
            let _ = reply.send(core.broadcast(payload));
        }
        HubMsg::DropConnections { reply } => {
            let links = core.links();
            for link in &links {
                // Cut as a failed network would: no word to the peer; its session is kept.
                link.step(|machine| machine.close());
                link.cut();
                core.leave(link.key(), OfflineReason::Reset, now);
            }
            let _ = reply.send(links.len());
        }
    }
}

/// 16 bytes from the operating system's secure random source, for a resume secret.
fn secret_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // The source fails only when the OS has none at all; a server that cannot make secrets
    // must not hand out guessable ones.
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes
}
