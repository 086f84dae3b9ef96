//! The server API's user directory and account state: find users by username prefix, a
//! user's conversations with their read state, and suspending (deactivating) an account and
//! lifting it (admin keys).
use std::sync::Weak;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::types::{Event, Kind, Role, User};
use super::{actor, authorize, target, user_of, Answer, Refusal, Scope};
use crate::api::{self, profiles};
use crate::clock::now_ms;
use crate::conn::Shared;

/// `?prefix=&limit=` of a user search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FindUsers {
    /// The start of a username (0–32 characters).
    pub prefix: String,
    /// At most this many (1–50; default 20).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/users", params(FindUsers),
    responses((status = 200, body = Vec<User>), (status = "4XX", body = super::ApiError)))]
/// Users whose username starts with `prefix`, in username order (users who chose to be
/// unlisted are left out; so are users the product did not make, who have no product id).
pub(super) async fn find_users(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Query(q): Query<FindUsers>,
) -> Answer<Vec<User>> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let ctx = &shared.ctx;
    if q.prefix.chars().count() > 32 || q.prefix.chars().any(char::is_control) {
        return Err(super::bad("prefix is at most 32 characters"));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 50) as usize;
    let mut out = Vec::new();
    for u in ctx.store.users_by_prefix(&q.prefix.to_lowercase(), limit).await? {
        let Some(p) = profiles::profile(ctx, u.id).await? else {
            continue;
        };
        if !p.external_id.is_empty() {
            out.push(user_of(ctx, &p.external_id).await?);
        }
    }
    Ok(Json(out))
}

/// One of a user's conversations, as they see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserConversation {
    /// Its id.
    pub conversation_id: u64,
    /// What kind.
    pub kind: Kind,
    /// Group or channel name; for a direct conversation, the other member's username.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The seq of its newest event.
    pub last_seq: u64,
    /// Their read cursor.
    pub read_seq: u64,
    /// Messages from others after `read_seq` (at most 1,000 counted).
    pub unread_count: u32,
    /// Its newest message.
    pub last_message: Option<Event>,
}

#[utoipa::path(get, path = "/api/v1/users/{id}/conversations",
    params(("id" = String, Path, description = "the product's user id")),
    responses((status = 200, body = Vec<UserConversation>), (status = "4XX", body = super::ApiError)))]
/// Every conversation of the user, with their role, read cursor and unread count.
pub(super) async fn user_conversations(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Vec<UserConversation>> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &id).await?;
    let Res::Conversations(list) =
        api::handle(&shared.ctx, &a, Op::ListConversations(pb::ListConversations {})).await?
    else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "conversations")));
    };
    Ok(Json(
        list.conversations
            .into_iter()
            .map(|s| UserConversation {
                conversation_id: s.conversation_id,
                kind: Kind::from_wire(s.kind()),
                role: s.my_role().into(),
                name: s.name,
                last_seq: s.last_seq,
                read_seq: s.read_seq,
                unread_count: s.unread_count,
                last_message: s.last_message.as_ref().map(Event::from),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/deactivate",
    params(("id" = String, Path, description = "the product's user id")),
    responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Suspend a user (admin keys): every device logged out, no login (and no API call as
/// them) until reactivated; their messages, conversations and files stay.
pub(super) async fn deactivate(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let a = target(&shared.ctx, &id).await?;
    api::privacy::deactivate(&shared.ctx, a.user, &a.username, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/users/{id}/reactivate",
    params(("id" = String, Path, description = "the product's user id")),
    responses((status = 204), (status = "4XX", body = super::ApiError)))]
/// Let a deactivated user log in again (admin keys); `CONFLICT` if they were not.
pub(super) async fn reactivate(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let a = target(&shared.ctx, &id).await?;
    if !api::privacy::reactivate(&shared.ctx, a.user).await? {
        return Err(Refusal(ServerError::new(
            ErrorCode::Conflict,
            "the user is not deactivated",
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
