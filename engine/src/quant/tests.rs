//! Tests of the block formats: dtype metadata, quantize → dequantize round trips,
//! and the dequantizers against a plain per-element reference written here
//! independently of `dequant.rs`.

use super::*;
use crate::storage::Storage;

/// Deterministic xorshift generator (no external RNG in unit tests).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal (sum of uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        (self.f32() + self.f32() + self.f32()) * scale
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
}

/// Every block-quantized type.
fn quant_types() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|d| d.is_quantized())
}

#[test]
fn dtype_table() {
    for d in DType::ALL {
        assert_eq!(DType::from_ggml(d as u32), Some(d));
        assert_eq!(d.name().parse::<String>().unwrap(), format!("{d}"));
    }
    assert_eq!(DType::from_ggml(4), None); // removed Q4_2
    assert_eq!(DType::from_ggml(16), None); // IQ2_XXS: not supported
    assert_eq!(DType::Q4_1.bytes_for(576), 18 * 20);
    assert_eq!(DType::Q6_K.bytes_for(512), 2 * 210);
    assert_eq!(DType::BF16.bytes_for(3), 6);
}

/// Relative RMS error of `dequantize(quantize(x))` per type, with the bound each
/// format should meet on Gaussian-like data.
#[test]
fn quantize_roundtrip_error() {
    let bounds = [
        (DType::F32, 0.0),
        (DType::F16, 1e-3),
        (DType::BF16, 5e-3),
        (DType::Q4_0, 0.12),
        (DType::Q4_1, 0.10),
        (DType::Q5_0, 0.06),
        (DType::Q5_1, 0.05),
        (DType::Q8_0, 0.008),
        (DType::Q8_1, 0.008),
        (DType::Q2_K, 0.40),
        (DType::Q3_K, 0.20),
        (DType::Q4_K, 0.10),
        (DType::Q5_K, 0.05),
        (DType::Q6_K, 0.025),
        (DType::Q8_K, 0.008),
    ];
    let mut rng = Rng::new(7);
    let (rows, cols) = (8, 512);
    let x = rng.vec(rows * cols, 0.5);
    for (dtype, bound) in bounds {
        let m = QMatrix::quantize_from_f32(dtype, rows, cols, &x);
        assert_eq!(m.data.len(), rows * dtype.bytes_for(cols));
        let y = m.to_f32();
        let err: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = (err / norm).sqrt();
        println!("{dtype}: relative RMS error {rel:.5}");
        assert!(rel <= bound, "{dtype}: relative RMS error {rel} > {bound}");
    }
}

#[test]
fn quantize_edge_cases() {
    // All zeros, constants, and a single spike must round-trip without NaN.
    for dtype in quant_types() {
        for pattern in 0..3 {
            let x: Vec<f32> = (0..256)
                .map(|i| match pattern {
                    0 => 0.0,
                    1 => 0.25,
                    _ => {
                        if i == 77 {
                            -3.0
                        } else {
                            0.0
                        }
                    }
                })
                .collect();
            let y = QMatrix::quantize_from_f32(dtype, 1, 256, &x).to_f32();
            for (a, b) in x.iter().zip(&y) {
                assert!(b.is_finite(), "{dtype} pattern {pattern}: non-finite");
                assert!(
                    (a - b).abs() <= 0.35,
                    "{dtype} pattern {pattern}: {a} vs {b}"
                );
            }
        }
    }
}

/// Offsets of the f16 scale fields per block (randomized bytes would otherwise make
/// NaN/Inf scales), and for Q8_K the f32 scale.
fn scale_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q8_1 => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_blocks(dtype: DType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut bytes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next_u64() as u8).collect();
    for b in 0..n_blocks {
        for &off in scale_fields(dtype) {
            let v = blocks::f16_bytes(rng.f32() * 0.01);
            bytes[b * bb + off..b * bb + off + 2].copy_from_slice(&v);
        }
        if dtype == DType::Q8_K {
            bytes[b * bb..b * bb + 4].copy_from_slice(&(rng.f32() * 0.01).to_le_bytes());
        }
    }
    bytes
}

fn h(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Plain reference: value `e` of one block.
fn ref_value(dtype: DType, b: &[u8], e: usize) -> f32 {
    let nib = |qs: &[u8], e: usize| -> u8 {
        if e < 16 {
            qs[e] & 15
        } else {
            qs[e - 16] >> 4
        }
    };
    let bit5 = |qh: &[u8], e: usize| -> u8 { (qh[e / 8] >> (e % 8)) & 1 };
    match dtype {
        DType::Q4_0 => h(b, 0) * (nib(&b[2..], e) as f32 - 8.0),
        DType::Q4_1 => h(b, 0) * nib(&b[4..], e) as f32 + h(b, 2),
        DType::Q5_0 => {
            let q = nib(&b[6..], e) | (bit5(&b[2..6], e) << 4);
            h(b, 0) * (q as f32 - 16.0)
        }
        DType::Q5_1 => {
            let q = nib(&b[8..], e) | (bit5(&b[4..8], e) << 4);
            h(b, 0) * q as f32 + h(b, 2)
        }
        DType::Q8_0 => h(b, 0) * (b[2 + e] as i8) as f32,
        DType::Q8_1 => h(b, 0) * (b[4 + e] as i8) as f32,
        DType::Q8_K => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * (b[4 + e] as i8) as f32,
        DType::Q2_K => {
            let (hh, j, i) = (e / 128, (e % 128) / 32, e % 32);
            let q = (b[16 + 32 * hh + i] >> (2 * j)) & 3;
            let sc = b[e / 16];
            h(b, 80) * (sc & 15) as f32 * q as f32 - h(b, 82) * (sc >> 4) as f32
        }
        DType::Q3_K => {
            let (hh, j, i) = (e / 128, (e % 128) / 32, e % 32);
            let q = ((b[32 + 32 * hh + i] >> (2 * j)) & 3) as i32;
            let high = (b[i] >> (4 * hh + j)) & 1;
            let v = q - if high == 1 { 0 } else { 4 };
            let s = &b[96..108];
            let sub = e / 16;
            let lo = if sub < 8 {
                s[sub] & 15
            } else {
                s[sub - 8] >> 4
            };
            let hi = (s[8 + sub % 4] >> (2 * (sub / 4))) & 3;
            let sc = (lo | (hi << 4)) as i32 - 32;
            h(b, 108) * sc as f32 * v as f32
        }
        DType::Q4_K | DType::Q5_K => {
            let sub = e / 32;
            let s = &b[4..16];
            let (sc, m) = if sub < 4 {
                (s[sub] & 63, s[sub + 4] & 63)
            } else {
                (
                    (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4),
                    (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4),
                )
            };
            let qs = if dtype == DType::Q4_K {
                &b[16..]
            } else {
                &b[48..]
            };
            let mut q = (qs[32 * (e / 64) + e % 32] >> (4 * (sub % 2))) & 15;
            if dtype == DType::Q5_K {
                q |= ((b[16 + e % 32] >> sub) & 1) << 4;
            }
            h(b, 0) * sc as f32 * q as f32 - h(b, 2) * m as f32
        }
        DType::Q6_K => {
            let (hh, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let lo = (b[64 * hh + l + 32 * (k & 1)] >> (4 * (k / 2))) & 15;
            let hi = (b[128 + 32 * hh + l] >> (2 * k)) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            h(b, 208) * (b[192 + e / 16] as i8) as f32 * q as f32
        }
        _ => unreachable!(),
    }
}

#[test]
fn dequant_matches_reference_bit_exact() {
    let mut rng = Rng::new(11);
    for dtype in quant_types() {
        let n_blocks = 6;
        let bytes = random_blocks(dtype, n_blocks, &mut rng);
        let cols = n_blocks * dtype.block_len();
        let m = QMatrix::new(dtype, 1, cols, Storage::from_bytes(&bytes)).unwrap();
        let got = m.to_f32();
        let bl = dtype.block_len();
        for (i, g) in got.iter().enumerate() {
            let blk = &bytes[(i / bl) * dtype.block_bytes()..];
            let want = ref_value(dtype, blk, i % bl);
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{dtype} value {i}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn float_types_dequantize() {
    let vals = [1.5f32, -2.25, 0.0, 1e-3, 65504.0];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let bytes = quantize(dtype, &vals, 1, 5);
        let m = QMatrix::new(dtype, 1, 5, Storage::from_bytes(&bytes)).unwrap();
        let out = m.to_f32();
        for (a, b) in vals.iter().zip(&out) {
            let tol = if dtype == DType::BF16 {
                a.abs() / 128.0
            } else {
                a.abs() / 1000.0
            };
            assert!((a - b).abs() <= tol, "{dtype}: {a} vs {b}");
        }
    }
}

#[test]
fn new_validates_sizes() {
    assert!(QMatrix::new(DType::Q4_0, 2, 32, Storage::from_bytes(&[0; 36])).is_ok());
    // wrong byte count
    assert!(QMatrix::new(DType::Q4_0, 2, 32, Storage::from_bytes(&[0; 35])).is_err());
    // cols not a multiple of the block
    assert!(QMatrix::new(DType::Q4_0, 1, 16, Storage::from_bytes(&[0; 9])).is_err());
    // overflow
    assert!(QMatrix::new(DType::F32, usize::MAX, 4, Storage::from_bytes(&[])).is_err());
}

#[test]
fn f32_storage_gets_aligned() {
    // Build a mapped-like unaligned window by slicing a file map at offset 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.bin");
    let vals = [1.0f32, 2.0, 3.0, 4.0];
    let mut bytes = vec![0u8];
    bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(&path, &bytes).unwrap();
    let map = crate::storage::map_file(&path).unwrap();
    let st = Storage::mapped(map, 1, 16).unwrap();
    let m = QMatrix::new(DType::F32, 2, 2, st).unwrap();
    assert_eq!(m.data.bytes().as_ptr() as usize % 4, 0);
    assert_eq!(m.to_f32(), vals);
}

#[test]
fn from_f32_and_permute_rows() {
    let vals: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let m = QMatrix::from_f32(3, 4, &vals);
    assert_eq!(m.dtype, DType::F32);
    let p = m.permute_rows(&[2, 0, 1]);
    assert_eq!(p.rows, 3);
    let out = p.to_f32();
    assert_eq!(&out[0..4], &vals[8..12]);
    assert_eq!(&out[4..8], &vals[0..4]);
    assert_eq!(&out[8..12], &vals[4..8]);

    let mut rng = Rng::new(3);
    let x = rng.vec(4 * 64, 1.0);
    let q = QMatrix::quantize_from_f32(DType::Q4_1, 4, 64, &x);
    let qp = q.permute_rows(&[3, 1]);
    let (full, part) = (q.to_f32(), qp.to_f32());
    assert_eq!(&part[0..64], &full[192..256]);
    assert_eq!(&part[64..128], &full[64..128]);
    let mut row = vec![0f32; 64];
    qp.dequantize_row(1, &mut row);
    assert_eq!(&row[..], &full[64..128]);
}

#[test]
fn quantize_output_sizes() {
    let x = vec![0.5f32; 2 * 256];
    for dtype in DType::ALL {
        assert_eq!(
            quantize(dtype, &x, 2, 256).len(),
            2 * dtype.bytes_for(256),
            "{dtype}"
        );
    }
}
