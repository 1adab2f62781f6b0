//! AVX-512 VNNI kernels (on 256-bit vectors, AVX-512VL) for the interleaved
//! layout: the same groups, blocks and float arithmetic as `dot_avx2_i8`, with
//! the integer part done by `vpdpbusd`, which multiplies unsigned by signed bytes
//! and adds four products straight into a 32-bit lane.
//!
//! - Q4_0 / Q4_1: one `dpbusd` per weight vector and activation row replaces
//!   `maddubs` + a 16-bit add (and the final `madd` to 32 bits).
//! - Q8_0: the signed weight quants w are made unsigned as w + 128 (one `xor`
//!   per weight vector, shared by every activation row), so each product needs
//!   one `dpbusd` instead of `sign` + `maddubs` + `madd` + add. The offset is
//!   taken back out per block as 128·Σa, Σa from the activations' 16-value sums
//!   (`bsums`): Σ(w + 128)·a − 128·Σa = Σw·a exactly (|Σ| < 2²⁰, no overflow).
//!
//! The 32-bit sums are the exact integer dot products, the same as the AVX2 and
//! portable kernels', and the float steps are identical, so the results are
//! bitwise equal to `interleave::dot_portable` (checked by
//! `simd_group_kernels_match_portable_bitwise`). Zen 4 and Ice Lake or newer
//! have it; elsewhere `interleave::kernel` falls back to the AVX2 kernels.
//! `PDSERVE_NO_AVX512=1` turns it off (to compare the two).
//!
//! Safety: as in `dot_avx2_i8` (bounds by `checked_blocks`, CPU features by
//! [`kernel`]), plus the Q8_0 entry point's check of the `bsums` length.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::act::ActRow;
use super::dot_avx2_i8::{avx512_entry_points, bcast4, by_rows, checked_blocks, each_block};
use super::interleave::GroupFn;
use super::DType;

/// True if this CPU has AVX-512 VNNI on 256-bit vectors besides AVX2, FMA and
/// F16C, and `PDSERVE_NO_AVX512` is not set (cached).
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| {
        super::dot_avx2::available()
            && std::env::var_os("PDSERVE_NO_AVX512").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

avx512_entry_points!(available);

/// Independent accumulators per activation row: `dpbusd` has a latency of
/// several cycles, so a single running sum per row would stall on itself.
const CHAINS: usize = 4;

/// The sum of a row's accumulators (integer: any order gives the same value).
#[inline(always)]
unsafe fn sum_chains(s: &[__m256i; CHAINS]) -> __m256i {
    // SAFETY: plain register arithmetic; the caller has AVX2.
    unsafe { _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3])) }
}

/// Q4_0 (`HAS_M` false: offset −8·d) and Q4_1 (`HAS_M`: f16 `m` per row).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn q4<const N: usize, const HAS_M: bool>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let (bb, fields) = if HAS_M { (20, 2) } else { (18, 1) };
    let mask = _mm256_set1_epi8(0x0f);
    let qp: [*const i8; N] = std::array::from_fn(|i| acts[i].qs.as_ptr());
    let dp: [*const f32; N] = std::array::from_fn(|i| acts[i].ds.as_ptr());
    // SAFETY: the caller's bounds (`checked_blocks`) are `each_block`'s; block b of
    // every activation row is in bounds too.
    unsafe {
        each_block::<N>(groups, nb, ng, bb, out, |p, b, dw, acc| {
            let mw = if HAS_M {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i))
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
            };
            let qs = p.add(16 * fields);
            let mut s32 = [[_mm256_setzero_si256(); CHAINS]; N];
            for t in 0..4 {
                let v = _mm256_loadu_si256(qs.add(32 * t) as *const __m256i);
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                let c = 2 * t % CHAINS;
                for i in 0..N {
                    let a = qp[i].add(32 * b + 4 * t);
                    s32[i][c] = _mm256_dpbusd_epi32(s32[i][c], lo, bcast4(a));
                    s32[i][c + 1] = _mm256_dpbusd_epi32(s32[i][c + 1], hi, bcast4(a.add(16)));
                }
            }
            for i in 0..N {
                let f = _mm256_cvtepi32_ps(sum_chains(&s32[i]));
                let da = _mm256_broadcast_ss(&*dp[i].add(2 * b));
                let s = _mm256_broadcast_ss(&*dp[i].add(2 * b + 1));
                acc[i] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, da), acc[i]);
                acc[i] = _mm256_fmadd_ps(mw, s, acc[i]);
            }
        })
    }
}

/// Q8_0 with the +128 offset (see the module header).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn q8<const N: usize>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let flip = _mm256_set1_epi8(i8::MIN);
    let qp: [*const i8; N] = std::array::from_fn(|i| acts[i].qs.as_ptr());
    let dp: [*const f32; N] = std::array::from_fn(|i| acts[i].ds.as_ptr());
    let sp: [*const i16; N] = std::array::from_fn(|i| acts[i].bsums.as_ptr());
    // SAFETY: as in `q4`; bsums has 2·nb entries per row (checked by `q8_0`).
    unsafe {
        each_block::<N>(groups, nb, ng, 34, out, |p, b, dw, acc| {
            let qs = p.add(16);
            let mut s32 = [[_mm256_setzero_si256(); CHAINS]; N];
            for j in 0..8 {
                let v = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
                let u = _mm256_xor_si256(v, flip);
                for i in 0..N {
                    let a = bcast4(qp[i].add(32 * b + 4 * j));
                    s32[i][j % CHAINS] = _mm256_dpbusd_epi32(s32[i][j % CHAINS], u, a);
                }
            }
            for i in 0..N {
                let sum_a = i32::from(*sp[i].add(2 * b)) + i32::from(*sp[i].add(2 * b + 1));
                let dot = sum_chains(&s32[i]);
                let exact = _mm256_sub_epi32(dot, _mm256_set1_epi32(128 * sum_a));
                let f = _mm256_cvtepi32_ps(exact);
                let da = _mm256_broadcast_ss(&*dp[i].add(2 * b));
                acc[i] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, da), acc[i]);
            }
        })
    }
}
