//! AMX kernels (Intel Sapphire Rapids and newer) for the interleaved layout:
//! up to sixteen activation rows against two groups (sixteen weight rows) per
//! tile product, for batched decode and prefill.
//!
//! Per 32-value block the tile unit computes the exact integer sums of every
//! (activation row, weight row) pair at once: tile A holds the activation rows'
//! quants (rows × 32 signed bytes, read in place from [`QActs`]), tile B a
//! group's weight quants in the "four bytes per column" order the interleaved
//! layout already has (8 rows × 8 columns × 4 bytes), tile C the 32-bit sums.
//! Q8_0 weights are read in place and multiplied signed × signed (`tdpbssd`);
//! Q4_0 / Q4_1 nibbles are unpacked to bytes in a 256-byte staging tile first
//! (low nibbles = values 0..16, high nibbles = 16..32) and multiplied signed ×
//! unsigned (`tdpbsud`). The two groups' C tiles are stored side by side, so
//! that one 512-bit row holds one activation row's sums for sixteen weight rows,
//! and the float steps are then those of `interleave::dot_portable`, sixteen
//! lanes at a time: `acc = fma(isum, dw·da, acc)`, then `acc = fma(mw, s, acc)`
//! for the types with an offset. Same integers, same float operations in the
//! same order: bitwise equal to the portable kernel (tested), so a row's result
//! does not depend on whether it was computed here or by the VNNI kernel.
//!
//! Measured (BENCHMARKS.md, Xeon with AMX, one thread, 1536×576 at 16 rows):
//! Q4_1 1.3× and Q8_0 1.8× the VNNI kernel; at 8 rows even, at 4 rows 2×
//! slower — the per-block store of the sums and the vector scaling, not the
//! tile products, bound it, so `matmul` uses it for chunks of 12+ rows only.
//!
//! The tile unit must be enabled per process on Linux (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once and falls back when the
//! kernel refuses. `PDSERVE_NO_AMX=1` turns these kernels off (to compare).
//!
//! Safety: every entry point checks the byte, scale and output lengths before
//! its `unsafe` block, and [`available`] the CPU features and the permission;
//! tile loads read `rows × 32` or `rows × 64` bytes from addresses inside the
//! checked slices.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use super::act::QActs;
use super::dot_avx2_i8::prefetch_block;
use super::interleave::{TileKernel, GROUP};
use super::DType;

/// Most activation rows per tile product (the tile unit's row count).
const MAX_ROWS: usize = super::interleave::TILE_ROWS_MAX;

/// True if this CPU has AMX-INT8 and AVX-512 (F, VL, BW, VNNI), the OS let this
/// process use the tile registers, and neither `PDSERVE_NO_AMX` nor
/// `PDSERVE_NO_AVX512` is set (cached).
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| {
        super::dot_vnni_i8::available()
            && std::env::var_os("PDSERVE_NO_AMX").is_none()
            && is_x86_feature_detected!("avx512bw")
            && cpu_has_amx_int8()
            && request_tile_permission()
    })
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (EDX bit 25). (The std
/// feature-detection names for AMX are not stable yet.)
fn cpu_has_amx_int8() -> bool {
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512, which `available`
    // checked first.
    #[allow(unused_unsafe)]
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

/// Asks Linux for the tile data state (XFEATURE_XTILEDATA) for this process.
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this arch_prctl request only extends the set of register state the
    // kernel saves for this process; it touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

/// The AMX tile kernel for `dtype`, when this CPU (and OS) has AMX.
pub fn kernel(dtype: DType) -> Option<TileKernel> {
    if !available() {
        return None;
    }
    Some(match dtype {
        DType::Q4_0 => |g, nb, a, r, o| entry(DType::Q4_0, g, nb, a, r, o),
        DType::Q4_1 => |g, nb, a, r, o| entry(DType::Q4_1, g, nb, a, r, o),
        DType::Q8_0 => |g, nb, a, r, o| entry(DType::Q8_0, g, nb, a, r, o),
        _ => return None,
    })
}

/// Bytes per block per row, and where the quants start inside a group's block
/// (after its eight rows' f16 scale fields).
fn block_shape(dtype: DType) -> (usize, usize) {
    (dtype.block_bytes(), 16 * super::interleave::shape(dtype).0)
}

/// Checks the lengths, then runs the const-size kernel for `rows.len()`.
fn entry(
    dtype: DType,
    groups: &[u8],
    nb: usize,
    acts: &QActs,
    rows: Range<usize>,
    out: &mut [[f32; GROUP]],
) {
    assert!(available());
    let n = rows.len();
    let (bb, _) = block_shape(dtype);
    let group_bytes = GROUP * bb * nb;
    let ng = groups.len().checked_div(group_bytes).unwrap_or(0);
    if n == 0 || ng == 0 {
        return;
    }
    assert!(n <= MAX_ROWS && out.len() >= ng * n);
    assert!(acts.block == 32 && acts.cols == 32 * nb);
    assert!(rows.end * acts.cols <= acts.qs.len() && 2 * rows.end * nb <= acts.ds.len());
    macro_rules! sized {
        ($($n:literal)*) => {
            match n {
                // SAFETY: lengths checked above; `available` checked the CPU
                // features and the tile permission.
                $($n => unsafe { tiles::<$n>(dtype, groups, nb, ng, acts, rows.start, out) },)*
                _ => unreachable!(),
            }
        };
    }
    sized!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

/// The palette-1 tile configuration (64 bytes, as `ldtilecfg` reads it).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Two sets of tiles, for even and for odd blocks (see [`tiles`]): tmm0 / tmm4
/// activations (n × 32 bytes), tmm1 / tmm5 a group pair's weights (8 × 64
/// bytes), tmm3 / tmm7 the pair's sums (n × 16 × i32).
fn config(n: usize) -> TileConfig {
    let mut c = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for (t, rows, bytes) in [
        (0, n, 32),
        (1, 8, 64),
        (3, n, 64),
        (4, n, 32),
        (5, 8, 64),
        (7, n, 64),
    ] {
        c.colsb[t] = bytes;
        c.rows[t] = rows as u8;
    }
    c
}

/// 64-byte aligned scratch: a group pair's sums (`[N][16]` i32), double-buffered
/// by block parity, and a ring of its weight tiles (8 rows of 64 bytes: the
/// first group's 4-byte columns, then the second's).
#[repr(C, align(64))]
struct Scratch {
    sums: [[i32; MAX_ROWS * 16]; 2],
    weights: [[u8; 512]; RING],
}

/// Weight tiles in flight: block b + AHEAD is laid out while block b's product
/// is issued, so that a tile load never follows the stores that wrote its bytes
/// closely.
const RING: usize = 4;
const AHEAD: usize = 2;

/// Blocks ahead whose weights are prefetched (~8 × 40 ns ahead, more than a
/// memory access).
const PREFETCH: usize = 8;

/// Groups `0..ng` of `groups` against activation rows `row0..row0 + N`.
///
/// Three-stage pipeline over the blocks of a group pair: iteration b issues
/// the tile product of block b (into the tiles of b's parity), stores block
/// b − 1's sums (issued an iteration earlier, so the store does not wait on
/// the product just queued), lays out block b + AHEAD's weight tile, and scales
/// and adds block b − 2's sums — so the vector work overlaps the tile unit.
///
/// # Safety
/// The CPU has AMX-INT8, AVX-512F/VL/BW and F16C, tile permission was granted,
/// and the lengths were checked by [`entry`].
#[target_feature(enable = "avx512f,avx512vl,avx512bw,f16c,fma")]
unsafe fn tiles<const N: usize>(
    dtype: DType,
    groups: &[u8],
    nb: usize,
    ng: usize,
    acts: &QActs,
    row0: usize,
    out: &mut [[f32; GROUP]],
) {
    let (bb, quants_at) = block_shape(dtype);
    let group_bytes = GROUP * bb * nb;
    let cfg = config(N);
    let mut scratch = Scratch {
        sums: [[0; MAX_ROWS * 16]; 2],
        weights: [[0; 512]; RING],
    };
    let a_stride = acts.cols;
    // SAFETY: a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &cfg, options(nostack, readonly)) };
    let mut g = 0;
    while g < ng {
        let pair = (g + 1 < ng) as usize + 1;
        let blk =
            |k: usize, b: usize| &groups[(g + k) * group_bytes + b * GROUP * bb..][..GROUP * bb];
        // A single group's second half of the weight tile stays zero.
        let quants = |b: usize| {
            let q = |k: usize| &blk(k, b)[quants_at..];
            (q(0), (pair == 2).then(|| q(1)))
        };
        let mut acc = [_mm512_setzero_ps(); N];
        if pair == 1 {
            scratch.weights = [[0; 512]; RING];
        }
        for b in 0..AHEAD.min(nb) {
            weight_tile(dtype, quants(b), &mut scratch.weights[b % RING]);
        }
        for b in 0..nb + 2 {
            if b < nb {
                let a_ptr = acts.qs[(row0 * a_stride + 32 * b)..].as_ptr();
                let w = scratch.weights[b % RING].as_ptr();
                // SAFETY: rows row0..row0+N of 32 bytes at stride `cols` lie in
                // `acts.qs` (checked in `entry`); the weight tile is 8 × 64
                // bytes of `scratch`.
                unsafe { issue(dtype == DType::Q8_0, b % 2, a_ptr, a_stride, w) };
            }
            if (1..=nb).contains(&b) {
                let sums = scratch.sums[(b - 1) % 2].as_mut_ptr() as *mut u8;
                // SAFETY: the C tile stores N × 64 bytes into `sums`.
                unsafe { store((b - 1) % 2, sums) };
            }
            // The weights come from memory (the model is larger than L2): ask
            // for block b + PREFETCH of both groups now (the second group's
            // reach runs on into the next pair's first group).
            for k in 0..pair {
                let at = (g + k) * group_bytes + (b + PREFETCH) * GROUP * bb;
                prefetch_block(groups.as_ptr().wrapping_add(at), bb);
            }
            if b + AHEAD < nb {
                weight_tile(
                    dtype,
                    quants(b + AHEAD),
                    &mut scratch.weights[(b + AHEAD) % RING],
                );
            }
            if b >= 2 {
                let b = b - 2;
                scale_add(
                    dtype,
                    pair,
                    &blk(0, b)[..32],
                    &blk(pair - 1, b)[..32],
                    &scratch.sums[b % 2],
                    &acts.ds[2 * (row0 * nb + b)..],
                    nb,
                    &mut acc,
                );
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *acc);
            out[g * N + q].copy_from_slice(&lanes[..GROUP]);
            if pair == 2 {
                out[(g + 1) * N + q].copy_from_slice(&lanes[GROUP..]);
            }
        }
        g += pair;
    }
    // SAFETY: releases the tile state set up above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Issues one block's tile product for a group pair into the tiles of parity
/// `par` (its sums stay in the C tile until [`store`]).
///
/// # Safety
/// Tiles configured by [`config`]; `a` points at N rows of 32 bytes `a_stride`
/// apart, `w` at 512 bytes.
#[inline(always)]
unsafe fn issue(q8: bool, par: usize, a: *const i8, a_stride: usize, w: *const u8) {
    macro_rules! block {
        ($op:literal, $a:literal, $b:literal, $c:literal) => {
            asm!(
                concat!("tileloadd ", $a, ", [{a} + {sa}*1]"),
                concat!("tileloadd ", $b, ", [{w} + {s64}*1]"),
                concat!("tilezero ", $c),
                concat!($op, " ", $c, ", ", $a, ", ", $b),
                a = in(reg) a, sa = in(reg) a_stride, w = in(reg) w,
                s64 = in(reg) 64usize, options(nostack, readonly))
        };
    }
    // SAFETY: per this function's contract.
    unsafe {
        match (q8, par) {
            (true, 0) => block!("tdpbssd", "tmm0", "tmm1", "tmm3"),
            (true, _) => block!("tdpbssd", "tmm4", "tmm5", "tmm7"),
            (false, 0) => block!("tdpbsud", "tmm0", "tmm1", "tmm3"),
            (false, _) => block!("tdpbsud", "tmm4", "tmm5", "tmm7"),
        }
    }
}

/// Stores the C tile of parity `par` to `sums` (`[N][16]` i32: the first group
/// in columns 0..8).
///
/// # Safety
/// Tiles configured by [`config`]; `sums` points at N × 64 writable bytes.
#[inline(always)]
unsafe fn store(par: usize, sums: *mut u8) {
    // SAFETY: per this function's contract.
    unsafe {
        if par == 0 {
            asm!("tilestored [{0} + {1}*1], tmm3", in(reg) sums, in(reg) 64usize, options(nostack));
        } else {
            asm!("tilestored [{0} + {1}*1], tmm7", in(reg) sums, in(reg) 64usize, options(nostack));
        }
    }
}

/// A group pair's block quants as one weight tile: row r holds the first
/// group's four-byte columns of k = 4r..4r+4, then the second group's (zero
/// when there is none). Q8_0 chunks are copied; Q4 chunk t (low nibbles
/// values 4t.., high nibbles 16 + 4t..) becomes rows t and 4 + t.
#[target_feature(enable = "avx512f,avx512bw")]
fn weight_tile(dtype: DType, (q0, q1): (&[u8], Option<&[u8]>), tile: &mut [u8; 512]) {
    let chunk =
        |q: &[u8], c: usize| -> [u8; 32] { q[32 * c..32 * c + 32].try_into().expect("32 bytes") };
    let row = |c: usize| {
        let lo = chunk(q0, c);
        let hi = q1.map_or([0; 32], |q| chunk(q, c));
        // SAFETY: 32-byte loads from 32-byte arrays.
        unsafe {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(lo.as_ptr() as *const __m256i)),
                _mm256_loadu_si256(hi.as_ptr() as *const __m256i),
            )
        }
    };
    let mut store = |r: usize, v: __m512i| {
        let dst: &mut [u8; 64] = (&mut tile[64 * r..64 * r + 64])
            .try_into()
            .expect("64 bytes");
        // SAFETY: a 64-byte store into a 64-byte array.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v) };
    };
    if dtype == DType::Q8_0 {
        for r in 0..8 {
            store(r, row(r));
        }
        return;
    }
    let mask = _mm512_set1_epi8(0x0f);
    for t in 0..4 {
        let v = row(t);
        store(t, _mm512_and_si512(v, mask));
        store(4 + t, _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask));
    }
}

/// The float steps of one block for sixteen weight rows (`blk0`/`blk1`: the
/// first 32 bytes of the two groups' blocks, their f16 scale fields) and N
/// activation rows (`ds`: row q's `[d, s]` at `2·q·nb`): `acc = fma(isum,
/// dw·da, acc)`, then `acc = fma(mw, s, acc)` for Q4.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,f16c,fma")]
#[inline]
fn scale_add<const N: usize>(
    dtype: DType,
    pair: usize,
    blk0: &[u8],
    blk1: &[u8],
    sums: &[i32; MAX_ROWS * 16],
    ds: &[f32],
    nb: usize,
    acc: &mut [__m512; N],
) {
    let field = |f: usize| {
        let f16s =
            |blk: &[u8]| -> [u8; 16] { blk[16 * f..16 * f + 16].try_into().expect("16 bytes") };
        // A single group's second half is zero: those lanes are never written out.
        let hi = if pair == 2 { f16s(blk1) } else { [0; 16] };
        // SAFETY: 16-byte loads from 16-byte arrays.
        let (lo, hi) = unsafe {
            (
                _mm_loadu_si128(f16s(blk0).as_ptr() as *const __m128i),
                _mm_loadu_si128(hi.as_ptr() as *const __m128i),
            )
        };
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
    };
    let dw = field(0);
    let mw = match dtype {
        DType::Q4_0 => Some(_mm512_mul_ps(dw, _mm512_set1_ps(-8.0))),
        DType::Q4_1 => Some(field(1)),
        _ => None,
    };
    for (q, acc) in acc.iter_mut().enumerate() {
        let row: &[i32; 16] = sums[16 * q..16 * q + 16].try_into().expect("16 sums");
        // SAFETY: a 64-byte load from a 64-byte array.
        let isum = unsafe { _mm512_loadu_si512(row.as_ptr() as *const _) };
        let da = _mm512_set1_ps(ds[2 * q * nb]);
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, da), *acc);
        if let Some(mw) = mw {
            *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(ds[2 * q * nb + 1]), *acc);
        }
    }
}
