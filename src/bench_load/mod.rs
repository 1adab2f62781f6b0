//! `pdserve bench`: a load generator for any OpenAI-compatible server (pdserve's
//! own, vLLM, SGLang, …) over plain HTTP.
//!
//! Every request streams (`stream: true`, `stream_options.include_usage`) with
//! `ignore_eos: true` and `max_tokens = --output-len`, so output lengths are fixed;
//! prompts have exact token lengths (see [`prompts`]) or come from a ShareGPT file
//! ([`dataset`]). Requests arrive closed-loop (`--concurrency`) or as a seeded
//! Poisson process (`--request-rate`) ([`runner`]); each is measured from its SSE
//! stream ([`client`], [`sse`]) into TTFT, inter-token latencies and E2E, and the
//! run is summarised ([`stats`]) into a table, a `--json` document ([`report`]) and
//! a `--plot` PNG ([`plot`]).
//!
//! Invariants: a failed request is counted, never fatal, and every request is
//! bounded by `--timeout-s`; bad arguments or input files end with one `error:`
//! line before any request is sent; the run exits 1 only when no request completed.

mod client;
mod dataset;
mod plot;
mod prompts;
mod report;
mod runner;
mod sse;
mod stats;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use indicatif::ProgressBar;

use crate::bench_engine::SplitMix64;
use client::BaseUrl;
pub use prompts::Endpoint;
use prompts::Payload;
use runner::{Load, Target};
use stats::{Slo, Summary};

#[derive(Args, Debug, Clone)]
pub struct BenchLoadArgs {
    /// The server's base URL (plain http:// only).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name sent in requests (default: the first id of GET /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    /// Closed loop: this many clients, each sending its next request when its
    /// previous one ends (the default, with 1 client).
    #[arg(long, conflicts_with = "request_rate",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Open loop: Poisson arrivals at this many requests per second (seeded).
    #[arg(long)]
    pub request_rate: Option<f64>,
    /// Measured requests.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_requests: u32,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub input_len: u32,
    /// Generated tokens per request (max_tokens, with ignore_eos).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub output_len: u32,
    /// ShareGPT JSON file: its first human turns become the (chat) prompts.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Tokens every prompt shares at its start (prefix-cache benchmarks).
    #[arg(long, default_value_t = 0)]
    pub prefix_len: u32,
    /// Model whose tokenizer sizes the prompts (GGUF, HF dir, repo id, `default`):
    /// ids from its whole vocabulary, and exact lengths for --endpoint chat.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Seed for prompts, dataset order and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the config, the summary and every request's figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency over time and an ITL histogram into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// TTFT SLO (ms) for goodput.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// Mean inter-token latency SLO (ms) for goodput.
    #[arg(long)]
    pub slo_itl_ms: Option<f64>,
    /// API to call (default: completions with token-id prompts; chat with --dataset).
    #[arg(long, value_enum)]
    pub endpoint: Option<Endpoint>,
    /// Unmeasured requests sent first.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Per-request limit in seconds (a request over it counts as failed).
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
}

/// Everything decided before the first request.
struct Plan {
    base: BaseUrl,
    endpoint: Endpoint,
    load: Load,
    slo: Slo,
    timeout: Duration,
    /// Warm-up prompts first, then the measured ones.
    prompts: Vec<Payload>,
    prompts_note: String,
    approximate: bool,
}

fn positive(name: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            bail!("{name} must be a positive number, got {x}")
        }
        _ => Ok(()),
    }
}

fn plan(args: &BenchLoadArgs) -> Result<Plan> {
    positive("--request-rate", args.request_rate)?;
    positive("--slo-ttft-ms", args.slo_ttft_ms)?;
    positive("--slo-itl-ms", args.slo_itl_ms)?;
    positive("--timeout-s", Some(args.timeout_s))?;
    let base = BaseUrl::parse(&args.url)?;
    let (n, len) = (
        (args.num_requests + args.warmup) as usize,
        args.input_len as usize,
    );
    let prefix = args.prefix_len as usize;
    if prefix > len {
        bail!("--prefix-len {prefix} is longer than --input-len {len}");
    }
    let endpoint = args.endpoint.unwrap_or(if args.dataset.is_some() {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    });
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(prompts::load_tokenizer)
        .transpose()?;
    let mut rng = SplitMix64(args.seed);
    let mut approximate = false;
    let (prompts, prompts_note) = if let Some(path) = &args.dataset {
        if prefix > 0 {
            bail!("--prefix-len does not apply to --dataset prompts");
        }
        let d = dataset::load(path)?;
        let note = format!(
            "ShareGPT first human turns from {} ({} usable, {} skipped)",
            path.display(),
            d.prompts.len(),
            d.skipped
        );
        let texts = d.sample(n, args.seed);
        (texts.into_iter().map(Payload::Text).collect(), note)
    } else {
        match (endpoint, &tokenizer) {
            (Endpoint::Completions, None) => (
                prompts::token_prompts(&mut rng, &prompts::default_pool(), n, len, prefix),
                "random token ids in [100, 10000), exact length".to_string(),
            ),
            (Endpoint::Completions, Some(tok)) => {
                let pool = prompts::tokenizer_pool(tok);
                if pool.is_empty() {
                    bail!("--tokenizer: the vocabulary has no ordinary token");
                }
                let note = format!(
                    "random token ids from {} ordinary ids of the tokenizer, exact length",
                    pool.len()
                );
                (
                    prompts::token_prompts(&mut rng, &pool, n, len, prefix),
                    note,
                )
            }
            (Endpoint::Chat, Some(tok)) => (
                prompts::exact_text_prompts(tok, &mut rng, n, len, prefix)?,
                "text of exactly --input-len tokens (plus the chat template)".to_string(),
            ),
            (Endpoint::Chat, None) => {
                approximate = true;
                (
                    prompts::word_prompts(&mut rng, n, len, prefix),
                    "text of --input-len common words, about one token each (approximate)"
                        .to_string(),
                )
            }
        }
    };
    let load = match args.request_rate {
        Some(per_s) => Load::Rate {
            per_s,
            seed: args.seed,
        },
        None => Load::Concurrency(args.concurrency.unwrap_or(1) as usize),
    };
    Ok(Plan {
        base,
        endpoint,
        load,
        slo: Slo {
            ttft_ms: args.slo_ttft_ms,
            itl_ms: args.slo_itl_ms,
        },
        timeout: Duration::from_secs_f64(args.timeout_s),
        prompts,
        prompts_note,
        approximate,
    })
}

pub fn run(args: &BenchLoadArgs) -> Result<()> {
    let plan = plan(args)?;
    if plan.approximate {
        eprintln!(
            "note: without --tokenizer, chat prompts are approximately --input-len tokens; \
             usage.prompt_tokens in --json has the server's count"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_plan(args, plan))
}

async fn run_plan(args: &BenchLoadArgs, plan: Plan) -> Result<()> {
    let client = client::http_client();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => client::first_model(&client, &plan.base).await?,
    };
    let bodies: Vec<Bytes> = plan
        .prompts
        .iter()
        .map(|p| {
            let body = prompts::request_body(plan.endpoint, &model, p, args.output_len);
            Bytes::from(body.to_string())
        })
        .collect();
    let target = Arc::new(Target {
        client,
        uri: plan.base.join(plan.endpoint.path())?,
        timeout: plan.timeout,
    });
    let mut measured = bodies;
    let warm: Vec<Bytes> = measured.drain(..args.warmup as usize).collect();
    if !warm.is_empty() {
        let c = match plan.load {
            Load::Concurrency(c) => c,
            Load::Rate { .. } => 1,
        };
        let hidden = ProgressBar::hidden();
        let records = runner::run(target.clone(), warm, Load::Concurrency(c), &hidden).await;
        if let Some(e) = records
            .iter()
            .all(|r| !r.ok())
            .then(|| records[0].error.clone())
        {
            bail!(
                "every warm-up request to {} failed: {}",
                target.uri,
                e.unwrap_or_default()
            );
        }
    }

    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bar = runner::progress(measured.len(), "bench");
    let records = runner::run(target.clone(), measured, plan.load, &bar).await;
    bar.finish_and_clear();

    let summary = Summary::of(&records, args.output_len as u64, plan.slo);
    let config = report::RunConfig {
        url: plan.base.as_str().to_string(),
        model,
        endpoint: plan.endpoint.path(),
        load: match plan.load {
            Load::Concurrency(_) => "concurrency",
            Load::Rate { .. } => "request-rate",
        },
        concurrency: match plan.load {
            Load::Concurrency(c) => Some(c),
            Load::Rate { .. } => None,
        },
        request_rate: args.request_rate,
        num_requests: records.len(),
        input_len: args.input_len as usize,
        output_len: args.output_len,
        prefix_len: args.prefix_len as usize,
        dataset: args.dataset.as_ref().map(|p| p.display().to_string()),
        tokenizer: args.tokenizer.clone(),
        prompts: plan.prompts_note.clone(),
        seed: args.seed,
        warmup: args.warmup as usize,
        timeout_s: args.timeout_s,
        started_unix_s,
    };
    print!("{}", report::table(&config, &summary));
    if let Some(path) = &args.json {
        report::write_json(path, &report::json_document(&config, &summary, &records))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let text = plot::draw(path, &records)?;
        if !text {
            eprintln!(
                "note: no TrueType font found (set PDSERVE_PLOT_FONT to a .ttf file): \
                 the plot has no labels"
            );
        }
        eprintln!("wrote {}", path.display());
    }
    if summary.completed == 0 {
        let first = summary.errors.keys().next().cloned().unwrap_or_default();
        bail!("all {} requests failed (e.g. {first})", summary.requests);
    }
    Ok(())
}
