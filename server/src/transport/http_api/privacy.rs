//! The server API's privacy endpoints (PROTOCOL.md §5.16), admin keys only: delete a user
//! (their messages erased or anonymised, files, devices, push registrations and profile
//! gone) and download a zip of a user's data.
use std::sync::Weak;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{authorize, target, Answer, Scope};
use crate::api::privacy::{self, DeletedMessages};
use crate::clock::now_ms;
use crate::conn::Shared;

/// `?messages=` of a deletion.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// `erase` or `anonymise` (absent: the server's `deleted_user_messages`).
    pub messages: Option<String>,
}

/// What a deletion did.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Deleted {
    /// Conversations it touched.
    pub conversations: u32,
    /// Logged events rewritten.
    pub events: u32,
    /// Files deleted.
    pub media: u32,
    /// Devices revoked.
    pub devices: u32,
}

#[utoipa::path(delete, path = "/api/v1/users/{id}",
    params(("id" = String, Path, description = "the product's user id"), DeleteQuery),
    responses((status = 200, body = Deleted), (status = "4XX", body = super::ApiError)))]
/// Delete a user (admin keys): every device logged out, their messages erased (or, with
/// `messages=anonymise`, kept under "deleted-user"), their files, push registrations and
/// profile deleted, search updated. Repeating it finishes a deletion that was cut off.
pub(super) async fn delete_user(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Answer<Deleted> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let ctx = &shared.ctx;
    let a = target(ctx, &id).await?;
    let mode = match q.messages.as_deref() {
        None => ctx.deleted_user_messages,
        Some("erase") => DeletedMessages::Erase,
        Some("anonymise") => DeletedMessages::Anonymise,
        Some(_) => return Err(super::bad("messages is erase or anonymise")),
    };
    let e = privacy::delete_user(ctx, a.user, mode, now_ms(), None).await?;
    Ok(Json(Deleted {
        conversations: e.conversations,
        events: e.events,
        media: e.media,
        devices: e.devices,
    }))
}

#[utoipa::path(get, path = "/api/v1/users/{id}/export",
    params(("id" = String, Path, description = "the product's user id")),
    responses((status = 200, content_type = "application/zip", description = "profile.json, conversations.json, messages.jsonl, media/<id>/<name>"),
        (status = "4XX", body = super::ApiError)))]
/// A zip of the user's data (admin keys): their profile, conversations, every event they
/// sent and the files they uploaded.
pub(super) async fn export_user(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, super::Refusal> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let a = target(&shared.ctx, &id).await?;
    let zip = privacy::export(&shared.ctx, a.user).await?;
    Ok(zip_response(zip, &a.username))
}

/// An archive as a download.
pub fn zip_response(zip: Vec<u8>, username: &str) -> Response {
    let name = format!("attachment; filename=\"natter-{username}.zip\"");
    let mut r = zip.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
