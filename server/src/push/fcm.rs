//! Firebase Cloud Messaging HTTP v1 (PROTOCOL.md §13.4): `POST
//! /v1/projects/<project>/messages:send` with an OAuth 2.0 access token, which the server
//! gets for its service account (RFC 7523: an RS256 JWT assertion posted to the account's
//! `token_uri`) and reuses until five minutes before it expires. Messages are data-only
//! (the app decrypts `n` and shows the notification itself), high priority, collapsed per
//! conversation.
use std::time::{Duration, Instant};

use base64::Engine;
use web_push_native::jwt_simple::algorithms::{RS256KeyPair, RSAKeyPairLike};
use web_push_native::jwt_simple::claims::Claims;

use super::sender::{read_capped, retry_after, Outcome};
use crate::store::{PushJob, PushRegistrationRecord};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The scope an FCM sender needs.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is fetched again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// How long FCM keeps a message for a device that is off.
const TTL: &str = "86400s";

/// The fields natter reads from a service account key file.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

#[derive(Serialize)]
struct Scope<'a> {
    scope: &'a str,
}

/// The server's FCM project.
pub struct Fcm {
    url: String,
    project: String,
    email: String,
    token_uri: String,
    key: RS256KeyPair,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("project", &self.project)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// The project of the service account in `cfg`.
    pub fn new(cfg: FcmConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = &cfg.service_account_file;
        let sa: ServiceAccount = serde_json::from_slice(
            &std::fs::read(file).with_context(|| format!("reading the FCM service account {}", file.display()))?,
        )
        .with_context(|| format!("the FCM service account {} is not a key file", file.display()))?;
        let key = RS256KeyPair::from_pem(&sa.private_key)
            .map_err(|e| anyhow::anyhow!("the FCM service account's key: {e}"))?;
        Ok(Fcm {
            url: cfg.url.trim_end_matches('/').to_owned(),
            project: sa.project_id,
            email: sa.client_email,
            token_uri: sa.token_uri,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// An access token, fetched again near its expiry.
    async fn token(&self, http: &reqwest::Client) -> Result<String, Outcome> {
        let mut t = self.token.lock().await;
        if let Some((tok, until)) = &*t {
            if Instant::now() + TOKEN_MARGIN < *until {
                return Ok(tok.clone());
            }
        }
        let claims = Claims::with_custom_claims(Scope { scope: SCOPE }, Duration::from_secs(3600).into())
            .with_issuer(&self.email)
            .with_audience(&self.token_uri);
        let assertion = self
            .key
            .sign(claims)
            .map_err(|e| Outcome::Refused(format!("FCM assertion: {e}")))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let res = http
            .post(&self.token_uri)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "the OAuth token endpoint is unreachable");
                Outcome::Later(None)
            })?;
        let status = res.status();
        let after = retry_after(res.headers());
        let body = read_capped(res).await;
        if !status.is_success() {
            tracing::warn!(%status, "FCM: no access token for the service account");
            return Err(Outcome::Later(after));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            expires_in: u64,
        }
        let tok: Token = serde_json::from_slice(&body).map_err(|_| Outcome::Later(None))?;
        let until = Instant::now() + Duration::from_secs(tok.expires_in);
        *t = Some((tok.access_token.clone(), until));
        Ok(tok.access_token)
    }

    /// Send the encrypted `body` for `job` to the app instance `reg` names.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        reg: &PushRegistrationRecord,
        job: &PushJob,
        body: &[u8],
    ) -> Outcome {
        let token = match self.token(http).await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let json = serde_json::json!({
            "message": {
                "token": reg.endpoint,
                "data": { "n": base64::engine::general_purpose::STANDARD.encode(body) },
                "android": {
                    "priority": "HIGH",
                    "collapse_key": super::payload::collapse_id(job),
                    "ttl": TTL,
                },
            }
        });
        let res = match http
            .post(format!("{}/v1/projects/{}/messages:send", self.url, self.project))
            .bearer_auth(token)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(json.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "FCM unreachable");
                return Outcome::Later(None);
            }
        };
        let status = res.status().as_u16();
        let after = retry_after(res.headers());
        let code = error_code(&read_capped(res).await);
        match (status, code.as_str()) {
            (200, _) => Outcome::Sent,
            (_, c @ ("UNREGISTERED" | "SENDER_ID_MISMATCH")) | (404, c) => Outcome::Gone(c.to_owned()),
            (401, _) => {
                *self.token.lock().await = None;
                Outcome::Later(None)
            }
            (429 | 500..=599, _) => Outcome::Later(after),
            (s, c) => Outcome::Refused(format!("FCM {s} {c}")),
        }
    }
}

/// FCM's `errorCode` from an error body's details, else its `status`.
fn error_code(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let e = &v["error"];
    e["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| e["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// An FCM registration token: 1 to 1,024 characters of `[A-Za-z0-9_:-]`.
pub fn check_token(t: &str) -> Result<(), String> {
    let ok = (1..=1024).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("an FCM registration token is 1 to 1024 characters of A-Z a-z 0-9 _ : -".into())
    }
}

/// `[fcm]`: Firebase Cloud Messaging HTTP v1 with a service account (OAuth 2.0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key file (`project_id`, `client_email`, `private_key`,
    /// `token_uri`), as the Firebase console hands it out.
    pub service_account_file: PathBuf,
    /// The FCM API. Default `https://fcm.googleapis.com`.
    pub url: String,
}

impl Default for FcmConfig {
    fn default() -> Self {
        FcmConfig {
            service_account_file: PathBuf::new(),
            url: "https://fcm.googleapis.com".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_details_first() {
        let body = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(error_code(body), "UNREGISTERED");
        assert_eq!(
            error_code(br#"{"error":{"status":"INVALID_ARGUMENT"}}"#),
            "INVALID_ARGUMENT"
        );
        assert_eq!(error_code(b"<html>"), "");
    }

    #[test]
    fn registration_tokens_are_checked() {
        assert!(check_token("dGVzdA:APA91b-x_y").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("a/b").is_err());
        assert!(check_token(&"a".repeat(1025)).is_err());
    }
}
