//! Email digests (PROTOCOL.md §13.6): a user with an email address who stays offline for
//! the quiet period after a message gets one email listing their unread conversations —
//! previews for plain ones, counts for encrypted ones — with a link to the web chat and an
//! unsubscribe link (also as RFC 8058 one-click `List-Unsubscribe`). The digest is a job in
//! the same durable queue as notifications (`email/<user>`, due a quiet period after the
//! first message), so it survives restarts and exactly one node sends it.
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use natter_protocol::pb;
use natter_protocol::{ConversationId, DeviceId, ServerError, UserId};

use super::sender::Outcome;
use crate::store::{Page, PushJob, Store};
use serde::{Deserialize, Serialize};

/// The `registration` of a digest job.
pub const REGISTRATION: &str = "email";
/// Conversations listed in one digest.
const MAX_CONVERSATIONS: usize = 20;
/// Previews per plain conversation.
const PREVIEWS: usize = 3;
/// Unread messages counted per conversation.
const COUNT_CAP: u32 = 999;

/// The server's mailer.
pub struct Email {
    cfg: EmailConfig,
    from: Mailbox,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    unsubscribe_key: ring::hmac::Key,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Email {
    /// A mailer for `cfg`, its unsubscribe links signed with `secret` (shared by every node).
    pub fn new(cfg: EmailConfig, secret: &[u8]) -> anyhow::Result<Self> {
        use anyhow::Context;
        let from: Mailbox = cfg
            .from
            .parse()
            .with_context(|| format!("[email] from {:?} is not an address", cfg.from))?;
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url)
            .with_context(|| format!("[email] smtp_url {:?}", cfg.smtp_url))?
            .timeout(Some(std::time::Duration::from_secs(20)))
            .build();
        Ok(Email {
            cfg,
            from,
            mailer,
            unsubscribe_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        })
    }

    /// The digest job a message to `user` starts (or joins: a queued job keeps its due time).
    pub fn job(&self, user: UserId, conv: ConversationId, seq: u64, now_ms: u64) -> PushJob {
        PushJob {
            id: format!("email/{}", user.0),
            user,
            device: DeviceId(0),
            registration: REGISTRATION.into(),
            conversation: conv,
            seq,
            due_ms: now_ms + u64::from(self.cfg.quiet_secs) * 1000,
            attempts: 0,
            withdraw: false,
            unacked: false,
        }
    }

    /// The token in `user`'s unsubscribe link.
    pub fn unsubscribe_token(&self, user: UserId) -> String {
        let tag = ring::hmac::sign(&self.unsubscribe_key, format!("unsubscribe/{}", user.0).as_bytes());
        hex::encode(tag.as_ref())
    }

    /// Whether `token` is `user`'s unsubscribe token.
    pub fn unsubscribe_ok(&self, user: UserId, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else { return false };
        ring::hmac::verify(
            &self.unsubscribe_key,
            format!("unsubscribe/{}", user.0).as_bytes(),
            &given,
        )
        .is_ok()
    }

    fn verify_tag(user: UserId, address: &str) -> String {
        format!("verify/{}/{address}", user.0)
    }

    /// The token in the link that confirms `address` for `user`.
    pub fn verify_token(&self, user: UserId, address: &str) -> String {
        let tag = ring::hmac::sign(&self.unsubscribe_key, Self::verify_tag(user, address).as_bytes());
        hex::encode(tag.as_ref())
    }

    /// Whether `token` confirms `address` for `user`.
    pub fn verify_ok(&self, user: UserId, address: &str, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else { return false };
        ring::hmac::verify(
            &self.unsubscribe_key,
            Self::verify_tag(user, address).as_bytes(),
            &given,
        )
        .is_ok()
    }

    /// Mail `address` the link that confirms it for `user`'s digests.
    pub async fn send_verification(&self, user: UserId, address: &str) -> Result<Outcome, ServerError> {
        let url = format!(
            "{}verify-email?u={}&e={}&t={}",
            base(&self.cfg.web_url),
            user.0,
            hex::encode(address.as_bytes()),
            self.verify_token(user, address)
        );
        let text = format!(
            "Someone asked for natter's digests of unread messages to be sent to this address.\n\n\
             If that was you, confirm it here:\n{url}\n\n\
             If not, ignore this message: nothing will be sent.\n"
        );
        self.deliver(address, "Confirm your address for natter digests", text, None)
            .await
    }

    fn unsubscribe_url(&self, user: UserId) -> String {
        format!(
            "{}unsubscribe?u={}&t={}",
            base(&self.cfg.web_url),
            user.0,
            self.unsubscribe_token(user)
        )
    }

    /// Send `to` the digest of `user`'s unread conversations; nothing (and `Sent`) if none
    /// is unread any more.
    pub async fn send(&self, store: &dyn Store, user: UserId, to: &str) -> Result<Outcome, ServerError> {
        let text = match digest(store, user, &self.cfg.web_url).await? {
            Some(t) => t,
            None => return Ok(Outcome::Sent),
        };
        let unsubscribe = self.unsubscribe_url(user);
        let body = format!("{}\nStop these emails: {unsubscribe}\n", text.body);
        self.deliver(to, &text.subject, body, Some(unsubscribe)).await
    }

    /// Send one plain-text message; with `unsubscribe`, the List-Unsubscribe headers.
    async fn deliver(
        &self,
        to: &str,
        subject: &str,
        body: String,
        unsubscribe: Option<String>,
    ) -> Result<Outcome, ServerError> {
        let Ok(to) = to.parse::<Mailbox>() else {
            return Ok(Outcome::Refused(format!("not an address: {to:?}")));
        };
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        if let Some(u) = unsubscribe {
            b = b.header(ListUnsubscribe(format!("<{u}>"))).header(ListUnsubscribePost);
        }
        let msg = b
            .body(body)
            .map_err(|e| ServerError::new(pb::ErrorCode::Internal, format!("email: {e}")))?;
        Ok(match self.mailer.send(msg).await {
            Ok(_) => Outcome::Sent,
            Err(e) if e.is_permanent() => Outcome::Refused(e.to_string()),
            Err(e) => {
                tracing::debug!(error = %e, "SMTP server unavailable");
                Outcome::Later(None)
            }
        })
    }
}

fn base(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

/// A digest's subject and body.
struct Digest {
    subject: String,
    body: String,
}

/// What `user` has unread, as text; None if nothing.
async fn digest(store: &dyn Store, user: UserId, web_url: &str) -> Result<Option<Digest>, ServerError> {
    let mut total = 0u32;
    let mut parts = Vec::new();
    for conv in store.user_conversations(user).await? {
        let read = store.read_cursor(user, conv).await?;
        let (unread, _) = store.unread_and_last_message(conv, user, read, COUNT_CAP).await?;
        if unread == 0 {
            continue;
        }
        total = total.saturating_add(unread);
        if parts.len() >= MAX_CONVERSATIONS {
            continue;
        }
        let (events, _) = store.events(conv, Page::After(read), 200).await?;
        let messages: Vec<_> = events
            .iter()
            .filter(|e| e.sender_user_id != user.0)
            .filter_map(|e| match &e.body {
                Some(pb::conversation_event::Body::Message(m)) => Some((e, m.body.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        let meta = store.load_conversation(conv).await?.map(|c| c.meta);
        let title = match meta.as_ref().map(|m| m.name.as_str()) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => messages
                .first()
                .map(|(e, _)| e.sender_username.clone())
                .unwrap_or_else(|| "a conversation".into()),
        };
        let mut part = format!("{title}: {unread} unread\n");
        if messages.iter().any(|(_, b)| b.encrypted.is_some()) {
            part += "  (end-to-end encrypted: open natter to read them)\n";
        } else {
            for (e, b) in messages.iter().rev().take(PREVIEWS).rev() {
                let text: String = b.text.chars().take(super::payload::PREVIEW_CHARS).collect();
                let text = if text.is_empty() && !b.attachments.is_empty() {
                    "📎 a file".to_owned()
                } else {
                    text
                };
                part += &format!("  {}: {}\n", e.sender_username, text.replace(['\r', '\n'], " "));
            }
        }
        parts.push(part);
    }
    if total == 0 {
        return Ok(None);
    }
    let subject = match total {
        1 => "You have 1 unread message on natter".to_owned(),
        n => format!("You have {n} unread messages on natter"),
    };
    let body = format!(
        "While you were away:\n\n{}\nRead them: {}\n",
        parts.join("\n"),
        base(web_url)
    );
    Ok(Some(Digest { subject, body }))
}

/// `List-Unsubscribe` (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_owned()))
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Clone)]
struct ListUnsubscribePost;

impl lettre::message::header::Header for ListUnsubscribePost {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

/// `[email]`: email digests over SMTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server: `smtp://host:587` (STARTTLS when offered), `smtps://host:465`, with
    /// `user:password@` if it needs a login. Default `smtp://127.0.0.1:25`.
    pub smtp_url: String,
    /// The sender, e.g. `natter <noreply@example.com>`.
    pub from: String,
    /// The web chat's address, linked from every digest (and its unsubscribe link).
    pub web_url: String,
    /// A user offline this long after a message gets a digest. Default 3,600 s.
    pub quiet_secs: u32,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            smtp_url: "smtp://127.0.0.1:25".into(),
            from: "natter <noreply@localhost>".into(),
            web_url: "https://localhost:8443/".into(),
            quiet_secs: 3600,
        }
    }
}
