//! pulsewire keeps a live, self-healing connection between a desktop application and its
//! server, and tells both sides at once when the other one is gone.
//!
//! TCP alone cannot tell an idle peer from one whose cable was pulled: pulsewire adds a
//! bidirectional heartbeat. The server pulses every online peer each interval and evicts the
//! ones that stop answering; the client answers every pulse, counts the ones that do not come,
//! and reconnects with exponential backoff and jitter when the connection is lost.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use pulsewire::{Client, ClientConfig, Event, Server, ServerConfig, ServerEvent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! futures::executor::block_on(async {
//!     // A server on a free port, pulsing every 50 ms.
//!     let config = ServerConfig::builder()
//!         .listen("127.0.0.1:0".parse()?)
//!         .interval(Duration::from_millis(50))
//!         .build()?;
//!     let (server, mut server_events) = Server::bind(config).await?;
//!
//!     // A client: it connects, answers pulses, and would reconnect if the server went away.
//!     let config = ClientConfig::builder(server.local_addr().to_string(), "desk-42").build()?;
//!     let (client, mut events) = Client::start(config);
//!     while let Some(event) = events.next().await {
//!         if let Event::Connected { .. } = event {
//!             client.send("hello").await?;
//!             break;
//!         }
//!     }
//!     // The server sees the peer come online, then its message.
//!     while let Some(event) = server_events.next().await {
//!         if let ServerEvent::Message { peer, payload, .. } = event {
//!             assert_eq!((peer.as_str(), &payload[..]), ("desk-42", &b"hello"[..]));
//!             break;
//!         }
//!     }
//!     client.close().await;
//!     server.shutdown().await;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # How it is built
//!
//! - [`protocol`]: frames and the streaming decoder (pure).
//! - [`core`]: every decision about time and liveness as plain types driven by an injected
//!   clock: [`core::MissCounter`], [`core::MissWatch`], [`core::Cadence`],
//!   [`core::BackoffSchedule`], [`core::OnlineList`].
//! - [`auth`] and [`tls`]: who a peer is (authenticators, a token file, JWT) and TLS on both
//!   sides (rustls with the *ring* provider, named explicitly).
//! - [`Client`] and [`Server`]: thin async shells around the core. Sockets and timers live on
//!   async-io's reactor. The client's [`Driver`] runs under any executor; `Client::start` runs
//!   it on the reactor's own thread (one wake-up per pulse interval when idle), and the server
//!   runs on async-std's executor.
//!
//! # Errors and panics
//!
//! Bad input from a peer never panics: it is a typed error ([`protocol::DecodeError`],
//! [`ProtocolViolation`]) that closes that peer's connection alone, after telling it why with an
//! `ERROR` frame. Invalid configuration is refused when it is built ([`ConfigError`]).

#![warn(missing_docs)]

pub mod auth;
pub mod core;
pub mod protocol;
pub mod tls;

mod client;
mod error;
mod rt;
mod server;

pub use crate::core::{OutboxStatus, ReconnectPolicy, ResumeState, SendOptions};
pub use client::{
    Client, ClientConfig, ClientConfigBuilder, CloseReason, ConnectError, DisconnectReason, Driver, Event, Events,
    Failure, ProbeError, SendError, State, Ticket, TokenProvider,
};
pub use error::{ConfigError, IoError, ProtocolViolation, MAX_PAYLOAD_LIMIT};
pub use server::{
    KeptSession, OfflineReason, PeerInfo, Server, ServerConfig, ServerConfigBuilder, ServerEvent, ServerEvents,
    ServerSendError, Undelivered,
};

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
