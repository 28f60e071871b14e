//! Observers: a few raw protocol peers that stamp each `PULSE` with the kernel's receive time.
//!
//! The SDK clients of a generator stamp a pulse when their event reaches the generator's
//! executor, which on two cores is busy with thousands of other clients: their spread measures
//! the generator as much as the server. An observer asks the kernel for the time the segment
//! arrived (`SO_TIMESTAMPNS`): on loopback that is the moment the server's write delivered it,
//! whatever the observer's own scheduling. Spread over the server's online list (whose order
//! does not follow connection order), `k` observers see about `(k - 1) / (k + 1)` of the span
//! of one round: the pulse fan-out time.
//!
//! Each observer speaks the protocol with the SDK's own codec and answers every pulse.

use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use pulsewire::protocol::{Decoder, Frame, MIN_PROTOCOL_VERSION};

use crate::clock::{now_ns, timespec_ns};

/// One pulse as an observer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// The kernel's receive time (`CLOCK_REALTIME`, ns).
    pub kernel: u64,
    /// When the observer read it (`CLOCK_MONOTONIC`, ns), to place it in a window.
    pub read: u64,
}

/// A set of observers and what they saw.
#[derive(Debug)]
pub struct Observers {
    sightings: Arc<Mutex<Vec<Sighting>>>,
    online: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Observers {
    /// Connects `count` observers to `server` as `{prefix}{n}`, each on a thread of its own.
    pub fn start(server: SocketAddr, count: usize, prefix: &str) -> anyhow::Result<Observers> {
        let sightings = Arc::new(Mutex::new(Vec::new()));
        let online = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in 0..count {
            let (stream, decoder) = handshake(server, &format!("{prefix}{n}"))?;
            let (sightings, online, stop) = (sightings.clone(), online.clone(), stop.clone());
            online.fetch_add(1, Ordering::Relaxed);
            threads.push(thread::Builder::new().name(format!("observer-{n}")).spawn(move || {
                // An observer that fails simply stops seeing pulses; `online` says how many are left.
                let _ = observe(stream, decoder, &sightings, &stop);
                online.fetch_sub(1, Ordering::Relaxed);
            })?);
        }
        Ok(Observers { sightings, online, stop, threads })
    }

    /// How many observers are still connected.
    pub fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// The kernel receive times of the pulses read within `[from, to]` (monotonic ns).
    pub fn kernel_times(&self, from: u64, to: u64) -> Vec<u64> {
        let sightings = self.sightings.lock().unwrap_or_else(PoisonError::into_inner);
        sightings.iter().filter(|s| (from..=to).contains(&s.read)).map(|s| s.kernel).collect()
    }

    /// Disconnects every observer and waits for their threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Connects and completes the handshake; returns the stream and the decoder holding whatever
/// arrived behind `WELCOME`.
fn handshake(server: SocketAddr, id: &str) -> anyhow::Result<(TcpStream, Decoder)> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5)).context("observer connect")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // The server serves version 1 only, so far.
    let hello = Frame::Hello { version: MIN_PROTOCOL_VERSION, client_id: id.parse()?, token: None, resume: None };
    stream.write_all(&hello.to_bytes())?;
    let mut decoder = Decoder::new(1024);
    loop {
        match decoder.next_frame()? {
            Some(Frame::Welcome { .. }) => break,
            Some(other) => bail!("observer {id}: expected WELCOME, got {other}"),
            None => {}
        }
        let n = stream.read(decoder.read_buf())?;
        decoder.filled(n);
        if n == 0 {
            bail!("observer {id}: closed during the handshake");
        }
    }
    setsockopt(&stream, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
    // Wake up now and then to see whether to stop.
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok((stream, decoder))
}

/// Reads pulses, stamps them and answers them until the connection ends or `stop` is set.
fn observe(
    mut stream: TcpStream,
    mut decoder: Decoder,
    sightings: &Mutex<Vec<Sighting>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    let mut buf = [0u8; 4096];
    let mut kernel = 0;
    loop {
        while let Some(frame) = decoder.next_frame()? {
            if let Frame::Pulse { seq } = frame {
                let read = now_ns();
                sightings.lock().unwrap_or_else(PoisonError::into_inner).push(Sighting { kernel, read });
                Frame::Alive { seq }.encode(&mut out);
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(TimeSpec);
        let received = match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()) {
            Ok(message) => {
                for cmsg in message.cmsgs()? {
                    if let ControlMessageOwned::ScmTimestampns(stamp) = cmsg {
                        kernel = timespec_ns(stamp.tv_sec(), stamp.tv_nsec());
                    }
                }
                message.bytes
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        };
        if received == 0 {
            return Ok(());
        }
        decoder.extend(&buf[..received]);
    }
}
