//! Causal paged attention on the CPU. One task per (sequence, KV head) computes all
//! query rows of the query heads that share that KV head (grouped-query attention):
//! scores block by block (each key vector is loaded once for the whole group), a
//! row-wise softmax, then values block by block.
//!
//! For a query at absolute position p, keys 0..=p are used in position order, with
//! the same arithmetic whatever the chunking or batching, so results do not depend
//! on how the prompt was split or what else ran in the step.
//!
//! The kernel body is plain safe Rust over two vector primitives (a dot product
//! and `y += a·x`). On x86-64 CPUs with AVX2+FMA, and head dimensions that are a
//! multiple of 8, it is compiled a second time inside a `#[target_feature]`
//! function with the explicit 256-bit FMA primitives of [`super::simd`] (LLVM's
//! own vectorization of the portable dot product used 128-bit shuffles).
//!
//! Decode rows (one query row per sequence, the bulk of batched decode) take a
//! faster route in that AVX2 build: the query heads that share a KV head (up to
//! three) are computed together, so that each key and value chunk is loaded and
//! widened from f16 once for all of them (widening costs as much as an FMA);
//! key scores four keys at a time, and the outputs held in registers across all
//! keys. Its arithmetic is the general path's,
//! operation for operation (the `decode_rows_equal_prefill_rows` test holds it to
//! bitwise equality), so a row's result never depends on how it was scheduled.
//!
//! A decode row's keys and values are read once per step, from memory (the
//! weights stream through the caches between layers). Each worker takes a run of
//! consecutive tasks, and a decode task asks for the next task's cache lines a
//! few at a time while it computes (`KvLines`), so that the misses overlap the
//! compute instead of stalling the core in a burst at the start of every task.
//! A run's last task asks for the lines of the run's first task in the next
//! layer: they wait in the caches (L3, after the layer's weights pass through
//! L2) while the matmuls in between run.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::kv_lines::{KvLines, LINES_PER_KEY_STEP};
use super::ops::{axpy, dot};
#[cfg(target_arch = "x86_64")]
use super::simd::{axpy_avx2, dot4_heads_avx2, dot4_heads_zmm, dot_avx2, FloatVec};
use crate::backend::AttnSeq;
use crate::kv::pool::{CpuKvPool, KvDtype, KvLayout};
use crate::sampling::fastmath::exp_nonpos;

/// Query rows of a prefill task whose scores are held at once.
const ROW_TILE: usize = 64;
/// Runs of consecutive tasks per rayon thread (see `attend`). One: every run
/// starts with a task whose lines nobody fetched ahead, and with two runs per
/// thread `attn_bench 16 80 evict` took ~15% longer (median 5.4 vs 4.6 ms).
const RUNS_PER_THREAD: usize = 1;
/// Query heads of one KV head that a decode row computes together.
const HEADS_TOGETHER: usize = 3;
/// Value dimensions a decode row's value pass holds in registers per head (with
/// `HEADS_TOGETHER` heads: 12 accumulators and 4 value chunks).
const VALUE_LANES: usize = 32;
/// The same in 512-bit registers (32 of them: 12 accumulators, 4 value chunks).
const VALUE_LANES_ZMM: usize = 64;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `out` rows for every sequence; `q`/`out` are `[rows][n_heads * head_dim]`.
/// Keys and values are read in the pool's dtype (f32 or f16) and computed on in
/// f32.
pub fn paged_attention(
    q: &[f32],
    kv: &CpuKvPool,
    layer: usize,
    seqs: &[AttnSeq],
    n_heads: usize,
    out: &mut [f32],
) {
    match kv.layout.dtype {
        KvDtype::F32 => attend::<f32>(q, kv, layer, seqs, n_heads, out),
        KvDtype::F16 => attend::<half::f16>(q, kv, layer, seqs, n_heads, out),
        // `CpuBackend::alloc_kv` refuses other types.
        KvDtype::Bf16 => unreachable!("the CPU KV pool stores f32 or f16"),
    }
}

fn attend<E: Elem>(
    q: &[f32],
    kv: &CpuKvPool,
    layer: usize,
    seqs: &[AttnSeq],
    n_heads: usize,
    out: &mut [f32],
) {
    let data = kv.elems::<E>().expect("the pool's dtype is E");
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
    let avx2 = has_avx2_fma_f16c() && hd.is_multiple_of(8);
    let zmm = avx2 && crate::quant::zmm_available();
    let task_of = |(si, g): &(usize, std::ops::Range<usize>)| HeadTask {
        q,
        layout: kv.layout,
        data,
        layer,
        seq: &seqs[*si],
        kv_heads: g.clone(),
        n_heads,
        zmm,
    };
    // Each worker takes a run of consecutive tasks; a decode task streams the
    // next task's keys and values into the cache while it computes (see
    // `KvLines`), and a run's last task the run's first of the next layer.
    let decode = |t: &(usize, std::ops::Range<usize>)| seqs[t.0].len == 1;
    let run_len = tasks
        .len()
        .div_ceil(RUNS_PER_THREAD * rayon::current_num_threads())
        .max(1);
    let results: Vec<Vec<f32>> = tasks
        .par_chunks(run_len)
        .flat_map_iter(|run| {
            run.iter().enumerate().map(move |(k, t)| {
                let task = task_of(t);
                if !avx2 {
                    return task.run();
                }
                // A decode task before this one in the run fetched its lines; for
                // the run's first task, the run's last task in the previous layer
                // did (the same batch and thread count give the same runs in every
                // layer of a step).
                let fetched = if k > 0 {
                    decode(&run[k - 1])
                } else {
                    layer > 0 && decode(&run[run.len() - 1]) && decode(t)
                };
                // The last task fetches the run's first task of the next layer.
                let next = match run.get(k + 1) {
                    Some(n) => Some(task_of(n)),
                    None if layer + 1 < kv.layout.num_layers => Some(HeadTask {
                        layer: layer + 1,
                        ..task_of(&run[0])
                    }),
                    None => None,
                };
                task.run_avx2(fetched, next.as_ref())
            })
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

/// AVX2 + FMA + F16C (what the attention kernels are compiled for).
fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A stored KV element type the attention kernels read: any [`KvElem`], with
/// its eight-lane load where the SIMD build exists.
#[cfg(target_arch = "x86_64")]
pub(crate) trait Elem: super::simd::Load8 {}
#[cfg(target_arch = "x86_64")]
impl<E: super::simd::Load8> Elem for E {}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Elem: crate::kv::pool::KvElem {}
#[cfg(not(target_arch = "x86_64"))]
impl<E: crate::kv::pool::KvElem> Elem for E {}

pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `$body` for every query row `$i` in `$rows` (indices into the task's
/// sequence) and every key position `$t` it may attend to (`t ≤ pos(i)`), with
/// `$kv` the task's KV heads' keys (`$values = false`) or values at `t`
/// (consecutive, `head_dim` each); block by block, so each block slab stays in
/// cache. A macro rather than a function taking a closure, so that the body is
/// compiled inside `run_avx2`'s target features.
macro_rules! for_each_visible {
    ($task:expr, $values:expr, $rows:expr, |$i:ident, $t:ident, $kv:ident| $body:block) => {{
        let task = $task;
        let rows: std::ops::Range<usize> = $rows;
        let l = &task.layout;
        let (hd, bs, kv_dim) = (l.head_dim, l.block_size, l.kv_dim());
        let s = task.seq;
        // Keys visible to the last row of the range.
        let ctx = s.pos_start + rows.end;
        let (g0, ng) = (task.kv_heads.start, task.kv_heads.len());
        let n_blocks = ctx.div_ceil(bs);
        for b in 0..n_blocks {
            let slab = l.slab_offset(s.block_table[b].0 as usize, task.layer, $values);
            let t0 = b * bs;
            let t_end = (t0 + bs).min(ctx);
            // Queries of the range that see at least the first key of this block.
            for $i in t0.saturating_sub(s.pos_start).max(rows.start)..rows.end {
                for $t in t0..t_end.min(s.pos_start + $i + 1) {
                    let off = slab + ($t - t0) * kv_dim + g0 * hd;
                    let $kv = &task.data[off..off + ng * hd];
                    $body
                }
            }
        }
    }};
}

struct HeadTask<'a, E> {
    q: &'a [f32],
    layout: KvLayout,
    /// The whole pool's elements.
    data: &'a [E],
    layer: usize,
    seq: &'a AttnSeq,
    /// The KV heads this task covers (consecutive).
    kv_heads: std::ops::Range<usize>,
    n_heads: usize,
    /// The decode route may use 512-bit registers (`quant::zmm_available`).
    zmm: bool,
}

impl<'a, E: Elem> HeadTask<'a, E> {
    /// The AVX2 build. `fetched`: the previous task of the run already brought
    /// this task's KV in; `next`: the task to bring in while this one computes.
    #[cfg(target_arch = "x86_64")]
    fn run_avx2(&self, fetched: bool, next: Option<&HeadTask<'a, E>>) -> Vec<f32> {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn inner<'a, E: Elem>(
            t: &HeadTask<'a, E>,
            fetched: bool,
            next: Option<&HeadTask<'a, E>>,
        ) -> Vec<f32> {
            t.run_with::<true>(fetched, next)
        }
        // SAFETY: only called when `has_avx2_fma_f16c()` reported the features (and
        // the head dimension is a multiple of 8, which the primitives assert).
        unsafe { inner(self, fetched, next) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn run_avx2(&self, _fetched: bool, _next: Option<&HeadTask<'a, E>>) -> Vec<f32> {
        self.run()
    }

    fn run(&self) -> Vec<f32> {
        self.run_with::<false>(false, None)
    }

    /// The cache lines of this task's keys and values (its whole context).
    #[cfg(target_arch = "x86_64")]
    fn kv_lines(&self) -> KvLines<'a, E> {
        let hd = self.layout.head_dim;
        KvLines::new(
            self.data,
            self.layout,
            self.layer,
            &self.seq.block_table,
            self.seq.pos_start + self.seq.len,
            self.kv_heads.start * hd..self.kv_heads.end * hd,
        )
    }

    /// `[heads][len][head_dim]` attention output of the query heads sharing this
    /// task's KV heads (in head order), for the sequence's rows. Every head's
    /// arithmetic is the same whichever KV heads share the task.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn run_with<const AVX: bool>(&self, fetched: bool, next: Option<&HeadTask<'a, E>>) -> Vec<f32> {
        let l = &self.layout;
        let hd = l.head_dim;
        let s = self.seq;
        let group = self.n_heads / l.num_kv_heads;
        // Query heads h0..h0 + nh; local head h uses key/value head h / group.
        let (h0, nh) = (self.kv_heads.start * group, self.kv_heads.len() * group);
        let q_dim = self.n_heads * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let ctx = s.pos_start + s.len;
        let mut res = vec![0f32; nh * s.len * hd];

        // Decode rows take the faster route (AVX is only ever true on x86-64).
        #[cfg(target_arch = "x86_64")]
        if AVX && s.len == 1 {
            if !fetched {
                self.kv_lines().issue(usize::MAX);
            }
            // The next task's lines, a few per step of this one's loops.
            let mut ahead = next.filter(|n| n.seq.len == 1).map(HeadTask::kv_lines);
            let mut scores = vec![0f32; nh * ctx];
            let qi = &self.q[s.row_start * q_dim + h0 * hd..][..nh * hd];
            // The query heads of each KV head, up to three at a time (each key
            // and value chunk is loaded and widened once for all of them).
            let head_sets: Vec<(usize, std::ops::Range<usize>)> = (0..self.kv_heads.len())
                .flat_map(|k| {
                    (k * group..(k + 1) * group)
                        .step_by(HEADS_TOGETHER)
                        .map(move |h| (k, h..(h + HEADS_TOGETHER).min((k + 1) * group)))
                })
                .collect();
            for (k, heads) in &head_sets {
                let kv_head = self.kv_heads.start + k;
                let rows = &mut scores[heads.start * ctx..heads.end * ctx];
                let q = &qi[heads.start * hd..heads.end * hd];
                // SAFETY: `AVX` is only true inside `run_avx2`'s AVX2+FMA function;
                // `zmm` only where the CPU has AVX-512 F and DQ.
                unsafe {
                    match (heads.len(), self.zmm) {
                        (1, false) => self.key_scores::<1>(kv_head, q, scale, rows, &mut ahead),
                        (2, false) => self.key_scores::<2>(kv_head, q, scale, rows, &mut ahead),
                        (_, false) => self.key_scores::<3>(kv_head, q, scale, rows, &mut ahead),
                        (1, true) => self.key_scores_zmm::<1>(kv_head, q, scale, rows, &mut ahead),
                        (2, true) => self.key_scores_zmm::<2>(kv_head, q, scale, rows, &mut ahead),
                        (_, true) => self.key_scores_zmm::<3>(kv_head, q, scale, rows, &mut ahead),
                    }
                }
            }
            for row in scores.chunks_exact_mut(ctx) {
                softmax_in_place(row);
            }
            // Which register-held value pass fits the head dimension: the
            // 512-bit one (where the CPU has it), the 256-bit one, or neither.
            let zmm_values = self.zmm && hd.is_multiple_of(VALUE_LANES_ZMM);
            if zmm_values || hd.is_multiple_of(VALUE_LANES) {
                // Each head's output stays in registers over all keys: the same
                // per-lane FMA chain in key order as the general path below.
                for (k, heads) in &head_sets {
                    let kv_head = self.kv_heads.start + k;
                    let p = &scores[heads.start * ctx..heads.end * ctx];
                    let out = &mut res[heads.start * hd..heads.end * hd];
                    // SAFETY: as above.
                    unsafe {
                        match (heads.len(), zmm_values) {
                            (1, false) => self.weighted_values::<1>(kv_head, p, out, &mut ahead),
                            (2, false) => self.weighted_values::<2>(kv_head, p, out, &mut ahead),
                            (_, false) => self.weighted_values::<3>(kv_head, p, out, &mut ahead),
                            (1, true) => self.weighted_values_zmm::<1>(kv_head, p, out, &mut ahead),
                            (2, true) => self.weighted_values_zmm::<2>(kv_head, p, out, &mut ahead),
                            (_, true) => self.weighted_values_zmm::<3>(kv_head, p, out, &mut ahead),
                        }
                    }
                }
            } else {
                for_each_visible!(self, true, 0..1, |i, t, v| {
                    for h in 0..nh {
                        vaxpy::<AVX, E>(scores[h * ctx + t], &v[h / group * hd..][..hd], {
                            &mut res[h * hd..][..hd]
                        });
                    }
                });
            }
            if let Some(a) = &mut ahead {
                a.issue(usize::MAX);
            }
            return res;
        }

        // Prefill: ROW_TILE query rows at a time, so that the score buffer is
        // `heads × ROW_TILE × ctx` rather than `heads × rows × ctx` (a 512-token
        // chunk's scores were megabytes per task). Each row's arithmetic does not
        // depend on the tiling.
        let tile = ROW_TILE.min(s.len);
        let mut scores = vec![0f32; nh * tile * ctx];
        for i0 in (0..s.len).step_by(ROW_TILE) {
            let rows = i0..(i0 + ROW_TILE).min(s.len);
            let n = rows.len();
            // scores[h][i - i0][t] for t ≤ pos(i); entries past the causal limit
            // stay unused.
            let at = |h: usize, i: usize| (h * n + (i - i0)) * ctx;
            for_each_visible!(self, false, rows.clone(), |i, t, k| {
                let qi = &self.q[(s.row_start + i) * q_dim + h0 * hd..][..nh * hd];
                for h in 0..nh {
                    let qh = &qi[h * hd..][..hd];
                    let kh = &k[h / group * hd..][..hd];
                    scores[at(h, i) + t] = vdot::<AVX, E>(qh, kh) * scale;
                }
            });
            for h in 0..nh {
                for i in rows.clone() {
                    let n_keys = s.pos_start + i + 1;
                    softmax_in_place(&mut scores[at(h, i)..at(h, i) + n_keys]);
                }
            }
            for_each_visible!(self, true, rows.clone(), |i, t, v| {
                for h in 0..nh {
                    let o = &mut res[(h * s.len + i) * hd..][..hd];
                    vaxpy::<AVX, E>(scores[at(h, i) + t], &v[h / group * hd..][..hd], o);
                }
            });
        }
        res
    }

    /// `out[g·ctx + t] = (q_g · K[t][kv_head]) · scale` for every key of the
    /// sequence and each of the `G` query heads (`q` holds their G consecutive
    /// query vectors, `out` G rows of ctx), four keys at a time (bitwise what the
    /// general path computes per key and head).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn key_scores<const G: usize>(
        &self,
        kv_head: usize,
        q: &[f32],
        scale: f32,
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        // SAFETY: this function's features are what the 256-bit form needs.
        unsafe { self.key_scores_with::<G, false>(kv_head, q, scale, out, ahead) }
    }

    /// [`Self::key_scores`] with two keys per 512-bit register (the same per-key
    /// arithmetic: `dot4_heads_zmm`).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq")]
    unsafe fn key_scores_zmm<const G: usize>(
        &self,
        kv_head: usize,
        q: &[f32],
        scale: f32,
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        // SAFETY: this function's features are what the 512-bit form needs.
        unsafe { self.key_scores_with::<G, true>(kv_head, q, scale, out, ahead) }
    }

    /// The body of both key passes (`ZMM`: the 512-bit four-key dot).
    ///
    /// # Safety
    /// The caller has AVX2, FMA and F16C, and with `ZMM` AVX-512 F and DQ.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn key_scores_with<const G: usize, const ZMM: bool>(
        &self,
        kv_head: usize,
        q: &[f32],
        scale: f32,
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        let l = &self.layout;
        let (bs, kv_dim, hd) = (l.block_size, l.kv_dim(), l.head_dim);
        let ctx = out.len() / G;
        let q: [&[f32]; G] = std::array::from_fn(|g| &q[g * hd..][..hd]);
        for b in 0..ctx.div_ceil(bs) {
            let slab = l.slab_offset(self.seq.block_table[b].0 as usize, self.layer, false);
            let n = (ctx - b * bs).min(bs);
            let key = |j: usize| &self.data[slab + j * kv_dim + kv_head * hd..][..hd];
            let mut j = 0;
            while j + 4 <= n {
                if let Some(a) = ahead {
                    a.issue(LINES_PER_KEY_STEP * G);
                }
                let keys = [key(j), key(j + 1), key(j + 2), key(j + 3)];
                // SAFETY: the caller has the features of the form it asks for.
                let d = unsafe {
                    if ZMM {
                        dot4_heads_zmm(q, keys)
                    } else {
                        dot4_heads_avx2(q, keys)
                    }
                };
                for (g, d) in d.iter().enumerate() {
                    for (o, d) in out[g * ctx + b * bs + j..][..4].iter_mut().zip(d) {
                        *o = d * scale;
                    }
                }
                j += 4;
            }
            for j in j..n {
                for (g, q) in q.iter().enumerate() {
                    // SAFETY: as above (AVX2 + FMA + F16C).
                    out[g * ctx + b * bs + j] = unsafe { dot_avx2(q, key(j)) } * scale;
                }
            }
        }
    }

    /// `out[g·hd..][..hd] = Σ_t p[g·ctx + t] · V[t][kv_head]` for each of the `G`
    /// query heads (`p` holds G rows of ctx probabilities) over the sequence's
    /// keys in position order, one FMA per lane and key, `VALUE_LANES` dimensions
    /// at a time held in registers: each value chunk is loaded and widened once
    /// for all G heads.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_values<const G: usize>(
        &self,
        kv_head: usize,
        p: &[f32],
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        // SAFETY: this function's features are what 256-bit registers need.
        unsafe {
            self.weighted_values_with::<G, __m256, { VALUE_LANES / 8 }>(kv_head, p, out, ahead)
        }
    }

    /// [`Self::weighted_values`] in 512-bit registers, `VALUE_LANES_ZMM`
    /// dimensions at a time (the same FMA per lane and key).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq")]
    unsafe fn weighted_values_zmm<const G: usize>(
        &self,
        kv_head: usize,
        p: &[f32],
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        // SAFETY: this function's features are what 512-bit registers need.
        unsafe {
            self.weighted_values_with::<G, __m512, { VALUE_LANES_ZMM / 16 }>(kv_head, p, out, ahead)
        }
    }

    /// The body of both value passes: `C` registers of `V` per head hold
    /// `C · V::LANES` output dimensions over all keys.
    ///
    /// # Safety
    /// The caller has AVX2, FMA, F16C and `V`'s instruction set.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn weighted_values_with<const G: usize, V: FloatVec, const C: usize>(
        &self,
        kv_head: usize,
        p: &[f32],
        out: &mut [f32],
        ahead: &mut Option<KvLines<'a, E>>,
    ) {
        let lanes = C * V::LANES;
        let l = &self.layout;
        let (bs, kv_dim, hd) = (l.block_size, l.kv_dim(), l.head_dim);
        let ctx = p.len() / G;
        assert!(out.len() == G * hd && hd.is_multiple_of(lanes) && kv_head < l.num_kv_heads);
        // Prefetch pace: `G` lines per key and `VALUE_LANES` dimensions, as the
        // 256-bit pass has always issued them.
        let lines_per_key = G * lanes / VALUE_LANES;
        for d0 in (0..hd).step_by(lanes) {
            // SAFETY (every block below): the caller's features; `row` holds
            // `lanes` = C·LANES values and `o` as many floats.
            let mut acc = [[unsafe { V::zero() }; C]; G];
            for b in 0..ctx.div_ceil(bs) {
                let slab = l.slab_offset(self.seq.block_table[b].0 as usize, self.layer, true);
                let base = slab + kv_head * hd + d0;
                let n = (ctx - b * bs).min(bs);
                let v = &self.data[base..base + (n - 1) * kv_dim + lanes];
                for j in 0..n {
                    if let Some(a) = ahead {
                        a.issue(lines_per_key);
                    }
                    let row = &v[j * kv_dim..j * kv_dim + lanes];
                    let x: [V; C] =
                        std::array::from_fn(|c| unsafe { V::load(row.as_ptr().add(c * V::LANES)) });
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let pv = unsafe { V::splat(p[g * ctx + b * bs + j]) };
                        for (a, x) in acc.iter_mut().zip(&x) {
                            *a = unsafe { V::fma(pv, *x, *a) };
                        }
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                let o = &mut out[g * hd + d0..][..lanes];
                for (c, a) in acc.iter().enumerate() {
                    unsafe { a.store(o.as_mut_ptr().add(c * V::LANES)) };
                }
            }
        }
    }
}

/// Softmax of one score row in place: `exp(x − max)` (the vectorisable
/// [`exp_nonpos`]), summed in eight lanes (entry i into lane i mod 8, in order),
/// then scaled; the maximum is taken in lanes too (the same value in any order).
///
/// Every pass is a separate loop over whole eight-entry chunks (then the tail),
/// because that is what the compiler vectorises: written as one loop of
/// `exp`-and-add over `chunks_mut(8)`, it kept the lanes in memory and computed
/// the exponentials one at a time, a fifth of a batch-16 decode step's
/// attention (`attn_bench`). The results are bitwise those of that loop.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    const LANES: usize = 8;
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_nonpos(*x - max);
    }
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += x;
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `a·b` with the AVX2 primitive when `AVX` (only inside `run_avx2`).
#[inline(always)]
fn vdot<const AVX: bool, E: Elem>(a: &[f32], b: &[E]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: `AVX` is only true inside `run_avx2`'s AVX2+FMA function.
        return unsafe { dot_avx2(a, b) };
    }
    dot(a, b)
}

/// `y += a·x` with the AVX2 primitive when `AVX`.
#[inline(always)]
fn vaxpy<const AVX: bool, E: Elem>(a: f32, x: &[E], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `vdot`.
        return unsafe { axpy_avx2(a, x, y) };
    }
    axpy(a, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::pool::KvElem;
    use crate::BlockId;

    fn pool<E: KvElem>(head_dim: usize) -> CpuKvPool {
        let layout = KvLayout {
            num_blocks: 8,
            num_layers: 2,
            block_size: 16,
            num_kv_heads: 2,
            head_dim,
            dtype: E::DTYPE,
        };
        let mut kv = CpuKvPool::new(layout);
        for (i, x) in kv.elems_mut::<E>().unwrap().iter_mut().enumerate() {
            *x = E::from_f32(((i * 7919 % 1009) as f32 - 504.0) / 300.0);
        }
        kv
    }

    /// The one-loop softmax the vectorised passes replaced, kept as the
    /// reference for their results.
    fn softmax_one_loop(row: &mut [f32]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut lanes = [0f32; 8];
        for chunk in row.chunks_mut(8) {
            for (x, lane) in chunk.iter_mut().zip(lanes.iter_mut()) {
                *x = exp_nonpos(*x - max);
                *lane += *x;
            }
        }
        let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }

    /// Rows of every length from 1 to 70 (whole chunks, tails, both): bitwise
    /// the one-loop softmax, and within 1e-6 of an f64 softmax.
    #[test]
    fn softmax_passes_equal_the_one_loop_form() {
        for len in 1..=70 {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 9.0)
                .collect();
            let (mut got, mut want) = (row.clone(), row.clone());
            softmax_in_place(&mut got);
            softmax_one_loop(&mut want);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "length {len}");
            let max = row
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |m, x| m.max(x as f64));
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            for (g, &x) in got.iter().zip(&row) {
                let exact = (x as f64 - max).exp() / sum;
                assert!(
                    (*g as f64 - exact).abs() <= 1e-6,
                    "length {len}: {g} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn decode_rows_equal_prefill_rows_f32() {
        decode_rows_equal_prefill_rows::<f32>();
    }

    #[test]
    fn decode_rows_equal_prefill_rows_f16() {
        decode_rows_equal_prefill_rows::<half::f16>();
    }

    /// A decode row (one query, any path the CPU picks: the query heads of a KV
    /// head together, the register-held values path for head_dim 32, 64, 128) is bitwise equal to the same row computed
    /// inside a prefill chunk (of more than one `ROW_TILE`), and close to a plain
    /// f64 reference over the stored (widened) keys and values; a prefill split
    /// into two chunks is bitwise the whole one.
    fn decode_rows_equal_prefill_rows<E: KvElem>() {
        // Query heads per KV head (2 KV heads): 1, 2, 3 (computed together) and
        // 4 and 7 (in sets of up to three).
        let shapes = [
            (64, 4),
            (128, 4),
            (24, 4),
            (64, 2),
            (64, 6),
            (32, 8),
            (64, 14),
        ];
        for (hd, n_heads) in shapes {
            let kv = pool::<E>(hd);
            let data = kv.elems::<E>().unwrap();
            let (len, layer) = (100, 1);
            assert!(len > ROW_TILE + 16, "the chunk spans several row tiles");
            let table: Vec<BlockId> = [5, 1, 6, 0, 7, 2, 3].into_iter().map(BlockId).collect();
            let q: Vec<f32> = (0..len * n_heads * hd)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
                .collect();
            let mut all = vec![0f32; q.len()];
            let seq = AttnSeq {
                row_start: 0,
                len,
                pos_start: 0,
                block_table: table.clone(),
            };
            paged_attention(&q, &kv, layer, &[seq], n_heads, &mut all);
            let qd = n_heads * hd;
            // The same prompt in two chunks (20 rows, then 80 from position 20).
            let mut split = vec![0f32; q.len()];
            for (start, n) in [(0, 20), (20, 80)] {
                let seq = AttnSeq {
                    row_start: 0,
                    len: n,
                    pos_start: start,
                    block_table: table.clone(),
                };
                let rows = start * qd..(start + n) * qd;
                paged_attention(
                    &q[rows.clone()],
                    &kv,
                    layer,
                    &[seq],
                    n_heads,
                    &mut split[rows],
                );
            }
            assert!(
                split
                    .iter()
                    .zip(&all)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "hd {hd} heads {n_heads}: chunked prefill differs from the whole"
            );
            for i in [0, 1, 15, 16, 17, 39, 63, 64, 65, 99] {
                let mut one = vec![0f32; qd];
                let seq = AttnSeq {
                    row_start: 0,
                    len: 1,
                    pos_start: i,
                    block_table: table.clone(),
                };
                paged_attention(
                    &q[i * qd..(i + 1) * qd],
                    &kv,
                    layer,
                    &[seq],
                    n_heads,
                    &mut one,
                );
                for (c, (a, b)) in one.iter().zip(&all[i * qd..(i + 1) * qd]).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "hd {hd} heads {n_heads} row {i} col {c}: {a} vs {b}"
                    );
                }
                // f64 reference for this row.
                let l = kv.layout;
                for h in 0..n_heads {
                    let g = h / (n_heads / l.num_kv_heads);
                    let at = |t: usize, v: bool| {
                        let slab = l.slab_offset(table[t / 16].0 as usize, layer, v);
                        slab + (t % 16) * l.kv_dim() + g * hd
                    };
                    let qh = &q[i * qd + h * hd..][..hd];
                    let s: Vec<f64> = (0..=i)
                        .map(|t| {
                            let k = &data[at(t, false)..][..hd];
                            qh.iter()
                                .zip(k)
                                .map(|(a, b)| *a as f64 * b.to_f32() as f64)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for d in 0..hd {
                        let want: f64 = (0..=i)
                            .map(|t| (s[t] - m).exp() / z * data[at(t, true) + d].to_f32() as f64)
                            .sum();
                        let got = one[h * hd + d] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "hd {hd} row {i} head {h} d {d}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
