//! Logits processors that rewrite a logits row in place before any truncation:
//! repetition penalty, presence/frequency penalties, token masking, and the final
//! sanitising pass that also finds the argmax. Plus `log_sum_exp` for logprobs.
//!
//! Invariants: every function is a pure function of its arguments (no randomness);
//! token ids outside the row are ignored, never indexed; after `sanitize_argmax` the
//! row holds no NaN and no `+inf` (NaN becomes `-inf`, meaning "never chosen";
//! `+inf` becomes `f32::MAX`), so later arithmetic cannot produce NaN.

/// HF semantics: for each distinct token in `tokens` (prompt + generated), a positive
/// logit is divided by `penalty` and a non-positive one multiplied by it. Each id is
/// penalised once however often it occurs; the caller passes distinct ids.
pub fn repetition_penalty(logits: &mut [f32], tokens: impl IntoIterator<Item = u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for t in tokens {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
        }
    }
}

/// OpenAI semantics over generated tokens only:
/// `logit[t] -= count[t] * frequency + (count[t] > 0) * presence`.
pub fn presence_frequency(
    logits: &mut [f32],
    counts: impl IntoIterator<Item = (u32, u32)>,
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (t, c) in counts {
        if c == 0 {
            continue;
        }
        if let Some(x) = logits.get_mut(t as usize) {
            *x -= c as f32 * frequency + presence;
        }
    }
}

/// Sets the listed tokens to `-inf` so they can never be chosen.
pub fn mask(logits: &mut [f32], ids: &[u32]) {
    for &t in ids {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Replaces NaN by `-inf` and `+inf` by `f32::MAX`, and returns `(argmax, max)` over
/// the selectable entries (ties go to the lowest id), or `None` when every entry is
/// `-inf`/NaN or the row is empty. Eight lanes wide on CPUs with AVX2
/// (`backend::cpu::vocab`), with the same results.
pub fn sanitize_argmax(logits: &mut [f32]) -> Option<(u32, f32)> {
    crate::backend::cpu::vocab::sanitize_argmax(logits)
}

/// [`sanitize_argmax`] as compiled for the caller's target features (inlined into
/// the AVX2 build).
#[inline(always)]
pub fn sanitize_argmax_portable(logits: &mut [f32]) -> Option<(u32, f32)> {
    // Branch-free passes that vectorise: clean up, lane-wise max, then the first
    // position holding the max.
    for x in logits.iter_mut() {
        *x = if x.is_nan() {
            f32::NEG_INFINITY
        } else {
            x.min(f32::MAX)
        };
    }
    // Entry i goes to lane i % 8. Whole chunks first, so that the lanes stay in
    // a register (a partial chunk in the loop made LLVM keep them in memory).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = logits.chunks_exact(8);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    for (m, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *m = if x > *m { x } else { *m };
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if max == f32::NEG_INFINITY {
        return None;
    }
    let at = logits.iter().position(|&x| x == max)?;
    Some((at as u32, max))
}

/// `ln(sum(exp(logits)))` given the row's maximum `max` (finite, from
/// `sanitize_argmax`), accumulated in f64.
pub fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    max + super::fastmath::sum_exp_shifted(logits, max, 1.0).ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 0.0, 4.0];
        repetition_penalty(&mut l, [0, 1, 2, 99], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 0.0, 4.0]);
        let mut l = vec![2.0, -2.0];
        repetition_penalty(&mut l, [0, 1], 0.5);
        assert_eq!(l, vec![4.0, -1.0]);
    }

    #[test]
    fn presence_and_frequency_follow_openai_formula() {
        let mut l = vec![1.0, 1.0, 1.0];
        presence_frequency(&mut l, [(0, 3), (1, 1), (7, 2)], 0.5, 0.25);
        assert_eq!(l, vec![1.0 - 0.75 - 0.5, 1.0 - 0.25 - 0.5, 1.0]);
        let mut l = vec![1.0];
        presence_frequency(&mut l, [(0, 3)], -1.0, 0.0);
        assert_eq!(l, vec![2.0]);
    }

    #[test]
    fn mask_ignores_out_of_range_ids() {
        let mut l = vec![1.0, 2.0];
        mask(&mut l, &[1, 5]);
        assert_eq!(l, vec![1.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn sanitize_handles_nan_inf_and_ties() {
        let mut l = vec![f32::NAN, 1.0, f32::INFINITY, f32::INFINITY, 0.5];
        assert_eq!(sanitize_argmax(&mut l), Some((2, f32::MAX)));
        assert!(l[0] == f32::NEG_INFINITY && l[3] == f32::MAX);
        let mut l = vec![3.0, 3.0, 1.0];
        assert_eq!(sanitize_argmax(&mut l), Some((0, 3.0)));
        let mut l = vec![f32::NEG_INFINITY, f32::NAN];
        assert_eq!(sanitize_argmax(&mut l), None);
        assert_eq!(sanitize_argmax(&mut []), None);
    }

    #[test]
    fn log_sum_exp_matches_direct_formula() {
        let l = [0.1f32, -3.0, 2.5, f32::NEG_INFINITY];
        let direct = l.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln() as f32;
        assert!((log_sum_exp(&l, 2.5) - direct).abs() < 1e-6);
        // large logits must not overflow
        let l = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&l, 1000.0) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
