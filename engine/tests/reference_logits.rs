//! The engine's logits agree with the independent f64 reference forward pass
//! (`fixtures::reference`) for every architecture and every model form.

mod common;

use common::{load, Form};
use pdserve_engine::backend::cpu::CpuBackend;
use pdserve_engine::backend::{AttnSeq, ForwardBatch};
use pdserve_engine::fixtures::{
    assert_close, reference_logits, reference_logits_kv, weights_as_stored, TinyModelSpec,
};
use pdserve_engine::kv::pool::KvDtype;
use pdserve_engine::model::{Model, ModelRunner};
use pdserve_engine::quant::DType;
use pdserve_engine::BlockId;

/// Logits of every position of `tokens`, computed as one prefill (f32 KV).
fn engine_logits(loaded: &pdserve_engine::loader::LoadedModel, tokens: &[u32]) -> Vec<f32> {
    engine_logits_kv(loaded, tokens, KvDtype::F32)
}

/// [`engine_logits`] with the KV cache stored as `kv`.
fn engine_logits_kv(
    loaded: &pdserve_engine::loader::LoadedModel,
    tokens: &[u32],
    kv: KvDtype,
) -> Vec<f32> {
    let bs = 4;
    let blocks = tokens.len().div_ceil(bs);
    let mut model = Model::new(
        CpuBackend::new(kv).expect("cpu kv dtype"),
        loaded.config.clone(),
        &loaded.weights,
        bs,
        blocks + 1,
    )
    .expect("model");
    let batch = ForwardBatch {
        tokens: tokens.to_vec(),
        positions: (0..tokens.len() as u32).collect(),
        seqs: vec![AttnSeq {
            row_start: 0,
            len: tokens.len(),
            pos_start: 0,
            // Deliberately non-contiguous, reversed block order: paging must not matter.
            block_table: (0..blocks as u32).rev().map(BlockId).collect(),
        }],
        logits_rows: (0..tokens.len()).collect(),
    };
    model.forward(&batch).expect("forward")
}

fn check(spec: &TinyModelSpec, form: Form, stored: DType, tol: f64) {
    check_len(spec, form, stored, tol, 13);
}

fn check_len(spec: &TinyModelSpec, form: Form, stored: DType, tol: f64, len: usize) {
    let (_dir, loaded) = load(spec, form);
    assert_eq!(loaded.config, spec.config(), "{form:?}: config differs");
    let tokens = common::prompt(7, len, spec.vocab);
    let got = engine_logits(&loaded, &tokens);
    let weights = weights_as_stored(&spec.weights_f32(), stored).expect("weights");
    let want = reference_logits(&spec.config(), &weights, &tokens).expect("reference");
    assert_close(
        &got,
        &want,
        tol,
        &format!("{:?} {form:?} logits", spec.arch),
    );
}

#[test]
fn f32_safetensors_matches_reference_for_every_architecture() {
    for spec in TinyModelSpec::presets() {
        check(&spec, Form::Hf(DType::F32), DType::F32, 1e-4);
    }
}

/// An f16 KV cache: the engine's logits match the reference whose keys and
/// values are rounded to f16 the same way (every other step in f64), at the
/// same tolerance; against the f32-KV reference they differ by more (f16
/// rounding is ~5e-4 relative), so the test tells the two apart.
#[test]
fn f16_kv_matches_reference_with_f16_keys_and_values() {
    for spec in TinyModelSpec::presets() {
        let (_dir, loaded) = load(&spec, Form::Hf(DType::F32));
        let tokens = common::prompt(7, 40, spec.vocab);
        let got = engine_logits_kv(&loaded, &tokens, KvDtype::F16);
        let weights = weights_as_stored(&spec.weights_f32(), DType::F32).expect("weights");
        let cfg = spec.config();
        let want = reference_logits_kv(&cfg, &weights, &tokens, KvDtype::F16).expect("reference");
        let name = format!("{:?} f16 KV logits", spec.arch);
        assert_close(&got, &want, 1e-4, &name);
        let exact = reference_logits(&cfg, &weights, &tokens).expect("reference");
        let worst = got
            .iter()
            .zip(&exact)
            .map(|(a, b)| ((a - b).abs() / (1.0 + b.abs())) as f64)
            .fold(0.0, f64::max);
        assert!(worst > 1e-6, "{name}: f16 rounding left no trace ({worst})");
    }
}

/// A 300-row prefill runs its MLP in slices (`Backend::MLP_ROWS`, 128 on the CPU:
/// 128 + 128 + 44 rows); every row's logits still match the reference.
#[test]
fn long_prefill_with_sliced_mlp_matches_reference() {
    const { assert!(300 > <CpuBackend as pdserve_engine::backend::Backend>::MLP_ROWS) };
    for spec in TinyModelSpec::presets() {
        check_len(&spec, Form::Hf(DType::F32), DType::F32, 1e-4, 300);
    }
}

#[test]
fn f32_gguf_matches_reference_for_every_architecture() {
    // Llama GGUFs carry permuted q/k rows; the loader must undo the permutation.
    for spec in TinyModelSpec::presets() {
        check(&spec, Form::Gguf(DType::F32), DType::F32, 1e-4);
    }
}

#[test]
fn half_precision_safetensors_match_reference() {
    for spec in TinyModelSpec::presets() {
        check(&spec, Form::Hf(DType::F16), DType::F16, 1e-4);
        check(&spec, Form::Hf(DType::BF16), DType::BF16, 1e-4);
    }
}

#[test]
fn quantized_gguf_matches_reference_on_dequantized_weights() {
    // Activations are quantized to 8 bits inside the quantized matmul kernels, so the
    // tolerance is that of int8 activations, not of f32 arithmetic.
    for spec in TinyModelSpec::presets() {
        check(&spec, Form::Gguf(DType::Q8_0), DType::Q8_0, 1e-1);
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1] {
            check(&spec, Form::Gguf(dt), dt, 1e-1);
        }
    }
}
