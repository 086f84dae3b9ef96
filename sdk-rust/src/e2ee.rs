//! End-to-end encrypted direct conversations in the native SDK (PROTOCOL.md §12):
//! natter-e2ee's [`Engine`] — the steps every SDK runs around the client core's `Crypto` —
//! over this SDK's I/O ([`NativeIo`]): requests and sends through the driver, tokio tasks
//! and timers, and the state in one file encrypted with the app's store key: a log of
//! records, one appended and synced after every change and before the event that caused
//! it reaches the app (§12.7), written afresh (to a temporary file, synced, renamed) when
//! it has grown. Events pass through [`pump`] in order on their way to the app.
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use natter_e2ee::{Engine, Io};
use natter_protocol::client::{Call, SendAck};
use natter_protocol::pb;
use natter_protocol::session::{RequestError, SessionEvent};
use natter_protocol::{ClientMsgId, ConversationId, Seq};
use tokio::sync::mpsc;

use crate::{Client, ClientError, ClientEvent};

pub use natter_e2ee::{DeviceTrust, E2eeError};

/// The key the app keeps (in the platform's keystore) to encrypt the state at rest.
#[derive(Clone)]
pub struct StoreKey(pub [u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

/// Where this device keeps its encryption state, and the key it is encrypted with.
#[derive(Clone, Debug)]
pub struct Encryption {
    /// The state file (created on first use; one per device login).
    pub state_path: PathBuf,
    /// Its key.
    pub store_key: StoreKey,
}

/// The encryption of a native client.
pub(crate) type E2ee = Engine<NativeIo>;

/// This SDK's I/O for the engine.
pub(crate) struct NativeIo {
    /// The client (set once it exists: it holds the engine).
    client: OnceLock<Client>,
    /// The app's event stream (set by the pump).
    app: OnceLock<mpsc::UnboundedSender<ClientEvent>>,
    state_path: PathBuf,
}

/// A request's error as the engine sees it (a closed client: the connection is gone).
fn request_error(e: ClientError) -> RequestError {
    match e {
        ClientError::Request(r) => r,
        _ => RequestError::ConnectionLost,
    }
}

/// An engine error as this SDK reports it: a request's refusal keeps its code.
pub(crate) fn client_error(e: E2eeError) -> ClientError {
    match e {
        E2eeError::Request(r) => ClientError::Request(r),
        other => ClientError::E2ee(other),
    }
}

impl Io for NativeIo {
    fn call<T: Send + 'static>(&self, call: Call<T>) -> impl Future<Output = Result<T, RequestError>> + Send {
        let client = self.client.get().cloned();
        async move {
            let client = client.ok_or(RequestError::ConnectionLost)?;
            client.call(call).await.map_err(request_error)
        }
    }

    fn send(
        &self,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
    ) -> impl Future<Output = Result<SendAck, RequestError>> + Send {
        let client = self.client.get().cloned();
        async move {
            let client = client.ok_or(RequestError::ConnectionLost)?;
            client.send_as_is(conv, id, body).await.map_err(request_error)
        }
    }

    fn acknowledge(&self, conv: ConversationId, seq: Seq) {
        if let Some(c) = self.client.get() {
            c.acknowledge(conv, seq);
        }
    }

    fn emit(&self, ev: SessionEvent) {
        if let Some(app) = self.app.get() {
            let _ = app.send(ev);
        }
    }

    async fn take_state(&self) -> bool {
        // One process per profile is the app's to keep (a file has no lock it must heed).
        true
    }

    fn load_state(&self) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send {
        let path = self.state_path.clone();
        async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn write_state(&self, bytes: Vec<u8>, whole: bool) -> impl Future<Output = Result<(), String>> + Send {
        let path = self.state_path.clone();
        async move {
            let wrote = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                if !whole {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
                    f.write_all(&bytes)?;
                    return f.sync_data();
                }
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await;
            match wrote {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn load_index(&self) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send {
        let path = index_path(&self.state_path);
        async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn write_index(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send {
        let path = index_path(&self.state_path);
        async move {
            // Whole, by rename: a crash leaves the old index or the new one.
            let wrote = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let tmp = path.with_extension("search.tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            })
            .await;
            match wrote {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn sleep(&self, ms: u32) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(std::time::Duration::from_millis(ms.into()))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(task);
    }

    fn warn(&self, what: &str) {
        tracing::warn!("{what}");
    }
}

/// A native client's encryption over `config` (the client is handed over once it exists).
pub(crate) fn new(config: Encryption) -> Arc<E2ee> {
    let io = NativeIo {
        client: OnceLock::new(),
        app: OnceLock::new(),
        state_path: config.state_path,
    };
    Engine::new(io, config.store_key.0)
}

/// The client the engine makes its requests with.
pub(crate) fn attach(e2ee: &E2ee, client: Client) {
    let _ = e2ee.io().client.set(client);
}

/// Pass session events to the app in order, opening and learning on the way.
pub(crate) async fn pump(
    e2ee: Arc<E2ee>,
    mut raw: mpsc::UnboundedReceiver<ClientEvent>,
    app: mpsc::UnboundedSender<ClientEvent>,
) {
    let _ = e2ee.io().app.set(app.clone());
    while let Some(ev) = raw.recv().await {
        if let Some(out) = e2ee.handle(ev).await {
            if app.send(out).is_err() {
                return;
            }
        }
    }
}

/// The local search index's file: beside the state, `<state>.search` (sealed with the
/// same key).
fn index_path(state: &std::path::Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".search");
    state.with_file_name(name)
}
