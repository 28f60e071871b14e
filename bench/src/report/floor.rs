//! The machine's floor: what one loopback TCP write and read of a `PULSE` cost, with nothing
//! else in the way (one thread, blocking sockets, no runtime). On loopback the sender's write
//! also runs the receiver's TCP input, so this is the least a server can spend per pulse here.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

use serde::Serialize;

use crate::stats::percentile;

/// The floor's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Connected socket pairs used.
    pub sockets: usize,
    /// Rounds measured.
    pub rounds: usize,
    /// Bytes of the frame written.
    pub frame_bytes: usize,
    /// Median over rounds of the time per write, µs.
    pub send_us: f64,
    /// Median over rounds of the time per read, µs.
    pub recv_us: f64,
}

/// Measures with `sockets` socket pairs.
pub fn measure(sockets: usize) -> anyhow::Result<Floor> {
    const ROUNDS: usize = 5;
    let frame = b"PULSE 86400\n";
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        pairs.push((server, client));
    }
    let mut sends = Vec::new();
    let mut recvs = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for (server, _) in &mut pairs {
            server.write_all(frame)?;
        }
        sends.push(start.elapsed().as_secs_f64() * 1e6 / sockets as f64);
        let start = Instant::now();
        for (_, client) in &mut pairs {
            let _ = client.read(&mut buf)?;
        }
        recvs.push(start.elapsed().as_secs_f64() * 1e6 / sockets as f64);
    }
    sends.sort_by(f64::total_cmp);
    recvs.sort_by(f64::total_cmp);
    Ok(Floor {
        sockets,
        rounds: ROUNDS,
        frame_bytes: frame.len(),
        send_us: percentile(&sends, 50.0).unwrap_or(f64::NAN),
        recv_us: percentile(&recvs, 50.0).unwrap_or(f64::NAN),
    })
}
