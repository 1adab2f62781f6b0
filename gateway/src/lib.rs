//! pdserve-gateway: the OpenAI-compatible HTTP front door.
//!
//! A request flows: [`openai::request`] (serde types) → [`validate`] (a
//! `ValidRequest`, or a 400) → [`prompt`] (chat template, tokens, context checks) →
//! [`generate`] (one backend request per choice, merged events, deadline, cancel on
//! drop) → [`output`] (JSON) or [`sse`] (event stream). Errors map to HTTP once, in
//! [`error`]. [`server`] holds the router, the connection loop and the drain;
//! [`metrics`] the Prometheus registry; [`openapi`] the API description.
//!
//! The serving system behind it is a [`backend::ServingBackend`].

pub mod backend;
pub mod config;
pub mod error;
pub mod generate;
mod handlers;
pub mod logprobs;
pub mod metrics;
mod middleware;
pub mod openai;
pub mod openapi;
pub mod output;
pub mod prompt;
pub mod reasoning;
pub mod server;
pub mod sse;
pub mod state;
pub mod validate;

pub use backend::{ServedModel, ServingBackend, SubmitError};
pub use config::{GatewayConfig, ReasoningParser};
pub use error::ApiError;
pub use server::{app, serve, serve_on};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
