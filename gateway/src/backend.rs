//! What the HTTP layer needs from the serving system: a [`ServingBackend`]. The
//! actor system (router + workers) implements it in production; tests use fakes.

use pdserve_cluster::protocol::{GenerateRequest, StreamEvent, WorkerLoad};
use pdserve_cluster::RequestId;
use pdserve_engine::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

/// One model clients can ask for.
#[derive(Clone, Debug)]
pub struct ServedModel {
    /// The `"model"` string clients send.
    pub name: String,
    /// Tokenizer and chat template of the model.
    pub tokenizer: Tokenizer,
    /// Prompt + completion tokens one request may use.
    pub max_model_len: usize,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("model {model:?} is not served; served models: {served:?}")]
    UnknownModel { model: String, served: Vec<String> },
    #[error("no worker can serve model {model:?} now")]
    NoWorkers { model: String },
    #[error("too many requests in flight")]
    Overloaded,
}

pub trait ServingBackend: Send + Sync + 'static {
    /// Models served now (by live, non-draining decode workers).
    fn models(&self) -> Vec<ServedModel>;
    /// A worker reports model `name` but it cannot be listed yet (its tokenizer is
    /// still loading): a request for it waits (see `AppState::resolve_model`)
    /// instead of getting a 503 it did nothing to deserve.
    fn model_pending(&self, _name: &str) -> bool {
        false
    }
    /// Hands a tokenized request to the router. Events for it arrive in order on
    /// the returned channel: `Started`, then `Tokens`…, ending with a `Tokens`
    /// carrying `finish: Some(..)` or with an `Error`. The channel closing without
    /// either is an internal error.
    fn submit(
        &self,
        request: GenerateRequest,
    ) -> Result<UnboundedReceiver<StreamEvent>, SubmitError>;
    /// The client went away: stop generating, free everything the request holds.
    fn cancel(&self, id: RequestId);
    /// The latest load report of every known worker (for /metrics).
    fn workers(&self) -> Vec<WorkerLoad>;
    /// Inbox group that decode workers stream this gateway's requests to
    /// (`GenerateRequest::reply_to`).
    fn reply_to(&self) -> String;
}
