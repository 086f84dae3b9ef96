//! Encrypting natter-sdk devices for the end-to-end encryption tests (tests/e2ee.rs, and
//! the browser's encrypted conversations in tests/browser.rs): log one in, read a
//! conversation's messages (an undecryptable one fails the test), search the server's
//! files for a plaintext.
use std::path::Path;

use natter_protocol::pb::conversation_event::Body;
use natter_sdk::{Client, ClientEvent, ConversationId, DeviceId, Encryption, Events, StoreKey};

use super::*;

pub const MARKER: &str = "zebra-quartz-7731";

/// Where a test's server answers: in this process, or the binary in its own.
pub trait Reach {
    fn reach(&self) -> (std::net::SocketAddr, &str);
}

impl Reach for natter_server::RunningServer {
    fn reach(&self) -> (std::net::SocketAddr, &str) {
        (self.addr, &self.fingerprint)
    }
}

impl Reach for ServerProcess {
    fn reach(&self) -> (std::net::SocketAddr, &str) {
        (self.addr, &self.fingerprint)
    }
}

pub struct Phone {
    pub client: Client,
    pub events: Events,
    pub device: DeviceId,
}

/// Log a new encrypting device of `name` in (registering the user first if asked). Its
/// keys are published by the time this returns (the SDK does it before the app hears
/// `Connected`).
pub async fn phone(s: &impl Reach, dir: &Path, name: &str, n: u32, register: bool) -> Phone {
    phone_at(s, &dir.join(format!("{name}-{n}.state")), name, register, None).await
}

pub async fn phone_at(s: &impl Reach, state: &Path, name: &str, register: bool, token: Option<String>) -> Phone {
    let (addr, fingerprint) = s.reach();
    let mut cfg = client_config(addr, fingerprint, token.clone());
    cfg.encryption = Some(Encryption {
        state_path: state.to_path_buf(),
        store_key: StoreKey([9; 32]),
    });
    let (client, mut events) = Client::connect(cfg).unwrap();
    if register {
        client.register(name, PASSWORD).await.expect("register");
    }
    if token.is_none() {
        client.login(name, PASSWORD, name).await.expect("login");
    }
    let device = wait_for(&mut events, |e| match e {
        ClientEvent::Connected { device_id, .. } => Some(*device_id),
        _ => None,
    })
    .await;
    Phone { client, events, device }
}

/// Texts of the next `n` messages in `conv`; panics on an undecryptable one.
pub async fn read(p: &mut Phone, conv: ConversationId, n: usize) -> Vec<String> {
    read_after(p, conv, 0, n).await
}

/// Texts of the next `n` messages in `conv` after seq `floor` (earlier ones, e.g. what a
/// new device's sync brings from before it existed, are passed over).
pub async fn read_after(p: &mut Phone, conv: ConversationId, floor: u64, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = wait_for(&mut p.events, |e| match e {
            ClientEvent::Event(ev) if ev.conversation_id == conv.0 && ev.seq > floor => Some(Ok(ev.clone())),
            ClientEvent::Undecryptable { event, reason } if event.conversation_id == conv.0 && event.seq > floor => {
                Some(Err(format!("seq {}: {reason}", event.seq)))
            }
            _ => None,
        })
        .await
        .unwrap_or_else(|e| panic!("device {:?} could not read: {e}", p.device));
        if let Some(Body::Message(m)) = ev.body {
            let body = m.body.unwrap_or_default();
            assert!(body.encrypted.is_none(), "handed out opened");
            out.push(body.text);
        }
    }
    out
}
