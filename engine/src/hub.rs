//! Resolving `--model` values to files on disk (OWNER: helper G).
//!
//! A model spec is, in order of precedence:
//! 1. empty or `default`: the default model file (fetched on first use, see
//!    [`default_model`]);
//! 2. an existing path: a GGUF file, or a directory with `config.json` (HF layout),
//!    or a directory holding exactly one `.gguf` file;
//! 3. a Hugging Face repo id `Org/Name` (optionally `Org/Name@revision`), found in
//!    the local HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//!    `~/.cache/huggingface/hub`; layout `models--Org--Name/refs/<rev>` +
//!    `snapshots/<commit>/`), else downloaded into that cache ([`download`]).
//!
//! Invariants: nothing here reads the process environment except
//! [`HubEnv::from_env`], so resolution is testable with a fake cache; a resolved
//! location exists on disk at the time it is returned.

pub mod default_model;
pub mod download;

use std::path::{Path, PathBuf};

use crate::{EngineError, Result};

pub use default_model::{DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE};

/// The environment that resolution depends on (captured once, passed explicitly).
#[derive(Clone, Debug, Default)]
pub struct HubEnv {
    /// `HF_HUB_CACHE`
    pub hf_hub_cache: Option<PathBuf>,
    /// `HF_HOME`
    pub hf_home: Option<PathBuf>,
    /// `HOME`
    pub home: Option<PathBuf>,
    /// `PDSERVE_MODELS_DIR`
    pub pdserve_models_dir: Option<PathBuf>,
    /// `PDSERVE_CACHE`
    pub pdserve_cache: Option<PathBuf>,
    /// `HF_HUB_OFFLINE` set to a true value: never download.
    pub offline: bool,
    /// `HF_TOKEN`
    pub hf_token: Option<String>,
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl HubEnv {
    pub fn from_env() -> HubEnv {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True" | "yes" | "on"))
            .unwrap_or(false);
        HubEnv {
            hf_hub_cache: env_path("HF_HUB_CACHE"),
            hf_home: env_path("HF_HOME"),
            home: env_path("HOME"),
            pdserve_models_dir: env_path("PDSERVE_MODELS_DIR"),
            pdserve_cache: env_path("PDSERVE_CACHE"),
            offline,
            hf_token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }

    /// The HF hub cache directory (`.../hub`), whether or not it exists.
    pub fn hf_cache_dir(&self) -> Option<PathBuf> {
        if let Some(p) = &self.hf_hub_cache {
            return Some(p.clone());
        }
        if let Some(p) = &self.hf_home {
            return Some(p.join("hub"));
        }
        self.home
            .as_ref()
            .map(|h| h.join(".cache").join("huggingface").join("hub"))
    }

    /// Where pdserve keeps its own model files.
    pub fn models_dir(&self) -> Option<PathBuf> {
        if let Some(p) = &self.pdserve_models_dir {
            return Some(p.clone());
        }
        if let Some(p) = &self.pdserve_cache {
            return Some(p.join("models"));
        }
        self.home
            .as_ref()
            .map(|h| h.join(".cache").join("pdserve").join("models"))
    }

    /// Path of the default model file (may not exist yet).
    pub fn default_model_path(&self) -> Option<PathBuf> {
        self.models_dir().map(|d| d.join(DEFAULT_MODEL_FILE))
    }
}

/// What kind of model a spec resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelLocation {
    /// A single GGUF file.
    Gguf(PathBuf),
    /// A directory with `config.json`, tokenizer files and safetensors weights.
    HfDir(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Gguf(p) | ModelLocation::HfDir(p) => p,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    /// Served model name: the repo id, or the file stem / directory name.
    pub name: String,
    pub location: ModelLocation,
}

/// How to resolve: which environment, whether downloads may happen, progress.
#[derive(Clone, Debug)]
pub struct ResolveOptions {
    pub env: HubEnv,
    /// Allows network downloads (HF hub, the default model's package).
    pub allow_download: bool,
    /// Progress on stderr while downloading.
    pub progress: bool,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            env: HubEnv::from_env(),
            allow_download: true,
            progress: true,
        }
    }
}

/// True if `spec` is the default-model alias.
pub fn is_default_spec(spec: &str) -> bool {
    let s = spec.trim();
    s.is_empty() || s == "default"
}

/// Resolves a `--model` value to a file or directory on disk.
pub fn resolve(spec: &str, opts: &ResolveOptions) -> Result<ResolvedModel> {
    if is_default_spec(spec) {
        let path = default_model::ensure_default_model(&opts.env, opts.allow_download)?;
        return Ok(ResolvedModel {
            name: file_stem(&path),
            location: ModelLocation::Gguf(path),
        });
    }
    let path = expand_tilde(spec, &opts.env);
    if path.exists() {
        return resolve_path(&path);
    }
    let Some((repo_id, revision)) = parse_repo_id(spec) else {
        return Err(EngineError::bad_file(
            &path,
            "no such file or directory (and not an Org/Name Hugging Face repo id)",
        ));
    };
    let mut looked = Vec::new();
    if let Some(hub) = opts.env.hf_cache_dir() {
        if let Some(loc) = find_in_hf_cache(&hub, repo_id, revision) {
            return Ok(ResolvedModel {
                name: repo_id.to_string(),
                location: loc,
            });
        }
        looked.push(hub.join(repo_folder_name(repo_id)).display().to_string());
    }
    let why_not = if !opts.allow_download {
        "downloads are disabled".to_string()
    } else if opts.env.offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download::download_repo(repo_id, revision, &opts.env, opts.progress) {
            Ok(loc) => {
                return Ok(ResolvedModel {
                    name: repo_id.to_string(),
                    location: loc,
                })
            }
            Err(e) => format!("download failed: {e}"),
        }
    };
    let looked = if looked.is_empty() {
        "no Hugging Face cache directory (HF_HUB_CACHE, HF_HOME and HOME are unset)".to_string()
    } else {
        format!("looked in {}", looked.join(", "))
    };
    Err(EngineError::ModelNotFound(
        spec.to_string(),
        format!("{looked}; {why_not}"),
    ))
}

/// Classifies an existing path.
pub fn resolve_path(path: &Path) -> Result<ResolvedModel> {
    if path.is_file() {
        return Ok(ResolvedModel {
            name: file_stem(path),
            location: ModelLocation::Gguf(path.to_path_buf()),
        });
    }
    if !path.is_dir() {
        return Err(EngineError::bad_file(path, "not a file or directory"));
    }
    if let Some(loc) = classify_dir(path) {
        let name = match &loc {
            ModelLocation::HfDir(d) => dir_name(d),
            ModelLocation::Gguf(f) => file_stem(f),
        };
        return Ok(ResolvedModel {
            name,
            location: loc,
        });
    }
    let ggufs = gguf_files(path);
    let reason = if ggufs.len() > 1 {
        format!(
            "directory has no config.json and several .gguf files ({}); pass one of them",
            ggufs
                .iter()
                .map(|p| file_name(p))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        "directory has no config.json (HF model) and no .gguf file".to_string()
    };
    Err(EngineError::bad_file(path, reason))
}

/// `config.json` → HF directory; else exactly one `.gguf` → that file.
fn classify_dir(dir: &Path) -> Option<ModelLocation> {
    if dir.join("config.json").is_file() {
        return Some(ModelLocation::HfDir(dir.to_path_buf()));
    }
    match gguf_files(dir).as_slice() {
        [one] => Some(ModelLocation::Gguf(one.clone())),
        _ => None,
    }
}

fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    out.sort();
    out
}

/// `Org/Name` or `Org/Name@revision` with HF-legal characters; returns (id, revision).
pub fn parse_repo_id(spec: &str) -> Option<(&str, &str)> {
    let (id, rev) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let legal = |s: &str| {
        !s.is_empty()
            && s.len() <= 96
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let legal_rev = !rev.is_empty()
        && rev.len() <= 256
        && !rev.contains("..")
        && !rev.starts_with('/')
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    (legal(org) && legal(name) && legal_rev).then_some((id, rev))
}

/// `Org/Name` → `models--Org--Name`.
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// Looks up a repo snapshot in an HF hub cache directory: `refs/<revision>` names
/// the commit; a revision that is itself a snapshot directory (a commit hash) is
/// used directly. The snapshot must hold `config.json` or exactly one `.gguf`.
pub fn find_in_hf_cache(hub_dir: &Path, repo_id: &str, revision: &str) -> Option<ModelLocation> {
    let repo_dir = hub_dir.join(repo_folder_name(repo_id));
    let snapshots = repo_dir.join("snapshots");
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .or_else(|| {
            let direct = !revision.contains('/') && snapshots.join(revision).is_dir();
            direct.then(|| revision.to_string())
        })?;
    classify_dir(&snapshots.join(commit))
}

fn expand_tilde(spec: &str, env: &HubEnv) -> PathBuf {
    match (spec.strip_prefix("~/"), &env.home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(spec),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn dir_name(p: &Path) -> String {
    // `canonicalize` turns `.` into a real name; fall back to the path as given.
    std::fs::canonicalize(p)
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .or_else(|| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests;
