//! AVX2 integer kernels for the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) against 8-bit activations in 32-blocks.
//!
//! Every type is decoded per block into 32 bytes `q` in activation order plus a
//! float scale `dw` and "min" `mw`, so that a block contributes
//! `dw·da·Σ q·a + mw·s` (s = da·Σa): Q4_0 → q unsigned, mw = −8·dw; Q4_1 → mw = m;
//! Q5_0 → mw = −16·dw; Q5_1 → mw = m; Q8_0 → q signed, mw = 0. The unsigned×signed
//! byte products use `maddubs` (no saturation: |q·a| ≤ 31·127, pairs ≤ 7874).
//!
//! Safety: public entry points assert that the slices hold every block they read
//! (`w.len() ≥ nb·BYTES`, `qs.len() ≥ 32·nb`, nb from `ds`), and are only handed
//! out by `dot_avx2::int_kernel` after the CPU features were detected.

use std::arch::x86_64::*;

use super::act::{ActRow, ActTile4, ActTile8};

/// 16 packed bytes → 32 nibbles: low nibbles are values 0..16, high 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let x = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)) };
    // Upper 128-bit lane shifted right by 4: one variable shift instead of
    // shift + insert.
    let v = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// The 32 high bits of a Q5 block (u32 at `p`) as bytes 0x10 / 0x00 per value.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    let qh = unsafe { (p as *const i32).read_unaligned() };
    let v = _mm256_set1_epi32(qh);
    // Byte j of the result takes byte j/8 of qh.
    let idx = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, idx);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `[da, s]` of block `b` of an activation row, as the low lanes of an xmm.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act_ds(a: &ActRow<'_>, b: usize) -> __m128 {
    // SAFETY: the caller guarantees block b exists (2·b + 2 ≤ ds.len()).
    unsafe { _mm_castpd_ps(_mm_load_sd(a.ds.as_ptr().add(2 * b) as *const f64)) }
}

/// `((a₀+a₁)+(a₂+a₃)) + ((a₄+a₅)+(a₆+a₇))`: the per-row reduction the four-row
/// kernels get from their `hadd` tree.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce_like_x4(v: __m256) -> f32 {
    let h = _mm256_hadd_ps(v, v);
    let h = _mm256_hadd_ps(h, h);
    let s = _mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    _mm_cvtss_f32(s)
}

/// `[Σa₀, Σa₁, Σa₂, Σa₃]` by the `hadd` tree of the four-row kernel (each sum is
/// `((x₀+x₁)+(x₂+x₃)) + ((x₄+x₅)+(x₆+x₇))`, like `reduce_like_x4`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce4(a0: __m256, a1: __m256, a2: __m256, a3: __m256) -> __m128 {
    let h01 = _mm256_hadd_ps(a0, a1);
    let h23 = _mm256_hadd_ps(a2, a3);
    let h = _mm256_hadd_ps(h01, h23);
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// Generates `$dot1` (one activation row), `$dot4` (four rows) and `$dot8` (eight
/// rows) for one type.
/// `$decode(p) -> (q, dm)` decodes the block at pointer `p`: 32 quant bytes and
/// `[dw, mw, _, _]`.
macro_rules! kernels {
    ($dot1:ident, $dot4:ident, $dot8:ident, $impl1:ident, $impl4:ident, $impl8:ident,
     $bytes:expr, $signed:expr,
     |$p:ident| $decode:block) => {
        pub fn $dot1(w: &[u8], a: &ActRow<'_>) -> f32 {
            let nb = a.nb();
            assert!(super::dot_avx2::available());
            assert!(w.len() >= nb * $bytes && a.qs.len() >= 32 * nb);
            // SAFETY: bounds asserted above; CPU features checked by the caller of
            // `int_kernel`, the only place these functions are handed out.
            unsafe { $impl1(w, a, nb) }
        }

        /// Performs, per row, exactly the float operations of `$impl4` (one
        /// accumulator, FMA min term, the same reduction), so that a row's result
        /// does not depend on which kernel computed it (batch invariance).
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $impl1(w: &[u8], a: &ActRow<'_>, nb: usize) -> f32 {
            let ones = _mm256_set1_epi16(1);
            let mut acc = _mm256_setzero_ps();
            let mut macc = _mm_setzero_ps();
            for b in 0..nb {
                // SAFETY: block b < nb lies within `w` and `a` (asserted).
                unsafe {
                    let $p = w.as_ptr().add(b * $bytes);
                    let (q, dm): (__m256i, __m128) = $decode;
                    let av = _mm256_loadu_si256(a.qs.as_ptr().add(32 * b) as *const __m256i);
                    let prod = if $signed {
                        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q))
                    } else {
                        _mm256_maddubs_epi16(q, av)
                    };
                    let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
                    let ds = act_ds(a, b); // [da, s, 0, 0]
                    let sc = _mm_mul_ps(dm, ds); // lane 0: dw·da
                    acc = _mm256_fmadd_ps(f, _mm256_broadcastss_ps(sc), acc);
                    // Lane 1: mw·s + macc, fused as in the four-row kernel.
                    macc = _mm_fmadd_ps(dm, ds, macc);
                }
            }
            reduce_like_x4(acc) + _mm_cvtss_f32(_mm_movehdup_ps(macc))
        }

        pub fn $dot4(w: &[u8], rb: usize, a: &ActTile4<'_>, out: &mut [f32]) {
            let nb = a.rows[0].nb();
            let nrows = out.len() / 4;
            assert!(super::dot_avx2::available());
            assert!(rb >= nb * $bytes && w.len() >= nrows * rb);
            assert!(a.d8.len() >= 8 * nb && a.s4.len() >= 4 * nb);
            for r in &a.rows {
                assert!(r.nb() == nb && r.qs.len() >= 32 * nb);
            }
            // SAFETY: as for the one-row kernel.
            unsafe { $impl4(w, rb, a, nb, out) }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $impl4(w: &[u8], rb: usize, a: &ActTile4<'_>, nb: usize, out: &mut [f32]) {
            let ones = _mm256_set1_epi16(1);
            let qp: [*const i8; 4] = std::array::from_fn(|r| a.rows[r].qs.as_ptr());
            for (row, out) in out.chunks_exact_mut(4).enumerate() {
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut macc = _mm_setzero_ps();
                for b in 0..nb {
                    // SAFETY: block b of row `row` lies within `w`, activations and
                    // scales within `a` (asserted by the caller).
                    unsafe {
                        let $p = w.as_ptr().add(row * rb + b * $bytes);
                        let (q, dm): (__m256i, __m128) = $decode;
                        // [dw·d₀..dw·d₃, dw·d₀..dw·d₃]
                        let sc = _mm256_mul_ps(
                            _mm256_broadcastss_ps(dm),
                            _mm256_loadu_ps(a.d8.as_ptr().add(8 * b)),
                        );
                        let mw = _mm_permute_ps::<0b01_01_01_01>(dm);
                        macc = _mm_fmadd_ps(mw, _mm_loadu_ps(a.s4.as_ptr().add(4 * b)), macc);
                        let qa = if $signed { _mm256_sign_epi8(q, q) } else { q };
                        macro_rules! one {
                            ($r:expr, $imm:expr) => {{
                                let av = _mm256_loadu_si256(qp[$r].add(32 * b) as *const __m256i);
                                let av = if $signed { _mm256_sign_epi8(av, q) } else { av };
                                let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                                    _mm256_maddubs_epi16(qa, av),
                                    ones,
                                ));
                                let s = _mm256_permute_ps::<$imm>(sc);
                                acc[$r] = _mm256_fmadd_ps(f, s, acc[$r]);
                            }};
                        }
                        one!(0, 0b00_00_00_00);
                        one!(1, 0b01_01_01_01);
                        one!(2, 0b10_10_10_10);
                        one!(3, 0b11_11_11_11);
                    }
                }
                // Reduce the four accumulators to [Σacc₀, Σacc₁, Σacc₂, Σacc₃].
                let h01 = _mm256_hadd_ps(acc[0], acc[1]);
                let h23 = _mm256_hadd_ps(acc[2], acc[3]);
                let h = _mm256_hadd_ps(h01, h23);
                let v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                let v = _mm_add_ps(v, macc);
                // SAFETY: `out` has exactly 4 floats.
                unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
            }
        }

        pub fn $dot8(w: &[u8], rb: usize, a: &ActTile8<'_>, out: &mut [f32]) {
            let nb = a.rows[0].nb();
            let nrows = out.len() / 8;
            assert!(super::dot_avx2::available());
            assert!(rb >= nb * $bytes && w.len() >= nrows * rb);
            assert!(a.d16.len() >= 16 * nb && a.s8.len() >= 8 * nb);
            for r in &a.rows {
                assert!(r.nb() == nb && r.qs.len() >= 32 * nb);
            }
            // SAFETY: as for the one-row kernel.
            unsafe { $impl8(w, rb, a, nb, out) }
        }

        /// Eight activation rows per weight block decode; per row the same float
        /// operations as `$impl1` / `$impl4` (batch invariance).
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $impl8(w: &[u8], rb: usize, a: &ActTile8<'_>, nb: usize, out: &mut [f32]) {
            let ones = _mm256_set1_epi16(1);
            let qp: [*const i8; 8] = std::array::from_fn(|r| a.rows[r].qs.as_ptr());
            for (row, out) in out.chunks_exact_mut(8).enumerate() {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut macc = _mm256_setzero_ps();
                for b in 0..nb {
                    // SAFETY: block b of row `row` lies within `w`, activations and
                    // scales within `a` (asserted by the caller).
                    unsafe {
                        let $p = w.as_ptr().add(row * rb + b * $bytes);
                        let (q, dm): (__m256i, __m128) = $decode;
                        let dw = _mm256_broadcastss_ps(dm);
                        // [dw·d₀..dw·d₃, dw·d₀..dw·d₃] and the same for rows 4..8.
                        let sc_lo = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d16.as_ptr().add(16 * b)));
                        let sc_hi =
                            _mm256_mul_ps(dw, _mm256_loadu_ps(a.d16.as_ptr().add(16 * b + 8)));
                        let mw = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                        macc = _mm256_fmadd_ps(mw, _mm256_loadu_ps(a.s8.as_ptr().add(8 * b)), macc);
                        let qa = if $signed { _mm256_sign_epi8(q, q) } else { q };
                        macro_rules! one {
                            ($r:expr, $sc:expr, $imm:expr) => {{
                                let av = _mm256_loadu_si256(qp[$r].add(32 * b) as *const __m256i);
                                let av = if $signed { _mm256_sign_epi8(av, q) } else { av };
                                let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                                    _mm256_maddubs_epi16(qa, av),
                                    ones,
                                ));
                                let s = _mm256_permute_ps::<$imm>($sc);
                                acc[$r] = _mm256_fmadd_ps(f, s, acc[$r]);
                            }};
                        }
                        one!(0, sc_lo, 0b00_00_00_00);
                        one!(1, sc_lo, 0b01_01_01_01);
                        one!(2, sc_lo, 0b10_10_10_10);
                        one!(3, sc_lo, 0b11_11_11_11);
                        one!(4, sc_hi, 0b00_00_00_00);
                        one!(5, sc_hi, 0b01_01_01_01);
                        one!(6, sc_hi, 0b10_10_10_10);
                        one!(7, sc_hi, 0b11_11_11_11);
                    }
                }
                // The four-row kernel's reduction, once per half.
                let lo = _mm_add_ps(
                    reduce4(acc[0], acc[1], acc[2], acc[3]),
                    _mm256_castps256_ps128(macc),
                );
                let hi = _mm_add_ps(
                    reduce4(acc[4], acc[5], acc[6], acc[7]),
                    _mm256_extractf128_ps::<1>(macc),
                );
                // SAFETY: `out` has exactly 8 floats.
                unsafe {
                    _mm_storeu_ps(out.as_mut_ptr(), lo);
                    _mm_storeu_ps(out.as_mut_ptr().add(4), hi);
                }
            }
        }
    };
}

/// `[d, k·d, 0, 0]` from the f16 at `p` (types whose min term is a multiple of d).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn d_and_multiple(p: *const u8, k: f32) -> __m128 {
    // SAFETY: the caller guarantees 2 readable bytes at `p`.
    let h = unsafe { (p as *const u16).read_unaligned() };
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)); // [d, 0, 0, 0]
    if k == 0.0 {
        d
    } else {
        _mm_mul_ps(_mm_unpacklo_ps(d, d), _mm_setr_ps(1.0, k, 0.0, 0.0))
    }
}

/// `[d, m, 0, 0]` from two consecutive f16 at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn d_and_m(p: *const u8) -> __m128 {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    let v = unsafe { (p as *const i32).read_unaligned() };
    _mm_cvtph_ps(_mm_cvtsi32_si128(v))
}

kernels!(
    dot1_q4_0,
    dot4_q4_0,
    dot8_q4_0,
    q4_0_1,
    q4_0_4,
    q4_0_8,
    18,
    false,
    |p| { (nibbles(p.add(2)), d_and_multiple(p, -8.0)) }
);

kernels!(
    dot1_q4_1,
    dot4_q4_1,
    dot8_q4_1,
    q4_1_1,
    q4_1_4,
    q4_1_8,
    20,
    false,
    |p| { (nibbles(p.add(4)), d_and_m(p)) }
);

kernels!(
    dot1_q5_0,
    dot4_q5_0,
    dot8_q5_0,
    q5_0_1,
    q5_0_4,
    q5_0_8,
    22,
    false,
    |p| {
        let q = _mm256_or_si256(nibbles(p.add(6)), high_bits(p.add(2)));
        (q, d_and_multiple(p, -16.0))
    }
);

kernels!(
    dot1_q5_1,
    dot4_q5_1,
    dot8_q5_1,
    q5_1_1,
    q5_1_4,
    q5_1_8,
    24,
    false,
    |p| {
        let q = _mm256_or_si256(nibbles(p.add(8)), high_bits(p.add(4)));
        (q, d_and_m(p))
    }
);

kernels!(
    dot1_q8_0,
    dot4_q8_0,
    dot8_q8_0,
    q8_0_1,
    q8_0_4,
    q8_0_8,
    34,
    true,
    |p| {
        (
            _mm256_loadu_si256(p.add(2) as *const __m256i),
            d_and_multiple(p, 0.0),
        )
    }
);
