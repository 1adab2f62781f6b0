//! The engine's device-sampling path (`ModelRunner::forward_picking`), driven
//! on the CPU by a runner (the CPU model, wrapped) that picks with the reference
//! definition
//! (`sampling::device::pick_on_host`) — the same plumbing the CUDA backend uses,
//! whose kernel `tests/cuda_backend.rs` checks against that definition.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{load, Form};
use pdserve_engine::backend::{ForwardBatch, MemKind};
use pdserve_engine::config::ModelConfig;
use pdserve_engine::engine::{Engine, EngineRequest};
use pdserve_engine::fixtures::TinyModelSpec;
use pdserve_engine::kv::pool::KvLayout;
use pdserve_engine::model::{Forwarded, ModelRunner};
use pdserve_engine::quant::DType;
use pdserve_engine::sampling::device::{pick_on_host, DevicePick};
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::{BlockId, Result, SeqId};

/// A CPU model whose "device" picks with the reference; counts picked and host rows.
struct PickingRunner {
    inner: Box<dyn ModelRunner>,
    picked: Arc<AtomicUsize>,
    host: Arc<AtomicUsize>,
}

impl ModelRunner for PickingRunner {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn kv_layout(&self) -> KvLayout {
        self.inner.kv_layout()
    }
    fn backend_name(&self) -> String {
        "cpu+reference-picks".into()
    }
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>> {
        self.inner.forward(batch)
    }
    fn forward_picking(
        &mut self,
        batch: &ForwardBatch,
        picks: &[Option<DevicePick>],
    ) -> Result<Forwarded> {
        let all = self.inner.forward(batch)?;
        let vocab = self.config().vocab_size;
        let mut out = Forwarded::default();
        for (row, pick) in all.chunks_exact(vocab).zip(picks) {
            let p = pick.and_then(|p| pick_on_host(row, p));
            if p.is_none() {
                out.logits.extend_from_slice(row);
            }
            out.picked.push(p);
        }
        let n = out.picked.iter().filter(|p| p.is_some()).count();
        self.picked.fetch_add(n, Ordering::Relaxed);
        self.host.fetch_add(picks.len() - n, Ordering::Relaxed);
        Ok(out)
    }
    fn kv_block_region(&self, block: BlockId) -> Option<(usize, usize, MemKind)> {
        self.inner.kv_block_region(block)
    }
    fn read_kv_block(&self, block: BlockId, out: &mut [u8]) -> Result<()> {
        self.inner.read_kv_block(block, out)
    }
    fn write_kv_block(&mut self, block: BlockId, data: &[u8]) -> Result<()> {
        self.inner.write_kv_block(block, data)
    }
}

struct Counts {
    picked: Arc<AtomicUsize>,
    host: Arc<AtomicUsize>,
}

fn engines() -> (Engine, Engine, Counts) {
    let spec = TinyModelSpec::tiny_qwen3();
    let (_dir, plain) = load(&spec, Form::Hf(DType::F32));
    let (_dir2, loaded) = load(&spec, Form::Hf(DType::F32));
    let cfg = common::small_engine_config();
    let model = Engine::model_runner(&loaded, &cfg).expect("model");
    let counts = Counts {
        picked: Arc::default(),
        host: Arc::default(),
    };
    let runner = PickingRunner {
        inner: model,
        picked: counts.picked.clone(),
        host: counts.host.clone(),
    };
    let picking = Engine::with_runner(Box::new(runner), loaded.tokenizer, loaded.name, cfg.clone())
        .expect("picking engine");
    let host = Engine::new(plain, cfg).expect("host engine");
    (host, picking, counts)
}

/// Tokens and logprobs of every request, run together.
fn run(engine: &mut Engine, reqs: &[EngineRequest]) -> Vec<(Vec<u32>, Vec<f32>)> {
    for r in reqs {
        engine.add_request(r.clone()).expect("add");
    }
    let mut out = vec![(Vec::new(), Vec::new()); reqs.len()];
    let mut steps = 0;
    while engine.has_work() {
        steps += 1;
        assert!(steps < 10_000, "engine did not finish");
        for o in engine.step().expect("step") {
            let k = reqs.iter().position(|r| r.id == o.id).expect("known id");
            out[k].0.push(o.token.token);
            out[k].1.push(o.token.logprob);
        }
    }
    out
}

fn request(id: u64, seed: u64, params: SamplingParams) -> EngineRequest {
    EngineRequest {
        id: SeqId(id),
        prompt_tokens: common::prompt(seed, 5 + seed as usize % 7, 256),
        params: SamplingParams {
            max_tokens: 12,
            ignore_eos: true,
            ..params
        },
    }
}

#[test]
fn greedy_picks_equal_the_host_sampler() {
    let (mut host, mut picking, counts) = engines();
    let reqs: Vec<EngineRequest> = (0..4)
        .map(|i| request(i, i, SamplingParams::greedy(12)))
        .collect();
    let want = run(&mut host, &reqs);
    let got = run(&mut picking, &reqs);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.0, w.0, "request {k}: tokens");
        for (a, b) in g.1.iter().zip(&w.1) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "request {k}: logprob {a} vs {b}"
            );
        }
    }
    assert_eq!(
        counts.host.load(Ordering::Relaxed),
        0,
        "every greedy row picked"
    );
    assert_eq!(counts.picked.load(Ordering::Relaxed), 4 * 12);
}

#[test]
fn sampled_picks_are_reproducible_and_batch_invariant() {
    let (_, mut picking, counts) = engines();
    let sampled = |i: u64| {
        request(
            10 + i,
            i,
            SamplingParams {
                temperature: 0.9,
                seed: Some(1000 + i),
                ..Default::default()
            },
        )
    };
    let together: Vec<EngineRequest> = (0..3).map(sampled).collect();
    let batch = run(&mut picking, &together);
    for (i, r) in together.iter().enumerate() {
        let alone = run(&mut picking, std::slice::from_ref(r));
        assert_eq!(alone[0].0, batch[i].0, "request {i}: alone vs in a batch");
    }
    assert_eq!(counts.host.load(Ordering::Relaxed), 0);
    // Different seeds give different continuations (12 tokens from a 256 vocab).
    assert_ne!(batch[0].0, batch[1].0);

    // Truncation and logprobs go to the host sampler.
    let before = counts.host.load(Ordering::Relaxed);
    let truncated = request(
        20,
        1,
        SamplingParams {
            temperature: 0.9,
            top_p: 0.8,
            seed: Some(5),
            ..Default::default()
        },
    );
    let with_logprobs = request(
        21,
        2,
        SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy(12)
        },
    );
    run(&mut picking, &[truncated, with_logprobs]);
    assert_eq!(counts.host.load(Ordering::Relaxed) - before, 2 * 12);
}
