//! Sending one notification (PROTOCOL.md §13.4): RFC 8030 Web Push (and UnifiedPush, the
//! same protocol) with the payload encrypted by RFC 8291 and the server identified by VAPID
//! (RFC 8292), the request built by `web-push-native` and posted with `reqwest`; APNs
//! (`apns.rs`) and FCM (`fcm.rs`) with the same encrypted payload as base64 text; each push
//! service's answer sorted into sent, gone, refused or later.
use std::time::Duration;

use base64::Engine;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::ServerError;
use tokio::sync::OnceCell;
use web_push_native::jwt_simple::algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::{Auth, WebPushBuilder};

use super::payload::collapse_id;
use crate::store::{PushJob, PushRegistrationRecord, Store};

/// How long a push service may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a push service keeps an undelivered notification (the `TTL` header).
const TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const VAPID_VALID: Duration = Duration::from_secs(12 * 3600);
/// A VAPID token is reused for pushes to the same origin until this long before it expires
/// (signing is an ECDSA operation per push otherwise; push services accept a reused token).
const VAPID_RENEW: Duration = Duration::from_secs(3600);
/// Most origins whose token is kept (a few push services in practice; bounded anyway).
const VAPID_ORIGINS: usize = 256;
/// Longest `Retry-After` honoured; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What became of one notification.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The push service took it.
    Sent,
    /// The registration is gone (404, 410): remove it. What the service said.
    Gone(String),
    /// The request will never be taken (another 4xx): drop it.
    Refused(String),
    /// Try again later (429, 5xx, no answer), after at least this long if the service said.
    Later(Option<Duration>),
}

/// Most bytes of a push service's answer read (the rest is not waited for).
const MAX_ANSWER: usize = 64 * 1024;

/// The server's side of every push service: the VAPID key (shared by every node through
/// the store), the APNs and FCM accounts if configured, and one HTTP client (HTTP/2 where
/// the service speaks it).
pub struct Sender {
    store: std::sync::Arc<dyn Store>,
    contact: String,
    vapid: OnceCell<ES256KeyPair>,
    /// The `Authorization` header per push service origin, and when it is renewed.
    vapid_tokens: std::sync::Mutex<std::collections::HashMap<String, (http::HeaderValue, std::time::Instant)>>,
    /// For the services the operator configured (APNs, FCM, their relays).
    http: reqwest::Client,
    /// For endpoints devices registered: their names must resolve to public addresses.
    web_http: reqwest::Client,
    /// Test only: loopback endpoints are allowed.
    allow_loopback: bool,
    apns: Option<super::apns::Apns>,
    fcm: Option<super::fcm::Fcm>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("contact", &self.contact)
            .finish_non_exhaustive()
    }
}

impl Sender {
    pub(super) fn new(store: std::sync::Arc<dyn Store>, settings: &super::PushSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        // natter's TLS is ring's everywhere; reqwest needs it installed (once per process).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
        };
        let mut http = builder();
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file).with_context(|| format!("reading push_ca_file {}", file.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("push_ca_file {} is not PEM certificates", file.display()))?;
            http = http.tls_certs_merge(certs);
        }
        let mut web_http = builder();
        if !settings.allow_loopback_endpoints {
            web_http = web_http.dns_resolver(PublicOnly);
        }
        Ok(Sender {
            store,
            contact: settings.contact.clone(),
            vapid: OnceCell::new(),
            vapid_tokens: Default::default(),
            http: http.build().context("the push HTTP client")?,
            web_http: web_http.build().context("the push HTTP client")?,
            allow_loopback: settings.allow_loopback_endpoints,
            apns: settings.apns.clone().map(super::apns::Apns::new).transpose()?,
            fcm: settings.fcm.clone().map(super::fcm::Fcm::new).transpose()?,
        })
    }

    /// Whether this server is set up to send through `provider`.
    pub fn supports(&self, provider: pb::PushProvider) -> bool {
        match provider {
            pb::PushProvider::WebPush | pb::PushProvider::UnifiedPush => true,
            pb::PushProvider::Apns => self.apns.is_some(),
            pb::PushProvider::Fcm => self.fcm.is_some(),
            pb::PushProvider::Unspecified => false,
        }
    }

    /// The VAPID key pair: made once from a secret every node shares.
    async fn vapid(&self) -> Result<&ES256KeyPair, ServerError> {
        self.vapid
            .get_or_try_init(|| async {
                let secret = self.store.shared_secret("push-vapid").await?;
                ES256KeyPair::from_bytes(&secret)
                    .map_err(|e| ServerError::new(ErrorCode::Internal, format!("VAPID key: {e}")))
            })
            .await
    }

    /// The VAPID public key, 65 bytes uncompressed (a browser's applicationServerKey).
    pub async fn vapid_public_key(&self) -> Result<Vec<u8>, ServerError> {
        Ok(self.vapid().await?.public_key().public_key().to_bytes_uncompressed())
    }

    /// The VAPID `Authorization` for a push to `endpoint` (RFC 8292): an ES256 JWT whose
    /// `aud` is the endpoint's origin, port included. (web-push-native's own signer drops
    /// a non-default port, which a push service on one refuses; found by the loopback
    /// provider in tests/push.rs.)
    async fn vapid_header(&self, endpoint: &str) -> Result<http::HeaderValue, ServerError> {
        let bad = |e: String| ServerError::new(ErrorCode::PushTargetRejected, e);
        let origin = reqwest::Url::parse(endpoint)
            .map_err(|e| bad(format!("endpoint: {e}")))?
            .origin()
            .ascii_serialization();
        let now = std::time::Instant::now();
        if let Some((h, renew)) = self.vapid_tokens.lock().expect("vapid tokens").get(&origin) {
            if now < *renew {
                return Ok(h.clone());
            }
        }
        let kp = self.vapid().await?;
        let claims = Claims::create(VAPID_VALID.into())
            .with_audience(origin.clone())
            .with_subject(&self.contact);
        let token = kp
            .sign(claims)
            .map_err(|e| ServerError::new(ErrorCode::Internal, format!("VAPID: {e}")))?;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.vapid_public_key().await?);
        let h = http::HeaderValue::from_str(&format!("vapid t={token}, k={k}")).map_err(|e| bad(e.to_string()))?;
        let mut tokens = self.vapid_tokens.lock().expect("vapid tokens");
        if tokens.len() >= VAPID_ORIGINS {
            tokens.retain(|_, (_, renew)| now < *renew);
            if tokens.len() >= VAPID_ORIGINS {
                tokens.clear();
            }
        }
        tokens.insert(origin, (h.clone(), now + (VAPID_VALID - VAPID_RENEW)));
        Ok(h)
    }

    /// Send `payload` (padded, not yet encrypted) for `job` to `reg`.
    pub async fn send(&self, reg: &PushRegistrationRecord, job: &PushJob, payload: Vec<u8>) -> Outcome {
        let provider = pb::PushProvider::try_from(reg.provider).unwrap_or(pb::PushProvider::Unspecified);
        if matches!(provider, pb::PushProvider::Apns | pb::PushProvider::Fcm) {
            let body = match encrypt(reg, payload) {
                Ok(b) => b,
                Err(e) => return Outcome::Refused(e.message),
            };
            match (provider, &self.apns, &self.fcm) {
                (pb::PushProvider::Apns, Some(a), _) => return a.send(&self.http, reg, job, &body).await,
                (pb::PushProvider::Fcm, _, Some(f)) => return f.send(&self.http, reg, job, &body).await,
                _ => return Outcome::Refused("provider not configured on this server".into()),
            }
        }
        // A name that resolves to a loopback, private or link-local address is refused like
        // such an address in the URL (§13.1), and the registration removed; the resolver
        // checks again on connecting, so a name cannot change its answer in between.
        if !self.allow_loopback {
            if let Some(host) = reqwest::Url::parse(&reg.endpoint)
                .ok()
                .and_then(|u| u.domain().map(str::to_owned))
            {
                match public_addrs(&host).await {
                    Ok(_) => {}
                    Err(Lookup::NotPublic(ip)) => {
                        return Outcome::Gone(format!("the endpoint's name resolves to a non-public address ({ip})"))
                    }
                    Err(Lookup::Failed(e)) => {
                        tracing::debug!(error = %e, "push service name does not resolve");
                        return Outcome::Later(None);
                    }
                }
            }
        }
        match self.request(reg, job, payload).await {
            Ok(req) => match self.web_http.execute(req).await {
                Ok(res) => classify(res.status().as_u16(), retry_after(res.headers())),
                Err(e) => {
                    tracing::debug!(error = %e, "push service unreachable");
                    Outcome::Later(None)
                }
            },
            Err(e) => Outcome::Refused(e.message),
        }
    }

    async fn request(
        &self,
        reg: &PushRegistrationRecord,
        job: &PushJob,
        payload: Vec<u8>,
    ) -> Result<reqwest::Request, ServerError> {
        let bad = |e: String| ServerError::new(ErrorCode::PushTargetRejected, e);
        match pb::PushProvider::try_from(reg.provider) {
            Ok(pb::PushProvider::WebPush | pb::PushProvider::UnifiedPush) => {}
            _ => return Err(bad("provider not supported by this server".into())),
        }
        let uri: http::Uri = reg.endpoint.parse().map_err(|e| bad(format!("endpoint: {e}")))?;
        let key =
            web_push_native::p256::PublicKey::from_sec1_bytes(&reg.p256dh).map_err(|e| bad(format!("p256dh: {e}")))?;
        let auth = Auth::clone_from_slice(&reg.auth);
        let vapid = self.vapid_header(&reg.endpoint).await?;
        let mut req = WebPushBuilder::new(uri, key, auth)
            .with_valid_duration(TTL)
            .build(payload)
            .map_err(|e| bad(format!("encrypting: {e}")))?;
        let h = req.headers_mut();
        h.insert(http::header::AUTHORIZATION, vapid);
        h.insert("Urgency", http::HeaderValue::from_static("high"));
        // RFC 8030 §5.4: a newer notification with the same topic replaces an undelivered one.
        if let Ok(v) = http::HeaderValue::from_str(&collapse_id(job)) {
            h.insert("Topic", v);
        }
        reqwest::Request::try_from(req).map_err(|e| bad(format!("request: {e}")))
    }
}

/// Sort a push service's answer.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Gone(status.to_string()),
        408 | 425 | 429 | 500..=599 => Outcome::Later(retry_after),
        s => Outcome::Refused(format!("HTTP {s}")),
    }
}

/// Why a push service's name is not used.
#[derive(Debug)]
pub(super) enum Lookup {
    /// It resolves (also) to an address that is not public.
    NotPublic(std::net::IpAddr),
    /// It does not resolve now.
    Failed(String),
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::NotPublic(ip) => write!(f, "resolves to a non-public address ({ip})"),
            Lookup::Failed(e) => write!(f, "does not resolve: {e}"),
        }
    }
}

impl std::error::Error for Lookup {}

/// `host`'s addresses, if every one is public.
pub(super) async fn public_addrs(host: &str) -> Result<Vec<std::net::SocketAddr>, Lookup> {
    let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| Lookup::Failed(e.to_string()))?
        .collect();
    only_public(all)
}

/// `addrs`, if every one is public (one private answer taints the name).
fn only_public(addrs: Vec<std::net::SocketAddr>) -> Result<Vec<std::net::SocketAddr>, Lookup> {
    if let Some(bad) = addrs.iter().find(|a| !super::public(a.ip())) {
        return Err(Lookup::NotPublic(bad.ip()));
    }
    if addrs.is_empty() {
        return Err(Lookup::Failed("no addresses".into()));
    }
    Ok(addrs)
}

/// reqwest's resolver for device-registered endpoints: public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = public_addrs(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `payload` encrypted to `reg`'s keys (RFC 8291, one record).
fn encrypt(reg: &PushRegistrationRecord, payload: Vec<u8>) -> Result<Vec<u8>, ServerError> {
    let bad = |e: String| ServerError::new(ErrorCode::PushTargetRejected, e);
    let key =
        web_push_native::p256::PublicKey::from_sec1_bytes(&reg.p256dh).map_err(|e| bad(format!("p256dh: {e}")))?;
    web_push_native::encrypt(payload, &key, &Auth::clone_from_slice(&reg.auth))
        .map_err(|e| bad(format!("encrypting: {e}")))
}

/// At most [`MAX_ANSWER`] bytes of an answer's body: a push service answering with a huge
/// (or endless) body costs no more than this.
pub(super) async fn read_capped(mut res: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - out.len())]);
        if out.len() >= MAX_ANSWER {
            break;
        }
    }
    out
}

/// `Retry-After` in seconds or as an HTTP date.
pub(super) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_sort_into_sent_gone_refused_and_later() {
        assert_eq!(classify(201, None), Outcome::Sent);
        assert_eq!(classify(410, None), Outcome::Gone("410".into()));
        assert_eq!(classify(404, None), Outcome::Gone("404".into()));
        let d = Some(Duration::from_secs(7));
        assert_eq!(classify(429, d), Outcome::Later(d));
        assert_eq!(classify(503, None), Outcome::Later(None));
        assert!(matches!(classify(413, None), Outcome::Refused(_)));
    }

    #[test]
    fn a_name_with_any_non_public_address_is_refused() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(only_public(vec![a("8.8.8.8:0"), a("[2606:4700::1111]:0")]).is_ok());
        assert!(matches!(
            only_public(vec![a("8.8.8.8:0"), a("10.0.0.1:0")]),
            Err(Lookup::NotPublic(_))
        ));
        assert!(matches!(only_public(vec![a("[::1]:0")]), Err(Lookup::NotPublic(_))));
        assert!(matches!(only_public(vec![]), Err(Lookup::Failed(_))));
    }

    #[tokio::test]
    async fn names_of_this_machine_are_not_public() {
        // `localhost` resolves through the system's resolver (/etc/hosts) to loopback.
        assert!(matches!(public_addrs("localhost").await, Err(Lookup::NotPublic(_))));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "30".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert("retry-after", "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert("retry-after", later.parse().unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&got),
            "{got:?}"
        );
    }
}
