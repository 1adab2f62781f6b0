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
//! - The gateway-overhead histogram gets exactly one observation per generation,
//!   at its response's first body byte ([`Generation::record_first_byte`]).

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
    /// Events read ahead by [`Generation::prime`] with the time each was taken off
    /// its channel, replayed first.
    backlog: VecDeque<(usize, Option<StreamEvent>, Instant)>,
    /// Round-robin start, so a busy choice cannot starve the others.
    next_poll: usize,
    deadline: tokio::time::Instant,
    arrived: Instant,
    /// When the last choice was handed to the backend.
    submitted: Instant,
    /// When the event last returned by `prime`/`next` was taken off its channel.
    last_event_at: Instant,
    /// The gateway overhead was observed (once per generation).
    overhead_recorded: bool,
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
            submitted: s.arrived,
            last_event_at: s.arrived,
            overhead_recorded: false,
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
        g.submitted = Instant::now();
        g.last_event_at = g.submitted;
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
            let at = Instant::now();
            self.last_event_at = at;
            seen[i] = true;
            if let Some(StreamEvent::Error { kind, message, .. }) = ev {
                self.finish_choice(i);
                return Err(self.fail(ApiError::from_backend(kind, message), "error"));
            }
            self.backlog.push_back((i, ev, at));
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
                        Ok(item) => item.map(|(i, ev)| (i, ev, Instant::now())),
                    }
                }
            };
            let Some((i, ev, at)) = item else {
                return Err(self.fail(
                    ApiError::internal("every event channel closed before the request finished"),
                    "error",
                ));
            };
            self.last_event_at = at;
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

    /// Called when the response's first body byte is handed to hyper (the first SSE
    /// frame, or the whole JSON body); later calls do nothing. Observes the gateway
    /// overhead: (handler start → backend submit) + (receipt of the event that
    /// first byte was made from → now). For a chat stream's role chunk that event is
    /// the one `prime` waited for. Engine time (submit → event) is not counted;
    /// the wait of a ready event for this task to be scheduled is not either.
    pub fn record_first_byte(&mut self, stream: bool) {
        if self.overhead_recorded {
            return;
        }
        self.overhead_recorded = true;
        let overhead = self.submitted.duration_since(self.arrived) + self.last_event_at.elapsed();
        let label = if stream { "true" } else { "false" };
        self.metrics
            .gateway_overhead
            .observe(&[label], overhead.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pdserve_cluster::protocol::{PrefillLocation, WorkerLoad};
    use pdserve_cluster::WorkerId;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

    use super::*;
    use crate::backend::{ServedModel, SubmitError};
    use crate::config::GatewayConfig;
    use crate::state::AppState;

    /// A backend whose events the test sends by hand, when it chooses.
    #[derive(Default)]
    struct Manual {
        senders: Mutex<Vec<(RequestId, UnboundedSender<StreamEvent>)>>,
    }

    impl ServingBackend for Manual {
        fn models(&self) -> Vec<ServedModel> {
            Vec::new()
        }
        fn submit(
            &self,
            request: GenerateRequest,
        ) -> Result<UnboundedReceiver<StreamEvent>, SubmitError> {
            let (tx, rx) = unbounded_channel();
            self.senders.lock().expect("lock").push((request.id, tx));
            Ok(rx)
        }
        fn cancel(&self, _id: RequestId) {}
        fn workers(&self) -> Vec<WorkerLoad> {
            Vec::new()
        }
        fn reply_to(&self) -> String {
            "test".into()
        }
    }

    impl Manual {
        fn send(&self, ev: impl Fn(RequestId) -> StreamEvent) {
            for (id, tx) in self.senders.lock().expect("lock").iter() {
                tx.send(ev(*id)).expect("generation alive");
            }
        }
    }

    fn started(id: RequestId) -> StreamEvent {
        StreamEvent::Started {
            id,
            worker: WorkerId("test/decode/0".into()),
            prefill: PrefillLocation::Local,
            prompt_tokens: 3,
            cached_tokens: 0,
        }
    }

    fn last_token(id: RequestId) -> StreamEvent {
        StreamEvent::Tokens {
            id,
            tokens: vec![SampledToken {
                token: 7,
                logprob: -0.5,
                top_logprobs: Vec::new(),
            }],
            text: "x".into(),
            finish: Some(FinishReason::Length),
        }
    }

    /// Gateway time before the submit and after the first byte's event counts;
    /// the engine's time between submit and events does not; one observation.
    #[tokio::test]
    async fn gateway_overhead_excludes_engine_time_and_is_observed_once() {
        let backend = Arc::new(Manual::default());
        let st = AppState::new(GatewayConfig::default(), backend.clone());
        let metrics = st.metrics.clone();
        let permit = st.admit().expect("admitted");
        // The handler started 200 ms ago (the gateway's own parsing, say).
        let arrived = Instant::now() - Duration::from_millis(200);
        let mut gen = Generation::submit(
            backend.clone(),
            metrics.clone(),
            permit,
            Submission {
                id: RequestId(1),
                endpoint: Endpoint::Completions,
                model: "m",
                prompts: &[vec![1, 2, 3]],
                n: 1,
                params: &SamplingParams::default(),
                arrived,
                timeout: Duration::from_secs(30),
            },
        )
        .expect("submitted");
        // Engine time: 300 ms to start, 300 ms more to the token.
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend.send(started);
        gen.prime().await.expect("primed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend.send(last_token);
        let delta = gen.next().await.expect("no error").expect("a delta");
        assert_eq!(delta.finish, Some(FinishReason::Length));
        // The gateway's own work on the response: 50 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        gen.record_first_byte(true);
        gen.record_first_byte(true);
        let h = &metrics.gateway_overhead;
        assert_eq!(h.count(&["true"]), 1);
        assert_eq!(h.count(&["false"]), 0);
        let v = h.sum(&["true"]);
        assert!(
            (0.25..0.45).contains(&v),
            "overhead {v} s: expected 200 + 50 ms, not the 600 ms of engine time"
        );
        assert!(metrics
            .render(&[], 0)
            .contains("pdserve_gateway_overhead_seconds_count{stream=\"true\"} 1\n"));
    }
}
