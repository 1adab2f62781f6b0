//! Figures of a load run: one [`RequestRecord`] per request as measured, and the
//! [`Summary`] computed from all of them (distributions, throughput, goodput).
//!
//! Definitions (all times in milliseconds unless the name says `_s`):
//! - TTFT: request sent → first content-bearing SSE chunk.
//! - ITL: the gap between two consecutive content-bearing chunks (every gap of every
//!   request is one sample). A chunk may carry several tokens (the server holds back
//!   text while a UTF-8 sequence or stop string is incomplete), so the chunk count can
//!   be below the token count.
//! - TPOT: per request, (E2E − TTFT) / (output tokens − 1).
//! - tok/s per user: per request, 1 / TPOT — the decode speed one user sees.
//! - E2E: request sent → stream ended (`[DONE]`).
//! - goodput: requests that meet every SLO given (TTFT ≤ `--slo-ttft-ms`, mean ITL of
//!   the request ≤ `--slo-itl-ms`) per second of the run.
//!
//! Percentiles interpolate linearly between closest ranks (numpy's default), so the
//! p50 of an even-sized sample is the mean of its two middle values.
//! Invariant: no figure is NaN or infinite; an empty sample gives `None`.

use std::collections::BTreeMap;

use serde::Serialize;

/// What one request measured. Times are relative to the benchmark's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestRecord {
    pub index: usize,
    /// When the request was sent, seconds after the run began.
    pub start_s: f64,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub itl_ms: Vec<f64>,
    /// From the final usage chunk when the server sends one, else content chunks.
    pub output_tokens: u64,
    /// The server's `usage.prompt_tokens`, when sent.
    pub prompt_tokens: Option<u64>,
    pub content_chunks: u64,
    pub error: Option<String>,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn tpot_ms(&self) -> Option<f64> {
        let (ttft, e2e) = (self.ttft_ms?, self.e2e_ms?);
        (self.output_tokens > 1 && e2e > ttft)
            .then(|| (e2e - ttft) / (self.output_tokens - 1) as f64)
    }

    pub fn user_tok_s(&self) -> Option<f64> {
        self.tpot_ms().map(|t| 1000.0 / t)
    }

    pub fn mean_itl_ms(&self) -> Option<f64> {
        mean(&self.itl_ms)
    }

    /// Whether the request met every given SLO (a missing TTFT fails a TTFT SLO; a
    /// request with fewer than two chunks has no ITL and passes an ITL SLO).
    pub fn meets(&self, slo: &Slo) -> bool {
        let ttft_ok = slo
            .ttft_ms
            .is_none_or(|max| self.ttft_ms.is_some_and(|t| t <= max));
        let itl_ok = slo
            .itl_ms
            .is_none_or(|max| self.mean_itl_ms().is_none_or(|t| t <= max));
        self.ok() && ttft_ok && itl_ok
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub itl_ms: Option<f64>,
}

impl Slo {
    pub fn any(&self) -> bool {
        self.ttft_ms.is_some() || self.itl_ms.is_some()
    }
}

/// One distribution's figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Dist {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// `None` for an empty sample; non-finite values are dropped.
    pub fn of(values: &[f64]) -> Option<Dist> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Dist {
            count: v.len(),
            mean: mean(&v)?,
            min: v[0],
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p99: percentile_sorted(&v, 99.0),
            max: v[v.len() - 1],
        })
    }
}

pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The `p`-th percentile (0..=100) of an ascending, non-empty sample, linear
/// interpolation between closest ranks.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The whole run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// First request sent → last request ended.
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_output_tokens: u64,
    /// Sum of the server's `usage.prompt_tokens` over completed requests.
    pub total_prompt_tokens: u64,
    /// Completed requests whose output token count differs from `--output-len`.
    pub output_len_mismatches: usize,
    pub slo: Slo,
    /// Requests meeting every SLO, when any SLO is given.
    pub good_requests: Option<usize>,
    pub goodput: Option<f64>,
    pub ttft_ms: Option<Dist>,
    pub itl_ms: Option<Dist>,
    pub tpot_ms: Option<Dist>,
    pub e2e_ms: Option<Dist>,
    pub user_tok_s: Option<Dist>,
    /// Error message → how many requests failed with it.
    pub errors: BTreeMap<String, usize>,
}

impl Summary {
    pub fn of(records: &[RequestRecord], expected_output: u64, slo: Slo) -> Summary {
        let done: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let start = records
            .iter()
            .map(|r| r.start_s)
            .fold(f64::INFINITY, f64::min);
        let end = records
            .iter()
            .map(|r| r.start_s + r.e2e_ms.unwrap_or(0.0) / 1000.0)
            .fold(f64::NEG_INFINITY, f64::max);
        let duration_s = if records.is_empty() {
            0.0
        } else {
            (end - start).max(0.0)
        };
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let total_output_tokens: u64 = done.iter().map(|r| r.output_tokens).sum();
        let pick = |f: &dyn Fn(&RequestRecord) -> Option<f64>| -> Vec<f64> {
            done.iter().filter_map(|r| f(r)).collect()
        };
        let itl: Vec<f64> = done.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
        let good = slo
            .any()
            .then(|| records.iter().filter(|r| r.meets(&slo)).count());
        let mut errors = BTreeMap::new();
        for e in records.iter().filter_map(|r| r.error.as_ref()) {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
        Summary {
            requests: records.len(),
            completed: done.len(),
            failed: records.len() - done.len(),
            duration_s,
            request_throughput: per_s(done.len() as f64),
            output_throughput: per_s(total_output_tokens as f64),
            total_output_tokens,
            total_prompt_tokens: done.iter().filter_map(|r| r.prompt_tokens).sum(),
            output_len_mismatches: done
                .iter()
                .filter(|r| r.output_tokens != expected_output)
                .count(),
            slo,
            good_requests: good,
            goodput: good.map(|g| per_s(g as f64)),
            ttft_ms: Dist::of(&pick(&|r| r.ttft_ms)),
            itl_ms: Dist::of(&itl),
            tpot_ms: Dist::of(&pick(&|r| r.tpot_ms())),
            e2e_ms: Dist::of(&pick(&|r| r.e2e_ms)),
            user_tok_s: Dist::of(&pick(&|r| r.user_tok_s())),
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // numpy.percentile(range(1, 11), [0, 50, 90, 99, 100])
        assert!(close(percentile_sorted(&v, 0.0), 1.0));
        assert!(close(percentile_sorted(&v, 50.0), 5.5));
        assert!(close(percentile_sorted(&v, 90.0), 9.1));
        assert!(close(percentile_sorted(&v, 99.0), 9.91));
        assert!(close(percentile_sorted(&v, 100.0), 10.0));
        assert!(close(percentile_sorted(&[7.0], 99.0), 7.0));
    }

    #[test]
    fn dist_sorts_drops_non_finite_and_handles_empty() {
        let d = Dist::of(&[3.0, f64::NAN, 1.0, 2.0, f64::INFINITY]).unwrap();
        assert_eq!(d.count, 3);
        assert!(close(d.mean, 2.0) && close(d.p50, 2.0));
        assert!(close(d.min, 1.0) && close(d.max, 3.0));
        assert!(close(d.p90, 2.8));
        assert!(Dist::of(&[]).is_none());
        assert!(Dist::of(&[f64::NAN]).is_none());
    }

    fn rec(start_s: f64, ttft: f64, e2e: f64, tokens: u64, itl: &[f64]) -> RequestRecord {
        RequestRecord {
            start_s,
            ttft_ms: Some(ttft),
            e2e_ms: Some(e2e),
            itl_ms: itl.to_vec(),
            output_tokens: tokens,
            prompt_tokens: Some(10),
            content_chunks: tokens,
            ..Default::default()
        }
    }

    #[test]
    fn per_request_figures() {
        let r = rec(0.0, 100.0, 500.0, 5, &[100.0, 100.0, 100.0, 100.0]);
        assert!(close(r.tpot_ms().unwrap(), 100.0));
        assert!(close(r.user_tok_s().unwrap(), 10.0));
        assert!(close(r.mean_itl_ms().unwrap(), 100.0));
        let one = rec(0.0, 100.0, 100.0, 1, &[]);
        assert_eq!(one.tpot_ms(), None);
        let slo = Slo {
            ttft_ms: Some(150.0),
            itl_ms: Some(99.0),
        };
        assert!(!r.meets(&slo));
        assert!(r.meets(&Slo {
            ttft_ms: Some(150.0),
            itl_ms: Some(100.0)
        }));
        assert!(one.meets(&slo), "no ITL sample passes the ITL SLO");
    }

    #[test]
    fn summary_counts_throughput_goodput_and_errors() {
        let mut records = vec![
            rec(0.0, 100.0, 1000.0, 4, &[300.0, 300.0, 300.0]),
            rec(1.0, 300.0, 1000.0, 4, &[200.0, 250.0, 250.0]),
            rec(1.0, 50.0, 500.0, 3, &[200.0, 250.0]),
        ];
        records.push(RequestRecord {
            start_s: 0.5,
            e2e_ms: Some(100.0),
            error: Some("HTTP 503".into()),
            ..Default::default()
        });
        records.push(RequestRecord {
            start_s: 0.5,
            error: Some("HTTP 503".into()),
            ..Default::default()
        });
        let slo = Slo {
            ttft_ms: Some(200.0),
            itl_ms: Some(250.0),
        };
        let s = Summary::of(&records, 4, slo);
        assert_eq!((s.requests, s.completed, s.failed), (5, 3, 2));
        assert!(close(s.duration_s, 2.0));
        assert!(close(s.request_throughput, 1.5));
        assert_eq!(s.total_output_tokens, 11);
        assert!(close(s.output_throughput, 5.5));
        assert_eq!(s.total_prompt_tokens, 30);
        assert_eq!(s.output_len_mismatches, 1);
        // Only the third meets both SLOs (the first's ITL, the second's TTFT fail).
        assert_eq!(s.good_requests, Some(1));
        assert!(close(s.goodput.unwrap(), 0.5));
        assert_eq!(s.ttft_ms.unwrap().count, 3);
        assert_eq!(s.itl_ms.unwrap().count, 8);
        assert_eq!(s.errors.get("HTTP 503"), Some(&2));
        let none = Summary::of(&records, 4, Slo::default());
        assert_eq!((none.good_requests, none.goodput), (None, None));
        let empty = Summary::of(&[], 4, Slo::default());
        assert_eq!((empty.duration_s, empty.request_throughput), (0.0, 0.0));
        assert!(empty.ttft_ms.is_none());
    }
}
