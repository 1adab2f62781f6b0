//! AVX2 + FMA + F16C kernels (x86-64), selected at run time when the CPU has all
//! three. Every `unsafe` here is either a call into a `#[target_feature]` function
//! (sound because [`available`] was checked) or an unaligned SIMD load/store whose
//! bounds are established by slice lengths checked right before it.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::act::QActsMut;
use super::blocks::{bf16_at, f16_at};
use super::matmul::{Dot8Fn, IntKernel};
use super::DType;

/// True if this CPU has AVX2, FMA and F16C (cached).
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| {
        std::env::var_os("PDSERVE_NO_SIMD").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// The AVX2 integer kernel for `dtype`, if the CPU supports it and one exists.
pub fn int_kernel(dtype: DType) -> Option<IntKernel> {
    if !available() {
        return None;
    }
    use super::blocks::{QK, QK_K};
    use super::dot_avx2_k as k;
    use super::dot_avx2_q32 as q;
    type Fns = (
        usize,
        super::dot::DotFn,
        super::matmul::Dot4Fn,
        Option<Dot8Fn>,
    );
    let (block, dot1, dot4, dot8): Fns = match dtype {
        DType::Q4_0 => (QK, q::dot1_q4_0, q::dot4_q4_0, Some(q::dot8_q4_0)),
        DType::Q4_1 => (QK, q::dot1_q4_1, q::dot4_q4_1, Some(q::dot8_q4_1)),
        DType::Q5_0 => (QK, q::dot1_q5_0, q::dot4_q5_0, Some(q::dot8_q5_0)),
        DType::Q5_1 => (QK, q::dot1_q5_1, q::dot4_q5_1, Some(q::dot8_q5_1)),
        DType::Q8_0 => (QK, q::dot1_q8_0, q::dot4_q8_0, Some(q::dot8_q8_0)),
        DType::Q4_K => (QK_K, k::dot1_q4_k, k::dot4_q4_k, None),
        DType::Q5_K => (QK_K, k::dot1_q5_k, k::dot4_q5_k, None),
        DType::Q6_K => (QK_K, k::dot1_q6_k, k::dot4_q6_k, None),
        _ => return None,
    };
    Some(IntKernel {
        block,
        dot1,
        dot4,
        dot8,
    })
}

/// Horizontal sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Quantizes activations (see `act`); output identical to the scalar quantizer.
pub fn quantize_acts(x: &[f32], a: &mut QActsMut<'_>) {
    assert!(available());
    // SAFETY: the CPU features were checked just above.
    unsafe { quantize_acts_impl(x, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_acts_impl(x: &[f32], a: &mut QActsMut<'_>) {
    let block = a.block;
    let sign = _mm256_set1_ps(-0.0);
    for (b, xs) in x.chunks_exact(block).enumerate() {
        let mut vmax = _mm256_setzero_ps();
        for c in xs.chunks_exact(8) {
            // SAFETY: `c` has exactly 8 f32 values.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
        }
        let lo = _mm256_castps256_ps128(vmax);
        let m4 = _mm_max_ps(lo, _mm256_extractf128_ps::<1>(vmax));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let vid = _mm256_set1_ps(id);
        let qs = &mut a.qs[b * block..(b + 1) * block];
        let mut vsum = _mm256_setzero_si256();
        for (g, (c, q)) in xs.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
            // SAFETY: `c` has exactly 32 f32 values, `q` exactly 32 bytes.
            unsafe {
                macro_rules! r {
                    ($k:expr) => {
                        _mm256_cvtps_epi32(_mm256_round_ps::<
                            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                        >(_mm256_mul_ps(
                            _mm256_loadu_ps(c.as_ptr().add(8 * $k)),
                            vid,
                        )))
                    };
                }
                let (i0, i1, i2, i3) = (r!(0), r!(1), r!(2), r!(3));
                vsum = _mm256_add_epi32(
                    vsum,
                    _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)),
                );
                // Per-16 sums: lanes of i0,i1 are values 0..16, i2,i3 are 16..32.
                let s01 = hsum_i32(_mm256_add_epi32(i0, i1));
                let s23 = hsum_i32(_mm256_add_epi32(i2, i3));
                let bi = (b * block + 32 * g) / 16;
                a.bsums[bi] = s01 as i16;
                a.bsums[bi + 1] = s23 as i16;
                // Pack to i8 in order: packs interleave 128-bit lanes, fix with a
                // permute.
                let p16a = _mm256_packs_epi32(i0, i1);
                let p16b = _mm256_packs_epi32(i2, i3);
                let p8 = _mm256_packs_epi16(p16a, p16b);
                let fixed =
                    _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, fixed);
            }
        }
        a.ds[2 * b] = d;
        a.ds[2 * b + 1] = d * hsum_i32(vsum) as f32;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

// The three float dots below perform, per (weight row, activation row), exactly the
// same float operations, so that a row's result is the same whichever of them
// computes it (batch invariance): values 16k..16k+8 are FMA-accumulated into
// `acc0`, 16k+8..16k+16 into `acc1`; a final full group of 8 goes into `acc0`;
// then `hsum(acc0 + acc1)`, then the scalar tail (mul, then add) in order.

/// Weight values `j..j + 8` of a float row (`esize` bytes per value) as f32.
///
/// # Safety
/// `w` must hold `j + 8` values and the CPU must have AVX2 + F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_w8(dtype: DType, w: &[u8], j: usize) -> __m256 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let wp = w.as_ptr().add(j * dtype.block_bytes());
        match dtype {
            DType::F32 => _mm256_loadu_ps(wp as *const f32),
            DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(wp as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(wp as *const __m128i),
            ))),
        }
    }
}

/// Weight value `j` of a float row.
#[inline(always)]
fn w_at(dtype: DType, w: &[u8], j: usize) -> f32 {
    match dtype {
        DType::F32 => super::blocks::f32_at(w, 4 * j),
        DType::F16 => f16_at(w, 2 * j),
        _ => bf16_at(w, 2 * j),
    }
}

/// The canonical row dot (see above) of `n` values; `w8(j)` loads weights j..j+8,
/// `w1(j)` weight j.
///
/// # Safety
/// `x` must hold `n` values, `w8` be safe to call for every `j + 8 ≤ n`, and the
/// CPU must have AVX2 + FMA.
#[inline(always)]
unsafe fn row_dot(
    n: usize,
    x: &[f32],
    w8: impl Fn(usize) -> __m256,
    w1: impl Fn(usize) -> f32,
) -> f32 {
    // SAFETY: every load below reads x[j..j + 8] with j + 8 ≤ n ≤ x.len().
    unsafe {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(w8(i), _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
            acc1 = _mm256_fmadd_ps(w8(i + 8), _mm256_loadu_ps(x.as_ptr().add(i + 8)), acc1);
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(w8(i), _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        for (j, &xv) in x.iter().enumerate().take(n).skip(i) {
            s += w1(j) * xv;
        }
        s
    }
}

/// `Σ a[i]·b[i]` with FMA.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert!(available());
    // SAFETY: CPU features checked above.
    unsafe { dot_f32_impl(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f32_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: CPU features checked by the caller; loads stay below n ≤ a.len().
    unsafe {
        row_dot(
            n,
            b,
            |j| _mm256_loadu_ps(a.as_ptr().add(j)),
            |j| *a.get_unchecked(j),
        )
    }
}

/// Dot of an F32/F16/BF16 weight row (bytes) with f32 `x`.
pub fn dot_float_row(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    assert!(available());
    assert!(matches!(dtype, DType::F32 | DType::F16 | DType::BF16));
    // SAFETY: CPU features checked above.
    unsafe { dot_float_row_impl(dtype, w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float_row_impl(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / dtype.block_bytes());
    // SAFETY: CPU features checked by the caller; `w` holds n values.
    unsafe { row_dot(n, x, |j| load_w8(dtype, w, j), |j| w_at(dtype, w, j)) }
}

/// Four dots sharing one f32 weight row: `[Σ w·x₀, Σ w·x₁, Σ w·x₂, Σ w·x₃]`.
pub fn dot_f32_x4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    assert!(available());
    let n = w.len();
    assert!(x.iter().all(|x| x.len() == n));
    // SAFETY: CPU features checked; all five slices have length n.
    unsafe { dot_f32_x4_impl(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f32_x4_impl(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    let n = w.len();
    let mut acc0 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n and every slice has n elements (checked by the caller).
        unsafe {
            let w0 = _mm256_loadu_ps(w.as_ptr().add(i));
            let w1 = _mm256_loadu_ps(w.as_ptr().add(i + 8));
            for r in 0..4 {
                let xp = x[r].as_ptr();
                acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), acc0[r]);
                acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), acc1[r]);
            }
        }
        i += 16;
    }
    if i + 8 <= n {
        // SAFETY: i + 8 ≤ n and every slice has n elements (checked by the caller).
        unsafe {
            let w0 = _mm256_loadu_ps(w.as_ptr().add(i));
            for r in 0..4 {
                acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[r].as_ptr().add(i)), acc0[r]);
            }
        }
        i += 8;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = hsum(_mm256_add_ps(acc0[r], acc1[r]));
        for j in i..n {
            out[r] += w[j] * x[r][j];
        }
    }
    out
}

/// F16 / BF16 bytes → f32 (`out.len()` values).
pub fn dequant_half(dtype: DType, w: &[u8], out: &mut [f32]) {
    assert!(available());
    assert!(w.len() >= 2 * out.len());
    // SAFETY: CPU features checked; `w` holds 2 bytes per output value.
    unsafe { dequant_half_impl(dtype, w, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_half_impl(dtype: DType, w: &[u8], out: &mut [f32]) {
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n: 16 bytes of `w` and 8 floats of `out` are in bounds.
        unsafe {
            let h = _mm_loadu_si128(w.as_ptr().add(2 * i) as *const __m128i);
            let v = if dtype == DType::F16 {
                _mm256_cvtph_ps(h)
            } else {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            };
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for (j, o) in out.iter_mut().enumerate().skip(i) {
        *o = if dtype == DType::F16 {
            f16_at(w, 2 * j)
        } else {
            bf16_at(w, 2 * j)
        };
    }
}
