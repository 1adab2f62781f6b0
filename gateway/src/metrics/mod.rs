//! The gateway's metrics (`/metrics`): what each request does (count by endpoint
//! and status, latency histograms, token counts, prefill location, cancellations)
//! and, at each scrape, the load every worker last reported.
//!
//! `pdserve_gateway_overhead_seconds{stream}` is the time the gateway itself spends
//! on a request, engine time excluded: (handler start → backend submit: body read,
//! JSON parse, validation, chat template, tokenization, submission) + (receipt of
//! the backend event a response's first body byte is made from → that byte handed
//! to hyper: serialization, and for streams the response head). Events are timed
//! when the gateway takes them off their channel; see `Generation::record_first_byte`.
//!
//! Invariants: every name starts with `pdserve_` and carries its unit (`_seconds`,
//! `_tokens_total`, `_blocks`, `_ratio`, `_requests`); worker gauges are rebuilt from
//! `ServingBackend::workers()` at each scrape, so a worker that left disappears.

pub mod registry;

use pdserve_cluster::protocol::WorkerLoad;

pub use registry::{Counter, Gauge, Histogram};

/// Latency buckets (seconds) from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Gateway overhead buckets (seconds): 1-1.5-2-3-5-7 steps from 5 µs to 1 s, fine
/// enough for p50/p99 read off the buckets.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000005, 0.000007, 0.00001, 0.000015, 0.00002, 0.00003, 0.00005, 0.00007, 0.0001, 0.00015,
    0.0002, 0.0003, 0.0005, 0.0007, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

const WORKER_LABELS: &[&str] = &["worker", "role", "model"];

pub struct GatewayMetrics {
    pub http_requests: Counter,
    pub inflight: Gauge,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub gateway_overhead: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub prefill: Counter,
    pub cancelled: Counter,
    pub stream_errors: Counter,
    worker_blocks_used: Gauge,
    worker_blocks_total: Gauge,
    worker_usage: Gauge,
    worker_running: Gauge,
    worker_waiting: Gauge,
    worker_prefill_queue: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        GatewayMetrics {
            http_requests: Counter::new(
                "pdserve_http_requests_total",
                "HTTP requests answered, by endpoint and status code.",
                &["endpoint", "status"],
            ),
            inflight: Gauge::new(
                "pdserve_requests_inflight",
                "Generation requests admitted and not yet finished.",
                &[],
            ),
            duration: Histogram::new(
                "pdserve_request_duration_seconds",
                "Generation request time from arrival to the last token (or failure).",
                &["endpoint"],
                DURATION_BUCKETS,
            ),
            ttft: Histogram::new(
                "pdserve_time_to_first_token_seconds",
                "Time from request arrival to the first generated token.",
                &[],
                LATENCY_BUCKETS,
            ),
            itl: Histogram::new(
                "pdserve_inter_token_latency_seconds",
                "Time between consecutive generated tokens of one choice.",
                &[],
                LATENCY_BUCKETS,
            ),
            gateway_overhead: Histogram::new(
                "pdserve_gateway_overhead_seconds",
                "Gateway time per request, engine time excluded: handler start to backend \
                 submit, plus the first body byte's backend event to that byte.",
                &["stream"],
                OVERHEAD_BUCKETS,
            ),
            prompt_tokens: Counter::new(
                "pdserve_prompt_tokens_total",
                "Prompt tokens of submitted requests.",
                &[],
            ),
            generation_tokens: Counter::new(
                "pdserve_generation_tokens_total",
                "Tokens generated.",
                &[],
            ),
            prefill: Counter::new(
                "pdserve_prefill_total",
                "Prefills started, by where they ran (local to the decode worker or remote).",
                &["location"],
            ),
            cancelled: Counter::new(
                "pdserve_requests_cancelled_total",
                "Generations cancelled before finishing, by reason.",
                &["reason"],
            ),
            stream_errors: Counter::new(
                "pdserve_stream_errors_total",
                "Streams that ended with an error event, by error type.",
                &["type"],
            ),
            worker_blocks_used: Gauge::new(
                "pdserve_worker_kv_used_blocks",
                "KV cache blocks in use, as the worker last reported.",
                WORKER_LABELS,
            ),
            worker_blocks_total: Gauge::new(
                "pdserve_worker_kv_total_blocks",
                "KV cache blocks of the worker.",
                WORKER_LABELS,
            ),
            worker_usage: Gauge::new(
                "pdserve_worker_kv_usage_ratio",
                "Fraction of the worker's KV cache blocks in use.",
                WORKER_LABELS,
            ),
            worker_running: Gauge::new(
                "pdserve_worker_running_requests",
                "Requests the worker is generating for.",
                WORKER_LABELS,
            ),
            worker_waiting: Gauge::new(
                "pdserve_worker_queue_depth_requests",
                "Requests waiting in the worker's queue.",
                WORKER_LABELS,
            ),
            worker_prefill_queue: Gauge::new(
                "pdserve_worker_prefill_queue_requests",
                "Remote prefills queued (decode worker) or assigned (prefill worker).",
                WORKER_LABELS,
            ),
        }
    }

    /// The exposition text, with worker gauges from `workers` and in-flight from
    /// `inflight`.
    pub fn render(&self, workers: &[WorkerLoad], inflight: usize) -> String {
        self.inflight.set(&[], inflight as f64);
        let worker_gauges = [
            &self.worker_blocks_used,
            &self.worker_blocks_total,
            &self.worker_usage,
            &self.worker_running,
            &self.worker_waiting,
            &self.worker_prefill_queue,
        ];
        for g in worker_gauges {
            g.clear();
        }
        for w in workers {
            let labels = [w.worker.0.as_str(), w.role.as_str(), w.model.as_str()];
            let used = w.total_blocks.saturating_sub(w.free_blocks) as f64;
            self.worker_blocks_used.set(&labels, used);
            self.worker_blocks_total.set(&labels, w.total_blocks as f64);
            let ratio = if w.total_blocks == 0 {
                0.0
            } else {
                used / w.total_blocks as f64
            };
            self.worker_usage.set(&labels, ratio);
            self.worker_running.set(&labels, w.running as f64);
            self.worker_waiting.set(&labels, w.waiting as f64);
            self.worker_prefill_queue
                .set(&labels, w.prefill_queue_depth as f64);
        }
        let mut out = String::with_capacity(8192);
        self.http_requests.render(&mut out);
        self.inflight.render(&mut out);
        self.duration.render(&mut out);
        self.ttft.render(&mut out);
        self.itl.render(&mut out);
        self.gateway_overhead.render(&mut out);
        self.prompt_tokens.render(&mut out);
        self.generation_tokens.render(&mut out);
        self.prefill.render(&mut out);
        self.cancelled.render(&mut out);
        self.stream_errors.render(&mut out);
        for g in worker_gauges {
            g.render(&mut out);
        }
        out
    }
}
