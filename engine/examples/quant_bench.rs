//! Matmul benchmark for the SmolLM2-135M shapes.
//!
//! `cargo run --release -p pdserve-engine --example quant_bench [-- quick]`
//!
//! Reports: memory read bandwidth (the decode floor), per-shape matmul time at n=1
//! (GB/s of weights streamed) and n=512 (GFLOP/s), and — when the real GGUF is in
//! `~/.cache/pdserve/models/` — the time of all 211 weight matmuls of one decode
//! step and of a 512-token prefill over the real tensors, in the CPU backend's
//! interleaved layout (`rows` on the command line: the file's row-major layout).
//! Timings are the best of several repetitions (the machine is shared).

use std::time::Instant;

use pdserve_engine::backend::cpu::CpuBackend;
use pdserve_engine::backend::Backend;
use pdserve_engine::gguf::GgufFile;
use pdserve_engine::quant::{DType, QMatrix};
use pdserve_engine::storage::Storage;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 0.5
        })
        .collect()
}

/// Read bandwidth in GB/s of summing a buffer much larger than the L3 cache, with
/// one thread and with the whole rayon pool.
fn bandwidth() -> (f64, f64) {
    use rayon::prelude::*;
    let n = 256 << 20; // 256 MiB
    let buf = vec![1u64; n / 8];
    let one = best_of(5, || {
        let s: u64 = buf.iter().fold(0u64, |a, &v| a.wrapping_add(v));
        std::hint::black_box(s);
    });
    let all = best_of(5, || {
        let s: u64 = buf
            .par_chunks(1 << 20)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .sum();
        std::hint::black_box(s);
    });
    (n as f64 / one / 1e9, n as f64 / all / 1e9)
}

const SHAPES: [(&str, usize, usize); 5] = [
    ("576->576 (q,o)", 576, 576),
    ("576->192 (k,v)", 192, 576),
    ("576->1536 (gate,up)", 1536, 576),
    ("1536->576 (down)", 576, 1536),
    ("576->49152 (lm_head)", 49152, 576),
];

fn bench_shapes(dtypes: &[DType], reps: usize) {
    println!(
        "\n{:<22} {:>5} {:>6} {:>10} {:>8} {:>10} {:>9}",
        "shape", "type", "n", "time", "GB/s", "GFLOP/s", ""
    );
    for &dtype in dtypes {
        for (name, rows, cols) in SHAPES {
            let w = rand_vec(rows * cols, rows as u64 * 31 + cols as u64);
            let m = QMatrix::quantize_from_f32(dtype, rows, cols, &w);
            // Enough copies that one pass over them does not fit in the L3 cache
            // (decode streams the whole model from memory every token).
            let copies = (96usize << 20).div_ceil(m.data.len()).clamp(1, 64);
            let ms: Vec<QMatrix> = (0..copies)
                .map(|_| {
                    QMatrix::new(dtype, rows, cols, Storage::from_bytes(m.data.bytes())).unwrap()
                })
                .collect();
            for n in [1usize, 512] {
                let x = rand_vec(n * cols, 7);
                let mut y = vec![0f32; n * rows];
                let mut i = 0;
                let reps_n = if n == 1 { reps * copies } else { reps.min(5) };
                let t = best_of(reps_n, || {
                    let m = if n == 1 { &ms[i % copies] } else { &ms[0] };
                    i += 1;
                    m.matmul(&x, n, &mut y);
                });
                let gbs = m.data.len() as f64 / t / 1e9;
                let gflops = 2.0 * (n * rows * cols) as f64 / t / 1e9;
                println!(
                    "{name:<22} {:>5} {n:>6} {:>8.1}us {gbs:>8.2} {gflops:>10.2}",
                    dtype.name(),
                    t * 1e6
                );
            }
        }
    }
}

/// One decode step of `n` sequences with Q/K/V and gate/up fused through
/// `matmul_many` (x: n×max_cols, y: n×max_rows, yh: n×head.rows).
fn fused_step(
    mats: &[QMatrix],
    head: &QMatrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    yh: &mut [f32],
) {
    let max_rows = mats.iter().map(|m| m.rows).max().unwrap_or(0);
    let mut y2 = vec![0f32; n * max_rows];
    let mut y3 = vec![0f32; n * max_rows];
    for l in mats.chunks_exact(7) {
        let (q, k, v) = (&l[0], &l[1], &l[2]);
        QMatrix::matmul_many(
            &[q, k, v],
            &x[..n * q.cols],
            n,
            &mut [
                &mut y[..n * q.rows],
                &mut y2[..n * k.rows],
                &mut y3[..n * v.rows],
            ],
        );
        l[3].matmul(&x[..n * l[3].cols], n, &mut y[..n * l[3].rows]);
        let (g, u) = (&l[4], &l[5]);
        QMatrix::matmul_many(
            &[g, u],
            &x[..n * g.cols],
            n,
            &mut [&mut y[..n * g.rows], &mut y2[..n * u.rows]],
        );
        l[6].matmul(&x[..n * l[6].cols], n, &mut y[..n * l[6].rows]);
    }
    head.matmul(&x[..n * head.cols], n, &mut yh[..n * head.rows]);
}

/// All weight matmuls of the real model: one decode step (n=1) and a prefill of
/// `n_prefill` tokens (lm_head on the last token only, as a server does).
fn bench_model(path: &std::path::Path, reps: usize, n_prefill: usize) {
    let f = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            println!("\n(model bench skipped: {e})");
            return;
        }
    };
    let layers = f
        .get("llama.block_count")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    let mut mats = vec![];
    for l in 0..layers {
        for t in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            mats.push(f.matrix(&format!("blk.{l}.{t}.weight")).expect("tensor"));
        }
    }
    mats.push(
        f.matrix("output.weight")
            .or_else(|_| f.matrix("token_embd.weight"))
            .expect("lm head"),
    );
    let mut mats = as_cpu(mats);
    let head = mats.pop().expect("lm head");
    let bytes: usize = mats.iter().map(|m| m.data.len()).sum::<usize>() + head.data.len();
    let flops: usize = mats.iter().map(|m| 2 * m.rows * m.cols).sum();
    let head_flops = 2 * head.rows * head.cols;
    println!(
        "\nreal model {}: {} layer matmuls + lm_head {} {}x{}; {:.1} MB of weights per token",
        path.display(),
        mats.len(),
        head.dtype,
        head.rows,
        head.cols,
        bytes as f64 / 1e6
    );
    let max_cols = mats
        .iter()
        .map(|m| m.cols)
        .max()
        .unwrap_or(0)
        .max(head.cols);
    let max_rows = mats.iter().map(|m| m.rows).max().unwrap_or(0);
    let x = rand_vec(n_prefill * max_cols, 3);
    let mut y = vec![0f32; n_prefill * max_rows.max(1)];
    let mut yh = vec![0f32; batch_arg().unwrap_or(1) * head.rows];
    if let Some(nb) = batch_arg() {
        // Batched decode: every matmul (lm_head too) at n = nb, inside the pool.
        let t_cold = best_of(reps, || {
            rayon::scope(|_| fused_step(&mats, &head, &x, nb, &mut y, &mut yh))
        });
        let t = best_of(reps, || {
            in_forward_pass(|| fused_step(&mats, &head, &x, nb, &mut y, &mut yh))
        });
        println!(
            "decode step of {nb} sequences inside the pool without keepers: {:.2} ms",
            t_cold * 1e3
        );
        let t_head = best_of(reps, || {
            head.matmul(&x[..nb * head.cols], nb, &mut yh[..nb * head.rows])
        });
        println!(
            "decode step of {nb} sequences as a forward pass runs it (in the pool, \
             keepers on), fused: {:.2} ms -> {:.1} tok/s, \
             {:.1} GMAC/s (lm_head alone {:.2} ms)",
            t * 1e3,
            nb as f64 / t,
            ((flops + head_flops) / 2 * nb) as f64 / t / 1e9,
            t_head * 1e3
        );
        return;
    }
    let decode = best_of(reps, || {
        for m in &mats {
            m.matmul(&x[..m.cols], 1, &mut y[..m.rows]);
        }
        head.matmul(&x[..head.cols], 1, &mut yh[..head.rows]);
    });
    // The same step with Q/K/V and gate/up fused through `matmul_many`.
    let fused = best_of(reps, || fused_step(&mats, &head, &x, 1, &mut y, &mut yh));
    println!(
        "decode step with fused qkv / gate+up: {:.2} ms -> {:.1} tok/s",
        fused * 1e3,
        1.0 / fused
    );
    // The same step run from inside the pool (as a forward pass wrapped in
    // `rayon::scope` / `ThreadPool::install` would), so no matmul pays a
    // cross-thread injection and wake-up.
    let in_pool = best_of(reps, || {
        rayon::scope(|_| {
            for m in &mats {
                m.matmul(&x[..m.cols], 1, &mut y[..m.rows]);
            }
            head.matmul(&x[..head.cols], 1, &mut yh[..head.rows]);
        })
    });
    println!(
        "decode step inside the rayon pool: {:.2} ms -> {:.1} tok/s",
        in_pool * 1e3,
        1.0 / in_pool
    );
    let both = best_of(reps, || {
        rayon::scope(|_| fused_step(&mats, &head, &x, 1, &mut y, &mut yh))
    });
    let warm = best_of(reps, || {
        in_forward_pass(|| fused_step(&mats, &head, &x, 1, &mut y, &mut yh))
    });
    println!(
        "decode step as a forward pass runs it (in the pool, keepers on), fused: {:.2} ms",
        warm * 1e3
    );
    println!(
        "decode step inside the pool, fused qkv / gate+up: {:.2} ms -> {:.1} tok/s, {:.2} GB/s",
        both * 1e3,
        1.0 / both,
        bytes as f64 / both / 1e9
    );
    let t_head = best_of(reps, || head.matmul(&x[..head.cols], 1, &mut yh));
    println!(
        "decode step (weights only): {:.2} ms -> {:.1} tok/s, {:.2} GB/s (lm_head alone {:.2} ms)",
        decode * 1e3,
        1.0 / decode,
        bytes as f64 / decode / 1e9,
        t_head * 1e3
    );
    let n = n_prefill;
    let prefill = best_of(reps.min(3), || {
        for m in &mats {
            m.matmul(&x[..n * m.cols], n, &mut y[..n * m.rows]);
        }
        head.matmul(&x[..head.cols], 1, &mut yh[..head.rows]);
    });
    println!(
        "prefill {n} tokens (weights only): {:.1} ms -> {:.1} tok/s, {:.1} GFLOP/s",
        prefill * 1e3,
        n as f64 / prefill,
        (flops * n + head_flops) as f64 / prefill / 1e9
    );
}

/// The matrices as the CPU backend holds them: interleaved where their type
/// allows, in one arena on huge pages, unless `rows` is on the command line.
fn as_cpu(mats: Vec<QMatrix>) -> Vec<QMatrix> {
    if std::env::args().any(|a| a == "rows") {
        return mats;
    }
    let refs: Vec<&QMatrix> = mats.iter().collect();
    QMatrix::interleaved_all(&refs).expect("weights arena")
}

/// Runs `f` the way the CPU backend runs a forward pass: on a pool worker, with
/// the other workers kept awake.
fn in_forward_pass<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    <CpuBackend as Backend>::run(f)
}

/// `batchN` on the command line: only time an N-sequence decode step.
fn batch_arg() -> Option<usize> {
    std::env::args().find_map(|a| a.strip_prefix("batch")?.parse().ok())
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let reps = if quick { 3 } else { 10 };
    println!("rayon threads: {}", rayon::current_num_threads());
    if batch_arg().is_some() {
        if let Some(p) = pdserve_engine::fixtures::real_asset("SmolLM2-135M-Instruct.Q4_1.gguf") {
            bench_model(&p, reps, 512);
        }
        return;
    }
    let (one, all) = bandwidth();
    println!("memory read bandwidth: {one:.2} GB/s (1 thread), {all:.2} GB/s (all threads)");
    let model_mb = 96.5;
    println!(
        "decode floor for SmolLM2-135M Q4_1 (~{model_mb} MB/token): {:.0} tok/s",
        all * 1e3 / model_mb
    );
    if let Some(path) = pdserve_engine::fixtures::real_asset("SmolLM2-135M-Instruct.Q4_1.gguf") {
        bench_model(&path, reps, 512);
    }
    if !std::env::args().any(|a| a == "model") {
        bench_shapes(&[DType::Q4_1, DType::Q8_0], reps);
    }
}
