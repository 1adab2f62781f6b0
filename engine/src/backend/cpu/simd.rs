//! Explicit AVX2+FMA float primitives for the CPU attention kernel, each with a
//! fixed operation order so that every caller gets bitwise the same results: a dot
//! product (one FMA chain over 8-lane chunks, then [`reduce_lanes`]), the same for
//! several query heads against four keys at once (also on 512-bit vectors, two
//! keys per register, with the same per-key chains), and `y += a·x`.
//!
//! The second operand (keys, values) is any [`Load8`] type: f32, or f16 widened
//! exactly by F16C, so that every product and sum is the same f32 arithmetic
//! whichever type the KV cache stores.
//!
//! All are `#[target_feature]` functions: callers must have checked for AVX2,
//! FMA and F16C (attention does, once per call); each asserts the slice lengths
//! it relies on.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::kv::pool::KvElem;

/// A KV element type that loads eight values as f32 lanes (and, for the 512-bit
/// kernels, sixteen).
pub(crate) trait Load8: KvElem {
    /// The eight values at `p`, widened to f32.
    ///
    /// # Safety
    /// Eight elements readable at `p`; the caller has AVX and F16C.
    unsafe fn load8(p: *const Self) -> __m256;

    /// The eight values at `p0` (lanes 0..8) and the eight at `p1` (lanes
    /// 8..16), widened to f32.
    ///
    /// # Safety
    /// Eight elements readable at each pointer; the caller has AVX-512F.
    unsafe fn load8x2(p0: *const Self, p1: *const Self) -> __m512;

    /// The sixteen values at `p`, widened to f32.
    ///
    /// # Safety
    /// Sixteen elements readable at `p`; the caller has AVX-512F.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load8x2(p0: *const f32, p1: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            let lo = _mm512_castps256_ps512(_mm256_loadu_ps(p0));
            _mm512_insertf32x8::<1>(lo, _mm256_loadu_ps(p1))
        }
    }

    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Load8 for half::f16 {
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> __m256 {
        // SAFETY: the caller's contract (eight f16 = 16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    #[inline(always)]
    unsafe fn load8x2(p0: *const half::f16, p1: *const half::f16) -> __m512 {
        // SAFETY: the caller's contract (16 bytes at each pointer).
        unsafe {
            let lo = _mm256_castsi128_si256(_mm_loadu_si128(p0 as *const __m128i));
            let both = _mm256_inserti128_si256::<1>(lo, _mm_loadu_si128(p1 as *const __m128i));
            _mm512_cvtph_ps(both)
        }
    }

    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        // SAFETY: the caller's contract (sixteen f16 = 32 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// Dot product of two equal-length slices whose length is a multiple of 8: one FMA
/// chain over the 8-lane chunks in order, then [`reduce_lanes`]. [`dot4_avx2`]
/// performs exactly these operations for four dots at once.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_avx2<K: Load8>(a: &[f32], b: &[K]) -> f32 {
    assert!(a.len() == b.len() && a.len().is_multiple_of(8));
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = _mm256_setzero_ps();
    for c in 0..a.len() / 8 {
        // SAFETY: chunk c lies within both slices (asserted).
        acc = unsafe {
            _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8 * c)), K::load8(pb.add(8 * c)), acc)
        };
    }
    reduce_lanes(acc)
}

/// `(x₀ + x₂) + (x₁ + x₃)` with `x_j = v_j + v_{j+4}`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn reduce_lanes(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}

/// `[q_g·k₀, q_g·k₁, q_g·k₂, q_g·k₃]` for `G` query vectors (the query heads
/// that share a KV head), each bitwise equal to [`dot_avx2`]: 4·G FMA chains,
/// each key chunk loaded and widened once for all G, and the same reduction done
/// for four dots at once by unpacking.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot4_heads_avx2<K: Load8, const G: usize>(
    q: [&[f32]; G],
    k: [&[K]; 4],
) -> [[f32; 4]; G] {
    let len = k[0].len();
    assert!(len.is_multiple_of(8) && k.iter().all(|k| k.len() == len));
    assert!(q.iter().all(|q| q.len() == len));
    let mut acc = [[_mm256_setzero_ps(); 4]; G];
    // Two keys at a time over all chunks: 2·G accumulators, the G query chunks
    // and one key chunk are live in the loop (10 registers for G = 3). All four
    // keys at once took 17 of the 16 vector registers, and the spilled
    // accumulator's store-and-reload chain paced the loop. Each accumulator's
    // FMA chain (chunks in order) is the same either way.
    for pair in 0..2 {
        let mut acc2 = [[_mm256_setzero_ps(); 2]; G];
        for c in 0..len / 8 {
            // SAFETY: chunk c lies within every slice (asserted).
            unsafe {
                let qc: [__m256; G] =
                    std::array::from_fn(|g| _mm256_loadu_ps(q[g].as_ptr().add(8 * c)));
                for (j, k) in k[2 * pair..2 * pair + 2].iter().enumerate() {
                    let kc = K::load8(k.as_ptr().add(8 * c));
                    for (acc, qc) in acc2.iter_mut().zip(&qc) {
                        acc[j] = _mm256_fmadd_ps(*qc, kc, acc[j]);
                    }
                }
            }
        }
        for (acc, acc2) in acc.iter_mut().zip(&acc2) {
            acc[2 * pair..2 * pair + 2].copy_from_slice(acc2);
        }
    }
    let mut out = [[0f32; 4]; G];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = reduce4(a);
    }
    out
}

/// [`dot4_heads_avx2`] on 512-bit vectors: two keys per register (lanes 0..8
/// key 2p, lanes 8..16 key 2p + 1), the query chunk in both halves, so that
/// every key's eight-lane FMA chain and its reduction are exactly the 256-bit
/// ones (bitwise equal results) with half the instructions.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F and DQ.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq")]
pub(crate) unsafe fn dot4_heads_zmm<K: Load8, const G: usize>(
    q: [&[f32]; G],
    k: [&[K]; 4],
) -> [[f32; 4]; G] {
    let len = k[0].len();
    assert!(len.is_multiple_of(8) && k.iter().all(|k| k.len() == len));
    assert!(q.iter().all(|q| q.len() == len));
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    for c in 0..len / 8 {
        // SAFETY: chunk c lies within every slice (asserted).
        unsafe {
            let qc: [__m512; G] = std::array::from_fn(|g| {
                _mm512_broadcast_f32x8(_mm256_loadu_ps(q[g].as_ptr().add(8 * c)))
            });
            for pair in 0..2 {
                let kc = K::load8x2(
                    k[2 * pair].as_ptr().add(8 * c),
                    k[2 * pair + 1].as_ptr().add(8 * c),
                );
                for (acc, qc) in acc.iter_mut().zip(&qc) {
                    acc[pair] = _mm512_fmadd_ps(*qc, kc, acc[pair]);
                }
            }
        }
    }
    let mut out = [[0f32; 4]; G];
    for (o, [a01, a23]) in out.iter_mut().zip(acc) {
        *o = reduce4([
            _mm512_castps512_ps256(a01),
            _mm512_extractf32x8_ps::<1>(a01),
            _mm512_castps512_ps256(a23),
            _mm512_extractf32x8_ps::<1>(a23),
        ]);
    }
    out
}

/// The four lane sums of `acc`, each as [`reduce_lanes`] computes it.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce4(acc: [__m256; 4]) -> [f32; 4] {
    // [x₀ | x₁] and [x₂ | x₃] with x_k = lo(acc_k) + hi(acc_k).
    let y01 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(acc[0], acc[1]),
        _mm256_permute2f128_ps::<0x31>(acc[0], acc[1]),
    );
    let y23 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(acc[2], acc[3]),
        _mm256_permute2f128_ps::<0x31>(acc[2], acc[3]),
    );
    // Per half: [xa₀+xa₂, xb₀+xb₂, xa₁+xa₃, xb₁+xb₃] (a = 0|1, b = 2|3).
    let p = _mm256_add_ps(_mm256_unpacklo_ps(y01, y23), _mm256_unpackhi_ps(y01, y23));
    // Lane 0 of each pair: (x₀+x₂) + (x₁+x₃), as in `reduce_lanes`.
    let r = _mm256_add_ps(p, _mm256_permute_ps::<0b01_00_11_10>(p));
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) };
    [out[0], out[4], out[1], out[5]]
}

/// `y += a·x` (FMA per lane) for equal lengths that are a multiple of 8.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy_avx2<K: Load8>(a: f32, x: &[K], y: &mut [f32]) {
    assert!(x.len() == y.len() && x.len().is_multiple_of(8));
    let av = _mm256_set1_ps(a);
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    for c in 0..x.len() / 8 {
        // SAFETY: chunk c lies within both slices (asserted).
        unsafe {
            let v = _mm256_fmadd_ps(av, K::load8(px.add(8 * c)), _mm256_loadu_ps(py.add(8 * c)));
            _mm256_storeu_ps(py.add(8 * c), v);
        }
    }
}

/// An f32 vector register the value pass accumulates in: 256-bit (eight lanes)
/// or 512-bit (sixteen). Every lane's arithmetic is the same FMA whichever width
/// holds it, so both give bitwise the same results.
pub(crate) trait FloatVec: Copy {
    /// f32 lanes per register.
    const LANES: usize;

    /// All lanes zero.
    ///
    /// # Safety
    /// The CPU has the register's instruction set (AVX, or AVX-512F).
    unsafe fn zero() -> Self;

    /// `x` in every lane.
    ///
    /// # Safety
    /// As [`FloatVec::zero`].
    unsafe fn splat(x: f32) -> Self;

    /// `a·b + c` per lane, rounded once.
    ///
    /// # Safety
    /// As [`FloatVec::zero`], plus FMA.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;

    /// `LANES` KV elements at `p`, widened to f32.
    ///
    /// # Safety
    /// `LANES` elements readable at `p`; as [`FloatVec::zero`], plus F16C.
    unsafe fn load<K: Load8>(p: *const K) -> Self;

    /// Stores the lanes at `p`.
    ///
    /// # Safety
    /// `LANES` floats writable at `p`; as [`FloatVec::zero`].
    unsafe fn store(self, p: *mut f32);
}

/// `FloatVec` for one register type, from its intrinsics and its `Load8`
/// method (the two impls differ in nothing else).
macro_rules! float_vec {
    ($t:ty, $lanes:expr, $zero:ident, $splat:ident, $fma:ident, $load:ident, $store:ident) => {
        impl FloatVec for $t {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: the caller's contract.
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                // SAFETY: the caller's contract.
                unsafe { $splat(x) }
            }
            #[inline(always)]
            unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                // SAFETY: the caller's contract.
                unsafe { $fma(a, b, c) }
            }
            #[inline(always)]
            unsafe fn load<K: Load8>(p: *const K) -> Self {
                // SAFETY: the caller's contract.
                unsafe { K::$load(p) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                // SAFETY: the caller's contract.
                unsafe { $store(p, self) }
            }
        }
    };
}

float_vec!(
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    load8,
    _mm256_storeu_ps
);
float_vec!(
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    load16,
    _mm512_storeu_ps
);
