//! Notifications for offline devices (PROTOCOL.md §13). This module owns:
//! - devices' push registrations, checked before they are kept: the endpoint must be https
//!   and must not name a loopback, private or link-local address, and the keys must be well
//!   formed;
//! - the decision to notify: a new message, for each registered device of each other
//!   member that has no attached session, or whose session has not acknowledged it within
//!   the ack delay (`watch.rs`);
//! - the durable queue in the store, where a burst becomes one notification per device and
//!   conversation;
//! - the sender (`sender.rs`): payloads padded to one size, encrypted with RFC 8291, and
//!   posted with retries, backoff and `Retry-After`. A registration the push service says is
//!   gone is removed.
//!
//! May import: `keys` (a sender device's public keys for a payload), `session` (the hub: is
//! a device attached here?), `store`, `clock`, `error`.
//! Must not import `conversation` or anything above it; the shards hand committed events
//! in through [`Push::committed`], which never blocks a commit.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::{ConversationId, DeviceId, ServerError, UserId};
use tokio::sync::{mpsc, Notify};

use crate::clock::now_ms;
use crate::session::hub::Hub;
use crate::store::{PushJob, PushRecord, PushRegistrationRecord, Store, StoreError};

pub mod apns;
pub mod email;
pub mod fcm;
pub mod payload;
pub mod rules;
pub mod sender;
pub mod watch;

/// Longest endpoint (URL or token) kept.
pub const MAX_ENDPOINT: usize = 1024;
/// Notifications being sent at once by one node.
const IN_FLIGHT: usize = 64;
/// Most notifications claimed at once.
const BATCH: usize = 64;
/// How long a node holds the jobs it took to send (longer than a send may take).
const CLAIM: Duration = Duration::from_secs(20);
/// Committed events waiting for the push worker; past this, new ones are dropped (logged).
const QUEUE: usize = 4096;
/// Most committed events decided together (their jobs made durable in one write).
const DECIDE_BATCH: usize = 256;
/// Failed attempts after which a notification is given up (backoff 2 s doubling to 10
/// minutes: about two hours).
const MAX_ATTEMPTS: u32 = 20;

/// How a server sends notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSettings {
    /// Send notifications at all.
    pub enabled: bool,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or https).
    pub contact: String,
    /// Test only: accept `http` endpoints on loopback addresses (the provider stand-ins).
    pub allow_loopback_endpoints: bool,
    /// A first notification waits this long for the rest of its burst.
    pub burst: Duration,
    /// At most one notification per device and conversation in this time.
    pub coalesce: Duration,
    /// An attached device that has not acknowledged an event this long after it was
    /// delivered is notified.
    pub ack_delay: Duration,
    /// Extra trusted roots for push services (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    /// Apple's push service, if configured.
    pub apns: Option<apns::ApnsConfig>,
    /// FCM, if configured.
    pub fcm: Option<fcm::FcmConfig>,
    /// Email digests, if configured.
    pub email: Option<email::EmailConfig>,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            enabled: true,
            contact: "mailto:postmaster@localhost".into(),
            allow_loopback_endpoints: false,
            burst: Duration::from_millis(250),
            coalesce: Duration::from_secs(1),
            ack_delay: Duration::from_secs(2),
            ca_file: None,
            apns: None,
            fcm: None,
            email: None,
        }
    }
}

/// Where devices are attached on other nodes (the cluster, when there is one).
#[async_trait::async_trait]
pub trait Elsewhere: Send + Sync + std::fmt::Debug {
    /// The devices of `user` attached to other live nodes.
    async fn devices_elsewhere(&self, user: UserId) -> Vec<DeviceId>;
}

/// What the worker hears from the layers above.
#[derive(Debug)]
enum Committed {
    /// A committed event and who may hear of it; `here` when this node committed it
    /// (it decides for devices attached nowhere), not when another node forwarded it
    /// (only this node's attached devices are watched).
    Event {
        event: Arc<pb::ConversationEvent>,
        recipients: Vec<UserId>,
        here: bool,
    },
    /// A user read a conversation up to a seq (on some device).
    Read {
        user: UserId,
        conversation: ConversationId,
        seq: u64,
    },
}

/// One server's notifications.
#[derive(Debug)]
pub struct Push {
    store: Arc<dyn Store>,
    hub: Hub,
    settings: PushSettings,
    tx: mpsc::Sender<Committed>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Committed>>>,
    /// Woken when a job is queued, so the sender need not wait for its next look.
    queued: Notify,
    /// Room for notifications in flight.
    sending: Arc<tokio::sync::Semaphore>,
    sender: sender::Sender,
    /// Email digests, made on first use (their unsubscribe key comes from the store).
    email: tokio::sync::OnceCell<Option<email::Email>>,
    /// Deliveries to attached devices not yet acknowledged.
    watch: watch::Watch,
    /// Devices attached to other nodes (set when the cluster starts).
    elsewhere: std::sync::OnceLock<Arc<dyn Elsewhere>>,
    /// Notifications posted, by result.
    metrics: Arc<crate::ops::Metrics>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ServerError {
    ServerError::new(code, msg)
}

fn rejected(msg: impl Into<String>) -> ServerError {
    err(ErrorCode::PushTargetRejected, msg)
}

impl Push {
    /// Notifications over `store`, told about sessions by `hub`; fails on an APNs or FCM
    /// account that cannot be read.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        settings: PushSettings,
        metrics: Arc<crate::ops::Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Some(cfg) = &settings.email {
            email::Email::new(cfg.clone(), b"checked at start")?;
        }
        Ok(Arc::new(Push {
            sender: sender::Sender::new(store.clone(), &settings)?,
            store,
            hub,
            settings,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            queued: Notify::new(),
            sending: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            email: tokio::sync::OnceCell::new(),
            watch: watch::Watch::default(),
            elsewhere: std::sync::OnceLock::new(),
            metrics,
        }))
    }

    /// A conversation committed `event` for `recipients` (the shard calls this after the
    /// commit; it never waits).
    pub fn committed(&self, event: &Arc<pb::ConversationEvent>, recipients: &[UserId]) {
        self.event(event, recipients, true);
    }

    /// Another node committed `event` and forwarded it here for `recipients` (the cluster
    /// bus calls this; it never waits): their devices attached here are watched.
    pub fn forwarded(&self, event: &Arc<pb::ConversationEvent>, recipients: &[UserId]) {
        self.event(event, recipients, false);
    }

    /// Several nodes: where devices attached elsewhere are found.
    pub fn set_elsewhere(&self, e: Arc<dyn Elsewhere>) {
        let _ = self.elsewhere.set(e);
    }

    fn event(&self, event: &Arc<pb::ConversationEvent>, recipients: &[UserId], here: bool) {
        if !self.settings.enabled || !matches!(event.body, Some(pb::conversation_event::Body::Message(_))) {
            return;
        }
        let c = Committed::Event {
            event: event.clone(),
            recipients: recipients.to_vec(),
            here,
        };
        if self.tx.try_send(c).is_err() {
            tracing::warn!("push queue full: a notification decision was dropped");
        }
    }

    /// `user` read `conversation` up to `seq` (it never waits): a notification of it that
    /// another device still shows is withdrawn (PROTOCOL.md §13.2).
    pub fn read(&self, user: UserId, conversation: ConversationId, seq: u64) {
        if !self.settings.enabled {
            return;
        }
        let c = Committed::Read {
            user,
            conversation,
            seq,
        };
        if self.tx.try_send(c).is_err() {
            tracing::warn!("push queue full: a withdrawal was dropped");
        }
    }

    /// `device` of `user` acknowledged `conversation`'s events up to `seq` (it never
    /// waits): nothing of them is notified to it.
    pub fn acked(&self, user: UserId, device: DeviceId, conversation: ConversationId, seq: u64) {
        if self.settings.enabled {
            self.watch.acked(user, device, conversation, seq);
        }
    }

    /// The mailer, if email digests are configured.
    async fn mailer(&self) -> Result<Option<&email::Email>, ServerError> {
        let m = self
            .email
            .get_or_try_init(|| async {
                let Some(cfg) = &self.settings.email else {
                    return Ok(None);
                };
                let secret = self.store.shared_secret("email-unsubscribe").await?;
                email::Email::new(cfg.clone(), &secret)
                    .map(Some)
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))
            })
            .await?;
        Ok(m.as_ref())
    }

    /// The unsubscribe link's target: turn `user`'s digests off if `token` is theirs.
    pub async fn unsubscribe(&self, user: UserId, token: &str) -> Result<(), ServerError> {
        let Some(m) = self.mailer().await? else {
            return Err(err(ErrorCode::NotFound, "this server sends no email"));
        };
        if !m.unsubscribe_ok(user, token) {
            return Err(err(ErrorCode::Forbidden, "this unsubscribe link is not valid"));
        }
        self.change_record(user, |r| r.rules.no_email_digest = true).await
    }

    /// Register `device`'s push target, replacing its earlier one.
    pub async fn register(
        &self,
        user: UserId,
        device: DeviceId,
        target: Option<pb::PushTarget>,
    ) -> Result<pb::PushRegistrations, ServerError> {
        let target = target.ok_or_else(|| err(ErrorCode::BadRequest, "a push target is required"))?;
        self.check(&target)?;
        let reg = PushRegistrationRecord {
            id: random_id(),
            device,
            provider: target.provider,
            endpoint: target.endpoint,
            p256dh: target.p256dh,
            auth: target.auth,
            apns_topic: target.apns_topic,
            apns_sandbox: target.apns_sandbox,
            created_ms: now_ms(),
        };
        self.change(user, |regs| {
            regs.retain(|r| r.device != device);
            regs.push(reg.clone());
        })
        .await?;
        self.list(user, device).await
    }

    /// `device`'s registrations and the server's VAPID key.
    pub async fn list(&self, user: UserId, device: DeviceId) -> Result<pb::PushRegistrations, ServerError> {
        let rec = self.store.push_record(user).await?;
        Ok(pb::PushRegistrations {
            registrations: rec
                .iter()
                .flat_map(|r| &r.registrations)
                .filter(|r| r.device == device)
                .map(registration)
                .collect(),
            vapid_public_key: self.sender.vapid_public_key().await?,
        })
    }

    /// Remove one of `device`'s registrations.
    pub async fn remove(&self, user: UserId, device: DeviceId, id: &str) -> Result<pb::PushRegistrations, ServerError> {
        let mut found = false;
        self.change(user, |regs| {
            let before = regs.len();
            regs.retain(|r| !(r.device == device && r.id == id));
            found = regs.len() != before;
        })
        .await?;
        if !found {
            return Err(err(ErrorCode::NotFound, "no such push registration of this device"));
        }
        self.list(user, device).await
    }

    /// The user's notification rules.
    pub async fn settings(&self, user: UserId) -> Result<pb::NotifySettings, ServerError> {
        let rec = self.store.push_record(user).await?;
        Ok(rec.map(|r| r.rules.to_wire()).unwrap_or_default())
    }

    /// Replace the user's notification rules (checked first).
    pub async fn set_settings(
        &self,
        user: UserId,
        s: Option<pb::NotifySettings>,
    ) -> Result<pb::NotifySettings, ServerError> {
        let rules = rules::NotifyRules::from_wire(s.unwrap_or_default())?;
        // An unchanged address stays confirmed; a new one waits for its link. Decided inside
        // the compare-and-set, against the record it replaces.
        let mut new_address = false;
        self.change_record(user, |r| {
            new_address = rules.email != r.rules.email;
            let verified = !new_address && r.rules.email_verified;
            r.rules = rules::NotifyRules {
                email_verified: verified,
                ..rules.clone()
            };
        })
        .await?;
        if new_address && !rules.email.is_empty() {
            match self.mailer().await? {
                Some(m) => match m.send_verification(user, &rules.email).await? {
                    sender::Outcome::Sent => {}
                    other => tracing::warn!(?other, "the confirmation email was not sent"),
                },
                None => tracing::debug!("an email address was set, but this server sends no email"),
            }
        }
        self.settings(user).await
    }

    /// The confirmation link's target: `address` is `user`'s confirmed digest address if
    /// `token` is its token and it is still the address the user set.
    pub async fn verify_email(&self, user: UserId, address: &str, token: &str) -> Result<(), ServerError> {
        let Some(m) = self.mailer().await? else {
            return Err(err(ErrorCode::NotFound, "this server sends no email"));
        };
        if !m.verify_ok(user, address, token) {
            return Err(err(ErrorCode::Forbidden, "this confirmation link is not valid"));
        }
        let mut current = true;
        self.change_record(user, |r| {
            current = r.rules.email == address;
            if current {
                r.rules.email_verified = true;
            }
        })
        .await?;
        if !current {
            return Err(err(ErrorCode::NotFound, "this address is no longer the one set"));
        }
        Ok(())
    }

    /// Forget a registration the push service says is gone (all its jobs go with it as they
    /// come due).
    pub(crate) async fn forget(&self, user: UserId, id: &str) -> Result<(), ServerError> {
        self.change(user, |regs| regs.retain(|r| r.id != id)).await
    }

    /// Change a user's registrations by compare-and-set, again on a lost race.
    async fn change(
        &self,
        user: UserId,
        mut f: impl FnMut(&mut Vec<PushRegistrationRecord>),
    ) -> Result<(), ServerError> {
        self.change_record(user, |r| f(&mut r.registrations)).await
    }

    /// Change a user's push record (registrations and rules) by compare-and-set, again on
    /// a lost race.
    async fn change_record(&self, user: UserId, mut f: impl FnMut(&mut PushRecord)) -> Result<(), ServerError> {
        for _ in 0..8 {
            let mut rec = self.store.push_record(user).await?.unwrap_or(PushRecord {
                user,
                registrations: Vec::new(),
                rules: Default::default(),
                version: 0,
            });
            f(&mut rec);
            rec.version += 1;
            match self.store.put_push_record(&rec).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Changed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(err(
            ErrorCode::Conflict,
            "push registrations changed meanwhile; try again",
        ))
    }

    /// A target the server will send to, or a typed refusal.
    fn check(&self, t: &pb::PushTarget) -> Result<(), ServerError> {
        if t.endpoint.is_empty() || t.endpoint.len() > MAX_ENDPOINT {
            return Err(rejected(format!("the endpoint must have 1..={MAX_ENDPOINT} bytes")));
        }
        let provider = pb::PushProvider::try_from(t.provider).unwrap_or(pb::PushProvider::Unspecified);
        if provider != pb::PushProvider::Unspecified && !self.sender.supports(provider) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{} is not configured on this server", provider.as_str_name()),
            ));
        }
        match provider {
            pb::PushProvider::WebPush | pb::PushProvider::UnifiedPush => self.check_url(&t.endpoint)?,
            pb::PushProvider::Apns => {
                apns::check_token(&t.endpoint).map_err(rejected)?;
                if t.apns_topic.len() > 255 || t.apns_topic.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(rejected("apns_topic must be a bundle id"));
                }
            }
            pb::PushProvider::Fcm => fcm::check_token(&t.endpoint).map_err(rejected)?,
            pb::PushProvider::Unspecified => return Err(rejected("unknown push provider")),
        }
        if t.p256dh.len() != 65 || web_push_native::p256::PublicKey::from_sec1_bytes(&t.p256dh).is_err() {
            return Err(rejected("p256dh must be an uncompressed P-256 public key (65 bytes)"));
        }
        if t.auth.len() != 16 {
            return Err(rejected("auth must be 16 bytes"));
        }
        Ok(())
    }

    fn check_url(&self, endpoint: &str) -> Result<(), ServerError> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| rejected(format!("the endpoint is not a URL: {e}")))?;
        let host = url.host().ok_or_else(|| rejected("the endpoint has no host"))?;
        let ip = match host {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
                Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            }
            url::Host::Domain(_) => None,
        };
        let allowed_loopback = self.settings.allow_loopback_endpoints && ip.is_some_and(|ip| ip.is_loopback());
        if url.scheme() != "https" && !(allowed_loopback && url.scheme() == "http") {
            return Err(rejected("the endpoint must be https"));
        }
        if let Some(ip) = ip {
            if !allowed_loopback && !public(ip) {
                return Err(rejected(format!("the endpoint names a non-public address ({ip})")));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(rejected("the endpoint must not carry credentials"));
        }
        Ok(())
    }

    /// Run the worker: turn committed events into queued jobs, and send due jobs (until
    /// aborted). Started once per server.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self.rx.lock().expect("push lock").take() else {
            return;
        };
        // Decisions in batches: what a batch of commits queues is made durable together
        // (one flush), so deciding keeps up with the commit rate.
        let deciding = {
            let me = self.clone();
            async move {
                let mut batch = Vec::with_capacity(DECIDE_BATCH);
                let mut jobs = Vec::new();
                while rx.recv_many(&mut batch, DECIDE_BATCH).await > 0 {
                    for c in batch.drain(..) {
                        let done = match &c {
                            Committed::Event {
                                event,
                                recipients,
                                here,
                            } => me.decide(event, recipients, *here, &mut jobs).await,
                            Committed::Read {
                                user,
                                conversation,
                                seq,
                            } => match me.queue(&mut jobs).await {
                                Ok(()) => me.withdraw(*user, *conversation, *seq).await,
                                Err(e) => Err(e),
                            },
                        };
                        if let Err(e) = done {
                            tracing::warn!(error = %e.message, "queueing notifications failed");
                        }
                    }
                    if let Err(e) = me.queue(&mut jobs).await {
                        tracing::warn!(error = %e.message, "queueing notifications failed");
                    }
                }
            }
        };
        tokio::join!(deciding, self.clone().send_loop(), self.clone().overdue_loop());
    }

    /// Queue the notifications of attached devices that let their ack delay pass.
    async fn overdue_loop(self: Arc<Self>) {
        let every = (self.settings.ack_delay / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            let due = self.watch.expired(now);
            if due.is_empty() {
                // Nothing being watched: park until a delivery is (an idle node does not
                // wake four times a second for nothing).
                if self.watch.idle() {
                    self.watch.added.notified().await;
                    tick.reset();
                }
                continue;
            }
            let mut jobs: Vec<PushJob> = due.into_iter().map(|job| PushJob { due_ms: now, ..job }).collect();
            if let Err(e) = self.queue(&mut jobs).await {
                tracing::warn!(error = %e.message, "queueing unacknowledged notifications failed");
            }
        }
    }

    /// Queue `jobs` durably (and empty it).
    async fn queue(&self, jobs: &mut Vec<PushJob>) -> Result<(), ServerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let done = self.store.enqueue_pushes(jobs).await;
        jobs.clear();
        done?;
        self.queued.notify_one();
        Ok(())
    }

    /// Add to `jobs` one for every registered device of every other member with no
    /// attached session (or, attached here, already overdue), and any email digest; watch
    /// the devices attached here. For an event another node committed (`here` false), only
    /// the watch: that node decides for the rest.
    async fn decide(
        &self,
        event: &pb::ConversationEvent,
        recipients: &[UserId],
        here: bool,
        jobs: &mut Vec<PushJob>,
    ) -> Result<(), ServerError> {
        let conv = ConversationId(event.conversation_id);
        let sender = UserId(event.sender_user_id);
        let body = match &event.body {
            Some(pb::conversation_event::Body::Message(m)) => m.body.clone().unwrap_or_default(),
            _ => return Ok(()),
        };
        let now = now_ms();
        for &user in recipients.iter().filter(|u| **u != sender) {
            let Some(rec) = self.store.push_record(user).await? else {
                continue;
            };
            // The user's rules: levels, mutes, do-not-disturb hours (rules.rs).
            let mentioned = body.mention_here || body.mentions.contains(&user.0);
            if !rec.rules.allows(conv.0, mentioned, now) {
                continue;
            }
            // A digest for a user with no device online, a quiet period from now (a queued
            // one keeps its time).
            if here
                && !rec.rules.email.is_empty()
                && rec.rules.email_verified
                && !rec.rules.no_email_digest
                && self.hub.attached_elsewhere(user, DeviceId(0)) == 0
            {
                if let Some(m) = self.mailer().await? {
                    jobs.push(m.job(user, conv, event.seq, now));
                }
            }
            // Devices attached to other nodes are theirs to watch (several nodes).
            let elsewhere = if here && !rec.registrations.is_empty() {
                self.devices_elsewhere(user).await
            } else {
                Vec::new()
            };
            for reg in &rec.registrations {
                let job = PushJob {
                    id: PushJob::id_for(&reg.id, conv),
                    user,
                    device: reg.device,
                    registration: reg.id.clone(),
                    conversation: conv,
                    seq: event.seq,
                    due_ms: now + self.settings.burst.as_millis() as u64,
                    attempts: 0,
                    withdraw: false,
                    unacked: false,
                };
                // An attached device has it on its connection: notified only if it does not
                // acknowledge in time (or has not, and a newer event joins its notification).
                if self.hub.device_attached(user, reg.device) {
                    let deadline = now + self.settings.ack_delay.as_millis() as u64;
                    let unacked = PushJob {
                        id: PushJob::unacked_id(&reg.id, conv),
                        unacked: true,
                        due_ms: now,
                        ..job
                    };
                    if self.watch.delivered(unacked.clone(), deadline) == watch::Watched::Overdue {
                        jobs.push(unacked);
                    }
                    continue;
                } else if !here || elsewhere.contains(&reg.device) {
                    continue;
                }
                jobs.push(job);
            }
        }
        Ok(())
    }

    /// The devices of `user` attached to other nodes (none with one node).
    async fn devices_elsewhere(&self, user: UserId) -> Vec<DeviceId> {
        match self.elsewhere.get() {
            Some(e) => e.devices_elsewhere(user).await,
            None => Vec::new(),
        }
    }

    /// Queue a withdrawal for every device of `user` not attached here that was shown a
    /// notification of `conv` no newer than `seq`.
    async fn withdraw(&self, user: UserId, conv: ConversationId, seq: u64) -> Result<(), ServerError> {
        let Some(rec) = self.store.push_record(user).await? else {
            return Ok(());
        };
        let mut any = false;
        for reg in &rec.registrations {
            // An attached device shows what it reads itself.
            if self.hub.device_attached(user, reg.device) {
                continue;
            }
            let shown = PushJob::shown_id(&reg.id, conv);
            let Some(marker) = self.store.get_push(&shown).await? else {
                continue;
            };
            if marker.seq > seq {
                continue; // a newer notification than what was read: it stays
            }
            self.store.drop_push(&shown).await?;
            self.store
                .enqueue_push(&PushJob {
                    id: PushJob::withdraw_id(&reg.id, conv),
                    due_ms: now_ms(),
                    attempts: 0,
                    withdraw: true,
                    ..marker
                })
                .await?;
            any = true;
        }
        if any {
            self.queued.notify_one();
        }
        Ok(())
    }

    async fn send_loop(self: Arc<Self>) {
        loop {
            let next = match self.send_due().await {
                Ok(true) => continue,
                Ok(false) => Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e.message, "sending notifications failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = self.queued.notified() => tokio::time::sleep(self.settings.burst).await,
                () = tokio::time::sleep(next) => {}
            }
        }
    }

    /// Start sending what is due, each notification on its own task (at most
    /// [`IN_FLIGHT`] at once), so a slow push service holds up only its own; true if as
    /// many were claimed as could be started (more may be due).
    async fn send_due(self: &Arc<Self>) -> Result<bool, ServerError> {
        // Wait for room: claim no more than can be sent before the claims run out.
        let first = self.sending.clone().acquire_owned().await.expect("semaphore open");
        let room = self.sending.available_permits() + 1;
        let limit = room.min(BATCH);
        // Claimed for a while: another node does not take them meanwhile, and if this one
        // dies mid-send they are sent after the claim runs out.
        let now = now_ms();
        let due = self
            .store
            .claim_pushes(now, now + CLAIM.as_millis() as u64, limit)
            .await?;
        let full = due.len() == limit;
        let mut first = Some(first);
        for job in due {
            let permit = match first.take() {
                Some(p) => p,
                None => self.sending.clone().acquire_owned().await.expect("semaphore open"),
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.send_one(job).await {
                    tracing::warn!(error = %e.message, "a notification failed");
                }
                drop(permit);
            });
        }
        Ok(full)
    }

    /// Send a digest, unless the user came back or turned digests off meanwhile.
    async fn send_digest(&self, job: PushJob) -> Result<(), ServerError> {
        let rec = self.store.push_record(job.user).await?;
        let to = rec
            .as_ref()
            .filter(|r| !r.rules.no_email_digest && r.rules.email_verified)
            .map(|r| r.rules.email.clone())
            .unwrap_or_default();
        let quiet = self
            .settings
            .email
            .as_ref()
            .map_or(0, |c| u64::from(c.quiet_secs) * 1000);
        let seen = self.store.presence_record(job.user).await?.last_seen_ms;
        let came_back = self.hub.attached_elsewhere(job.user, DeviceId(0)) > 0 || seen > now_ms().saturating_sub(quiet);
        let Some(m) = self.mailer().await?.filter(|_| !to.is_empty() && !came_back) else {
            return Ok(self.store.drop_push(&job.id).await?);
        };
        match m.send(&*self.store, job.user, &to).await? {
            sender::Outcome::Later(_) => {
                let attempts = job.attempts + 1;
                let backoff = Duration::from_secs(1 << attempts.min(9)).min(Duration::from_secs(600));
                self.store
                    .retry_push(&job.id, now_ms() + backoff.as_millis() as u64, attempts)
                    .await?;
            }
            sender::Outcome::Refused(why) => {
                tracing::warn!(%why, "a digest was refused: dropped");
                self.store.drop_push(&job.id).await?;
            }
            _ => self.store.drop_push(&job.id).await?,
        }
        Ok(())
    }

    async fn send_one(&self, job: PushJob) -> Result<(), ServerError> {
        if job.registration == email::REGISTRATION {
            return self.send_digest(job).await;
        }
        let rec = self.store.push_record(job.user).await?;
        let Some(reg) = rec
            .iter()
            .flat_map(|r| &r.registrations)
            .find(|r| r.id == job.registration)
        else {
            return Ok(self.store.drop_push(&job.id).await?);
        };
        let next = now_ms() + self.settings.coalesce.as_millis() as u64;
        // Online again (and acknowledging), or read elsewhere since: nothing to say. An
        // unacknowledged device's notification is sent attached or not.
        if !job.withdraw {
            let read = self.store.read_cursor(job.user, job.conversation).await?;
            let online = if job.unacked {
                false
            } else if self.hub.device_attached(job.user, job.device) {
                true // watched here: its own job if it does not acknowledge
            } else {
                self.devices_elsewhere(job.user).await.contains(&job.device)
            };
            if online || read.0 >= job.seq {
                if read.0 >= job.seq {
                    self.watch.settled(&job);
                }
                return Ok(self.store.finish_push(&job.id, job.seq, next).await?);
            }
            // Retention removed the event meanwhile (PROTOCOL.md §5.17): nothing to show.
            if self.store.removed_through(job.conversation).await?.0 >= job.seq {
                self.watch.settled(&job);
                return Ok(self.store.drop_push(&job.id).await?);
            }
        }
        let provider = pb::PushProvider::try_from(reg.provider).unwrap_or(pb::PushProvider::Unspecified);
        let body = payload::build(&*self.store, &job, provider).await?;
        let outcome = self.sender.send(reg, &job, body).await;
        let result = match &outcome {
            sender::Outcome::Sent => "sent",
            sender::Outcome::Gone(_) => "gone",
            sender::Outcome::Later(_) => "retried",
            sender::Outcome::Refused(_) => "refused",
        };
        crate::ops::Metrics::result(&self.metrics.push_notifications, result);
        if !job.withdraw && !matches!(outcome, sender::Outcome::Later(_)) {
            self.watch.settled(&job);
        }
        match outcome {
            sender::Outcome::Sent if job.withdraw => self.store.drop_push(&job.id).await?,
            sender::Outcome::Sent => {
                // Remembered, so a read elsewhere can withdraw it.
                self.store
                    .enqueue_push(&PushJob {
                        id: PushJob::shown_id(&reg.id, job.conversation),
                        due_ms: PushJob::NEVER,
                        ..job.clone()
                    })
                    .await?;
                self.store.finish_push(&job.id, job.seq, next).await?
            }
            sender::Outcome::Gone(reason) => {
                tracing::info!(
                    device = job.device.0,
                    %reason,
                    "push registration gone at the push service: removed"
                );
                self.forget(job.user, &reg.id).await?;
                self.store.drop_push(&job.id).await?;
                // Every session of the user hears it; the device registers again when it
                // next runs (PROTOCOL.md §13.4).
                let frame = pb::Frame {
                    kind: Some(pb::frame::Kind::Signal(pb::Signal {
                        kind: Some(pb::signal::Kind::PushRemoved(pb::PushRemoved {
                            device_id: job.device.0,
                            registration_id: reg.id.clone(),
                            reason,
                        })),
                    })),
                };
                self.hub
                    .signal(&[job.user], natter_protocol::codec::encode_frame(&frame));
            }
            sender::Outcome::Refused(why) => {
                tracing::warn!(%why, "the push service refused a notification: dropped");
                self.store.drop_push(&job.id).await?;
            }
            sender::Outcome::Later(_) if job.attempts + 1 >= MAX_ATTEMPTS => {
                tracing::warn!(
                    device = job.device.0,
                    "a notification failed {MAX_ATTEMPTS} times: given up"
                );
                self.store.drop_push(&job.id).await?;
            }
            sender::Outcome::Later(after) => {
                let attempts = job.attempts + 1;
                let backoff = Duration::from_secs(1 << attempts.min(9)).min(Duration::from_secs(600));
                let wait = after.map_or(backoff, |a| a.max(Duration::from_secs(1)));
                self.store
                    .retry_push(&job.id, now_ms() + wait.as_millis() as u64, attempts)
                    .await?;
            }
        }
        Ok(())
    }
}

/// An address on the public internet (not loopback, private, link-local, unspecified,
/// shared, documentation or multicast).
pub(crate) fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return public(IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn registration(r: &PushRegistrationRecord) -> pb::PushRegistration {
    pb::PushRegistration {
        registration_id: r.id.clone(),
        device_id: r.device.0,
        target: Some(pb::PushTarget {
            provider: r.provider,
            endpoint: r.endpoint.clone(),
            p256dh: r.p256dh.clone(),
            auth: r.auth.clone(),
            apns_topic: r.apns_topic.clone(),
            apns_sandbox: r.apns_sandbox,
        }),
        created_ms: r.created_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(!public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "17.57.144.10"] {
            assert!(public(ip.parse().unwrap()), "{ip}");
        }
    }
}
