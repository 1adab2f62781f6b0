//! A worker's probe endpoint (`pdserve worker --health-listen ADDR`): what an
//! orchestrator asks a decode or prefill worker, which serves no HTTP API.
//!
//! - `GET /live`: 200 while the process answers at all (also while the model
//!   loads): a liveness probe restarts only a wedged process;
//! - `GET /health`: 200 when the worker takes work — model loaded, worker actor
//!   running, connected to at least one cluster peer, not draining — else 503;
//!   the JSON body says which (`status`: `ready`, `loading`, `no-peers`,
//!   `stopped`, `draining`), with the role, worker id and peer count.
//!
//! The state is a few atomics the worker's main loop updates; the handlers only
//! read them, so a probe can never block the worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

/// What `/health` reports; updated by the worker's main loop.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    role: &'static str,
    worker: Mutex<String>,
    loaded: AtomicBool,
    running: AtomicBool,
    draining: AtomicBool,
    peers: AtomicUsize,
}

/// The worker's readiness, most serious reason first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Draining,
    Stopped,
    NoPeers,
    Ready,
}

impl Readiness {
    fn as_str(self) -> &'static str {
        match self {
            Readiness::Loading => "loading",
            Readiness::Draining => "draining",
            Readiness::Stopped => "stopped",
            Readiness::NoPeers => "no-peers",
            Readiness::Ready => "ready",
        }
    }
}

impl WorkerHealth {
    pub fn new(role: &'static str) -> Arc<WorkerHealth> {
        Arc::new(WorkerHealth {
            role,
            ..WorkerHealth::default()
        })
    }

    /// The model is loaded and the worker actor `worker` started.
    pub fn started(&self, worker: &str) {
        *self.worker.lock().unwrap_or_else(|e| e.into_inner()) = worker.to_string();
        self.loaded.store(true, Ordering::SeqCst);
        self.running.store(true, Ordering::SeqCst);
    }

    /// The main loop's periodic view: is the actor running, how many peers.
    pub fn observe(&self, running: bool, peers: usize) {
        self.running.store(running, Ordering::SeqCst);
        self.peers.store(peers, Ordering::SeqCst);
    }

    pub fn draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn readiness(&self) -> Readiness {
        if !self.loaded.load(Ordering::SeqCst) {
            Readiness::Loading
        } else if self.draining.load(Ordering::SeqCst) {
            Readiness::Draining
        } else if !self.running.load(Ordering::SeqCst) {
            Readiness::Stopped
        } else if self.peers.load(Ordering::SeqCst) == 0 {
            Readiness::NoPeers
        } else {
            Readiness::Ready
        }
    }
}

async fn live() -> &'static str {
    "ok\n"
}

async fn health(State(h): State<Arc<WorkerHealth>>) -> impl IntoResponse {
    let r = h.readiness();
    let code = if r == Readiness::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let worker = h.worker.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let body = serde_json::json!({
        "status": r.as_str(),
        "role": h.role,
        "worker": worker,
        "peers": h.peers.load(Ordering::SeqCst),
    });
    (code, Json(body))
}

fn router(h: Arc<WorkerHealth>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/health", get(health))
        .with_state(h)
}

/// Binds `addr` and serves the probes in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, h: Arc<WorkerHealth>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --health-listen {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(h)).await {
            tracing::error!("health endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_worker_life() {
        let h = WorkerHealth::new("decode");
        assert_eq!(h.readiness(), Readiness::Loading);
        h.started("n/decode/0");
        assert_eq!(h.readiness(), Readiness::NoPeers, "no peer yet");
        h.observe(true, 2);
        assert_eq!(h.readiness(), Readiness::Ready);
        h.observe(false, 2);
        assert_eq!(h.readiness(), Readiness::Stopped);
        h.observe(true, 2);
        h.draining();
        assert_eq!(h.readiness(), Readiness::Draining);
    }

    #[tokio::test]
    async fn probes_answer_over_http() {
        let h = WorkerHealth::new("prefill");
        let addr = serve("127.0.0.1:0".parse().unwrap(), h.clone())
            .await
            .unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/live").await.starts_with("HTTP/1.1 200"));
        let loading = get("/health").await;
        assert!(loading.starts_with("HTTP/1.1 503"), "{loading}");
        assert!(loading.contains(r#""status":"loading""#), "{loading}");
        h.started("n/prefill/0");
        h.observe(true, 1);
        let ready = get("/health").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(ready.contains(r#""role":"prefill""#), "{ready}");
        assert!(ready.contains(r#""worker":"n/prefill/0""#), "{ready}");
        h.draining();
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        assert!(get("/live").await.starts_with("HTTP/1.1 200"));
    }
}
