//! Media on the web endpoint (PROTOCOL.md §11.6): the tus 1.0 resumable-upload protocol
//! (core, creation, creation-with-upload, termination, checksum, expiration) for clients
//! without upload streams, and `GET /media/<id>` with HTTP `Range` for `<img>`, `<video>`
//! and downloads. Authenticated by the access token (`Authorization: Bearer`) or, for GET,
//! a short-lived signed URL from `MediaUrl`. Only maps HTTP onto the media layer and the
//! api's authorization; every rule lives there.
use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use natter_protocol::pb::{self, ErrorCode};
use natter_protocol::ServerError;
use serde::Deserialize;
use sha2::Digest;

use crate::api;
use crate::api::access::Scope;
use crate::conn::Shared;
use crate::conversation::Actor;
use crate::media;

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The message of a PATCH refused for its `Upload-Checksum`.
const CHECKSUM_MISMATCH: &str = "checksum mismatch: nothing of this PATCH was stored";
/// A PATCH with `Upload-Checksum` is held in memory until verified: at most this much.
const MAX_CHECKED_PATCH: usize = 64 << 20;

/// The routes, for the web endpoint's router.
pub fn routes(shared: Weak<Shared>) -> Router {
    Router::new()
        .route("/tus", any(tus_collection))
        .route("/tus/{id}", any(tus_upload))
        .route("/media/{id}", get(get_media).head(get_media))
        .route("/export/{user}", get(get_export))
        .with_state(shared)
}

/// A refusal as HTTP: the status, and the natter error code in `Natter-Error` (and the
/// body) so a client can tell `QUOTA_EXCEEDED` from `TOO_LARGE`.
fn refuse(e: &ServerError) -> Response {
    let status = match e.code {
        // tus checksum extension: 460 Checksum Mismatch.
        ErrorCode::MediaRejected if e.message == CHECKSUM_MISMATCH => StatusCode::from_u16(460).expect("valid"),
        ErrorCode::OffsetMismatch => StatusCode::CONFLICT,
        ErrorCode::Unauthenticated | ErrorCode::TokenRevoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::NotMember => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge | ErrorCode::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::MediaRejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::MediaNotReady | ErrorCode::Conflict => StatusCode::LOCKED,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::StorageUnavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let name = e.code.as_str_name().trim_start_matches("ERROR_CODE_");
    let mut r = (status, format!("{name}: {}\n", e.message)).into_response();
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert(HeaderName::from_static("natter-error"), v);
    }
    if e.retry_after_ms > 0 {
        let secs = e.retry_after_ms.div_ceil(1000).to_string();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
    }
    tus_headers(r.headers_mut());
    r
}

fn bad(msg: &str) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

/// Headers every tus response carries (and CORS, so a page elsewhere can upload).
fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Upload-Offset, Upload-Length, Upload-Expires, Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Natter-Error, Natter-Media-Id",
        ),
    );
}

fn shared_of(w: &Weak<Shared>) -> Result<Arc<Shared>, ServerError> {
    w.upgrade()
        .ok_or_else(|| ServerError::new(ErrorCode::ShuttingDown, "the server is stopping"))
}

/// The device an `Authorization: Bearer` access token belongs to.
async fn bearer(shared: &Shared, headers: &HeaderMap, scope: Scope) -> Result<Actor, ServerError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ServerError::new(
                ErrorCode::Unauthenticated,
                "Authorization: Bearer <access token or API key> is required",
            )
        })?
        .trim();
    if !token.starts_with(api::access::KEY_PREFIX) {
        return api::media::actor_for_token(&shared.ctx, token).await;
    }
    // A product's backend (README "Server API"): its API key, acting for the user the
    // `Natter-User` header names by the product's id.
    api::access::check(&*shared.ctx.store, token, scope).await?;
    let id = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ServerError::new(ErrorCode::BadRequest, "with an API key, Natter-User names the user"))?;
    api::privacy::acting_for(&shared.ctx, id).await
}

/// The header that names the product's user an API key acts for.
const USER_HEADER: &str = "natter-user";

fn header_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, ServerError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| bad(&format!("{name} must be a non-negative integer"))),
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
fn metadata(h: &HeaderMap) -> Result<std::collections::HashMap<String, String>, ServerError> {
    let mut out = std::collections::HashMap::new();
    let Some(raw) = h.get("upload-metadata") else {
        return Ok(out);
    };
    let raw = raw.to_str().map_err(|_| bad("Upload-Metadata must be ASCII"))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(' ').unwrap_or((pair, ""));
        let v = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| bad("Upload-Metadata values must be base64"))?;
        out.insert(
            k.to_string(),
            String::from_utf8(v).map_err(|_| bad("Upload-Metadata values must be UTF-8"))?,
        );
    }
    Ok(out)
}

/// `None` if the request speaks tus 1.0.0, else the 412 to answer it with.
fn wrong_tus_version(h: &HeaderMap) -> Option<Response> {
    match h.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => None,
        _ => {
            let mut r = StatusCode::PRECONDITION_FAILED.into_response();
            r.headers_mut()
                .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
            tus_headers(r.headers_mut());
            Some(r)
        }
    }
}

/// RFC 9110 date of an epoch-ms time.
fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn options(shared: &Shared) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    tus_headers(h);
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-checksum-algorithm", HeaderValue::from_static("sha1,sha256"));
    let max = shared.ctx.media.config.max_upload_bytes.to_string();
    h.insert("tus-max-size", HeaderValue::from_str(&max).expect("digits"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, HEAD, PATCH, DELETE, OPTIONS, GET"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Checksum, Upload-Defer-Length, Upload-Concat, Tus-Resumable, X-HTTP-Method-Override",
        ),
    );
    r
}

/// The method, honouring `X-HTTP-Method-Override` (tus clients use it behind proxies that
/// only pass GET and POST).
fn method_of(method: &Method, h: &HeaderMap) -> Method {
    h.get("x-http-method-override")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| method.clone())
}

async fn tus_collection(State(w): State<Weak<Shared>>, method: Method, headers: HeaderMap, body: Body) -> Response {
    let shared = match shared_of(&w) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    match method_of(&method, &headers) {
        Method::OPTIONS => options(&shared),
        Method::POST => {
            if let Some(r) = wrong_tus_version(&headers) {
                return r;
            }
            match create(&shared, &headers, body).await {
                Ok(r) => r,
                Err(e) => refuse(&e),
            }
        }
        _ => refuse(&ServerError::new(ErrorCode::BadRequest, "POST creates an upload"))
            .map_status(StatusCode::METHOD_NOT_ALLOWED),
    }
}

trait MapStatus {
    fn map_status(self, s: StatusCode) -> Response;
}

impl MapStatus for Response {
    fn map_status(mut self, s: StatusCode) -> Response {
        *self.status_mut() = s;
        self
    }
}

/// tus creation (and creation-with-upload): `Upload-Length`, `Upload-Metadata` with
/// `conversation` (its id), `filename` and `filetype`.
async fn create(shared: &Shared, h: &HeaderMap, body: Body) -> Result<Response, ServerError> {
    let actor = bearer(shared, h, Scope::Write).await?;
    if h.contains_key("upload-defer-length") {
        return Err(bad("Upload-Defer-Length is not supported: declare Upload-Length"));
    }
    let size = header_u64(h, "upload-length")?.ok_or_else(|| bad("Upload-Length is required"))?;
    let meta = metadata(h)?;
    let conversation_id: u64 = meta
        .get("conversation")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("Upload-Metadata must name the conversation (its id)"))?;
    let name = meta
        .get("filename")
        .or_else(|| meta.get("name"))
        .cloned()
        .unwrap_or_default();
    let mime = meta
        .get("filetype")
        .or_else(|| meta.get("type"))
        .filter(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".into());
    let sha256 = match meta.get("sha256") {
        Some(hex_sum) => hex::decode(hex_sum).map_err(|_| bad("sha256 metadata must be hex"))?,
        None => Vec::new(),
    };
    let req = pb::CreateUpload {
        conversation_id,
        size,
        mime,
        name,
        encrypted: meta.get("encrypted").is_some_and(|v| v == "1" || v == "true"),
        sha256,
    };
    let info = match api::media::handle(&shared.ctx, &actor, pb::request::Op::CreateUpload(req)).await? {
        pb::response::Result::Upload(u) => u,
        _ => return Err(ServerError::new(ErrorCode::Internal, "unexpected answer")),
    };
    let mut offset = 0;
    if is_offset_stream(h) {
        offset = patch_body(shared, &actor, &info.upload_id, 0, h, body).await?;
    }
    let mut r = StatusCode::CREATED.into_response();
    let hs = r.headers_mut();
    tus_headers(hs);
    let location = format!("/tus/{}", info.upload_id);
    hs.insert(header::LOCATION, HeaderValue::from_str(&location).expect("base64url"));
    hs.insert(
        "upload-offset",
        HeaderValue::from_str(&offset.to_string()).expect("digits"),
    );
    hs.insert(
        "upload-expires",
        HeaderValue::from_str(&http_date(info.expires_ms)).expect("date"),
    );
    hs.insert(
        "natter-media-id",
        HeaderValue::from_str(&info.media_id).expect("base64url"),
    );
    Ok(r)
}

fn is_offset_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/offset+octet-stream"))
}

/// Write a PATCH (or creation-with-upload) body at `offset`; the new offset.
async fn patch_body(
    shared: &Shared,
    actor: &Actor,
    id: &str,
    offset: u64,
    h: &HeaderMap,
    body: Body,
) -> Result<u64, ServerError> {
    let noop = |_: pb::UploadProgress| {};
    let media = &shared.ctx.media;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let rec = match h.get("upload-checksum").and_then(|v| v.to_str().ok()) {
        None => {
            media
                .write(actor.user, id, offset, tokio_util::io::StreamReader::new(stream), &noop)
                .await?
        }
        Some(sum) => {
            // tus checksum: the body is verified before any of it is stored.
            let (algo, expected) = sum
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("Upload-Checksum is `<algorithm> <base64>`"))?;
            let expected = base64::engine::general_purpose::STANDARD
                .decode(expected.trim())
                .map_err(|_| bad("Upload-Checksum digest must be base64"))?;
            let mut all = Vec::new();
            let mut s = Box::pin(stream);
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| bad(&format!("upload body failed: {e}")))?;
                if all.len() + chunk.len() > MAX_CHECKED_PATCH {
                    return Err(ServerError::new(
                        ErrorCode::TooLarge,
                        "a checksummed PATCH may carry at most 64 MiB",
                    ));
                }
                all.extend_from_slice(&chunk);
            }
            let actual = match algo {
                "sha1" => ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &all)
                    .as_ref()
                    .to_vec(),
                "sha256" => sha2::Sha256::digest(&all).to_vec(),
                _ => {
                    return Err(ServerError::new(
                        ErrorCode::BadRequest,
                        "Upload-Checksum algorithm: sha1 or sha256",
                    ))
                }
            };
            if actual != expected {
                return Err(ServerError::new(ErrorCode::MediaRejected, CHECKSUM_MISMATCH));
            }
            media
                .write(actor.user, id, offset, std::io::Cursor::new(all), &noop)
                .await?
        }
    };
    Ok(rec.committed())
}

async fn tus_upload(
    State(w): State<Weak<Shared>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let shared = match shared_of(&w) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    let method = method_of(&method, &headers);
    if method == Method::OPTIONS {
        return options(&shared);
    }
    if let Some(r) = wrong_tus_version(&headers) {
        return r;
    }
    let result = async {
        let actor = bearer(&shared, &headers, Scope::Write).await?;
        let media = &shared.ctx.media;
        match method {
            Method::HEAD => {
                let rec = media.status(actor.user, &id).await?;
                let mut r = StatusCode::OK.into_response();
                let h = r.headers_mut();
                tus_headers(h);
                h.insert(
                    "upload-offset",
                    HeaderValue::from_str(&rec.committed().to_string()).expect("digits"),
                );
                h.insert(
                    "upload-length",
                    HeaderValue::from_str(&rec.size.to_string()).expect("digits"),
                );
                h.insert(
                    "upload-expires",
                    HeaderValue::from_str(&http_date(rec.expires_ms)).expect("date"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(r)
            }
            Method::PATCH => {
                if !is_offset_stream(&headers) {
                    return Ok(StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response());
                }
                let offset = header_u64(&headers, "upload-offset")?.ok_or_else(|| bad("Upload-Offset is required"))?;
                let committed = patch_body(&shared, &actor, &id, offset, &headers, body).await?;
                let rec = media.upload_of(actor.user, &id).await.ok();
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                tus_headers(h);
                h.insert(
                    "upload-offset",
                    HeaderValue::from_str(&committed.to_string()).expect("digits"),
                );
                if let Some(rec) = rec {
                    h.insert(
                        "upload-expires",
                        HeaderValue::from_str(&http_date(rec.expires_ms)).expect("date"),
                    );
                }
                Ok(r)
            }
            Method::DELETE => {
                media.cancel(actor.user, &id).await?;
                let mut r = StatusCode::NO_CONTENT.into_response();
                tus_headers(r.headers_mut());
                Ok(r)
            }
            _ => Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
        }
    }
    .await;
    match result {
        Ok(r) => r,
        // An expired or cancelled upload is gone for tus clients (410 would need the
        // server to remember it; 404 tells them to start over just the same).
        Err(e) => refuse(&e),
    }
}

/// The query of a signed media URL.
#[derive(Debug, Deserialize)]
struct Signed {
    #[serde(default)]
    v: i32,
    exp: Option<u64>,
    u: Option<u64>,
    sig: Option<String>,
}

/// `GET /export/<user>?exp=&sig=`: the user's archive, by the signed path `ExportAccount`
/// gave them (PROTOCOL.md §5.16).
async fn get_export(State(w): State<Weak<Shared>>, Path(user): Path<u64>, Query(q): Query<Signed>) -> Response {
    let shared = match shared_of(&w) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    let user = natter_protocol::UserId(user);
    let served = async {
        let (Some(exp), Some(sig)) = (q.exp, q.sig.as_deref()) else {
            return Err(bad("an export link is signed"));
        };
        api::privacy::check_export_url(&shared.ctx, user, exp, sig).await?;
        let name = api::profiles::profile(&shared.ctx, user)
            .await?
            .map(|p| p.username)
            .unwrap_or_default();
        Ok((api::privacy::export(&shared.ctx, user).await?, name))
    };
    match served.await {
        Ok((zip, name)) => super::http_api::privacy::zip_response(zip, &name),
        Err(e) => refuse(&e),
    }
}

/// `GET /media/<id>`: the file (or `?v=` a thumbnail), whole or one `Range`.
async fn get_media(
    State(w): State<Weak<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let shared = match shared_of(&w) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    match serve_media(&shared, &id, &q, &method, &headers).await {
        Ok(r) => r,
        Err(e) => refuse(&e),
    }
}

async fn serve_media(
    shared: &Shared,
    id: &str,
    q: &Signed,
    method: &Method,
    h: &HeaderMap,
) -> Result<Response, ServerError> {
    let ctx = &shared.ctx;
    let variant = pb::MediaVariant::try_from(q.v).map_err(|_| bad("unknown variant"))?;
    let user = match (&q.sig, q.exp, q.u) {
        (Some(sig), Some(exp), Some(u)) => {
            api::media::check_url(ctx, id, variant, exp, natter_protocol::UserId(u), sig).await?
        }
        _ => bearer(shared, h, Scope::Read).await?.user,
    };
    let rec = api::media::readable(ctx, user, id).await?;
    let (total, mime) = media::Media::variant_of(&rec, variant)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "no such variant"))?;
    let range = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, total) {
            RangeAsk::One(a, b) => Some((a, b)),
            RangeAsk::Ignore => None,
            RangeAsk::Unsatisfiable => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"),
                );
                return Ok(r);
            }
        },
    };
    let (start, end) = range.unwrap_or((0, total));
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(ctx.media.range_stream(&rec, variant, start, end))
    };
    let mut r = Response::builder().status(status).body(body).expect("valid response");
    let hs = r.headers_mut();
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_str(&(end - start).to_string()).expect("digits"),
    );
    if range.is_some() {
        let cr = format!("bytes {start}-{}/{total}", end.saturating_sub(1));
        hs.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
    }
    // Nothing the server stores may run as a page of this origin: types that cannot run
    // script are shown inline, everything else is a download; never sniffed; sandboxed.
    let inline = media::process::inline_safe(&mime) && !rec.encrypted;
    let served_type = if inline {
        mime.as_str()
    } else {
        "application/octet-stream"
    };
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(served_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Always an attachment: `<img>` and `<video>` ignore it, and a file opened on its own
    // (a polyglot, say) is saved, never rendered as a page of this origin.
    let disposition = format!("attachment; filename*=UTF-8''{}", percent(&rec.name));
    hs.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("ascii"),
    );
    hs.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'; media-src 'self'"),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    if let Some(sum) = rec.ready.as_ref().map(|r| hex::encode(&r.sha256)) {
        let etag = format!("\"{sum}-{}\"", q.v);
        hs.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    }
    Ok(r)
}

/// RFC 3986 percent-encoding of a file name for `filename*`.
fn percent(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a `Range` header asks of a `total`-byte body.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// One satisfiable range, `start..end`.
    One(u64, u64),
    /// Not a single byte range we serve (several ranges, another unit): send it all.
    Ignore,
    /// No byte of it exists.
    Unsatisfiable,
}

fn parse_range(h: &str, total: u64) -> RangeAsk {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAsk::Ignore;
    };
    if spec.contains(',') {
        return RangeAsk::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(last)) if start <= last => {
            if start >= total {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::One(start, (last + 1).min(total))
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= total {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::One(start, total)
            }
        }
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 || total == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::One(total.saturating_sub(suffix), total)
            }
        }
        _ => RangeAsk::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAsk::One(0, 10));
        assert_eq!(parse_range("bytes=90-200", 100), RangeAsk::One(90, 100));
        assert_eq!(parse_range("bytes=50-", 100), RangeAsk::One(50, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeAsk::One(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), RangeAsk::One(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAsk::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeAsk::Ignore);
        assert_eq!(parse_range("bytes=9-0", 100), RangeAsk::Ignore);
    }

    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(percent("a b/ü.png"), "a%20b%2F%C3%BC.png");
    }
}
