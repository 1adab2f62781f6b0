//! The gateway's view of the actor system: [`ActorBackend`] implements the
//! gateway's `ServingBackend` over a router actor and the router's shared view.
//!
//! Tokenizers: a `serve` process hands over its engines' tokenizer; a frontend
//! loads each model's tokenizer the first time a worker reports that model, from
//! the `--model` the worker was given (same machine or shared filesystem), on a
//! background thread; the model is listed once its tokenizer is ready, and until
//! then it is *pending*: a request for it waits for the load rather than getting a
//! 503 (`ServingBackend::model_pending`). A frontend looks at the workers'
//! reports every [`WARMUP_PERIOD`] so that this load starts when the worker
//! appears, not when the first client asks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use pdserve_actors::router::{RouterMsg, RouterView};
use pdserve_cluster::protocol::{GenerateRequest, StreamEvent, WorkerLoad};
use pdserve_cluster::RequestId;
use pdserve_engine::loader::{load_model, LoadOptions};
use pdserve_engine::tokenizer::Tokenizer;
use pdserve_gateway::backend::{ServedModel, ServingBackend, SubmitError};
use ractor::ActorRef;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub struct ActorBackend {
    router: ActorRef<RouterMsg>,
    view: Arc<RwLock<RouterView>>,
    reply_to: String,
    tokenizers: Arc<Mutex<HashMap<String, Tokenizer>>>,
    loading: Mutex<HashSet<String>>,
    /// Models whose tokenizer could not be loaded (not retried; never pending).
    failed: Arc<Mutex<HashSet<String>>>,
    allow_download: bool,
}

impl ActorBackend {
    pub fn new(
        router: ActorRef<RouterMsg>,
        view: Arc<RwLock<RouterView>>,
        reply_to: String,
        known: Vec<(String, Tokenizer)>,
        allow_download: bool,
    ) -> ActorBackend {
        ActorBackend {
            router,
            view,
            reply_to,
            tokenizers: Arc::new(Mutex::new(known.into_iter().collect())),
            loading: Mutex::new(HashSet::new()),
            failed: Arc::new(Mutex::new(HashSet::new())),
            allow_download,
        }
    }

    fn tokenizer(&self, load: &WorkerLoad) -> Option<Tokenizer> {
        if let Some(t) = self.tokenizers.lock().ok()?.get(&load.model) {
            return Some(t.clone());
        }
        let mut loading = self.loading.lock().ok()?;
        if loading.insert(load.model.clone()) {
            let (model, spec) = (load.model.clone(), load.model_spec.clone());
            let cache = self.tokenizers.clone();
            let failed = self.failed.clone();
            let opts = LoadOptions {
                prefault: false,
                allow_download: self.allow_download,
                ..LoadOptions::default()
            };
            std::thread::spawn(move || match load_model(&spec, &opts) {
                Ok(m) => {
                    tracing::info!(%model, %spec, "tokenizer loaded");
                    if let Ok(mut c) = cache.lock() {
                        c.insert(model, m.tokenizer);
                    }
                }
                Err(e) => {
                    tracing::error!(%model, %spec, "cannot load the tokenizer: {e}");
                    if let Ok(mut f) = failed.lock() {
                        f.insert(model);
                    }
                }
            });
        }
        None
    }
}

/// How often a frontend checks for models whose tokenizer is not loaded yet.
pub const WARMUP_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts loading each reported model's tokenizer as soon as a worker reports it
/// (a tokio task for as long as the backend lives).
pub fn spawn_tokenizer_warmup(backend: &Arc<ActorBackend>) {
    let weak = Arc::downgrade(backend);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WARMUP_PERIOD);
        loop {
            tick.tick().await;
            let Some(b) = weak.upgrade() else { break };
            // Listing the models loads (in the background) what is missing.
            let _ = b.models();
        }
    });
}

impl ServingBackend for ActorBackend {
    fn models(&self) -> Vec<ServedModel> {
        let loads = match self.view.read() {
            Ok(v) => v.models(),
            Err(_) => return Vec::new(),
        };
        loads
            .iter()
            .filter_map(|l| {
                Some(ServedModel {
                    name: l.model.clone(),
                    tokenizer: self.tokenizer(l)?,
                    max_model_len: l.max_model_len as usize,
                })
            })
            .collect()
    }

    fn model_pending(&self, name: &str) -> bool {
        let load = match self.view.read() {
            Ok(v) => v.models().into_iter().find(|l| l.model == name),
            Err(_) => return false,
        };
        let Some(load) = load else { return false };
        let failed = self.failed.lock().map_or(true, |f| f.contains(name));
        // Starts the load if nothing has yet; pending while it runs.
        !failed && self.tokenizer(&load).is_none()
    }

    fn submit(
        &self,
        request: GenerateRequest,
    ) -> Result<UnboundedReceiver<StreamEvent>, SubmitError> {
        {
            let view = self.view.read().map_err(|_| SubmitError::Overloaded)?;
            if view.serving(&request.model).is_empty() {
                let served: Vec<String> = view.models().into_iter().map(|l| l.model).collect();
                let known = view.workers.values().any(|(l, _)| l.model == request.model);
                return Err(if known {
                    SubmitError::NoWorkers {
                        model: request.model.clone(),
                    }
                } else {
                    SubmitError::UnknownModel {
                        model: request.model.clone(),
                        served,
                    }
                });
            }
        }
        let (sink, rx) = unbounded_channel();
        self.router
            .cast(RouterMsg::Submit { request, sink })
            .map_err(|_| SubmitError::Overloaded)?;
        Ok(rx)
    }

    fn cancel(&self, id: RequestId) {
        let _ = self.router.cast(RouterMsg::Cancel { id });
    }

    fn workers(&self) -> Vec<WorkerLoad> {
        match self.view.read() {
            Ok(v) => v.workers.values().map(|(l, _)| l.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn reply_to(&self) -> String {
        self.reply_to.clone()
    }
}
