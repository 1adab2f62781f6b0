//! Loading a tokenizer from a Hugging Face model directory.
//!
//! Files: `tokenizer.json` (required, the `tokenizers` crate's format),
//! `tokenizer_config.json` (optional: `chat_template` as a string or as a list of
//! `{name, template}`, `bos_token` / `eos_token` as strings or AddedToken objects,
//! `add_bos_token`), `chat_template.jinja` (optional, overrides the config's template
//! as transformers does), `generation_config.json` (optional: `eos_token_id` as an
//! integer or a list, `bos_token_id`). A file that exists but cannot be read or
//! parsed is an error naming that file.

use std::path::Path;

use serde_json::Value;

use super::Parts;
use crate::{EngineError, Result};

pub(super) fn load(dir: &Path) -> Result<Parts> {
    let tok_path = dir.join("tokenizer.json");
    let bytes = std::fs::read(&tok_path).map_err(|e| EngineError::io(&tok_path, e))?;
    let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
        EngineError::bad_file(&tok_path, format!("not a valid tokenizer.json: {e}"))
    })?;

    let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
    let gen_config = read_json_opt(&dir.join("generation_config.json"))?;

    let token_id = |v: Option<&Value>| -> Option<u32> {
        let name = token_name(v?)?;
        tok.token_to_id(name)
    };
    let cfg = config.as_ref();
    let cfg_get = |key: &str| cfg.and_then(|c| c.get(key));

    let gen_get = |key: &str| gen_config.as_ref().and_then(|c| c.get(key));
    let mut eos_ids: Vec<u32> = token_id(cfg_get("eos_token")).into_iter().collect();
    if let Some(v) = gen_get("eos_token_id") {
        eos_ids.extend(int_list(v));
    }
    let bos_id = token_id(cfg_get("bos_token"))
        .or_else(|| gen_get("bos_token_id").and_then(|v| int_list(v).first().copied()));
    let ensure_bos = cfg_get("add_bos_token").and_then(Value::as_bool) == Some(true);

    let mut chat_template = match cfg_get("chat_template") {
        Some(v) => template_from_config(v)
            .map_err(|reason| EngineError::bad_file(dir.join("tokenizer_config.json"), reason))?,
        None => None,
    };
    let jinja_path = dir.join("chat_template.jinja");
    if jinja_path.is_file() {
        let text =
            std::fs::read_to_string(&jinja_path).map_err(|e| EngineError::io(&jinja_path, e))?;
        chat_template = Some(text);
    }

    Ok(Parts {
        tok,
        bos_id,
        eos_ids,
        ensure_bos,
        chat_template,
    })
}

/// Reads and parses a JSON file; `Ok(None)` when it does not exist.
fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(path, e)),
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(EngineError::bad_file(path, "expected a JSON object"));
    }
    Ok(Some(value))
}

/// A token given as `"<s>"` or as an AddedToken object `{"content": "<s>", ...}`.
fn token_name(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(m) => m.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// An integer or a list of integers (non-integers are ignored).
fn int_list(v: &Value) -> Vec<u32> {
    let one = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` (the one named
/// "default" wins, else the first), or null.
pub(super) fn template_from_config(v: &Value) -> std::result::Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => {
            let mut first = None;
            for item in list {
                let name = item.get("name").and_then(Value::as_str);
                let Some(template) = item.get("template").and_then(Value::as_str) else {
                    return Err("chat_template list entry has no string `template`".into());
                };
                if name == Some("default") {
                    return Ok(Some(template.to_string()));
                }
                first.get_or_insert_with(|| template.to_string());
            }
            Ok(first)
        }
        _ => Err("chat_template must be a string or a list of {name, template}".into()),
    }
}
