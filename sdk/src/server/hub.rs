//! The hub: the one owner of the online list, and the one pulse loop. Connection tasks tell it
//! who joins and who leaves; what they hear in between they record on the shared [`Peer`], which
//! the hub reads once per tick. It never waits on a peer: a pulse is one non-blocking write, and
//! a peer whose socket has not taken its last frames is dropped as stalled, so a slow peer
//! cannot delay the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::{pin_mut, select_biased, FutureExt};

use super::peer::{Peer, Refused};
use super::{OfflineReason, ServerConfig, ServerEvent, ServerSendError};
use crate::core::{Cadence, ConnKey, Departed, Eviction, OnlineList, PeerInfo};
use crate::protocol::{ClientId, ErrorCode, Frame};
use crate::rt;

/// The hub's handle on a peer.
pub(super) type Link = Arc<Peer>;

/// How many queued messages the hub handles per wake-up before it checks its timer again.
const BATCH: usize = 256;

pub(super) enum HubMsg {
    /// A peer completed its handshake. The hub answers it on the peer itself: `WELCOME`, or
    /// `ERROR full` and a close when the server is full.
    Join {
        key: ConnKey,
        id: ClientId,
        addr: SocketAddr,
        peer: Link,
    },
    Leave {
        key: ConnKey,
        reason: OfflineReason,
    },
    Online {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    SendTo {
        peer: ClientId,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), ServerSendError>>,
    },
    Broadcast {
        payload: Bytes,
        reply: oneshot::Sender<usize>,
    },
}

struct Hub {
    list: OnlineList<Link>,
    config: Arc<ServerConfig>,
    events: async_channel::Sender<ServerEvent>,
}

pub(super) async fn run(
    config: Arc<ServerConfig>,
    rx: async_channel::Receiver<HubMsg>,
    events: async_channel::Sender<ServerEvent>,
    stop: async_channel::Receiver<()>,
    halt: async_channel::Receiver<()>,
) {
    let mut cadence = Cadence::new(Instant::now(), config.interval);
    let mut timer = rt::Timer::at(cadence.next_deadline());
    let mut hub = Hub { list: OnlineList::new(config.max_missed, fastrand::u32(..)), config, events };
    let stopped = stop.recv().fuse();
    let halted = halt.recv().fuse();
    pin_mut!(stopped, halted);
    let aborted = loop {
        select_biased! {
            // Aborted: the peers are cut without a word, as if the process had died.
            _ = halted => break true,
            _ = stopped => break false,
            () = (&mut timer).fuse() => {
                let now = Instant::now();
                if cadence.poll(now) {
                    hub.tick(now);
                }
                timer.reset(cadence.next_deadline());
            }
            msg = rx.recv().fuse() => {
                let Ok(msg) = msg else { break false };
                hub.handle(msg);
                for _ in 1..BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    hub.handle(msg);
                }
            }
        }
    };
    if aborted {
        hub.cut();
    } else {
        hub.shutdown();
    }
    // Whoever is still waiting for an answer gets one now: a connection whose `Join` came too
    // late is told the server is shutting down (or just cut), the others see their reply fail.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let HubMsg::Join { peer, .. } = msg {
            if aborted {
                peer.cut();
            } else {
                peer.close_with(Frame::bye("shutdown"));
            }
        }
    }
}

impl Hub {
    fn emit(&self, event: ServerEvent) {
        // Fails only when the application dropped its `ServerEvents`: it chose not to listen.
        let _ = self.events.try_send(event);
    }

    fn tick(&mut self, now: Instant) {
        let limit = self.config.outbound_queue;
        let evicted = self.list.tick_observed(now, |peer| peer.observation(), |peer, seq| peer.pulse(seq, now, limit));
        for (gone, why) in evicted {
            let reason = match why {
                Eviction::Timeout { misses } => {
                    let text = format!("no frame for {misses} pulse intervals");
                    gone.link.close_with(Frame::error(ErrorCode::Timeout, text));
                    OfflineReason::Timeout { misses }
                }
                Eviction::Stalled => OfflineReason::Stalled,
            };
            self.depart(gone, reason);
        }
    }

    fn handle(&mut self, msg: HubMsg) {
        let now = Instant::now();
        let limit = self.config.outbound_queue;
        match msg {
            HubMsg::Join { key, id, addr, peer } => {
                let max = self.config.max_peers;
                if self.list.len() >= max && self.list.link(&id).is_none() {
                    tracing::warn!(peer = %id, %addr, max, "connection refused: the server is full");
                    let text = format!("the server holds its maximum of {max} peers");
                    peer.close_with(Frame::error(ErrorCode::Full, text));
                    return;
                }
                let joined = self.list.join(key, id, addr, peer.clone(), now);
                if let Some(old) = joined.replaced {
                    old.link.close_with(Frame::error(ErrorCode::Replaced, "a new connection took this client id"));
                    self.depart(old, OfflineReason::Replaced);
                }
                if let Some(info) = self.list.peer(key) {
                    tracing::info!(peer = %info.id, addr = %info.addr, session = %info.session, "peer online");
                    self.emit(ServerEvent::PeerOnline { peer: info.clone() });
                }
                // Only now may the peer speak: whatever it sends comes after its `PeerOnline`.
                // Nothing was written to it yet, so `WELCOME` is its first frame.
                let welcome = Frame::Welcome {
                    session: joined.session,
                    interval: self.config.interval,
                    max_missed: self.config.max_missed,
                };
                peer.welcome(welcome, limit);
            }
            HubMsg::Leave { key, reason } => {
                if let Some(gone) = self.list.leave(key) {
                    self.depart(gone, reason);
                }
            }
            HubMsg::Online { reply } => {
                self.list.observe(|peer| peer.observation());
                let _ = reply.send(self.list.snapshot());
            }
            HubMsg::SendTo { peer, payload, reply } => {
                let result = match self.list.link(&peer) {
                    None => Err(ServerSendError::NotOnline(payload)),
                    Some(link) => link.send(Frame::Data(payload), limit).map_err(|refused| match refused {
                        Refused::Full(Frame::Data(payload)) => ServerSendError::Full(payload),
                        Refused::Closed(Frame::Data(payload)) => ServerSendError::NotOnline(payload),
                        _ => ServerSendError::Stopped,
                    }),
                };
                let _ = reply.send(result);
            }
            HubMsg::Broadcast { payload, reply } => {
                let queued = self
                    .list
                    .links()
                    .filter(|(_, link)| link.send(Frame::Data(payload.clone()), limit).is_ok())
                    .count();
                let _ = reply.send(queued);
            }
        }
    }

    /// Takes a peer out for good: it is closed (its connection writes what is left, then closes
    /// the socket) and the application is told.
    fn depart(&mut self, gone: Departed<Link>, reason: OfflineReason) {
        gone.link.close();
        let peer = gone.info;
        match &reason {
            OfflineReason::Timeout { .. } | OfflineReason::Stalled | OfflineReason::WriteTimeout => {
                tracing::warn!(peer = %peer.id, addr = %peer.addr, %reason, "peer evicted");
            }
            _ => tracing::info!(peer = %peer.id, addr = %peer.addr, %reason, "peer offline"),
        }
        self.emit(ServerEvent::PeerOffline { peer, reason });
    }

    fn shutdown(&mut self) {
        for gone in self.list.drain() {
            gone.link.close_with(Frame::bye("shutdown"));
            self.depart(gone, OfflineReason::Shutdown);
        }
    }

    /// The server was aborted: every connection is cut, with no word and no event.
    fn cut(&mut self) {
        for gone in self.list.drain() {
            gone.link.cut();
        }
    }
}
