//! Batching invariance: a request's greedy tokens do not depend on what else runs
//! with it, on chunked prefill, or on prefix-cache hits; and the scheduler's
//! continuous batching, preemption and abort keep every output correct.

#[macro_use]
mod common;

use common::{greedy, load, prompt, run_to_completion, small_config_on, Form};
use pdserve_engine::engine::{Engine, EngineConfig, FinishReason};
use pdserve_engine::fixtures::TinyModelSpec;
use pdserve_engine::quant::DType;
use pdserve_engine::SeqId;

fn engine(spec: &TinyModelSpec, form: Form, cfg: EngineConfig) -> (common::TinyModel, Engine) {
    let (dir, loaded) = load(spec, form);
    (dir, Engine::new(loaded, cfg).expect("engine"))
}

fn alone(spec: &TinyModelSpec, form: Form, cfg: EngineConfig, p: &[u32], n: usize) -> Vec<u32> {
    let (_d, mut e) = engine(spec, form, cfg);
    e.add_request(greedy(1, p.to_vec(), n)).expect("add");
    let out = run_to_completion(&mut e);
    let (toks, fin) = out[&SeqId(1)].clone();
    assert_eq!(fin, Some(FinishReason::Length));
    toks
}

per_device! {
fn same_tokens_alone_batched_chunked_and_cached(device) {
    for form in [Form::Gguf(DType::Q8_0), Form::Hf(DType::F32)] {
        let spec = TinyModelSpec::tiny_qwen3();
        let target = prompt(11, 37, spec.vocab);
        let n = 12;
        let base = alone(&spec, form, small_config_on(device), &target, n);
        assert_eq!(base.len(), n);

        // No chunking (whole prompts only), big budget.
        let whole = EngineConfig {
            chunked_prefill: false,
            max_batched_tokens: 256,
            ..small_config_on(device)
        };
        assert_eq!(
            alone(&spec, form, whole, &target, n),
            base,
            "{form:?}: chunked vs whole prefill"
        );

        // Tiny budget: the prompt is prefilled in many chunks of 5.
        let tiny = EngineConfig {
            max_batched_tokens: 5,
            ..small_config_on(device)
        };
        assert_eq!(
            alone(&spec, form, tiny, &target, n),
            base,
            "{form:?}: 5-token chunks"
        );

        // In a batch with others of different lengths, joining at different steps.
        let (_d, mut e) = engine(&spec, form, small_config_on(device));
        let mut early = std::collections::HashMap::new();
        e.add_request(greedy(10, prompt(1, 9, spec.vocab), 20))
            .unwrap();
        e.add_request(greedy(11, prompt(2, 50, spec.vocab), 5))
            .unwrap();
        for o in e.step().unwrap() {
            common::record(&mut early, &o);
        }
        e.add_request(greedy(1, target.clone(), n)).unwrap();
        for o in e.step().unwrap() {
            common::record(&mut early, &o);
        }
        e.add_request(greedy(12, prompt(3, 3, spec.vocab), 7))
            .unwrap();
        let mut out = run_to_completion(&mut e);
        for (id, (toks, fin)) in out.iter_mut() {
            if let Some((first, _)) = early.get(id) {
                let mut all: Vec<u32> = first.clone();
                all.append(toks);
                *toks = all;
            }
            let _ = fin;
        }
        assert_eq!(out[&SeqId(1)].0, base, "{form:?}: batched");

        // Prefix-cache hit: the same prompt again on a warm engine.
        let (_d, mut e) = engine(&spec, form, small_config_on(device));
        e.add_request(greedy(1, target.clone(), n)).unwrap();
        run_to_completion(&mut e);
        e.add_request(greedy(2, target.clone(), n)).unwrap();
        assert!(
            e.cached_prefix_len(&target) >= 32,
            "prefix cache should hold the prompt's full blocks"
        );
        let out = run_to_completion(&mut e);
        assert_eq!(out[&SeqId(2)].0, base, "{form:?}: prefix-cache hit");
    }
}
}

per_device! {
fn preemption_by_recompute_keeps_outputs_identical(device) {
    let spec = TinyModelSpec::tiny_llama();
    let form = Form::Gguf(DType::Q8_0);
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| prompt(100 + i, 10 + 3 * i as usize, spec.vocab))
        .collect();
    let n = 24;
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| alone(&spec, form, small_config_on(device), p, n))
        .collect();
    // A pool too small for all six at full length forces preemption.
    let (_d, loaded) = load(&spec, form);
    let per_block =
        pdserve_engine::model::Model::<pdserve_engine::backend::cpu::CpuBackend>::layout_for(
            &loaded.config,
            4,
            1,
            // The engine's default on either device (f16 / bf16): 2 bytes.
            pdserve_engine::kv::pool::KvDtype::F16,
        )
        .block_bytes();
    let cfg = EngineConfig {
        kv_cache_bytes: per_block * 40,
        enable_prefix_cache: false,
        ..small_config_on(device)
    };
    let mut e = Engine::new(loaded, cfg).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        e.add_request(greedy(i as u64, p.clone(), n)).unwrap();
    }
    let out = run_to_completion(&mut e);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            &out[&SeqId(i as u64)].0,
            want,
            "sequence {i} after preemption"
        );
    }
    let s = e.stats();
    assert_eq!(s.free_blocks, s.total_blocks, "every block free at the end");
}
}

per_device! {
fn abort_frees_blocks_at_once_and_others_continue(device) {
    let spec = TinyModelSpec::tiny_qwen2();
    let (_d, mut e) = engine(&spec, Form::Gguf(DType::Q8_0), small_config_on(device));
    let total = e.stats().total_blocks;
    e.add_request(greedy(1, prompt(5, 30, spec.vocab), 50))
        .unwrap();
    e.add_request(greedy(2, prompt(6, 30, spec.vocab), 10))
        .unwrap();
    for _ in 0..5 {
        e.step().unwrap();
    }
    let used_before = total - e.stats().free_blocks;
    assert!(e.abort(SeqId(1)));
    let used_after = total - e.stats().free_blocks;
    assert!(
        used_after < used_before,
        "abort must free blocks immediately"
    );
    assert!(!e.abort(SeqId(1)), "second abort is a no-op");
    let out = run_to_completion(&mut e);
    assert!(!out.contains_key(&SeqId(1)));
    assert_eq!(out[&SeqId(2)].1, Some(FinishReason::Length));
    assert_eq!(e.stats().free_blocks, total);
}
}

per_device! {
fn bad_requests_are_rejected_without_side_effects(device) {
    let spec = TinyModelSpec::tiny_llama();
    let (_d, mut e) = engine(&spec, Form::Hf(DType::F32), small_config_on(device));
    assert!(e.add_request(greedy(1, vec![], 4)).is_err(), "empty prompt");
    assert!(
        e.add_request(greedy(2, vec![spec.vocab as u32], 4))
            .is_err(),
        "token outside vocab"
    );
    let long = prompt(1, spec.max_position + 1, spec.vocab);
    assert!(
        e.add_request(greedy(3, long, 4)).is_err(),
        "prompt longer than context"
    );
    let mut bad = greedy(4, vec![1, 2, 3], 4);
    bad.params.top_p = 0.0;
    assert!(e.add_request(bad).is_err(), "invalid sampling params");
    e.add_request(greedy(5, vec![1, 2, 3], 4)).unwrap();
    assert!(
        e.add_request(greedy(5, vec![1, 2, 3], 4)).is_err(),
        "duplicate id"
    );
    let out = run_to_completion(&mut e);
    assert_eq!(out.len(), 1);
    assert_eq!(out[&SeqId(5)].0.len(), 4);
}
}
