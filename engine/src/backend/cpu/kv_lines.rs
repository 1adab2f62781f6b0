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
pub(crate) struct KvLines<'a, E> {
    data: &'a [E],
    layout: KvLayout,
    layer: usize,
    table: &'a [BlockId],
    ctx: usize,
    /// The task's part of a token's row: first element, element count.
    start: usize,
    len: usize,
    /// The next line: block, values (1) or keys (0), token in block, element.
    block: usize,
    part: usize,
    token: usize,
    elem: usize,
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
            elem: 0,
        }
    }

    /// Prefetches up to `n` more lines.
    #[inline(always)]
    pub(crate) fn issue(&mut self, n: usize) {
        let l = &self.layout;
        let per_line = 64 / std::mem::size_of::<E>();
        for _ in 0..n {
            let t0 = self.block * l.block_size;
            let Some(block) = self.table.get(self.block).filter(|_| t0 < self.ctx) else {
                return;
            };
            let slab = l.slab_offset(block.0 as usize, self.layer, self.part == 1);
            let at = slab + self.token * l.kv_dim() + self.start + self.elem;
            if let Some(x) = self.data.get(at) {
                // SAFETY: a prefetch only hints the cache; the address is that of
                // a live element of the pool.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x as *const E as *const i8) };
            }
            self.elem += per_line;
            if self.elem >= self.len {
                self.elem = 0;
                self.token += 1;
                if self.token == (self.ctx - t0).min(l.block_size) {
                    self.token = 0;
                    self.part += 1;
                    if self.part == 2 {
                        self.part = 0;
                        self.block += 1;
                    }
                }
            }
        }
    }
}
