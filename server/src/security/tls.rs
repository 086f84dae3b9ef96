//! TLS material: the configured certificate, or a development certificate generated into the
//! data dir on first run (valid for localhost, 127.0.0.1 and ::1), and its SHA-256
//! fingerprint for clients to pin.
use std::path::Path;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// A certificate chain, its key, and the leaf's fingerprint.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// Lower-case hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
}

/// When a DER certificate stops being valid (`None` if it does not parse).
pub fn not_after(cert: &[u8]) -> Option<std::time::SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Hex SHA-256 of a DER certificate: what clients pin.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// Load PEM files.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))?
    .context("no private key in the key file")?;
    let leaf = chain.first().context("no certificate in the certificate file")?;
    Ok(Identity {
        fingerprint: fingerprint(leaf),
        chain,
        key,
    })
}

/// The development certificate in `dir`, generated on first use.
pub fn dev_identity(dir: &Path) -> anyhow::Result<Identity> {
    let cert_path = dir.join("dev-cert.der");
    let key_path = dir.join("dev-key.der");
    if !cert_path.exists() || !key_path.exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).context("generating the development certificate")?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(&key_path, ck.key_pair.serialize_der())?;
        std::fs::write(&cert_path, ck.cert.der())?;
    }
    let cert = std::fs::read(&cert_path)?;
    let key = std::fs::read(&key_path)?;
    Ok(Identity {
        fingerprint: fingerprint(&cert),
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    })
}

/// ring with AES-128-GCM/SHA-256 first (rustls's default order starts with
/// AES-256-GCM/SHA-384): every handshake's key schedule, and every QUIC packet's protection,
/// cost less — SHA-384 was the largest single item of a handshake profile (bench/RESULTS.md).
/// The SDK's `tls::provider` is the same.
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

/// A rustls server config for natter (TLS 1.3 only, ALPN `natter/1`) that presents
/// whatever certificate `live` holds at each handshake.
pub fn server_config(live: &std::sync::Arc<LiveCert>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = std::sync::Arc::new(provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(live.clone());
    cfg.alpn_protocols = vec![natter_protocol::limits::ALPN.to_vec()];
    // The server's order of cipher suites (see `provider`) for every client.
    cfg.ignore_client_order = true;
    // TLS 1.3 resumption by stateless tickets (PROTOCOL.md §3.1): a reconnecting client
    // skips the certificate and its signature, and the node keeps no per-client state for it
    // (rustls's default is a 256-entry session cache, useless at a node's scale). The
    // ticket key lives in memory: after a restart, or on another node, a client makes a full
    // handshake. No 0-RTT (early data stays off): a replayed first flight could repeat a
    // request.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.send_tls13_tickets = 1;
    Ok(cfg)
}

/// The server's certificate, replaceable while it runs (SIGHUP reloads it from its files):
/// new handshakes on every endpoint present the new one; connections already made go on
/// with the one they got.
#[derive(Debug)]
pub struct LiveCert {
    current: std::sync::RwLock<Current>,
    /// Signatures made with the certificate's key: one per full handshake (a resumed one
    /// signs nothing).
    signatures: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
struct Current {
    key: std::sync::Arc<rustls::sign::CertifiedKey>,
    fingerprint: String,
    not_after: Option<std::time::SystemTime>,
}

impl LiveCert {
    /// Holding `id`; every signature its key makes (every full handshake) counts in
    /// `signatures`.
    pub fn new(
        id: &Identity,
        signatures: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<std::sync::Arc<LiveCert>> {
        Ok(std::sync::Arc::new(LiveCert {
            current: std::sync::RwLock::new(Current::of(id, &signatures)?),
            signatures,
        }))
    }

    /// Present `id` from the next handshake on.
    pub fn replace(&self, id: &Identity) -> anyhow::Result<()> {
        let next = Current::of(id, &self.signatures)?;
        *self.current.write().expect("certificate lock") = next;
        Ok(())
    }

    /// The current certificate's SHA-256 (what clients pin).
    pub fn fingerprint(&self) -> String {
        self.current.read().expect("certificate lock").fingerprint.clone()
    }

    /// When the current certificate stops being valid (`None`: unreadable).
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        self.current.read().expect("certificate lock").not_after
    }
}

impl Current {
    fn of(id: &Identity, signatures: &prometheus_client::metrics::counter::Counter) -> anyhow::Result<Current> {
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(id.key.clone_key())
            .context("the TLS key does not load")?;
        let signing = std::sync::Arc::new(CountingKey {
            inner: signing,
            count: signatures.clone(),
        });
        let key = rustls::sign::CertifiedKey::new(id.chain.clone(), signing);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = key.keys_match() {
            anyhow::bail!("the TLS key does not match the certificate");
        }
        Ok(Current {
            key: std::sync::Arc::new(key),
            fingerprint: id.fingerprint.clone(),
            not_after: id.chain.first().and_then(|leaf| not_after(leaf)),
        })
    }
}

/// The certificate's key, counting the signatures it makes.
#[derive(Debug)]
struct CountingKey {
    inner: std::sync::Arc<dyn rustls::sign::SigningKey>,
    count: prometheus_client::metrics::counter::Counter,
}

impl rustls::sign::SigningKey for CountingKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let inner = self.inner.choose_scheme(offered)?;
        Some(Box::new(CountingSigner {
            inner,
            count: self.count.clone(),
        }))
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.inner.algorithm()
    }
}

#[derive(Debug)]
struct CountingSigner {
    inner: Box<dyn rustls::sign::Signer>,
    count: prometheus_client::metrics::counter::Counter,
}

impl rustls::sign::Signer for CountingSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.count.inc();
        self.inner.sign(message)
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.inner.scheme()
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").key.clone())
    }
}
