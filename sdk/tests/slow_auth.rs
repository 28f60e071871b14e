//! A slow authenticator runs in each peer's own connection task, inside the handshake timeout:
//! it delays no pulse of the peers already online, and one that never answers is cut off.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pulsewire::auth::{AllowedIds, AuthFuture, AuthRequest, Authenticator, Principal, Subject};
use pulsewire::{Client, ClientConfig, Event, Server, ServerConfig, ServerEvent};

const INTERVAL: Duration = Duration::from_millis(50);

/// Takes `delay` to let any token in; `answers: false` never answers at all.
struct Slow {
    delay: Duration,
    answers: bool,
    calls: AtomicUsize,
}

impl Authenticator for Slow {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if !self.answers {
                futures::future::pending::<()>().await;
            }
            async_io::Timer::after(self.delay).await;
            Ok(Principal::new(Subject::new(request.client_id.as_str()), AllowedIds::Exactly(request.client_id.clone())))
        })
    }
}

async fn server(slow: Arc<Slow>, handshake_timeout: Duration) -> (Server, pulsewire::ServerEvents) {
    let config = ServerConfig::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .interval(INTERVAL)
        .handshake_timeout(handshake_timeout)
        .authenticator(slow)
        .build()
        .expect("config");
    Server::bind(config).await.expect("bind")
}

#[test]
fn logins_that_take_a_second_each_delay_no_pulse_of_an_online_peer() {
    smol::block_on(async {
        let slow = Arc::new(Slow { delay: Duration::from_secs(1), answers: true, calls: AtomicUsize::new(0) });
        let (server, mut server_events) = server(slow.clone(), Duration::from_secs(5)).await;
        let addr = server.local_addr();
        let config = ClientConfig::builder(addr.to_string(), "online").token("t").build().expect("config");
        let (_client, mut events) = Client::start(config);
        while !matches!(server_events.next().await, Some(ServerEvent::PeerOnline { .. })) {}
        // 100 logins, each a second in the authenticator, all at once.
        let started = Instant::now();
        let logins: Vec<_> = (0..100)
            .map(|n| {
                std::thread::spawn(move || {
                    let mut peer = TcpStream::connect(addr).expect("connect");
                    peer.write_all(format!("HELLO 2 login-{n} token=t\n").as_bytes()).expect("hello");
                    let mut line = String::new();
                    BufReader::new(peer).read_line(&mut line).expect("answer");
                    line
                })
            })
            .collect();
        // Meanwhile the online peer's pulses keep their interval.
        let mut last = Instant::now();
        let mut widest = Duration::ZERO;
        while started.elapsed() < Duration::from_millis(1500) {
            match events.next().await {
                Some(Event::Pulse { .. }) => {
                    widest = widest.max(last.elapsed());
                    last = Instant::now();
                }
                Some(Event::Disconnected { reason }) => panic!("the online peer was disconnected: {reason}"),
                _ => {}
            }
        }
        let answers: Vec<String> = logins.into_iter().map(|login| login.join().expect("login")).collect();
        let took = started.elapsed();
        assert!(
            answers.iter().all(|line| line.starts_with("WELCOME ")),
            "{:?}",
            answers.iter().find(|l| !l.starts_with("WELCOME"))
        );
        println!("100 logins of 1 s each: all welcomed after {took:?}; the widest gap between pulses {widest:?}");
        // The logins ran side by side (not one after the other), and no pulse waited for them.
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(widest < INTERVAL * 5, "a pulse waited {widest:?}");
        assert_eq!(slow.calls.load(Ordering::SeqCst), 101);
    });
}

#[test]
fn an_authenticator_that_never_answers_is_cut_off_at_the_handshake_timeout() {
    smol::block_on(async {
        let slow = Arc::new(Slow { delay: Duration::ZERO, answers: false, calls: AtomicUsize::new(0) });
        let (server, _events) = server(slow, Duration::from_millis(300)).await;
        let addr = server.local_addr();
        let started = Instant::now();
        let answer = smol::unblock(move || {
            let mut peer = TcpStream::connect(addr).expect("connect");
            peer.write_all(b"HELLO 2 desk-1 token=t\n").expect("hello");
            let mut line = String::new();
            BufReader::new(peer).read_line(&mut line).expect("answer");
            line
        })
        .await;
        let took = started.elapsed();
        assert_eq!(answer, "ERROR auth-unavailable authentication is unavailable, try again later\n");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
    });
}
