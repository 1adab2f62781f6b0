//! The interleaved layout: byte permutation round trips, rows read back, and the
//! SIMD group kernels (each this CPU has) bitwise equal to the portable one (the definition of the
//! arithmetic), including the extreme quants and activations.

use super::act::QActs;
use super::interleave::{self, GROUP};
use super::tests::Rng;
use super::*;

const TYPES: [DType; 3] = [DType::Q4_0, DType::Q4_1, DType::Q8_0];

/// All of a model's matrices at once: each interleavable one is the same bytes as
/// its own interleaved copy, in one arena whose regions do not overlap; the others
/// (F32, Q4_K here) come back as they were.
#[test]
fn interleaved_all_equals_one_by_one() {
    let mut rng = Rng::new(37);
    let shapes = [
        (DType::Q4_1, 21, 96),
        (DType::F32, 3, 40),
        (DType::Q8_0, 8, 64),
        (DType::Q4_K, 2, 256),
        (DType::Q4_0, 16, 32),
    ];
    let mats: Vec<QMatrix> = shapes
        .iter()
        .map(|&(d, r, c)| QMatrix::quantize_from_f32(d, r, c, &rng.vec(r * c, 0.5)))
        .collect();
    let refs: Vec<&QMatrix> = mats.iter().collect();
    let all = QMatrix::interleaved_all(&refs).expect("arena");
    assert_eq!(all.len(), mats.len());
    let mut spans = Vec::new();
    for (m, got) in mats.iter().zip(&all) {
        match m.interleaved() {
            Some(want) => {
                assert_eq!(got.layout, Layout::Interleaved8);
                assert_eq!(got.data.bytes(), want.data.bytes(), "{}", m.dtype);
                assert!(matches!(got.data, crate::storage::Storage::Arena { .. }));
                let at = got.data.bytes().as_ptr() as usize;
                spans.push(at..at + got.data.len());
            }
            None => {
                assert_eq!(got.layout, m.layout);
                assert_eq!(got.data.bytes(), m.data.bytes(), "{}", m.dtype);
            }
        }
    }
    spans.sort_by_key(|r| r.start);
    assert!(
        spans.windows(2).all(|w| w[0].end <= w[1].start),
        "regions overlap"
    );
    // No matrix to copy: an empty arena.
    assert!(QMatrix::interleaved_all(&[]).expect("empty").is_empty());
}

#[test]
fn interleave_round_trips_every_row() {
    let mut rng = Rng::new(31);
    for dtype in TYPES {
        for rows in [1, 7, 8, 9, 21] {
            let cols = 96;
            let m = QMatrix::quantize_from_f32(dtype, rows, cols, &rng.vec(rows * cols, 0.5));
            let il = m.interleaved().expect("supported type");
            assert_eq!(il.layout, Layout::Interleaved8);
            assert_eq!(il.data.len(), rows.next_multiple_of(GROUP) * m.row_bytes());
            assert!(il.interleaved().is_none(), "interleaving twice");
            let rb = m.row_bytes();
            let mut back = vec![0u8; rb];
            let mut a = vec![0f32; cols];
            let mut b = vec![0f32; cols];
            for r in 0..rows {
                interleave::row_bytes_of(dtype, il.data.bytes(), r, rb, &mut back);
                assert_eq!(back, m.row_data(r), "{dtype} rows={rows} row {r} bytes");
                m.dequantize_row(r, &mut a);
                il.dequantize_row(r, &mut b);
                assert_eq!(a, b, "{dtype} rows={rows} row {r} values");
            }
            assert_eq!(m.to_f32(), il.to_f32());
        }
    }
    for dtype in DType::ALL {
        if !TYPES.contains(&dtype) {
            let m = QMatrix::quantize_from_f32(dtype, 2, 256, &rng.vec(512, 0.5));
            assert!(
                m.interleaved().is_none(),
                "{dtype} has no interleaved layout"
            );
        }
    }
}

/// Raw bytes of three groups with every quant byte and scale random (so Q8_0 quants hit
/// −128 and Q4 nibbles hit 0 and 15), activations at the ±127 extremes.
#[test]
fn simd_group_kernels_match_portable_bitwise() {
    let names: Vec<_> = interleave::simd_kernels(DType::Q4_0)
        .iter()
        .map(|k| k.0)
        .collect();
    if names.is_empty() {
        eprintln!("skipped: this CPU has no SIMD group kernel to check");
        return;
    }
    eprintln!("checking the {names:?} kernels against the portable one");
    let mut rng = Rng::new(32);
    // One group, an odd count (pairs plus one) and an even one: the 512-bit
    // kernels take groups in pairs and hand an odd last one to the 256-bit kernel.
    for (dtype, ng) in TYPES.into_iter().flat_map(|t| [(t, 1), (t, 3), (t, 4)]) {
        let nb = 5;
        let group = random_groups(&mut rng, dtype, nb, ng);
        // Up to 4 rows: one set of the kernel's; 5 to 9: several sets per call.
        for n in 1..=9 {
            let mut x = rng.vec(n * 32 * nb, 1.0);
            x[0] = 40.0; // one block's amax: its other values shrink to small quants
            x[n * 32 * nb - 1] = -40.0;
            let acts = QActs::quantize(&x, 32 * nb, 32);
            let rows: Vec<_> = (0..n).map(|i| acts.row(i)).collect();
            // Output rows longer than the groups need: the kernels must write
            // exactly 8 floats per group and leave the rest alone.
            let width = ng * GROUP + 3;
            let mut port = vec![f32::NAN; n * width];
            let mut port_rows: Vec<&mut [f32]> = port.chunks_exact_mut(width).collect();
            interleave::portable_kernel(dtype)(&group, &rows, &mut port_rows);
            for (name, kernel) in interleave::simd_kernels(dtype) {
                let mut fast = vec![f32::NAN; n * width];
                let mut fast_rows: Vec<&mut [f32]> = fast.chunks_exact_mut(width).collect();
                kernel(&group, &rows, &mut fast_rows);
                for (k, (f, p)) in fast.iter().zip(&port).enumerate() {
                    let (q, col) = (k / width, k % width);
                    if col >= ng * GROUP {
                        assert!(
                            f.is_nan() && p.is_nan(),
                            "{dtype} {name} wrote past its groups"
                        );
                        continue;
                    }
                    assert!(
                        f.to_bits() == p.to_bits(),
                        "{dtype} {name} n={n} act {q} col {col}: simd {f} portable {p}"
                    );
                }
            }
        }
    }
}

/// Random group bytes for `ng` groups of `nb` blocks (every quant byte random),
/// with finite f16 scales in a sane range (|d| < 2, normal numbers).
fn random_groups(rng: &mut Rng, dtype: DType, nb: usize, ng: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut group: Vec<u8> = (0..ng * GROUP * nb * bb)
        .map(|_| rng.next_u64() as u8)
        .collect();
    let fields = if dtype == DType::Q4_1 { 2 } else { 1 };
    for b in 0..ng * nb {
        for k in 0..GROUP * fields {
            let h = super::blocks::f16_bytes(rng.f32() * 2.0);
            group[b * GROUP * bb + 2 * k..][..2].copy_from_slice(&h);
        }
    }
    group
}

/// The tile kernel (AMX) against the portable one, bitwise: every row count
/// from 1 to 16, odd and even group counts (a pair's second group missing),
/// activation rows taken from the middle of a larger batch.
#[test]
fn tile_kernel_matches_portable_bitwise() {
    if interleave::tile_kernel(DType::Q4_0).is_none() {
        eprintln!("skipped: this CPU (or OS) has no tile kernel (AMX) to check");
        return;
    }
    let mut rng = Rng::new(33);
    for dtype in TYPES {
        let kernel = interleave::tile_kernel(dtype).expect("every interleaved type");
        for (nb, ng) in [(1, 1), (3, 2), (5, 3), (2, 4)] {
            let groups = random_groups(&mut rng, dtype, nb, ng);
            let total = 20;
            let mut x = rng.vec(total * 32 * nb, 1.0);
            x[0] = 40.0;
            x[total * 32 * nb - 1] = -40.0;
            let acts = QActs::quantize(&x, 32 * nb, 32);
            for n in 1..=interleave::TILE_ROWS_MAX {
                let first = (n * 7) % (total - n + 1);
                let rows: Vec<_> = (first..first + n).map(|i| acts.row(i)).collect();
                let mut port = vec![f32::NAN; n * ng * GROUP];
                let mut port_rows: Vec<&mut [f32]> = port.chunks_exact_mut(ng * GROUP).collect();
                interleave::portable_kernel(dtype)(&groups, &rows, &mut port_rows);
                let mut tile = vec![[f32::NAN; GROUP]; ng * n];
                kernel(&groups, nb, &acts, first..first + n, &mut tile);
                for (k, t) in tile.iter().enumerate() {
                    // Tile output k is group k / n, activation row k % n.
                    let (g, q) = (k / n, k % n);
                    for lane in 0..GROUP {
                        let p = port[q * ng * GROUP + g * GROUP + lane];
                        assert!(
                            t[lane].to_bits() == p.to_bits(),
                            "{dtype} nb={nb} ng={ng} n={n} group {g} act {q} lane {lane}: tile {} portable {p}",
                            t[lane]
                        );
                    }
                }
            }
        }
    }
}
