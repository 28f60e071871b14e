//! A credential that expires while the client is online, over real loopback sockets: the server
//! ends the connection past the grace, the client's token provider gives a new token, and the
//! session resumes with nothing lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pulsewire::auth::{Jwt, JwtKey};
use pulsewire::protocol::ErrorCode;
use pulsewire::{
    Client, ClientConfig, CloseReason, ConnectError, Event, Events, OfflineReason, Server, ServerConfig, ServerEvent,
};

const SECRET: &[u8] = b"a test secret of thirty-two bytes!";
const PATIENCE: Duration = Duration::from_secs(15);

/// How the client closed, if it did within the patience.
async fn closed_within(events: &mut Events) -> Option<CloseReason> {
    let closed = async {
        while let Some(event) = events.next().await {
            if let Event::Closed { reason } = event {
                return Some(reason);
            }
        }
        None
    };
    smol::future::or(closed, async {
        smol::Timer::after(PATIENCE).await;
        None
    })
    .await
}

/// The next event of either side.
enum Side {
    Client(Option<Event>),
    Server(Option<ServerEvent>),
}

async fn server(grace: Duration) -> (Server, pulsewire::ServerEvents) {
    let jwt = Jwt::new(JwtKey::hs256(SECRET)).leeway(Duration::ZERO);
    let config = ServerConfig::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .interval(Duration::from_millis(50))
        .authenticator(Arc::new(jwt))
        .auth_grace(grace)
        .build()
        .expect("config");
    Server::bind(config).await.expect("bind")
}

#[test]
fn an_expired_token_is_renewed_by_the_provider_and_the_session_resumes_with_nothing_lost() {
    smol::block_on(async {
        let (server, mut server_events) = server(Duration::from_millis(200)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        // Each token lives one second: it expires while the client is online.
        let provider = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Jwt::mint_hs256(SECRET, "alice", Some(&["desk-1"]), Some(Duration::from_secs(1)))) }
        };
        let config = ClientConfig::builder(server.local_addr().to_string(), "desk-1")
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .token_provider(provider)
            .build()
            .expect("config");
        let (client, mut events) = Client::start(config);
        let started = Instant::now();
        let mut sent = 0u32;
        let mut received = Vec::new();
        let mut resumed = false;
        let mut expired_seen = false;
        // Stream messages across the expiry, until a resume happened and a while after.
        let deadline = started + PATIENCE;
        let mut resumed_at = None;
        while Instant::now() < deadline
            && resumed_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_millis(300))
        {
            client.try_send(format!("c{sent}")).expect("accepted");
            sent += 1;
            let tick = smol::Timer::after(Duration::from_millis(20));
            smol::future::or(
                async {
                    tick.await;
                },
                async {
                    loop {
                        let next = smol::future::or(async { Side::Client(events.next().await) }, async {
                            Side::Server(server_events.next().await)
                        })
                        .await;
                        match next {
                            Side::Client(Some(Event::Connected { resumed: true, .. })) => {
                                resumed = true;
                                resumed_at.get_or_insert(Instant::now());
                            }
                            Side::Client(Some(Event::Undelivered { .. })) => {
                                panic!("nothing is handed back on a resume")
                            }
                            Side::Client(Some(Event::Closed { reason })) => panic!("closed: {reason:?}"),
                            Side::Server(Some(ServerEvent::Message { payload, .. })) => received.push(payload),
                            Side::Server(Some(ServerEvent::PeerDetached {
                                reason: OfflineReason::AuthExpired,
                                ..
                            })) => {
                                expired_seen = true;
                            }
                            Side::Server(Some(ServerEvent::PeerOffline { .. })) => panic!("the session ended"),
                            _ => {}
                        }
                    }
                },
            )
            .await;
        }
        assert!(expired_seen, "the server ended the connection of the expired credential");
        assert!(resumed, "the client came back with a new token and resumed");
        assert!(calls.load(Ordering::SeqCst) >= 2, "the provider was asked again");
        client.close().await;
        // Every message the client accepted reached the server once, in order.
        while received.len() < sent as usize {
            match smol::future::or(async { server_events.next().await }, async {
                smol::Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await
            {
                Some(ServerEvent::Message { payload, .. }) => received.push(payload),
                Some(_) => {}
                None => break,
            }
        }
        let expected: Vec<String> = (0..sent).map(|n| format!("c{n}")).collect();
        let got: Vec<String> = received.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        assert_eq!(got, expected, "gap-free and duplicate-free across the expiry");
        println!(
            "expiry: {} messages, {} provider calls, resumed after {:?}",
            sent,
            calls.load(Ordering::SeqCst),
            started.elapsed()
        );
    });
}

#[test]
fn a_provider_token_refused_twice_in_a_row_stops_the_client() {
    smol::block_on(async {
        let (server, _server_events) = server(Duration::from_millis(200)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let provider = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Signed with another secret: refused every time.
            async move { Ok(Jwt::mint_hs256(b"the wrong secret, 32 bytes long..", "alice", None, None)) }
        };
        let config = ClientConfig::builder(server.local_addr().to_string(), "alice")
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .token_provider(provider)
            .build()
            .expect("config");
        let (_client, mut events) = Client::start(config);
        let closed = closed_within(&mut events).await;
        assert!(
            matches!(closed, Some(CloseReason::Rejected { code: ErrorCode::AuthFailed, .. })),
            "stopped for good: {closed:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked once more after the first refusal, not again");
    });
}

#[test]
fn a_failing_provider_is_a_failed_attempt_and_asked_again() {
    smol::block_on(async {
        let (server, _server_events) = server(Duration::from_millis(200)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let provider = move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err("the identity service is down".to_owned())
                } else {
                    Ok(Jwt::mint_hs256(SECRET, "alice", None, None))
                }
            }
        };
        let config = ClientConfig::builder(server.local_addr().to_string(), "alice")
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .token_provider(provider)
            .build()
            .expect("config");
        let (_client, mut events) = Client::start(config);
        let mut failed_first = false;
        let online = smol::future::or(
            async {
                while let Some(event) = events.next().await {
                    match event {
                        Event::BackingOff {
                            last_error: Some(pulsewire::Failure::Connect(ConnectError::TokenProvider(why))),
                            ..
                        } => {
                            failed_first = why.contains("down");
                        }
                        Event::Connected { .. } => return true,
                        _ => {}
                    }
                }
                false
            },
            async {
                smol::Timer::after(PATIENCE).await;
                false
            },
        )
        .await;
        assert!(failed_first, "the provider's failure was reported");
        assert!(online, "online with the second token");
    });
}

#[test]
fn a_provider_that_gives_back_the_expired_token_stops_the_client_instead_of_looping() {
    smol::block_on(async {
        let (server, _server_events) = server(Duration::from_millis(100)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        // A provider with a cache that never refreshes: the same one-second token every time.
        let stale = Jwt::mint_hs256(SECRET, "alice", None, Some(Duration::from_secs(1)));
        let provider = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let token = stale.clone();
            async move { Ok(token) }
        };
        let config = ClientConfig::builder(server.local_addr().to_string(), "alice")
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .token_provider(provider)
            .build()
            .expect("config");
        let (_client, mut events) = Client::start(config);
        let closed = closed_within(&mut events).await;
        assert!(
            matches!(closed, Some(CloseReason::Rejected { code: ErrorCode::AuthExpired, .. })),
            "stopped for good: {closed:?}"
        );
        // Asked before the first connect and once after the expiry: the same token again ends it.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    });
}
