//! Conversation shards: the single owner of each conversation's order (guarantee 1).
//!
//! Conversations map to shards by hash. Each shard is one task that owns its
//! conversations' hot state (attributes, members, last seq) with no locks: it takes a batch
//! of commands from its queue, checks permissions, assigns gap-free seqs, commits the whole
//! batch to the store in one durable write (group commit), and only then acknowledges and
//! fans the events out through the [`Hub`] (guarantee 2). Idempotency keys are checked
//! here, against the batch and the store (guarantee 3). It does no network I/O.
//!
//! This file is the actor (queue, batching, load and commit); what a mutation may do and
//! which event it commits are the pure functions of [`rules`].
//!
//! May import: `push` and `search` (told of commits), `session` (the hub, for fan-out), `store`,
//! `clock`, `chat_first`. Must not import
//! `cluster`, `api`, `conn` or `transport`.
use std::collections::HashMap;
use std::sync::Arc;

use natter_protocol::pb::{self, ConversationKind as Kind, ErrorCode, Role};
use natter_protocol::{ConversationId, DeviceId, Seq, ServerError, UserId};
use tokio::sync::{mpsc, oneshot};

mod coverage;
mod mentions;
pub mod retention;
mod rules;

use rules::{apply, apply_to_message, create, live, not_member, Conv, Target};

use crate::chat_first::ChatFirst;
use crate::clock::now_ms;
use crate::push::Push;
use crate::search::Search;
use crate::session::hub::Hub;
use crate::store::{Commit, ConversationMeta, EncryptedDevice, MemberRecord, Page, Store, StoreError};

/// Commands a shard takes per batch.
const BATCH: usize = 256;
/// Conversations cached per shard before the cache is dropped and reloaded on demand.
const CACHE_LIMIT: usize = 100_000;
/// Times a mutation is re-applied after losing a commit race to another node.
const MAX_ATTEMPTS: u8 = 16;

/// Who is acting: always taken from the authenticated connection, never from the request.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The user.
    pub user: UserId,
    /// Their username.
    pub username: String,
    /// The device.
    pub device: DeviceId,
}

/// A change to a conversation; each one commits exactly one event.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Create the conversation with the actor as owner (both members for direct).
    Create {
        /// Kind.
        kind: Kind,
        /// Name (empty for direct).
        name: String,
        /// Other initial members.
        members: Vec<(UserId, String)>,
        /// End-to-end encrypted (PROTOCOL.md §12.3): the members' devices with keys.
        encrypted: Option<Vec<EncryptedDevice>>,
    },
    /// An encrypted conversation's view of the actor's devices: add those not listed,
    /// remove those listed (PROTOCOL.md §12.3). Refused with `CONFLICT` when it would
    /// change nothing.
    DevicesChanged {
        /// Devices that published keys.
        add: Vec<EncryptedDevice>,
        /// Devices logged out.
        remove: Vec<DeviceId>,
    },
    /// Post a message.
    Send {
        /// Idempotency key.
        client_msg_id: String,
        /// Content, validated.
        body: pb::MessageBody,
    },
    /// Add members (group/channel admins).
    AddMembers(Vec<(UserId, String)>),
    /// Remove a member.
    Remove(UserId),
    /// Leave.
    Leave,
    /// Join a channel.
    Join,
    /// Rename.
    Rename(String),
    /// Delete the conversation (owner).
    Delete,
    /// Change a member's role; `Owner` transfers ownership.
    SetRole(UserId, Role),
    /// Replace the text of one's own message.
    Edit {
        /// The message.
        target: Seq,
        /// New text, validated.
        text: String,
    },
    /// Delete a message.
    DeleteMessage(Seq),
    /// Mute, unmute, ban or unban a user (owners and admins; PROTOCOL.md §5.14).
    Moderate {
        /// Whom.
        user: UserId,
        /// Their username (for the event).
        username: String,
        /// What.
        action: pb::ModerationAction,
        /// A mute's end (0: until unmuted).
        until_ms: u64,
    },
    /// A channel's slow mode (0: off).
    SlowMode(u32),
    /// How long the conversation keeps its events (PROTOCOL.md §5.17): its own seconds
    /// (0: forever), or `None` for its kind's default; `defaults` gives that default.
    Retention {
        /// The new setting.
        secs: Option<u64>,
        /// The server's settings now (for the event's effective value).
        defaults: retention::RetentionSettings,
    },
    /// An operator deletes the conversation (`natter-server admin conversations delete`):
    /// what the owner's `DeleteConversation` does, without a member's role; the event's
    /// sender is 0 (the server).
    DeleteByOperator,
    /// A user's account was deleted (PROTOCOL.md §5.16): they leave (a direct
    /// conversation keeps them as "deleted-user"; an owner's place goes to the longest
    /// standing admin, else member) and everyone hears `UserErased`. The server's own
    /// step: no role of the actor is needed.
    EraseUser {
        /// Whose account.
        user: UserId,
        /// Their messages are kept under "deleted-user" rather than erased.
        anonymised: bool,
    },
    /// Add or take back a reaction.
    React {
        /// The message.
        target: Seq,
        /// One emoji, validated.
        emoji: String,
        /// Take it back.
        remove: bool,
    },
}

impl Mutation {
    /// The message a change to a message targets.
    fn target(&self) -> Option<Seq> {
        match self {
            Mutation::Edit { target, .. } | Mutation::React { target, .. } | Mutation::DeleteMessage(target) => {
                Some(*target)
            }
            _ => None,
        }
    }
}

/// The outcome of a committed mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The event's seq (for a duplicate send or an idempotent create: the original).
    pub seq: Seq,
    /// Its commit time.
    pub server_time_ms: u64,
    /// Nothing new was committed: the same request had been committed before.
    pub duplicate: bool,
}

/// A member's view of a conversation, for summaries and reads.
#[derive(Clone, Debug)]
pub struct ConvView {
    /// Attributes.
    pub meta: ConversationMeta,
    /// Newest seq.
    pub last_seq: Seq,
    /// The caller's membership.
    pub me: MemberRecord,
    /// All members (shared with the shard until they change).
    pub members: Arc<Vec<MemberRecord>>,
}

/// Per-kind member limits.
#[derive(Clone, Copy, Debug)]
pub struct MemberLimits {
    /// Group size.
    pub group: usize,
    /// Channel size.
    pub channel: usize,
}

enum Cmd {
    Mutate {
        conv: ConversationId,
        actor: Actor,
        m: Box<Mutation>,
        reply: oneshot::Sender<Result<Committed, ServerError>>,
        /// Commit races lost so far (another node committed to the conversation first).
        attempt: u8,
    },
    /// Another node committed `seq` in `conv`: drop the cached state if it is older.
    Forget { conv: ConversationId, seq: Seq },
    View {
        conv: ConversationId,
        user: UserId,
        /// A seq the caller knows exists: a cached state older than it (another node
        /// committed it and the bus has not said so yet) is read again from the store.
        at_least: Seq,
        reply: oneshot::Sender<Result<ConvView, ServerError>>,
    },
}

/// Handle to all shards.
#[derive(Clone, Debug)]
pub struct Shards {
    senders: Arc<Vec<mpsc::Sender<Cmd>>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shard command")
    }
}

/// Hears of every committed event, after it is durable and fanned out; must not wait
/// (webhooks only note that a conversation moved).
pub trait CommitTap: Send + Sync + std::fmt::Debug {
    /// One committed event.
    fn committed(&self, event: &Arc<pb::ConversationEvent>);
}

impl CommitTap for Search {
    fn committed(&self, event: &Arc<pb::ConversationEvent>) {
        Search::committed(self, event);
    }
}

fn shutting_down() -> ServerError {
    ServerError::new(ErrorCode::ShuttingDown, "server is shutting down")
}

/// What every shard works with.
#[derive(Debug)]
pub struct ShardParts {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Live delivery.
    pub hub: Hub,
    /// Group and channel sizes.
    pub limits: MemberLimits,
    /// Told how long each commit took.
    pub chat_first: Arc<ChatFirst>,
    /// Told of every committed event (notifications).
    pub push: Arc<Push>,
    /// Told of every committed event: search, webhooks.
    pub taps: Vec<Arc<dyn CommitTap>>,
    /// Commits, their duration and conflicts.
    pub metrics: Arc<crate::ops::Metrics>,
}

impl Shards {
    /// Start `n` shard tasks.
    pub fn start(n: usize, parts: ShardParts) -> Self {
        let ShardParts {
            store,
            hub,
            limits,
            chat_first,
            push,
            taps,
            metrics,
        } = parts;
        let senders = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                let shard = Shard {
                    store: store.clone(),
                    hub: hub.clone(),
                    limits,
                    convs: HashMap::new(),
                    chat_first: chat_first.clone(),
                    push: push.clone(),
                    taps: taps.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(shard.run(rx));
                tx
            })
            .collect();
        Shards {
            senders: Arc::new(senders),
        }
    }

    fn shard(&self, conv: ConversationId) -> &mpsc::Sender<Cmd> {
        let h = conv.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.senders[h as usize % self.senders.len()]
    }

    /// Queue a mutation in order; await the returned receiver for its durable outcome.
    /// Mutations submitted one after another by one caller commit in that order.
    pub async fn submit(
        &self,
        conv: ConversationId,
        actor: Actor,
        m: Mutation,
    ) -> Result<oneshot::Receiver<Result<Committed, ServerError>>, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.shard(conv)
            .send(Cmd::Mutate {
                conv,
                actor,
                m: Box::new(m),
                reply,
                attempt: 0,
            })
            .await
            .map_err(|_| shutting_down())?;
        Ok(rx)
    }

    /// Apply a mutation and wait until it is durable.
    pub async fn mutate(&self, conv: ConversationId, actor: Actor, m: Mutation) -> Result<Committed, ServerError> {
        self.submit(conv, actor, m).await?.await.map_err(|_| shutting_down())?
    }

    /// Another node committed `seq` in `conv` (seen on the cluster bus): a cached state
    /// older than that is dropped, so reads and permission checks here see the change.
    pub fn forget(&self, conv: ConversationId, seq: Seq) {
        let _ = self.shard(conv).try_send(Cmd::Forget { conv, seq });
    }

    /// The conversation as `user` may see it: `NOT_MEMBER` unless they are a member.
    pub async fn view(&self, conv: ConversationId, user: UserId) -> Result<ConvView, ServerError> {
        self.view_at_least(conv, user, Seq(0)).await
    }

    /// `user`'s view of `conv`, read again from the store if the cached one has not yet
    /// reached `at_least` (with several nodes, a client can know of a seq before the bus
    /// tells this node).
    pub async fn view_at_least(
        &self,
        conv: ConversationId,
        user: UserId,
        at_least: Seq,
    ) -> Result<ConvView, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.shard(conv)
            .send(Cmd::View {
                conv,
                user,
                at_least,
                reply,
            })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }
}

struct Shard {
    store: Arc<dyn Store>,
    hub: Hub,
    limits: MemberLimits,
    convs: HashMap<ConversationId, Conv>,
    /// Told how long each commit took (slow commits hold uploads back).
    chat_first: Arc<ChatFirst>,
    /// Told of every committed event (it decides who gets a notification).
    push: Arc<Push>,
    /// Told of every committed event: search (it indexes them), webhooks.
    taps: Vec<Arc<dyn CommitTap>>,
    /// Counts commits, their duration and their conflicts.
    metrics: Arc<crate::ops::Metrics>,
}

/// One accepted mutation waiting for the batch's commit.
struct Pending {
    /// The command as submitted, to apply again if the commit loses a race.
    retry: (ConversationId, Actor, Mutation, u8),
    reply: oneshot::Sender<Result<Committed, ServerError>>,
    committed: Committed,
    /// Index into the batch's commits and who receives the event; None for duplicates.
    fanout: Option<(usize, Vec<UserId>)>,
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut cmds = Vec::with_capacity(BATCH);
        let mut retries: Vec<Cmd> = Vec::new();
        loop {
            if retries.is_empty() {
                if rx.recv_many(&mut cmds, BATCH).await == 0 {
                    return;
                }
            } else {
                // Lost races go first, in their original order.
                cmds.append(&mut retries);
            }
            let mut commits: Vec<Commit> = Vec::new();
            let mut pending: Vec<Pending> = Vec::new();
            let mut batch_ids: HashMap<(ConversationId, UserId, String), Committed> = HashMap::new();
            let mut batch_msgs: HashMap<(ConversationId, Seq), Target> = HashMap::new();
            for cmd in cmds.drain(..) {
                match cmd {
                    Cmd::View {
                        conv,
                        user,
                        at_least,
                        reply,
                    } => {
                        if self.convs.get(&conv).is_some_and(|c| c.last_seq < at_least) {
                            self.convs.remove(&conv);
                        }
                        let _ = reply.send(self.view(conv, user).await);
                    }
                    Cmd::Forget { conv, seq } => {
                        if self.convs.get(&conv).is_some_and(|c| c.last_seq < seq) {
                            self.convs.remove(&conv);
                        }
                    }
                    Cmd::Mutate {
                        conv,
                        actor,
                        m,
                        reply,
                        attempt,
                    } => {
                        let retry = (conv, actor.clone(), (*m).clone(), attempt);
                        match self.accept(conv, &actor, *m, &mut batch_ids, &mut batch_msgs).await {
                            Ok(Accepted::New(commit, recipients)) => {
                                let commit = *commit;
                                let committed = Committed {
                                    seq: Seq(commit.event.seq),
                                    server_time_ms: commit.event.server_time_ms,
                                    duplicate: false,
                                };
                                pending.push(Pending {
                                    retry,
                                    reply,
                                    committed,
                                    fanout: Some((commits.len(), recipients)),
                                });
                                commits.push(commit);
                            }
                            Ok(Accepted::Duplicate(committed)) => pending.push(Pending {
                                retry,
                                reply,
                                committed,
                                fanout: None,
                            }),
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                }
            }
            retries = self.finish(commits, pending).await;
            if self.convs.len() > CACHE_LIMIT {
                self.convs.clear();
            }
        }
    }

    /// Commit the batch durably, then ack and fan out. Conversations another node committed
    /// to first are forgotten (reloaded on next use) and their commands returned to be
    /// applied again; on any other failure the touched conversations are forgotten (their
    /// cached state ran ahead of the store) and every ack fails.
    async fn finish(&mut self, commits: Vec<Commit>, pending: Vec<Pending>) -> Vec<Cmd> {
        let result = if commits.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let result = self.store.commit(&commits).await;
            let took = started.elapsed();
            self.chat_first.commit_took(took);
            self.metrics.store_commit_duration.observe(took.as_secs_f64());
            match &result {
                Ok(()) => {
                    self.metrics.events_committed.inc_by(commits.len() as u64);
                }
                Err(StoreError::Conflict(convs)) => {
                    self.metrics.store_commit_conflicts.inc();
                    let lost = commits
                        .iter()
                        .filter(|c| convs.contains(&ConversationId(c.event.conversation_id)))
                        .count();
                    self.metrics.events_committed.inc_by((commits.len() - lost) as u64);
                }
                Err(_) => {
                    self.metrics.store_commit_failures.inc();
                }
            }
            result
        };
        let lost: Vec<ConversationId> = match &result {
            Err(StoreError::Conflict(convs)) => convs.clone(),
            _ => Vec::new(),
        };
        let mut retries = Vec::new();
        match result {
            Ok(()) | Err(StoreError::Conflict(_)) => {
                for conv in &lost {
                    self.convs.remove(conv);
                }
                let events: Vec<Arc<pb::ConversationEvent>> = commits.into_iter().map(|c| Arc::new(c.event)).collect();
                for p in pending {
                    let (conv, actor, m, attempt) = p.retry;
                    if lost.contains(&conv) {
                        if attempt + 1 >= MAX_ATTEMPTS {
                            let busy = ServerError::new(ErrorCode::Internal, "conversation too contended; try again");
                            let _ = p.reply.send(Err(busy));
                        } else {
                            retries.push(Cmd::Mutate {
                                conv,
                                actor,
                                m: Box::new(m),
                                reply: p.reply,
                                attempt: attempt + 1,
                            });
                        }
                        continue;
                    }
                    let _ = p.reply.send(Ok(p.committed));
                    if let Some((i, recipients)) = p.fanout {
                        self.hub.publish(&recipients, events[i].clone());
                        self.push.committed(&events[i], &recipients);
                        for tap in &self.taps {
                            tap.committed(&events[i]);
                        }
                    }
                }
            }
            Err(e) => {
                // One incident for the batch: logged once, its id in every failed ack.
                let failed = ServerError::from(e);
                for c in &commits {
                    self.convs.remove(&ConversationId(c.event.conversation_id));
                }
                for p in pending {
                    let _ = p.reply.send(Err(failed.clone()));
                }
            }
        }
        retries
    }

    async fn load(&mut self, id: ConversationId) -> Result<Option<&mut Conv>, ServerError> {
        if !self.convs.contains_key(&id) {
            match self.store.load_conversation(id).await.map_err(ServerError::from)? {
                Some(rec) => {
                    let members = rec.members.into_iter().map(|m| (m.user, m)).collect();
                    // The newest event's time: the next one is never stamped earlier.
                    let last_time_ms = if rec.last_seq.0 == 0 {
                        0
                    } else {
                        let (newest, _) = self
                            .store
                            .events(id, Page::Before(Seq(0)), 1)
                            .await
                            .map_err(ServerError::from)?;
                        newest.first().map_or(0, |e| e.server_time_ms)
                    };
                    self.convs.insert(
                        id,
                        Conv {
                            meta: rec.meta,
                            members,
                            last_seq: rec.last_seq,
                            last_time_ms,
                            last_sent: HashMap::new(),
                            member_list: None,
                        },
                    );
                }
                None => return Ok(None),
            }
        }
        Ok(self.convs.get_mut(&id))
    }

    async fn view(&mut self, id: ConversationId, user: UserId) -> Result<ConvView, ServerError> {
        let conv = live(self.load(id).await?)?;
        let me = conv.members.get(&user).cloned().ok_or_else(not_member)?;
        let members = conv
            .member_list
            .get_or_insert_with(|| Arc::new(conv.members.values().cloned().collect()))
            .clone();
        Ok(ConvView {
            meta: conv.meta.clone(),
            last_seq: conv.last_seq,
            me,
            members,
        })
    }

    async fn accept(
        &mut self,
        id: ConversationId,
        actor: &Actor,
        m: Mutation,
        batch_ids: &mut HashMap<(ConversationId, UserId, String), Committed>,
        batch_msgs: &mut HashMap<(ConversationId, Seq), Target>,
    ) -> Result<Accepted, ServerError> {
        let now = now_ms();
        if let Some(target) = m.target() {
            // The target as this batch left it, else as stored.
            let t = match batch_msgs.get(&(id, target)) {
                Some(t) => t.clone(),
                None => match self.store.message(id, target).await.map_err(ServerError::from)? {
                    Some((event, state)) => Target { event, state },
                    None => return Err(ServerError::new(ErrorCode::NotFound, "no message at that seq")),
                },
            };
            let conv = live(self.load(id).await?)?;
            let (commit, recipients) = apply_to_message(conv, actor, m, &t, now)?;
            if let Some((_, state)) = &commit.message_state {
                batch_msgs.insert(
                    (id, target),
                    Target {
                        event: t.event,
                        state: state.clone(),
                    },
                );
            }
            return Ok(Accepted::New(Box::new(commit), recipients));
        }
        if let Mutation::Create {
            kind,
            name,
            members,
            encrypted,
        } = m
        {
            if self.load(id).await?.is_some() {
                // Idempotent create (a direct pair or channel name raced to the same id).
                return Ok(Accepted::Duplicate(Committed {
                    seq: Seq(1),
                    server_time_ms: now,
                    duplicate: true,
                }));
            }
            let (commit, recipients, conv) = create(id, actor, kind, name, members, encrypted, now);
            self.convs.insert(id, conv);
            return Ok(Accepted::New(Box::new(commit), recipients));
        }
        // Idempotency first: a retried send returns its original ack even if, say, the
        // sender has left since.
        if let Mutation::Send { client_msg_id, .. } = &m {
            let key = (id, actor.user, client_msg_id.clone());
            if let Some(c) = batch_ids.get(&key) {
                return Ok(Accepted::Duplicate(Committed { duplicate: true, ..*c }));
            }
            if let Some(sent) = self
                .store
                .find_sent(id, actor.user, client_msg_id)
                .await
                .map_err(ServerError::from)?
            {
                return Ok(Accepted::Duplicate(Committed {
                    seq: sent.seq,
                    server_time_ms: sent.server_time_ms,
                    duplicate: true,
                }));
            }
        }
        let limits = self.limits;
        let conv = live(self.load(id).await?)?;
        let (commit, recipients) = apply(conv, actor, m, now, limits)?;
        if let Some((sender, cid)) = &commit.idempotency {
            let c = Committed {
                seq: Seq(commit.event.seq),
                server_time_ms: commit.event.server_time_ms,
                duplicate: false,
            };
            batch_ids.insert((id, *sender, cid.clone()), c);
        }
        Ok(Accepted::New(Box::new(commit), recipients))
    }
}

enum Accepted {
    New(Box<Commit>, Vec<UserId>),
    Duplicate(Committed),
}
