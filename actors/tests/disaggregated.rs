//! The actor system in one process over a tiny model: requests routed to a decode
//! worker, prompts prefilled remotely (in-process copy, the TCP data plane, and
//! NIXL with feature `nixl`) or locally — greedy output token-identical to the engine alone — and the decode
//! worker's supervision: a prefill worker that dies or stalls is replaced by local
//! prefill, invisibly to the client, with no KV block left behind.
//!
//! Process groups are process-wide, so every test uses its own model name.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pdserve_actors::decode_worker::{
    broadcast_load, DecodeArgs, DecodeConfig, DecodeMsg, DecodeWorker, KvIngress, QUARANTINE_SLACK,
};
use pdserve_actors::policy::routing::RoutingPolicy;
use pdserve_actors::prefill_queue::QueueMsg;
use pdserve_actors::prefill_worker::{PrefillArgs, PrefillConfig, PrefillMsg, PrefillWorker};
use pdserve_actors::router::{Router, RouterArgs, RouterMsg, RouterView};
use pdserve_cluster::protocol::{
    GenerateRequest, PrefillLocation, QueueWire, StreamEvent, WorkerLoad,
};
use pdserve_cluster::{groups, NodeName, RequestId, Role, WorkerId};
use pdserve_engine::engine::{Engine, EngineConfig, EngineRequest, FinishReason};
use pdserve_engine::fixtures::{write_gguf, TinyModelSpec};
use pdserve_engine::loader::{load_model, LoadOptions};
use pdserve_engine::quant::DType;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::SeqId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Tiny {
    _dir: tempfile::TempDir,
    path: String,
}

fn tiny() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    write_gguf(&TinyModelSpec::tiny_llama(), &p, DType::Q8_0).unwrap();
    Tiny {
        path: p.to_str().unwrap().to_string(),
        _dir: dir,
    }
}

fn engine(t: &Tiny) -> Engine {
    let opts = LoadOptions {
        progress: false,
        prefault: false,
        allow_download: false,
        hub_env: None,
    };
    let cfg = EngineConfig {
        block_size: 4,
        kv_cache_bytes: 4 << 20,
        max_num_seqs: 16,
        max_batched_tokens: 64,
        ..EngineConfig::default()
    };
    Engine::new(load_model(&t.path, &opts).unwrap(), cfg).unwrap()
}

fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let vocab = TinyModelSpec::tiny_llama().vocab as u64;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (vocab - 8)) as u32
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// The engine alone: the reference output.
fn alone(t: &Tiny, p: &[u32], n: usize) -> Vec<u32> {
    let mut e = engine(t);
    e.add_request(EngineRequest {
        id: SeqId(1),
        prompt_tokens: p.to_vec(),
        params: greedy(n),
    })
    .unwrap();
    let mut out = Vec::new();
    while e.has_work() {
        for o in e.step().unwrap() {
            out.push(o.token.token);
        }
    }
    out
}

struct Cluster {
    node: NodeName,
    model: String,
    router: ActorRef<RouterMsg>,
    view: Arc<RwLock<RouterView>>,
    decode: ActorRef<DecodeMsg>,
}

async fn start(t: &Tiny, model: &str, ingress: KvIngress, timeout: Duration) -> Cluster {
    start_with(t, model, ingress, timeout, QUARANTINE_SLACK).await
}

async fn start_with(
    t: &Tiny,
    model: &str,
    ingress: KvIngress,
    timeout: Duration,
    quarantine_slack: Duration,
) -> Cluster {
    let node = NodeName(format!("test-{model}"));
    let view = Arc::new(RwLock::new(RouterView::default()));
    let (router, _) = Actor::spawn(
        None,
        Router,
        RouterArgs {
            node: node.clone(),
            policy: RoutingPolicy::RoundRobin,
            view: view.clone(),
        },
    )
    .await
    .unwrap();
    let cfg = DecodeConfig {
        worker: WorkerId::new(&node, Role::Decode, 0),
        model: model.into(),
        model_spec: t.path.clone(),
        max_local_prefill_length: 8,
        max_prefill_queue_size: 16,
        remote_prefill_timeout: timeout,
        ingress,
        load_interval: Duration::from_millis(100),
        quarantine_slack,
    };
    let (decode, _) = Actor::spawn(
        None,
        DecodeWorker,
        DecodeArgs {
            config: cfg,
            engine: engine(t),
        },
    )
    .await
    .unwrap();
    let c = Cluster {
        node,
        model: model.into(),
        router,
        view,
        decode,
    };
    wait_for("decode worker known to the router", || {
        c.view.read().unwrap().serving(model).len() == 1
    })
    .await;
    c
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn spawn_prefill(t: &Tiny, c: &Cluster, index: usize) -> ActorRef<PrefillMsg> {
    spawn_prefill_with(t, c, index, false).await
}

async fn spawn_prefill_with(
    t: &Tiny,
    c: &Cluster,
    index: usize,
    nixl: bool,
) -> ActorRef<PrefillMsg> {
    let cfg = PrefillConfig {
        worker: WorkerId::new(&c.node, Role::Prefill, index),
        model: c.model.clone(),
        model_spec: t.path.clone(),
        max_concurrent: 2,
        transfer_timeout: Duration::from_secs(5),
        nixl,
    };
    let (p, _) = Actor::spawn(
        None,
        PrefillWorker,
        PrefillArgs {
            config: cfg,
            engine: engine(t),
        },
    )
    .await
    .unwrap();
    p
}

struct Outcome {
    location: PrefillLocation,
    tokens: Vec<u32>,
    finish: FinishReason,
}

async fn generate(c: &Cluster, p: &[u32], n: usize) -> Outcome {
    let id = RequestId::random();
    let (sink, mut rx) = tokio::sync::mpsc::unbounded_channel();
    c.router
        .cast(RouterMsg::Submit {
            request: GenerateRequest {
                id,
                model: c.model.clone(),
                prompt_tokens: p.to_vec(),
                params: greedy(n),
                reply_to: groups::router_inbox(&c.node),
                deadline_unix_ms: 0,
            },
            sink,
        })
        .unwrap();
    let mut location = None;
    let mut tokens = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a stream event within 20 s")
            .expect("stream ended without a terminal event");
        match ev {
            StreamEvent::Started { prefill, .. } => location = Some(prefill),
            StreamEvent::Tokens {
                tokens: t, finish, ..
            } => {
                tokens.extend(t.iter().map(|s| s.token));
                if let Some(f) = finish {
                    return Outcome {
                        location: location.expect("Started before tokens"),
                        tokens,
                        finish: f,
                    };
                }
            }
            StreamEvent::Error { message, .. } => panic!("request failed: {message}"),
        }
    }
}

/// (remote prefills done, fallbacks) of the decode worker, as last reported.
async fn prefill_counts(c: &Cluster, want: (u64, u64)) {
    wait_for("decode worker's prefill counters", || {
        let v = c.view.read().unwrap();
        v.workers
            .values()
            .filter(|(l, _)| l.model == c.model && l.role == Role::Decode)
            .any(|(l, _)| (l.remote_prefills, l.prefill_fallbacks) == want)
    })
    .await;
}

/// Every KV block of every worker of `c.model` is free again.
async fn assert_no_leak(c: &Cluster) {
    wait_for("all KV blocks free on every worker", || {
        let v = c.view.read().unwrap();
        let loads: Vec<_> = v
            .workers
            .values()
            .filter(|(l, _)| l.model == c.model)
            .collect();
        !loads.is_empty()
            && loads
                .iter()
                .all(|(l, _)| l.free_blocks == l.total_blocks && l.running == 0 && l.waiting == 0)
    })
    .await;
}

/// A "decode worker" that reports itself alive, takes requests and never answers.
struct SilentDecode;

impl Actor for SilentDecode {
    type Msg = DecodeMsg;
    type State = WorkerLoad;
    type Arguments = WorkerLoad;
    async fn pre_start(
        &self,
        me: ActorRef<DecodeMsg>,
        load: WorkerLoad,
    ) -> Result<WorkerLoad, ActorProcessingErr> {
        ractor::pg::join(groups::decode_workers(&load.model), vec![me.get_cell()]);
        ractor::pg::join(groups::worker_inbox(&load.worker), vec![me.get_cell()]);
        me.send_interval(Duration::from_millis(100), || DecodeMsg::Tick);
        Ok(load)
    }
    async fn handle(
        &self,
        _: ActorRef<DecodeMsg>,
        msg: DecodeMsg,
        load: &mut WorkerLoad,
    ) -> Result<(), ActorProcessingErr> {
        if let DecodeMsg::Tick = msg {
            load.seq += 1;
            broadcast_load(load.clone());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_dead_decode_worker_is_routed_again() {
    let t = tiny();
    let c = start(&t, "reroute", KvIngress::None, Duration::from_secs(20)).await;
    // Worker ids sort "…/decode/0" (real) before "…/decode/1" (silent); the
    // router's first round-robin ticket picks index 1: the silent one.
    let mut load = c.view.read().unwrap().serving("reroute")[0].clone();
    load.worker = WorkerId::new(&c.node, Role::Decode, 1);
    let (silent, _) = Actor::spawn(None, SilentDecode, load).await.unwrap();
    wait_for("both decode workers known", || {
        c.view.read().unwrap().serving("reroute").len() == 2
    })
    .await;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        silent.kill();
    });
    let p = prompt(21, 20);
    let started = Instant::now();
    let got = generate(&c, &p, 6).await;
    killer.await.unwrap();
    assert_eq!(got.tokens, alone(&t, &p, 6), "answered by the live worker");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "re-routed promptly"
    );
    wait_for("the dead worker is no longer served", || {
        c.view.read().unwrap().serving("reroute").len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_decode_worker_dies_ends_with_an_error() {
    let t = tiny();
    let c = start(&t, "midstream", KvIngress::None, Duration::from_secs(20)).await;
    let (sink, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let id = RequestId::random();
    c.router
        .cast(RouterMsg::Submit {
            request: GenerateRequest {
                id,
                model: c.model.clone(),
                prompt_tokens: prompt(5, 10),
                params: greedy(100_000),
                reply_to: groups::router_inbox(&c.node),
                deadline_unix_ms: 0,
            },
            sink,
        })
        .unwrap();
    let mut tokens = 0;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            StreamEvent::Tokens { finish, .. } => {
                assert!(finish.is_none(), "the stream must not finish on its own");
                tokens += 1;
                if tokens == 3 {
                    c.decode.kill();
                }
            }
            StreamEvent::Error { kind, .. } => {
                assert!(tokens >= 3);
                assert_eq!(kind, pdserve_cluster::protocol::ErrorKind::WorkerLost);
                break;
            }
            StreamEvent::Started { .. } => {}
        }
        assert!(Instant::now() < until);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_prefill_in_process_is_token_identical() {
    let t = tiny();
    let c = start(&t, "inproc", KvIngress::InProcess, Duration::from_secs(20)).await;
    let _p = spawn_prefill(&t, &c, 0).await;
    wait_for("prefill worker up", || {
        !ractor::pg::get_members(&groups::prefill_workers("inproc")).is_empty()
    })
    .await;
    for (seed, len) in [(1, 37), (2, 64), (3, 5)] {
        let p = prompt(seed, len);
        let got = generate(&c, &p, 12).await;
        let want_location = if len > 8 {
            PrefillLocation::Remote
        } else {
            PrefillLocation::Local
        };
        assert_eq!(got.location, want_location, "prompt of {len} tokens");
        assert_eq!(got.tokens, alone(&t, &p, 12), "prompt of {len} tokens");
        assert_eq!(got.finish, FinishReason::Length);
    }
    prefill_counts(&c, (2, 0)).await;
    assert_no_leak(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_prefill_over_tcp_is_token_identical() {
    let t = tiny();
    let ingress = KvIngress::Tcp {
        listen: "127.0.0.1:0".into(),
        advertise_host: "127.0.0.1".into(),
    };
    let c = start(&t, "tcp", ingress, Duration::from_secs(20)).await;
    let _p = spawn_prefill(&t, &c, 0).await;
    wait_for("prefill worker up", || {
        !ractor::pg::get_members(&groups::prefill_workers("tcp")).is_empty()
    })
    .await;
    let p = prompt(7, 45);
    let got = generate(&c, &p, 10).await;
    assert_eq!(got.location, PrefillLocation::Remote);
    assert_eq!(got.tokens, alone(&t, &p, 10));
    prefill_counts(&c, (1, 0)).await;
    assert_no_leak(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prefill_workers_everything_is_local() {
    let t = tiny();
    let c = start(&t, "nolocal", KvIngress::InProcess, Duration::from_secs(20)).await;
    let p = prompt(9, 50);
    let got = generate(&c, &p, 8).await;
    assert_eq!(got.location, PrefillLocation::Local);
    assert_eq!(got.tokens, alone(&t, &p, 8));
    assert_no_leak(&c).await;
}

/// A "prefill worker" that takes work and never answers.
struct Silent;

struct SilentArgs {
    worker: WorkerId,
    model: String,
    /// Free slots it announces (0: the queue never hands it anything).
    slots: u32,
}

impl Actor for Silent {
    type Msg = PrefillMsg;
    type State = ();
    type Arguments = SilentArgs;
    async fn pre_start(
        &self,
        me: ActorRef<PrefillMsg>,
        a: SilentArgs,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(groups::prefill_workers(&a.model), vec![me.get_cell()]);
        ractor::pg::join(groups::worker_inbox(&a.worker), vec![me.get_cell()]);
        for q in ractor::pg::get_members(&groups::prefill_queues(&a.model)) {
            let q: ActorRef<QueueMsg> = q.into();
            q.cast(QueueMsg::Wire(QueueWire::Capacity {
                worker: a.worker.clone(),
                free_slots: a.slots,
            }))?;
        }
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<PrefillMsg>,
        _: PrefillMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

async fn spawn_silent(c: &Cluster) -> ActorRef<PrefillMsg> {
    spawn_silent_with(c, 8).await
}

async fn spawn_silent_with(c: &Cluster, slots: u32) -> ActorRef<PrefillMsg> {
    let (a, _) = Actor::spawn(
        None,
        Silent,
        SilentArgs {
            worker: WorkerId::new(&c.node, Role::Prefill, 9),
            model: c.model.clone(),
            slots,
        },
    )
    .await
    .unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_worker_death_falls_back_to_local_prefill() {
    let t = tiny();
    let c = start(&t, "death", KvIngress::InProcess, Duration::from_secs(60)).await;
    let silent = spawn_silent(&c).await;
    let p = prompt(11, 40);
    let killer = {
        let silent = silent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            silent.kill();
        })
    };
    let started = Instant::now();
    let got = generate(&c, &p, 10).await;
    killer.await.unwrap();
    assert_eq!(got.location, PrefillLocation::Remote, "went remote first");
    assert_eq!(got.tokens, alone(&t, &p, 10), "local fallback output");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fallback came from the death, not the 60 s deadline"
    );
    prefill_counts(&c, (0, 1)).await;
    assert_no_leak(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_prefill_times_out_to_local_prefill() {
    let t = tiny();
    let c = start(
        &t,
        "stall",
        KvIngress::InProcess,
        Duration::from_millis(400),
    )
    .await;
    let _silent = spawn_silent(&c).await;
    let p = prompt(13, 40);
    let got = generate(&c, &p, 10).await;
    assert_eq!(got.location, PrefillLocation::Remote);
    assert_eq!(got.tokens, alone(&t, &p, 10));
    prefill_counts(&c, (0, 1)).await;
    assert_no_leak(&c).await;
    c.decode.stop(None);
}

/// The NIXL transport between two engines of this process (two agents, real
/// UCX writes). Skips, saying why, where libnixl cannot be loaded — unless
/// `PDSERVE_REQUIRE_NIXL=1` (the test command), where that is a failure.
#[cfg(feature = "nixl")]
mod nixl {
    use super::*;

    fn available() -> bool {
        match pdserve_actors::kv_nixl::available() {
            Ok(()) => true,
            Err(e) if std::env::var("PDSERVE_REQUIRE_NIXL").as_deref() == Ok("1") => {
                panic!("PDSERVE_REQUIRE_NIXL=1 but NIXL is not available: {e}")
            }
            Err(e) => {
                println!("skipped: {e}");
                false
            }
        }
    }

    fn ingress() -> KvIngress {
        KvIngress::Nixl {
            listen: "127.0.0.1:0".into(),
            advertise_host: "127.0.0.1".into(),
        }
    }

    async fn wait_prefill_up(model: &str) {
        wait_for("prefill worker up", || {
            !ractor::pg::get_members(&groups::prefill_workers(model)).is_empty()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_prefill_over_nixl_is_token_identical() {
        if !available() {
            return;
        }
        let t = tiny();
        let c = start(&t, "nixl", ingress(), Duration::from_secs(20)).await;
        let _p = spawn_prefill_with(&t, &c, 0, true).await;
        wait_prefill_up("nixl").await;
        for (seed, len) in [(21, 45), (22, 64), (23, 17)] {
            let p = prompt(seed, len);
            let got = generate(&c, &p, 10).await;
            assert_eq!(got.location, PrefillLocation::Remote, "prompt of {len}");
            assert_eq!(got.tokens, alone(&t, &p, 10), "prompt of {len}");
        }
        prefill_counts(&c, (3, 0)).await;
        assert_no_leak(&c).await;
    }

    /// A decode worker offering NIXL still takes KV from a prefill worker without
    /// it, over the TCP data plane its target also names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prefill_worker_without_nixl_writes_over_tcp() {
        if !available() {
            return;
        }
        let t = tiny();
        let c = start(&t, "nixl-tcp", ingress(), Duration::from_secs(20)).await;
        let _p = spawn_prefill_with(&t, &c, 0, false).await;
        wait_prefill_up("nixl-tcp").await;
        let p = prompt(24, 45);
        let got = generate(&c, &p, 10).await;
        assert_eq!(got.location, PrefillLocation::Remote);
        assert_eq!(got.tokens, alone(&t, &p, 10));
        prefill_counts(&c, (1, 0)).await;
        assert_no_leak(&c).await;
    }

    /// An abandoned NIXL attempt's blocks stay out of reuse while its (silent,
    /// living) prefill worker could still write them — checked well after the
    /// request ended, well before deadline + slack — and are freed after that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_nixl_prefill_is_quarantined_then_freed() {
        if !available() {
            return;
        }
        let t = tiny();
        let deadline = Duration::from_millis(400);
        let slack = Duration::from_secs(6);
        let c = start_with(&t, "nixl-stall", ingress(), deadline, slack).await;
        let _silent = spawn_silent(&c).await;
        let p = prompt(25, 40);
        let started = Instant::now();
        let got = generate(&c, &p, 10).await;
        assert_eq!(got.location, PrefillLocation::Remote);
        assert_eq!(got.tokens, alone(&t, &p, 10), "local fallback output");
        let check_at = started + Duration::from_secs(3);
        assert!(Instant::now() < check_at, "the fallback took over 3 s");
        tokio::time::sleep_until(check_at.into()).await;
        {
            let v = c.view.read().unwrap();
            let (l, _) = v
                .workers
                .values()
                .find(|(l, _)| l.model == c.model && l.role == Role::Decode)
                .unwrap();
            assert_eq!((l.running, l.waiting), (0, 0), "the request is done");
            assert!(
                l.free_blocks < l.total_blocks,
                "the abandoned attempt's blocks are still held"
            );
        }
        assert_no_leak(&c).await;
        assert!(
            started.elapsed() >= deadline + slack,
            "held until deadline + slack"
        );
        c.decode.stop(None);
    }

    /// An abandoned NIXL attempt that the queue never handed out (no prefill
    /// worker had room) cannot be written by anyone: its blocks are freed at
    /// once, not after deadline + slack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_never_assigned_nixl_attempt_frees_the_blocks_at_once() {
        if !available() {
            return;
        }
        let t = tiny();
        let deadline = Duration::from_millis(400);
        let slack = Duration::from_secs(8);
        let c = start_with(&t, "nixl-queued", ingress(), deadline, slack).await;
        let _full = spawn_silent_with(&c, 0).await;
        let p = prompt(27, 40);
        let started = Instant::now();
        let got = generate(&c, &p, 10).await;
        assert_eq!(
            got.location,
            PrefillLocation::Remote,
            "queued for remote first"
        );
        assert_eq!(got.tokens, alone(&t, &p, 10));
        assert_no_leak(&c).await;
        assert!(
            started.elapsed() < deadline + slack / 2,
            "freed when the queue dropped it, not after deadline + slack"
        );
        c.decode.stop(None);
    }

    /// When the prefill worker of an abandoned NIXL attempt dies, its blocks are
    /// freed at once (no write can come from a dead worker), not after the slack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_nixl_prefill_worker_frees_the_blocks_at_once() {
        if !available() {
            return;
        }
        let t = tiny();
        let c = start(&t, "nixl-death", ingress(), Duration::from_secs(60)).await;
        let silent = spawn_silent(&c).await;
        let p = prompt(26, 40);
        let killer = {
            let silent = silent.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                silent.kill();
            })
        };
        let started = Instant::now();
        let got = generate(&c, &p, 10).await;
        killer.await.unwrap();
        assert_eq!(got.location, PrefillLocation::Remote);
        assert_eq!(got.tokens, alone(&t, &p, 10));
        assert_no_leak(&c).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "blocks freed by the death, not by the 60 s deadline"
        );
    }
}
