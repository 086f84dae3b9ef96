//! A UDP relay on loopback between a client and a server, for network faults without
//! `tc netem`: it forwards every datagram both ways, and on request drops all of them (a
//! blackhole), drops a share of them (loss, from a seeded generator so a run repeats),
//! holds each one back a while (delay), or drops only what the client sends (mute). One
//! client at a time: replies go to the last address that sent.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// What the relay does to each datagram.
#[derive(Default)]
struct Faults {
    /// Per mille of datagrams dropped (1000: all of them).
    drop_per_mille: AtomicU32,
    /// Milliseconds each datagram is held back.
    delay_ms: AtomicU64,
    /// The seeded generator behind the drops (xorshift64).
    rng: Mutex<u64>,
    dropped: AtomicU64,
    /// QUIC Retry packets seen from the server (long header, type 3).
    retries: AtomicU64,
    /// Drop everything the client sends (the server's datagrams still arrive).
    mute_client: std::sync::atomic::AtomicBool,
}

impl Faults {
    fn drop_this(&self) -> bool {
        let p = self.drop_per_mille.load(Ordering::Relaxed);
        if p == 0 {
            return false;
        }
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let dropped = (*x % 1000) < u64::from(p);
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        dropped
    }
}

/// A running relay; its tasks end when it is dropped.
pub struct Relay {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// A relay in front of `server`.
    pub async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let faults = Arc::new(Faults {
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            ..Default::default()
        });
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (front, back, faults, client) = (front.clone(), back.clone(), faults.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if faults.mute_client.load(Ordering::Relaxed) {
                        continue;
                    }
                    forward(&faults, buf[..n].to_vec(), back.clone(), None).await;
                }
            })
        };
        let down = {
            let (front, back, faults) = (front.clone(), back.clone(), faults.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = back.recv(&mut buf).await {
                    if n > 0 && buf[0] & 0xb0 == 0xb0 {
                        faults.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        forward(&faults, buf[..n].to_vec(), front.clone(), Some(to)).await;
                    }
                }
            })
        };
        Relay {
            addr: front.local_addr().unwrap(),
            faults,
            tasks: vec![up, down],
        }
    }

    /// Drop every datagram both ways (`true`) or none (`false`).
    pub fn blackhole(&self, on: bool) {
        self.loss(if on { 1000 } else { 0 });
    }

    /// Drop every datagram the client sends (`true`) while the server's still reach it:
    /// the client receives, but nothing it answers (acknowledgements included) arrives.
    pub fn mute_client(&self, on: bool) {
        self.faults.mute_client.store(on, Ordering::Relaxed);
    }

    /// Drop this many datagrams in a thousand, both ways.
    pub fn loss(&self, per_mille: u32) {
        self.faults.drop_per_mille.store(per_mille, Ordering::Relaxed);
    }

    /// Hold every datagram back this long, both ways.
    pub fn delay(&self, by: Duration) {
        self.faults.delay_ms.store(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// QUIC Retry packets the server sent through the relay so far.
    pub fn retries(&self) -> u64 {
        self.faults.retries.load(Ordering::Relaxed)
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.faults.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Pass one datagram on (now, or after the delay in a task of its own), unless dropped.
async fn forward(faults: &Faults, datagram: Vec<u8>, out: Arc<UdpSocket>, to: Option<SocketAddr>) {
    if faults.drop_this() {
        return;
    }
    let delay = Duration::from_millis(faults.delay_ms.load(Ordering::Relaxed));
    let send = async move {
        let _ = match to {
            Some(to) => out.send_to(&datagram, to).await,
            None => out.send(&datagram).await,
        };
    };
    if delay.is_zero() {
        send.await;
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send.await;
        });
    }
}
