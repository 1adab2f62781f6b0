//! Partial selection of the best entries of a logits row, shared by top-k truncation
//! and top-N logprobs.
//!
//! Invariants: results are ordered best first by (logit descending, token id
//! ascending), a total order once NaN is excluded; only entries above `-inf` (and not
//! NaN) are ever selected; nothing sorts the whole vocabulary unless asked for all of
//! it. Small `n` uses a bounded insertion buffer (one compare per logit in the common
//! case), larger `n` a quickselect followed by a sort of the `n` winners.

use std::cmp::Ordering;

/// Up to this many winners, the insertion buffer beats copying the whole row.
const INSERTION_MAX: usize = 64;

/// Best-first order: higher logit, then lower id. Callers never pass NaN.
pub(crate) fn best_first(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// True for logits that can be chosen at all (finite or `+inf`; not `-inf`, not NaN).
#[inline]
pub(crate) fn selectable(x: f32) -> bool {
    x > f32::NEG_INFINITY
}

/// Fills `out` with the `n` best selectable `(logit, id)` pairs of `logits`, best
/// first. Fewer when the row has fewer selectable entries.
pub fn top_n(logits: &[f32], n: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    if n == 0 {
        return;
    }
    if n <= INSERTION_MAX {
        top_n_insertion(logits, n, out);
    } else {
        out.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &x)| selectable(x))
                .map(|(i, &x)| (x, i as u32)),
        );
        if out.len() > n {
            out.select_nth_unstable_by(n - 1, best_first);
            out.truncate(n);
        }
        out.sort_unstable_by(best_first);
    }
}

/// Ids are visited in increasing order, so on equal logits the entry already in the
/// buffer (lower id) stays ahead: insert after every entry `>=` the new logit.
fn top_n_insertion(logits: &[f32], n: usize, out: &mut Vec<(f32, u32)>) {
    out.reserve(n + 1);
    let mut floor = f32::NEG_INFINITY; // the worst logit kept once the buffer is full
    for (i, &x) in logits.iter().enumerate() {
        if !selectable(x) || (out.len() == n && x <= floor) {
            continue;
        }
        let pos = out.partition_point(|&(y, _)| y >= x);
        out.insert(pos, (x, i as u32));
        if out.len() > n {
            out.pop();
        }
        if out.len() == n {
            floor = out[n - 1].0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(logits: &[f32], n: usize) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &x)| selectable(x))
            .map(|(i, &x)| (x, i as u32))
            .collect();
        all.sort_by(best_first);
        all.truncate(n);
        all
    }

    #[test]
    fn ties_go_to_lower_id_and_neg_inf_is_skipped() {
        let logits = [1.0, 3.0, f32::NEG_INFINITY, 3.0, f32::NAN, 2.0];
        let mut out = Vec::new();
        top_n(&logits, 3, &mut out);
        assert_eq!(out, vec![(3.0, 1), (3.0, 3), (2.0, 5)]);
        top_n(&logits, 10, &mut out);
        assert_eq!(out.len(), 4);
        top_n(&logits, 0, &mut out);
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn matches_full_sort(
            logits in proptest::collection::vec(
                prop_oneof![
                    8 => (-20i32..20).prop_map(|v| v as f32 * 0.5),
                    1 => Just(f32::NEG_INFINITY),
                ],
                0..300,
            ),
            n in 0usize..200,
        ) {
            let mut out = Vec::new();
            top_n(&logits, n, &mut out);
            prop_assert_eq!(out, reference(&logits, n));
        }
    }
}
