//! GGUF reader tests: a hand-built file, corruption (truncation at every offset,
//! random byte flips via proptest) and the real SmolLM2 file when present.

use super::*;
use crate::quant::{quantize, DType};
use proptest::prelude::*;

fn s(out: &mut Vec<u8>, v: &str) {
    out.extend((v.len() as u64).to_le_bytes());
    out.extend(v.as_bytes());
}

struct T {
    name: &'static str,
    shape: Vec<u64>,
    dtype: DType,
    data: Vec<u8>,
}

/// Builds a GGUF file byte by byte (independent of `writer.rs`).
fn build(version: u32, alignment: Option<u32>, tensors: &[T]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    let n_kv = 6 + alignment.is_some() as u64;
    b.extend(n_kv.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    s(&mut b, "llama.rope.freq_base");
    b.extend(6u32.to_le_bytes());
    b.extend(10000f32.to_le_bytes());
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["<s>", "a", "bc"] {
        s(&mut b, t);
    }
    s(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(1);
    s(&mut b, "big");
    b.extend(11u32.to_le_bytes());
    b.extend((-5i64).to_le_bytes());
    if let Some(a) = alignment {
        s(&mut b, "general.alignment");
        b.extend(4u32.to_le_bytes());
        b.extend(a.to_le_bytes());
    }
    let align = alignment.unwrap_or(32) as usize;
    let mut offset = 0usize;
    let mut offsets = vec![];
    for t in tensors {
        s(&mut b, t.name);
        b.extend((t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            b.extend(d.to_le_bytes());
        }
        b.extend((t.dtype as u32).to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).next_multiple_of(align);
    }
    b.resize(b.len().next_multiple_of(align), 0);
    let start = b.len();
    for (t, off) in tensors.iter().zip(offsets) {
        b.resize(start + off, 0);
        b.extend(&t.data);
    }
    b
}

fn sample_tensors() -> (Vec<T>, Vec<f32>, Vec<f32>) {
    let norm: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
    let w: Vec<f32> = (0..3 * 64)
        .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let t = vec![
        T {
            name: "norm.weight",
            shape: vec![8],
            dtype: DType::F32,
            data: quantize(DType::F32, &norm, 1, 8),
        },
        T {
            name: "w.weight",
            shape: vec![64, 3],
            dtype: DType::Q8_0,
            data: quantize(DType::Q8_0, &w, 3, 64),
        },
        T {
            name: "h.weight",
            shape: vec![4, 2, 1],
            dtype: DType::F16,
            data: quantize(DType::F16, &norm, 2, 4),
        },
    ];
    (t, norm, w)
}

fn write_tmp(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn parses_hand_built_file() {
    for (version, alignment) in [(3, None), (2, Some(64u32)), (3, Some(8))] {
        let (tensors, norm, w) = sample_tensors();
        let bytes = build(version, alignment, &tensors);
        let (_dir, path) = write_tmp(&bytes);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, version);
        assert_eq!(
            f.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(f.get("llama.block_count").unwrap().as_u64(), Some(2));
        assert_eq!(
            f.get("llama.rope.freq_base").unwrap().as_f64(),
            Some(10000.0)
        );
        assert_eq!(f.get("flag"), Some(&GgufValue::Bool(true)));
        assert_eq!(f.get("big"), Some(&GgufValue::I64(-5)));
        let toks = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(toks.len(), 3);
        assert_eq!(toks[2].as_str(), Some("bc"));
        assert_eq!(f.tensors.len(), 3);

        assert_eq!(f.tensor_f32("norm.weight").unwrap(), norm);
        let m = f.matrix("norm.weight").unwrap();
        assert_eq!((m.rows, m.cols), (1, 8));

        let m = f.matrix("w.weight").unwrap();
        assert_eq!((m.dtype, m.rows, m.cols), (DType::Q8_0, 3, 64));
        for (a, b) in m.to_f32().iter().zip(&w) {
            assert!((a - b).abs() < 0.01);
        }
        let m = f.matrix("h.weight").unwrap();
        assert_eq!((m.dtype, m.rows, m.cols), (DType::F16, 2, 4));
        assert_eq!(f.tensor_f32("h.weight").unwrap(), norm);

        assert!(matches!(
            f.matrix("nope"),
            Err(EngineError::MissingTensor(_))
        ));
    }
}

#[test]
fn rejects_bad_headers() {
    let (tensors, _, _) = sample_tensors();
    let good = build(3, None, &tensors);
    let mut cases: Vec<(Vec<u8>, &str)> = vec![];
    let mut b = good.clone();
    b[0] = b'X';
    cases.push((b, "magic"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    cases.push((b, "version 1"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    cases.push((b, "big-endian"));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push((b, "impossible"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push((b, "impossible"));
    for (bytes, want) in cases {
        match parse::parse(&bytes) {
            Err(parse::ParseError::Bad(msg)) => assert!(msg.contains(want), "{msg} !~ {want}"),
            Err(e) => panic!("unexpected {e:?}"),
            Ok(_) => panic!("accepted a file with bad {want}"),
        }
    }
}

#[test]
fn rejects_bad_tensors() {
    let mk = |shape: Vec<u64>, dtype: DType, data: Vec<u8>| {
        build(
            3,
            None,
            &[T {
                name: "t",
                shape,
                dtype,
                data,
            }],
        )
    };
    // Shape product overflows.
    let b = mk(vec![1 << 32, 1 << 32, 1 << 32], DType::F32, vec![0; 4]);
    assert!(parse::parse(&b).is_err());
    // Row length not a multiple of the block length.
    assert!(parse::parse(&mk(vec![16], DType::Q4_0, vec![0; 18])).is_err());
    // Extent past the end of the file.
    assert!(parse::parse(&mk(vec![64], DType::F32, vec![0; 4])).is_err());
    // Rank 0 and rank 5.
    assert!(parse::parse(&mk(vec![], DType::F32, vec![])).is_err());
    assert!(parse::parse(&mk(vec![1; 5], DType::F32, vec![0; 4])).is_err());
}

#[test]
fn unknown_tensor_type_is_unsupported_dtype() {
    let data = quantize(DType::F32, &[1.0; 4], 1, 4);
    let mut b = build(
        3,
        None,
        &[T {
            name: "t",
            shape: vec![4],
            dtype: DType::F32,
            data,
        }],
    );
    // Tensor info: name "t" (8+1) + rank (4) + dim (8) + type (4) + offset (8); the
    // header/metadata precede it. Find the name and patch the type field after it.
    let name_at = b
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b't'])
        .unwrap();
    let ty_at = name_at + 9 + 4 + 8;
    b[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    match parse::parse(&b) {
        Err(parse::ParseError::UnsupportedType { tensor, id }) => {
            assert_eq!((tensor.as_str(), id), ("t", 16))
        }
        other => panic!("expected unsupported type, got {:?}", other.err()),
    }
}

#[test]
fn truncated_at_every_offset_is_an_error() {
    let (tensors, _, _) = sample_tensors();
    let good = build(3, None, &tensors);
    assert!(parse::parse(&good).is_ok());
    for len in 0..good.len() {
        let r = parse::parse(&good[..len]);
        assert!(r.is_err(), "prefix of {len} bytes accepted");
    }
    // Through the file API: the error names the file.
    let (_dir, path) = write_tmp(&good[..good.len() / 2]);
    match GgufFile::open(&path) {
        Err(EngineError::BadModelFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("expected BadModelFile, got {:?}", other.err()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn corrupt_files_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let (tensors, _, _) = sample_tensors();
        let mut b = build(3, Some(16), &tensors);
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        let len = b.len();
        let cut = len - cut.index(len / 4 + 1);
        if let Ok(p) = parse::parse(&b[..cut]) {
            // Whatever was accepted must be internally consistent.
            for t in &p.tensors {
                let end = p.data_start as u64 + t.offset + t.dtype.bytes_for(t.n_elements()) as u64;
                prop_assert!(end <= cut as u64);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend(body);
        let _ = parse::parse(&b);
    }
}

#[test]
fn real_smollm2_gguf() {
    let Some(path) = crate::fixtures::real_asset("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for t in &f.tensors {
        *counts.entry(t.dtype.name()).or_insert(0) += 1;
    }
    println!(
        "{}: v{}, {} tensors, types {counts:?}",
        path.display(),
        f.version,
        f.tensors.len()
    );
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(f.tensors.len(), 272);
    let emb = f.matrix("token_embd.weight").unwrap();
    println!("token_embd: {} {}×{}", emb.dtype, emb.rows, emb.cols);
    assert_eq!((emb.rows, emb.cols), (49152, 576));
    let q = f.matrix("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dtype, q.rows, q.cols), (DType::Q4_1, 576, 576));
    let down = f.matrix("blk.0.ffn_down.weight").unwrap();
    assert_eq!((down.rows, down.cols), (576, 1536));
    let norm = f.tensor_f32("output_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|v| v.is_finite()));
    let mut row = vec![0f32; 576];
    emb.dequantize_row(1000, &mut row);
    assert!(row.iter().all(|v| v.is_finite() && v.abs() < 10.0));
}
