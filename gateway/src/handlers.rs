//! The HTTP handlers: generation endpoints (chat, completions), models, health,
//! liveness, metrics, the OpenAPI document, and the 404/405 fallbacks.
//!
//! Order of checks of a generation request (each failure is one [`ApiError`]):
//! draining (503) → body size (413) → JSON shape (400) → value ranges (400) →
//! model (404 / 503) → admission (429) → template, tokens, context (400) →
//! submission (404 / 429 / 503) → (streaming) first backend event (any).
//! Authentication (401) runs before all of them, in [`crate::middleware`].
//!
//! Invariant: a request that fails before submission holds no admission slot and
//! no backend request; one that fails after is cancelled by its `Generation`'s drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pdserve_cluster::RequestId;

use crate::backend::ServedModel;
use crate::error::ApiError;
use crate::generate::{Generation, Submission};
use crate::openai::request::{
    parse_object, unknown_keys, ChatCompletionRequest, CompletionRequest,
};
use crate::openai::response::{ModelCard, ModelList};
use crate::output::{self, ResponseContext};
use crate::state::AppState;
use crate::validate::{self, Endpoint};
use crate::{openapi, prompt, sse};

type AppStateRef = State<Arc<AppState>>;

pub async fn chat_completions(State(st): AppStateRef, body: Body) -> Response {
    generation(st, Endpoint::Chat, body).await
}

pub async fn completions(State(st): AppStateRef, body: Body) -> Response {
    generation(st, Endpoint::Completions, body).await
}

/// Runs one generation request; every response carries `x-request-id` (the id in
/// the logs and in the response's `id`).
async fn generation(st: Arc<AppState>, endpoint: Endpoint, body: Body) -> Response {
    let id = RequestId::random();
    let mut resp = match run_generation(&st, endpoint, body, id).await {
        Ok(resp) => resp,
        Err(e) => {
            e.log(&id.to_string());
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn run_generation(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    body: Body,
    id: RequestId,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    st.refuse_if_draining()?;
    let bytes = read_body(body, st.config.max_body_bytes, st.config.header_timeout).await?;
    let schema = match endpoint {
        Endpoint::Chat => "ChatCompletionRequest",
        Endpoint::Completions => "CompletionRequest",
    };
    let obj = parse_object(&bytes)?;
    let unknown = unknown_keys(&obj, &openapi::fields_of(schema));
    if !unknown.is_empty() {
        tracing::debug!(request_id = %id, ?unknown, "ignoring unknown request fields");
    }
    let max_choices = st.config.max_choices;
    let valid = match endpoint {
        Endpoint::Chat => validate::chat(ChatCompletionRequest::from_object(&obj)?, max_choices)?,
        Endpoint::Completions => {
            validate::completion(CompletionRequest::from_object(&obj)?, max_choices)?
        }
    };
    drop(obj);
    let model = st.resolve_model(&valid.model).await?;
    let permit = st.admit()?;
    let prepared = prompt::prepare(&valid, &model).await?;
    tracing::debug!(
        request_id = %id,
        endpoint = endpoint.as_str(),
        model = %valid.model,
        prompt_tokens = prepared.prompts.iter().map(Vec::len).sum::<usize>(),
        choices = valid.choices(),
        stream = valid.stream,
        user = valid.user.as_deref().unwrap_or(""),
        "submitting"
    );
    let mut gen = Generation::submit(
        st.backend.clone(),
        st.metrics.clone(),
        permit,
        Submission {
            id,
            endpoint,
            model: &valid.model,
            prompts: &prepared.prompts,
            n: valid.n,
            params: &prepared.params,
            arrived,
            timeout: st.config.request_timeout,
        },
    )?;
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let ctx = ResponseContext {
        id: format!("{prefix}-{id}"),
        created: crate::unix_now(),
        model: valid.model,
        endpoint,
        tokenizer: model.tokenizer,
        logprobs: prepared.params.logprobs.is_some(),
        reasoning: st.config.reasoning_parser,
        include_usage: valid.include_usage,
        prompt_tokens: prepared.prompts.iter().map(Vec::len).sum(),
    };
    if valid.stream {
        gen.prime().await?;
        Ok(sse::respond(gen, ctx))
    } else {
        output::collect(gen, ctx).await
    }
}

/// The whole body, or 413 past `limit` bytes.
/// Reads the whole body: at most `limit` bytes (413), within `within` (408 — a
/// client that stalls mid-body must not hold its connection and task forever).
async fn read_body(body: Body, limit: usize, within: Duration) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(within, Limited::new(body, limit).collect());
    let Ok(result) = read.await else {
        return Err(ApiError::BodyTimeout {
            secs: within.as_secs(),
        });
    };
    match result {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadJson {
            message: format!("could not read the request body: {e}"),
            param: None,
        }),
    }
}

fn card(st: &AppState, m: ServedModel) -> ModelCard {
    ModelCard {
        id: m.name,
        object: "model",
        created: st.started_unix,
        owned_by: "pdserve",
        max_model_len: m.max_model_len,
    }
}

pub async fn list_models(State(st): AppStateRef) -> Json<ModelList> {
    let data = st
        .backend
        .models()
        .into_iter()
        .map(|m| card(&st, m))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get_model(
    State(st): AppStateRef,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelCard>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::invalid("model", e.body_text()))?;
    let models = st.backend.models();
    match models.iter().find(|m| m.name == name) {
        Some(m) => Ok(Json(card(&st, m.clone()))),
        None => Err(ApiError::ModelNotFound {
            model: name,
            served: models.into_iter().map(|m| m.name).collect(),
        }),
    }
}

/// 200 while a model is served and the server is not draining; 503 otherwise.
pub async fn health(State(st): AppStateRef) -> Response {
    if st.is_draining() {
        return ApiError::Unavailable {
            message: "the server is shutting down".into(),
        }
        .into_response();
    }
    let models: Vec<String> = st.backend.models().into_iter().map(|m| m.name).collect();
    if models.is_empty() {
        return ApiError::Unavailable {
            message: "no worker serves a model yet".into(),
        }
        .into_response();
    }
    Json(serde_json::json!({"status": "ok", "models": models})).into_response()
}

pub async fn live() -> &'static str {
    "ok"
}

pub async fn metrics(State(st): AppStateRef) -> Response {
    let text = st.metrics.render(&st.backend.workers(), st.inflight());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(openapi::document())
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
