//! Causal paged attention on the CPU: each (sequence, query head) pair is one task;
//! keys and values are read from the sequence's KV blocks (layout in `kv::pool`).
//!
//! For a query at absolute position p, keys 0..=p are used, in position order, so the
//! result does not depend on how the prompt was chunked or batched.

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
    let l = &kv.layout;
    let hd = l.head_dim;
    let q_dim = n_heads * hd;
    let group = n_heads / l.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();

    // One task per (sequence, head): computes all of that head's query rows.
    let tasks: Vec<(usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(si, _)| (0..n_heads).map(move |h| (si, h)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(si, h)| {
            let s = &seqs[si];
            let g = h / group;
            let ctx = s.pos_start + s.len;
            let mut res = vec![0f32; s.len * hd];
            let mut scores = vec![0f32; ctx];
            for i in 0..s.len {
                let qrow = &q[(s.row_start + i) * q_dim + h * hd..][..hd];
                let n_keys = s.pos_start + i + 1;
                let mut max = f32::NEG_INFINITY;
                for (t, sc) in scores[..n_keys].iter_mut().enumerate() {
                    let k = key(kv, layer, s, t, g, false);
                    *sc = dot(qrow, k) * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in &mut scores[..n_keys] {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let o = &mut res[i * hd..(i + 1) * hd];
                for (t, sc) in scores[..n_keys].iter().enumerate() {
                    axpy(*sc / sum, key(kv, layer, s, t, g, true), o);
                }
            }
            res
        })
        .collect();
    for (&(si, h), res) in tasks.iter().zip(results) {
        let s = &seqs[si];
        for i in 0..s.len {
            out[(s.row_start + i) * q_dim + h * hd..][..hd]
                .copy_from_slice(&res[i * hd..(i + 1) * hd]);
        }
    }
}

/// Key (or value) vector of kv head `g` at position `t` of sequence `s`.
#[inline]
fn key<'a>(kv: &'a CpuKvPool, layer: usize, s: &AttnSeq, t: usize, g: usize, v: bool) -> &'a [f32] {
    let l = &kv.layout;
    let block = s.block_table[t / l.block_size].0 as usize;
    let off = l.slab_offset(block, layer, v) + (t % l.block_size) * l.kv_dim() + g * l.head_dim;
    &kv.data[off..off + l.head_dim]
}
