//! One HTTP generation request in flight: its submitted choices (one backend request
//! each), their merged event streams, the deadline, and the cancellation guard.
//!
//! Invariants:
//! - Dropping a [`Generation`] calls `ServingBackend::cancel` for every choice that
//!   has not finished (client disconnect, error of a sibling choice, timeout), so
//!   no path leaves a backend request running for nobody.
//! - Events of one choice are delivered in the order the backend sent them; a choice
//!   whose channel closes before its final event is an internal error.
//! - [`Generation::next`] never waits past the deadline: it then fails with
//!   [`ApiError::Timeout`] (and the drop cancels what is left).
//! - The admission permit lives exactly as long as the generation.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pdserve_cluster::protocol::{GenerateRequest, StreamEvent};
use pdserve_cluster::RequestId;
use pdserve_engine::engine::FinishReason;
use pdserve_engine::sampling::{SampledToken, SamplingParams};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::backend::ServingBackend;
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::state::Permit;
use crate::validate::Endpoint;

/// New output of one choice.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenDelta {
    pub choice: usize,
    pub tokens: Vec<SampledToken>,
    pub text: String,
    pub finish: Option<FinishReason>,
}

/// What the generation is being torn down for (label of the cancel counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Done,
    Failed(&'static str),
}

/// What to submit: `prompts.len() × n` choices, choice `p * n + j` being the
/// `j`-th sample of prompt `p`.
pub struct Submission<'a> {
    /// Id of choice 0 (and of the request in logs and response ids); the other
    /// choices get random ids.
    pub id: RequestId,
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub prompts: &'a [Vec<u32>],
    pub n: usize,
    pub params: &'a SamplingParams,
    pub arrived: Instant,
    pub timeout: Duration,
}

pub struct Generation {
    ids: Vec<RequestId>,
    rxs: Vec<Option<UnboundedReceiver<StreamEvent>>>,
    finished: Vec<bool>,
    last_token: Vec<Option<Instant>>,
    /// Events read ahead by [`Generation::prime`], replayed first.
    backlog: VecDeque<(usize, Option<StreamEvent>)>,
    /// Round-robin start, so a busy choice cannot starve the others.
    next_poll: usize,
    deadline: tokio::time::Instant,
    arrived: Instant,
    endpoint: Endpoint,
    outcome: Outcome,
    backend: Arc<dyn ServingBackend>,
    metrics: Arc<GatewayMetrics>,
    _permit: Permit,
}

impl Generation {
    /// Submits every choice. On failure the ones already submitted are cancelled.
    pub fn submit(
        backend: Arc<dyn ServingBackend>,
        metrics: Arc<GatewayMetrics>,
        permit: Permit,
        s: Submission<'_>,
    ) -> Result<Generation, ApiError> {
        // A timeout too large for the clock means "a year" (never an overflow panic).
        let end = s
            .arrived
            .checked_add(s.timeout)
            .or_else(|| s.arrived.checked_add(Duration::from_secs(365 * 86_400)))
            .unwrap_or(s.arrived);
        let deadline = tokio::time::Instant::from_std(end);
        let now_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left_ms = end.saturating_duration_since(Instant::now()).as_millis() as u64;
        let total = s.prompts.len() * s.n;
        let mut g = Generation {
            ids: Vec::with_capacity(total),
            rxs: Vec::with_capacity(total),
            finished: Vec::with_capacity(total),
            last_token: vec![None; total],
            backlog: VecDeque::new(),
            next_poll: 0,
            deadline,
            arrived: s.arrived,
            endpoint: s.endpoint,
            outcome: Outcome::Running,
            backend,
            metrics,
            _permit: permit,
        };
        let reply_to = g.backend.reply_to();
        for (p, prompt) in s.prompts.iter().enumerate() {
            for j in 0..s.n {
                let choice = p * s.n + j;
                let mut params = s.params.clone();
                // Distinct, reproducible seeds for the n samples of one prompt.
                params.seed = params.seed.map(|seed| seed.wrapping_add(j as u64));
                let req = GenerateRequest {
                    id: if choice == 0 {
                        s.id
                    } else {
                        RequestId::random()
                    },
                    model: s.model.to_string(),
                    prompt_tokens: prompt.clone(),
                    params,
                    reply_to: reply_to.clone(),
                    deadline_unix_ms: now_unix_ms.saturating_add(left_ms),
                };
                let id = req.id;
                match g.backend.submit(req) {
                    Ok(rx) => {
                        g.ids.push(id);
                        g.rxs.push(Some(rx));
                        g.finished.push(false);
                    }
                    Err(e) => {
                        g.outcome = Outcome::Failed("error");
                        tracing::debug!(choice, "submit failed: {e}");
                        return Err(e.into());
                    }
                }
            }
            g.metrics
                .prompt_tokens
                .add(&[], (prompt.len() * s.n) as f64);
        }
        Ok(g)
    }

    /// The backend id of the first choice (the request's id in logs).
    pub fn request_id(&self) -> RequestId {
        self.ids.first().copied().unwrap_or(RequestId(0))
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    pub fn choices(&self) -> usize {
        self.ids.len()
    }

    /// Waits until every choice has produced its first event, so that a request the
    /// backend rejects outright becomes an HTTP error rather than a stream that
    /// fails at once. Events read are replayed by [`Generation::next`].
    pub async fn prime(&mut self) -> Result<(), ApiError> {
        let mut seen = vec![false; self.ids.len()];
        while seen.iter().any(|s| !s) {
            let deadline = self.deadline;
            let item = match tokio::time::timeout_at(deadline, self.poll_channels()).await {
                Err(_) => return Err(self.fail(ApiError::Timeout, "timeout")),
                Ok(None) => break,
                Ok(Some(item)) => item,
            };
            let (i, ev) = item;
            seen[i] = true;
            if let Some(StreamEvent::Error { kind, message, .. }) = ev {
                self.finish_choice(i);
                return Err(self.fail(ApiError::from_backend(kind, message), "error"));
            }
            self.backlog.push_back((i, ev));
        }
        Ok(())
    }

    /// The next output of any choice; `Ok(None)` once every choice has finished.
    pub async fn next(&mut self) -> Result<Option<TokenDelta>, ApiError> {
        loop {
            if self.finished.iter().all(|&f| f) {
                self.outcome = Outcome::Done;
                return Ok(None);
            }
            let item = match self.backlog.pop_front() {
                Some(item) => Some(item),
                None => {
                    let deadline = self.deadline;
                    match tokio::time::timeout_at(deadline, self.poll_channels()).await {
                        Err(_) => return Err(self.fail(ApiError::Timeout, "timeout")),
                        Ok(item) => item,
                    }
                }
            };
            let Some((i, ev)) = item else {
                return Err(self.fail(
                    ApiError::internal("every event channel closed before the request finished"),
                    "error",
                ));
            };
            match ev {
                None if self.finished[i] => continue,
                None => {
                    return Err(self.fail(
                        ApiError::internal(format!(
                            "event channel of {} closed before its final event",
                            self.ids[i]
                        )),
                        "error",
                    ))
                }
                Some(StreamEvent::Started { prefill, .. }) => {
                    self.metrics.prefill.inc(&[prefill.as_str()]);
                }
                Some(StreamEvent::Error { kind, message, .. }) => {
                    self.finish_choice(i);
                    return Err(self.fail(ApiError::from_backend(kind, message), "error"));
                }
                Some(StreamEvent::Tokens {
                    tokens,
                    text,
                    finish,
                    ..
                }) => {
                    self.record_timing(i, tokens.len());
                    if let Some(f) = finish {
                        self.finish_choice(i);
                        if f == FinishReason::Abort {
                            return Err(self.fail(
                                ApiError::Unavailable {
                                    message: "the request was aborted by the server".into(),
                                },
                                "error",
                            ));
                        }
                    }
                    return Ok(Some(TokenDelta {
                        choice: i,
                        tokens,
                        text,
                        finish,
                    }));
                }
            }
        }
    }

    fn finish_choice(&mut self, i: usize) {
        self.finished[i] = true;
        self.rxs[i] = None;
    }

    fn fail(&mut self, e: ApiError, reason: &'static str) -> ApiError {
        self.outcome = Outcome::Failed(reason);
        e
    }

    fn record_timing(&mut self, i: usize, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        self.metrics.generation_tokens.add(&[], n as f64);
        match self.last_token[i] {
            None => {
                let ttft = now.duration_since(self.arrived).as_secs_f64();
                self.metrics.ttft.observe(&[], ttft);
                // The first token of a multi-token event is the TTFT one.
                self.observe_itl(n - 1, Duration::ZERO);
            }
            Some(prev) => self.observe_itl(n, now.duration_since(prev)),
        }
        self.last_token[i] = Some(now);
    }

    /// `count` tokens arrived together `dt` after the previous one: `dt / count` each.
    fn observe_itl(&self, count: usize, dt: Duration) {
        if count == 0 {
            return;
        }
        let each = dt.as_secs_f64() / count as f64;
        for _ in 0..count {
            self.metrics.itl.observe(&[], each);
        }
    }

    /// The next event of any open channel (`None` inside: that channel closed);
    /// `None` when no channel is open.
    async fn poll_channels(&mut self) -> Option<(usize, Option<StreamEvent>)> {
        poll_fn(|cx| {
            let n = self.rxs.len();
            let mut open = false;
            for k in 0..n {
                let i = (self.next_poll + k) % n;
                let Some(rx) = self.rxs[i].as_mut() else {
                    continue;
                };
                open = true;
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        self.next_poll = (i + 1) % n;
                        return Poll::Ready(Some((i, Some(ev))));
                    }
                    Poll::Ready(None) => {
                        self.rxs[i] = None;
                        return Poll::Ready(Some((i, None)));
                    }
                    Poll::Pending => {}
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let mut cancelled = false;
        for (id, done) in self.ids.iter().zip(&self.finished) {
            if !done {
                self.backend.cancel(*id);
                cancelled = true;
            }
        }
        if cancelled {
            let reason = match self.outcome {
                Outcome::Running => "client_disconnect",
                Outcome::Failed(r) => r,
                Outcome::Done => "error",
            };
            tracing::debug!(request_id = %self.request_id(), reason, "cancelled");
            self.metrics.cancelled.inc(&[reason]);
        }
        self.metrics.duration.observe(
            &[self.endpoint.as_str()],
            self.arrived.elapsed().as_secs_f64(),
        );
    }
}
