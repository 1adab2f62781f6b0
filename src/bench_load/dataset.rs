//! ShareGPT-format datasets: a JSON list of `{"conversations": [{"from": "human",
//! "value": "..."}, {"from": "gpt", "value": "..."}, ...]}`. The first human turn
//! (`from` = `human` or `user`) of each conversation becomes one chat prompt; the
//! output length comes from `--output-len`, not from the recorded answer.
//!
//! Invariants: a file that cannot be read, is not JSON, is not a list, or holds no
//! usable conversation is an error whose one-line message names the file and the
//! reason; entries of another shape (no `conversations`, no human turn, empty text)
//! are skipped and counted. Nothing here panics on any input.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench_engine::SplitMix64;

/// The usable prompts of a dataset file.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub prompts: Vec<String>,
    /// Entries skipped for their shape.
    pub skipped: usize,
}

pub fn load(path: &Path) -> Result<Dataset> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("dataset {}", path.display()))?;
    parse(&text).with_context(|| format!("dataset {}", path.display()))
}

pub fn parse(text: &str) -> Result<Dataset> {
    let v: Value = serde_json::from_str(text).context("not valid JSON")?;
    let Some(entries) = v.as_array() else {
        bail!(
            "expected a JSON list of ShareGPT conversations, found {}",
            kind(&v)
        );
    };
    let mut prompts = Vec::new();
    let mut skipped = 0;
    for e in entries {
        match first_human_turn(e) {
            Some(p) => prompts.push(p.to_string()),
            None => skipped += 1,
        }
    }
    if prompts.is_empty() {
        bail!(
            "no usable conversation among {} entries (each needs \"conversations\": \
             [{{\"from\": \"human\", \"value\": \"...\"}}, ...])",
            entries.len()
        );
    }
    Ok(Dataset { prompts, skipped })
}

fn first_human_turn(entry: &Value) -> Option<&str> {
    entry
        .get("conversations")?
        .as_array()?
        .iter()
        .find(|t| {
            matches!(
                t.get("from").and_then(Value::as_str),
                Some("human" | "user")
            )
        })?
        .get("value")?
        .as_str()
        .filter(|s| !s.trim().is_empty())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Dataset {
    /// `n` prompts in a seeded random order, cycling when the file has fewer.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.prompts.len()).collect();
        let mut rng = SplitMix64(seed);
        // Fisher–Yates.
        for i in (1..order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        (0..n)
            .map(|k| self.prompts[order[k % order.len()]].clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"[
      {"id": "a", "conversations": [
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "4"}]},
      {"id": "b", "conversations": [{"from": "gpt", "value": "only an answer"}]},
      {"id": "c"},
      {"id": "d", "conversations": [
        {"from": "system", "value": "be nice"},
        {"from": "user", "value": "Name a color."},
        {"from": "human", "value": "later turn"}]},
      {"id": "e", "conversations": [{"from": "human", "value": "   "}]},
      42
    ]"#;

    #[test]
    fn parses_first_human_turns_and_skips_the_rest() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.prompts, vec!["What is 2+2?", "Name a color."]);
        assert_eq!(d.skipped, 4);
    }

    #[test]
    fn sample_is_seeded_and_cycles() {
        let d = Dataset {
            prompts: (0..5).map(|i| i.to_string()).collect(),
            skipped: 0,
        };
        let a = d.sample(12, 1);
        assert_eq!(a, d.sample(12, 1));
        assert_eq!(a.len(), 12);
        // The first five are a permutation; then the order repeats.
        let mut first: Vec<String> = a[..5].to_vec();
        first.sort();
        assert_eq!(first, d.prompts);
        assert_eq!(a[..5], a[5..10]);
        assert_ne!(d.sample(5, 1), d.sample(5, 2));
    }

    #[test]
    fn bad_files_give_one_clear_line() {
        let msg = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(
            msg("{oops").starts_with("not valid JSON"),
            "{}",
            msg("{oops")
        );
        assert!(msg(r#"{"conversations": []}"#).contains("expected a JSON list"));
        assert!(msg("[]").contains("no usable conversation among 0 entries"));
        assert!(msg(r#"[{"conversations": "x"}]"#).contains("no usable conversation"));
        let missing = load(Path::new("/nonexistent/sharegpt.json")).unwrap_err();
        let line = format!("{missing:#}");
        assert!(line.contains("/nonexistent/sharegpt.json"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        std::fs::write(&p, "[1, 2]").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.starts_with(&format!("dataset {}", p.display())), "{e}");
        std::fs::write(&p, GOOD).unwrap();
        assert_eq!(load(&p).unwrap().prompts.len(), 2);
    }
}
