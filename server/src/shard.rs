//! Conversation shards: the single owner of each conversation's order (guarantee 1).
//!
//! Conversations map to shards by hash. Each shard is one task that owns its
//! conversations' hot state (attributes, members, last seq) with no locks: it takes a batch
//! of commands from its queue, checks permissions, assigns gap-free seqs, commits the whole
//! batch to the store in one durable write (group commit), and only then acknowledges and
//! fans the events out through the [`Hub`] (guarantee 2). Idempotency keys are checked
//! here, against the batch and the store (guarantee 3). It does no network I/O.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use natter_protocol::pb::{self, conversation_event::Body, ConversationKind as Kind, ErrorCode, Role};
use natter_protocol::{ConversationId, DeviceId, Seq, ServerError, UserId};
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::store::{Commit, ConversationMeta, MemberRecord, MessageState, Store, StoreError};

/// Commands a shard takes per batch.
const BATCH: usize = 256;
/// Different emojis on one message.
const MAX_DISTINCT_REACTIONS: usize = 50;
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
    /// All members.
    pub members: Vec<MemberRecord>,
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
        m: Mutation,
        reply: oneshot::Sender<Result<Committed, ServerError>>,
        /// Commit races lost so far (another node committed to the conversation first).
        attempt: u8,
    },
    /// Another node committed `seq` in `conv`: drop the cached state if it is older.
    Forget { conv: ConversationId, seq: Seq },
    View {
        conv: ConversationId,
        user: UserId,
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

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::new(ErrorCode::Internal, e.to_string())
}

fn shutting_down() -> ServerError {
    ServerError::new(ErrorCode::ShuttingDown, "server is shutting down")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shards {
    /// Start `n` shard tasks.
    pub fn start(n: usize, store: Arc<dyn Store>, hub: Hub, limits: MemberLimits) -> Self {
        let senders = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                let shard = Shard {
                    store: store.clone(),
                    hub: hub.clone(),
                    limits,
                    convs: HashMap::new(),
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
                m,
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
        let (reply, rx) = oneshot::channel();
        self.shard(conv)
            .send(Cmd::View { conv, user, reply })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }
}

struct Conv {
    meta: ConversationMeta,
    members: HashMap<UserId, MemberRecord>,
    last_seq: Seq,
}

struct Shard {
    store: Arc<dyn Store>,
    hub: Hub,
    limits: MemberLimits,
    convs: HashMap<ConversationId, Conv>,
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
                    Cmd::View { conv, user, reply } => {
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
                        let retry = (conv, actor.clone(), m.clone(), attempt);
                        match self.accept(conv, &actor, m, &mut batch_ids, &mut batch_msgs).await {
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
            self.store.commit(&commits).await
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
                                m,
                                reply: p.reply,
                                attempt: attempt + 1,
                            });
                        }
                        continue;
                    }
                    let _ = p.reply.send(Ok(p.committed));
                    if let Some((i, recipients)) = p.fanout {
                        self.hub.publish(&recipients, events[i].clone());
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                for c in &commits {
                    self.convs.remove(&ConversationId(c.event.conversation_id));
                }
                for p in pending {
                    let _ = p.reply.send(Err(internal(&e)));
                }
            }
        }
        retries
    }

    async fn load(&mut self, id: ConversationId) -> Result<Option<&mut Conv>, ServerError> {
        if !self.convs.contains_key(&id) {
            match self.store.load_conversation(id).await.map_err(internal)? {
                Some(rec) => {
                    let members = rec.members.into_iter().map(|m| (m.user, m)).collect();
                    self.convs.insert(
                        id,
                        Conv {
                            meta: rec.meta,
                            members,
                            last_seq: rec.last_seq,
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
        Ok(ConvView {
            meta: conv.meta.clone(),
            last_seq: conv.last_seq,
            me,
            members: conv.members.values().cloned().collect(),
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
                None => match self.store.message(id, target).await.map_err(internal)? {
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
        if let Mutation::Create { kind, name, members } = m {
            if self.load(id).await?.is_some() {
                // Idempotent create (a direct pair or channel name raced to the same id).
                return Ok(Accepted::Duplicate(Committed {
                    seq: Seq(1),
                    server_time_ms: now,
                    duplicate: true,
                }));
            }
            let (commit, recipients, conv) = create(id, actor, kind, name, members, now);
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
                .map_err(internal)?
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
                server_time_ms: now,
                duplicate: false,
            };
            batch_ids.insert((id, *sender, cid.clone()), c);
        }
        Ok(Accepted::New(Box::new(commit), recipients))
    }
}

/// A message being changed, with its current state.
#[derive(Clone)]
struct Target {
    event: pb::ConversationEvent,
    state: MessageState,
}

/// Check and apply an edit, delete or reaction (PROTOCOL.md §5.9).
fn apply_to_message(
    conv: &mut Conv,
    actor: &Actor,
    m: Mutation,
    t: &Target,
    now: u64,
) -> Result<(Commit, Vec<UserId>), ServerError> {
    let my_role = role_of(conv, actor.user).ok_or_else(not_member)?;
    if t.state.deleted {
        return Err(ServerError::new(ErrorCode::NotFound, "the message was deleted"));
    }
    let kind = Kind::try_from(conv.meta.kind).unwrap_or(Kind::Group);
    let own = t.event.sender_user_id == actor.user.0;
    let target = Seq(t.event.seq);
    let mut state = t.state.clone();
    let body = match m {
        Mutation::Edit { text, .. } => {
            if !own {
                return Err(forbidden("only the sender edits a message"));
            }
            state.edited = true;
            Body::MessageEdited(pb::MessageEdited {
                target_seq: target.0,
                text,
            })
        }
        Mutation::DeleteMessage(_) => {
            let moderator = kind != Kind::Direct && matches!(my_role, Role::Admin | Role::Owner);
            if !own && !moderator {
                return Err(forbidden(
                    "only the sender, or a group's owner or admins, delete a message",
                ));
            }
            state.deleted = true;
            state.reactions.clear();
            Body::MessageDeleted(pb::MessageDeleted { target_seq: target.0 })
        }
        Mutation::React { emoji, remove, .. } => {
            let users = state.reactions.entry(emoji.clone()).or_default();
            let had = users.contains(&actor.user);
            match (remove, had) {
                (false, true) => return Err(ServerError::new(ErrorCode::Conflict, "already reacted with that emoji")),
                (true, false) => return Err(ServerError::new(ErrorCode::NotFound, "no such reaction of yours")),
                (false, false) => users.push(actor.user),
                (true, true) => users.retain(|u| *u != actor.user),
            }
            if users.is_empty() {
                state.reactions.remove(&emoji);
            }
            if state.reactions.len() > MAX_DISTINCT_REACTIONS {
                return Err(ServerError::new(
                    ErrorCode::LimitExceeded,
                    "too many different reactions on one message",
                ));
            }
            Body::Reaction(pb::ReactionChanged {
                target_seq: target.0,
                emoji,
                added: !remove,
            })
        }
        _ => unreachable!("only message changes have a target"),
    };
    let seq = conv.last_seq.next();
    conv.last_seq = seq;
    let commit = Commit {
        event: event(conv.meta.id, seq, actor, now, body),
        message_state: Some((target, state)),
        ..Default::default()
    };
    Ok((commit, conv.members.keys().copied().collect()))
}

enum Accepted {
    New(Box<Commit>, Vec<UserId>),
    Duplicate(Committed),
}

fn not_member() -> ServerError {
    ServerError::new(ErrorCode::NotMember, "not a member of this conversation")
}

fn forbidden(why: &str) -> ServerError {
    ServerError::new(ErrorCode::Forbidden, why)
}

fn live(conv: Option<&mut Conv>) -> Result<&mut Conv, ServerError> {
    match conv {
        Some(c) if !c.meta.deleted => Ok(c),
        _ => Err(ServerError::new(ErrorCode::NotFound, "no such conversation")),
    }
}

fn event(id: ConversationId, seq: Seq, actor: &Actor, now: u64, body: Body) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: id.0,
        seq: seq.0,
        sender_user_id: actor.user.0,
        sender_username: actor.username.clone(),
        sender_device_id: actor.device.0,
        server_time_ms: now,
        body: Some(body),
    }
}

fn member(user: UserId, username: String, role: Role, seq: Seq) -> MemberRecord {
    MemberRecord {
        user,
        username,
        role: role as i32,
        joined_seq: seq,
    }
}

fn to_pb(m: &MemberRecord) -> pb::Member {
    pb::Member {
        user_id: m.user.0,
        username: m.username.clone(),
        role: m.role,
        joined_seq: m.joined_seq.0,
    }
}

fn create(
    id: ConversationId,
    actor: &Actor,
    kind: Kind,
    name: String,
    others: Vec<(UserId, String)>,
    now: u64,
) -> (Commit, Vec<UserId>, Conv) {
    let seq = Seq(1);
    let creator_role = if kind == Kind::Direct {
        Role::Member
    } else {
        Role::Owner
    };
    let mut members = vec![member(actor.user, actor.username.clone(), creator_role, seq)];
    for (u, n) in others {
        if !members.iter().any(|m| m.user == u) {
            members.push(member(u, n, Role::Member, seq));
        }
    }
    let meta = ConversationMeta {
        id,
        kind: kind as i32,
        name: name.clone(),
        created_ms: now,
        deleted: false,
    };
    let ev = event(
        id,
        seq,
        actor,
        now,
        Body::Created(pb::ConversationCreated {
            kind: kind as i32,
            name,
            members: members.iter().map(to_pb).collect(),
        }),
    );
    let recipients = members.iter().map(|m| m.user).collect();
    let commit = Commit {
        event: ev,
        meta: Some(meta.clone()),
        upsert_members: members.clone(),
        ..Default::default()
    };
    let conv = Conv {
        meta,
        members: members.into_iter().map(|m| (m.user, m)).collect(),
        last_seq: seq,
    };
    (commit, recipients, conv)
}

fn role_of(conv: &Conv, user: UserId) -> Option<Role> {
    conv.members
        .get(&user)
        .map(|m| Role::try_from(m.role).unwrap_or(Role::Member))
}

/// Check and apply one mutation to a live conversation's state (PROTOCOL.md §5.4).
fn apply(
    conv: &mut Conv,
    actor: &Actor,
    m: Mutation,
    now: u64,
    limits: MemberLimits,
) -> Result<(Commit, Vec<UserId>), ServerError> {
    let kind = Kind::try_from(conv.meta.kind).unwrap_or(Kind::Group);
    let id = conv.meta.id;
    let seq = conv.last_seq.next();
    let my_role = role_of(conv, actor.user);
    let is_admin = matches!(my_role, Some(Role::Admin | Role::Owner));
    let mut commit = Commit::default();
    let mut extra_recipients = Vec::new();
    let max_members = match kind {
        Kind::Direct => 2,
        Kind::Channel => limits.channel,
        _ => limits.group,
    };
    if my_role.is_none() && !matches!(m, Mutation::Join) {
        return Err(not_member());
    }
    let body = match m {
        Mutation::Create { .. } | Mutation::Edit { .. } | Mutation::DeleteMessage(_) | Mutation::React { .. } => {
            unreachable!("handled by the caller")
        }
        Mutation::Send { client_msg_id, body } => {
            commit.idempotency = Some((actor.user, client_msg_id.clone()));
            commit.read_cursors = vec![(actor.user, seq)];
            Body::Message(pb::MessageEvent {
                client_msg_id,
                body: Some(body),
            })
        }
        Mutation::AddMembers(users) => {
            if kind == Kind::Direct {
                return Err(forbidden("direct conversations have exactly two members"));
            }
            if !is_admin {
                return Err(forbidden("only owners and admins add members"));
            }
            let new: Vec<MemberRecord> = users
                .into_iter()
                .filter(|(u, _)| !conv.members.contains_key(u))
                .map(|(u, n)| member(u, n, Role::Member, seq))
                .collect();
            if new.is_empty() {
                return Err(ServerError::new(
                    ErrorCode::Conflict,
                    "everyone named is a member already",
                ));
            }
            if conv.members.len() + new.len() > max_members {
                return Err(ServerError::new(
                    ErrorCode::LimitExceeded,
                    format!("at most {max_members} members"),
                ));
            }
            commit.upsert_members = new.clone();
            Body::MembersAdded(pb::MembersAdded {
                members: new.iter().map(to_pb).collect(),
            })
        }
        Mutation::Join => {
            if kind != Kind::Channel {
                return Err(forbidden("only channels can be joined"));
            }
            if my_role.is_some() {
                return Err(ServerError::new(ErrorCode::Conflict, "already a member"));
            }
            if conv.members.len() >= max_members {
                return Err(ServerError::new(
                    ErrorCode::LimitExceeded,
                    format!("at most {max_members} members"),
                ));
            }
            let m = member(actor.user, actor.username.clone(), Role::Member, seq);
            commit.upsert_members = vec![m.clone()];
            Body::MembersAdded(pb::MembersAdded {
                members: vec![to_pb(&m)],
            })
        }
        Mutation::Remove(user) => {
            if kind == Kind::Direct {
                return Err(forbidden("direct conversations have exactly two members"));
            }
            let target = role_of(conv, user).ok_or_else(|| ServerError::new(ErrorCode::NotFound, "not a member"))?;
            let allowed = match my_role {
                Some(Role::Owner) => target != Role::Owner,
                Some(Role::Admin) => target == Role::Member,
                _ => false,
            };
            if user == actor.user || !allowed {
                return Err(forbidden(
                    "owners remove anyone else, admins remove members; use leave for yourself",
                ));
            }
            let username = conv.members[&user].username.clone();
            commit.remove_members = vec![user];
            extra_recipients.push(user);
            Body::MemberRemoved(pb::MemberRemoved {
                user_id: user.0,
                username,
                left: false,
            })
        }
        Mutation::Leave => {
            if kind == Kind::Direct {
                return Err(forbidden("direct conversations cannot be left"));
            }
            if my_role == Some(Role::Owner) && conv.members.len() > 1 {
                return Err(ServerError::new(
                    ErrorCode::Conflict,
                    "the owner must transfer ownership before leaving",
                ));
            }
            commit.remove_members = vec![actor.user];
            extra_recipients.push(actor.user);
            Body::MemberRemoved(pb::MemberRemoved {
                user_id: actor.user.0,
                username: actor.username.clone(),
                left: true,
            })
        }
        Mutation::Rename(name) => {
            if kind == Kind::Direct || !is_admin {
                return Err(forbidden("only owners and admins rename groups and channels"));
            }
            let mut meta = conv.meta.clone();
            meta.name = name.clone();
            commit.meta = Some(meta);
            Body::Renamed(pb::Renamed { name })
        }
        Mutation::Delete => {
            if my_role != Some(Role::Owner) {
                return Err(forbidden("only the owner deletes a conversation"));
            }
            let mut meta = conv.meta.clone();
            meta.deleted = true;
            commit.meta = Some(meta);
            Body::Deleted(pb::ConversationDeleted {})
        }
        Mutation::SetRole(user, role) => {
            if my_role != Some(Role::Owner) || kind == Kind::Direct || user == actor.user {
                return Err(forbidden("only the owner changes roles of others"));
            }
            if role == Role::Unspecified {
                return Err(ServerError::new(ErrorCode::BadRequest, "role is required"));
            }
            let mut target = conv
                .members
                .get(&user)
                .cloned()
                .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "not a member"))?;
            target.role = role as i32;
            commit.upsert_members = vec![target];
            if role == Role::Owner {
                // Ownership transfer: the previous owner becomes an admin (one event).
                let mut me = conv.members[&actor.user].clone();
                me.role = Role::Admin as i32;
                commit.upsert_members.push(me);
            }
            Body::RoleChanged(pb::RoleChanged {
                user_id: user.0,
                role: role as i32,
            })
        }
    };
    commit.event = event(id, seq, actor, now, body);
    // Apply to the cached state; recipients are the members after the change plus anyone
    // removed by it (so they learn of it).
    for m in &commit.upsert_members {
        conv.members.insert(m.user, m.clone());
    }
    for u in &commit.remove_members {
        conv.members.remove(u);
    }
    if let Some(meta) = &commit.meta {
        conv.meta = meta.clone();
    }
    conv.last_seq = seq;
    let mut recipients: Vec<UserId> = conv.members.keys().copied().collect();
    recipients.extend(extra_recipients);
    Ok((commit, recipients))
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        internal(e)
    }
}
