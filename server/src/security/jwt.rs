//! Product tokens (PROTOCOL.md §5.13): JWTs the product's backend mints for its users,
//! checked against the issuers this server is configured to trust. Per issuer: an HS256
//! secret, PEM public keys (RS256, ES256, EdDSA) and/or a JWKS URL, whose keys are cached,
//! refreshed every `jwks_refresh_secs` and fetched again at once when a token names a key
//! id not yet seen (rotation without a restart; a JWKS that cannot be fetched keeps the
//! keys already known). `exp` and `sub` are required, `nbf` is honoured, `iss` must be the
//! issuer's and `aud` one of its audiences. The token's `alg` must be the key's: `none`
//! never decodes, and an RSA key never checks an HMAC.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use natter_protocol::pb::ErrorCode;
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};

use super::Secret;

/// One trusted issuer, as configured (`[[token_issuers]]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    pub audience: Vec<String>,
    /// Shared secret for HS256.
    #[serde(default)]
    pub hs256_secret: Option<Secret>,
    /// Public keys in PEM files.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// Where the issuer publishes its keys (a JSON Web Key Set).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Seconds a fetched key set is used before it is fetched again (default 300).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
}

fn default_jwks_refresh() -> u64 {
    300
}

/// A public key in a PEM file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// "RS256", "ES256" or "EdDSA".
    pub algorithm: String,
    /// The PEM file (SubjectPublicKeyInfo, or an RSA PUBLIC KEY).
    pub pem_file: PathBuf,
    /// The `kid` tokens signed with it carry, if they carry one.
    #[serde(default)]
    pub kid: Option<String>,
}

/// What a valid token says about its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `sub`: the product's id for the user.
    pub subject: String,
    /// `exp`, in ms since the epoch.
    pub expires_ms: u64,
    /// `name`: the display name to start with.
    pub name: Option<String>,
    /// `picture`: an avatar URL to start with.
    pub picture: Option<String>,
    /// `preferred_username`: the natter username to try first.
    pub preferred_username: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp` (and the leeway).
    #[error("the token has expired")]
    Expired,
    /// Anything else that makes it unacceptable.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// No key to check it with because the issuer's key set cannot be fetched now.
    #[error("the issuer's keys cannot be fetched: {0}")]
    KeysUnavailable(String),
}

impl From<TokenError> for ServerError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => ServerError::new(ErrorCode::TokenExpired, e.to_string()),
            TokenError::Invalid(_) => ServerError::new(ErrorCode::InvalidToken, e.to_string()),
            TokenError::KeysUnavailable(_) => {
                let mut err = ServerError::new(ErrorCode::InvalidToken, e.to_string());
                err.retry_after_ms = 5_000;
                err
            }
        }
    }
}

/// A key and what it may check.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The fetched key set of one issuer.
#[derive(Default)]
struct Fetched {
    keys: Vec<Key>,
    at: Option<Instant>,
}

struct Issuer {
    config: IssuerConfig,
    keys: Vec<Key>,
    jwks: tokio::sync::Mutex<Fetched>,
}

/// The claims natter reads; the standard ones are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Raw {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    picture: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
}

/// The trusted issuers, and the checking of their tokens.
pub struct ProductTokens {
    issuers: Vec<Issuer>,
    leeway_secs: u64,
    http: reqwest::Client,
    /// A key id not in the cached set fetches it again, at most this often.
    refetch_unknown: Duration,
}

impl std::fmt::Debug for ProductTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.issuers.iter().map(|i| i.config.issuer.as_str()).collect();
        f.debug_struct("ProductTokens").field("issuers", &names).finish()
    }
}

/// Longest `sub` accepted.
pub const MAX_SUBJECT_BYTES: usize = 255;

fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => anyhow::bail!("token key algorithm {other:?}: use RS256, ES256 or EdDSA (or hs256_secret)"),
    }
}

/// The algorithm a JWK is for: its `alg`, else what its key type implies.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) | (None, AlgorithmParameters::RSA(_)) => {
            Some(Algorithm::RS256)
        }
        (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
        | (None, AlgorithmParameters::EllipticCurve(p))
            if p.curve == EllipticCurve::P256 =>
        {
            Some(Algorithm::ES256)
        }
        (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(_))
        | (None, AlgorithmParameters::OctetKeyPair(_)) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl ProductTokens {
    /// Load the issuers' keys. An issuer with no key at all, an unknown algorithm or an
    /// unreadable key file is a configuration error.
    pub fn new(configs: &[IssuerConfig], leeway_secs: u64) -> anyhow::Result<Self> {
        let mut issuers = Vec::new();
        for c in configs {
            anyhow::ensure!(!c.issuer.is_empty(), "a token issuer needs `issuer`");
            anyhow::ensure!(
                !c.audience.is_empty(),
                "token issuer {:?} needs `audience`: the aud its tokens must carry",
                c.issuer
            );
            let mut keys = Vec::new();
            if let Some(secret) = &c.hs256_secret {
                anyhow::ensure!(
                    secret.0.len() >= 32,
                    "token issuer {:?}: hs256_secret must be at least 32 bytes",
                    c.issuer
                );
                keys.push(Key {
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.0.as_bytes()),
                });
            }
            for k in &c.public_keys {
                let alg = algorithm(&k.algorithm)?;
                let pem = std::fs::read(&k.pem_file)
                    .map_err(|e| anyhow::anyhow!("token key {}: {e}", k.pem_file.display()))?;
                let key = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => anyhow::bail!("token key {}: HS256 goes in hs256_secret", k.pem_file.display()),
                }
                .map_err(|e| anyhow::anyhow!("token key {}: {e}", k.pem_file.display()))?;
                keys.push(Key {
                    kid: k.kid.clone(),
                    alg,
                    key,
                });
            }
            anyhow::ensure!(
                !keys.is_empty() || c.jwks_url.is_some(),
                "token issuer {:?} has no key: set hs256_secret, public_keys or jwks_url",
                c.issuer
            );
            issuers.push(Issuer {
                config: c.clone(),
                keys,
                jwks: Default::default(),
            });
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("JWKS client: {e}"))?;
        Ok(ProductTokens {
            issuers,
            leeway_secs,
            http,
            refetch_unknown: Duration::from_secs(1),
        })
    }

    /// Whether any issuer is trusted (token logins are on).
    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Check a token and read its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed header ({e}); `alg: none` is never accepted")))?;
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| TokenError::Invalid(format!("issuer {iss:?} is not trusted here")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&issuer.config.audience);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let kid = header.kid.as_deref();
        let fits = |k: &Key| k.alg == header.alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid);
        let mut tried = 0;
        for key in issuer.keys.iter().filter(|k| fits(k)) {
            tried += 1;
            match check(token, &key.key, &validation, &issuer.config.issuer)? {
                Some(c) => return Ok(c),
                None => continue,
            }
        }
        if issuer.config.jwks_url.is_some() {
            let mut fetched = issuer.jwks.lock().await;
            let stale = fetched
                .at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(issuer.config.jwks_refresh_secs));
            let unknown_kid = kid.is_some_and(|kid| !fetched.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
            let may_refetch = fetched.at.is_none_or(|at| at.elapsed() >= self.refetch_unknown);
            if stale || (unknown_kid && may_refetch) {
                match self.fetch(issuer).await {
                    Ok(keys) => {
                        fetched.keys = keys;
                        fetched.at = Some(Instant::now());
                    }
                    // Keep serving with the keys already known.
                    Err(e) if !fetched.keys.is_empty() => {
                        tracing::warn!(issuer = %issuer.config.issuer, error = %e, "JWKS refresh failed; keeping the cached keys");
                    }
                    Err(e) if tried == 0 => return Err(e),
                    Err(_) => {}
                }
            }
            for key in fetched.keys.iter().filter(|k| fits(k)) {
                tried += 1;
                if let Some(c) = check(token, &key.key, &validation, &issuer.config.issuer)? {
                    return Ok(c);
                }
            }
        }
        Err(TokenError::Invalid(if tried == 0 {
            format!("no key of issuer {iss:?} is for {:?}", header.alg)
        } else {
            "bad signature".into()
        }))
    }

    async fn fetch(&self, issuer: &Issuer) -> Result<Vec<Key>, TokenError> {
        let url = issuer.config.jwks_url.as_deref().unwrap_or_default();
        let unavailable = |e: String| TokenError::KeysUnavailable(format!("{url}: {e}"));
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| unavailable(e.to_string()))?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let alg = jwk_algorithm(jwk)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect())
    }
}

/// `Ok(None)`: not this key's signature (try the next).
fn check(token: &str, key: &DecodingKey, validation: &Validation, issuer: &str) -> Result<Option<Claims>, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    match jsonwebtoken::decode::<Raw>(token, key, validation) {
        Ok(data) => {
            let c = data.claims;
            if c.sub.is_empty() || c.sub.len() > MAX_SUBJECT_BYTES || c.sub.chars().any(char::is_control) {
                return Err(TokenError::Invalid(format!(
                    "sub must be 1-{MAX_SUBJECT_BYTES} bytes without control characters"
                )));
            }
            Ok(Some(Claims {
                issuer: issuer.to_string(),
                subject: c.sub,
                expires_ms: c.exp.saturating_mul(1000),
                name: c.name,
                picture: c.picture,
                preferred_username: c.preferred_username,
            }))
        }
        Err(e) => match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => Ok(None),
            ErrorKind::ExpiredSignature => Err(TokenError::Expired),
            ErrorKind::InvalidAudience => Err(TokenError::Invalid("wrong audience".into())),
            ErrorKind::InvalidIssuer => Err(TokenError::Invalid("wrong issuer".into())),
            ErrorKind::ImmatureSignature => Err(TokenError::Invalid("not valid yet (nbf)".into())),
            ErrorKind::MissingRequiredClaim(c) => Err(TokenError::Invalid(format!("missing claim {c}"))),
            ErrorKind::InvalidAlgorithm => Err(TokenError::Invalid("algorithm not allowed for this key".into())),
            other => Err(TokenError::Invalid(format!("{other:?}"))),
        },
    }
}

/// The `iss` of a token before its signature is checked: only to pick the issuer whose
/// keys check it.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Invalid("not a compact JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Invalid("payload is not base64url".into()))?;
    let iss: Iss = serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid("payload is not JSON".into()))?;
    iss.iss
        .filter(|i| !i.is_empty())
        .ok_or_else(|| TokenError::Invalid("missing claim iss".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn tokens() -> ProductTokens {
        ProductTokens::new(
            &[IssuerConfig {
                issuer: "https://product.test".into(),
                audience: vec!["natter".into()],
                hs256_secret: Some(Secret(SECRET.into())),
                ..Default::default()
            }],
            0,
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn mint(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn accepts_a_good_token_and_reads_its_claims() {
        // One reading of the clock: a second boundary between two would fail the last line.
        let exp = now() + 60;
        let t = mint(
            serde_json::json!({"iss": "https://product.test", "aud": "natter", "sub": "u-42",
                "exp": exp, "name": "Ann", "picture": "https://x/a.png"}),
            SECRET,
        );
        let c = tokens().verify(&t).await.unwrap();
        assert_eq!(c.subject, "u-42");
        assert_eq!(c.name.as_deref(), Some("Ann"));
        assert_eq!(c.expires_ms / 1000, exp);
    }

    #[tokio::test]
    async fn refuses_what_it_must() {
        let p = tokens();
        let base =
            || serde_json::json!({"iss": "https://product.test", "aud": "natter", "sub": "u", "exp": now() + 60});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base();
            c[k] = v;
            c
        };
        let expired = mint(with("exp", (now() - 10).into()), SECRET);
        assert!(matches!(p.verify(&expired).await, Err(TokenError::Expired)));
        for (what, t) in [
            ("audience", mint(with("aud", "other".into()), SECRET)),
            ("issuer", mint(with("iss", "https://evil.test".into()), SECRET)),
            ("signature", mint(base(), "another secret that is long enough!!")),
            ("nbf", mint(with("nbf", (now() + 100).into()), SECRET)),
            (
                "sub",
                mint(
                    serde_json::json!({"iss": "https://product.test", "aud": "natter", "exp": now() + 60}),
                    SECRET,
                ),
            ),
        ] {
            let r = p.verify(&t).await;
            assert!(matches!(r, Err(TokenError::Invalid(_))), "{what}: {r:?}");
        }
        // alg none: an unsigned token with the same claims.
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&base())
        );
        assert!(matches!(p.verify(&none).await, Err(TokenError::Invalid(_))));
    }
}
