//! What every handler shares: config, backend, metrics, the admission counter and
//! the draining flag.
//!
//! Invariants: the in-flight count equals the number of live [`Permit`]s; a permit
//! is only handed out below the limit (`max_inflight`, 0 = none) and while not
//! draining; once draining is set it is never cleared.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::{ServedModel, ServingBackend};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;

/// Longest a request waits for a model that a worker reports but that is not
/// listed yet (tokenizer loading: normally well under a second).
pub const MODEL_PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a waiting request looks again.
pub const MODEL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub struct AppState {
    pub config: GatewayConfig,
    pub backend: Arc<dyn ServingBackend>,
    pub metrics: Arc<GatewayMetrics>,
    inflight: Arc<AtomicUsize>,
    draining: AtomicBool,
    /// Unix seconds at startup (`created` of model cards).
    pub started_unix: u64,
}

/// One admitted generation request; dropping it frees its slot.
#[derive(Debug)]
pub struct Permit {
    inflight: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    pub fn new(config: GatewayConfig, backend: Arc<dyn ServingBackend>) -> Self {
        AppState {
            config,
            backend,
            metrics: Arc::new(GatewayMetrics::new()),
            inflight: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            started_unix: crate::unix_now(),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn refuse_if_draining(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            Err(ApiError::Unavailable {
                message: "the server is shutting down".into(),
            })
        } else {
            Ok(())
        }
    }

    /// A slot for one generation request, or 429 at the limit.
    pub fn admit(&self) -> Result<Permit, ApiError> {
        self.refuse_if_draining()?;
        let limit = self.config.max_inflight;
        let ok = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok();
        if ok {
            Ok(Permit {
                inflight: self.inflight.clone(),
            })
        } else {
            Err(ApiError::TooManyRequests { limit })
        }
    }

    /// The served model named `name`; while the backend reports it pending (a
    /// worker has it, its tokenizer is loading) this waits, polling every
    /// [`MODEL_POLL`], for at most [`MODEL_PENDING_WAIT`] (or the request
    /// timeout if shorter). Otherwise as [`AppState::find_model`].
    pub async fn resolve_model(&self, name: &str) -> Result<ServedModel, ApiError> {
        let deadline =
            tokio::time::Instant::now() + MODEL_PENDING_WAIT.min(self.config.request_timeout);
        loop {
            if let Ok(found) = self.find_model(name) {
                return Ok(found);
            }
            // Looked at after the miss: a load finishing in between is seen by the
            // second `find_model`.
            if !self.backend.model_pending(name) || tokio::time::Instant::now() >= deadline {
                return self.find_model(name);
            }
            tokio::time::sleep(MODEL_POLL).await;
        }
    }

    /// The served model named `name`, or 404 listing the served ones.
    pub fn find_model(&self, name: &str) -> Result<ServedModel, ApiError> {
        let models = self.backend.models();
        if let Some(m) = models.iter().find(|m| m.name == name) {
            return Ok(m.clone());
        }
        if models.is_empty() {
            return Err(ApiError::Unavailable {
                message: "no model is being served yet; retry later".into(),
            });
        }
        Err(ApiError::ModelNotFound {
            model: name.to_string(),
            served: models.into_iter().map(|m| m.name).collect(),
        })
    }
}
