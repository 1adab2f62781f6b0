//! AVX2 integer kernels for the K-quants (Q4_K, Q5_K, Q6_K) against 8-bit
//! activations in 256-blocks (with 16-value sums `bsums`).
//!
//! Each super-block is decoded once into eight 32-byte vectors of unsigned quants
//! `q[k]` (values 32k..32k+32, activation order), eight i16 scale vectors `sc[k]`
//! (the sub-block scale of each value pair), a float `d`, and a correction: 16 i16
//! weights `cw` with a float `cs` so that the block's dot is
//! `d·da·Σ_k Σ sc·q·a + cs·da·Σ_g cw_g·bsum_g`.
//! - Q4_K/Q5_K: sc = 6-bit scale of sub-block k; cw_g = min of sub-block g/2,
//!   cs = −dmin.
//! - Q6_K: q = 6-bit value (the −32 offset moves into the correction); sc = the
//!   16-value group scales (two per vector); cw_g = sc_g, cs = −32·d.
//!
//! Safety: entry points assert that every slice holds the blocks read; they are
//! only handed out by `dot_avx2::int_kernel` after CPU feature detection.

use std::arch::x86_64::*;

use super::act::{ActRow, ActTile4};
use super::blocks::scale_min_k4;
use super::dot_avx2::hsum;

struct Decoded {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    cw: __m256i,
    d: f32,
    cs: f32,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes at `p`.
    let h = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Q4_K (`high` = None) and Q5_K (`high` = the qh bytes) share this decoder.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_k4(blk: &[u8], qs: *const u8, high: Option<*const u8>) -> Decoded {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut sc = [_mm256_setzero_si256(); 8];
    let mut mins = [0i16; 16];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &blk[4..16]);
        sc[j] = _mm256_set1_epi16(s as i16);
        mins[2 * j] = m as i16;
        mins[2 * j + 1] = m as i16;
    }
    let mut q = [_mm256_setzero_si256(); 8];
    // SAFETY: the caller guarantees 128 bytes at `qs` and 32 at `high`.
    unsafe {
        let qh = high.map(|p| load(p));
        for c in 0..4 {
            let v = load(qs.add(32 * c));
            let mut lo = _mm256_and_si256(v, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            if let Some(qh) = qh {
                // Bit 2c of qh[l] is bit 4 of value 64c+l, bit 2c+1 of value 64c+32+l.
                let one = _mm256_set1_epi8(1);
                let sh = _mm_cvtsi32_si128(2 * c as i32);
                let b0 = _mm256_and_si256(_mm256_srl_epi16(qh, sh), one);
                let sh1 = _mm_cvtsi32_si128(2 * c as i32 + 1);
                let b1 = _mm256_and_si256(_mm256_srl_epi16(qh, sh1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(b0));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(b1));
            }
            q[2 * c] = lo;
            q[2 * c + 1] = hi;
        }
        Decoded {
            q,
            sc,
            cw: _mm256_loadu_si256(mins.as_ptr() as *const __m256i),
            d: f16(blk.as_ptr()),
            cs: -f16(blk.as_ptr().add(2)),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q4_k(blk: &[u8]) -> Decoded {
    assert!(blk.len() >= 144);
    // SAFETY: 144-byte block: qs at 16..144.
    unsafe { decode_k4(blk, blk.as_ptr().add(16), None) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q5_k(blk: &[u8]) -> Decoded {
    assert!(blk.len() >= 176);
    // SAFETY: 176-byte block: qh at 16..48, qs at 48..176.
    unsafe { decode_k4(blk, blk.as_ptr().add(48), Some(blk.as_ptr().add(16))) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q6_k(blk: &[u8]) -> Decoded {
    assert!(blk.len() >= 210);
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let scales: [i16; 16] = std::array::from_fn(|g| blk[192 + g] as i8 as i16);
    let sc = std::array::from_fn(|k| {
        _mm256_set_m128i(
            _mm_set1_epi16(scales[2 * k + 1]),
            _mm_set1_epi16(scales[2 * k]),
        )
    });
    let mut q = [_mm256_setzero_si256(); 8];
    // SAFETY: ql at 0..128, qh at 128..192, d at 208 (block length asserted).
    unsafe {
        let p = blk.as_ptr();
        for h in 0..2 {
            let ql0 = load(p.add(64 * h));
            let ql1 = load(p.add(64 * h + 32));
            let qh = load(p.add(128 + 32 * h));
            let hb = |s: i32| -> __m256i {
                let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
                _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2))
            };
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hb(0));
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), hb(2));
            q[4 * h + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), hb(4));
            q[4 * h + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), hb(6));
        }
        let d = f16(p.add(208));
        Decoded {
            q,
            sc,
            cw: _mm256_loadu_si256(scales.as_ptr() as *const __m256i),
            d,
            cs: -32.0 * d,
        }
    }
}

/// Adds one decoded super-block times activation block `b` of `a` into `acc`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate(dec: &Decoded, a: &ActRow<'_>, b: usize, acc: __m256) -> __m256 {
    let mut isum = _mm256_setzero_si256();
    // SAFETY: the caller asserted 256·(b+1) ≤ qs.len() and 16·(b+1) ≤ bsums.len().
    unsafe {
        let aq = a.qs.as_ptr().add(256 * b) as *const u8;
        for k in 0..8 {
            let p = _mm256_maddubs_epi16(dec.q[k], load(aq.add(32 * k)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, dec.sc[k]));
        }
        let bs = _mm256_loadu_si256(a.bsums.as_ptr().add(16 * b) as *const __m256i);
        let corr = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, dec.cw));
        let da = *a.ds.get_unchecked(2 * b);
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(dec.d * da), acc);
        _mm256_fmadd_ps(corr, _mm256_set1_ps(dec.cs * da), acc)
    }
}

fn check(w: &[u8], a: &ActRow<'_>, bytes: usize) -> usize {
    assert!(super::dot_avx2::available());
    let nb = a.nb();
    assert!(w.len() >= nb * bytes && a.qs.len() >= 256 * nb && a.bsums.len() >= 16 * nb);
    nb
}

macro_rules! kernels {
    ($dot1:ident, $dot4:ident, $impl1:ident, $impl4:ident, $bytes:expr, $decode:ident) => {
        pub fn $dot1(w: &[u8], a: &ActRow<'_>) -> f32 {
            let nb = check(w, a, $bytes);
            // SAFETY: bounds checked; CPU features checked before this kernel was
            // handed out.
            unsafe { $impl1(w, a, nb) }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $impl1(w: &[u8], a: &ActRow<'_>, nb: usize) -> f32 {
            let mut acc = _mm256_setzero_ps();
            for b in 0..nb {
                // SAFETY: bounds checked by the caller.
                unsafe {
                    let dec = $decode(&w[b * $bytes..(b + 1) * $bytes]);
                    acc = accumulate(&dec, a, b, acc);
                }
            }
            hsum(acc)
        }

        pub fn $dot4(w: &[u8], rb: usize, a: &ActTile4<'_>, out: &mut [f32]) {
            let a = &a.rows;
            for (row, out) in out.chunks_exact_mut(4).enumerate() {
                let w = &w[row * rb..(row + 1) * rb];
                let nb = a[0].nb();
                for r in a {
                    assert_eq!(check(w, r, $bytes), nb);
                }
                // SAFETY: as above.
                unsafe { $impl4(w, a, nb, out) }
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $impl4(w: &[u8], a: &[ActRow<'_>; 4], nb: usize, out: &mut [f32]) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..nb {
                // SAFETY: bounds checked by the caller.
                unsafe {
                    let dec = $decode(&w[b * $bytes..(b + 1) * $bytes]);
                    for r in 0..4 {
                        acc[r] = accumulate(&dec, &a[r], b, acc[r]);
                    }
                }
            }
            for r in 0..4 {
                out[r] = hsum(acc[r]);
            }
        }
    };
}

kernels!(dot1_q4_k, dot4_q4_k, q4_k_1, q4_k_4, 144, decode_q4_k);
kernels!(dot1_q5_k, dot4_q5_k, q5_k_1, q5_k_4, 176, decode_q5_k);
kernels!(dot1_q6_k, dot4_q6_k, q6_k_1, q6_k_4, 210, decode_q6_k);
