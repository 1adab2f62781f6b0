//! Matmul tests: integer path and exact path against an f64 reference, SIMD kernels
//! against the portable ones, the activation quantizers against each other, and
//! every parallel split (n = 1, a few rows, many rows).

use super::act::{quantize_acts_scalar, QActs};
use super::matmul::{int_kernel, matmul_int, portable_int_kernel};
use super::tests::Rng;
use super::*;

/// f64 reference `y = x·Wᵀ` over the dequantized weights; returns y.
fn reference(m: &QMatrix, x: &[f32], n: usize) -> Vec<f64> {
    let w = m.to_f32();
    let mut y = vec![0f64; n * m.rows];
    for i in 0..n {
        for r in 0..m.rows {
            y[i * m.rows + r] = (0..m.cols)
                .map(|c| w[r * m.cols + c] as f64 * x[i * m.cols + c] as f64)
                .sum();
        }
    }
    y
}

/// Relative error ‖got − want‖ / ‖want‖, plus the worst element for the message.
fn rel_err(got: &[f32], want: &[f64]) -> (f64, String) {
    let mut num = 0f64;
    let mut den = 0f64;
    let mut worst = (0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        num += d * d;
        den += w * w;
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let rel = (num / den.max(1e-30)).sqrt();
    let i = worst.1;
    (
        rel,
        format!("worst element {i}: got {} want {}", got[i], want[i]),
    )
}

const MATMUL_TYPES: [DType; 15] = DType::ALL;

#[test]
fn matmul_matches_f64_reference() {
    let mut rng = Rng::new(5);
    // cols multiple of 256 so every type is allowed; rows not a multiple of 4.
    let (rows, cols) = (37, 512);
    let w = rng.vec(rows * cols, 0.3);
    for dtype in MATMUL_TYPES {
        let rows_m = QMatrix::quantize_from_f32(dtype, rows, cols, &w);
        for m in with_interleaved(rows_m) {
            let dtype = format!("{dtype} {:?}", m.layout);
            for n in [1, 2, 5, 16, 40] {
                let x = rng.vec(n * cols, 1.0);
                let want = reference(&m, &x, n);

                let mut y = vec![f32::NAN; n * rows];
                m.matmul_exact(&x, n, &mut y);
                let (rel, msg) = rel_err(&y, &want);
                assert!(rel <= 1e-5, "{dtype} n={n} exact: rel {rel}; {msg}");

                let mut y = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut y);
                let (rel, msg) = rel_err(&y, &want);
                let bound = if m.dtype.is_quantized() { 1e-2 } else { 1e-5 };
                assert!(rel <= bound, "{dtype} n={n} matmul: rel {rel}; {msg}");
            }
        }
    }
}

/// The matrix, plus its interleaved form where its type has one.
pub(super) fn with_interleaved(m: QMatrix) -> Vec<QMatrix> {
    let il = m.interleaved();
    std::iter::once(m).chain(il).collect()
}

#[test]
fn simd_kernels_match_portable() {
    let mut rng = Rng::new(9);
    let (rows, cols) = (13, 768);
    let w = rng.vec(rows * cols, 0.3);
    for dtype in MATMUL_TYPES {
        let (Some(fast), Some(port)) = (int_kernel(dtype), portable_int_kernel(dtype)) else {
            continue;
        };
        let m = QMatrix::quantize_from_f32(dtype, rows, cols, &w);
        for n in [1, 4, 7] {
            let x = rng.vec(n * cols, 1.0);
            let mut a = vec![0f32; n * rows];
            let mut b = vec![0f32; n * rows];
            matmul_int(&m, &fast, &x, n, &mut a);
            matmul_int(&m, &port, &x, n, &mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                let tol = 1e-5 * (1.0 + q.abs());
                assert!(
                    (p - q).abs() <= tol,
                    "{dtype} n={n} elem {i}: simd {p} portable {q}"
                );
            }
        }
    }
}

#[test]
fn act_quantizers_agree() {
    let mut rng = Rng::new(21);
    // 40 rows × 512 values is past `QUANTIZE_PARALLEL_FROM`: split by rows.
    for (rows, block) in [(3, 32), (3, 256), (40, 32), (40, 256)] {
        let mut x = rng.vec(rows * 512, 2.0);
        x[5] = 0.0;
        x[100..132].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let fast = QActs::quantize(&x, 512, block);
        let mut slow = QActs::quantize(&x[..512], 512, block);
        slow.qs.resize(x.len(), 0);
        slow.ds.resize(2 * x.len() / block, 0.0);
        slow.bsums.resize(x.len() / 16, 0);
        quantize_acts_scalar(&x, &mut slow.as_mut());
        assert_eq!(fast.qs, slow.qs);
        assert_eq!(fast.ds, slow.ds);
        assert_eq!(fast.bsums, slow.bsums);
        // And the quantization itself is accurate.
        for (i, &v) in x.iter().enumerate() {
            let d = fast.ds[2 * (i / block)];
            assert!((fast.qs[i] as f32 * d - v).abs() <= d * 0.5 + 1e-6);
        }
    }
}

#[test]
fn large_parallel_shapes() {
    // Big enough to take every parallel split; compare integer path to exact path.
    let mut rng = Rng::new(1);
    let (rows, cols) = (300, 576);
    let w = rng.vec(rows * cols, 0.2);
    for dtype in [DType::Q4_1, DType::Q8_0, DType::F16] {
        let m = QMatrix::quantize_from_f32(dtype, rows, cols, &w);
        for n in [1, 3, 40] {
            let x = rng.vec(n * cols, 1.0);
            let mut a = vec![0f32; n * rows];
            let mut b = vec![0f32; n * rows];
            m.matmul(&x, n, &mut a);
            m.matmul_exact(&x, n, &mut b);
            let want: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let (rel, msg) = rel_err(&a, &want);
            assert!(rel <= 1e-2, "{dtype} n={n}: rel {rel}; {msg}");
        }
    }
}

#[test]
fn degenerate_shapes() {
    let m = QMatrix::from_f32(0, 4, &[]);
    let mut y: Vec<f32> = vec![];
    m.matmul(&[1.0; 8], 2, &mut y);
    let m = QMatrix::from_f32(3, 0, &[]);
    let mut y = vec![f32::NAN; 6];
    m.matmul(&[], 2, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
    let m = QMatrix::quantize_from_f32(DType::Q4_0, 2, 0, &[]);
    let mut y = vec![f32::NAN; 2];
    m.matmul(&[], 1, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn matmul_many_equals_separate_calls() {
    let mut rng = Rng::new(33);
    let cols = 576;
    for dtype in [DType::Q4_1, DType::F16] {
        let ms: Vec<QMatrix> = [576usize, 192, 192]
            .iter()
            .map(|&r| QMatrix::quantize_from_f32(dtype, r, cols, &rng.vec(r * cols, 0.2)))
            .collect();
        for n in [1, 3, 20] {
            let x = rng.vec(n * cols, 1.0);
            let mut sep: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; n * m.rows]).collect();
            for (m, y) in ms.iter().zip(sep.iter_mut()) {
                m.matmul(&x, n, y);
            }
            let mut fused: Vec<Vec<f32>> = ms.iter().map(|m| vec![f32::NAN; n * m.rows]).collect();
            let refs: Vec<&QMatrix> = ms.iter().collect();
            let mut outs: Vec<&mut [f32]> = fused.iter_mut().map(|v| v.as_mut_slice()).collect();
            QMatrix::matmul_many(&refs, &x, n, &mut outs);
            assert_eq!(sep, fused, "{dtype} n={n}");
        }
    }
}

/// Bitwise comparison of two outputs, with a message naming the first difference.
fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what} col {c}: batched {g} alone {w}"
        );
    }
}

/// Batch invariance: every output row of a matmul over n activation rows is
/// bitwise equal to the matmul of that activation row alone, for every dtype and
/// every n (so whatever kernel, tile and thread chunk computes it) — with the
/// default pool, with a 3-thread pool (other chunk boundaries), and through
/// `matmul_many`.
#[test]
fn rows_are_batch_invariant() {
    let mut rng = Rng::new(77);
    let (rows, rows2, cols) = (70, 37, 512);
    let pool3 = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for dtype in DType::ALL {
        let m = QMatrix::quantize_from_f32(dtype, rows, cols, &rng.vec(rows * cols, 0.3));
        let m2 = QMatrix::quantize_from_f32(dtype, rows2, cols, &rng.vec(rows2 * cols, 0.3));
        let pairs = match (m.interleaved(), m2.interleaved()) {
            (Some(a), Some(b)) => vec![(m, m2), (a, b)],
            _ => vec![(m, m2)],
        };
        for (m, m2) in pairs {
            let dtype = format!("{dtype} {:?}", m.layout);
            for n in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 24, 33] {
                let x = rng.vec(n * cols, 1.0);
                let mut y = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut y);
                let mut y3 = vec![f32::NAN; n * rows];
                pool3.install(|| m.matmul(&x, n, &mut y3));
                let mut many = [vec![f32::NAN; n * rows], vec![f32::NAN; n * rows2]];
                {
                    let mut outs: Vec<&mut [f32]> =
                        many.iter_mut().map(|v| v.as_mut_slice()).collect();
                    QMatrix::matmul_many(&[&m, &m2], &x, n, &mut outs);
                }
                for i in 0..n {
                    let xi = &x[i * cols..(i + 1) * cols];
                    let mut alone = vec![f32::NAN; rows];
                    m.matmul(xi, 1, &mut alone);
                    let mut alone2 = vec![f32::NAN; rows2];
                    m2.matmul(xi, 1, &mut alone2);
                    let row = |v: &[f32], r: usize| v[i * r..(i + 1) * r].to_vec();
                    let what = format!("{dtype} n={n} row {i}");
                    assert_bits_eq(&row(&y, rows), &alone, &format!("{what} matmul"));
                    assert_bits_eq(&row(&y3, rows), &alone, &format!("{what} 3 threads"));
                    assert_bits_eq(&row(&many[0], rows), &alone, &format!("{what} many[0]"));
                    assert_bits_eq(&row(&many[1], rows2), &alone2, &format!("{what} many[1]"));
                }
            }
        }
    }
}

/// The portable integer kernels are batch invariant too (their four-row kernels
/// must agree bitwise with the one-row ones).
#[test]
fn portable_rows_are_batch_invariant() {
    let mut rng = Rng::new(78);
    let (rows, cols) = (21, 512);
    for dtype in DType::ALL {
        let Some(port) = portable_int_kernel(dtype) else {
            continue;
        };
        let m = QMatrix::quantize_from_f32(dtype, rows, cols, &rng.vec(rows * cols, 0.3));
        for n in [2, 5, 9] {
            let x = rng.vec(n * cols, 1.0);
            let mut y = vec![f32::NAN; n * rows];
            matmul_int(&m, &port, &x, n, &mut y);
            for i in 0..n {
                let mut alone = vec![f32::NAN; rows];
                matmul_int(&m, &port, &x[i * cols..(i + 1) * cols], 1, &mut alone);
                let what = format!("{dtype} n={n} row {i} portable");
                assert_bits_eq(&y[i * rows..(i + 1) * rows], &alone, &what);
            }
        }
    }
}
