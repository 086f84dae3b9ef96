//! The server API's conversation management and reading: roles, rename, delete, a
//! member's read cursor (read and set), and search as a user — each through the same
//! handlers and shards as SDK traffic.
use std::sync::Weak;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::types::{AsUser, Event, Role};
use super::{actor, authorize, body, Answer, Refusal, Scope};
use crate::api;
use crate::conn::Shared;

/// A role change, as `by` (the owner).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// Who changes it (the product's id; the owner).
    pub by: String,
    /// The new role; `owner` hands ownership over (the old owner becomes an admin).
    pub role: Role,
}

#[utoipa::path(put, path = "/api/v1/conversations/{id}/members/{user}/role", request_body = SetRole,
    params(("id" = u64, Path), ("user" = String, Path, description = "whose role")),
    responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Change a member's role in a group or channel, as its owner.
pub(super) async fn set_role(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path((id, user)): Path<(u64, String)>,
    b: Result<Json<SetRole>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let ctx = &shared.ctx;
    let by = actor(ctx, &b.by).await?;
    let whom = actor(ctx, &user).await?;
    let role: pb::Role = b.role.into();
    let op = Op::SetRole(pb::SetRole {
        conversation_id: id,
        user_id: whom.user.0,
        role: role as i32,
    });
    api::handle(ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new name, as `by` (an owner or admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// Who renames it (the product's id).
    pub by: String,
    /// The new name (1–64 characters).
    pub name: String,
}

#[utoipa::path(patch, path = "/api/v1/conversations/{id}", request_body = Rename,
    params(("id" = u64, Path)), responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Rename a group or channel, as an owner or admin.
pub(super) async fn rename(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<Rename>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let by = actor(&shared.ctx, &b.by).await?;
    let op = Op::Rename(pb::RenameConversation {
        conversation_id: id,
        name: b.name,
    });
    api::handle(&shared.ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}", params(("id" = u64, Path), AsUser),
    responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Delete a group or channel, as its owner (`user`).
pub(super) async fn delete(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<AsUser>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let by = actor(&shared.ctx, &q.user).await?;
    let op = Op::DeleteConversation(pb::DeleteConversation { conversation_id: id });
    api::handle(&shared.ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every member's cursors.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadState {
    /// Per member (direct conversations and groups; in a channel, only the reader's).
    pub members: Vec<MemberCursor>,
}

/// One member's cursors.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberCursor {
    /// natter's id.
    pub user_id: u64,
    /// Delivered to one of their devices up to this seq.
    pub delivered_seq: u64,
    /// Read up to this seq.
    pub read_seq: u64,
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/read-state", params(("id" = u64, Path), AsUser),
    responses((status = 200, body = ReadState), (status = "4XX", body = super::ApiError)))]
/// The members' delivered and read cursors, as a member (`user`) sees them.
pub(super) async fn read_state(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<AsUser>,
) -> Answer<ReadState> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    let op = Op::GetReceipts(pb::GetReceipts { conversation_id: id });
    let Res::Receipts(r) = api::handle(&shared.ctx, &a, op).await? else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "receipts")));
    };
    Ok(Json(ReadState {
        members: r
            .receipts
            .into_iter()
            .map(|m| MemberCursor {
                user_id: m.user_id,
                delivered_seq: m.delivered_seq,
                read_seq: m.read_seq,
            })
            .collect(),
    }))
}

/// Mark read, as `user`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The reader (the product's id of a member).
    pub user: String,
    /// Read up to this seq (a cursor never moves back).
    pub seq: u64,
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/read", request_body = MarkRead,
    params(("id" = u64, Path)), responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Move a member's read cursor (their devices' unread counts follow; others see the receipt).
pub(super) async fn mark_read(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<MarkRead>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let a = actor(&shared.ctx, &b.user).await?;
    let op = Op::MarkRead(pb::MarkRead {
        conversation_id: id,
        seq: b.seq,
    });
    api::handle(&shared.ctx, &a, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?user=&q=&cursor=&limit=` of a search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Who searches (the product's id): their conversations are the scope.
    pub user: String,
    /// The query (PROTOCOL.md §14.1: words, "phrases", -excluded, from:, in:, has:, dates).
    pub q: String,
    /// A previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Hits per page (1–100; default 20).
    pub limit: Option<u32>,
}

/// One message that matched.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    /// Where.
    pub conversation_id: u64,
    /// The message, as last edited.
    pub event: Option<Event>,
}

/// A page of hits, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<SearchHit>,
    /// Pass as `cursor` for the next page ("" when there are no more).
    pub next_cursor: String,
    /// Messages that match, in all (at most 10,000 counted).
    pub total: u32,
}

#[utoipa::path(get, path = "/api/v1/search", params(SearchQuery),
    responses((status = 200, body = SearchPage), (status = "4XX", body = super::ApiError)))]
/// Search messages as a user: their conversations' plaintext messages (encrypted ones are
/// searched on their devices only).
pub(super) async fn search(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Answer<SearchPage> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    let op = Op::Search(pb::Search {
        query: q.q,
        cursor: q.cursor.unwrap_or_default(),
        limit: q.limit.unwrap_or(20),
        ..Default::default()
    });
    let Res::Search(r) = api::handle(&shared.ctx, &a, op).await? else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "search")));
    };
    Ok(Json(SearchPage {
        hits: r
            .hits
            .iter()
            .map(|h| SearchHit {
                conversation_id: h.conversation_id,
                event: h.event.as_ref().map(Event::from),
            })
            .collect(),
        next_cursor: r.next_cursor,
        total: r.total,
    }))
}
