//! `pdserve generate`: one prompt through the engine, text streamed to stdout as it
//! is produced, timing summary on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use pdserve_engine::engine::{Engine, EngineRequest};
use pdserve_engine::loader::load_model;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::tokenizer::{ChatMessage, Tokenizer};
use pdserve_engine::SeqId;

use crate::cli::GenerateArgs;

pub fn run(args: &GenerateArgs) -> Result<()> {
    let config = args.engine.engine_config()?;
    let model = load_model(&args.model.model, &args.model.load_options())?;
    let name = model.name.clone();
    let mut engine = Engine::new(model, config)?;

    let prompt_tokens = encode_prompt(engine.tokenizer(), args)?;
    let params = sampling_params(args);
    params.validate()?;
    let num_prompt = prompt_tokens.len();
    tracing::info!(model = %name, prompt_tokens = num_prompt, "generating");

    let start = Instant::now();
    engine.add_request(EngineRequest {
        id: SeqId(0),
        prompt_tokens,
        params,
    })?;

    let mut out = std::io::stdout().lock();
    let mut first_token: Option<Instant> = None;
    let mut generated = 0usize;
    let mut finish = None;
    while finish.is_none() && engine.has_work() {
        for o in engine.step()? {
            first_token.get_or_insert_with(Instant::now);
            generated += 1;
            if !o.text.is_empty() && write_delta(&mut out, &o.text).is_err() {
                // Reader went away (e.g. `| head`): stop quietly.
                engine.abort(o.id);
                return Ok(());
            }
            if o.finish.is_some() {
                finish = o.finish;
            }
        }
    }
    let end = Instant::now();
    let _ = writeln!(out);
    let _ = out.flush();

    let stats = Stats {
        prompt_tokens: num_prompt,
        generated,
        ttft: first_token.map(|t| t - start),
        decode: first_token.map(|t| end - t),
    };
    eprintln!("{}", stats.summary());
    if let Some(reason) = finish {
        tracing::debug!(?reason, "finished");
    }
    Ok(())
}

fn write_delta(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Prompt text → token ids, through the chat template when asked.
fn encode_prompt(tok: &Tokenizer, args: &GenerateArgs) -> Result<Vec<u32>> {
    let chat = args.chat || args.system.is_some();
    let ids = if chat {
        if !tok.has_chat_template() {
            bail!("--chat: this model has no chat template");
        }
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        let text = tok.apply_chat_template(&messages, true, &serde_json::Value::Null)?;
        // The template already holds any BOS the model wants.
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    if ids.is_empty() {
        bail!("the prompt encodes to zero tokens");
    }
    Ok(ids)
}

fn sampling_params(args: &GenerateArgs) -> SamplingParams {
    SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        ignore_eos: args.ignore_eos,
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    }
}

/// Timing of one generation.
struct Stats {
    prompt_tokens: usize,
    generated: usize,
    /// Request added → first token.
    ttft: Option<Duration>,
    /// First token → last token.
    decode: Option<Duration>,
}

impl Stats {
    fn summary(&self) -> String {
        let rate = |n: usize, d: Option<Duration>| match d {
            Some(d) if n > 0 && d.as_secs_f64() > 0.0 => {
                format!("{:.1}", n as f64 / d.as_secs_f64())
            }
            _ => "-".to_string(),
        };
        let ttft = self
            .ttft
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into());
        format!(
            "prompt tokens: {}, generated tokens: {}, prefill: {} tok/s, decode: {} tok/s, TTFT: {}",
            self.prompt_tokens,
            self.generated,
            rate(self.prompt_tokens, self.ttft),
            rate(self.generated.saturating_sub(1), self.decode),
            ttft
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_rates() {
        let s = Stats {
            prompt_tokens: 100,
            generated: 11,
            ttft: Some(Duration::from_millis(50)),
            decode: Some(Duration::from_millis(500)),
        };
        let line = s.summary();
        assert!(line.contains("prompt tokens: 100"), "{line}");
        assert!(line.contains("generated tokens: 11"), "{line}");
        assert!(line.contains("prefill: 2000.0 tok/s"), "{line}");
        assert!(line.contains("decode: 20.0 tok/s"), "{line}");
        assert!(line.contains("TTFT: 50.0 ms"), "{line}");
        let none = Stats {
            prompt_tokens: 3,
            generated: 0,
            ttft: None,
            decode: None,
        };
        assert!(none.summary().contains("decode: - tok/s"));
    }
}
