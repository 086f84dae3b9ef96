//! Client TLS: trust a server by its certificate's SHA-256 fingerprint (development
//! certificates) or by CA certificates (production).
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// How the client decides to trust the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Accept exactly the certificate with this hex SHA-256 (as the server prints it).
    Fingerprint(String),
    /// Verify against these PEM-encoded CA certificates.
    CaPem(Vec<u8>),
}

#[derive(Debug)]
struct Pinned {
    fingerprint: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.fingerprint.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// ring with AES-128-GCM/SHA-256 first, like the server's `security::tls::provider` (which
/// imposes its order anyway): a cheaper handshake and cheaper packets than rustls's default
/// AES-256-GCM/SHA-384.
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

/// A rustls client config for natter (TLS 1.3, ALPN `natter/1`).
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let mut cfg = match trust {
        Trust::Fingerprint(hex_fp) => {
            let fingerprint = hex::decode(hex_fp.replace(':', "")).map_err(|e| format!("fingerprint: {e}"))?;
            if fingerprint.len() != 32 {
                return Err("fingerprint must be 32 bytes of hex (SHA-256)".into());
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
                .with_no_client_auth()
        }
        Trust::CaPem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![natter_protocol::limits::ALPN.to_vec()];
    Ok(cfg)
}
