//! AVX2 kernels for the interleaved layout (`interleave`): consecutive groups of
//! eight weight rows against activation rows, four at a time.
//!
//! Per block and activation row: eight `maddubs` of a weight vector (four quants
//! of each of the eight rows) with four activation bytes broadcast to every lane,
//! summed in 16-bit lanes (Q4: |sum| ≤ 8 · 2 · 15 · 127 = 30480, no saturation;
//! Q8_0 products need 32-bit sums, one `madd` each), then one `madd` to 32 bits,
//! one convert and one FMA for all eight rows. Lane r of an accumulator is the
//! dot product of row r, so nothing is reduced horizontally. The float operations
//! per (row, activation row) are exactly those of `interleave::dot_portable`.
//!
//! Q8_0 against four activation rows (the batched lm_head) runs the integer part
//! of each block as inline assembly (`q8_block4`): compiled from intrinsics,
//! LLVM's schedule spilled its accumulators.
//!
//! Safety: the entry points assert that `groups` holds whole groups of `nb`
//! blocks (`nb · 8 · block_bytes` bytes each), that every activation row has `nb`
//! blocks, and that `out` has a row of eight floats per group for each activation
//! row; they are only
//! handed out by [`kernel`] after the CPU features were detected.

use std::arch::x86_64::*;

use super::act::ActRow;
use super::interleave::{GroupFn, GROUP};
use super::DType;

/// The AVX2 group kernel for `dtype`, when this CPU has AVX2 + FMA + F16C.
pub fn kernel(dtype: DType) -> Option<GroupFn> {
    pick(super::dot_avx2::available(), dtype, [q4_0, q4_1, q8_0])
}

/// A group-kernel module's entry point for `dtype` among its Q4_0, Q4_1 and
/// Q8_0 ones, if `available`.
pub(super) fn pick(
    available: bool,
    dtype: DType,
    [q4_0, q4_1, q8_0]: [GroupFn; 3],
) -> Option<GroupFn> {
    match dtype {
        _ if !available => None,
        DType::Q4_0 => Some(q4_0),
        DType::Q4_1 => Some(q4_1),
        DType::Q8_0 => Some(q8_0),
        _ => None,
    }
}

/// Checks the bounds every kernel relies on; returns the number of blocks per
/// row and of groups.
pub(super) fn checked_blocks(
    groups: &[u8],
    block_bytes: usize,
    acts: &[ActRow<'_>],
    out: &[&mut [f32]],
) -> (usize, usize) {
    assert!(super::dot_avx2::available());
    assert!(out.len() == acts.len());
    let nb = acts.first().map_or(0, |a| a.nb());
    for a in acts {
        assert!(a.nb() == nb && a.qs.len() >= 32 * nb && a.ds.len() >= 2 * nb);
    }
    let group_bytes = nb * GROUP * block_bytes;
    let ng = groups.len().checked_div(group_bytes).unwrap_or(0);
    assert!(ng * group_bytes == groups.len() && out.iter().all(|o| o.len() >= ng * GROUP));
    (nb, ng)
}

/// Calls `$f::<N, ..>` for the activation rows four at a time (N = the number
/// in each set, 1..=4): one checked call covers them all. (Shared with
/// `dot_vnni_i8`.)
macro_rules! by_rows {
    ($f:ident $(, $c:expr)*; $g:expr, $nb:expr, $ng:expr, $a:expr, $o:expr) => {
        for (a, o) in $a.chunks(4).zip($o.chunks_mut(4)) {
            // SAFETY: bounds checked by `checked_blocks`, CPU features by `kernel`.
            unsafe {
                match a.len() {
                    1 => $f::<1 $(, $c)*>($g, $nb, $ng, a, o),
                    2 => $f::<2 $(, $c)*>($g, $nb, $ng, a, o),
                    3 => $f::<3 $(, $c)*>($g, $nb, $ng, a, o),
                    _ => $f::<4 $(, $c)*>($g, $nb, $ng, a, o),
                }
            }
        }
    };
}
pub(super) use by_rows;

/// The entry points of an AVX-512 group-kernel module (`dot_vnni_i8`,
/// `dot_zmm_i8`), whose `q4::<N, HAS_M>` and `q8::<N>` differ only in register
/// width: `kernel(dtype)` (None unless `$available()`), and `q4_0`, `q4_1`,
/// `q8_0`, which assert `$available()` and the bounds (`checked_blocks`, plus
/// the `bsums` length Q8_0's +128 offset needs) before the four-row calls.
macro_rules! avx512_entry_points {
    ($available:path) => {
        /// The group kernel for `dtype`, when this CPU has it.
        pub fn kernel(dtype: DType) -> Option<GroupFn> {
            super::dot_avx2_i8::pick($available(), dtype, [q4_0, q4_1, q8_0])
        }

        fn q4_0(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
            assert!($available());
            let (nb, ng) = checked_blocks(groups, 18, acts, out);
            by_rows!(q4, false; groups, nb, ng, acts, out);
        }

        fn q4_1(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
            assert!($available());
            let (nb, ng) = checked_blocks(groups, 20, acts, out);
            by_rows!(q4, true; groups, nb, ng, acts, out);
        }

        fn q8_0(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
            assert!($available());
            let (nb, ng) = checked_blocks(groups, 34, acts, out);
            assert!(acts.iter().all(|a| a.bsums.len() >= 2 * nb));
            by_rows!(q8; groups, nb, ng, acts, out);
        }
    };
}
pub(super) use avx512_entry_points;

fn q4_0(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
    let (nb, ng) = checked_blocks(groups, 18, acts, out);
    by_rows!(q4, false; groups, nb, ng, acts, out);
}

fn q4_1(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
    let (nb, ng) = checked_blocks(groups, 20, acts, out);
    by_rows!(q4, true; groups, nb, ng, acts, out);
}

fn q8_0(groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
    let (nb, ng) = checked_blocks(groups, 34, acts, out);
    by_rows!(q8; groups, nb, ng, acts, out);
}

/// Interleaved blocks between the one being computed and the one being
/// prefetched. A batched matmul reads each weight tile from memory (or L3) only
/// in its first pass over four activation rows; the hardware prefetcher alone
/// left that pass waiting on the weight loads. `quant_bench batch16`, 30
/// alternating rounds in one process: all 211 matmuls of a batch-16 step took
/// 6–10% less time with 12 to 48 blocks ahead than without (16 is the middle);
/// batch 1 was unchanged or slightly faster.
const PREFETCH_BLOCKS: usize = 16;

/// Prefetches the cache lines of the interleaved block (eight rows of
/// `block_bytes`) starting at `p`, which may lie past the end of the matrix
/// (a prefetch never faults, and the pointer is never dereferenced). Shared with
/// the AMX tile kernel.
#[inline(always)]
pub(super) fn prefetch_block(p: *const u8, block_bytes: usize) {
    let mut off = 0;
    while off < GROUP * block_bytes {
        // SAFETY: a prefetch is a hint; it reads nothing the program sees and
        // does not fault on any address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8) };
        off += 64;
    }
}

/// Four activation bytes at `p`, broadcast to every 32-bit lane.
#[inline(always)]
pub(super) unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// The loop every kernel shares: for each of `ng` groups, `block(p, b, dw, acc)`
/// for its blocks b in order (`p` the block's bytes, `dw` its eight rows' f16
/// scales, `acc` the group's accumulators, one per activation row), then
/// accumulator i stored at `out[i][8g..8g + 8]`. Inlined into each kernel (and so
/// compiled with its target features).
///
/// # Safety
/// `groups` holds `ng` groups of `nb` blocks of `block_bytes` (times 8) bytes and
/// `out` N rows of at least `8 · ng` floats (checked by `checked_blocks`); AVX2 +
/// F16C.
#[inline(always)]
pub(super) unsafe fn each_block<const N: usize>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    block_bytes: usize,
    out: &mut [&mut [f32]],
    mut block: impl FnMut(*const u8, usize, __m256, &mut [__m256; N]),
) {
    for g in 0..ng {
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: block b of group g is in bounds (the caller's contract); its
            // first 16 bytes are the eight rows' f16 `d`.
            let (p, dw) = unsafe {
                let p = groups.as_ptr().add((g * nb + b) * GROUP * block_bytes);
                (p, _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)))
            };
            prefetch_block(
                p.wrapping_add(PREFETCH_BLOCKS * GROUP * block_bytes),
                block_bytes,
            );
            block(p, b, dw, &mut acc);
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            // SAFETY: `o` holds at least 8·ng floats (the caller's contract).
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(g * GROUP), *a) };
        }
    }
}

/// Q4_0 (`HAS_M` false: offset −8·d) and Q4_1 (`HAS_M`: f16 `m` per row);
/// `ng` groups of `nb` blocks, `out[g·N + i]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4<const N: usize, const HAS_M: bool>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let (bb, fields) = if HAS_M { (20, 2) } else { (18, 1) };
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
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
            let mut s16 = [_mm256_setzero_si256(); N];
            for t in 0..4 {
                let v = _mm256_loadu_si256(qs.add(32 * t) as *const __m256i);
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                for i in 0..N {
                    let a = qp[i].add(32 * b + 4 * t);
                    let al = _mm256_maddubs_epi16(lo, bcast4(a));
                    let ah = _mm256_maddubs_epi16(hi, bcast4(a.add(16)));
                    s16[i] = _mm256_add_epi16(s16[i], al);
                    s16[i] = _mm256_add_epi16(s16[i], ah);
                }
            }
            for i in 0..N {
                let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[i], ones));
                let da = _mm256_broadcast_ss(&*dp[i].add(2 * b));
                let s = _mm256_broadcast_ss(&*dp[i].add(2 * b + 1));
                acc[i] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, da), acc[i]);
                acc[i] = _mm256_fmadd_ps(mw, s, acc[i]);
            }
        })
    }
}

/// Q8_0: signed quants, so each product pair goes through `sign` + `maddubs`
/// and is widened to 32 bits at once (two pairs could overflow 16 bits).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8<const N: usize>(
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &[ActRow<'_>],
    out: &mut [&mut [f32]],
) {
    let ones = _mm256_set1_epi16(1);
    let qp: [*const i8; N] = std::array::from_fn(|i| acts[i].qs.as_ptr());
    let dp: [*const f32; N] = std::array::from_fn(|i| acts[i].ds.as_ptr());
    // SAFETY: as in `q4`.
    unsafe {
        each_block::<N>(groups, nb, ng, 34, out, |p, b, dw, acc| {
            let qs = p.add(16);
            let mut s32 = [_mm256_setzero_si256(); N];
            if N == 4 {
                // Block b of each of the four activation rows and this block's 256
                // quant bytes are in bounds (`checked_blocks`).
                let s = q8_block4(qs, std::array::from_fn(|i| qp[i % N].add(32 * b)), ones);
                s32.copy_from_slice(&s);
            } else {
                for j in 0..8 {
                    let v = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
                    let u = _mm256_sign_epi8(v, v);
                    for i in 0..N {
                        let a = _mm256_sign_epi8(bcast4(qp[i].add(32 * b + 4 * j)), v);
                        let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones);
                        s32[i] = _mm256_add_epi32(s32[i], pairs);
                    }
                }
            }
            for i in 0..N {
                let f = _mm256_cvtepi32_ps(s32[i]);
                let da = _mm256_broadcast_ss(&*dp[i].add(2 * b));
                acc[i] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, da), acc[i]);
            }
        })
    }
}

/// The integer part of one Q8_0 block against four activation rows, in
/// assembly: per 32-byte weight vector `v` (four quants of each of the eight
/// rows), `|v|` once, then per activation row: broadcast four activation bytes,
/// `sign` them by `v`, `maddubs` with `|v|`, widen the pairs to 32 bits, add.
/// The same instructions on the same values as the intrinsics loop in `q8`.
///
/// Why assembly: compiled from intrinsics, LLVM held all eight weight vectors
/// and their absolute values (16 registers) across the four rows and spilled
/// the rows' accumulators to the stack, a store-and-reload chain per block.
///
/// # Safety
/// `qs` points to 256 readable bytes, each `a[i]` to 32; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block4(qs: *const u8, a: [*const i8; 4], ones: __m256i) -> [__m256i; 4] {
    let (mut s0, mut s1, mut s2, mut s3) = (
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
    );
    // One activation row: broadcast its four bytes, sign them by `v`,
    // `maddubs` with `|v|`, widen the pairs to 32 bits, add to the row's sums.
    macro_rules! row {
        ($j:literal, $a:literal, $s:literal) => {
            concat!(
                "vpbroadcastd {t}, dword ptr [{",
                $a,
                "} + 4*",
                $j,
                "]\n",
                "vpsignb {t}, {t}, {v}\n",
                "vpmaddubsw {t}, {u}, {t}\n",
                "vpmaddwd {t}, {t}, {ones}\n",
                "vpaddd {",
                $s,
                "}, {",
                $s,
                "}, {t}\n",
            )
        };
    }
    // One 32-byte weight vector against the four rows.
    macro_rules! step {
        ($j:literal) => {
            concat!(
                "vmovdqu {v}, ymmword ptr [{qs} + 32*",
                $j,
                "]\n",
                "vpsignb {u}, {v}, {v}\n",
                row!($j, "a0", "s0"),
                row!($j, "a1", "s1"),
                row!($j, "a2", "s2"),
                row!($j, "a3", "s3"),
            )
        };
    }
    // SAFETY: reads 256 bytes at `qs` and 32 at each `a[i]` (the caller's
    // contract); writes only the named registers.
    unsafe {
        std::arch::asm!(
            step!(0), step!(1), step!(2), step!(3),
            step!(4), step!(5), step!(6), step!(7),
            qs = in(reg) qs,
            a0 = in(reg) a[0],
            a1 = in(reg) a[1],
            a2 = in(reg) a[2],
            a3 = in(reg) a[3],
            ones = in(ymm_reg) ones,
            v = out(ymm_reg) _,
            u = out(ymm_reg) _,
            t = out(ymm_reg) _,
            s0 = inout(ymm_reg) s0,
            s1 = inout(ymm_reg) s1,
            s2 = inout(ymm_reg) s2,
            s3 = inout(ymm_reg) s3,
            options(nostack, readonly, preserves_flags),
        );
    }
    [s0, s1, s2, s3]
}
