//! Downloading an HF repo into the local HF cache with `hf-hub` (sync API).
//!
//! Only the files a model needs are fetched: config, generation config, tokenizer
//! files and safetensors weights (index + shards). A repo without `config.json`
//! but with exactly one `.gguf` file yields that file. The endpoint is hf-hub's
//! (overridable with `HF_ENDPOINT`); files land in the same cache layout that
//! [`super::find_in_hf_cache`] reads, so the next run resolves offline.

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

use super::{HubEnv, ModelLocation};

/// Small files fetched when present.
const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Downloads `repo_id` at `revision`; errors are plain text for the caller's
/// "not found" message.
pub fn download_repo(
    repo_id: &str,
    revision: &str,
    env: &HubEnv,
    progress: bool,
) -> std::result::Result<ModelLocation, String> {
    let hub = env
        .hf_cache_dir()
        .ok_or_else(|| "no cache directory to download into".to_string())?;
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(hub)
        .with_progress(progress);
    if env.hf_token.is_some() {
        builder = builder.with_token(env.hf_token.clone());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo.info().map_err(|e| e.to_string())?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let has = |f: &str| files.iter().any(|x| x == f);

    if has("config.json") {
        let config = get(&repo, "config.json")?;
        for f in SIDE_FILES.iter().filter(|f| has(f)) {
            get(&repo, f)?;
        }
        if has("model.safetensors") {
            get(&repo, "model.safetensors")?;
        } else if has("model.safetensors.index.json") {
            let index = get(&repo, "model.safetensors.index.json")?;
            for shard in shard_names(&index)? {
                if !has(&shard) {
                    return Err(format!("index names shard `{shard}`, which the repo lacks"));
                }
                get(&repo, &shard)?;
            }
        } else {
            return Err(format!(
                "repo `{repo_id}` has no model.safetensors or model.safetensors.index.json"
            ));
        }
        let dir = config
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| "downloaded config.json has no parent directory".to_string())?;
        return Ok(ModelLocation::HfDir(dir));
    }
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelLocation::Gguf(get(&repo, one)?)),
        [] => Err(format!(
            "repo `{repo_id}` has no config.json and no .gguf file"
        )),
        many => Err(format!(
            "repo `{repo_id}` has several .gguf files ({}); download one and pass its path",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn get(repo: &ApiRepo, file: &str) -> std::result::Result<PathBuf, String> {
    repo.get(file).map_err(|e| format!("{file}: {e}"))
}

/// Distinct shard file names from a downloaded index.
fn shard_names(index: &std::path::Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no weight_map", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}
