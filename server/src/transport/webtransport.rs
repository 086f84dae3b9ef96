//! The WebTransport transport (HTTP/3, `wtransport`) for browsers: the same mapping as
//! native QUIC (the client's bidirectional stream is the control stream, server-opened
//! unidirectional streams carry delivery, datagrams carry signals), so the adapter only
//! moves bytes into [`conn::serve`].
//!
//! Without a configured certificate the endpoint runs on a generated ECDSA P-256
//! certificate valid for at most 14 days, which browsers accept through
//! `serverCertificateHashes`; [`WtCerts`] renews it before it expires and publishes the
//! current hash for the page (served in `/natter.json`).
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use natter_protocol::pb::ErrorCode;
use wtransport::{Endpoint, Identity, ServerConfig, VarInt};

use crate::conn::{self, ControlSend, Shared, Transport};

/// A WebTransport session as a [`Transport`].
#[derive(Debug)]
pub struct WtTransport(pub wtransport::Connection);

#[async_trait]
impl Transport for WtTransport {
    type Stream = wtransport::SendStream;
    type Upload = wtransport::RecvStream;
    const KIND: &'static str = "webtransport";

    async fn accept_upload(&self) -> Option<wtransport::RecvStream> {
        self.0.accept_uni().await.ok()
    }

    async fn open_stream(&self) -> io::Result<wtransport::SendStream> {
        let opening = self.0.open_uni().await.map_err(io::Error::other)?;
        opening.await.map_err(io::Error::other)
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.0.close(VarInt::from_u32(code as u32), reason.as_bytes());
    }

    async fn peer_closed(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.0.closed()).await;
    }

    fn send_datagram(&self, data: bytes::Bytes) -> bool {
        self.0.send_datagram(data).is_ok()
    }

    async fn read_datagram(&self) -> Option<bytes::Bytes> {
        self.0.receive_datagram().await.ok().map(|d| d.payload())
    }

    fn peer_ip(&self) -> std::net::IpAddr {
        self.0.remote_address().ip()
    }

    fn is_clean_close(&self, error: &io::Error) -> bool {
        super::quic::closed_by_peer_with_code_0(error)
    }
}

#[async_trait]
impl ControlSend for wtransport::SendStream {
    async fn finish_and_wait(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.finish()).await;
    }
}

/// The certificate the WebTransport endpoint presents, and what the page needs to trust it.
#[derive(Debug)]
pub struct WtCerts {
    /// Hex SHA-256 of each certificate browsers may see now (the current one; after a
    /// renewal also the previous, until it expires). Empty with a CA-issued certificate.
    hashes: RwLock<Vec<String>>,
    generated: bool,
    days: u32,
}

impl WtCerts {
    /// Hashes for `serverCertificateHashes`.
    pub fn hashes(&self) -> Vec<String> {
        self.hashes.read().expect("hash lock").clone()
    }
}

fn generate(days: u32) -> anyhow::Result<Identity> {
    Ok(Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .from_now_utc()
        .validity_days(days.clamp(1, 14))
        .build()?)
}

fn hash_of(identity: &Identity) -> String {
    let leaf = &identity.certificate_chain().as_slice()[0];
    crate::security::tls::fingerprint(leaf.der())
}

fn server_config(addr: SocketAddr, identity: &Identity, idle: Duration, keys: &quinn::EndpointConfig) -> ServerConfig {
    let mut config = ServerConfig::builder()
        .with_bind_address(addr)
        .with_identity(identity.clone_identity())
        .keep_alive_interval(None)
        .max_idle_timeout(Some(idle))
        .expect("idle timeout in range")
        .build();
    *config.quic_endpoint_config_mut() = keys.clone();
    config
}

/// A bound WebTransport endpoint.
pub struct WtEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificates.
    pub certs: Arc<WtCerts>,
    /// The idle timeout its configuration carries (kept across certificate renewals).
    idle: Duration,
    /// Its stateless-reset and connection-id keys (security/reset.rs), stable across
    /// restarts.
    keys: quinn::EndpointConfig,
    endpoint: Endpoint<wtransport::endpoint::endpoint_side::Server>,
    /// Set by [`WtEndpoint::close`]: the accept loop stops before the endpoint closes
    /// (wtransport panics in an `accept` that is pending when its endpoint closes).
    closing: tokio::sync::watch::Sender<bool>,
    /// Set by the accept loop when it has stopped.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for WtEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WtEndpoint").field("addr", &self.addr).finish()
    }
}

impl WtEndpoint {
    /// Bind. `pem` is the configured certificate and key (PEM files), if any.
    pub async fn bind(
        addr: SocketAddr,
        pem: Option<(&std::path::Path, &std::path::Path)>,
        days: u32,
        idle: Duration,
        keys: quinn::EndpointConfig,
    ) -> anyhow::Result<WtEndpoint> {
        let (identity, generated) = match pem {
            Some((cert, key)) => (Identity::load_pemfiles(cert, key).await?, false),
            None => (generate(days)?, true),
        };
        let endpoint = Endpoint::server(server_config(addr, &identity, idle, &keys))?;
        let hashes = if generated {
            vec![hash_of(&identity)]
        } else {
            Vec::new()
        };
        Ok(WtEndpoint {
            addr: endpoint.local_addr()?,
            certs: Arc::new(WtCerts {
                hashes: RwLock::new(hashes),
                generated,
                days,
            }),
            idle,
            keys,
            endpoint,
            closing: tokio::sync::watch::Sender::new(false),
            stopped: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Replace a generated certificate with a fresh one (new connections use it; the
    /// previous hash stays published so a page that fetched it just now still connects).
    pub fn renew(&self) -> anyhow::Result<()> {
        if !self.certs.generated {
            return Ok(());
        }
        let identity = generate(self.certs.days)?;
        self.endpoint
            .reload_config(server_config(self.addr, &identity, self.idle, &self.keys), false)?;
        let mut hashes = self.certs.hashes.write().expect("hash lock");
        let previous = hashes.first().cloned();
        *hashes = std::iter::once(hash_of(&identity)).chain(previous).collect();
        tracing::info!(hash = %hashes[0], "renewed the WebTransport certificate");
        Ok(())
    }

    /// Serve a new configured certificate (SIGHUP): new sessions get it, sessions already
    /// made keep theirs. A generated certificate renews itself instead ([`Self::renew`]).
    /// wtransport takes only PKCS#8 keys here; another kind needs a restart.
    pub fn replace_identity(&self, id: &crate::security::tls::Identity) -> anyhow::Result<bool> {
        use rustls::pki_types::PrivateKeyDer;
        use wtransport::tls::{Certificate, CertificateChain, PrivateKey};
        if self.certs.generated {
            return Ok(false);
        }
        let PrivateKeyDer::Pkcs8(key) = &id.key else {
            anyhow::bail!("its key is not PKCS#8");
        };
        let chain = id
            .chain
            .iter()
            .map(|c| Certificate::from_der(c.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        let identity = Identity::new(
            CertificateChain::new(chain),
            PrivateKey::from_der_pkcs8(key.secret_pkcs8_der().to_vec()),
        );
        self.endpoint
            .reload_config(server_config(self.addr, &identity, self.idle, &self.keys), false)?;
        Ok(true)
    }

    /// Stop accepting, then close every session. Waits (at most 2 s) for the accept loop
    /// to let go of the endpoint first, so no `accept` is pending when it closes.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let mut stopped = self.stopped.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), stopped.wait_for(|s| *s)).await;
        self.endpoint
            .close(VarInt::from_u32(ErrorCode::ShuttingDown as u32), b"shutting down");
    }

    /// Accept sessions until [`WtEndpoint::close`] (or until the server is gone).
    pub async fn accept_loop(self: Arc<Self>, shared: std::sync::Weak<Shared>) {
        let mut closing = self.closing.subscribe();
        loop {
            let incoming = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(shared) = shared.upgrade() else { break };
            tokio::spawn(async move {
                let handshake = shared.config.handshake_timeout;
                let session = async {
                    let request = incoming.await.map_err(|e| e.to_string())?;
                    let Some(slot) = shared.admit(request.remote_address().ip()) else {
                        request.too_many_requests().await;
                        return Err("not admitted: address or node at its limit, or draining".to_string());
                    };
                    let conn = request.accept().await.map_err(|e| e.to_string())?;
                    let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>((conn, send, recv, slot))
                };
                match tokio::time::timeout(handshake, session).await {
                    Ok(Ok((conn, send, recv, _slot))) => {
                        Box::pin(conn::serve(shared, Arc::new(WtTransport(conn)), recv, send)).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "WebTransport session failed"),
                    Err(_) => tracing::debug!("WebTransport session without a control stream in time"),
                }
            });
        }
        self.stopped.send_replace(true);
    }
}

impl crate::conn::UploadRecv for wtransport::RecvStream {
    fn stop(self, code: ErrorCode) {
        wtransport::RecvStream::stop(self, wtransport::VarInt::from_u32(code as u32));
    }
}
