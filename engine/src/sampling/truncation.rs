//! Random choice from `softmax(logits / temperature)` after top-k, top-p and min-p
//! truncation, applied in that order (vLLM/HF order).
//!
//! Invariants: the chosen token is always selectable (logit above `-inf`) and inside
//! every active truncation set; the most likely token always survives (top-p keeps at
//! least one token, min-p is relative to it); the choice is a deterministic function
//! of the logits, the settings and the one uniform number `u`. Weights are
//! `exp((x - max) / T)`, so they lie in `[0, 1]` for any `T > 0` and never overflow.
//! Nothing sorts the whole vocabulary: top-k uses partial selection, top-p without
//! top-k a quickselect-style search for the nucleus boundary.

use super::fastmath::{exp_nonpos, exp_shifted_into, lane_sum, sum_exp_shifted, BLOCK};
use super::select::{best_first, top_n};

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

/// Draws a token. `max` is the row's largest logit (finite), `u` uniform in `[0, 1)`,
/// `cands` a scratch buffer. `None` when nothing was chosen (no selectable entry, or
/// float rounding left the draw target unreached); the caller then takes the argmax.
pub fn draw(
    logits: &[f32],
    max: f32,
    t: &Truncation,
    u: f64,
    cands: &mut Vec<(f32, u32)>,
) -> Option<u32> {
    let temp = t.temperature;
    let weight = |x: f32| exp_nonpos((x - max) / temp);
    let vocab = logits.len();
    let top_k_on = t.top_k > 0 && t.top_k < vocab;
    let top_p_on = t.top_p < 1.0;
    let min_p_on = t.min_p > 0.0;

    if !top_k_on && !top_p_on {
        if !min_p_on {
            let total = sum_exp_shifted(logits, max, temp);
            return draw_full_row(logits, max, temp, u * total);
        }
        // min-p alone: the survivors in id order.
        cands.clear();
        for_each_weight(logits, max, temp, |i, w| {
            if w >= t.min_p {
                cands.push((logits[i], i as u32));
            }
        });
        return draw_from(cands, u, weight);
    }

    if top_k_on {
        top_n(logits, t.top_k, cands);
        if top_p_on {
            let total: f64 = cands.iter().map(|&(x, _)| f64::from(weight(x))).sum();
            let keep = nucleus_len(cands, total, t.top_p, weight).unwrap_or(cands.len());
            cands.truncate(keep);
        }
        if min_p_on {
            // cands is best first, so its head (weight 1) always survives.
            cands.retain(|&(x, _)| weight(x) >= t.min_p);
        }
        return draw_from(cands, u, weight);
    }

    // top-p over the whole row, without sorting it: `cands` holds (weight, id) pairs
    // and a quickselect-style search finds the nucleus in expected O(vocab). Tokens
    // with weight below eps = (1 - top_p) * total / vocab are left out first: together
    // they weigh less than (1 - top_p) * total, so the rest already reaches the
    // nucleus mass and, being a best-first prefix, contains the nucleus. On peaked
    // distributions this drops most of the vocabulary before any partitioning.
    let total = sum_exp_shifted(logits, max, temp);
    let eps = ((1.0 - f64::from(t.top_p)) * total / vocab as f64) as f32;
    cands.clear();
    for_each_weight(logits, max, temp, |i, w| {
        if w > 0.0 && w >= eps {
            cands.push((w, i as u32));
        }
    });
    let keep = nucleus_partition(cands, f64::from(t.top_p) * total);
    cands.truncate(keep);
    if min_p_on {
        cands.retain(|&(w, _)| w >= t.min_p);
    }
    draw_from(cands, u, |w| w)
}

/// Calls `f(id, weight)` for every token, weights computed a block at a time.
fn for_each_weight(logits: &[f32], max: f32, temp: f32, mut f: impl FnMut(usize, f32)) {
    let mut buf = [0.0f32; BLOCK];
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let vals = &mut buf[..block.len()];
        exp_shifted_into(block, max, temp, vals);
        for (j, &w) in vals.iter().enumerate() {
            f(b * BLOCK + j, w);
        }
    }
}

/// Below this many undecided candidates, `nucleus_partition` sorts them.
const PARTITION_SORT_MAX: usize = 64;

/// Reorders the `(weight, id)` pairs so that the nucleus (the shortest best-first
/// prefix whose weight reaches `target`) comes first, and returns its length (all of
/// `c` when rounding keeps the mass below `target`). The nucleus itself is left in
/// the order the partitioning produced, which is deterministic.
fn nucleus_partition(c: &mut [(f32, u32)], target: f64) -> usize {
    // c[..lo] are the `lo` best pairs and their mass `acc` is below target; the answer
    // lies in (lo, hi].
    let (mut lo, mut hi) = (0usize, c.len());
    let mut acc = 0.0f64;
    while hi - lo > PARTITION_SORT_MAX {
        let mid = lo + (hi - lo) / 2;
        c[lo..hi].select_nth_unstable_by(mid - lo, best_first);
        let better: f64 = c[lo..=mid].iter().map(|&(w, _)| f64::from(w)).sum();
        if acc + better >= target {
            hi = mid + 1;
        } else {
            acc += better;
            lo = mid + 1;
        }
    }
    c[lo..hi].sort_unstable_by(best_first);
    for (i, &(w, _)) in c[lo..hi].iter().enumerate() {
        acc += f64::from(w);
        if acc >= target {
            return lo + i + 1;
        }
    }
    hi
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

/// Inverse-CDF choice over the whole row in id order, without copying it: whole
/// blocks are skipped by their `lane_sum` (the same sums that make up
/// `sum_exp_shifted`), and only the block holding `target` is walked token by token.
/// `None` when rounding leaves `target` unreached.
fn draw_full_row(logits: &[f32], max: f32, temp: f32, target: f64) -> Option<u32> {
    let mut buf = [0.0f32; BLOCK];
    let mut acc = 0.0f64;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let vals = &mut buf[..block.len()];
        exp_shifted_into(block, max, temp, vals);
        let block_sum = lane_sum(vals);
        if acc + block_sum <= target {
            acc += block_sum;
            continue;
        }
        let mut last = None;
        for (j, &w) in vals.iter().enumerate() {
            if w > 0.0 {
                acc += f64::from(w);
                last = Some((b * BLOCK + j) as u32);
                if acc > target {
                    break;
                }
            }
        }
        return last;
    }
    None
}
