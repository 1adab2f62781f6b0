//! Causal paged attention on the CPU. One task per (sequence, KV head) computes all
//! query rows of the query heads that share that KV head (grouped-query attention):
//! scores block by block (each key vector is loaded once for the whole group), a
//! row-wise softmax, then values block by block.
//!
//! For a query at absolute position p, keys 0..=p are used in position order, with
//! the same arithmetic whatever the chunking or batching, so results do not depend
//! on how the prompt was split or what else ran in the step.
//!
//! The kernel body is plain safe Rust; on x86-64 CPUs with AVX2+FMA it is compiled
//! a second time inside a `#[target_feature]` function (the one `unsafe` here) so
//! that LLVM vectorizes it with 256-bit FMAs while the binary stays portable.

use rayon::prelude::*;

use super::ops::{axpy, dot};
use crate::backend::AttnSeq;
use crate::kv::pool::CpuKvPool;

/// `out` rows for every sequence; `q`/`out` are `[rows][n_heads * head_dim]`.
pub fn paged_attention(
    q: &[f32],
    kv: &CpuKvPool,
    layer: usize,
    seqs: &[AttnSeq],
    n_heads: usize,
    out: &mut [f32],
) {
    let hd = kv.layout.head_dim;
    let q_dim = n_heads * hd;
    let n_kv = kv.layout.num_kv_heads;
    let group = n_heads / n_kv;
    // One task per (sequence, KV head); with enough sequences for every thread
    // (batched decode), one task per sequence for all its KV heads, so that each
    // token's keys and values are read as one contiguous run.
    let per_seq = seqs.len() >= 2 * rayon::current_num_threads();
    let tasks: Vec<(usize, std::ops::Range<usize>)> = if per_seq {
        (0..seqs.len()).map(|si| (si, 0..n_kv)).collect()
    } else {
        (0..seqs.len())
            .flat_map(|si| (0..n_kv).map(move |g| (si, g..g + 1)))
            .collect()
    };
    let avx2 = has_avx2_fma();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(si, g)| {
            let task = HeadTask {
                q,
                kv,
                layer,
                seq: &seqs[*si],
                kv_heads: g.clone(),
                n_heads,
            };
            if avx2 {
                task.run_avx2()
            } else {
                task.run()
            }
        })
        .collect();
    for ((si, g), res) in tasks.iter().zip(results) {
        let s = &seqs[*si];
        for hl in 0..g.len() * group {
            let h = g.start * group + hl;
            for i in 0..s.len {
                out[(s.row_start + i) * q_dim + h * hd..][..hd]
                    .copy_from_slice(&res[(hl * s.len + i) * hd..][..hd]);
            }
        }
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `$body` for every query row `$i` of the task's sequence and every key
/// position `$t` it may attend to (`t ≤ pos(i)`), with `$kv` the task's KV heads'
/// keys (`$values = false`) or values at `t` (consecutive, `head_dim` each); block by
/// block, so each block slab stays in cache. A macro rather than a function taking
/// a closure, so that the body is compiled inside `run_avx2`'s target features.
macro_rules! for_each_visible {
    ($task:expr, $values:expr, |$i:ident, $t:ident, $kv:ident| $body:block) => {{
        let task = $task;
        let l = &task.kv.layout;
        let (hd, bs, kv_dim) = (l.head_dim, l.block_size, l.kv_dim());
        let s = task.seq;
        let ctx = s.pos_start + s.len;
        let (g0, ng) = (task.kv_heads.start, task.kv_heads.len());
        for b in 0..ctx.div_ceil(bs) {
            let slab = l.slab_offset(s.block_table[b].0 as usize, task.layer, $values);
            let t0 = b * bs;
            let t_end = (t0 + bs).min(ctx);
            // Queries that see at least the first key of this block.
            for $i in t0.saturating_sub(s.pos_start)..s.len {
                for $t in t0..t_end.min(s.pos_start + $i + 1) {
                    let off = slab + ($t - t0) * kv_dim + g0 * hd;
                    let $kv = &task.kv.data[off..off + ng * hd];
                    $body
                }
            }
        }
    }};
}

struct HeadTask<'a> {
    q: &'a [f32],
    kv: &'a CpuKvPool,
    layer: usize,
    seq: &'a AttnSeq,
    /// The KV heads this task covers (consecutive).
    kv_heads: std::ops::Range<usize>,
    n_heads: usize,
}

impl HeadTask<'_> {
    #[cfg(target_arch = "x86_64")]
    fn run_avx2(&self) -> Vec<f32> {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn inner(t: &HeadTask<'_>) -> Vec<f32> {
            t.run()
        }
        // SAFETY: only called when `has_avx2_fma()` reported both features.
        unsafe { inner(self) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn run_avx2(&self) -> Vec<f32> {
        self.run()
    }

    /// `[heads][len][head_dim]` attention output of the query heads sharing this
    /// task's KV heads (in head order), for the sequence's rows. Every head's
    /// arithmetic is the same whichever KV heads share the task.
    #[inline(always)]
    fn run(&self) -> Vec<f32> {
        let l = &self.kv.layout;
        let hd = l.head_dim;
        let s = self.seq;
        let group = self.n_heads / l.num_kv_heads;
        // Query heads h0..h0 + nh; local head h uses key/value head h / group.
        let (h0, nh) = (self.kv_heads.start * group, self.kv_heads.len() * group);
        let q_dim = self.n_heads * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let ctx = s.pos_start + s.len;
        // scores[h][i][t] for t ≤ pos(i); entries past the causal limit stay unused.
        let srow = |h: usize, i: usize| (h * s.len + i) * ctx;

        let mut scores = vec![0f32; nh * s.len * ctx];
        for_each_visible!(self, false, |i, t, k| {
            let qi = &self.q[(s.row_start + i) * q_dim + h0 * hd..][..nh * hd];
            for h in 0..nh {
                let qh = &qi[h * hd..][..hd];
                scores[(h * s.len + i) * ctx + t] = dot(qh, &k[h / group * hd..][..hd]) * scale;
            }
        });
        for h in 0..nh {
            for i in 0..s.len {
                let n_keys = s.pos_start + i + 1;
                let row = &mut scores[srow(h, i)..srow(h, i) + n_keys];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
        }
        let mut res = vec![0f32; nh * s.len * hd];
        for_each_visible!(self, true, |i, t, v| {
            for h in 0..nh {
                let o = &mut res[(h * s.len + i) * hd..][..hd];
                axpy(
                    scores[(h * s.len + i) * ctx + t],
                    &v[h / group * hd..][..hd],
                    o,
                );
            }
        });
        res
    }
}
