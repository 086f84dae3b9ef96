//! The pure rules of a conversation (PROTOCOL.md §5.4, §5.9): who may do what, and the
//! one event (plus store changes) each accepted mutation commits. No I/O, no clock, no
//! tasks: the shard actor in [`super`] loads state, calls these, and commits the result,
//! which is why every rule here has a unit test that runs in microseconds.
use std::collections::HashMap;
use std::sync::Arc;

use natter_protocol::pb::{self, conversation_event::Body, ConversationKind as Kind, ErrorCode, Role};
use natter_protocol::timeline::DELETED_USER;
use natter_protocol::{ConversationId, Seq, ServerError, UserId};

use super::{coverage, Actor, MemberLimits, Mutation};
use crate::store::{Commit, ConversationMeta, EncryptedDevice, MemberRecord, MessageState};

/// Different emojis on one message.
const MAX_DISTINCT_REACTIONS: usize = 50;

/// A conversation's hot state as its shard caches it.
#[derive(Clone, Debug)]
pub(crate) struct Conv {
    pub(crate) meta: ConversationMeta,
    pub(crate) members: HashMap<UserId, MemberRecord>,
    pub(crate) last_seq: Seq,
    /// `server_time_ms` of the event at `last_seq`.
    pub(crate) last_time_ms: u64,
    /// When each member last sent, for slow mode (this shard's memory only: a member
    /// whose conversation moved shards may send once early).
    pub(crate) last_sent: HashMap<UserId, u64>,
    /// The members as one shared list, made by the first view that needs it and dropped
    /// when they change: a view is asked for by every delivery ack and read mark, and
    /// copying a channel's 10,000 members for each would make a message's acks cost
    /// O(members²).
    pub(crate) member_list: Option<Arc<Vec<MemberRecord>>>,
}

impl Conv {
    /// The time the next event carries: the wall clock, but never earlier than the
    /// conversation's previous event (PROTOCOL.md §6, guarantee 1: event times are
    /// non-decreasing in seq order), so a node whose clock runs behind another's still
    /// stamps in order and a client sorting by time never reorders.
    fn event_time(&self, now: u64) -> u64 {
        now.max(self.last_time_ms)
    }
}

/// A message being changed, with its current state.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) event: pb::ConversationEvent,
    pub(crate) state: MessageState,
}

/// Check and apply an edit, delete or reaction (PROTOCOL.md §5.9).
pub(crate) fn apply_to_message(
    conv: &mut Conv,
    actor: &Actor,
    m: Mutation,
    t: &Target,
    now: u64,
) -> Result<(Commit, Vec<UserId>), ServerError> {
    let now = conv.event_time(now);
    let my_role = role_of(conv, actor.user).ok_or_else(not_member)?;
    if conv.meta.encrypted {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "in an encrypted conversation edits, deletions and reactions travel sealed (PROTOCOL.md §12.3)",
        ));
    }
    if t.state.deleted {
        return Err(ServerError::new(ErrorCode::NotFound, "the message was deleted"));
    }
    let kind = conv.meta.kind;
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
    conv.last_time_ms = now;
    let commit = Commit {
        event: event(conv.meta.id, seq, actor, now, body),
        message_state: Some((target, state)),
        ..Default::default()
    };
    Ok((commit, conv.members.keys().copied().collect()))
}

pub(crate) fn not_member() -> ServerError {
    ServerError::new(ErrorCode::NotMember, "not a member of this conversation")
}

fn forbidden(why: &str) -> ServerError {
    ServerError::new(ErrorCode::Forbidden, why)
}

pub(crate) fn live(conv: Option<&mut Conv>) -> Result<&mut Conv, ServerError> {
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
        role,
        joined_seq: seq,
    }
}

fn to_pb(m: &MemberRecord) -> pb::Member {
    pb::Member {
        user_id: m.user.0,
        username: m.username.clone(),
        role: m.role as i32,
        joined_seq: m.joined_seq.0,
    }
}

pub(crate) fn create(
    id: ConversationId,
    actor: &Actor,
    kind: Kind,
    name: String,
    others: Vec<(UserId, String)>,
    encrypted: Option<Vec<EncryptedDevice>>,
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
    let mut devices = encrypted.clone().unwrap_or_default();
    devices.sort_by_key(|d| (d.user, d.device));
    let meta = ConversationMeta {
        id,
        kind,
        name: name.clone(),
        created_ms: now,
        deleted: false,
        encrypted: encrypted.is_some(),
        devices,
        moderation: Default::default(),
        retention_secs: None,
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
            encrypted: meta.encrypted,
            devices: meta.devices.iter().map(coverage::wire).collect(),
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
        last_time_ms: now,
        last_sent: HashMap::new(),
        member_list: None,
    };
    (commit, recipients, conv)
}

/// A muted member sends nothing until the mute ends; in slow mode a member (not an owner
/// or admin) sends once per interval (PROTOCOL.md §5.14). Both answer with when to retry.
fn moderation_allows_send(conv: &Conv, user: UserId, is_admin: bool, now: u64) -> Result<(), ServerError> {
    let m = &conv.meta.moderation;
    if let Some(&(_, until)) = m.muted.iter().find(|(u, _)| *u == user) {
        if until > now {
            let mut e = forbidden(&if until == u64::MAX {
                "you are muted in this conversation".to_string()
            } else {
                format!("you are muted here until {until} (ms since the epoch)")
            });
            e.retry_after_ms = u32::try_from(until.saturating_sub(now)).unwrap_or(0);
            return Err(e);
        }
    }
    if m.slow_mode_secs > 0 && !is_admin {
        let next = conv
            .last_sent
            .get(&user)
            .map_or(0, |t| t + u64::from(m.slow_mode_secs) * 1000);
        if next > now {
            let mut e = ServerError::new(
                ErrorCode::RateLimited,
                format!("slow mode: one message every {} s", m.slow_mode_secs),
            );
            e.retry_after_ms = u32::try_from(next - now).unwrap_or(u32::MAX);
            return Err(e);
        }
    }
    Ok(())
}

fn role_of(conv: &Conv, user: UserId) -> Option<Role> {
    conv.members.get(&user).map(|m| m.role)
}

/// Check and apply one mutation to a live conversation's state (PROTOCOL.md §5.4).
pub(crate) fn apply(
    conv: &mut Conv,
    actor: &Actor,
    m: Mutation,
    now: u64,
    limits: MemberLimits,
) -> Result<(Commit, Vec<UserId>), ServerError> {
    let now = conv.event_time(now);
    let kind = conv.meta.kind;
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
    if my_role.is_none()
        && !matches!(
            m,
            Mutation::Join | Mutation::EraseUser { .. } | Mutation::DeleteByOperator
        )
    {
        return Err(not_member());
    }
    let body = match m {
        Mutation::Create { .. } | Mutation::Edit { .. } | Mutation::DeleteMessage(_) | Mutation::React { .. } => {
            unreachable!("handled by the caller")
        }
        Mutation::Send {
            client_msg_id,
            mut body,
        } => {
            match (&body.encrypted, conv.meta.encrypted) {
                (Some(envelope), true) => coverage::check(&conv.meta.devices, actor, envelope)?,
                (None, true) => {
                    return Err(ServerError::new(
                        ErrorCode::BadRequest,
                        "an encrypted conversation takes only envelopes (PROTOCOL.md §12.3)",
                    ))
                }
                (Some(_), false) => {
                    return Err(ServerError::new(
                        ErrorCode::BadRequest,
                        "an envelope in a conversation that is not encrypted",
                    ))
                }
                (None, false) => {}
            }
            // PROTOCOL.md §5.5: a reply names an event that exists (seqs are gap-free).
            if body.reply_to_seq > conv.last_seq.0 {
                return Err(ServerError::new(
                    ErrorCode::NotFound,
                    format!("reply_to_seq {} names no event of this conversation", body.reply_to_seq),
                ));
            }
            moderation_allows_send(conv, actor.user, is_admin, now)?;
            conv.last_sent.insert(actor.user, now);
            super::mentions::resolve(conv, &mut body);
            commit.idempotency = Some((actor.user, client_msg_id.clone()));
            commit.read_cursors = vec![(actor.user, seq)];
            Body::Message(pb::MessageEvent {
                client_msg_id,
                body: Some(body),
            })
        }
        Mutation::DevicesChanged { add, remove } => {
            if !conv.meta.encrypted {
                return Err(ServerError::new(
                    ErrorCode::BadRequest,
                    "the conversation is not encrypted",
                ));
            }
            let mut meta = conv.meta.clone();
            let changed = coverage::change_devices(&mut meta.devices, actor.user, add, &remove)
                .ok_or_else(|| ServerError::new(ErrorCode::Conflict, "the device list is unchanged"))?;
            commit.meta = Some(meta);
            Body::DevicesChanged(changed)
        }
        Mutation::AddMembers(users) => {
            if kind == Kind::Direct {
                return Err(forbidden("direct conversations have exactly two members"));
            }
            if !is_admin {
                return Err(forbidden("only owners and admins add members"));
            }
            if let Some((_, name)) = users.iter().find(|(u, _)| conv.meta.moderation.banned.contains(u)) {
                return Err(forbidden(&format!("{name} is banned from this conversation")));
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
            if conv.meta.moderation.banned.contains(&actor.user) {
                return Err(forbidden("you are banned from this channel"));
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
        Mutation::EraseUser { user, anonymised } => {
            if let Some(mut gone) = conv.members.get(&user).cloned() {
                if kind == Kind::Direct {
                    gone.username = DELETED_USER.into();
                    commit.upsert_members = vec![gone];
                } else {
                    commit.remove_members = vec![user];
                    if gone.role == Role::Owner {
                        let heir = conv
                            .members
                            .values()
                            .filter(|m| m.user != user)
                            .min_by_key(|m| (m.role != Role::Admin, m.joined_seq, m.user.0));
                        if let Some(heir) = heir {
                            let mut heir = heir.clone();
                            heir.role = Role::Owner;
                            commit.upsert_members = vec![heir];
                        }
                    }
                }
            }
            Body::UserErased(pb::UserErased {
                user_id: user.0,
                anonymised,
            })
        }
        Mutation::Rename(name) => {
            if kind == Kind::Channel {
                return Err(ServerError::new(
                    ErrorCode::BadRequest,
                    "a channel keeps its name: it is how people find and join it",
                ));
            }
            if kind == Kind::Direct || !is_admin {
                return Err(forbidden("only owners and admins rename groups"));
            }
            let mut meta = conv.meta.clone();
            meta.name = name.clone();
            commit.meta = Some(meta);
            Body::Renamed(pb::Renamed { name })
        }
        Mutation::Delete | Mutation::DeleteByOperator => {
            if my_role != Some(Role::Owner) && !matches!(m, Mutation::DeleteByOperator) {
                return Err(forbidden("only the owner deletes a conversation"));
            }
            let mut meta = conv.meta.clone();
            meta.deleted = true;
            commit.meta = Some(meta);
            Body::Deleted(pb::ConversationDeleted {})
        }
        Mutation::Moderate {
            user,
            username,
            action,
            until_ms,
        } => {
            if kind == Kind::Direct {
                return Err(forbidden("direct conversations have no moderators"));
            }
            let target = role_of(conv, user);
            let allowed = match my_role {
                Some(Role::Owner) => target != Some(Role::Owner),
                Some(Role::Admin) => matches!(target, None | Some(Role::Member)),
                _ => false,
            };
            if user == actor.user || !allowed {
                return Err(forbidden("owners moderate anyone else, admins moderate members"));
            }
            let mut meta = conv.meta.clone();
            let m = &mut meta.moderation;
            let changed = match action {
                pb::ModerationAction::Mute => {
                    if target.is_none() {
                        return Err(ServerError::new(ErrorCode::NotFound, "not a member"));
                    }
                    if until_ms != 0 && until_ms <= now {
                        return Err(ServerError::new(ErrorCode::BadRequest, "until_ms is in the past"));
                    }
                    m.muted.retain(|(u, _)| *u != user);
                    m.muted.push((user, if until_ms == 0 { u64::MAX } else { until_ms }));
                    true
                }
                pb::ModerationAction::Unmute => {
                    let before = m.muted.len();
                    m.muted.retain(|(u, _)| *u != user);
                    before != m.muted.len()
                }
                pb::ModerationAction::Ban => {
                    if target.is_some() {
                        commit.remove_members = vec![user];
                        extra_recipients.push(user);
                    }
                    m.muted.retain(|(u, _)| *u != user);
                    !m.banned.contains(&user) && {
                        m.banned.push(user);
                        true
                    }
                }
                pb::ModerationAction::Unban => {
                    let before = m.banned.len();
                    m.banned.retain(|u| *u != user);
                    before != m.banned.len()
                }
                pb::ModerationAction::Unspecified => {
                    return Err(ServerError::new(ErrorCode::BadRequest, "action is required"))
                }
            };
            if !changed {
                return Err(ServerError::new(ErrorCode::Conflict, "nothing to change"));
            }
            commit.meta = Some(meta);
            Body::MemberModerated(pb::MemberModerated {
                user_id: user.0,
                username,
                action: action as i32,
                until_ms,
            })
        }
        Mutation::SlowMode(secs) => {
            if kind != Kind::Channel || !is_admin {
                return Err(forbidden("owners and admins of a channel set its slow mode"));
            }
            if conv.meta.moderation.slow_mode_secs == secs {
                return Err(ServerError::new(ErrorCode::Conflict, "slow mode is that already"));
            }
            let mut meta = conv.meta.clone();
            meta.moderation.slow_mode_secs = secs;
            commit.meta = Some(meta);
            Body::SlowModeChanged(pb::SlowModeChanged { interval_secs: secs })
        }
        Mutation::Retention { secs, defaults } => {
            // Groups and channels: the owner; a direct conversation: either member.
            if kind != Kind::Direct && my_role != Some(Role::Owner) {
                return Err(forbidden("only the owner sets how long events are kept"));
            }
            if secs.is_some_and(|s| s > natter_protocol::limits::MAX_RETENTION_SECS) {
                return Err(ServerError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "retention is at most {} s (0: forever)",
                        natter_protocol::limits::MAX_RETENTION_SECS
                    ),
                ));
            }
            if conv.meta.retention_secs == secs {
                return Err(ServerError::new(ErrorCode::Conflict, "retention is that already"));
            }
            let mut meta = conv.meta.clone();
            meta.retention_secs = secs;
            let effective_secs = defaults.effective(&meta);
            commit.meta = Some(meta);
            Body::RetentionChanged(pb::RetentionChanged {
                retention_secs: secs,
                effective_secs,
            })
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
            target.role = role;
            commit.upsert_members = vec![target];
            if role == Role::Owner {
                // Ownership transfer: the previous owner becomes an admin (one event).
                let mut me = conv.members[&actor.user].clone();
                me.role = Role::Admin;
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
    if !commit.upsert_members.is_empty() || !commit.remove_members.is_empty() {
        conv.member_list = None;
    }
    if let Some(meta) = &commit.meta {
        conv.meta = meta.clone();
    }
    conv.last_seq = seq;
    conv.last_time_ms = now;
    let mut recipients: Vec<UserId> = conv.members.keys().copied().collect();
    recipients.extend(extra_recipients);
    Ok((commit, recipients))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
