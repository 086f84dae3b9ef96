//! Webhooks (README "Server API"): a product's backend subscribes a URL to event types and
//! hears every matching event exactly once after de-duplication by its id, in order per
//! conversation, signed (`Natter-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`).
//!
//! Nothing is lost to a crash because nothing is queued in memory: the conversation log is
//! the outbox. Each (subscription, conversation) has a durable cursor, the seq delivered
//! through; a worker reads the log after it, delivers, and moves it. Commits only wake the
//! workers ([`crate::conversation::CommitTap`]); at start every conversation is compared
//! with the cursors. A receiver that fails is retried with exponential backoff (the
//! conversation's later events wait behind it); after `max_attempts` the event goes to the
//! subscription's dead letters, which the API lists and replays. Events that are not in a
//! conversation's log (`user.created`) are written to a per-subscription queue first.
//!
//! May import: `store`, `clock`, `security`. Told of commits by `conversation`.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use natter_protocol::pb::{self, conversation_event::Body, ErrorCode};
use natter_protocol::{ConversationId, Seq, ServerError};
use serde::{Deserialize, Serialize};

use crate::store::{docs, Page, Store};

pub mod presend;

/// Document spaces.
const SUBS: &str = "webhook";
const CURSORS: &str = "whcur";
const DEAD: &str = "whdead";
const QUEUE: &str = "whq";

/// Every event type a subscription may ask for.
pub const EVENT_TYPES: &[&str] = &[
    "message.created",
    "message.edited",
    "message.deleted",
    "reaction",
    "member.joined",
    "member.left",
    "conversation.created",
    "conversation.deleted",
    "user.created",
    "user.deleted",
    "message.reported",
];

/// Tunables.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Attempts per event before it becomes a dead letter. Default 20 (with the backoff,
    /// about 15 minutes of a failing receiver).
    pub max_attempts: u32,
    /// First retry delay, ms; doubles up to `backoff_max_ms`. Default 250.
    pub backoff_base_ms: u64,
    /// Longest retry delay, ms. Default 60000.
    pub backoff_max_ms: u64,
    /// How long one delivery may take, ms. Default 5000.
    pub timeout_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            max_attempts: 20,
            backoff_base_ms: 250,
            backoff_max_ms: 60_000,
            timeout_ms: 5_000,
        }
    }
}

/// One subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// The API key that made it.
    pub key_id: String,
    /// Where deliveries go (http or https).
    pub url: String,
    /// Event types it hears.
    pub events: Vec<String>,
    /// The HMAC secret (hex).
    pub secret: String,
    /// Events committed before this are not delivered.
    pub created_ms: u64,
}

/// A delivery that failed `max_attempts` times (the server API lists them as they are).
/// One about a logged event keeps only where it is in the log (its body is made again
/// from the log when listed or replayed), so no copy of a message's text is kept outside
/// the log, whose erasure reaches it (PROTOCOL.md §5.16).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The event's id.
    pub event_id: String,
    /// The body that was sent ("" for a logged event: made again from the log).
    pub body: String,
    /// A logged event's conversation (0: a queued event, whose body is kept).
    #[serde(default)]
    pub conversation_id: u64,
    /// A logged event's seq.
    #[serde(default)]
    pub seq: u64,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last answer or error.
    pub last_error: String,
    /// When it was given up, ms.
    pub failed_ms: u64,
}

/// Per (subscription, conversation): a worker is running, and whether it must look again.
type Running = HashMap<(String, ConversationId), bool>;

/// The webhook dispatcher.
#[derive(Debug)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    settings: WebhookSettings,
    http: reqwest::Client,
    subs: std::sync::RwLock<Vec<Subscription>>,
    running: Mutex<Running>,
    me: Weak<Webhooks>,
    /// Deliveries by result ("delivered", "failed" attempts, "dead_lettered").
    metrics: Arc<crate::ops::Metrics>,
}

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

/// The event type of a log event, if subscriptions can hear it.
fn event_type(e: &pb::ConversationEvent) -> Option<&'static str> {
    Some(match e.body.as_ref()? {
        Body::Message(_) => "message.created",
        Body::MessageEdited(_) => "message.edited",
        Body::MessageDeleted(_) => "message.deleted",
        Body::Reaction(_) => "reaction",
        Body::MembersAdded(_) => "member.joined",
        Body::MemberRemoved(_) => "member.left",
        Body::Created(_) => "conversation.created",
        Body::Deleted(_) => "conversation.deleted",
        _ => return None,
    })
}

/// The JSON a receiver gets for a log event.
fn payload(e: &pb::ConversationEvent, kind: &str) -> serde_json::Value {
    let mut detail = serde_json::json!({});
    match &e.body {
        Some(Body::Message(m)) => {
            let b = m.body.clone().unwrap_or_default();
            detail = serde_json::json!({"text": b.text, "reply_to_seq": b.reply_to_seq,
                "encrypted": b.encrypted.is_some(), "attachments": b.attachments.len()});
        }
        Some(Body::MessageEdited(x)) => detail = serde_json::json!({"target_seq": x.target_seq, "text": x.text}),
        Some(Body::MessageDeleted(x)) => detail = serde_json::json!({"target_seq": x.target_seq}),
        Some(Body::Reaction(x)) => {
            detail = serde_json::json!({"target_seq": x.target_seq, "emoji": x.emoji, "added": x.added})
        }
        Some(Body::MembersAdded(x)) => {
            let users: Vec<_> = x
                .members
                .iter()
                .map(|m| serde_json::json!({"user_id": m.user_id, "username": m.username}))
                .collect();
            detail = serde_json::json!({ "users": users });
        }
        Some(Body::MemberRemoved(x)) => detail = serde_json::json!({"user_id": x.user_id}),
        Some(Body::Created(x)) => detail = serde_json::json!({"name": x.name, "kind": x.kind}),
        _ => {}
    }
    serde_json::json!({
        "id": event_id(ConversationId(e.conversation_id), e.seq),
        "type": kind,
        "created_ms": e.server_time_ms,
        "conversation_id": e.conversation_id,
        "seq": e.seq,
        "sender": {"user_id": e.sender_user_id, "username": e.sender_username},
        "data": detail,
    })
}

fn event_id(conv: ConversationId, seq: u64) -> String {
    format!("evt_{}_{}", conv.0, seq)
}

/// `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, unix_secs: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{unix_secs}.{body}").as_bytes());
    format!("t={unix_secs},v1={}", hex::encode(tag.as_ref()))
}

impl Webhooks {
    /// The dispatcher; `start` runs it.
    pub fn new(store: Arc<dyn Store>, settings: WebhookSettings, metrics: Arc<crate::ops::Metrics>) -> Arc<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(100)))
            .build()
            .expect("the webhook HTTP client builds");
        Arc::new_cyclic(|me| Webhooks {
            store,
            settings,
            http,
            subs: Default::default(),
            running: Default::default(),
            me: me.clone(),
            metrics,
        })
    }

    /// Load the subscriptions and catch up every conversation and queue.
    pub async fn start(self: &Arc<Self>) -> Result<(), ServerError> {
        self.reload().await?;
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.catch_up().await {
                tracing::warn!(error = %e.message, "webhooks: catching up at start failed");
            }
        });
        Ok(())
    }

    async fn reload(&self) -> Result<(), ServerError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = docs::list::<Subscription>(&*self.store, SUBS, &after, 200).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            all.extend(page.into_iter().map(|(_, d)| d.value));
        }
        *self.subs.write().expect("webhook subscriptions") = all;
        Ok(())
    }

    /// Every conversation with events past a subscription's cursor, and every queue.
    async fn catch_up(&self) -> Result<(), ServerError> {
        let subs = self.subs.read().expect("webhook subscriptions").clone();
        if subs.is_empty() {
            return Ok(());
        }
        let mut after = ConversationId(0);
        loop {
            let page = self.store.conversations_after(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.0;
            for (conv, _) in &page {
                for s in &subs {
                    self.wake(&s.id, *conv);
                }
            }
        }
        for s in &subs {
            self.wake(&s.id, ConversationId(0));
        }
        Ok(())
    }

    /// A subscription made by API key `key_id`; its secret is in the returned record.
    pub async fn subscribe(
        &self,
        key_id: &str,
        url: &str,
        events: Vec<String>,
        now_ms: u64,
    ) -> Result<Subscription, ServerError> {
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() || url.len() > 2048 {
            return Err(bad("url must be an http or https URL of at most 2048 bytes"));
        }
        if events.is_empty() {
            return Err(bad("events: name at least one event type"));
        }
        if let Some(e) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            return Err(bad(format!(
                "unknown event type {e:?}; known: {}",
                EVENT_TYPES.join(", ")
            )));
        }
        let sub = Subscription {
            id: format!("wh_{}", hex::encode(rand::random::<[u8; 8]>())),
            key_id: key_id.to_string(),
            url: url.to_string(),
            events,
            secret: hex::encode(rand::random::<[u8; 32]>()),
            created_ms: now_ms,
        };
        docs::put(&*self.store, SUBS, &sub.id, 0, &sub).await?;
        self.reload().await?;
        Ok(sub)
    }

    /// The subscriptions of API key `key_id`.
    pub async fn list(&self, key_id: &str) -> Vec<Subscription> {
        self.subs
            .read()
            .expect("webhook subscriptions")
            .iter()
            .filter(|s| s.key_id == key_id)
            .cloned()
            .collect()
    }

    /// Remove one of `key_id`'s subscriptions.
    pub async fn unsubscribe(&self, key_id: &str, id: &str) -> Result<(), ServerError> {
        let own = self
            .subs
            .read()
            .expect("webhook subscriptions")
            .iter()
            .any(|s| s.id == id && s.key_id == key_id);
        if !own || !self.store.delete_doc(SUBS, id).await? {
            return Err(ServerError::new(ErrorCode::NotFound, "no such webhook"));
        }
        self.reload().await
    }

    /// An event outside any conversation (`user.created`): queued durably for every
    /// subscription that hears it, then delivered.
    pub async fn emit(&self, kind: &str, data: serde_json::Value, now_ms: u64) -> Result<(), ServerError> {
        let subs: Vec<Subscription> = self.subs.read().expect("webhook subscriptions").clone();
        for s in subs.iter().filter(|s| s.events.iter().any(|e| e == kind)) {
            let id = format!(
                "evt_{}_{}",
                kind.replace('.', "_"),
                hex::encode(rand::random::<[u8; 8]>())
            );
            let body = serde_json::json!({"id": id, "type": kind, "created_ms": now_ms, "data": data}).to_string();
            let key = format!("{}/{now_ms:020}-{id}", s.id);
            docs::put(&*self.store, QUEUE, &key, 0, &body).await?;
            self.wake(&s.id, ConversationId(0));
        }
        Ok(())
    }

    /// The dead letters of one of `key_id`'s subscriptions.
    pub async fn dead_letters(&self, key_id: &str, id: &str) -> Result<Vec<DeadLetter>, ServerError> {
        self.owned(key_id, id).await?;
        let page = docs::list::<DeadLetter>(&*self.store, DEAD, &format!("{id}/"), 1000).await?;
        let mut out = Vec::new();
        for (_, d) in page.into_iter().take_while(|(k, _)| k.starts_with(&format!("{id}/"))) {
            let mut d = d.value;
            if let Some(body) = self.body_of(&d).await? {
                d.body = body;
                out.push(d);
            }
        }
        Ok(out)
    }

    /// A dead letter's body: kept (a queued event), or made again from the log (`None`:
    /// the event is no longer there to deliver, e.g. its sender's account was deleted).
    async fn body_of(&self, d: &DeadLetter) -> Result<Option<String>, ServerError> {
        if d.conversation_id == 0 {
            return Ok(Some(d.body.clone()));
        }
        let conv = ConversationId(d.conversation_id);
        let (events, _) = self
            .store
            .events(conv, Page::After(Seq(d.seq.saturating_sub(1))), 1)
            .await?;
        Ok(events
            .first()
            .filter(|e| e.seq == d.seq)
            .and_then(|e| event_type(e).map(|kind| payload(e, kind).to_string())))
    }

    /// Deliver the dead letters again (once each, now); those delivered leave the list.
    /// Returns how many were delivered and how many are still dead.
    pub async fn replay(&self, key_id: &str, id: &str) -> Result<(usize, usize), ServerError> {
        let sub = self.owned(key_id, id).await?;
        let page = docs::list::<DeadLetter>(&*self.store, DEAD, &format!("{id}/"), 1000).await?;
        let (mut ok, mut still) = (0, 0);
        for (k, d) in page.into_iter().take_while(|(k, _)| k.starts_with(&format!("{id}/"))) {
            let Some(body) = self.body_of(&d.value).await? else {
                // Nothing left to deliver.
                self.store.delete_doc(DEAD, &k).await?;
                continue;
            };
            match self.post(&sub, &d.value.event_id, &body).await {
                Ok(()) => {
                    self.store.delete_doc(DEAD, &k).await?;
                    ok += 1;
                }
                Err(_) => still += 1,
            }
        }
        Ok((ok, still))
    }

    async fn owned(&self, key_id: &str, id: &str) -> Result<Subscription, ServerError> {
        self.subs
            .read()
            .expect("webhook subscriptions")
            .iter()
            .find(|s| s.id == id && s.key_id == key_id)
            .cloned()
            .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such webhook"))
    }

    /// Start (or re-arm) the worker of one subscription and conversation (0: its queue).
    fn wake(&self, sub: &str, conv: ConversationId) {
        let key = (sub.to_string(), conv);
        {
            let mut running = self.running.lock().expect("webhook lock");
            if let Some(again) = running.get_mut(&key) {
                *again = true;
                return;
            }
            running.insert(key.clone(), false);
        }
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.work(&key.0, key.1).await {
                    tracing::warn!(sub = %key.0, conv = %key.1, error = %e.message, "webhook worker");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let mut running = me.running.lock().expect("webhook lock");
                match running.get_mut(&key) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Deliver everything after the cursor, in order.
    async fn work(&self, sub_id: &str, conv: ConversationId) -> Result<(), ServerError> {
        let Some(sub) = self
            .subs
            .read()
            .expect("webhook subscriptions")
            .iter()
            .find(|s| s.id == sub_id)
            .cloned()
        else {
            return Ok(()); // unsubscribed
        };
        if conv.0 == 0 {
            return self.work_queue(&sub).await;
        }
        let cursor_key = format!("{sub_id}/{}", conv.0);
        loop {
            let cursor = docs::get::<u64>(&*self.store, CURSORS, &cursor_key)
                .await?
                .map_or(0, |d| d.value);
            let (events, _) = self.store.events(conv, Page::After(Seq(cursor)), 100).await?;
            if events.is_empty() {
                return Ok(());
            }
            // The cursor moves past each delivered event as it goes (a crash repeats at
            // most that one), and once past the events this subscription skips.
            let mut moved = cursor;
            for e in &events {
                let kind = event_type(e).filter(|t| sub.events.iter().any(|s| s == t));
                if let Some(kind) = kind.filter(|_| e.server_time_ms >= sub.created_ms) {
                    let body = payload(e, kind).to_string();
                    self.deliver(
                        &sub,
                        &event_id(conv, e.seq),
                        &body,
                        &format!("{:020}/{:020}", conv.0, e.seq),
                        Some((conv, e.seq)),
                    )
                    .await?;
                    docs::set(&*self.store, CURSORS, &cursor_key, &e.seq).await?;
                    moved = e.seq;
                }
            }
            let last = events.last().map_or(cursor, |e| e.seq);
            if last > moved {
                docs::set(&*self.store, CURSORS, &cursor_key, &last).await?;
            }
        }
    }

    async fn work_queue(&self, sub: &Subscription) -> Result<(), ServerError> {
        loop {
            let prefix = format!("{}/", sub.id);
            let page = docs::list::<String>(&*self.store, QUEUE, &prefix, 50).await?;
            let page: Vec<_> = page.into_iter().take_while(|(k, _)| k.starts_with(&prefix)).collect();
            if page.is_empty() {
                return Ok(());
            }
            for (k, d) in page {
                let id = k.rsplit('-').next().unwrap_or_default().to_string();
                self.deliver(sub, &id, &d.value, &format!("q/{k}"), None).await?;
                self.store.delete_doc(QUEUE, &k).await?;
            }
        }
    }

    /// One event to one subscription: retried with backoff, then a dead letter.
    async fn deliver(
        &self,
        sub: &Subscription,
        id: &str,
        body: &str,
        dead_key: &str,
        logged: Option<(ConversationId, u64)>,
    ) -> Result<(), ServerError> {
        let mut delay = self.settings.backoff_base_ms.max(1);
        let mut last = String::new();
        for attempt in 1..=self.settings.max_attempts.max(1) {
            let counted = &self.metrics.webhook_deliveries;
            match self.post(sub, id, body).await {
                Ok(()) => {
                    crate::ops::Metrics::result(counted, "delivered");
                    return Ok(());
                }
                Err(e) => {
                    crate::ops::Metrics::result(counted, "failed");
                    last = e
                }
            }
            if attempt < self.settings.max_attempts {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                delay = (delay * 2).min(self.settings.backoff_max_ms.max(1));
            }
        }
        tracing::warn!(sub = %sub.id, event = id, error = %last, "webhook: event moved to the dead letters");
        crate::ops::Metrics::result(&self.metrics.webhook_deliveries, "dead_lettered");
        let (conv, seq) = logged.unwrap_or((ConversationId(0), 0));
        let dead = DeadLetter {
            event_id: id.to_string(),
            body: if conv.0 == 0 { body.to_string() } else { String::new() },
            conversation_id: conv.0,
            seq,
            attempts: self.settings.max_attempts,
            last_error: last,
            failed_ms: crate::clock::now_ms(),
        };
        docs::set(&*self.store, DEAD, &format!("{}/{dead_key}", sub.id), &dead).await?;
        Ok(())
    }

    /// One POST; `Err` with why it did not take.
    async fn post(&self, sub: &Subscription, id: &str, body: &str) -> Result<(), String> {
        let t = crate::clock::now_ms() / 1000;
        let r = self
            .http
            .post(&sub.url)
            .header("content-type", "application/json")
            .header("natter-event-id", id)
            .header("natter-signature", signature(&sub.secret, t, body))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", r.status()))
        }
    }
}

impl crate::conversation::CommitTap for Webhooks {
    fn committed(&self, event: &Arc<pb::ConversationEvent>) {
        if event_type(event).is_none() {
            return;
        }
        let conv = ConversationId(event.conversation_id);
        let ids: HashSet<String> = self
            .subs
            .read()
            .expect("webhook subscriptions")
            .iter()
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.wake(&id, conv);
        }
    }
}
