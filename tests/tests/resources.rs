//! Nothing outlives a closed client or a stopped server: no task, no socket.
//!
//! One test in its own binary, because it counts the whole process's file descriptors.

use std::time::Duration;

use pulsewire::{Client, ClientConfig, CloseReason, Event, Server, ServerConfig, State};
use pulsewire_tests::{next_event, open_fds};

fn server_config() -> ServerConfig {
    let listen = "127.0.0.1:0".parse().expect("valid address");
    ServerConfig::builder().listen(listen).interval(Duration::from_millis(50)).build().expect("valid config")
}

#[test]
fn close_and_shutdown_leave_no_task_running_and_no_socket_open() -> anyhow::Result<()> {
    smol::block_on(async {
        // The runtimes open their own descriptors (epoll, timers) once; warm them up first.
        let (warm, _) = Server::bind(server_config()).await?;
        warm.shutdown().await;
        let before = open_fds();

        let (server, _events) = Server::bind(server_config()).await?;
        let mut clients = Vec::new();
        for n in 0..5 {
            let config = ClientConfig::builder(server.local_addr().to_string(), format!("desk-{n}")).build()?;
            let (client, mut events) = Client::start(config);
            next_event(&mut events, Duration::from_secs(10), |e| matches!(e, Event::Connected { .. })).await?;
            clients.push((client, events));
        }
        assert_eq!(server.online().await.len(), 5);
        assert_eq!(server.live_tasks(), 2 + 5, "accept loop, hub, and one task per peer");

        for (client, mut events) in clients {
            client.close().await;
            assert!(client.is_finished(), "close returns once the driver has ended");
            assert_eq!(client.state(), State::Closed { reason: CloseReason::Application });
            let (last, ..) =
                next_event(&mut events, Duration::from_secs(10), |e| matches!(e, Event::Closed { .. })).await?;
            assert_eq!(last, Event::Closed { reason: CloseReason::Application });
            assert!(events.try_next().is_none(), "Closed is the last event");
        }
        server.shutdown().await;
        assert_eq!(server.live_tasks(), 0);
        drop(server);
        assert_eq!(open_fds(), before, "every socket the server and clients opened is closed");
        anyhow::Ok(())
    })
}
