//! Shared helpers of the engine integration tests: tiny models written to temp dirs
//! in every supported form, engines over them, and greedy generation loops.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use pdserve_engine::device::Device;
use pdserve_engine::engine::{Engine, EngineConfig, EngineRequest, FinishReason, SeqOutput};
use pdserve_engine::fixtures::{write_gguf, write_hf_dir, TinyModelSpec};
use pdserve_engine::loader::{load_model, LoadOptions, LoadedModel};
use pdserve_engine::quant::DType;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::SeqId;

/// On-disk form of a tiny model.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    Hf(DType),
    Gguf(DType),
}

pub struct TinyModel {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Writes `spec` in `form` under a fresh temp dir.
pub fn write_model(spec: &TinyModelSpec, form: Form) -> TinyModel {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = match form {
        Form::Hf(dt) => {
            write_hf_dir(spec, dir.path(), dt).expect("write hf dir");
            dir.path().to_path_buf()
        }
        Form::Gguf(dt) => {
            let p = dir.path().join("tiny.gguf");
            write_gguf(spec, &p, dt).expect("write gguf");
            p
        }
    };
    TinyModel { dir, path }
}

pub fn offline() -> LoadOptions {
    LoadOptions {
        progress: false,
        prefault: false,
        allow_download: false,
        hub_env: None,
    }
}

pub fn load(spec: &TinyModelSpec, form: Form) -> (TinyModel, LoadedModel) {
    let m = write_model(spec, form);
    let loaded =
        load_model(m.path.to_str().expect("utf-8 path"), &offline()).expect("load tiny model");
    (m, loaded)
}

pub fn small_engine_config() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        kv_cache_bytes: 4 << 20,
        max_num_seqs: 16,
        max_batched_tokens: 64,
        chunked_prefill: true,
        enable_prefix_cache: true,
        max_model_len: None,
        ..EngineConfig::default()
    }
}

/// [`small_engine_config`] on `device`.
pub fn small_config_on(device: Device) -> EngineConfig {
    EngineConfig {
        device,
        ..small_engine_config()
    }
}

/// CUDA device 0 when this build has the CUDA backend and the machine a device;
/// otherwise `None`, after printing why the CUDA variant of a test is skipped —
/// which `PDSERVE_REQUIRE_CUDA=1` (a GPU machine's run) turns into a failure.
pub fn cuda_device() -> Option<Device> {
    #[cfg(feature = "cuda")]
    let why = match pdserve_engine::backend::cuda::probe(0) {
        Ok(_) => return Some(Device::Cuda(0)),
        Err(e) => e,
    };
    #[cfg(not(feature = "cuda"))]
    let why = "this build has no CUDA backend (feature cuda)".to_string();
    if std::env::var("PDSERVE_REQUIRE_CUDA").as_deref() == Ok("1") {
        panic!("PDSERVE_REQUIRE_CUDA=1 but {why}");
    }
    println!("skipped on cuda: {why}");
    None
}

/// A test run once per device: `per_device!(fn name(device) { ... })` defines
/// `name::cpu` (always) and `name::cuda` (when [`cuda_device`] finds one), each
/// calling the body with its `Device`.
#[allow(unused_macros)]
macro_rules! per_device {
    ($(#[$meta:meta])* fn $name:ident($dev:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($dev: pdserve_engine::device::Device) $body
            #[test]
            fn cpu() {
                body(pdserve_engine::device::Device::Cpu)
            }
            #[test]
            fn cuda() {
                if let Some(d) = common::cuda_device() {
                    body(d)
                }
            }
        }
    };
}

/// The tests' deterministic generator: a xorshift64 stream from `seed`.
pub fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

/// Deterministic pseudo-random prompt of ordinary (non-special) tokens.
pub fn prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    xorshift(seed)
        .take(len)
        .map(|x| (x % (vocab as u64 - 8)) as u32)
        .collect()
}

pub fn greedy(id: u64, prompt_tokens: Vec<u32>, max_tokens: usize) -> EngineRequest {
    let mut params = SamplingParams::greedy(max_tokens);
    params.ignore_eos = true;
    EngineRequest {
        id: SeqId(id),
        prompt_tokens,
        params,
    }
}

/// Runs the engine until idle (bounded); returns each sequence's tokens and finish.
pub fn run_to_completion(engine: &mut Engine) -> HashMap<SeqId, (Vec<u32>, Option<FinishReason>)> {
    let mut out: HashMap<SeqId, (Vec<u32>, Option<FinishReason>)> = HashMap::new();
    let mut steps = 0;
    while engine.has_work() {
        steps += 1;
        assert!(steps < 100_000, "engine did not finish");
        for o in engine.step().expect("step") {
            record(&mut out, &o);
        }
    }
    out
}

pub fn record(out: &mut HashMap<SeqId, (Vec<u32>, Option<FinishReason>)>, o: &SeqOutput) {
    let e = out.entry(o.id).or_default();
    e.0.push(o.token.token);
    if o.finish.is_some() {
        e.1 = o.finish;
    }
}
