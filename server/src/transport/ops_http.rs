//! The ops listener (`ops_listen`, default 127.0.0.1:9100, never the public port): `/livez`
//! (the process answers), `/readyz` (200 only while every readiness check passes and the
//! node is not draining, else 503 with a JSON body naming the failing checks) and
//! `/metrics` (Prometheus text format; OpenMetrics when the scraper's `Accept` asks for it).
//! Plain HTTP on purpose: it serves load balancers and Prometheus on a private address. The
//! operator's `/admin/v1` endpoints beside them need an admin API key ([`super::ops_admin`]).
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::ops::{Metrics, Readiness};

/// What the ops endpoints read.
#[derive(Clone)]
pub struct Ops {
    /// This node's metrics.
    pub metrics: Arc<Metrics>,
    /// This node's readiness.
    pub readiness: Arc<Readiness>,
    /// Sessions with a live connection now (read at scrape).
    pub attached_sessions: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// A bound ops listener.
#[derive(Debug)]
pub struct OpsEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    listener: TcpListener,
    router: Router,
}

impl OpsEndpoint {
    /// Bind `addr` (port 0: any free port), with the operator's `/admin/v1` routes
    /// ([`super::ops_admin`]) beside the open ones.
    pub async fn bind(addr: SocketAddr, ops: Ops, admin: super::ops_admin::Admin) -> std::io::Result<OpsEndpoint> {
        let listener = TcpListener::bind(addr).await?;
        let router = Router::new()
            .route("/livez", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(ops)
            .merge(super::ops_admin::routes(admin));
        Ok(OpsEndpoint {
            addr: listener.local_addr()?,
            listener,
            router,
        })
    }

    /// Serve until the task is dropped.
    pub async fn serve(self) {
        if let Err(e) = axum::serve(self.listener, self.router).await {
            tracing::error!(error = %e, "the ops listener stopped");
        }
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let report = ops.readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    ops.metrics.sessions_attached.set((ops.attached_sessions)() as i64);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let body = ops.metrics.encode(openmetrics);
    let kind = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}
