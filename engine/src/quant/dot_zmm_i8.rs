//! AVX-512 VNNI kernels on full 512-bit vectors for the interleaved layout: two
//! neighbouring eight-row groups side by side in one `zmm` register, so that
//! every instruction of `dot_vnni_i8` covers sixteen weight rows instead of
//! eight.
//!
//! Why: on a core with a full 512-bit datapath (AMD Zen 5) a `zmm` `vpdpbusd`
//! costs the same issue slot as a `ymm` one, and a batch-16 decode step is bound
//! by those slots, not by memory. Lane r of a result is row r of group g for
//! r < 8 and row r − 8 of group g + 1, which are rows 8g..8g + 16 of the matrix:
//! one contiguous 16-float store per activation row.
//!
//! Per weight vector: the two groups' 32-byte chunks are loaded and joined
//! (`vinserti64x4`), decoded once (Q4 nibbles; Q8_0 +128 offset) and multiplied
//! with four activation bytes broadcast to all sixteen lanes, per activation row.
//! The integer sums and the float steps per (row, activation row) are exactly
//! `dot_vnni_i8`'s, so the results are bitwise equal to `interleave::dot_portable`
//! (checked by `simd_group_kernels_match_portable_bitwise`). An odd last group
//! goes to the 256-bit kernel.
//!
//! Selected before the 256-bit kernels where the CPU has AVX-512 F, BW, VL and
//! VNNI; `PDSERVE_NO_ZMM=1` turns it off (to compare), `PDSERVE_NO_AVX512=1`
//! turns off every AVX-512 kernel. On cores that split 512-bit operations in two
//! (Zen 4) it runs the same number of micro-operations as the 256-bit kernel.
//!
//! Safety: as in `dot_vnni_i8` (bounds by `checked_blocks`, CPU features by
//! [`kernel`]).

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::act::ActRow;
use super::dot_avx2_i8::{avx512_entry_points, by_rows, checked_blocks, prefetch_block};
use super::interleave::{GroupFn, GROUP};
use super::DType;

/// True if the 512-bit kernels may run here (cached): the 256-bit VNNI kernels
/// are available (their check includes `PDSERVE_NO_AVX512`), the CPU has
/// AVX-512 BW and DQ, and `PDSERVE_NO_ZMM` is not set. The CPU backend's decode
/// attention asks the same question (`quant::zmm_available`).
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| {
        super::dot_vnni_i8::available()
            && std::env::var_os("PDSERVE_NO_ZMM").is_none()
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
    })
}

avx512_entry_points!(available);

/// Independent accumulators per activation row (`vpdpbusd` latency).
const CHAINS: usize = 4;

/// Pairs of groups between the one being computed and the one being prefetched
/// (the 256-bit kernels' distance, counted in blocks of one group).
const PREFETCH_BLOCKS: usize = 16;

/// The sum of a row's accumulators (integer: any order gives the same value).
#[inline(always)]
unsafe fn sum_chains(s: &[__m512i; CHAINS]) -> __m512i {
    // SAFETY: register arithmetic; the caller has AVX-512F.
    s[1..]
        .iter()
        .fold(s[0], |a, &b| unsafe { _mm512_add_epi32(a, b) })
}

/// The 32 bytes at `p0` (low half) and at `p1` (high half) in one register.
///
/// # Safety
/// 32 readable bytes at each pointer; AVX-512F.
#[inline(always)]
unsafe fn join(p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let lo = _mm256_loadu_si256(p0 as *const __m256i);
        let hi = _mm256_loadu_si256(p1 as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// The eight f16 values at `p0` and the eight at `p1`, widened: one f32 per row
/// of the two groups.
///
/// # Safety
/// 16 readable bytes at each pointer; AVX-512F.
#[inline(always)]
unsafe fn join_f16(p0: *const u8, p1: *const u8) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        let lo = _mm_loadu_si128(p0 as *const __m128i);
        let hi = _mm_loadu_si128(p1 as *const __m128i);
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
    }
}

/// Four activation bytes at `p`, broadcast to all sixteen 32-bit lanes.
///
/// # Safety
/// 4 readable bytes at `p`; AVX-512F.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    // SAFETY: the caller's contract.
    _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// The loop both kernels share, over pairs of groups: for each pair, `block(p0,
/// p1, b, dw, acc)` for its blocks b in order (`p0`, `p1` block b of the two
/// groups, `dw` their sixteen rows' f16 scales, `acc` the pair's accumulators,
/// one per activation row), then accumulator i stored at `out[i][16q..16q + 16]`.
/// An odd last group is handed to `tail` (the 256-bit kernel) with its own
/// slices of `groups` and `out`.
///
/// # Safety
/// As `dot_avx2_i8::each_block`: `groups` holds `ng` groups of `nb` blocks of
/// `block_bytes` (times 8) bytes and `out` N rows of at least `8 · ng` floats;
/// AVX-512 F, BW, VL.
#[inline(always)]
unsafe fn each_pair<const N: usize>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    block_bytes: usize,
    out: &mut [&mut [f32]],
    mut block: impl FnMut(*const u8, *const u8, usize, __m512, &mut [__m512; N]),
    tail: impl FnOnce(&[u8], &mut [&mut [f32]]),
) {
    let group_bytes = nb * GROUP * block_bytes;
    let step = GROUP * block_bytes;
    for q in 0..ng / 2 {
        let mut acc = [_mm512_setzero_ps(); N];
        // SAFETY: groups 2q and 2q + 1 are in bounds (the caller's contract);
        // prefetches never fault; block b's first 16 bytes are the eight rows'
        // f16 `d`.
        unsafe {
            let g0 = groups.as_ptr().add(2 * q * group_bytes);
            let g1 = g0.add(group_bytes);
            for b in 0..nb {
                let (p0, p1) = (g0.add(b * step), g1.add(b * step));
                let ahead = PREFETCH_BLOCKS * step;
                prefetch_block(p0.wrapping_add(ahead), block_bytes);
                prefetch_block(p1.wrapping_add(ahead), block_bytes);
                block(p0, p1, b, join_f16(p0, p1), &mut acc);
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                _mm512_storeu_ps(o.as_mut_ptr().add(2 * q * GROUP), *a);
            }
        }
    }
    if ng % 2 == 1 {
        let first = (ng - 1) * GROUP;
        let mut rows: [&mut [f32]; N] = {
            let mut it = out.iter_mut();
            std::array::from_fn(|_| it.next().map_or(&mut [][..], |o| &mut o[first..]))
        };
        tail(&groups[(ng - 1) * group_bytes..], &mut rows);
    }
}

/// Q4_0 (`HAS_M` false: offset −8·d) and Q4_1 (`HAS_M`: f16 `m` per row).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4<const N: usize, const HAS_M: bool>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let (bb, fields) = if HAS_M { (20, 2) } else { (18, 1) };
    let mask = _mm512_set1_epi8(0x0f);
    let qp: [*const i8; N] = std::array::from_fn(|i| acts[i].qs.as_ptr());
    let dp: [*const f32; N] = std::array::from_fn(|i| acts[i].ds.as_ptr());
    let block = |p0: *const u8, p1: *const u8, b: usize, dw: __m512, acc: &mut [__m512; N]| {
        // SAFETY: block b of both groups and of every activation row is in
        // bounds (`checked_blocks`, `each_pair`).
        unsafe {
            let mw = if HAS_M {
                join_f16(p0.add(16), p1.add(16))
            } else {
                _mm512_mul_ps(dw, _mm512_set1_ps(-8.0))
            };
            let (q0, q1) = (p0.add(16 * fields), p1.add(16 * fields));
            let mut s32 = [[_mm512_setzero_si512(); CHAINS]; N];
            for t in 0..4 {
                let v = join(q0.add(32 * t), q1.add(32 * t));
                let lo = _mm512_and_si512(v, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                let c = 2 * t % CHAINS;
                for i in 0..N {
                    let a = qp[i].add(32 * b + 4 * t);
                    s32[i][c] = _mm512_dpbusd_epi32(s32[i][c], lo, bcast4(a));
                    s32[i][c + 1] = _mm512_dpbusd_epi32(s32[i][c + 1], hi, bcast4(a.add(16)));
                }
            }
            for i in 0..N {
                let f = _mm512_cvtepi32_ps(sum_chains(&s32[i]));
                let da = _mm512_set1_ps(*dp[i].add(2 * b));
                let s = _mm512_set1_ps(*dp[i].add(2 * b + 1));
                acc[i] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, da), acc[i]);
                acc[i] = _mm512_fmadd_ps(mw, s, acc[i]);
            }
        }
    };
    let tail = |g: &[u8], o: &mut [&mut [f32]]| {
        // SAFETY: one whole group and its output rows (sliced by `each_pair`);
        // this CPU has the 256-bit kernel's features (a subset of ours).
        unsafe { super::dot_vnni_i8::q4::<N, HAS_M>(g, nb, 1, acts, o) }
    };
    // SAFETY: the caller's bounds (`checked_blocks`) are `each_pair`'s.
    unsafe { each_pair::<N>(groups, nb, ng, bb, out, block, tail) }
}

/// Q8_0 with the +128 offset (see `dot_vnni_i8`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8<const N: usize>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let flip = _mm512_set1_epi8(i8::MIN);
    let qp: [*const i8; N] = std::array::from_fn(|i| acts[i].qs.as_ptr());
    let dp: [*const f32; N] = std::array::from_fn(|i| acts[i].ds.as_ptr());
    let sp: [*const i16; N] = std::array::from_fn(|i| acts[i].bsums.as_ptr());
    let block = |p0: *const u8, p1: *const u8, b: usize, dw: __m512, acc: &mut [__m512; N]| {
        // SAFETY: as in `q4`; bsums has 2·nb entries per row (checked by `q8_0`).
        unsafe {
            let (q0, q1) = (p0.add(16), p1.add(16));
            let mut s32 = [[_mm512_setzero_si512(); CHAINS]; N];
            for j in 0..8 {
                let u = _mm512_xor_si512(join(q0.add(32 * j), q1.add(32 * j)), flip);
                for i in 0..N {
                    let a = bcast4(qp[i].add(32 * b + 4 * j));
                    s32[i][j % CHAINS] = _mm512_dpbusd_epi32(s32[i][j % CHAINS], u, a);
                }
            }
            for i in 0..N {
                let sum_a = i32::from(*sp[i].add(2 * b)) + i32::from(*sp[i].add(2 * b + 1));
                let dot = sum_chains(&s32[i]);
                let exact = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * sum_a));
                let f = _mm512_cvtepi32_ps(exact);
                let da = _mm512_set1_ps(*dp[i].add(2 * b));
                acc[i] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, da), acc[i]);
            }
        }
    };
    let tail = |g: &[u8], o: &mut [&mut [f32]]| {
        // SAFETY: as in `q4`; the bsums check covers the tail's rows too.
        unsafe { super::dot_vnni_i8::q8::<N>(g, nb, 1, acts, o) }
    };
    // SAFETY: the caller's bounds (`checked_blocks`) are `each_pair`'s.
    unsafe { each_pair::<N>(groups, nb, ng, 34, out, block, tail) }
}
