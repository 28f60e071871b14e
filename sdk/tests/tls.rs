//! TLS over real loopback sockets, with a CA and certificates made at test time: a client
//! speaks to the server both ways and resumes its session over TLS; each verification failure
//! is its own typed connect error; plaintext on the TLS port, TLS on the plaintext port and a
//! ClientHello that never completes each end the way the protocol says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pulsewire::auth::{AllowedIds, AuthFuture, AuthRequest, Authenticator, Principal, Subject};
use pulsewire::protocol::ErrorCode;
use pulsewire::tls::{ClientTls, ServerTls, TlsError};
use pulsewire::{
    Client, ClientConfig, CloseReason, ConnectError, Event, Events, Failure, Server, ServerConfig, ServerEvent,
    ServerEvents,
};
use pulsewire_testkit::certs::{TestCa, Validity};

const INTERVAL: Duration = Duration::from_millis(50);
const PATIENCE: Duration = Duration::from_secs(15);

/// Runs `task` for at most the patience.
async fn within<T>(task: impl std::future::Future<Output = T>) -> T {
    smol::future::or(async { Some(task.await) }, async {
        smol::Timer::after(PATIENCE).await;
        None
    })
    .await
    .expect("the test's patience ran out")
}

/// Lets every peer in, and remembers whether each came over TLS.
#[derive(Default)]
struct SeesTls(Mutex<Vec<bool>>);

impl Authenticator for SeesTls {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        self.0.lock().unwrap().push(request.tls);
        Box::pin(async move {
            Ok(Principal::new(Subject::new(request.client_id.as_str()), AllowedIds::Exactly(request.client_id.clone())))
        })
    }
}

/// A server with a plaintext and a TLS listener, its certificate signed by `ca` for `names`.
async fn server(ca: &TestCa, names: &[&str], validity: Validity) -> (Server, ServerEvents) {
    server_with(ca, names, validity, |builder| builder).await
}

async fn server_with(
    ca: &TestCa,
    names: &[&str],
    validity: Validity,
    more: impl FnOnce(pulsewire::ServerConfigBuilder) -> pulsewire::ServerConfigBuilder,
) -> (Server, ServerEvents) {
    let issued = ca.issue(names, validity).expect("certificate");
    let tls = ServerTls::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).expect("server TLS");
    let config = ServerConfig::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .tls("127.0.0.1:0".parse().expect("addr"), tls)
        .interval(INTERVAL)
        .handshake_timeout(Duration::from_millis(500));
    Server::bind(more(config).build().expect("config")).await.expect("bind")
}

fn client(addr: SocketAddr, id: &str, tls: ClientTls) -> (Client, Events) {
    let config = ClientConfig::builder(addr.to_string(), id)
        .tls(tls)
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(100))
        .build()
        .expect("config");
    Client::start(config)
}

/// The first connect error the client reports.
async fn first_connect_error(events: &mut Events) -> ConnectError {
    within(async {
        loop {
            match events.next().await.expect("events") {
                Event::BackingOff { last_error: Some(Failure::Connect(error)), .. } => return error,
                Event::Connected { .. } => panic!("connected"),
                _ => {}
            }
        }
    })
    .await
}

#[test]
fn a_client_speaks_both_ways_over_tls_and_resumes_its_session_over_tls() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let sees = Arc::new(SeesTls::default());
        let (server, mut server_events) =
            server_with(&ca, &["localhost"], Validity::Now, |b| b.authenticator(sees.clone())).await;
        let tls_addr = server.tls_addr().expect("a TLS listener");
        assert_ne!(tls_addr, server.local_addr());
        let tls = ClientTls::ca_pem(ca.pem().as_bytes()).unwrap().server_name("localhost");
        let config = ClientConfig::builder(tls_addr.to_string(), "desk-1")
            .tls(tls)
            .token("t")
            .initial_delay(Duration::from_millis(20))
            .build()
            .unwrap();
        let (client, mut events) = Client::start(config);
        within(async { while !matches!(events.next().await, Some(Event::Connected { resumed: false, .. })) {} }).await;
        within(async { while !matches!(events.next().await, Some(Event::Pulse { .. })) {} }).await;
        let online = server.online().await;
        assert!(online.len() == 1 && online[0].tls, "the online list says TLS: {online:?}");
        client.send("up over tls").await.unwrap();
        let payload = within(async {
            loop {
                if let Some(ServerEvent::Message { payload, .. }) = server_events.next().await {
                    return payload;
                }
            }
        })
        .await;
        assert_eq!(&payload[..], b"up over tls");
        server.send(&"desk-1".parse().unwrap(), "down over tls").await.unwrap();
        let payload = within(async {
            loop {
                if let Some(Event::Message { payload, .. }) = events.next().await {
                    return payload;
                }
            }
        })
        .await;
        assert_eq!(&payload[..], b"down over tls");
        // The network fails: the client reconnects over TLS and resumes its session.
        assert_eq!(server.drop_connections().await, 1);
        within(async { while !matches!(events.next().await, Some(Event::Connected { resumed: true, .. })) {} }).await;
        assert_eq!(*sees.0.lock().unwrap(), vec![true, true], "the authenticator saw TLS both times");
        client.close().await;
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
    });
}

#[test]
fn each_verification_failure_is_a_typed_connect_error_naming_the_reason() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let trusts_ca = || ClientTls::ca_pem(ca.pem().as_bytes()).unwrap();
        let stranger = TestCa::new("another CA").unwrap();
        let cases: [(&TestCa, &[&str], Validity, ClientTls, TlsError); 6] = [
            (
                &ca,
                &["elsewhere.example"],
                Validity::Now,
                trusts_ca(),
                TlsError::WrongName { expected: "127.0.0.1".into() },
            ),
            (
                &ca,
                &["127.0.0.1"],
                Validity::Now,
                trusts_ca().server_name("localhost"),
                TlsError::WrongName { expected: "localhost".into() },
            ),
            (&stranger, &["127.0.0.1"], Validity::Now, trusts_ca(), TlsError::UnknownIssuer),
            // The public roots do not vouch for a test CA.
            (&ca, &["127.0.0.1"], Validity::Now, ClientTls::webpki_roots(), TlsError::UnknownIssuer),
            (&ca, &["127.0.0.1"], Validity::Expired, trusts_ca(), TlsError::Expired),
            (&ca, &["127.0.0.1"], Validity::NotYet, trusts_ca(), TlsError::NotYetValid),
        ];
        for (issuer, names, validity, tls, expected) in cases {
            let (server, mut server_events) = server(issuer, names, validity).await;
            let (client, mut events) = client(server.tls_addr().unwrap(), "desk-1", tls);
            let error = first_connect_error(&mut events).await;
            assert_eq!(error, ConnectError::Tls(expected.clone()), "{names:?} {validity:?}");
            assert!(!error.to_string().is_empty());
            client.close().await;
            server.shutdown().await;
            // The server never had a peer.
            let mut online = 0;
            while let Some(event) = server_events.next().await {
                online += usize::from(matches!(event, ServerEvent::PeerOnline { .. }));
            }
            assert_eq!(online, 0);
        }
    });
}

#[test]
fn plaintext_on_the_tls_port_is_answered_tls_required_in_plaintext() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let (server, _server_events) = server(&ca, &["127.0.0.1"], Validity::Now).await;
        let tls_addr = server.tls_addr().unwrap();
        // A person with nc.
        let answer = smol::unblock(move || {
            let mut socket = TcpStream::connect(tls_addr).unwrap();
            socket.write_all(b"HELLO 2 desk-1\n").unwrap();
            let mut line = String::new();
            BufReader::new(socket).read_line(&mut line).unwrap();
            line
        })
        .await;
        assert!(answer.starts_with("ERROR tls-required "), "{answer:?}");
        // The SDK client without TLS: a configuration error, fatal.
        let config = ClientConfig::builder(tls_addr.to_string(), "desk-1").build().unwrap();
        let (_client, mut events) = Client::start(config);
        let reason = within(async {
            loop {
                if let Some(Event::Closed { reason }) = events.next().await {
                    return reason;
                }
            }
        })
        .await;
        assert!(matches!(&reason, CloseReason::Rejected { code, .. } if *code == ErrorCode::TlsRequired), "{reason:?}");
        server.shutdown().await;
    });
}

#[test]
fn a_tls_client_on_the_plaintext_port_gets_a_clear_error() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let (server, _server_events) = server(&ca, &["127.0.0.1"], Validity::Now).await;
        let (client, mut events) =
            client(server.local_addr(), "desk-1", ClientTls::ca_pem(ca.pem().as_bytes()).unwrap());
        let error = first_connect_error(&mut events).await;
        assert_eq!(error, ConnectError::Tls(TlsError::NotTls));
        assert!(error.to_string().contains("plaintext port"), "{error}");
        client.close().await;
        server.shutdown().await;
    });
}

#[test]
fn a_client_hello_that_never_completes_is_cut_at_the_handshake_timeout() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let (server, _server_events) = server(&ca, &["127.0.0.1"], Validity::Now).await;
        let tls_addr = server.tls_addr().unwrap();
        let (lasted, read) = smol::unblock(move || {
            let mut socket = TcpStream::connect(tls_addr).unwrap();
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
            let started = Instant::now();
            // The start of a ClientHello record that announces 512 bytes and sends 5.
            socket.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03]).unwrap();
            let mut rest = Vec::new();
            let read = socket.read_to_end(&mut rest).map(|_| rest.len());
            (started.elapsed(), read)
        })
        .await;
        // Cut: end-of-file or a reset, at the handshake timeout (500 ms) plus the linger.
        assert!(read.as_ref().map_or(true, |n| *n < 64), "{read:?}");
        assert!(lasted >= Duration::from_millis(450), "cut after {lasted:?}, before the handshake timeout");
        assert!(lasted < Duration::from_secs(5), "cut after {lasted:?}");
        within(async {
            while server.handshakes_in_flight() > 0 {
                smol::Timer::after(Duration::from_millis(10)).await;
            }
        })
        .await;
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
    });
}

/// A peer that logs in over TLS (rustls' blocking connection), reads its `WELCOME`, then
/// neither reads nor answers again.
fn frozen_tls_peer(addr: SocketAddr, ca_pem: &str, id: &str) -> impl Send {
    use pulsewire::tls::rustls;
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    stream.write_all(format!("HELLO 2 {id}\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("WELCOME "), "{line:?}");
    reader.into_inner()
}

#[test]
fn a_tls_peer_that_stalls_delays_no_other_peers_pulses() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let (server, mut server_events) = server(&ca, &["127.0.0.1"], Validity::Now).await;
        let tls_addr = server.tls_addr().unwrap();
        let trusts = || ClientTls::ca_pem(ca.pem().as_bytes()).unwrap();
        let (_good, mut good_events) = client(tls_addr, "good", trusts());
        within(async { while !matches!(good_events.next().await, Some(Event::Pulse { .. })) {} }).await;
        // Stalled peers: ten in the middle of a ClientHello, and one that logs in over TLS,
        // then neither reads nor answers (its TLS session stays half-used).
        let stalled: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut socket = TcpStream::connect(tls_addr).unwrap();
                socket.write_all(&[0x16, 0x03, 0x01]).unwrap();
                socket
            })
            .collect();
        let frozen = frozen_tls_peer(tls_addr, &ca.pem(), "frozen");
        within(async {
            loop {
                if let Some(ServerEvent::PeerOnline { peer, .. }) = server_events.next().await {
                    if peer.id.as_str() == "frozen" {
                        return;
                    }
                }
            }
        })
        .await;
        // The good peer's pulses keep their interval while the others stall, for 30 intervals.
        let mut last = Instant::now();
        let mut widest = Duration::ZERO;
        let mut pulses = 0;
        while pulses < 30 {
            match within(good_events.next()).await {
                Some(Event::Pulse { .. }) => {
                    widest = widest.max(last.elapsed());
                    last = Instant::now();
                    pulses += 1;
                }
                Some(Event::Disconnected { reason }) => panic!("the good peer was disconnected: {reason}"),
                _ => {}
            }
        }
        assert!(widest < INTERVAL * 3, "a pulse came {widest:?} after the one before");
        drop((stalled, frozen));
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
    });
}

#[test]
fn a_tls_client_refused_at_the_handshake_limit_sees_a_close_not_a_plaintext_error() {
    smol::block_on(async {
        let ca = TestCa::new("test CA").unwrap();
        let (server, _server_events) =
            server_with(&ca, &["127.0.0.1"], Validity::Now, |b| b.max_handshakes(1).handshake_timeout(PATIENCE)).await;
        let tls_addr = server.tls_addr().unwrap();
        // One ClientHello that never completes holds the only handshake slot.
        let mut holder = TcpStream::connect(tls_addr).unwrap();
        holder.write_all(&[0x16, 0x03, 0x01]).unwrap();
        within(async {
            while server.handshakes_in_flight() == 0 {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
        })
        .await;
        let (client, mut events) = client(tls_addr, "desk-1", ClientTls::ca_pem(ca.pem().as_bytes()).unwrap());
        // Not `TlsError::NotTls`: a plaintext `ERROR full` would read as the wrong port.
        assert_eq!(first_connect_error(&mut events).await, ConnectError::Eof);
        drop(holder);
        // The slot comes free and the client gets in.
        within(async { while !matches!(events.next().await, Some(Event::Connected { .. })) {} }).await;
        client.close().await;
        server.shutdown().await;
    });
}
