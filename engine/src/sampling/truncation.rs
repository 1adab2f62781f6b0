//! Random choice from `softmax(logits / temperature)` after top-k, top-p and min-p
//! truncation, applied in that order (vLLM/HF order).
//!
//! Invariants: the chosen token is always selectable (logit above `-inf`) and inside
//! every active truncation set; the most likely token always survives (top-p keeps at
//! least one token, min-p is relative to it); the choice is a deterministic function
//! of the logits, the settings and the one uniform number `u`. Weights are
//! `exp((x - max) / T)`, so they lie in `[0, 1]` for any `T > 0` and never overflow.
//! Nothing sorts the whole vocabulary unless top-p needs it (then in growing steps).

use super::select::{selectable, top_n};

/// Truncation settings of one step. `temperature > 0`.
#[derive(Clone, Copy, Debug)]
pub struct Truncation {
    pub temperature: f32,
    /// 0 or `>= vocab` disables.
    pub top_k: usize,
    /// `>= 1` disables.
    pub top_p: f32,
    /// `<= 0` disables.
    pub min_p: f32,
}

/// First candidate count tried by top-p without top-k; grows eightfold when the
/// nucleus is wider.
const TOP_P_FIRST_GUESS: usize = 256;

/// Draws a token. `max` is the row's largest logit (finite), `u` uniform in `[0, 1)`,
/// `cands` a scratch buffer. `None` only when no entry is selectable.
pub fn draw(
    logits: &[f32],
    max: f32,
    t: &Truncation,
    u: f64,
    cands: &mut Vec<(f32, u32)>,
) -> Option<u32> {
    let temp = t.temperature;
    let weight = |x: f32| ((x - max) / temp).exp();
    let vocab = logits.len();
    let top_k_on = t.top_k > 0 && t.top_k < vocab;
    let top_p_on = t.top_p < 1.0;
    let min_p_on = t.min_p > 0.0;

    if !top_k_on && !top_p_on {
        if !min_p_on {
            return draw_full_row(logits, u, weight);
        }
        // min-p alone: the survivors in id order.
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &x)| selectable(x) && weight(x) >= t.min_p)
                .map(|(i, &x)| (x, i as u32)),
        );
        return draw_from(cands, u, weight);
    }

    if top_k_on {
        top_n(logits, t.top_k, cands);
        if top_p_on {
            let total: f64 = cands.iter().map(|&(x, _)| f64::from(weight(x))).sum();
            let keep = nucleus_len(cands, total, t.top_p, weight).unwrap_or(cands.len());
            cands.truncate(keep);
        }
    } else {
        // top-p over the whole row: find the nucleus among the best few first.
        let total: f64 = logits.iter().map(|&x| f64::from(weight(x))).sum();
        let mut n = TOP_P_FIRST_GUESS.min(vocab);
        loop {
            top_n(logits, n, cands);
            if let Some(keep) = nucleus_len(cands, total, t.top_p, weight) {
                cands.truncate(keep);
                break;
            }
            if cands.len() < n || n >= vocab {
                break; // every selectable token is in; rounding kept the mass below p
            }
            n = n.saturating_mul(8).min(vocab);
        }
    }
    if min_p_on {
        // cands is best first, so its head (weight 1) always survives.
        cands.retain(|&(x, _)| weight(x) >= t.min_p);
    }
    draw_from(cands, u, weight)
}

/// Length of the shortest best-first prefix whose mass reaches `top_p * total`, or
/// `None` when all of `cands` does not reach it.
fn nucleus_len(
    cands: &[(f32, u32)],
    total: f64,
    top_p: f32,
    weight: impl Fn(f32) -> f32,
) -> Option<usize> {
    let target = f64::from(top_p) * total;
    let mut acc = 0.0f64;
    for (i, &(x, _)) in cands.iter().enumerate() {
        acc += f64::from(weight(x));
        if acc >= target {
            return Some(i + 1);
        }
    }
    None
}

/// Inverse-CDF choice over the candidates in their given order.
fn draw_from(cands: &[(f32, u32)], u: f64, weight: impl Fn(f32) -> f32) -> Option<u32> {
    let total: f64 = cands.iter().map(|&(x, _)| f64::from(weight(x))).sum();
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for &(x, id) in cands {
        let w = f64::from(weight(x));
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(id);
        if acc > target {
            return last;
        }
    }
    // Rounding left the target unreached (or every weight underflowed): take the last
    // token with weight, else the best candidate.
    last.or_else(|| cands.first().map(|&(_, id)| id))
}

/// Inverse-CDF choice over the whole row in id order, without copying it.
fn draw_full_row(logits: &[f32], u: f64, weight: impl Fn(f32) -> f32) -> Option<u32> {
    let total: f64 = logits.iter().map(|&x| f64::from(weight(x))).sum();
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for (i, &x) in logits.iter().enumerate() {
        let w = f64::from(weight(x));
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}
