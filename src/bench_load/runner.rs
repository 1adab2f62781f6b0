//! Drives the requests: closed-loop clients (`--concurrency C`: C tasks, each sends
//! its next request when the previous one ended) or an open loop (`--request-rate
//! R`: Poisson arrivals, seeded, each request sent at its planned time whatever is
//! still running).
//!
//! Invariants: every request is sent exactly once and yields exactly one record,
//! returned in request order; each request is bounded by the timeout, so a run ends
//! within (schedule length + timeout) in the open loop and (N / C + 1) × timeout in
//! the closed loop; a failed request is recorded, never fatal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use super::client::{send_streaming, HttpClient};
use super::stats::RequestRecord;
use crate::bench_engine::SplitMix64;

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Closed loop with this many clients.
    Concurrency(usize),
    /// Open loop, Poisson arrivals at this many requests per second.
    Rate { per_s: f64, seed: u64 },
}

/// Send times (seconds after the start) of `n` Poisson arrivals at `rate` per
/// second: exponential gaps with mean 1/rate, the first request at 0.
pub fn poisson_schedule(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                // Uniform in (0, 1]: 53 random bits, never 0 so ln stays finite.
                let u = ((rng.next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
                t += -u.ln() / rate;
            }
            t
        })
        .collect()
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress(n: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:40}] {pos}/{len} requests, {elapsed} elapsed, eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// The shared, read-only part of a run.
pub struct Target {
    pub client: HttpClient,
    pub uri: Uri,
    pub timeout: Duration,
}

/// Sends every body under `load`; one record per body, in body order. `t0` for the
/// records is the moment this is called.
pub async fn run(
    target: Arc<Target>,
    bodies: Vec<Bytes>,
    load: Load,
    bar: &ProgressBar,
) -> Vec<RequestRecord> {
    let n = bodies.len();
    let bodies = Arc::new(bodies);
    let t0 = Instant::now();
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<Vec<RequestRecord>> = JoinSet::new();
    let finish = {
        let bar = bar.clone();
        let failed = Arc::clone(&failed);
        move |r: &RequestRecord| {
            if !r.ok() {
                let f = failed.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("({f} failed)"));
            }
            bar.inc(1);
        }
    };
    match load {
        Load::Concurrency(c) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..c.clamp(1, n.max(1)) {
                let (target, bodies, next) = (target.clone(), bodies.clone(), next.clone());
                let finish = finish.clone();
                tasks.spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= bodies.len() {
                            return out;
                        }
                        let r = send(&target, &bodies[i], i, t0).await;
                        finish(&r);
                        out.push(r);
                    }
                });
            }
        }
        Load::Rate { per_s, seed } => {
            for (i, at) in poisson_schedule(n, per_s, seed).into_iter().enumerate() {
                let (target, bodies) = (target.clone(), bodies.clone());
                let finish = finish.clone();
                tasks.spawn(async move {
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
                    let r = send(&target, &bodies[i], i, t0).await;
                    finish(&r);
                    vec![r]
                });
            }
        }
    }
    let mut records = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(rs) => records.extend(rs),
            // A panicking task is a bug; its requests show up as missing below.
            Err(e) => tracing::error!("bench task failed: {e}"),
        }
    }
    records.sort_by_key(|r| r.index);
    let mut complete = Vec::with_capacity(n);
    let mut it = records.into_iter().peekable();
    for i in 0..n {
        match it.next_if(|r| r.index == i) {
            Some(r) => complete.push(r),
            None => complete.push(RequestRecord {
                index: i,
                error: Some("internal error: the request's task failed".into()),
                ..RequestRecord::default()
            }),
        }
    }
    complete
}

async fn send(target: &Target, body: &Bytes, i: usize, t0: Instant) -> RequestRecord {
    send_streaming(
        &target.client,
        &target.uri,
        body.clone(),
        i,
        t0,
        target.timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_schedule_is_seeded_sorted_and_has_the_right_rate() {
        let a = poisson_schedule(20_000, 4.0, 11);
        assert_eq!(a, poisson_schedule(20_000, 4.0, 11));
        assert_ne!(a, poisson_schedule(20_000, 4.0, 12));
        assert_eq!(a[0], 0.0);
        assert!(a.windows(2).all(|w| w[1] > w[0] && w[1].is_finite()));
        // 19,999 gaps of mean 0.25 s: the mean is within 3% (about 7 sigma).
        let mean_gap = a[a.len() - 1] / (a.len() - 1) as f64;
        assert!((mean_gap - 0.25).abs() < 0.0075, "{mean_gap}");
        // Exponential gaps: the standard deviation equals the mean.
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let var = gaps.iter().map(|g| (g - mean_gap).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() - 0.25).abs() < 0.015, "sd {}", var.sqrt());
        assert!(poisson_schedule(0, 1.0, 1).is_empty());
    }
}
