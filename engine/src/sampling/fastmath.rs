//! Vocabulary-wide exponentials for softmax work: an `exp` for non-positive
//! arguments that the compiler can vectorise (no libm call, no branches), and
//! blockwise helpers built on it: map a block into a stack buffer, sum it in lanes,
//! and the row sum `Σ exp((x - max) / t)` made of those block sums.
//!
//! Invariants: `exp_nonpos(x)` is within 2e-7 relative error of `exp(x)` for
//! `x ∈ [-87, 0]`, exactly 1 at 0, 0 below -87 (including `-inf`); callers only pass
//! `x <= 0` (shifted logits), so no overflow path exists. Results depend only on the
//! inputs (no target-dependent reassociation beyond the fixed lane layout).

/// Below this, `exp` is under 1.7e-38 and treated as 0 (keeps `2^n` a normal float).
const EXP_FLOOR: f32 = -87.0;

/// `exp(x)` for `x <= 0`: `x = n ln2 + r`, `|r| <= ln2 / 2`, degree-7 Taylor
/// polynomial for `exp(r)`, scaled by `2^n` built from its exponent bits.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split so that n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(EXP_FLOOR, 0.0);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted` and ROUND share their exponent, so their bit patterns differ by n
    // (integer ops only, which vectorise, unlike a saturating float-to-int cast).
    // n ∈ [-126, 0], so the biased exponent n + 127 ∈ [1, 127]: a normal float.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    if x < EXP_FLOOR {
        0.0
    } else {
        p * scale
    }
}

/// Values per block of the blockwise helpers: small enough for a stack buffer and for
/// f32 lane sums to stay accurate (near 1e-7 relative).
pub const BLOCK: usize = 256;

/// `out[i] = exp((block[i] - max) / t)` over the common length; `max` is the row
/// maximum and `t > 0`, so every argument is `<= 0` (`-inf` gives 0). Vectorises.
#[inline(always)]
pub fn exp_shifted_into(block: &[f32], max: f32, t: f32, out: &mut [f32]) {
    if t == 1.0 {
        // Dividing by 1 is exact: the same values without a division per entry
        // (the log-sum-exp of every sampled token's logprob takes this path).
        for (v, &x) in out.iter_mut().zip(block) {
            *v = exp_nonpos(x - max);
        }
        return;
    }
    for (v, &x) in out.iter_mut().zip(block) {
        *v = exp_nonpos((x - max) / t);
    }
}

/// Sum of at most `BLOCK` non-negative values in eight f32 lanes, returned as f64.
/// Deterministic: the same values always give the same bits.
#[inline(always)]
pub fn lane_sum(vals: &[f32]) -> f64 {
    const LANES: usize = 8;
    // Value i goes to lane i % 8; whole chunks first, so that the lanes stay in a
    // register (a partial chunk in the loop made LLVM keep them in memory).
    let mut acc = [0.0f32; LANES];
    let mut chunks = vals.chunks_exact(LANES);
    for lane in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(lane) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    acc.iter().map(|&a| f64::from(a)).sum()
}

/// `Σ exp((x - max) / t)` over `logits` (see `exp_shifted_into`), as the f64 sum of the
/// `lane_sum`s of consecutive `BLOCK`s, in order; eight lanes wide on CPUs with
/// AVX2 (`backend::cpu::vocab`), with the same bits.
pub fn sum_exp_shifted(logits: &[f32], max: f32, t: f32) -> f64 {
    crate::backend::cpu::vocab::sum_exp_shifted(logits, max, t)
}

/// [`sum_exp_shifted`] as compiled for the caller's target features (inlined into
/// the AVX2 build).
#[inline(always)]
pub fn sum_exp_shifted_portable(logits: &[f32], max: f32, t: f32) -> f64 {
    let mut buf = [0.0f32; BLOCK];
    let mut total = 0.0f64;
    for block in logits.chunks(BLOCK) {
        let vals = &mut buf[..block.len()];
        exp_shifted_into(block, max, t, vals);
        total += lane_sum(vals);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_on_its_range() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > EXP_FLOOR {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_731;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(-88.0), 0.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(-f32::MAX), 0.0);
    }

    #[test]
    fn sum_matches_direct_sum() {
        let row: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0)
            .collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for t in [1.0f32, 0.3, 4.0] {
            let want: f64 = row
                .iter()
                .map(|&x| ((f64::from(x) - f64::from(max)) / f64::from(t)).exp())
                .sum();
            let got = sum_exp_shifted(&row, max, t);
            assert!(((got - want) / want).abs() < 1e-6, "t={t}: {got} vs {want}");
        }
        assert_eq!(sum_exp_shifted(&[], 0.0, 1.0), 0.0);
        assert_eq!(sum_exp_shifted(&[f32::NEG_INFINITY, 0.0], 0.0, 1.0), 1.0);
    }
}
