//! Request middleware: API-key authentication of `/v1/*`, the per-request counter
//! `pdserve_http_requests_total{endpoint,status}`, and turning a handler panic into
//! a 500.
//!
//! Invariants: with an API key configured, no `/v1/*` handler runs for a request
//! without `Authorization: Bearer <key>` (compared in constant time); the endpoint
//! label is one of a fixed set of route names, so clients cannot grow the label
//! space by requesting arbitrary paths.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use crate::error::ApiError;
use crate::state::AppState;

fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_api_key(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &st.config.api_key {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| same(p.as_bytes(), key.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// The metrics label of a request path.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/health" => "health",
        "/live" => "live",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        p if p.starts_with("/v1/models/") => "model",
        _ => "other",
    }
}

/// Counts every response by endpoint and status; a handler that panics (a bug)
/// becomes a 500 here instead of a dropped connection.
pub async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let label = endpoint_label(req.uri().path());
    let resp = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => {
            let e = ApiError::internal(format!("the {label} handler panicked"));
            e.log("-");
            e.into_response()
        }
    };
    let status = resp.status().as_u16().to_string();
    st.metrics.http_requests.inc(&[label, &status]);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(same(b"", b""));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(endpoint_label("/v1/models/x"), "model");
        assert_eq!(endpoint_label("/anything/else"), "other");
        assert_eq!(endpoint_label("/v1/chat/completions"), "chat_completions");
    }
}
