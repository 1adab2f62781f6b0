//! Dequantization: one row of stored bytes → f32 values, for every [`DType`].
//! Invariant: `bytes.len() == dtype.bytes_for(out.len())` (checked by callers;
//! slicing panics otherwise, which would be a programming error).

use super::blocks::*;
use super::DType;

/// Dequantizes `out.len()` values of `dtype` from `bytes`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), dtype.bytes_for(out.len()));
    let bb = dtype.block_bytes();
    let bl = dtype.block_len();
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        DType::F16 | DType::BF16 if super::dot_avx2::available() => {
            super::dot_avx2::dequant_half(dtype, bytes, out)
        }
        DType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_at(bytes, 2 * i);
            }
        }
        DType::BF16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = bf16_at(bytes, 2 * i);
            }
        }
        _ => {
            let f: fn(&[u8], &mut [f32]) = match dtype {
                DType::Q4_0 => block_q4_0,
                DType::Q4_1 => block_q4_1,
                DType::Q5_0 => block_q5_0,
                DType::Q5_1 => block_q5_1,
                DType::Q8_0 => block_q8_0,
                DType::Q8_1 => block_q8_1,
                DType::Q2_K => block_q2_k,
                DType::Q3_K => block_q3_k,
                DType::Q4_K => block_q4_k,
                DType::Q5_K => block_q5_k,
                DType::Q6_K => block_q6_k,
                DType::Q8_K => block_q8_k,
                DType::F32 | DType::F16 | DType::BF16 => unreachable!(),
            };
            for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
                f(b, o);
            }
        }
    }
}

fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        o[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        o[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        o[j] = d * (qs[j] & 0x0f) as f32 + m;
        o[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

fn block_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32_at(b, 2);
    let qs = &b[6..22];
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
        let hi = (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn block_q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32_at(b, 4);
    let qs = &b[8..24];
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
        let hi = (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = d * (q as i8) as f32;
    }
}

fn block_q8_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[4..36]) {
        *x = d * (q as i8) as f32;
    }
}

fn block_q2_k(b: &[u8], o: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for sub in 0..2 {
                let sc = scales[8 * half + 2 * j + sub];
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                let base = 128 * half + 32 * j + 16 * sub;
                for l in 0..16 {
                    let v = (q[16 * sub + l] >> shift) & 3;
                    o[base + l] = dl * v as f32 - ml;
                }
            }
        }
    }
}

fn block_q3_k(b: &[u8], o: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let sc = q3k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let m = 1u8 << (4 * half + j);
            for sub in 0..2 {
                let dl = d * sc[8 * half + 2 * j + sub] as f32;
                let base = 128 * half + 32 * j + 16 * sub;
                for l in 0..16 {
                    let i = 16 * sub + l;
                    let v = ((q[i] >> shift) & 3) as i32 - if hmask[i] & m != 0 { 0 } else { 4 };
                    o[base + l] = dl * v as f32;
                }
            }
        }
    }
}

fn block_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (s0, m0) = scale_min_k4(2 * c, scales);
        let (s1, m1) = scale_min_k4(2 * c + 1, scales);
        let (d0, mm0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, mm1) = (d * s1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            o[64 * c + l] = d0 * (q[l] & 0x0f) as f32 - mm0;
            o[64 * c + 32 + l] = d1 * (q[l] >> 4) as f32 - mm1;
        }
    }
}

fn block_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (s0, m0) = scale_min_k4(2 * c, scales);
        let (s1, m1) = scale_min_k4(2 * c + 1, scales);
        let (d0, mm0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, mm1) = (d * s1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (u0, u1) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let lo = (q[l] & 0x0f) + if qh[l] & u0 != 0 { 16 } else { 0 };
            let hi = (q[l] >> 4) + if qh[l] & u1 != 0 { 16 } else { 0 };
            o[64 * c + l] = d0 * lo as f32 - mm0;
            o[64 * c + 32 + l] = d1 * hi as f32 - mm1;
        }
    }
}

fn block_q6_k(b: &[u8], o: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql[64 * half..64 * half + 64];
        let qh = &qh[32 * half..32 * half + 32];
        let sc = &sc[8 * half..8 * half + 8];
        let out = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

fn block_q8_k(b: &[u8], o: &mut [f32]) {
    let d = f32_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[4..260]) {
        *x = d * (q as i8) as f32;
    }
}
