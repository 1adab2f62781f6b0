//! Range checks of [`SamplingParams`](super::SamplingParams), producing
//! `EngineError::InvalidRequest` messages fit for an HTTP 400: each names the field,
//! the allowed range and the value received.
//!
//! Invariant: a params value that passes `check` cannot make the sampler divide by
//! zero, produce NaN weights, or hold an unbounded number of stop strings.

use super::SamplingParams;
use crate::{EngineError, Result};

/// Most alternatives a request may ask for per token (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Bound of the presence and frequency penalties (OpenAI's range).
pub const MAX_ABS_PENALTY: f32 = 2.0;

fn bad(msg: String) -> EngineError {
    EngineError::InvalidRequest(msg)
}

pub fn check(p: &SamplingParams) -> Result<()> {
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return Err(bad(format!(
            "temperature must be a finite number >= 0, got {}",
            p.temperature
        )));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(bad(format!("top_p must be in (0, 1], got {}", p.top_p)));
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return Err(bad(format!("min_p must be in [0, 1], got {}", p.min_p)));
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
        return Err(bad(format!(
            "repetition_penalty must be a finite number > 0, got {}",
            p.repetition_penalty
        )));
    }
    for (name, v) in [
        ("presence_penalty", p.presence_penalty),
        ("frequency_penalty", p.frequency_penalty),
    ] {
        if !(-MAX_ABS_PENALTY..=MAX_ABS_PENALTY).contains(&v) {
            return Err(bad(format!(
                "{name} must be in [-{MAX_ABS_PENALTY}, {MAX_ABS_PENALTY}], got {v}"
            )));
        }
    }
    if p.max_tokens < 1 {
        return Err(bad(format!(
            "max_tokens must be >= 1, got {}",
            p.max_tokens
        )));
    }
    if p.min_tokens > p.max_tokens {
        return Err(bad(format!(
            "min_tokens ({}) must not exceed max_tokens ({})",
            p.min_tokens, p.max_tokens
        )));
    }
    if let Some(n) = p.logprobs {
        if n > MAX_LOGPROBS {
            return Err(bad(format!("logprobs must be <= {MAX_LOGPROBS}, got {n}")));
        }
    }
    if p.stop.len() > MAX_STOP_STRINGS {
        return Err(bad(format!(
            "stop may hold at most {MAX_STOP_STRINGS} strings, got {}",
            p.stop.len()
        )));
    }
    if let Some(i) = p.stop.iter().position(|s| s.is_empty()) {
        return Err(bad(format!("stop[{i}] is an empty string")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(p: SamplingParams) -> String {
        match check(&p) {
            Err(EngineError::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_greedy_are_valid() {
        assert!(check(&SamplingParams::default()).is_ok());
        assert!(check(&SamplingParams::greedy(1)).is_ok());
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 40,
            top_p: 1.0,
            min_p: 1.0,
            repetition_penalty: 0.5,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            min_tokens: 10,
            max_tokens: 10,
            logprobs: Some(20),
            stop: vec!["x".into(); 16],
            ..Default::default()
        };
        assert!(check(&p).is_ok());
    }

    #[test]
    fn each_bad_field_is_named_with_its_value() {
        let d = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..d()
                },
                "temperature",
                "-0.1",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..d()
                },
                "temperature",
                "NaN",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..d()
                },
                "temperature",
                "inf",
            ),
            (SamplingParams { top_p: 0.0, ..d() }, "top_p", "0"),
            (SamplingParams { top_p: 1.01, ..d() }, "top_p", "1.01"),
            (
                SamplingParams {
                    top_p: f32::NAN,
                    ..d()
                },
                "top_p",
                "NaN",
            ),
            (SamplingParams { min_p: -0.5, ..d() }, "min_p", "-0.5"),
            (SamplingParams { min_p: 1.5, ..d() }, "min_p", "1.5"),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..d()
                },
                "repetition_penalty",
                "0",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::NAN,
                    ..d()
                },
                "repetition_penalty",
                "NaN",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..d()
                },
                "presence_penalty",
                "2.5",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..d()
                },
                "frequency_penalty",
                "-3",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..d()
                },
                "frequency_penalty",
                "NaN",
            ),
            (
                SamplingParams {
                    max_tokens: 0,
                    ..d()
                },
                "max_tokens",
                "0",
            ),
            (
                SamplingParams {
                    min_tokens: 5,
                    max_tokens: 4,
                    ..d()
                },
                "min_tokens",
                "5",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..d()
                },
                "logprobs",
                "21",
            ),
            (
                SamplingParams {
                    stop: vec!["a".into(); 17],
                    ..d()
                },
                "stop",
                "17",
            ),
            (
                SamplingParams {
                    stop: vec!["a".into(), String::new()],
                    ..d()
                },
                "stop[1]",
                "empty",
            ),
        ];
        for (p, field, value) in cases {
            let m = err_of(p);
            assert!(
                m.contains(field) && m.contains(value),
                "{field}/{value}: {m}"
            );
        }
    }

    #[test]
    fn top_k_any_value_is_accepted() {
        for k in [0, 1, usize::MAX] {
            assert!(check(&SamplingParams {
                top_k: k,
                ..Default::default()
            })
            .is_ok());
        }
    }
}
