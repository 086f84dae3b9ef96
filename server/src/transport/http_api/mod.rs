//! The server API (README "Server API"): JSON over HTTP at `/api/v1` on the web endpoint,
//! for a product's backend. Authenticated by API keys (`Authorization: Bearer nk_…`,
//! [`crate::api::access`]); users are addressed by the product's own ids (a product
//! token's `sub`), acting through the same handlers and conversation shards as SDK traffic,
//! so order, durability and idempotency are the wire protocol's. Errors are JSON with the
//! wire protocol's codes. The OpenAPI 3.1 document ([`ApiDoc`]) is generated from these
//! handlers and types and served at `/api/v1/openapi.json`; `spec/openapi.json` is the
//! committed copy (a test keeps them equal).
use std::sync::{Arc, Weak};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::{validate, ConversationId, ServerError};
use utoipa::OpenApi;

use crate::api::access::{self, Scope};
use crate::api::accounts::{self, NewUser};
use crate::api::profiles;
use crate::api::{self, Ctx};
use crate::clock::now_ms;
use crate::conn::Shared;
use crate::conversation::{Actor, Mutation};

mod directory;
mod manage;
pub mod privacy;
pub mod types;
use types::*;

/// Largest request body, in bytes.
const MAX_BODY: usize = 64 * 1024;

/// The routes, for the web endpoint's router.
pub fn routes(shared: Weak<Shared>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/users", post(create_user).get(directory::find_users))
        .route("/api/v1/users/{id}/conversations", get(directory::user_conversations))
        .route("/api/v1/users/{id}/deactivate", post(directory::deactivate))
        .route("/api/v1/users/{id}/reactivate", post(directory::reactivate))
        .route("/api/v1/search", get(manage::search))
        .route(
            "/api/v1/users/{id}",
            get(get_user).patch(update_user).delete(privacy::delete_user),
        )
        .route("/api/v1/users/{id}/export", get(privacy::export_user))
        .route("/api/v1/conversations", post(create_conversation))
        .route(
            "/api/v1/conversations/{id}",
            get(get_conversation).patch(manage::rename).delete(manage::delete),
        )
        .route(
            "/api/v1/conversations/{id}/members/{user}/role",
            axum::routing::put(manage::set_role),
        )
        .route("/api/v1/conversations/{id}/read-state", get(manage::read_state))
        .route("/api/v1/conversations/{id}/read", post(manage::mark_read))
        .route("/api/v1/conversations/{id}/members", post(add_members))
        .route("/api/v1/conversations/{id}/members/{user}", delete(remove_member))
        .route("/api/v1/conversations/{id}/messages", post(send_message).get(history))
        .route(
            "/api/v1/conversations/{id}/messages/{seq}",
            get(get_message).patch(edit_message).delete(delete_message),
        )
        .route("/api/v1/conversations/{id}/moderation", post(moderate))
        .route("/api/v1/conversations/{id}/slow-mode", axum::routing::put(slow_mode))
        .route("/api/v1/conversations/{id}/retention", axum::routing::put(retention))
        .route("/api/v1/reports", get(reports))
        .route("/api/v1/keys", post(create_key).get(list_keys))
        .route("/api/v1/keys/{id}", delete(revoke_key))
        .route("/api/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/api/v1/webhooks/{id}", delete(delete_webhook))
        .route("/api/v1/webhooks/{id}/dead-letters", get(dead_letters))
        .route("/api/v1/webhooks/{id}/dead-letters/replay", post(replay_dead_letters))
        .route("/api/v1/{*rest}", axum::routing::any(unknown))
        .layer(axum::middleware::map_response(typed_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

async fn unknown() -> Refusal {
    Refusal(ServerError::new(ErrorCode::NotFound, "no such endpoint"))
}

/// Refusals axum makes itself (a path segment that is not a number, a bad query, a wrong
/// method) as typed JSON errors too.
async fn typed_errors(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = r.status();
    if json || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_string(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "send Content-Type: application/json".to_string(),
        _ => {
            let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap_or_default();
            String::from_utf8_lossy(&bytes).trim().to_string()
        }
    };
    let mut out = Refusal(ServerError::new(code, detail)).into_response();
    *out.status_mut() = status;
    out
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "natter server API",
        description = "For a product's backend: users, conversations, messages. Authenticate with an API key: `Authorization: Bearer nk_<id>_<secret>`.",
        version = "1"
    ),
    paths(
        create_user, get_user, update_user, privacy::delete_user, privacy::export_user, directory::find_users,
        directory::user_conversations, directory::deactivate, directory::reactivate, create_conversation,
        manage::rename, manage::delete, manage::set_role, manage::read_state, manage::mark_read, manage::search, get_conversation, add_members,
        remove_member, send_message, history, get_message, edit_message, delete_message,
        moderate, slow_mode, retention, reports, create_key, list_keys, revoke_key, create_webhook, list_webhooks, delete_webhook,
        dead_letters, replay_dead_letters
    ),
    components(schemas(ApiError, ErrorBody)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and committed.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// A refusal as HTTP: status from the code, body `{"error": {"code", "message"}}`.
pub(crate) struct Refusal(pub(crate) ServerError);

impl From<ServerError> for Refusal {
    fn from(e: ServerError) -> Self {
        Refusal(e)
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal(e.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = match e.code {
            ErrorCode::Unauthenticated | ErrorCode::TokenRevoked => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::NotMember => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::NameTaken | ErrorCode::UsernameTaken => StatusCode::CONFLICT,
            ErrorCode::TooLarge | ErrorCode::TextTooLong => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::StorageUnavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = ApiError {
            error: ErrorBody {
                code: e.code.as_str_name().trim_start_matches("ERROR_CODE_").to_string(),
                message: e.message.clone(),
            },
        };
        let mut r = (status, Json(body)).into_response();
        if e.retry_after_ms > 0 {
            if let Ok(v) = e.retry_after_ms.div_ceil(1000).to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

type Answer<T> = Result<Json<T>, Refusal>;

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(ServerError::new(ErrorCode::BadRequest, msg))
}

/// A JSON body, or a typed refusal (malformed, wrong fields, too large).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    match b {
        Ok(Json(t)) => Ok(t),
        Err(JsonRejection::BytesRejection(_)) => Err(Refusal(ServerError::new(
            ErrorCode::TooLarge,
            format!("the body is over {MAX_BODY} bytes"),
        ))),
        Err(e) => Err(bad(format!("malformed JSON body: {}", e.body_text()))),
    }
}

/// The server, while it runs.
fn shared_of(w: &Weak<Shared>) -> Result<Arc<Shared>, Refusal> {
    w.upgrade()
        .ok_or_else(|| Refusal(ServerError::new(ErrorCode::ShuttingDown, "the server is stopping")))
}

/// Check the request's API key for `scope`; the server's handler context.
async fn authorize(w: &Weak<Shared>, headers: &HeaderMap, scope: Scope) -> Result<Arc<Shared>, Refusal> {
    Ok(authorize_key(w, headers, scope).await?.0)
}

/// [`authorize`], and the key.
async fn authorize_key(
    w: &Weak<Shared>,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(Arc<Shared>, access::ApiKey), Refusal> {
    let shared = shared_of(w)?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Refusal(ServerError::new(
                ErrorCode::Unauthenticated,
                "Authorization: Bearer <API key> is required",
            ))
        })?;
    let key = access::check(&*shared.ctx.store, bearer.trim(), scope).await?;
    Ok((shared, key))
}

/// The product's user id as natter's actor. API requests act as the user's server-API
/// device (0): no connection, no session. A deleted or deactivated account is refused.
async fn actor(ctx: &Ctx, id: &str) -> Result<Actor, Refusal> {
    Ok(api::privacy::acting_for(ctx, id).await?)
}

/// The product's user id as natter's user, whatever the state of their account (what
/// an admin endpoint acts on).
async fn target(ctx: &Ctx, id: &str) -> Result<Actor, Refusal> {
    Ok(accounts::product_actor(ctx, id).await?)
}

async fn user_of(ctx: &Ctx, id: &str) -> Result<User, Refusal> {
    let a = target(ctx, id).await?;
    let p = profiles::profile(ctx, a.user).await?.unwrap_or_default();
    let deactivated = api::privacy::refusal(ctx, a.user).await?.is_some();
    Ok(User {
        deactivated,
        id: id.to_string(),
        user_id: a.user.0,
        username: a.username,
        display_name: p.display_name,
        avatar: p.avatar,
        status: p.status,
        bot: p.bot,
    })
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser,
    responses((status = 201, body = User, description = "made"), (status = 200, body = User, description = "it existed"),
        (status = "4XX", body = ApiError)))]
/// Make a user for the product's id (or get the one that exists).
async fn create_user(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    b: Result<Json<CreateUser>, JsonRejection>,
) -> Result<Response, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    accounts::check_product_id(&b.id)?;
    if let Some(u) = &b.username {
        validate::username(u).map_err(|e| bad(e.to_string()))?;
    }
    let ctx = &shared.ctx;
    let new = NewUser {
        subject: b.id.clone(),
        preferred_username: b.username,
        name: None,
        picture: None,
        bot: b.bot,
    };
    let (_, made) = accounts::ensure_user(ctx, &new, now_ms()).await?;
    if made && (b.display_name.is_some() || b.avatar.is_some() || b.status.is_some()) {
        let a = actor(ctx, &b.id).await?;
        let change = pb::SetProfile {
            display_name: b.display_name,
            avatar: b.avatar,
            status: b.status,
        };
        profiles::update(ctx, a.user, &a.username, change).await?;
    }
    let status = if made { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(user_of(ctx, &b.id).await?)).into_response())
}

#[utoipa::path(get, path = "/api/v1/users/{id}", params(("id" = String, Path, description = "the product's user id")),
    responses((status = 200, body = User), (status = "4XX", body = ApiError)))]
/// A user by the product's id.
async fn get_user(State(w): State<Weak<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Answer<User> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    Ok(Json(user_of(&shared.ctx, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", request_body = UpdateUser,
    params(("id" = String, Path, description = "the product's user id")),
    responses((status = 200, body = User), (status = "4XX", body = ApiError)))]
/// Change a user's display name, avatar or status (everyone who sees them hears of it).
async fn update_user(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<UpdateUser>, JsonRejection>,
) -> Answer<User> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let a = actor(&shared.ctx, &id).await?;
    let change = pb::SetProfile {
        display_name: b.display_name,
        avatar: b.avatar,
        status: b.status,
    };
    profiles::update(&shared.ctx, a.user, &a.username, change).await?;
    Ok(Json(user_of(&shared.ctx, &id).await?))
}

/// Usernames of the product's ids.
async fn usernames(ctx: &Ctx, ids: &[String]) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(actor(ctx, id).await?.username);
    }
    Ok(out)
}

async fn conversation(ctx: &Ctx, a: &Actor, conv: ConversationId) -> Result<Conversation, Refusal> {
    let s = api::summary(ctx, a.user, conv).await?;
    let Res::Members(m) = api::handle(
        ctx,
        a,
        Op::GetMembers(pb::GetMembers {
            conversation_id: conv.0,
        }),
    )
    .await?
    else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "members")));
    };
    let kind = Kind::from_wire(s.kind());
    Ok(Conversation {
        conversation_id: s.conversation_id,
        kind,
        name: s.name,
        last_seq: s.last_seq,
        members: m
            .members
            .into_iter()
            .map(|m| Member {
                user_id: m.user_id,
                username: m.username,
                role: pb::Role::try_from(m.role).unwrap_or(pb::Role::Member).into(),
                joined_seq: m.joined_seq,
            })
            .collect(),
        retention_secs: s.retention_secs,
        removed_through: s.removed_through,
    })
}

fn summary_id(r: Res) -> Result<ConversationId, Refusal> {
    match r {
        Res::Conversation(c) => Ok(ConversationId(c.conversation_id)),
        _ => Err(Refusal(ServerError::new(ErrorCode::Internal, "unexpected answer"))),
    }
}

#[utoipa::path(post, path = "/api/v1/conversations", request_body = CreateConversation,
    responses((status = 201, body = Conversation), (status = "4XX", body = ApiError)))]
/// Make a direct conversation, a group or a channel, as `creator`.
async fn create_conversation(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    b: Result<Json<CreateConversation>, JsonRejection>,
) -> Result<Response, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let ctx = &shared.ctx;
    let creator = actor(ctx, &b.creator).await?;
    let members = usernames(ctx, &b.members).await?;
    let name = b.name.unwrap_or_default();
    let id = match b.kind {
        Kind::Direct => {
            let [peer] = <[String; 1]>::try_from(members)
                .map_err(|_| bad("a direct conversation has exactly one other member"))?;
            let op = Op::CreateDirect(pb::CreateDirect {
                username: peer,
                encrypted: false,
            });
            summary_id(api::handle(ctx, &creator, op).await?)?
        }
        Kind::Group => {
            let op = Op::CreateGroup(pb::CreateGroup {
                name,
                usernames: members,
            });
            summary_id(api::handle(ctx, &creator, op).await?)?
        }
        Kind::Channel => {
            let id = summary_id(api::handle(ctx, &creator, Op::CreateChannel(pb::CreateChannel { name })).await?)?;
            if !members.is_empty() {
                let op = Op::AddMembers(pb::AddMembers {
                    conversation_id: id.0,
                    usernames: members,
                });
                api::handle(ctx, &creator, op).await?;
            }
            id
        }
    };
    Ok((StatusCode::CREATED, Json(conversation(ctx, &creator, id).await?)).into_response())
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}", params(("id" = u64, Path), AsUser),
    responses((status = 200, body = Conversation), (status = "4XX", body = ApiError)))]
/// A conversation and its members, as one of them sees it.
async fn get_conversation(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<AsUser>,
) -> Answer<Conversation> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    Ok(Json(conversation(&shared.ctx, &a, ConversationId(id)).await?))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/members", request_body = AddMembers,
    params(("id" = u64, Path)), responses((status = 200, body = Conversation), (status = "4XX", body = ApiError)))]
/// Add members, as an admin or owner of a group or channel.
async fn add_members(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<AddMembers>, JsonRejection>,
) -> Answer<Conversation> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let ctx = &shared.ctx;
    let by = actor(ctx, &b.by).await?;
    let op = Op::AddMembers(pb::AddMembers {
        conversation_id: id,
        usernames: usernames(ctx, &b.users).await?,
    });
    api::handle(ctx, &by, op).await?;
    Ok(Json(conversation(ctx, &by, ConversationId(id)).await?))
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}/members/{user}",
    params(("id" = u64, Path), ("user" = String, Path, description = "who leaves or is removed"), AsUser),
    responses((status = 204), (status = "4XX", body = ApiError)))]
/// Remove a member, as `user` (an admin or owner; or the member, who then leaves).
async fn remove_member(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path((id, user)): Path<(u64, String)>,
    Query(q): Query<AsUser>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let ctx = &shared.ctx;
    let by = actor(ctx, &q.user).await?;
    let who = actor(ctx, &user).await?;
    let op = if who.user == by.user {
        Op::Leave(pb::LeaveConversation { conversation_id: id })
    } else {
        Op::RemoveMember(pb::RemoveMember {
            conversation_id: id,
            user_id: who.user.0,
        })
    };
    api::handle(ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", request_body = SendMessage,
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header,
        description = "1–64 of A-Z a-z 0-9 _ -: a repeat with the same key sends once")),
    responses((status = 201, body = Sent, description = "committed"), (status = 200, body = Sent, description = "a repeat"),
        (status = "4XX", body = ApiError)))]
/// Send a message as `sender`: committed durably, in order with every other send.
async fn send_message(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<SendMessage>, JsonRejection>,
) -> Result<Response, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let ctx = &shared.ctx;
    let sender = actor(ctx, &b.sender).await?;
    let client_msg_id = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v.to_str().map_err(|_| bad("Idempotency-Key must be text"))?.to_string();
            validate::client_msg_id(&k).map_err(|_| bad("Idempotency-Key is 1-64 of A-Z a-z 0-9 _ -"))?;
            k
        }
        None => format!("api-{}", hex::encode(rand::random::<[u8; 12]>())),
    };
    validate::count(
        "attachments",
        b.attachments.len(),
        natter_protocol::limits::MAX_ATTACHMENTS,
    )
    .map_err(|e| Refusal(e.into()))?;
    let kind = if b.text.is_empty() && !b.attachments.is_empty() {
        pb::MessageKind::File
    } else {
        pb::MessageKind::Text
    };
    let mut body = pb::MessageBody {
        kind: kind as i32,
        text: b.text,
        reply_to_seq: b.reply_to_seq,
        attachments: b
            .attachments
            .into_iter()
            .map(|media_id| pb::Attachment {
                media_id,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    validate::message_body(&body, ctx.max_text_chars).map_err(|e| Refusal(e.into()))?;
    if id == 0 {
        return Err(bad("conversation id is required"));
    }
    ctx.rates.send(sender.user)?;
    api::media::attach(ctx, &sender, ConversationId(id), &client_msg_id, &mut body).await?;
    let body = match &ctx.presend {
        Some(hook) => hook.check(id, (sender.user.0, &sender.username), body).await?,
        None => body,
    };
    let rx = ctx
        .shards
        .submit(ConversationId(id), sender, Mutation::Send { client_msg_id, body })
        .await?;
    let c = rx
        .await
        .map_err(|_| Refusal(ServerError::new(ErrorCode::ShuttingDown, "the server is stopping")))??;
    let status = if c.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let sent = Sent {
        conversation_id: id,
        seq: c.seq.0,
        server_time_ms: c.server_time_ms,
        duplicate: c.duplicate,
    };
    Ok((status, Json(sent)).into_response())
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", params(("id" = u64, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = "4XX", body = ApiError)))]
/// A page of the conversation's log, as a member reads it.
async fn history(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<HistoryQuery>,
) -> Answer<HistoryPage> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    let anchor = match (q.before, q.after) {
        (Some(_), Some(_)) => return Err(bad("give before or after, not both")),
        (_, Some(a)) => pb::get_history::Anchor::After(a),
        (b, None) => pb::get_history::Anchor::Before(b.unwrap_or(0)),
    };
    let op = Op::History(pb::GetHistory {
        conversation_id: id,
        anchor: Some(anchor),
        limit: q.limit.unwrap_or(0),
    });
    let Res::History(page) = api::handle(&shared.ctx, &a, op).await? else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "unexpected answer")));
    };
    Ok(Json(HistoryPage {
        events: page.events.iter().map(Event::from).collect(),
        has_more: page.has_more,
        last_seq: page.last_seq,
        removed_through: page.removed_through,
    }))
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages/{seq}",
    params(("id" = u64, Path), ("seq" = u64, Path), AsUser),
    responses((status = 200, body = Event), (status = "4XX", body = ApiError)))]
/// One event of the log.
async fn get_message(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path((id, seq)): Path<(u64, u64)>,
    Query(q): Query<AsUser>,
) -> Answer<Event> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    if seq == 0 {
        return Err(bad("seq starts at 1"));
    }
    let op = Op::History(pb::GetHistory {
        conversation_id: id,
        anchor: Some(pb::get_history::Anchor::After(seq - 1)),
        limit: 1,
    });
    let Res::History(page) = api::handle(&shared.ctx, &a, op).await? else {
        return Err(Refusal(ServerError::new(ErrorCode::Internal, "unexpected answer")));
    };
    page.events
        .iter()
        .find(|e| e.seq == seq)
        .map(|e| Json(Event::from(e)))
        .ok_or_else(|| Refusal(ServerError::new(ErrorCode::NotFound, format!("no event {seq}"))))
}

#[utoipa::path(patch, path = "/api/v1/conversations/{id}/messages/{seq}", request_body = EditMessage,
    params(("id" = u64, Path), ("seq" = u64, Path)),
    responses((status = 200, body = Sent), (status = "4XX", body = ApiError)))]
/// Change a message's text, as its sender.
async fn edit_message(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path((id, seq)): Path<(u64, u64)>,
    b: Result<Json<EditMessage>, JsonRejection>,
) -> Answer<Sent> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let a = actor(&shared.ctx, &b.sender).await?;
    let op = Op::Edit(pb::EditMessage {
        conversation_id: id,
        target_seq: seq,
        text: b.text,
    });
    sent(api::handle(&shared.ctx, &a, op).await?)
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}/messages/{seq}",
    params(("id" = u64, Path), ("seq" = u64, Path), AsUser),
    responses((status = 200, body = Sent), (status = "4XX", body = ApiError)))]
/// Delete a message, as its sender (or an admin of the conversation).
async fn delete_message(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path((id, seq)): Path<(u64, u64)>,
    Query(q): Query<AsUser>,
) -> Answer<Sent> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let a = actor(&shared.ctx, &q.user).await?;
    let op = Op::DeleteMessage(pb::DeleteMessage {
        conversation_id: id,
        target_seq: seq,
    });
    sent(api::handle(&shared.ctx, &a, op).await?)
}

fn sent(r: Res) -> Answer<Sent> {
    match r {
        Res::Sent(s) => Ok(Json(Sent {
            conversation_id: s.conversation_id,
            seq: s.seq,
            server_time_ms: s.server_time_ms,
            duplicate: s.duplicate,
        })),
        _ => Err(Refusal(ServerError::new(ErrorCode::Internal, "unexpected answer"))),
    }
}

fn key_info(k: access::ApiKey) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        scope: format!("{:?}", k.scope).to_lowercase(),
        created_ms: k.created_ms,
        revoked: k.revoked,
    }
}

#[utoipa::path(post, path = "/api/v1/keys", request_body = CreateApiKey,
    responses((status = 201, body = NewApiKey), (status = "4XX", body = ApiError)))]
/// Make an API key (admin keys only).
async fn create_key(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    b: Result<Json<CreateApiKey>, JsonRejection>,
) -> Result<Response, Refusal> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let b = body(b)?;
    let scope: Scope = b.scope.parse().map_err(bad)?;
    let new = access::create(&*shared.ctx.store, &b.name, scope, now_ms()).await?;
    let out = NewApiKey {
        key: key_info(new.key),
        secret: new.secret.0,
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(get, path = "/api/v1/keys", responses((status = 200, body = Vec<ApiKeyInfo>), (status = "4XX", body = ApiError)))]
/// Every API key (admin keys only).
async fn list_keys(State(w): State<Weak<Shared>>, headers: HeaderMap) -> Answer<Vec<ApiKeyInfo>> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    let keys = access::list(&*shared.ctx.store).await?;
    Ok(Json(keys.into_iter().map(key_info).collect()))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = ApiError)))]
/// Revoke an API key (admin keys only).
async fn revoke_key(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Admin).await?;
    if access::revoke(&*shared.ctx.store, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Refusal(ServerError::new(ErrorCode::NotFound, "no such live key")))
    }
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/moderation", request_body = Moderate,
    params(("id" = u64, Path)), responses((status = 204), (status = "4XX", body = ApiError)))]
/// Mute (until a time), unmute, ban or unban a user, as an owner or admin.
async fn moderate(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<Moderate>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let ctx = &shared.ctx;
    let by = actor(ctx, &b.by).await?;
    let whom = actor(ctx, &b.user).await?;
    let action = match b.action.as_str() {
        "mute" => pb::ModerationAction::Mute,
        "unmute" => pb::ModerationAction::Unmute,
        "ban" => pb::ModerationAction::Ban,
        "unban" => pb::ModerationAction::Unban,
        _ => return Err(bad("action is mute, unmute, ban or unban")),
    };
    let op = Op::Moderate(pb::Moderate {
        conversation_id: id,
        user_id: whom.user.0,
        action: action as i32,
        until_ms: b.until_ms,
    });
    api::handle(ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/conversations/{id}/slow-mode", request_body = SlowMode,
    params(("id" = u64, Path)), responses((status = 204), (status = "4XX", body = ApiError)))]
/// Set a channel's slow mode, as an owner or admin.
async fn slow_mode(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<SlowMode>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let by = actor(&shared.ctx, &b.by).await?;
    let op = Op::SetSlowMode(pb::SetSlowMode {
        conversation_id: id,
        interval_secs: b.interval_secs,
    });
    api::handle(&shared.ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/conversations/{id}/retention", request_body = Retention,
    params(("id" = u64, Path)), responses((status = 204), (status = "4XX", body = ApiError)))]
/// Set how long a conversation keeps its events (PROTOCOL.md §5.17), as its owner.
async fn retention(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    b: Result<Json<Retention>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    let shared = authorize(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let by = actor(&shared.ctx, &b.by).await?;
    let op = Op::SetRetention(pb::SetRetention {
        conversation_id: id,
        retention_secs: b.retention_secs,
    });
    api::handle(&shared.ctx, &by, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/reports", params(ReportsQuery),
    responses((status = 200, body = Vec<Report>), (status = "4XX", body = ApiError)))]
/// Members' reports of messages, for the product's moderators.
async fn reports(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Query(q): Query<ReportsQuery>,
) -> Answer<Vec<Report>> {
    let shared = authorize(&w, &headers, Scope::Read).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let list = api::moderation::reports(&shared.ctx, q.after.as_deref().unwrap_or(""), limit).await?;
    Ok(Json(
        list.into_iter()
            .map(|(key, r)| Report {
                key,
                conversation_id: r.conversation_id,
                seq: r.seq,
                reporter_user_id: r.reporter.0,
                reporter_username: r.reporter_username,
                sender_user_id: r.sender.0,
                text: r.text,
                reason: r.reason,
                created_ms: r.created_ms,
            })
            .collect(),
    ))
}

fn webhook_info(s: crate::webhooks::Subscription, with_secret: bool) -> Webhook {
    Webhook {
        id: s.id,
        url: s.url,
        events: s.events,
        secret: with_secret.then_some(s.secret),
        created_ms: s.created_ms,
    }
}

#[utoipa::path(post, path = "/api/v1/webhooks", request_body = CreateWebhook,
    responses((status = 201, body = Webhook, description = "its secret is shown only here"), (status = "4XX", body = ApiError)))]
/// Subscribe a URL to event types. Deliveries are signed with the returned secret.
async fn create_webhook(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    b: Result<Json<CreateWebhook>, JsonRejection>,
) -> Result<Response, Refusal> {
    let (shared, key) = authorize_key(&w, &headers, Scope::Write).await?;
    let b = body(b)?;
    let sub = shared
        .ctx
        .webhooks
        .subscribe(&key.id, &b.url, b.events, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(webhook_info(sub, true))).into_response())
}

#[utoipa::path(get, path = "/api/v1/webhooks", responses((status = 200, body = Vec<Webhook>), (status = "4XX", body = ApiError)))]
/// This API key's webhooks.
async fn list_webhooks(State(w): State<Weak<Shared>>, headers: HeaderMap) -> Answer<Vec<Webhook>> {
    let (shared, key) = authorize_key(&w, &headers, Scope::Read).await?;
    let subs = shared.ctx.webhooks.list(&key.id).await;
    Ok(Json(subs.into_iter().map(|s| webhook_info(s, false)).collect()))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = ApiError)))]
/// Remove a webhook.
async fn delete_webhook(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let (shared, key) = authorize_key(&w, &headers, Scope::Write).await?;
    shared.ctx.webhooks.unsubscribe(&key.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/dead-letters", params(("id" = String, Path)),
    responses((status = 200, body = Vec<DeadLetter>), (status = "4XX", body = ApiError)))]
/// Deliveries that failed every attempt.
async fn dead_letters(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Vec<DeadLetter>> {
    let (shared, key) = authorize_key(&w, &headers, Scope::Read).await?;
    Ok(Json(shared.ctx.webhooks.dead_letters(&key.id, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/dead-letters/replay", params(("id" = String, Path)),
    responses((status = 200, body = Replayed), (status = "4XX", body = ApiError)))]
/// Deliver the dead letters again, once each; delivered ones leave the list.
async fn replay_dead_letters(
    State(w): State<Weak<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Replayed> {
    let (shared, key) = authorize_key(&w, &headers, Scope::Write).await?;
    let (delivered, still_dead) = shared.ctx.webhooks.replay(&key.id, &id).await?;
    Ok(Json(Replayed { delivered, still_dead }))
}

#[cfg(test)]
mod tests {
    /// The committed document is the generated one: regenerate with
    /// `NATTER_WRITE_OPENAPI=1 cargo test -p natter-server --lib openapi`.
    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/openapi.json");
        let generated = super::openapi_json();
        if std::env::var("NATTER_WRITE_OPENAPI").is_ok() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "spec/openapi.json is stale: NATTER_WRITE_OPENAPI=1 cargo test -p natter-server --lib openapi"
        );
    }
}
