//! A server restart under load: many clients in this process, the real `demo-server` killed
//! with SIGKILL and started again on the same port.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pulsewire::{ClientConfig, DisconnectReason, Event, State};
use pulsewire_tests::crowd::Crowd;
use pulsewire_tests::{most_in_one_window, DemoServer, Spread};

use crate::{patience, scale, serial};

/// Waits until the server printed `n` online events and then its online list; returns the ids
/// in that list.
fn wait_online_list(server: &mut DemoServer, n: usize, limit: Duration) -> anyhow::Result<Vec<String>> {
    let mut online = server.process.seen.iter().filter(|line| line.event() == "online").count();
    if online < n {
        server.process.wait_for(limit, |line| {
            online += usize::from(line.event() == "online");
            online == n
        })?;
    }
    server.process.wait_for(limit, |line| line.event() == "online_list")?;
    Ok(server.last_online_list().unwrap_or_default())
}

#[test]
fn every_client_is_back_exactly_once_after_a_server_kill_and_reconnects_are_spread_by_jitter() -> anyhow::Result<()> {
    let n: usize = scale(100, 600);
    let _serial = serial();
    let args = ["--interval", "500ms", "--no-echo"];
    let mut first = DemoServer::start_logging("127.0.0.1:0", &args, Some("warn"))?;
    let addr = first.addr;
    let ids: Vec<String> = (0..n).map(|i| format!("storm-{i:04}")).collect();
    let configs = ids.iter().map(|id| {
        // The default backoff (first retry after a loss within 0–250 ms, doubling), with
        // timeouts that a connect storm on a small machine can meet.
        ClientConfig::builder(addr.to_string(), id)
            .max_delay(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5))
            .handshake_timeout(Duration::from_secs(5))
            .build()
    });
    let mut crowd = Crowd::start(configs.collect::<Result<Vec<_>, _>>()?);
    crowd.wait_each(patience(), &vec![0; n], |e| matches!(e, Event::Connected { .. }))?;
    let listed = wait_online_list(&mut first, n, patience())?;
    assert_eq!(listed.len(), n);
    let sessions_before: HashSet<String> = first
        .process
        .seen
        .iter()
        .filter(|line| line.event() == "online")
        .map(|line| line.str("session").to_owned())
        .collect();

    let mark = crowd.mark();
    first.process.signal(Signal::SIGKILL)?;
    let killed = Instant::now();
    first.process.kill();
    let lost = crowd.wait_each(patience(), &mark, |e| matches!(e, Event::Disconnected { .. }))?;
    let mut second = DemoServer::start_logging(&addr.to_string(), &args, Some("warn"))?;
    let restarted = Instant::now();
    let back = crowd.wait_each(patience(), &mark, |e| matches!(e, Event::Connected { .. }))?;
    let listed = wait_online_list(&mut second, n, patience())?;
    crowd.read_ready();

    // Every client noticed the kill from its socket, and came back exactly once.
    let noticed = Spread::of(&lost.iter().map(|at| *at - killed).collect::<Vec<_>>()).expect("n > 0");
    let mut sessions_after = HashSet::new();
    for (n, log) in crowd.log.iter().enumerate() {
        let after = &log[mark[n]..];
        let disconnects: Vec<_> = after
            .iter()
            .filter_map(|(e, _)| if let Event::Disconnected { reason } = e { Some(reason) } else { None })
            .collect();
        assert!(
            matches!(disconnects[..], [DisconnectReason::Eof | DisconnectReason::Reset]),
            "client {n}: {disconnects:?}"
        );
        let sessions: Vec<_> = after
            .iter()
            .filter_map(|(e, _)| if let Event::Connected { session, .. } = e { Some(session) } else { None })
            .collect();
        assert_eq!(sessions.len(), 1, "client {n} connected {} times", sessions.len());
        assert!(
            matches!(crowd.clients[n].state(), State::Online { session, .. } if &session == sessions[0]),
            "client {n}: {:?}",
            crowd.clients[n].state()
        );
        assert!(sessions_after.insert(sessions[0].as_str().to_owned()), "session {} given twice", sessions[0]);
    }
    assert!(sessions_after.is_disjoint(&sessions_before), "a session id of the first run came back");

    // The new server has every client once, under the session the client holds, and saw no
    // one twice: no replacement, nobody offline.
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let online: Vec<_> = second.process.seen.iter().filter(|line| line.event() == "online").collect();
    let online_sessions: HashSet<_> = online.iter().map(|line| line.str("session").to_owned()).collect();
    assert_eq!(online.len(), n, "one online event per client");
    assert_eq!(online_sessions, sessions_after);
    assert!(!second.process.seen.iter().any(|line| line.event() == "offline"), "nobody went offline");

    // Jitter spread the reconnects: they did not all land at once.
    let since_kill: Vec<Duration> = back.iter().map(|at| *at - killed).collect();
    let spread = Spread::of(&since_kill).expect("n > 0");
    let since_restart =
        Spread::of(&back.iter().map(|at| at.saturating_duration_since(restarted)).collect::<Vec<_>>()).expect("n > 0");
    let busiest = most_in_one_window(&since_kill, Duration::from_millis(10));
    eprintln!(
        "{n} clients, SIGKILL then restart ({:?} later): loss noticed {noticed}; back after the kill {spread}; \
         after the restart {since_restart}; at most {busiest} reconnects in one 10 ms window",
        restarted - killed
    );
    assert!(busiest <= n / 4, "{busiest} of {n} reconnects landed in one 10 ms window");
    assert!(spread.max - spread.min >= Duration::from_millis(50), "reconnects bunched together: {spread}");
    Ok(())
}
