//! Apple's push service (PROTOCOL.md §13.4): `POST /3/device/<token>` over HTTP/2, signed
//! with a provider token — an ES256 JWT (`kid` = key id, `iss` = team id, `iat`) made from
//! the `.p8` key and reused for 40 minutes (Apple refuses tokens older than an hour and
//! throttles ones renewed more often than every 20 minutes). The request shows Apple only
//! a generic alert; the encrypted payload rides in `n`, and `mutable-content` wakes the
//! app's Notification Service Extension, which decrypts it and shows the real text.
use std::time::{Duration, Instant};

use base64::Engine;
use web_push_native::jwt_simple::algorithms::{ECDSAP256KeyPairLike, ES256KeyPair};
use web_push_native::jwt_simple::claims::Claims;

use super::sender::{read_capped, retry_after, Outcome};
use crate::store::{PushJob, PushRegistrationRecord};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A provider token is made again after this long.
const TOKEN_LIFE: Duration = Duration::from_secs(40 * 60);
/// How long APNs keeps a notification for a device that is off (`apns-expiration`).
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);

/// The server's APNs account.
pub struct Apns {
    cfg: ApnsConfig,
    key: ES256KeyPair,
    token: std::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("key_id", &self.cfg.key_id)
            .field("team_id", &self.cfg.team_id)
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// The account in `cfg`, its key read from `key_file`.
    pub fn new(cfg: ApnsConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pem = std::fs::read_to_string(&cfg.key_file)
            .with_context(|| format!("reading the APNs key {}", cfg.key_file.display()))?;
        let key = ES256KeyPair::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("the APNs key {} is not a P-256 key: {e}", cfg.key_file.display()))?
            .with_key_id(&cfg.key_id);
        anyhow::ensure!(
            !cfg.team_id.is_empty() && !cfg.key_id.is_empty(),
            "[apns] needs key_id and team_id"
        );
        Ok(Apns {
            cfg,
            key,
            token: std::sync::Mutex::new(None),
        })
    }

    /// The topic a registration without its own is sent under.
    pub fn default_topic(&self) -> &str {
        &self.cfg.topic
    }

    /// The provider token, made again when old.
    fn token(&self) -> Result<String, String> {
        let mut t = self.token.lock().expect("apns token lock");
        if let Some((tok, at)) = &*t {
            if at.elapsed() < TOKEN_LIFE {
                return Ok(tok.clone());
            }
        }
        // iat is set by Claims::create; Apple reads only iss and iat.
        let claims = Claims::create(Duration::from_secs(3600).into()).with_issuer(&self.cfg.team_id);
        let tok = self.key.sign(claims).map_err(|e| format!("APNs token: {e}"))?;
        *t = Some((tok.clone(), Instant::now()));
        Ok(tok)
    }

    fn forget_token(&self) {
        *self.token.lock().expect("apns token lock") = None;
    }

    /// Send the encrypted `body` for `job` to the device `reg` names.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        reg: &PushRegistrationRecord,
        job: &PushJob,
        body: &[u8],
    ) -> Outcome {
        let token = match self.token() {
            Ok(t) => t,
            Err(e) => return Outcome::Refused(e),
        };
        let base = if reg.apns_sandbox {
            &self.cfg.sandbox_url
        } else {
            &self.cfg.url
        };
        let topic = if reg.apns_topic.is_empty() {
            &self.cfg.topic
        } else {
            &reg.apns_topic
        };
        let expiration = (std::time::SystemTime::now() + EXPIRATION)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let n = base64::engine::general_purpose::STANDARD.encode(body);
        // A withdrawal is a background push: the app wakes, removes the notification with
        // this collapse id and sets the badge; nothing is shown.
        let (json, push_type, priority) = if job.withdraw {
            (
                serde_json::json!({ "aps": { "content-available": 1 }, "n": n }),
                "background",
                "5",
            )
        } else {
            let alert = serde_json::json!({
                "aps": {
                    "alert": { "title": "natter", "body": "New message" },
                    "mutable-content": 1,
                    "sound": "default",
                },
                "n": n,
            });
            (alert, "alert", "10")
        };
        let req = http
            .post(format!("{}/3/device/{}", base.trim_end_matches('/'), reg.endpoint))
            .bearer_auth(token)
            .header("apns-topic", topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", super::payload::collapse_id(job))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(json.to_string());
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "APNs unreachable");
                return Outcome::Later(None);
            }
        };
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        let reason = reason(&read_capped(res).await);
        match (status, reason.as_str()) {
            (200, _) => Outcome::Sent,
            (410, r) | (400, r @ ("BadDeviceToken" | "DeviceTokenNotForTopic")) => Outcome::Gone(r.to_owned()),
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                self.forget_token();
                Outcome::Later(None)
            }
            (429 | 500..=599, _) => Outcome::Later(after),
            (s, r) => Outcome::Refused(format!("APNs {s} {r}")),
        }
    }
}

/// APNs' `{"reason": "..."}`.
fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An APNs device token: hex, 32 to 200 bytes.
pub fn check_token(t: &str) -> Result<(), String> {
    let ok = t.len() % 2 == 0 && (64..=400).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err("an APNs device token is 32 to 200 bytes in hex".into())
    }
}

/// `[apns]`: Apple Push Notification service with a provider token (an ES256 JWT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` signing key from Apple's developer account (PKCS#8 PEM).
    pub key_file: PathBuf,
    /// The key's id (10 characters), the JWT's `kid`.
    pub key_id: String,
    /// The developer team id, the JWT's `iss`.
    pub team_id: String,
    /// The app's bundle id, the `apns-topic` of registrations that name none.
    pub topic: String,
    /// Production service. Default `https://api.push.apple.com`.
    pub url: String,
    /// Development service, for registrations marked sandbox. Default
    /// `https://api.sandbox.push.apple.com`.
    pub sandbox_url: String,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        ApnsConfig {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
            url: "https://api.push.apple.com".into(),
            sandbox_url: "https://api.sandbox.push.apple.com".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tokens_are_hex_of_a_sane_length() {
        assert!(check_token(&"ab".repeat(32)).is_ok());
        assert!(check_token(&"ab".repeat(31)).is_err());
        assert!(check_token(&"zz".repeat(32)).is_err());
        assert!(check_token(&"a".repeat(65)).is_err());
        assert!(check_token("../../etc").is_err());
    }

    #[test]
    fn reasons_are_read_from_the_body() {
        assert_eq!(reason(br#"{"reason":"Unregistered","timestamp":1}"#), "Unregistered");
        assert_eq!(reason(b"not json"), "");
    }
}
