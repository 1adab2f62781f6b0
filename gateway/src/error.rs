//! Every way a request can fail, and its one mapping to HTTP: status, OpenAI error
//! JSON `{"error":{"message","type","param","code"}}`.
//!
//! Invariants: [`ApiError::status`] and [`ApiError::body`] are the only places that
//! turn an error into what a client sees; SSE error events use the same body.
//! Internal details (`Internal::detail`, a backend's message for a lost worker) are
//! logged with the request id and never put in a body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pdserve_cluster::protocol::ErrorKind;
use serde::Serialize;

use crate::backend::SubmitError;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the expected shape.
    #[error("{message}")]
    BadJson {
        message: String,
        param: Option<String>,
    },
    /// A field has a value outside its range, or the request is inconsistent.
    #[error("{message}")]
    InvalidField {
        param: Option<String>,
        message: String,
    },
    #[error("prompt has {prompt_tokens} tokens but the model's context is {max_context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        max_context: usize,
    },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the model `{model}` does not exist; served models: {}", served.join(", "))]
    ModelNotFound { model: String, served: Vec<String> },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The client did not send the whole body in time.
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    /// The gateway's admission limit (`max_inflight`) is reached.
    #[error("too many requests in flight (limit {limit}); retry later")]
    TooManyRequests { limit: usize },
    /// The serving system has no capacity now.
    #[error("the server is at capacity; retry later")]
    Overloaded,
    /// No worker can serve now (none registered, all lost, the server draining).
    #[error("{message}")]
    Unavailable { message: String },
    #[error("the request did not finish within its deadline")]
    Timeout,
    /// A bug or an unexpected state. `detail` goes to the log only.
    #[error("internal error")]
    Internal { detail: String },
}

/// The OpenAI error object.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::Internal {
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson { .. }
            | ApiError::InvalidField { .. }
            | ApiError::PromptTooLong { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } | ApiError::Overloaded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI `type` and `code` strings.
    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::BadJson { .. } | ApiError::InvalidField { .. } => {
                ("invalid_request_error", None)
            }
            ApiError::PromptTooLong { .. } => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            ApiError::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::ModelNotFound { .. } => ("invalid_request_error", Some("model_not_found")),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", Some("unknown_url")),
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            ApiError::TooManyRequests { .. } | ApiError::Overloaded => {
                ("rate_limit_error", Some("rate_limit_exceeded"))
            }
            ApiError::Unavailable { .. } => ("service_unavailable", Some("service_unavailable")),
            ApiError::Timeout => ("timeout_error", Some("timeout")),
            ApiError::BodyTimeout { .. } => ("invalid_request_error", Some("body_timeout")),
            ApiError::Internal { .. } => ("server_error", None),
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::BadJson { param, .. } | ApiError::InvalidField { param, .. } => param.clone(),
            ApiError::PromptTooLong { .. } => Some("messages".into()),
            ApiError::ModelNotFound { .. } => Some("model".into()),
            _ => None,
        }
    }

    /// The body a client sees (also the payload of an SSE error event).
    pub fn body(&self) -> ErrorBody {
        let (kind, code) = self.kind_and_code();
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: kind.to_string(),
                param: self.param(),
                code: code.map(str::to_string),
            },
        }
    }

    /// Logs what the body leaves out; call once per failed request.
    pub fn log(&self, request_id: &str) {
        match self {
            ApiError::Internal { detail } => {
                tracing::error!(request_id, "internal error: {detail}")
            }
            e if e.status().is_server_error() => tracing::warn!(request_id, "{e}"),
            e => tracing::debug!(request_id, "{e}"),
        }
    }

    /// The error a backend reported for one request.
    pub fn from_backend(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::InvalidRequest => ApiError::InvalidField {
                param: None,
                message,
            },
            ErrorKind::Overloaded => ApiError::Overloaded,
            ErrorKind::WorkerLost => {
                tracing::warn!("worker lost mid-request: {message}");
                ApiError::Unavailable {
                    message: "the worker serving the request went away; retry".into(),
                }
            }
            ErrorKind::DeadlineExceeded => ApiError::Timeout,
            ErrorKind::Internal => ApiError::Internal { detail: message },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::UnknownModel { model, served } => {
                ApiError::ModelNotFound { model, served }
            }
            SubmitError::NoWorkers { model } => ApiError::Unavailable {
                message: format!("no worker can serve model `{model}` now; retry later"),
            },
            SubmitError::Overloaded => ApiError::Overloaded,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if matches!(
            self,
            ApiError::TooManyRequests { .. } | ApiError::Overloaded | ApiError::Unavailable { .. }
        ) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_never_show_their_detail() {
        let e = ApiError::internal("secret path /etc/x panicked");
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let lost = ApiError::from_backend(ErrorKind::WorkerLost, "node 10.0.0.7 died".into());
        assert!(!lost.to_string().contains("10.0.0.7"));
        assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unknown_model_lists_served_models() {
        let e: ApiError = SubmitError::UnknownModel {
            model: "x".into(),
            served: vec!["a".into(), "b".into()],
        }
        .into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let b = e.body();
        assert!(b.error.message.contains("a, b"), "{}", b.error.message);
        assert_eq!(b.error.code.as_deref(), Some("model_not_found"));
        assert_eq!(b.error.param.as_deref(), Some("model"));
    }

    #[test]
    fn prompt_too_long_names_both_numbers() {
        let e = ApiError::PromptTooLong {
            prompt_tokens: 900,
            max_context: 512,
        };
        let m = e.body().error.message;
        assert!(m.contains("900") && m.contains("512"), "{m}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
