//! Times the CPU paged attention of one decode step for a batch of sequences.
//!
//! `cargo run --release -p pdserve-engine --example attn_bench [-- SEQS CTX] [f32] [evict | warm]`
//! (default 16 sequences of 80 cached tokens, SmolLM2-135M geometry: 9 query
//! heads, 3 KV heads, head_dim 64, 16-token blocks, 30 layers, 128 MB pool;
//! f16 KV unless `f32` is given; `evict` streams the weights' worth of memory
//! between layers, so the KV is read from memory as in a real step; `warm` runs
//! each layer's attention once untimed first, so the timed run finds its KV in
//! the caches: the kernel's compute alone).

use std::time::Instant;

use pdserve_engine::backend::cpu::attention::paged_attention;
use pdserve_engine::backend::AttnSeq;
use pdserve_engine::kv::pool::{CpuKvPool, KvDtype, KvElem, KvLayout};
use pdserve_engine::BlockId;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (seqs, ctx) = (
        args.first().copied().unwrap_or(16),
        args.get(1).copied().unwrap_or(80),
    );
    let f32_kv = std::env::args().any(|a| a == "f32");
    let (layers, n_heads, n_kv, hd, bs) = (30, 9, 3, 64, 16);
    let mut layout = KvLayout {
        num_blocks: 1,
        num_layers: layers,
        block_size: bs,
        num_kv_heads: n_kv,
        head_dim: hd,
        dtype: if f32_kv { KvDtype::F32 } else { KvDtype::F16 },
    };
    layout.num_blocks = (128 << 20) / layout.block_bytes();
    let mut kv = CpuKvPool::new(layout);
    fn fill<E: KvElem>(kv: &mut CpuKvPool) {
        for (i, x) in kv.elems_mut::<E>().unwrap().iter_mut().enumerate() {
            *x = E::from_f32(((i % 97) as f32 - 48.0) / 97.0);
        }
    }
    if f32_kv {
        fill::<f32>(&mut kv)
    } else {
        fill::<half::f16>(&mut kv)
    }
    // Blocks handed out round-robin across sequences, as a busy allocator would.
    let per_seq = ctx.div_ceil(bs);
    let batch: Vec<AttnSeq> = (0..seqs)
        .map(|s| AttnSeq {
            row_start: s,
            len: 1,
            pos_start: ctx - 1,
            block_table: (0..per_seq)
                .map(|b| BlockId((b * seqs + s) as u32))
                .collect(),
        })
        .collect();
    let q: Vec<f32> = (0..seqs * n_heads * hd)
        .map(|i| (i % 13) as f32 / 13.0)
        .collect();
    let mut out = vec![0f32; q.len()];
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    // With `evict`, a 96 MB buffer (the model's weights) is read between layers,
    // a thirtieth per layer as the forward pass does, so that the KV comes from
    // memory as it does in a real step; only the attention calls are timed.
    let evict = std::env::args().any(|a| a == "evict");
    let warm = std::env::args().any(|a| a == "warm");
    let weights = vec![1u64; if evict { (96 << 20) / 8 } else { 0 }];
    let per_layer = weights.len() / layers;
    let mut best = f64::INFINITY;
    // Inside the pool, as the engine's forward pass runs.
    rayon::scope(|_| {
        for _ in 0..reps {
            let mut took = 0.0;
            for layer in 0..layers {
                if evict {
                    let part = &weights[layer * per_layer..(layer + 1) * per_layer];
                    std::hint::black_box(part.iter().fold(0u64, |a, &v| a.wrapping_add(v)));
                }
                if warm {
                    paged_attention(&q, &kv, layer, &batch, n_heads, &mut out);
                }
                let t = Instant::now();
                paged_attention(&q, &kv, layer, &batch, n_heads, &mut out);
                took += t.elapsed().as_secs_f64();
            }
            best = best.min(took);
        }
    });
    let bytes = (seqs * ctx * layers * 2 * n_kv * hd * layout.elem_bytes()) as f64;
    println!(
        "{seqs} seqs x {ctx} tokens, {layers} layers: {:.2} ms per step ({:.2} GB/s of KV)",
        best * 1e3,
        bytes / best / 1e9
    );
}
