//! Request handlers for authenticated connections: one function per operation, each
//! checking its input and authorization and returning a typed result (PROTOCOL.md §5).
//! Handlers never trust ids about the caller from the request: the [`Actor`] comes from the
//! authenticated connection. They do no transport I/O.
//!
//! By area: conversations, membership and messages here; [`history`] pages; [`signals`]
//! (typing, receipts after cursor moves); [`presence`] (contacts, publishing changes).
//!
//! May import: `cluster`, `conversation`, `session`, `store`, `security`, `clock`, `error`.
//! Must not import `conn` or `transport`: a request arrives here as an `Op` and an `Actor`.
use std::sync::Arc;

use natter_protocol::pb::{self, request::Op, response::Result as Res, ConversationKind as Kind, ErrorCode};
use natter_protocol::{limits, validate, ConversationId, Seq, ServerError, UserId};

use crate::conversation::{Actor, ConvView, MemberLimits, Mutation, Shards};
use crate::session::hub::Hub;
use crate::session::presence::Presence;
use crate::store::Store;

pub mod access;
pub mod accounts;
mod history;
pub mod keys;
pub mod media;
pub mod moderation;
pub mod presence;
pub mod privacy;
pub mod profiles;
mod search;
mod signals;

use history::history;
pub use signals::typing;
use signals::{cursor_target, cursors_moved, receipts};

/// What handlers need from the server.
#[derive(Debug)]
pub struct Ctx {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Sessions, for signals.
    pub hub: Hub,
    /// Who is online.
    pub presence: Presence,
    /// Typing indicator lifetime.
    pub typing_ttl_ms: u32,
    /// Rate limiters.
    pub rates: crate::security::ratelimit::RateLimits,
    /// Conversation owners.
    pub shards: Shards,
    /// Member limits.
    pub member_limits: MemberLimits,
    /// Text limit in characters.
    pub max_text_chars: usize,
    /// History page limit.
    pub max_history_page: u32,
    /// argon2id cost for new password hashes.
    pub password_cost: crate::security::auth::PasswordCost,
    /// The other nodes, when this node is one of several (Redis storage).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Uploads and files.
    pub media: Arc<crate::media::Media>,
    /// Device keys for end-to-end encryption.
    pub keys: crate::keys::Keys,
    /// Notifications for offline devices.
    pub push: Arc<crate::push::Push>,
    /// Full-text search, if on.
    pub search: Option<Arc<crate::search::Search>>,
    /// Accounts: whether passwords log in, and the product tokens that do (§5.13).
    pub logins: Logins,
    /// Webhook subscriptions and their deliveries.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The product's pre-send hook, if configured.
    pub presend: Option<Arc<crate::webhooks::presend::Presend>>,
    /// What deleting an account does to its messages (§5.16).
    pub deleted_user_messages: privacy::DeletedMessages,
    /// This node's metrics.
    pub metrics: Arc<crate::ops::Metrics>,
    /// How long conversations keep their events (PROTOCOL.md §5.17); SIGHUP replaces it.
    pub retention: crate::conversation::retention::SharedRetention,
}

/// How users log in (PROTOCOL.md §5.1, §5.13).
#[derive(Debug, Clone)]
pub struct Logins {
    /// Register and Login with passwords.
    pub passwords: bool,
    /// The trusted product token issuers (none: token logins are off).
    pub tokens: Arc<crate::security::jwt::ProductTokens>,
    /// Clock skew allowed on a product token's expiry, ms.
    pub leeway_ms: u64,
    /// How long before a product token expires its connection is told so, ms.
    pub refresh_ahead_ms: u64,
}

fn bad(msg: &str) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

fn conv_id(id: u64) -> Result<ConversationId, ServerError> {
    if id == 0 {
        Err(bad("conversation_id is required"))
    } else {
        Ok(ConversationId(id))
    }
}

/// Resolve usernames to users; unknown names are `NOT_FOUND`.
async fn resolve(ctx: &Ctx, names: &[String]) -> Result<Vec<(UserId, String)>, ServerError> {
    validate::count("usernames", names.len(), limits::MAX_USERNAMES_PER_REQUEST)?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let u = ctx
            .store
            .user_by_name(n)
            .await?
            .ok_or_else(|| ServerError::new(ErrorCode::NotFound, format!("no user {n:?}")))?;
        out.push((u.id, u.username));
    }
    Ok(out)
}

/// The caller's summary of one conversation.
pub async fn summary(ctx: &Ctx, user: UserId, conv: ConversationId) -> Result<pb::ConversationSummary, ServerError> {
    let view = ctx.shards.view(conv, user).await?;
    summarize(ctx, user, view).await
}

async fn summarize(ctx: &Ctx, user: UserId, v: ConvView) -> Result<pb::ConversationSummary, ServerError> {
    let read = ctx.store.read_cursor(user, v.meta.id).await?;
    let (unread, last) = ctx
        .store
        .unread_and_last_message(v.meta.id, user, read, limits::MAX_UNREAD_COUNT)
        .await?;
    let name = if v.meta.kind == Kind::Direct {
        v.members
            .iter()
            .find(|m| m.user != user)
            .map(|m| m.username.clone())
            .unwrap_or_default()
    } else {
        v.meta.name.clone()
    };
    let retention_secs = ctx.retention.read().expect("retention settings").effective(&v.meta);
    let removed_through = ctx.store.removed_through(v.meta.id).await?;
    let receipts = if v.meta.kind == Kind::Channel {
        Vec::new()
    } else {
        receipts(ctx, &v).await?
    };
    Ok(pb::ConversationSummary {
        conversation_id: v.meta.id.0,
        kind: v.meta.kind as i32,
        name,
        last_seq: v.last_seq.0,
        joined_seq: v.me.joined_seq.0,
        read_seq: read.0,
        unread_count: unread,
        my_role: v.me.role as i32,
        member_count: v.members.len() as u32,
        last_message: last,
        receipts,
        encrypted: v.meta.encrypted,
        retention_secs,
        retention_set: v.meta.retention_secs.is_some(),
        removed_through: removed_through.0,
    })
}

/// Every conversation the user is a member of, newest activity first.
pub async fn all_summaries(ctx: &Ctx, user: UserId) -> Result<Vec<pb::ConversationSummary>, ServerError> {
    let mut out = Vec::new();
    for conv in ctx.store.user_conversations(user).await? {
        match summary(ctx, user, conv).await {
            Ok(s) => out.push(s),
            // Deleted, or removed between the index read and now.
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::NotMember) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.last_message.as_ref().map_or(0, |m| m.server_time_ms)));
    Ok(out)
}

async fn create_and_summarize(ctx: &Ctx, actor: &Actor, id: ConversationId, m: Mutation) -> Result<Res, ServerError> {
    ctx.shards.mutate(id, actor.clone(), m).await?;
    Ok(Res::Conversation(summary(ctx, actor.user, id).await?))
}

async fn done(ctx: &Ctx, actor: &Actor, id: u64, m: Mutation) -> Result<Res, ServerError> {
    ctx.shards.mutate(conv_id(id)?, actor.clone(), m).await?;
    Ok(Res::Done(pb::Done {}))
}

/// Apply a message change and answer with the seq of its event.
async fn committed(ctx: &Ctx, actor: &Actor, id: u64, m: Mutation) -> Result<Res, ServerError> {
    let conv = conv_id(id)?;
    ctx.rates.send(actor.user)?;
    let c = ctx.shards.mutate(conv, actor.clone(), m).await?;
    Ok(Res::Sent(pb::SendOk {
        conversation_id: conv.0,
        seq: c.seq.0,
        server_time_ms: c.server_time_ms,
        duplicate: false,
    }))
}

/// Handle one request of an authenticated connection (everything but the auth requests
/// and sends, which the connection driver handles itself).
pub async fn handle(ctx: &Ctx, actor: &Actor, op: Op) -> Result<Res, ServerError> {
    match op {
        Op::CreateDirect(r) => {
            validate::username(&r.username)?;
            let [(peer, peer_name)] =
                <[_; 1]>::try_from(resolve(ctx, &[r.username]).await?).expect("one name, one user");
            if peer == actor.user {
                return Err(bad("a direct conversation needs another user"));
            }
            let candidate = ctx.store.allocate_conversation_id().await?;
            let id = ctx.store.claim_direct(actor.user, peer, r.encrypted, candidate).await?;
            let encrypted = if r.encrypted {
                let mut devices = keys::encrypted_devices(ctx, actor.user).await?;
                devices.extend(keys::encrypted_devices(ctx, peer).await?);
                Some(devices)
            } else {
                None
            };
            let m = Mutation::Create {
                kind: Kind::Direct,
                name: String::new(),
                members: vec![(peer, peer_name.clone())],
                encrypted,
            };
            ctx.shards.mutate(id, actor.clone(), m).await?;
            if r.encrypted {
                keys::ensure_listed(ctx, id, &[(actor.user, actor.username.clone()), (peer, peer_name)]).await?;
            }
            Ok(Res::Conversation(summary(ctx, actor.user, id).await?))
        }
        Op::CreateGroup(r) => {
            validate::name(&r.name)?;
            let members = resolve(ctx, &r.usernames).await?;
            validate::count("members", members.len() + 1, ctx.member_limits.group)?;
            let id = ctx.store.allocate_conversation_id().await?;
            create_and_summarize(
                ctx,
                actor,
                id,
                Mutation::Create {
                    kind: Kind::Group,
                    name: r.name,
                    members,
                    encrypted: None,
                },
            )
            .await
        }
        Op::CreateChannel(r) => {
            validate::channel_name(&r.name)?;
            let candidate = ctx.store.allocate_conversation_id().await?;
            let id = ctx.store.claim_channel_name(&r.name, candidate).await?;
            if id != candidate {
                return Err(ServerError::new(
                    ErrorCode::NameTaken,
                    format!("channel {:?} exists; join it", r.name),
                ));
            }
            create_and_summarize(
                ctx,
                actor,
                id,
                Mutation::Create {
                    kind: Kind::Channel,
                    name: r.name,
                    members: vec![],
                    encrypted: None,
                },
            )
            .await
        }
        Op::JoinChannel(r) => {
            validate::channel_name(&r.name)?;
            let id = ctx
                .store
                .channel_by_name(&r.name)
                .await?
                .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such channel"))?;
            match ctx.shards.mutate(id, actor.clone(), Mutation::Join).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::Conflict => {} // already a member: a no-op
                Err(e) => return Err(e),
            }
            Ok(Res::Conversation(summary(ctx, actor.user, id).await?))
        }
        Op::AddMembers(r) => {
            let users = resolve(ctx, &r.usernames).await?;
            done(ctx, actor, r.conversation_id, Mutation::AddMembers(users)).await
        }
        Op::RemoveMember(r) => done(ctx, actor, r.conversation_id, Mutation::Remove(UserId(r.user_id))).await,
        Op::Leave(r) => done(ctx, actor, r.conversation_id, Mutation::Leave).await,
        Op::Rename(r) => {
            validate::name(&r.name)?;
            done(ctx, actor, r.conversation_id, Mutation::Rename(r.name)).await
        }
        Op::DeleteConversation(r) => done(ctx, actor, r.conversation_id, Mutation::Delete).await,
        Op::SetRole(r) => {
            let role = pb::Role::try_from(r.role).map_err(|_| bad("unknown role"))?;
            done(
                ctx,
                actor,
                r.conversation_id,
                Mutation::SetRole(UserId(r.user_id), role),
            )
            .await
        }
        Op::ListConversations(_) => Ok(Res::Conversations(pb::ConversationList {
            conversations: all_summaries(ctx, actor.user).await?,
        })),
        Op::GetMembers(r) => {
            let view = ctx.shards.view(conv_id(r.conversation_id)?, actor.user).await?;
            let mut members: Vec<pb::Member> = view
                .members
                .iter()
                .map(|m| pb::Member {
                    user_id: m.user.0,
                    username: m.username.clone(),
                    role: m.role as i32,
                    joined_seq: m.joined_seq.0,
                })
                .collect();
            members.sort_by_key(|m| (m.joined_seq, m.user_id));
            Ok(Res::Members(pb::MemberList { members }))
        }
        Op::History(r) => history(ctx, actor, r).await,
        Op::MarkRead(r) => {
            let conv = conv_id(r.conversation_id)?;
            let view = cursor_target(ctx, actor, conv, r.seq).await?;
            let before = ctx.store.read_cursor(actor.user, conv).await?;
            let read = ctx.store.advance_read_cursor(actor.user, conv, Seq(r.seq)).await?;
            let delivered = ctx.store.advance_delivered_cursor(actor.user, conv, read).await?;
            if read > before {
                cursors_moved(ctx, actor, &view, before, delivered, read, true).await?;
                ctx.push.read(actor.user, conv, read.0);
                ctx.push.acked(actor.user, actor.device, conv, read.0);
            }
            Ok(Res::Done(pb::Done {}))
        }
        Op::MarkDelivered(r) => {
            let conv = conv_id(r.conversation_id)?;
            let view = cursor_target(ctx, actor, conv, r.seq).await?;
            let before = ctx.store.delivered_cursor(actor.user, conv).await?;
            let delivered = ctx.store.advance_delivered_cursor(actor.user, conv, Seq(r.seq)).await?;
            ctx.push.acked(actor.user, actor.device, conv, r.seq);
            if delivered > before {
                let read = ctx.store.read_cursor(actor.user, conv).await?;
                cursors_moved(ctx, actor, &view, before, delivered, read, false).await?;
            }
            Ok(Res::Done(pb::Done {}))
        }
        Op::GetReceipts(r) => {
            let conv = conv_id(r.conversation_id)?;
            let view = ctx.shards.view(conv, actor.user).await?;
            if view.meta.kind == Kind::Channel {
                return Err(ServerError::new(ErrorCode::Forbidden, "channels keep no receipts"));
            }
            Ok(Res::Receipts(pb::ReceiptList {
                conversation_id: conv.0,
                receipts: receipts(ctx, &view).await?,
            }))
        }
        Op::Edit(r) => {
            let body = pb::MessageBody {
                text: r.text.clone(),
                ..Default::default()
            };
            validate::message_body(&body, ctx.max_text_chars)?;
            let m = Mutation::Edit {
                target: Seq(r.target_seq),
                text: r.text,
            };
            committed(ctx, actor, r.conversation_id, m).await
        }
        Op::DeleteMessage(r) => {
            let conv = conv_id(r.conversation_id)?;
            let target = ctx.store.message(conv, Seq(r.target_seq)).await?;
            let res = committed(
                ctx,
                actor,
                r.conversation_id,
                Mutation::DeleteMessage(Seq(r.target_seq)),
            )
            .await?;
            if let Some((ev, _)) = target {
                media::detach(ctx, conv, &ev).await;
            }
            Ok(res)
        }
        Op::React(r) => {
            validate::emoji(&r.emoji)?;
            let m = Mutation::React {
                target: Seq(r.target_seq),
                emoji: r.emoji,
                remove: r.remove,
            };
            committed(ctx, actor, r.conversation_id, m).await
        }
        Op::SetPrivacy(p) => {
            ctx.presence.ensure_loaded(&*ctx.store, actor.user).await?;
            let rec = ctx.presence.set_hide_last_seen(actor.user, p.hide_last_seen);
            ctx.store.put_presence_record(actor.user, rec).await?;

            Ok(Res::Done(pb::Done {}))
        }
        Op::GetPresence(g) => {
            validate::count("user_ids", g.user_ids.len(), limits::MAX_USERNAMES_PER_REQUEST)?;
            let contacts = presence::contacts(ctx, actor.user).await?;
            let mut users = Vec::new();
            for u in g.user_ids.iter().map(|u| UserId(*u)).filter(|u| contacts.contains(u)) {
                ctx.presence.ensure_loaded(&*ctx.store, u).await?;
                let here = ctx.presence.get(u);
                users.push(match &ctx.cluster {
                    Some(cluster) => cluster.merge_presence(here).await,
                    None => here,
                });
            }
            Ok(Res::Presence(pb::PresenceList { users }))
        }
        Op::Typing(t) => {
            typing(ctx, actor, t.conversation_id).await?;
            Ok(Res::Done(pb::Done {}))
        }
        op @ (Op::CreateUpload(_) | Op::GetUpload(_) | Op::CancelUpload(_) | Op::GetMedia(_) | Op::MediaUrl(_)) => {
            media::handle(ctx, actor, op).await
        }
        op @ (Op::UploadKeys(_)
        | Op::ClaimKeys(_)
        | Op::GetDeviceKeys(_)
        | Op::CreateKeyBackup(_)
        | Op::GetKeyBackup(_)
        | Op::PutBackupKeys(_)
        | Op::GetBackupKeys(_)
        | Op::SendToDevice(_)
        | Op::PublishUserKey(_)
        | Op::SignDevice(_)) => keys::handle(ctx, actor, op).await,
        Op::RegisterPush(r) => {
            ctx.rates.push_change(actor.user)?;
            Ok(Res::Push(ctx.push.register(actor.user, actor.device, r.target).await?))
        }
        Op::GetNotifySettings(_) => Ok(Res::NotifySettings(ctx.push.settings(actor.user).await?)),
        Op::SetNotifySettings(r) => {
            ctx.rates.push_change(actor.user)?;
            Ok(Res::NotifySettings(
                ctx.push.set_settings(actor.user, r.settings).await?,
            ))
        }
        Op::ListPush(_) => Ok(Res::Push(ctx.push.list(actor.user, actor.device).await?)),
        Op::RemovePush(r) => {
            ctx.rates.push_change(actor.user)?;
            Ok(Res::Push(
                ctx.push.remove(actor.user, actor.device, &r.registration_id).await?,
            ))
        }
        Op::Search(r) => {
            let found = search::messages(ctx, actor, r).await;
            let result = if found.is_ok() { "ok" } else { "refused" };
            crate::ops::Metrics::result(&ctx.metrics.search_queries, result);
            found
        }
        Op::SearchUsers(r) => search::users(ctx, actor, r).await,
        Op::SearchChannels(r) => search::channels(ctx, actor, r).await,
        Op::Moderate(r) => {
            let action = pb::ModerationAction::try_from(r.action).map_err(|_| bad("unknown action"))?;
            let user = UserId(r.user_id);
            let username = moderation::username(ctx, actor, conv_id(r.conversation_id)?, user).await?;
            let m = Mutation::Moderate {
                user,
                username,
                action,
                until_ms: r.until_ms,
            };
            done(ctx, actor, r.conversation_id, m).await
        }
        Op::SetSlowMode(r) => {
            if r.interval_secs > limits::MAX_SLOW_MODE_SECS {
                return Err(bad("slow mode is at most 6 hours"));
            }
            done(ctx, actor, r.conversation_id, Mutation::SlowMode(r.interval_secs)).await
        }
        Op::SetRetention(r) => {
            let defaults = *ctx.retention.read().expect("retention settings");
            let m = Mutation::Retention {
                secs: r.retention_secs,
                defaults,
            };
            done(ctx, actor, r.conversation_id, m).await
        }
        Op::ReportMessage(r) => {
            moderation::report(ctx, actor, r).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::SetProfile(r) => {
            ctx.rates.send(actor.user)?;
            let p = profiles::update(ctx, actor.user, &actor.username, r).await?;
            Ok(Res::Profiles(pb::Profiles {
                profiles: vec![p.to_wire(actor.user)],
            }))
        }
        Op::ExportAccount(_) => {
            ctx.rates.send(actor.user)?;
            Ok(Res::Export(privacy::export_url(ctx, actor.user).await?))
        }
        Op::GetProfiles(r) => Ok(Res::Profiles(profiles::get_many(ctx, &r.user_ids).await?)),
        Op::SetUnlisted(r) => {
            ctx.store.set_unlisted(actor.user, r.unlisted).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::Ping(p) => Ok(Res::Pong(pb::Pong {
            nonce: p.nonce,
            server_time_ms: crate::clock::now_ms(),
        })),
        Op::ListDevices(_)
        | Op::Logout(_)
        | Op::DeleteAccount(_)
        | Op::Register(_)
        | Op::Login(_)
        | Op::TokenLogin(_)
        | Op::RefreshToken(_)
        | Op::Authenticate(_)
        | Op::Send(_)
        | Op::Download(_)
        | Op::Heartbeat(_) => Err(ServerError::new(ErrorCode::Internal, "handled by the connection")),
    }
}
