//! Writes a Hugging Face Qwen3 model directory with random weights, for benchmarks
//! that need the exact shape of a real model but not its knowledge (issue 5: GPU
//! benchmarks on the Qwen3-0.6B shape, side by side with PyTorch + transformers).
//!
//! ```text
//! cargo run --release -p pdserve-engine --example make_model -- \
//!     --out DIR --tokenizer TOKDIR [--shape qwen3-0.6b|tiny] [--dtype bf16|f16|f32] \
//!     [--seed N] [--force]
//! ```
//!
//! `TOKDIR` holds the real Qwen3 `tokenizer.json` and `tokenizer_config.json`
//! (`bash scripts/fetch-assets.sh` puts them in `~/.cache/pdserve/models/qwen3-tokenizer/`).
//! `DIR` gets `config.json`, `generation_config.json`, `model.safetensors` and copies
//! of the two tokenizer files: a directory both `pdserve --model DIR` and
//! transformers' `AutoModelForCausalLM.from_pretrained(DIR)` load.
//!
//! Shapes:
//! - `qwen3-0.6b` (default): Qwen3-0.6B exactly — 28 layers, hidden 1024, 16 query /
//!   8 KV heads, head_dim 128, intermediate 3072, vocab 151936, tied embeddings,
//!   rms_norm_eps 1e-6, rope_theta 1e6, max_position_embeddings 40960. 596 M
//!   parameters: 1.19 GB in bf16 (the embedding alone is 311 MB).
//! - `tiny`: 2 layers, hidden 64, 4 / 2 heads of 32, intermediate 128, but the real
//!   vocabulary, so the real tokenizer works; ~20 MB, for dry runs on a CPU.
//!
//! Weights are deterministic in `--seed` (default 0) and the tensor name, like
//! transformers' own initialisation of this config (`initializer_range` 0.02): every
//! matrix and the embedding are zero-mean, near-normal with std 0.02 (a sum of four
//! uniforms), every RMSNorm weight is 1.0. Activations stay O(1) through the
//! pre-norm stack and the logits are finite and fairly flat, so greedy decoding
//! produces tokens (meaningless ones) rather than NaN.
//!
//! The safetensors file is streamed: the header (u64 little-endian length, JSON with
//! dtype / shape / data_offsets per tensor, padded to 8 bytes) is computed first, then
//! each tensor is generated in 1 Mi-element chunks (in parallel) and written, so
//! memory stays small whatever the model size. Everything is written into
//! `DIR.partial` and renamed to `DIR` at the end: an interrupted run never leaves a
//! directory that looks complete. An existing `DIR` is an error unless `--force`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use pdserve_engine::config::Architecture;
use pdserve_engine::fixtures::TinyModelSpec;
use pdserve_engine::tokenizer::Tokenizer;

const USAGE: &str = "usage: make_model --out DIR --tokenizer TOKDIR \
[--shape qwen3-0.6b|tiny] [--dtype bf16|f16|f32] [--seed N] [--force]";

/// Qwen3's special tokens: `<|endoftext|>` (bos, pad, second eos) and `<|im_end|>`.
const ENDOFTEXT: &str = "<|endoftext|>";
const IM_END: &str = "<|im_end|>";
/// Their ids in the real Qwen3 tokenizer.
const QWEN3_ENDOFTEXT_ID: u32 = 151643;
const QWEN3_IM_END_ID: u32 = 151645;

/// Std of the matrices and the embedding (transformers' `initializer_range`).
const INIT_STD: f32 = 0.02;
/// Elements generated per parallel chunk.
const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FloatType {
    Bf16,
    F16,
    F32,
}

impl FloatType {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bf16" | "bfloat16" => Ok(FloatType::Bf16),
            "f16" | "float16" => Ok(FloatType::F16),
            "f32" | "float32" => Ok(FloatType::F32),
            other => Err(format!("--dtype {other}: expected bf16, f16 or f32")),
        }
    }
    /// Name in the safetensors header.
    fn safetensors(self) -> &'static str {
        match self {
            FloatType::Bf16 => "BF16",
            FloatType::F16 => "F16",
            FloatType::F32 => "F32",
        }
    }
    /// `torch_dtype` in config.json.
    fn torch(self) -> &'static str {
        match self {
            FloatType::Bf16 => "bfloat16",
            FloatType::F16 => "float16",
            FloatType::F32 => "float32",
        }
    }
    fn size(self) -> usize {
        match self {
            FloatType::Bf16 | FloatType::F16 => 2,
            FloatType::F32 => 4,
        }
    }
}

struct Args {
    out: PathBuf,
    tokenizer: PathBuf,
    shape: String,
    dtype: FloatType,
    seed: u64,
    force: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let mut tokenizer = None;
    let mut shape = "qwen3-0.6b".to_string();
    let mut dtype = FloatType::Bf16;
    let mut seed = 0u64;
    let mut force = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--tokenizer" => tokenizer = Some(PathBuf::from(value("--tokenizer")?)),
            "--shape" => shape = value("--shape")?,
            "--dtype" => dtype = FloatType::parse(&value("--dtype")?)?,
            "--seed" => {
                let v = value("--seed")?;
                seed = v.parse().map_err(|_| format!("--seed {v}: not a number"))?;
            }
            "--force" => force = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        out: out.ok_or("--out is required")?,
        tokenizer: tokenizer.ok_or("--tokenizer is required")?,
        shape,
        dtype,
        seed,
        force,
    })
}

/// The model shape; sizes use the HF meanings.
fn shape(name: &str, seed: u64) -> Result<TinyModelSpec, String> {
    let qwen3_06b = TinyModelSpec {
        arch: Architecture::Qwen3,
        vocab: 151936,
        hidden: 1024,
        intermediate: 3072,
        layers: 28,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        max_position: 40960,
        tie_embeddings: true,
        seed,
    };
    match name {
        "qwen3-0.6b" => Ok(qwen3_06b),
        "tiny" => Ok(TinyModelSpec {
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            ..qwen3_06b
        }),
        other => Err(format!("--shape {other}: expected qwen3-0.6b or tiny")),
    }
}

/// `config.json` as Qwen3-0.6B's, with this spec's sizes.
fn hf_config(
    spec: &TinyModelSpec,
    dtype: FloatType,
    bos: u32,
    eos: u32,
    seed: u64,
) -> serde_json::Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "initializer_range": short(INIT_STD),
        "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_position,
        "max_window_layers": spec.layers,
        "model_type": "qwen3",
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.kv_heads,
        "rms_norm_eps": short(spec.rms_eps),
        "rope_scaling": null,
        "rope_theta": short(spec.rope_theta),
        "sliding_window": null,
        "tie_word_embeddings": spec.tie_embeddings,
        "torch_dtype": dtype.torch(),
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": spec.vocab,
        "pdserve_random_weights": { "seed": seed, "std": short(INIT_STD) },
    })
}

/// An f32 as the f64 of its shortest decimal form (1e-6, not 9.99999997e-7).
fn short(x: f32) -> serde_json::Value {
    json!(x.to_string().parse::<f64>().unwrap_or(x as f64))
}

/// SplitMix64's increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function of state `z`: a good 64-bit mix, cheap enough for
/// 600 M values.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of the tensor name, so each tensor's stream depends only on (seed, name).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One near-normal value of std 1 from a 64-bit word: the sum of its four 16-bit
/// quarters (Irwin–Hall, n = 4), centred and scaled.
fn near_normal(w: u64) -> f32 {
    let s = (w & 0xffff) + ((w >> 16) & 0xffff) + ((w >> 32) & 0xffff) + (w >> 48);
    // Each quarter is uniform on [0, 65536): mean 32767.5, variance 65536² / 12.
    const MEAN: f32 = 4.0 * 32767.5;
    const INV_STD: f32 = 1.0 / (65536.0 * 0.577_350_26); // sqrt(4 / 12) = 0.57735
    (s as f32 - MEAN) * INV_STD
}

/// Bytes of elements `[start, start + len)` of a tensor. Element `i` is the `i`-th
/// output of the SplitMix64 stream seeded with `key`, so the values do not depend
/// on how the tensor is chunked.
fn chunk_bytes(dtype: FloatType, is_norm: bool, key: u64, start: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len * dtype.size()];
    let state = key.wrapping_add((start as u64).wrapping_mul(GOLDEN));
    // One loop per dtype, so that the conversion is inlined (600 M values).
    match dtype {
        FloatType::Bf16 => fill(&mut out, is_norm, state, |v| {
            half::bf16::from_f32(v).to_le_bytes()
        }),
        FloatType::F16 => fill(&mut out, is_norm, state, |v| {
            half::f16::from_f32(v).to_le_bytes()
        }),
        FloatType::F32 => fill(&mut out, is_norm, state, f32::to_le_bytes),
    }
    out
}

fn fill<const N: usize>(
    out: &mut [u8],
    is_norm: bool,
    mut state: u64,
    encode: impl Fn(f32) -> [u8; N],
) {
    if is_norm {
        let one = encode(1.0);
        out.chunks_exact_mut(N)
            .for_each(|d| d.copy_from_slice(&one));
        return;
    }
    for dst in out.chunks_exact_mut(N) {
        dst.copy_from_slice(&encode(INIT_STD * near_normal(mix(state))));
        state = state.wrapping_add(GOLDEN);
    }
}

/// Streams `model.safetensors`; returns its size in bytes.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: FloatType,
    seed: u64,
) -> Result<u64, String> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        header.insert(
            name.clone(),
            json!({ "dtype": dtype.safetensors(), "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| e.to_string())?;
    // Pad with spaces so the data starts 8-byte aligned, as safetensors does.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path).map_err(io)?);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;

    let group = CHUNK * rayon::current_num_threads().max(1) * 2;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let key = mix(seed.wrapping_add(mix(name_hash(name))));
        let mut start = 0;
        while start < n {
            let end = (start + group).min(n);
            let parts: Vec<Vec<u8>> = (start..end)
                .step_by(CHUNK)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|s| chunk_bytes(dtype, is_norm, key, s, CHUNK.min(end - s)))
                .collect();
            for p in parts {
                w.write_all(&p).map_err(io)?;
            }
            start = end;
        }
    }
    w.flush().map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(8 + text.len() as u64 + offset as u64)
}

/// Re-reads the header with the safetensors crate (offsets contiguous, sizes match).
fn check_safetensors(path: &Path, expected: usize) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the file was just written by this process and is not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| format!("{}: not valid safetensors: {e}", path.display()))?;
    if st.len() != expected {
        return Err(format!("{} tensors written, {expected} expected", st.len()));
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n";
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(args: Args) -> Result<(), String> {
    let spec = shape(&args.shape, args.seed)?;
    spec.config().validate().map_err(|e| e.to_string())?;
    if args.out.exists() && !args.force {
        return Err(format!(
            "{} exists (pass --force to replace it)",
            args.out.display()
        ));
    }
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let written = fill_dir(&args, &spec, &partial);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    let (bytes, secs) = written?;

    if args.out.exists() {
        std::fs::remove_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    }
    std::fs::rename(&partial, &args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!(
        "make_model: wrote model.safetensors, {:.1} MB in {secs:.1} s ({:.0} MB/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    println!("{}", args.out.display());
    Ok(())
}

/// Writes every file into `partial`; returns the safetensors size and the seconds
/// it took.
fn fill_dir(args: &Args, spec: &TinyModelSpec, partial: &Path) -> Result<(u64, f64), String> {
    // The tokenizer first: its special-token ids go into the configs.
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let src = args.tokenizer.join(f);
        std::fs::copy(&src, partial.join(f)).map_err(|e| format!("{}: {e}", src.display()))?;
    }
    let tok = Tokenizer::from_hf_dir(partial).map_err(|e| format!("tokenizer: {e}"))?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| format!("the tokenizer in {} has no {t}", args.tokenizer.display()))
    };
    let (endoftext, im_end) = (id(ENDOFTEXT)?, id(IM_END)?);
    if (endoftext, im_end) != (QWEN3_ENDOFTEXT_ID, QWEN3_IM_END_ID) {
        eprintln!(
            "make_model: warning: {ENDOFTEXT} = {endoftext}, {IM_END} = {im_end} \
             (Qwen3 has {QWEN3_ENDOFTEXT_ID}, {QWEN3_IM_END_ID}); using the tokenizer's"
        );
    }
    if tok.vocab_size() > spec.vocab {
        return Err(format!(
            "the tokenizer has {} tokens, more than the model's vocab {}",
            tok.vocab_size(),
            spec.vocab
        ));
    }

    write_json(
        &partial.join("config.json"),
        &hf_config(spec, args.dtype, endoftext, im_end, args.seed),
    )?;
    write_json(
        &partial.join("generation_config.json"),
        &json!({
            "bos_token_id": endoftext,
            "eos_token_id": [im_end, endoftext],
            "pad_token_id": endoftext,
            "do_sample": false,
        }),
    )?;

    let tensors = spec.hf_tensor_shapes();
    let params: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    eprintln!(
        "make_model: {} ({} tensors, {:.1} M parameters, {}) -> {}",
        args.shape,
        tensors.len(),
        params as f64 / 1e6,
        args.dtype.torch(),
        args.out.display()
    );
    let t = Instant::now();
    let st_path = partial.join("model.safetensors");
    let bytes = write_safetensors(&st_path, &tensors, args.dtype, args.seed)?;
    check_safetensors(&st_path, tensors.len())?;
    Ok((bytes, t.elapsed().as_secs_f64()))
}

fn main() {
    let result = parse_args()
        .map_err(|e| format!("{e}\n{USAGE}"))
        .and_then(run);
    if let Err(e) = result {
        eprintln!("make_model: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_normal_has_unit_std() {
        let n = 200_000u64;
        let xs: Vec<f64> = (0..n)
            .map(|i| near_normal(mix(i.wrapping_mul(GOLDEN))) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn values_do_not_depend_on_chunking() {
        let whole = chunk_bytes(FloatType::Bf16, false, 7, 0, 10);
        let mut parts = chunk_bytes(FloatType::Bf16, false, 7, 0, 4);
        parts.extend(chunk_bytes(FloatType::Bf16, false, 7, 4, 6));
        assert_eq!(whole, parts);
        assert_eq!(
            chunk_bytes(FloatType::F32, true, 7, 3, 1),
            1f32.to_le_bytes()
        );
    }

    #[test]
    fn qwen3_shape_has_the_real_parameter_count() {
        let spec = shape("qwen3-0.6b", 0).unwrap();
        let params: usize = spec
            .hf_tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // Qwen3-0.6B: 596,049,920 parameters with the embedding tied.
        assert_eq!(params, 596_049_920);
    }
}
