//! Reference quantizers: one row of f32 values → GGML block bytes, for every
//! [`DType`]. Round-to-nearest with the stored (f16-rounded) scales; the K-quants use
//! a small per-sub-block scale search with a least-squares refinement. Not tuned for
//! speed: used by tests, fixtures and the GGUF writer.

use super::blocks::*;
use super::DType;

/// Appends the quantized bytes of `row` (len a multiple of the block length).
pub fn quantize_row(dtype: DType, row: &[f32], out: &mut Vec<u8>) {
    match dtype {
        DType::F32 => row.iter().for_each(|v| out.extend(v.to_le_bytes())),
        DType::F16 => row.iter().for_each(|v| out.extend(f16_bytes(*v))),
        DType::BF16 => row
            .iter()
            .for_each(|v| out.extend(half::bf16::from_f32(*v).to_bits().to_le_bytes())),
        _ => {
            let f: fn(&[f32], &mut Vec<u8>) = match dtype {
                DType::Q4_0 => q4_0,
                DType::Q4_1 => q4_1,
                DType::Q5_0 => q5_0,
                DType::Q5_1 => q5_1,
                DType::Q8_0 => q8_0,
                DType::Q8_1 => q8_1,
                DType::Q2_K => q2_k,
                DType::Q3_K => q3_k,
                DType::Q4_K => q4_k,
                DType::Q5_K => q5_k,
                DType::Q6_K => q6_k,
                DType::Q8_K => q8_k,
                DType::F32 | DType::F16 | DType::BF16 => unreachable!(),
            };
            for block in row.chunks_exact(dtype.block_len()) {
                f(block, out);
            }
        }
    }
}

#[inline]
fn nearest(v: f32) -> i32 {
    v.round() as i32
}

fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The element with the largest magnitude, sign kept.
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m })
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Symmetric blocks: `x ≈ d·(q − offset)`, q in `0..=2·offset−1`, with the
/// largest-magnitude element mapped to `−offset` (GGML convention).
fn sym_block(x: &[f32], offset: i32, out: &mut Vec<u8>) -> (f32, Vec<u8>) {
    let d = via_f16(signed_absmax(x) / -(offset as f32));
    out.extend(f16_bytes(d));
    let id = inv(d);
    let q = x
        .iter()
        .map(|&v| (nearest(v * id) + offset).clamp(0, 2 * offset - 1) as u8)
        .collect();
    (d, q)
}

/// Asymmetric blocks: `x ≈ d·q + m`, q in `0..=nmax`.
fn asym_block(x: &[f32], nmax: i32, out: &mut Vec<u8>) -> Vec<u8> {
    let (lo, hi) = min_max(x);
    let d = via_f16((hi - lo) / nmax as f32);
    let m = via_f16(lo);
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(m));
    let id = inv(d);
    x.iter()
        .map(|&v| nearest((v - m) * id).clamp(0, nmax) as u8)
        .collect()
}

fn pack_nibbles(q: &[u8], out: &mut Vec<u8>) {
    for j in 0..16 {
        out.push((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
    }
}

fn high_bits(q: &[u8]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v as u32 >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (_, q) = sym_block(x, 8, out);
    pack_nibbles(&q, out);
}

fn q4_1(x: &[f32], out: &mut Vec<u8>) {
    let q = asym_block(x, 15, out);
    pack_nibbles(&q, out);
}

fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let (_, q) = sym_block(x, 16, out);
    out.extend(high_bits(&q));
    pack_nibbles(&q, out);
}

fn q5_1(x: &[f32], out: &mut Vec<u8>) {
    let q = asym_block(x, 31, out);
    out.extend(high_bits(&q));
    pack_nibbles(&q, out);
}

fn q8_quants(x: &[f32]) -> (f32, Vec<i8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = via_f16(amax / 127.0);
    let id = inv(d);
    let q = x
        .iter()
        .map(|&v| nearest(v * id).clamp(-127, 127) as i8)
        .collect();
    (d, q)
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = q8_quants(x);
    out.extend(f16_bytes(d));
    out.extend(q.iter().map(|&v| v as u8));
}

fn q8_1(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = q8_quants(x);
    let sum: i32 = q.iter().map(|&v| v as i32).sum();
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(d * sum as f32));
    out.extend(q.iter().map(|&v| v as u8));
}

fn q8_k(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    let q: Vec<i8> = x
        .iter()
        .map(|&v| nearest(v * id).clamp(-127, 127) as i8)
        .collect();
    out.extend(d.to_le_bytes());
    out.extend(q.iter().map(|&v| v as u8));
    for g in q.chunks_exact(16) {
        let s: i32 = g.iter().map(|&v| v as i32).sum();
        out.extend((s as i16).to_le_bytes());
    }
}

/// Best `(scale, m)` with `x ≈ scale·l − m`, `l` in `0..=nmax`, `m ≥ 0` (GGML's
/// K-quant "min" is subtracted): a few candidate scales, each refined by least
/// squares on its own rounding.
fn fit_scale_min(x: &[f32], nmax: i32) -> (f32, f32) {
    let (lo, hi) = min_max(x);
    let lo = lo.min(0.0);
    if hi <= lo {
        return (0.0, -lo);
    }
    let mut best = (f32::INFINITY, (hi - lo) / nmax as f32, -lo);
    for step in -6..=6 {
        let iscale = (nmax as f32 + 0.1 * step as f32) / (hi - lo);
        let l: Vec<f32> = x
            .iter()
            .map(|&v| nearest((v - lo) * iscale).clamp(0, nmax) as f32)
            .collect();
        // Least squares for x ≈ s·l + b (b = −m ≤ 0).
        let n = x.len() as f32;
        let (sl, sl2, sx, sxl) = l
            .iter()
            .zip(x)
            .fold((0f32, 0f32, 0f32, 0f32), |a, (&l, &v)| {
                (a.0 + l, a.1 + l * l, a.2 + v, a.3 + v * l)
            });
        let det = n * sl2 - sl * sl;
        let (mut s, mut b) = if det > 0.0 {
            ((n * sxl - sl * sx) / det, (sl2 * sx - sl * sxl) / det)
        } else {
            (1.0 / iscale, lo)
        };
        if b > 0.0 {
            b = 0.0;
            s = if sl2 > 0.0 { sxl / sl2 } else { 0.0 };
        }
        let err: f32 = l
            .iter()
            .zip(x)
            .map(|(&l, &v)| (s * l + b - v).powi(2))
            .sum();
        if err < best.0 && s >= 0.0 {
            best = (err, s, -b);
        }
    }
    (best.1, best.2)
}

/// Best signed scale with `x ≈ s·l`, `l` in `−nneg..=nneg−1`.
fn fit_scale_sym(x: &[f32], nneg: i32) -> f32 {
    let max = signed_absmax(x);
    if max == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, max / -(nneg as f32));
    for step in -6..=6 {
        let iscale = -(nneg as f32 + 0.1 * step as f32) / max;
        let l: Vec<f32> = x
            .iter()
            .map(|&v| nearest(v * iscale).clamp(-nneg, nneg - 1) as f32)
            .collect();
        let (sl2, sxl) = l
            .iter()
            .zip(x)
            .fold((0f32, 0f32), |a, (&l, &v)| (a.0 + l * l, a.1 + v * l));
        if sl2 == 0.0 {
            continue;
        }
        let s = sxl / sl2;
        let err: f32 = l.iter().zip(x).map(|(&l, &v)| (s * l - v).powi(2)).sum();
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// Shared part of Q2_K / Q4_K / Q5_K: sub-blocks of `sub` values with unsigned
/// `nmax` quants, scales and mins quantized to `sbits`. Returns the super-block
/// scales `(d, dmin)`, the per-sub-block quantized `(scale, min)` and the quants.
fn k_asym(x: &[f32], sub: usize, nmax: i32, smax: f32) -> (f32, f32, Vec<(u8, u8)>, Vec<u8>) {
    let fits: Vec<(f32, f32)> = x
        .chunks_exact(sub)
        .map(|c| fit_scale_min(c, nmax))
        .collect();
    let max_s = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let max_m = fits.iter().fold(0f32, |m, f| m.max(f.1));
    let d = via_f16(max_s / smax);
    let dmin = via_f16(max_m / smax);
    let (id, idmin) = (inv(d), inv(dmin));
    let mut sm = Vec::with_capacity(fits.len());
    let mut q = Vec::with_capacity(x.len());
    for (c, &(s, m)) in x.chunks_exact(sub).zip(&fits) {
        let ls = nearest(s * id).clamp(0, smax as i32) as u8;
        let lm = nearest(m * idmin).clamp(0, smax as i32) as u8;
        sm.push((ls, lm));
        let (ds, dm) = (d * ls as f32, dmin * lm as f32);
        let ids = inv(ds);
        q.extend(
            c.iter()
                .map(|&v| nearest((v + dm) * ids).clamp(0, nmax) as u8),
        );
    }
    (d, dmin, sm, q)
}

/// Shared part of Q3_K / Q6_K: sub-blocks of 16 with signed quants in
/// `−nneg..nneg`, signed sub-block scales in `−smax..smax`. Returns `d`, the signed
/// sub-block scales and the quants offset by `+nneg`.
fn k_sym(x: &[f32], nneg: i32, smax: i32) -> (f32, Vec<i32>, Vec<u8>) {
    let fits: Vec<f32> = x.chunks_exact(16).map(|c| fit_scale_sym(c, nneg)).collect();
    let max = signed_absmax(&fits);
    let (d, iscale) = if max != 0.0 {
        let iscale = -(smax as f32) / max;
        (via_f16(1.0 / iscale), iscale)
    } else {
        (0.0, 0.0)
    };
    let mut scales = Vec::with_capacity(16);
    let mut q = Vec::with_capacity(x.len());
    for (c, &s) in x.chunks_exact(16).zip(&fits) {
        let ls = nearest(s * iscale).clamp(-smax, smax - 1);
        scales.push(ls);
        let ids = inv(d * ls as f32);
        q.extend(
            c.iter()
                .map(|&v| (nearest(v * ids).clamp(-nneg, nneg - 1) + nneg) as u8),
        );
    }
    (d, scales, q)
}

/// 2-bit packing shared by Q2_K and Q3_K: value `128h + 32j + i` goes to bits
/// `2j..2j+2` of byte `32h + i`.
fn pack_2bit(q: &[u8], out: &mut Vec<u8>) {
    for h in 0..2 {
        for i in 0..32 {
            let b = 128 * h + i;
            out.push(
                (q[b] & 3)
                    | ((q[b + 32] & 3) << 2)
                    | ((q[b + 64] & 3) << 4)
                    | ((q[b + 96] & 3) << 6),
            );
        }
    }
}

fn q2_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, sm, q) = k_asym(x, 16, 3, 15.0);
    out.extend(sm.iter().map(|&(s, m)| s | (m << 4)));
    pack_2bit(&q, out);
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(dmin));
}

fn q3_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, scales, mut q) = k_sym(x, 4, 32);
    let mut hmask = [0u8; 32];
    for (e, v) in q.iter_mut().enumerate() {
        if *v > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *v -= 4;
        }
    }
    out.extend(hmask);
    pack_2bit(&q, out);
    let mut ls = [0u8; 16];
    for (l, &s) in ls.iter_mut().zip(&scales) {
        *l = (s + 32) as u8;
    }
    out.extend(pack_q3k_scales(&ls));
    out.extend(f16_bytes(d));
}

fn k4_header(d: f32, dmin: f32, sm: &[(u8, u8)], out: &mut Vec<u8>) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for (j, &(s, m)) in sm.iter().enumerate() {
        sc[j] = s;
        mn[j] = m;
    }
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(dmin));
    out.extend(pack_scale_min_k4(&sc, &mn));
}

fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, sm, q) = k_asym(x, 32, 15, 63.0);
    k4_header(d, dmin, &sm, out);
    for c in 0..4 {
        for l in 0..32 {
            out.push(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
        }
    }
}

fn q5_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, sm, q) = k_asym(x, 32, 31, 63.0);
    k4_header(d, dmin, &sm, out);
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            qh[l] |= ((q[64 * c + l] >> 4) & 1) << (2 * c);
            qh[l] |= ((q[64 * c + 32 + l] >> 4) & 1) << (2 * c + 1);
        }
    }
    out.extend(qh);
    for c in 0..4 {
        for l in 0..32 {
            out.push((q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4));
        }
    }
}

fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, scales, q) = k_sym(x, 32, 128);
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        for l in 0..32 {
            let b = 128 * h + l;
            let (q1, q2, q3, q4) = (q[b], q[b + 32], q[b + 64], q[b + 96]);
            ql[64 * h + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
            ql[64 * h + l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
            qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(scales.iter().map(|&s| s as i8 as u8));
    out.extend(f16_bytes(d));
}
