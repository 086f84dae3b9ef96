//! The operator's endpoints on the ops listener, under `/admin/v1` (docs/OPERATIONS.md,
//! "The admin CLI"; `natter-server admin …` is their client). Every one needs
//! `Authorization: Bearer <API key>` with the `admin` scope — the keys of the server API
//! (`natter-server api-key create --scope admin`) — and answers JSON, refusals in the server
//! API's error shape. Users are named by username; what they do goes through the same
//! functions as the server API and the protocol (a deactivation logs every device out, a
//! deletion erases as PROTOCOL.md §5.16 says, a revoked device is disconnected).
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_protocol::pb::ErrorCode;
use natter_protocol::{ConversationId, DeviceId, ServerError, UserId};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::http_api::Refusal;
use crate::api::access::{self, Scope};
use crate::api::privacy::{self, DeletedMessages};
use crate::clock::now_ms;
use crate::conn::Shared;
use crate::conversation::{Actor, Mutation};
use crate::ops::Readiness;
use crate::store::{backup, SledStore, UserRecord};

/// What the admin endpoints act on.
#[derive(Clone)]
pub struct Admin {
    /// The node's connections and request context (weak: the listener never keeps a
    /// stopped server alive).
    pub shared: Weak<Shared>,
    /// The embedded store and the local media directory, for backups (`None` on Redis:
    /// back Redis up with its own tools).
    pub backup: Option<(Arc<SledStore>, Option<PathBuf>)>,
    /// Told when an operator asks this node to drain; whoever runs the server drains it.
    pub drain: Arc<Notify>,
    /// This node's readiness (`stats` reports it).
    pub readiness: Arc<Readiness>,
    /// This node's id.
    pub node_id: String,
    /// When the node started, ms since the epoch.
    pub started_ms: u64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

type Answer = Result<Json<Value>, Refusal>;

/// The `/admin/v1` routes.
pub fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/admin/v1/stats", get(stats))
        .route("/admin/v1/users", get(users))
        .route("/admin/v1/users/{name}", get(user).delete(delete_user))
        .route("/admin/v1/users/{name}/deactivate", post(deactivate))
        .route("/admin/v1/users/{name}/reactivate", post(reactivate))
        .route("/admin/v1/users/{name}/devices", get(devices))
        .route("/admin/v1/users/{name}/devices/{device}", delete(revoke_device))
        .route(
            "/admin/v1/conversations/{id}",
            get(conversation).delete(delete_conversation),
        )
        .route("/admin/v1/conversations/{id}/members", get(members))
        .route("/admin/v1/keys", get(keys).post(create_key))
        .route("/admin/v1/keys/{id}", delete(revoke_key))
        .route("/admin/v1/drain", post(drain))
        .route("/admin/v1/backup", post(take_backup))
        .with_state(admin)
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal(ServerError::new(code, message))
}

/// The running server, after the caller's admin key is checked.
async fn authorized(admin: &Admin, headers: &HeaderMap) -> Result<Arc<Shared>, Refusal> {
    let shared = admin
        .shared
        .upgrade()
        .ok_or_else(|| refuse(ErrorCode::ShuttingDown, "the server is stopping"))?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refuse(
                ErrorCode::Unauthenticated,
                "Authorization: Bearer <admin API key> is required",
            )
        })?;
    access::check(&*shared.ctx.store, bearer.trim(), Scope::Admin).await?;
    Ok(shared)
}

async fn user_named(shared: &Shared, name: &str) -> Result<UserRecord, Refusal> {
    shared
        .ctx
        .store
        .user_by_name(name)
        .await?
        .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no user {name}")))
}

fn conversation_id(id: u64) -> Result<ConversationId, Refusal> {
    if id == 0 {
        return Err(refuse(ErrorCode::BadRequest, "conversation ids start at 1"));
    }
    Ok(ConversationId(id))
}

async fn stats(State(a): State<Admin>, headers: HeaderMap) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let m = &shared.ctx.metrics;
    let ready = a.readiness.report().await;
    Ok(Json(json!({
        "node_id": a.node_id,
        "uptime_secs": now_ms().saturating_sub(a.started_ms) / 1000,
        "ready": ready.ready,
        "connections": shared.live_connections(),
        "sessions_attached": shared.hub.attached_sessions(),
        "events_committed": m.events_committed.get(),
        "deliveries": m.deliveries.get(),
        "duplicates": m.duplicates.get(),
        "time_ms": now_ms(),
    })))
}

#[derive(Debug, Deserialize)]
struct UsersQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    limit: Option<usize>,
}

async fn users(State(a): State<Admin>, headers: HeaderMap, Query(q): Query<UsersQuery>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let found = shared.ctx.store.users_by_prefix(&q.prefix, limit).await?;
    Ok(Json(json!(found
        .iter()
        .map(|u| json!({"user_id": u.id.0, "username": u.username, "created_ms": u.created_ms}))
        .collect::<Vec<_>>())))
}

async fn user(State(a): State<Admin>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let ctx = &shared.ctx;
    let u = user_named(&shared, &name).await?;
    let devices = ctx.store.list_devices(u.id).await?;
    let live = devices.iter().filter(|d| !d.revoked).count();
    let online = devices.iter().filter(|d| ctx.hub.device_attached(u.id, d.id)).count();
    Ok(Json(json!({
        "user_id": u.id.0,
        "username": u.username,
        "created_ms": u.created_ms,
        "password_login": !u.password_hash.is_empty(),
        "deactivated": privacy::refusal(ctx, u.id).await?.is_some(),
        "devices": live,
        "devices_online_here": online,
        "conversations": ctx.store.user_conversations(u.id).await?.len(),
        "media_bytes": ctx.store.media_usage(u.id).await?,
    })))
}

async fn deactivate(State(a): State<Admin>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let u = user_named(&shared, &name).await?;
    let devices = privacy::deactivate(&shared.ctx, u.id, &u.username, now_ms()).await?;
    Ok(Json(json!({"deactivated": u.username, "devices_logged_out": devices})))
}

async fn reactivate(State(a): State<Admin>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let u = user_named(&shared, &name).await?;
    let was = privacy::reactivate(&shared.ctx, u.id).await?;
    Ok(Json(json!({"reactivated": u.username, "was_deactivated": was})))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    messages: Option<DeletedMessages>,
}

async fn delete_user(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let u = user_named(&shared, &name).await?;
    let mode = q.messages.unwrap_or(shared.ctx.deleted_user_messages);
    let done = privacy::delete_user(&shared.ctx, u.id, mode, now_ms(), None).await?;
    Ok(Json(json!({"deleted": u.username, "erasure": done})))
}

async fn devices(State(a): State<Admin>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let u = user_named(&shared, &name).await?;
    let list = shared.ctx.store.list_devices(u.id).await?;
    Ok(Json(json!(list
        .iter()
        .map(|d| json!({
            "device_id": d.id.0,
            "name": d.name,
            "created_ms": d.created_ms,
            "revoked": d.revoked,
            "online_here": shared.hub.device_attached(u.id, d.id),
        }))
        .collect::<Vec<_>>())))
}

async fn revoke_device(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path((name, device)): Path<(String, u64)>,
) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let u = user_named(&shared, &name).await?;
    if !privacy::revoke_device(&shared.ctx, u.id, &u.username, DeviceId(device)).await? {
        return Err(refuse(
            ErrorCode::NotFound,
            format!("{name} has no live device {device}"),
        ));
    }
    Ok(Json(json!({"revoked": device, "username": u.username})))
}

async fn conversation(State(a): State<Admin>, headers: HeaderMap, Path(id): Path<u64>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let ctx = &shared.ctx;
    let conv = conversation_id(id)?;
    let rec = ctx
        .store
        .load_conversation(conv)
        .await?
        .ok_or_else(|| refuse(ErrorCode::NotFound, "no such conversation"))?;
    let retention = ctx.retention.read().expect("retention settings").effective(&rec.meta);
    let kind = rec
        .meta
        .kind
        .as_str_name()
        .trim_start_matches("CONVERSATION_KIND_")
        .to_lowercase();
    let owner = rec
        .members
        .iter()
        .find(|m| m.role == natter_protocol::pb::Role::Owner)
        .map(|m| m.username.clone());
    Ok(Json(json!({
        "conversation_id": id,
        "kind": kind,
        "name": rec.meta.name,
        "created_ms": rec.meta.created_ms,
        "deleted": rec.meta.deleted,
        "encrypted": rec.meta.encrypted,
        "members": rec.members.len(),
        "owner": owner,
        "last_seq": rec.last_seq.0,
        "removed_through": ctx.store.removed_through(conv).await?.0,
        "retention_secs": retention,
        "slow_mode_secs": rec.meta.moderation.slow_mode_secs,
    })))
}

async fn members(State(a): State<Admin>, headers: HeaderMap, Path(id): Path<u64>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let rec = shared
        .ctx
        .store
        .load_conversation(conversation_id(id)?)
        .await?
        .ok_or_else(|| refuse(ErrorCode::NotFound, "no such conversation"))?;
    Ok(Json(json!(rec
        .members
        .iter()
        .map(|m| json!({
            "user_id": m.user.0,
            "username": m.username,
            "role": m.role.as_str_name().trim_start_matches("ROLE_").to_lowercase(),
            "joined_seq": m.joined_seq.0,
        }))
        .collect::<Vec<_>>())))
}

async fn delete_conversation(State(a): State<Admin>, headers: HeaderMap, Path(id): Path<u64>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let server = Actor {
        user: UserId(0),
        username: String::new(),
        device: DeviceId(0),
    };
    let done = shared
        .ctx
        .shards
        .mutate(conversation_id(id)?, server, Mutation::DeleteByOperator)
        .await?;
    Ok(Json(json!({"deleted": id, "seq": done.seq.0})))
}

fn key_json(k: &access::ApiKey) -> Value {
    json!({"id": k.id, "name": k.name, "scope": format!("{:?}", k.scope).to_lowercase(),
        "created_ms": k.created_ms, "revoked": k.revoked})
}

async fn keys(State(a): State<Admin>, headers: HeaderMap) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let list = access::list(&*shared.ctx.store).await?;
    Ok(Json(json!(list.iter().map(key_json).collect::<Vec<_>>())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    scope: Scope,
}

async fn create_key(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<NewKeyBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let shared = authorized(&a, &headers).await?;
    let Json(b) = body.map_err(|e| refuse(ErrorCode::BadRequest, e.body_text()))?;
    let made = access::create(&*shared.ctx.store, &b.name, b.scope, now_ms()).await?;
    let mut out = key_json(&made.key);
    out["secret"] = json!(made.secret.0);
    Ok(Json(out))
}

async fn revoke_key(State(a): State<Admin>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let shared = authorized(&a, &headers).await?;
    if !access::revoke(&*shared.ctx.store, &id).await? {
        return Err(refuse(ErrorCode::NotFound, format!("no key {id}")));
    }
    Ok(Json(json!({"revoked": id})))
}

async fn drain(State(a): State<Admin>, headers: HeaderMap) -> Answer {
    let shared = authorized(&a, &headers).await?;
    a.drain.notify_one();
    Ok(Json(
        json!({"draining": a.node_id, "connections": shared.live_connections()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A new or empty directory on the server's machine.
    to: PathBuf,
}

async fn take_backup(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<BackupBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    authorized(&a, &headers).await?;
    let Json(b) = body.map_err(|e| refuse(ErrorCode::BadRequest, e.body_text()))?;
    let Some((store, media)) = &a.backup else {
        return Err(refuse(
            ErrorCode::BadRequest,
            "this node stores in Redis: back it up with Redis's own tools (docs/OPERATIONS.md)",
        ));
    };
    if !b.to.is_absolute() {
        return Err(refuse(
            ErrorCode::BadRequest,
            "`to` is an absolute path on the server's machine",
        ));
    }
    let started = std::time::Instant::now();
    let manifest = backup::take(store, media.as_deref(), &b.to, now_ms())
        .await
        .map_err(|e| match e {
            backup::BackupError::NotEmpty(_) => refuse(ErrorCode::Conflict, e.to_string()),
            other => {
                tracing::error!(error = %other, "backup failed");
                refuse(ErrorCode::Internal, format!("backup failed: {other}"))
            }
        })?;
    tracing::info!(to = %b.to.display(), events = manifest.events, took = ?started.elapsed(), "backup taken");
    Ok(Json(json!({
        "to": b.to,
        "created_ms": manifest.created_ms,
        "conversations": manifest.conversations,
        "events": manifest.events,
        "records": manifest.records,
        "files": manifest.files.len(),
        "bytes": manifest.files.iter().map(|f| f.bytes).sum::<u64>(),
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}
