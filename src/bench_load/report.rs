//! Output of a run: the human table on stdout and the `--json` document
//! (`{"config": …, "summary": …, "requests": [...]}`: every figure, every record).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::stats::{Dist, RequestRecord, Summary};

/// What was run, as the JSON's `config` and the table's header.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunConfig {
    pub url: String,
    pub model: String,
    pub endpoint: &'static str,
    /// `concurrency` or `request-rate`.
    pub load: &'static str,
    pub concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    pub num_requests: usize,
    pub input_len: usize,
    pub output_len: u32,
    pub prefix_len: usize,
    pub dataset: Option<String>,
    pub tokenizer: Option<String>,
    /// How prompts were built (id pool, text, exact or approximate lengths).
    pub prompts: String,
    pub seed: u64,
    pub warmup: usize,
    pub timeout_s: f64,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
}

#[derive(Serialize)]
struct Document<'a> {
    config: &'a RunConfig,
    summary: &'a Summary,
    requests: Vec<Value>,
}

/// The `--json` document. Each request also gets its derived TPOT and tok/s.
pub fn json_document(config: &RunConfig, summary: &Summary, records: &[RequestRecord]) -> Value {
    let requests = records
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("tpot_ms".into(), serde_json::json!(r.tpot_ms()));
                m.insert("user_tok_s".into(), serde_json::json!(r.user_tok_s()));
            }
            v
        })
        .collect();
    serde_json::to_value(Document {
        config,
        summary,
        requests,
    })
    .unwrap_or(Value::Null)
}

pub fn write_json(path: &Path, doc: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))
}

fn dist_row(out: &mut String, name: &str, d: &Option<Dist>) {
    match d {
        Some(d) => {
            let _ = writeln!(
                out,
                "{name:<16}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>8}",
                d.mean, d.p50, d.p90, d.p99, d.max, d.count
            );
        }
        None => {
            let _ = writeln!(out, "{name:<16}{:>10}", "-");
        }
    }
}

/// The table printed at the end of a run.
pub fn table(c: &RunConfig, s: &Summary) -> String {
    let mut o = String::new();
    let load = match (c.concurrency, c.request_rate) {
        (Some(n), _) => format!("concurrency {n}"),
        (_, Some(r)) => format!("Poisson arrivals at {r} req/s"),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "pdserve bench: {} {} ({}), model {}, {load}",
        c.url, c.endpoint, c.prompts, c.model
    );
    let input = match c.dataset {
        Some(_) => "input from the dataset".to_string(),
        None => format!("input {} tokens", c.input_len),
    };
    let _ = writeln!(
        o,
        "requests {}: completed {}, failed {}; {input}, output {} tokens, prefix {}",
        s.requests, s.completed, s.failed, c.output_len, c.prefix_len
    );
    let _ = writeln!(o, "duration            {:>10.2} s", s.duration_s);
    let _ = writeln!(
        o,
        "request throughput  {:>10.2} req/s",
        s.request_throughput
    );
    let _ = writeln!(o, "output throughput   {:>10.2} tok/s", s.output_throughput);
    let _ = writeln!(
        o,
        "tokens              {:>10} out, {} in (server's count)",
        s.total_output_tokens, s.total_prompt_tokens
    );
    if let (Some(good), Some(rate)) = (s.good_requests, s.goodput) {
        let slo = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x} ms"));
        let _ = writeln!(
            o,
            "goodput             {rate:>10.2} req/s ({good} requests met TTFT <= {}, mean ITL <= {})",
            slo(s.slo.ttft_ms),
            slo(s.slo.itl_ms)
        );
    }
    if s.output_len_mismatches > 0 {
        let _ = writeln!(
            o,
            "warning: {} requests returned another number of tokens than {}",
            s.output_len_mismatches, c.output_len
        );
    }
    let _ = writeln!(
        o,
        "{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}",
        "", "mean", "p50", "p90", "p99", "max", "n"
    );
    dist_row(&mut o, "TTFT (ms)", &s.ttft_ms);
    dist_row(&mut o, "ITL (ms)", &s.itl_ms);
    dist_row(&mut o, "TPOT (ms)", &s.tpot_ms);
    dist_row(&mut o, "E2E (ms)", &s.e2e_ms);
    dist_row(&mut o, "tok/s per user", &s.user_tok_s);
    for (e, n) in s.errors.iter().take(5) {
        let _ = writeln!(o, "error ×{n}: {e}");
    }
    if s.errors.len() > 5 {
        let _ = writeln!(o, "… and {} other errors", s.errors.len() - 5);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_load::stats::Slo;

    fn config() -> RunConfig {
        RunConfig {
            url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            endpoint: "/v1/completions",
            load: "concurrency",
            concurrency: Some(2),
            request_rate: None,
            num_requests: 2,
            input_len: 4,
            output_len: 3,
            prefix_len: 0,
            dataset: None,
            tokenizer: None,
            prompts: "token ids".into(),
            seed: 0,
            warmup: 0,
            timeout_s: 600.0,
            started_unix_s: 1,
        }
    }

    fn records() -> Vec<RequestRecord> {
        vec![
            RequestRecord {
                index: 0,
                ttft_ms: Some(10.0),
                e2e_ms: Some(30.0),
                itl_ms: vec![10.0, 10.0],
                output_tokens: 3,
                prompt_tokens: Some(4),
                content_chunks: 3,
                ..Default::default()
            },
            RequestRecord {
                index: 1,
                start_s: 0.01,
                e2e_ms: Some(5.0),
                error: Some("HTTP 500: boom".into()),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn json_has_config_summary_and_every_request() {
        let slo = Slo {
            ttft_ms: Some(50.0),
            itl_ms: None,
        };
        let s = Summary::of(&records(), 3, slo);
        let doc = json_document(&config(), &s, &records());
        assert_eq!(doc["config"]["model"], "m");
        assert_eq!(doc["config"]["concurrency"], 2);
        assert!(doc["config"]["request_rate"].is_null());
        for k in ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "user_tok_s"] {
            for f in ["mean", "p50", "p90", "p99", "max", "count"] {
                assert!(doc["summary"][k][f].is_number(), "summary.{k}.{f}");
            }
        }
        for k in [
            "request_throughput",
            "output_throughput",
            "goodput",
            "duration_s",
            "completed",
            "failed",
        ] {
            assert!(doc["summary"][k].is_number(), "summary.{k}");
        }
        assert_eq!(doc["summary"]["errors"]["HTTP 500: boom"], 1);
        let reqs = doc["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0]["itl_ms"], serde_json::json!([10.0, 10.0]));
        assert_eq!(reqs[0]["tpot_ms"], 10.0);
        assert_eq!(reqs[0]["user_tok_s"], 100.0);
        assert_eq!(reqs[1]["error"], "HTTP 500: boom");
        assert!(reqs[1]["ttft_ms"].is_null());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.json");
        write_json(&p, &doc).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn table_shows_every_row_and_errors() {
        let s = Summary::of(&records(), 3, Slo::default());
        let t = table(&config(), &s);
        for needle in [
            "TTFT (ms)",
            "ITL (ms)",
            "E2E (ms)",
            "tok/s per user",
            "p99",
            "completed 1, failed 1",
            "HTTP 500: boom",
        ] {
            assert!(t.contains(needle), "missing {needle}:\n{t}");
        }
        assert!(!t.contains("goodput"));
    }
}
