//! The web endpoint (TCP): the chat page from `web_root`, `/natter.json` (how a page
//! reaches this server: WebTransport URL and certificate hashes, WebSocket URL) and the
//! WebSocket upgrade at `/ws`. Plain HTTP on loopback, TLS elsewhere (`web_tls`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use natter_protocol::{limits, wsmux};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::conn::Shared;
use crate::transport::webtransport::WtCerts;

/// What the handlers need.
#[derive(Clone, Debug)]
struct WebState {
    shared: Weak<Shared>,
    tls: bool,
    web_port: u16,
    webtransport: Option<(u16, Arc<WtCerts>)>,
}

/// Every HTTP request on the web endpoint, counted by route template (a closed set: the
/// routes above, "static" for the page's files) and status, and timed to its response's
/// head (`natter_http_requests_total`, `natter_http_request_duration_seconds`).
async fn count_http(
    State(shared): State<Weak<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "static".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    if let Some(shared) = shared.upgrade() {
        shared.ctx.metrics.http(route, res.status().as_u16(), started.elapsed());
    }
    res
}

/// `/natter.json`: where and how a browser connects.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    protocol: &'static str,
    webtransport: Option<WebTransportInfo>,
    websocket: WebSocketInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebTransportInfo {
    url: String,
    /// Hex SHA-256 of certificates to pass as `serverCertificateHashes` (empty when the
    /// certificate is CA-issued).
    certificate_hashes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct WebSocketInfo {
    url: String,
}

/// The host the browser used to reach us (without port), for URLs it can reach too.
fn request_host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map(|a| a.host().to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

#[derive(serde::Deserialize)]
struct Unsubscribe {
    u: u64,
    t: String,
}

#[derive(serde::Deserialize)]
struct VerifyEmail {
    u: u64,
    /// The address, hex.
    e: String,
    t: String,
}

fn hex_only(s: &str) -> String {
    s.chars().filter(char::is_ascii_hexdigit).collect()
}

/// The confirmation link of a digest address opened in a browser (PROTOCOL.md §13.6): a
/// page whose button posts it (a GET confirms nothing, so a scanner cannot).
async fn verify_email_page(q: axum::extract::Query<VerifyEmail>) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>natter</title>\
         <form method=post action=\"verify-email?u={}&amp;e={}&amp;t={}\">\
         <p>Send natter's digests of unread messages to this address?</p>\
         <button>Confirm</button></form>",
        q.u,
        hex_only(&q.e),
        hex_only(&q.t)
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// The confirmation link posted: the address is confirmed for digests.
async fn verify_email(State(state): State<WebState>, q: axum::extract::Query<VerifyEmail>) -> Response {
    let Some(shared) = state.shared.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let Some(address) = hex::decode(&q.e).ok().and_then(|b| String::from_utf8(b).ok()) else {
        return (StatusCode::BAD_REQUEST, "not a confirmation link\n").into_response();
    };
    match shared
        .ctx
        .push
        .verify_email(natter_protocol::UserId(q.u), &address, &q.t)
        .await
    {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Confirmed: natter's digests will come to this address.\n",
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &natter_protocol::ServerError) -> Response {
    let status = match e.code {
        natter_protocol::pb::ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        natter_protocol::pb::ErrorCode::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{}\n", e.message)).into_response()
}

/// An email digest's unsubscribe link opened in a browser (PROTOCOL.md §13.6): a page
/// whose button posts it. A GET changes nothing, so mail scanners that fetch links do not
/// unsubscribe anyone.
async fn unsubscribe_page(q: axum::extract::Query<Unsubscribe>) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>natter</title>\
         <form method=post action=\"unsubscribe?u={}&amp;t={}\">\
         <p>Stop email digests from natter?</p><button>Unsubscribe</button></form>",
        q.u,
        q.t.chars().filter(char::is_ascii_hexdigit).collect::<String>()
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// The unsubscribe link posted (the page's button, or RFC 8058 one-click): the user's
/// digests are turned off.
async fn unsubscribe(State(state): State<WebState>, q: axum::extract::Query<Unsubscribe>) -> Response {
    let Some(shared) = state.shared.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match shared.ctx.push.unsubscribe(natter_protocol::UserId(q.u), &q.t).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "You will get no more email digests from natter.\n",
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn discovery(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let host = request_host(&headers);
    let ws_scheme = if state.tls { "wss" } else { "ws" };
    let body = Discovery {
        protocol: wsmux::SUBPROTOCOL,
        webtransport: state.webtransport.as_ref().map(|(port, certs)| WebTransportInfo {
            url: format!("https://{host}:{port}/natter"),
            certificate_hashes: certs.hashes(),
        }),
        websocket: WebSocketInfo {
            url: format!("{ws_scheme}://{host}:{}/ws", state.web_port),
        },
    };
    // Hashes change on renewal: never cache.
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        Json(body),
    )
        .into_response()
}

async fn websocket(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = upgrade
        .protocols([wsmux::SUBPROTOCOL])
        // Twice the protocol's limit: a message over the limit is still read whole (so the
        // socket closes cleanly, not with a reset that could eat the close) and refused by
        // the read loop with FRAME_TOO_LARGE; beyond twice, the transport drops it.
        .max_message_size(2 * limits::MAX_WS_MESSAGE_BYTES)
        .max_frame_size(2 * limits::MAX_WS_MESSAGE_BYTES);
    if upgrade.selected_protocol().is_none() {
        return (StatusCode::BAD_REQUEST, "offer the WebSocket subprotocol natter.v1").into_response();
    }
    let Some(shared) = state.shared.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let Some(slot) = shared.admit(peer.ip()) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "not admitted: this address or node is at its limit, or draining",
        )
            .into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        crate::transport::websocket::serve(shared, socket, peer.ip()).await;
        drop(slot);
    })
}

/// A bound web endpoint.
pub struct WebEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
    listener: TcpListener,
    router: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for WebEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebEndpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl WebEndpoint {
    /// Bind; `tls` is the rustls config to use, if any.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<rustls::ServerConfig>,
        root: PathBuf,
        shared: Weak<Shared>,
        webtransport: Option<(u16, Arc<WtCerts>)>,
    ) -> anyhow::Result<WebEndpoint> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = WebState {
            shared,
            tls: tls.is_some(),
            web_port: addr.port(),
            webtransport,
        };
        let router = Router::new()
            .route("/natter.json", get(discovery))
            .route("/ws", get(websocket))
            .route("/unsubscribe", get(unsubscribe_page).post(unsubscribe))
            .route("/verify-email", get(verify_email_page).post(verify_email))
            .with_state(state.clone())
            .merge(crate::transport::http_media::routes(state.shared.clone()))
            .merge(crate::transport::http_api::routes(state.shared.clone()))
            .fallback_service(tower_http::services::ServeDir::new(root))
            .layer(axum::middleware::from_fn_with_state(state.shared.clone(), count_http));
        let acceptor = tls.map(|mut cfg| {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        Ok(WebEndpoint {
            addr,
            tls: acceptor.is_some(),
            listener,
            router,
            acceptor,
        })
    }

    /// Serve until the task is dropped.
    pub async fn serve(self) {
        let WebEndpoint {
            listener,
            router,
            acceptor,
            ..
        } = self;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let router = router.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    tower_call(router.clone(), req)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let result = match acceptor {
                    Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            builder
                                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                                .await
                        }
                        _ => return,
                    },
                    None => {
                        builder
                            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), service)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "web connection ended");
                }
            });
        }
    }
}

async fn tower_call(
    router: Router,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    use tower::ServiceExt;
    router.oneshot(req.map(axum::body::Body::new)).await
}
