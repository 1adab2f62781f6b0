//! The router and the HTTP server: routes, fallbacks, middleware, the connection
//! loop (HTTP/1.1 with a header read timeout) and the drain on shutdown.
//!
//! Shutdown, once the `shutdown` future completes:
//! 1. draining: `/health` answers 503 and new generation requests get 503, while
//!    the listener keeps accepting (so that load balancers see the 503s);
//! 2. when no generation is in flight (or `drain_timeout` passed), the listener
//!    closes and every connection is told to finish its current response and close;
//! 3. `serve` returns once the connections are gone (at most a few seconds more).
//!
//! Invariant: `serve` never returns while a generation it admitted is still
//! streaming, unless `drain_timeout` expired (logged).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::ServingBackend;
use crate::config::GatewayConfig;
use crate::state::AppState;
use crate::{handlers, middleware};

/// How long connections get to close after the drain before they are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The API as an axum router (for tests, or to embed).
pub fn app(config: GatewayConfig, backend: Arc<dyn ServingBackend>) -> Router {
    router(Arc::new(AppState::new(config, backend)))
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{model}", get(handlers::get_model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(handlers::health))
        .route("/live", get(handlers::live))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi_json))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::count_requests,
        ))
        .with_state(state)
}

/// Binds `config.listen` and serves until `shutdown` completes and the drain ends.
pub async fn serve(
    config: GatewayConfig,
    backend: Arc<dyn ServingBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    serve_on(listener, config, backend, shutdown).await
}

/// [`serve`] on an already bound listener (port 0 in tests, or a socket handed over).
pub async fn serve_on(
    listener: TcpListener,
    config: GatewayConfig,
    backend: Arc<dyn ServingBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let state = Arc::new(AppState::new(config.clone(), backend));
    let app = router(state.clone());
    let (close_tx, close_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tracing::info!(%local, "HTTP server listening");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                accept(accepted, &app, &config, &close_rx, &mut conns).await
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    state.start_draining();
    let drain_end = tokio::time::Instant::now() + config.drain_timeout;
    tracing::info!(inflight = state.inflight(), "draining");
    while state.inflight() > 0 {
        if tokio::time::Instant::now() >= drain_end {
            tracing::warn!(
                inflight = state.inflight(),
                "drain timeout: stopping with requests in flight"
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            accepted = listener.accept() => {
                accept(accepted, &app, &config, &close_rx, &mut conns).await
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    drop(listener);
    let _ = close_tx.send(true);
    let closed = tokio::time::timeout(CLOSE_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        tracing::warn!(
            left = conns.len(),
            "dropping connections that did not close"
        );
        conns.abort_all();
    }
    tracing::info!(%local, "HTTP server stopped");
    Ok(())
}

async fn accept(
    accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
    app: &Router,
    config: &GatewayConfig,
    close: &watch::Receiver<bool>,
    conns: &mut JoinSet<()>,
) {
    match accepted {
        Ok((stream, peer)) => {
            let fut = serve_connection(stream, app.clone(), config.header_timeout, close.clone());
            conns.spawn(async move {
                fut.await;
                tracing::trace!(%peer, "connection closed");
            });
        }
        Err(e) => {
            // Out of file descriptors and the like: back off instead of spinning.
            tracing::warn!("accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut close: watch::Receiver<bool>,
) {
    // Tokens are small writes that must leave at once.
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = close.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
