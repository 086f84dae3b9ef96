//! The pre-send hook (README "Server API"): before a plaintext message is committed, the
//! product's endpoint may allow it, reject it (the sender gets `MESSAGE_REJECTED` with the
//! reason) or rewrite its text — the moderation and bot entry point. Called synchronously
//! with a timeout; when it cannot be reached (error, timeout, a malformed answer) the
//! configured policy decides: fail open (allow) or fail closed (reject). The request is
//! signed like a webhook delivery. End-to-end encrypted messages never reach it: the
//! server cannot read them.
use std::time::Duration;

use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};

/// `[presend_hook]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresendConfig {
    /// The product's endpoint (http or https).
    pub url: String,
    /// The HMAC secret its requests are signed with.
    pub secret: crate::security::Secret,
    /// How long the server waits for an answer, ms. Default 2000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// When the hook cannot answer: `true` rejects the message (fail closed), `false`
    /// sends it (fail open, the default).
    #[serde(default)]
    pub fail_closed: bool,
}

fn default_timeout() -> u64 {
    2_000
}

/// What the hook said.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Verdict {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Rewrite {
        text: String,
    },
}

/// The hook, ready to call.
#[derive(Debug)]
pub struct Presend {
    config: PresendConfig,
    http: reqwest::Client,
}

fn rejected(reason: &str) -> ServerError {
    ServerError::new(ErrorCode::MessageRejected, reason)
}

impl Presend {
    /// From its configuration.
    pub fn new(config: PresendConfig) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        url::Url::parse(&config.url).map_err(|e| anyhow::anyhow!("presend_hook.url: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(50)))
            .build()
            .map_err(|e| anyhow::anyhow!("presend hook client: {e}"))?;
        Ok(Presend { config, http })
    }

    /// Ask about one message; `Ok` with the body to commit (rewritten or not).
    pub async fn check(
        &self,
        conversation: u64,
        sender: (u64, &str),
        mut body: pb::MessageBody,
    ) -> Result<pb::MessageBody, ServerError> {
        if body.encrypted.is_some() {
            return Ok(body);
        }
        let request = serde_json::json!({
            "conversation_id": conversation,
            "sender": {"user_id": sender.0, "username": sender.1},
            "text": body.text,
            "reply_to_seq": body.reply_to_seq,
            "attachments": body.attachments.len(),
        })
        .to_string();
        let t = crate::clock::now_ms() / 1000;
        let answer = async {
            let r = self
                .http
                .post(&self.config.url)
                .header("content-type", "application/json")
                .header("natter-signature", super::signature(&self.config.secret.0, t, &request))
                .body(request.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            let bytes = r.bytes().await.map_err(|e| e.to_string())?;
            serde_json::from_slice::<Verdict>(&bytes).map_err(|e| format!("answer: {e}"))
        };
        match answer.await {
            Ok(Verdict::Allow) => Ok(body),
            Ok(Verdict::Reject { reason }) => Err(rejected(if reason.is_empty() {
                "the message was rejected"
            } else {
                &reason
            })),
            Ok(Verdict::Rewrite { text }) => {
                body.text = text;
                Ok(body)
            }
            Err(why) if self.config.fail_closed => {
                tracing::warn!(error = %why, "presend hook unavailable: rejecting (fail closed)");
                let mut e = rejected("the moderation hook is unavailable; try again later");
                e.retry_after_ms = 5_000;
                Err(e)
            }
            Err(why) => {
                tracing::warn!(error = %why, "presend hook unavailable: sending (fail open)");
                Ok(body)
            }
        }
    }
}
