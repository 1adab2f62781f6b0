//! pdserve-engine: everything that turns model files and prompts into tokens.
//!
//! Owns model loading (HF safetensors directories and GGUF files), the tokenizer and
//! chat template, the model forward pass over a [`backend`], the paged KV cache with
//! its block manager and prefix cache, the continuous-batching [`scheduler`], and
//! [`sampling`]. It knows nothing about actors, tokio or the network: the serving
//! layers drive an [`engine::Engine`] by calling `add_request` / `step` / `abort`.

pub mod backend;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod fixtures;
pub mod gguf;
pub mod hub;
pub mod ids;
pub mod kv;
pub mod loader;
pub mod model;
pub mod quant;
pub mod safetensors_dir;
pub mod sampling;
pub mod scheduler;
pub mod storage;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use ids::{BlockId, SeqId};
