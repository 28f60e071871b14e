//! The hub: the one owner of the online list, and the one pulse loop. Connection tasks send it
//! messages; it never waits on a peer (every send to a peer is `try_send` into its bounded
//! queue), so a slow peer cannot delay the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_channel::TrySendError;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::{pin_mut, select_biased, FutureExt};

use super::{OfflineReason, ServerConfig, ServerEvent, ServerSendError};
use crate::core::{Cadence, ConnKey, Departed, Eviction, OnlineList, PeerInfo};
use crate::protocol::{ClientId, ErrorCode, Frame};
use crate::rt;

/// A peer's outbound queue, drained by its writer task.
pub(super) type Link = async_channel::Sender<Frame>;

/// How many queued messages the hub handles per wake-up before it checks its timer again.
const BATCH: usize = 256;

pub(super) enum HubMsg {
    /// A peer completed its handshake; `welcomed` says `true` once its `WELCOME` is queued, or
    /// `false` when the server is full (the `ERROR full` is queued instead).
    Join {
        key: ConnKey,
        id: ClientId,
        addr: SocketAddr,
        link: Link,
        welcomed: oneshot::Sender<bool>,
    },
    Seen {
        key: ConnKey,
    },
    /// A pulse from the peer after messages: `done` says whether the peer is still online once
    /// every message before it was handed to the application.
    Barrier {
        key: ConnKey,
        done: oneshot::Sender<bool>,
    },
    Alive {
        key: ConnKey,
        seq: u64,
    },
    Data {
        key: ConnKey,
        payload: Bytes,
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
    loop {
        select_biased! {
            // Aborted: the peers are cut without a word, as if the process had died.
            _ = halted => return,
            _ = stopped => break,
            () = (&mut timer).fuse() => {
                let now = Instant::now();
                if cadence.poll(now) {
                    hub.tick(now);
                }
                timer.reset(cadence.next_deadline());
            }
            msg = rx.recv().fuse() => {
                let Ok(msg) = msg else { break };
                hub.handle(msg);
                for _ in 1..BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    hub.handle(msg);
                }
            }
        }
    }
    hub.shutdown();
}

impl Hub {
    fn emit(&self, event: ServerEvent) {
        // Fails only when the application dropped its `ServerEvents`: it chose not to listen.
        let _ = self.events.try_send(event);
    }

    fn tick(&mut self, now: Instant) {
        let evicted = self.list.tick(now, |link, seq| {
            // A closed queue means the connection is ending and its `Leave` is on the way.
            !matches!(link.try_send(Frame::Pulse { seq }), Err(TrySendError::Full(_)))
        });
        for (gone, why) in evicted {
            let reason = match why {
                Eviction::Timeout { misses } => {
                    let text = format!("no frame for {misses} pulse intervals");
                    let _ = gone.link.try_send(Frame::error(ErrorCode::Timeout, text));
                    OfflineReason::Timeout { misses }
                }
                Eviction::Stalled => OfflineReason::Stalled,
            };
            self.depart(gone, reason);
        }
    }

    fn handle(&mut self, msg: HubMsg) {
        let now = Instant::now();
        match msg {
            HubMsg::Join { key, id, addr, link, welcomed } => {
                let max = self.config.max_peers;
                if self.list.len() >= max && self.list.link(&id).is_none() {
                    tracing::warn!(peer = %id, %addr, max, "connection refused: the server is full");
                    let text = format!("the server holds its maximum of {max} peers");
                    let _ = link.try_send(Frame::error(ErrorCode::Full, text));
                    link.close();
                    let _ = welcomed.send(false);
                    return;
                }
                let joined = self.list.join(key, id, addr, link.clone(), now);
                let welcome = Frame::Welcome {
                    session: joined.session,
                    interval: self.config.interval,
                    max_missed: self.config.max_missed,
                };
                // The queue is new and empty: `WELCOME` is always its first frame, and the
                // reader answers nothing before it is queued.
                let _ = link.try_send(welcome);
                let _ = welcomed.send(true);
                if let Some(old) = joined.replaced {
                    let _ =
                        old.link.try_send(Frame::error(ErrorCode::Replaced, "a new connection took this client id"));
                    self.depart(old, OfflineReason::Replaced);
                }
                if let Some(peer) = self.list.peer(key) {
                    tracing::info!(peer = %peer.id, addr = %peer.addr, session = %peer.session, "peer online");
                    self.emit(ServerEvent::PeerOnline { peer: peer.clone() });
                }
            }
            HubMsg::Seen { key } => {
                self.list.seen(key, now);
            }
            HubMsg::Barrier { key, done } => {
                // Messages are handled in the order they came: the ones before this pulse have
                // been handed to the application already.
                let _ = done.send(self.list.seen(key, now));
            }
            HubMsg::Alive { key, seq } => {
                self.list.alive(key, seq, now);
            }
            HubMsg::Data { key, payload } => {
                if self.list.seen(key, now) {
                    if let Some(peer) = self.list.peer(key) {
                        self.emit(ServerEvent::Message { peer: peer.id.clone(), payload });
                    }
                }
            }
            HubMsg::Leave { key, reason } => {
                if let Some(gone) = self.list.leave(key) {
                    self.depart(gone, reason);
                }
            }
            HubMsg::Online { reply } => {
                let _ = reply.send(self.list.snapshot());
            }
            HubMsg::SendTo { peer, payload, reply } => {
                let result = match self.list.link(&peer) {
                    None => Err(ServerSendError::NotOnline(payload)),
                    Some(link) => link.try_send(Frame::Data(payload)).map_err(|error| match error.into_inner() {
                        Frame::Data(payload) => ServerSendError::Full(payload),
                        _ => ServerSendError::Stopped,
                    }),
                };
                let _ = reply.send(result);
            }
            HubMsg::Broadcast { payload, reply } => {
                let queued =
                    self.list.links().filter(|(_, link)| link.try_send(Frame::Data(payload.clone())).is_ok()).count();
                let _ = reply.send(queued);
            }
        }
    }

    /// Takes a peer out for good: its queue is closed (its writer sends what is left, then
    /// closes the socket) and the application is told.
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
            let _ = gone.link.try_send(Frame::bye("shutdown"));
            self.depart(gone, OfflineReason::Shutdown);
        }
    }
}
