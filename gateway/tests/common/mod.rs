//! Shared helpers of the gateway tests: a scripted fake [`ServingBackend`] over the
//! engine's tiny fixture tokenizer, and request/response helpers for `oneshot`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use pdserve_cluster::protocol::{
    ErrorKind, GenerateRequest, PrefillLocation, StreamEvent, WorkerLoad,
};
use pdserve_cluster::{RequestId, Role, WorkerId};
use pdserve_engine::engine::FinishReason;
use pdserve_engine::fixtures::{write_tokenizer_files, TinyModelSpec};
use pdserve_engine::sampling::SampledToken;
use pdserve_engine::tokenizer::Tokenizer;
use pdserve_gateway::{app, GatewayConfig, ServedModel, ServingBackend, SubmitError};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tower::ServiceExt;

pub const MODEL: &str = "tiny";
/// Words the fake generates, in a cycle starting at the request's seed.
pub const WORDS: &[&str] = &["model", " the", " token", " is", " and", " to", " a", "."];

pub fn tokenizer() -> Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tokenizer_files(&TinyModelSpec::tiny_llama(), dir.path()).expect("write tokenizer");
        Tokenizer::from_hf_dir(dir.path()).expect("load tokenizer")
    })
    .clone()
}

/// What the fake does with each request.
#[derive(Clone, Debug)]
pub enum Script {
    /// `max_tokens` words from [`WORDS`] (starting at `seed % len`), finish
    /// `length`; or finish `stop` after `stop_after` words.
    Words {
        stop_after: Option<usize>,
        delay: Duration,
    },
    /// These texts, one token each, then `stop`.
    Texts(Vec<String>),
    /// `Started` and `tokens` words, then nothing until cancelled.
    Hang { tokens: usize },
    /// `Started`, `tokens` words, then an error of `kind` (with `tokens: 0`, only
    /// the error: rejected at admission).
    FailAfter {
        tokens: usize,
        kind: ErrorKind,
        message: String,
    },
    /// `Started` and then the channel closes.
    CloseEarly,
}

pub struct FakeBackend {
    pub models: Mutex<Vec<ServedModel>>,
    pub workers: Mutex<Vec<WorkerLoad>>,
    pub script: Mutex<Script>,
    pub submit_error: Mutex<Option<SubmitError>>,
    pub submitted: Mutex<Vec<GenerateRequest>>,
    pub cancelled: Mutex<Vec<RequestId>>,
    pub prefill: Mutex<PrefillLocation>,
    /// What `model_pending` answers (a worker has the model, its tokenizer loads).
    pub pending: std::sync::atomic::AtomicBool,
    /// `models()` panics (a backend bug).
    pub panic_in_models: std::sync::atomic::AtomicBool,
    /// Senders of hanging requests, kept until cancelled.
    hanging: Mutex<HashMap<RequestId, UnboundedSender<StreamEvent>>>,
}

impl FakeBackend {
    pub fn new(script: Script) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            models: Mutex::new(vec![ServedModel {
                name: MODEL.into(),
                tokenizer: tokenizer(),
                max_model_len: 256,
            }]),
            workers: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            submit_error: Mutex::new(None),
            submitted: Mutex::new(Vec::new()),
            cancelled: Mutex::new(Vec::new()),
            prefill: Mutex::new(PrefillLocation::Local),
            pending: std::sync::atomic::AtomicBool::new(false),
            panic_in_models: std::sync::atomic::AtomicBool::new(false),
            hanging: Mutex::new(HashMap::new()),
        })
    }

    pub fn words() -> Arc<FakeBackend> {
        Self::new(Script::Words {
            stop_after: None,
            delay: Duration::ZERO,
        })
    }

    pub fn submitted(&self) -> Vec<GenerateRequest> {
        self.submitted.lock().expect("lock").clone()
    }

    pub fn cancelled(&self) -> Vec<RequestId> {
        self.cancelled.lock().expect("lock").clone()
    }

    /// Drops the sender of a hanging request: its channel closes without a final
    /// event (a backend bug, seen by the gateway as an internal error).
    pub fn close(&self, id: RequestId) {
        self.hanging.lock().expect("lock").remove(&id);
    }

    /// Waits (at most `limit`) until `id` is cancelled; returns whether it was.
    pub async fn wait_cancelled(&self, id: RequestId, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        loop {
            if self.cancelled().contains(&id) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits (at most 5 s) until `n` requests were submitted.
    pub async fn wait_submitted(&self, n: usize) -> Vec<GenerateRequest> {
        for _ in 0..2500 {
            let s = self.submitted();
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("fewer than {n} requests submitted within 5 s");
    }
}

fn word_token(k: usize, req: &GenerateRequest) -> (SampledToken, String) {
    let tok = tokenizer();
    let start = req.params.seed.unwrap_or(0) as usize;
    let word = WORDS[(start + k) % WORDS.len()];
    let id = tok.encode(word, false).expect("encode")[0];
    let top = match req.params.logprobs {
        Some(n) => (0..n as u32).map(|i| (i + 65, -1.0 - i as f32)).collect(),
        None => Vec::new(),
    };
    let t = SampledToken {
        token: id,
        logprob: -0.5,
        top_logprobs: top,
    };
    (t, word.to_string())
}

fn tokens(
    id: RequestId,
    items: Vec<(SampledToken, String)>,
    finish: Option<FinishReason>,
) -> StreamEvent {
    let text = items.iter().map(|(_, s)| s.as_str()).collect();
    StreamEvent::Tokens {
        id,
        tokens: items.into_iter().map(|(t, _)| t).collect(),
        text,
        finish,
    }
}

impl ServingBackend for FakeBackend {
    fn models(&self) -> Vec<ServedModel> {
        if self
            .panic_in_models
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            panic!("fake backend bug");
        }
        self.models.lock().expect("lock").clone()
    }

    fn model_pending(&self, _name: &str) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<StreamEvent>, SubmitError> {
        if let Some(e) = self.submit_error.lock().expect("lock").clone() {
            return Err(e);
        }
        self.submitted.lock().expect("lock").push(req.clone());
        let (tx, rx) = unbounded_channel();
        let id = req.id;
        let script = self.script.lock().expect("lock").clone();
        // A request failing before its first token was never admitted: no Started.
        let admitted = !matches!(script, Script::FailAfter { tokens: 0, .. });
        if admitted {
            let _ = tx.send(StreamEvent::Started {
                id,
                worker: WorkerId("fake/decode/0".into()),
                prefill: *self.prefill.lock().expect("lock"),
                prompt_tokens: req.prompt_tokens.len() as u32,
                cached_tokens: 0,
            });
        }
        match script {
            Script::Words { stop_after, delay } => {
                let total = stop_after
                    .unwrap_or(req.params.max_tokens)
                    .min(req.params.max_tokens);
                let finish = if total < req.params.max_tokens {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                tokio::spawn(async move {
                    for k in 0..total {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let last = k + 1 == total;
                        let ev = tokens(id, vec![word_token(k, &req)], last.then_some(finish));
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                });
            }
            Script::Texts(texts) => {
                let n = texts.len();
                for (k, text) in texts.into_iter().enumerate() {
                    let (t, _) = word_token(k, &req);
                    let _ = tx.send(tokens(
                        id,
                        vec![(t, text)],
                        (k + 1 == n).then_some(FinishReason::Stop),
                    ));
                }
            }
            Script::Hang { tokens: k } => {
                for i in 0..k {
                    let _ = tx.send(tokens(id, vec![word_token(i, &req)], None));
                }
                self.hanging.lock().expect("lock").insert(id, tx);
            }
            Script::FailAfter {
                tokens: k,
                kind,
                message,
            } => {
                for i in 0..k {
                    let _ = tx.send(tokens(id, vec![word_token(i, &req)], None));
                }
                let _ = tx.send(StreamEvent::Error { id, kind, message });
            }
            Script::CloseEarly => {}
        }
        Ok(rx)
    }

    fn cancel(&self, id: RequestId) {
        self.cancelled.lock().expect("lock").push(id);
        self.hanging.lock().expect("lock").remove(&id);
    }

    fn workers(&self) -> Vec<WorkerLoad> {
        self.workers.lock().expect("lock").clone()
    }

    fn reply_to(&self) -> String {
        "pdserve.r.test".into()
    }
}

pub fn worker_load(name: &str, free: u32, total: u32, waiting: u32) -> WorkerLoad {
    WorkerLoad {
        worker: WorkerId(name.into()),
        role: Role::Decode,
        model: MODEL.into(),
        model_spec: "default".into(),
        max_model_len: 256,
        block_size: 16,
        free_blocks: free,
        total_blocks: total,
        running: 1,
        waiting,
        prefill_queue_depth: 0,
        draining: false,
        remote_prefills: 0,
        prefill_fallbacks: 0,
        cached_blocks: Vec::new(),
        seq: 1,
    }
}

pub fn router(backend: &Arc<FakeBackend>, config: GatewayConfig) -> Router {
    let b: Arc<dyn ServingBackend> = backend.clone();
    app(config, b)
}

pub fn post(path: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.into()))
        .expect("request")
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

pub async fn send(
    app: &Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body within 10 s")
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

pub async fn send_json(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = send(app, req).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// Splits an SSE body into its `data:` payloads, checking the framing: every frame
/// is `data: <payload>\n\n` and nothing else is in the body.
pub fn sse_payloads(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("utf-8");
    assert!(
        text.ends_with("\n\n"),
        "body does not end a frame: {text:?}"
    );
    let frames: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    frames
        .into_iter()
        .map(|f| {
            let p = f
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad frame {f:?}"));
            assert!(!p.contains('\n'), "payload spans lines: {p:?}");
            p.to_string()
        })
        .collect()
}

/// The JSON chunks of an SSE body that ends with `[DONE]`.
pub fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let mut p = sse_payloads(body);
    assert_eq!(
        p.pop().as_deref(),
        Some("[DONE]"),
        "stream must end with [DONE]"
    );
    assert!(!p.iter().any(|x| x == "[DONE]"), "[DONE] only once, last");
    p.iter()
        .map(|x| serde_json::from_str(x).expect("chunk JSON"))
        .collect()
}

pub fn chat_body(extra: &str) -> String {
    format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hi there"}}]{extra}}}"#)
}

pub fn completion_body(extra: &str) -> String {
    format!(r#"{{"model":"{MODEL}","prompt":"Hello"{extra}}}"#)
}

/// Concatenated `delta.content` of choice `index` over chat chunks.
pub fn chat_stream_text(chunks: &[Value], index: usize, field: &str) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["index"] == index)
        .filter_map(|ch| ch["delta"][field].as_str().map(String::from))
        .collect()
}
