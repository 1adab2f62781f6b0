//! The engine's one error type. Every variant carries enough context (file, tensor,
//! reason) to be shown to a user as a single line.

use std::path::PathBuf;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model file exists but its contents are not what its format says.
    #[error("{path}: {reason}")]
    BadModelFile { path: PathBuf, reason: String },
    #[error("unsupported architecture `{found}`; supported: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    #[error("unsupported tensor type {dtype} for tensor `{tensor}`")]
    UnsupportedDType { tensor: String, dtype: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid engine settings: {0}")]
    InvalidConfig(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("model `{0}` not found locally (looked in the Hugging Face cache) and could not be downloaded: {1}")]
    ModelNotFound(String, String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("prompt has {prompt_tokens} tokens but the model's context is {max_context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        max_context: usize,
    },
    #[error("KV cache too small: a sequence of {needed_blocks} blocks cannot fit in {total_blocks} blocks")]
    KvCacheTooSmall {
        needed_blocks: usize,
        total_blocks: usize,
    },
    #[error("unknown sequence {0}")]
    UnknownSequence(crate::SeqId),
    #[error("duplicate sequence {0}")]
    DuplicateSequence(crate::SeqId),
    #[error("KV transfer: {0}")]
    KvTransfer(String),
    #[error("device: {0}")]
    Device(String),
}

impl EngineError {
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        EngineError::BadModelFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}
