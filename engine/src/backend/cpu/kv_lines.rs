//! Software prefetch of one attention task's KV: the cache lines of a
//! sequence's keys and values for one layer, walked block by block and handed to
//! the prefetcher a few at a time (see `attention`'s header for why).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

use crate::kv::pool::{KvElem, KvLayout};
use crate::BlockId;

/// Cache lines the next decode task's key pass issues per four keys of this
/// one (its value pass issues one per key): together about as many lines as a
/// task of the same context reads, for grouped-query models (3 query heads per
/// KV head); what is left at the end of a task is issued at once.
pub(crate) const LINES_PER_KEY_STEP: usize = 2;

/// The cache lines of a task's keys and values (its whole context), block by
/// block, keys before values, handed to the prefetcher a few at a time: a
/// decode row's KV is read once, straight from memory, and asking for it while
/// the previous task computes overlaps the misses with that compute (issued all
/// at once, the requests fill the miss buffers and the core waits for them).
/// Only hints: no result depends on them.
///
/// The lines are walked as contiguous runs of elements: a block's whole key (or
/// value) slab when the task covers every KV head (its tokens' rows follow each
/// other), else the task's part of one token's row; so that issuing a line is
/// an add and a compare.
pub(crate) struct KvLines<'a, E> {
    data: &'a [E],
    layout: KvLayout,
    layer: usize,
    table: &'a [BlockId],
    ctx: usize,
    /// The task's part of a token's row: first element, element count.
    start: usize,
    len: usize,
    /// The next run: block, values (1) or keys (0), token in block.
    block: usize,
    part: usize,
    token: usize,
    /// The current run's next line and end (element indices).
    at: usize,
    end: usize,
}

impl<'a, E: KvElem> KvLines<'a, E> {
    /// Lines of the first `ctx` tokens (blocks from `table`) of `layer`, elements
    /// `row` of each token's row (the task's KV heads).
    pub(crate) fn new(
        data: &'a [E],
        layout: KvLayout,
        layer: usize,
        table: &'a [BlockId],
        ctx: usize,
        row: std::ops::Range<usize>,
    ) -> KvLines<'a, E> {
        KvLines {
            data,
            layout,
            layer,
            table,
            ctx,
            start: row.start,
            len: row.len(),
            block: 0,
            part: 0,
            token: 0,
            at: 0,
            end: 0,
        }
    }

    /// Prefetches up to `n` more lines.
    #[inline(always)]
    pub(crate) fn issue(&mut self, n: usize) {
        for _ in 0..n {
            let Some(at) = self.next_line() else {
                return;
            };
            if let Some(x) = self.data.get(at) {
                // SAFETY: a prefetch only hints the cache; the address is that of
                // a live element of the pool.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x as *const E as *const i8) };
            }
        }
    }

    /// The element index of the next line to fetch (an element in that line).
    #[inline(always)]
    fn next_line(&mut self) -> Option<usize> {
        if self.at >= self.end && !self.next_run() {
            return None;
        }
        let at = self.at;
        self.at += 64 / std::mem::size_of::<E>();
        Some(at)
    }

    /// Moves to the next run of elements; false when there is none.
    fn next_run(&mut self) -> bool {
        let l = &self.layout;
        let t0 = self.block * l.block_size;
        let Some(block) = self.table.get(self.block).filter(|_| t0 < self.ctx) else {
            return false;
        };
        let tokens = (self.ctx - t0).min(l.block_size);
        let slab = l.slab_offset(block.0 as usize, self.layer, self.part == 1);
        // Whole rows: the block's tokens are one run.
        let whole = self.len == l.kv_dim();
        let (first, len) = if whole {
            (slab, tokens * self.len)
        } else {
            (slab + self.token * l.kv_dim() + self.start, self.len)
        };
        // From the line that holds the run's first element.
        let addr = self.data.as_ptr().wrapping_add(first) as usize;
        self.at = first.saturating_sub(addr % 64 / std::mem::size_of::<E>());
        self.end = first + len;
        self.token += 1;
        if whole || self.token == tokens {
            self.token = 0;
            self.part += 1;
            if self.part == 2 {
                self.part = 0;
                self.block += 1;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::pool::{CpuKvPool, KvDtype};
    use std::collections::BTreeSet;

    /// Every line of the task's keys and values is named, and no other line:
    /// for a task over all KV heads (whole rows, one run per block slab) and for
    /// one over a single KV head (a run per token), with a last block cut short.
    #[test]
    fn names_exactly_the_task_lines() {
        let layout = KvLayout {
            num_blocks: 6,
            num_layers: 3,
            block_size: 16,
            num_kv_heads: 3,
            head_dim: 64,
            dtype: KvDtype::F16,
        };
        let kv = CpuKvPool::new(layout);
        let data = kv.elems::<half::f16>().unwrap();
        let table = [BlockId(4), BlockId(1), BlockId(3)];
        let (layer, ctx) = (2, 37);
        let line = |at: usize| (data.as_ptr() as usize + 2 * at) / 64;
        for row in [0..192, 64..128] {
            let mut want = BTreeSet::new();
            for t in 0..ctx {
                for v in [false, true] {
                    let slab = layout.slab_offset(table[t / 16].0 as usize, layer, v);
                    for e in row.clone() {
                        want.insert(line(slab + (t % 16) * layout.kv_dim() + e));
                    }
                }
            }
            let mut lines = KvLines::new(data, layout, layer, &table, ctx, row.clone());
            let got: BTreeSet<usize> = std::iter::from_fn(|| lines.next_line()).map(line).collect();
            assert_eq!(got, want, "row {row:?}");
        }
    }
}
