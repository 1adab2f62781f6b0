//! The threaded matmul driver: `y[n×rows] = x[n×cols]·Wᵀ`.
//!
//! Four paths:
//! - interleaved: a matrix in the CPU backend's eight-row layout (`interleave`)
//!   quantizes `x` once and runs its type's group kernel, a tile of groups
//!   against up to 16 activation rows per call (four at a time inside) — or,
//!   on CPUs with AMX, its tile kernel for chunks of 12 to 16 rows;
//!   every kernel is bitwise equal to the portable one, so no row's result
//!   depends on n;
//! - integer: weight types with an 8-bit kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//!   Q5_K, Q6_K) quantize `x` once ([`QActs`]) and run integer block dot products,
//!   eight (or four) activation rows per weight row so that each weight block is
//!   unpacked once for several rows;
//! - float: F32/F16/BF16 rows dotted with f32 activations (FMA, F16C);
//! - exact: every other type (and [`QMatrix::matmul_exact`]) dequantizes each
//!   weight row once and dots it in f32 with every activation row.
//!
//! Parallelism (rayon): small `n` (decode, batched decode below `SPLIT_ACTS_FROM`)
//! splits the weight rows into a few chunks per thread; large `n` (prefill) splits
//! the activation rows, so every task writes one contiguous slice of `y`. Tiny
//! problems run inline.

use rayon::prelude::*;

use super::act::{ActRow, ActTile4, ActTile8, QActs};
use super::interleave::{self, GroupFn, GROUP};
use super::{dot, float, DType, Layout, QMatrix};

/// Below this many multiply-adds a matmul runs on the calling thread.
const MIN_PARALLEL_WORK: usize = 128 * 1024;
/// Smallest amount of work worth a separate rayon task.
const MIN_TASK_WORK: usize = 48 * 1024;
/// From this many activation rows on, split the activation rows across threads
/// (prefill). Below it (batched decode) the weight rows are split, so that every
/// weight tile is read from memory once and applied to all activation rows.
const SPLIT_ACTS_FROM: usize = 32;
/// Weight rows per cache tile when several activation rows are processed.
const TILE_ROWS: usize = 16;
/// Interleaved groups per cache tile.
const TILE_GROUPS: usize = 4;
/// Most activation rows per group-kernel call (the kernel takes them four at a
/// time; one call per tile rather than per four rows halved the calls' checking
/// and setup, ~2% of a batch-16 step's CPU samples).
const CALL_ROWS: usize = 16;
/// Weight-row splits are multiples of this: an interleaved group never straddles
/// two tasks, and a task's groups come in pairs, which the 512-bit kernels
/// (`dot_zmm_i8`) take together (an odd last group falls back to a 256-bit
/// kernel: with splits of one group, 2% of a batch-16 step's samples).
const ROW_SPLIT: usize = 2 * GROUP;

/// Four-row dot: `out.len() / 4` consecutive weight rows (`w`, `row_bytes` each)
/// against four activation rows; `out[4·row + r]`.
pub type Dot4Fn = fn(&[u8], usize, &ActTile4<'_>, &mut [f32]);

/// Eight-row dot: like [`Dot4Fn`] with eight activation rows; `out[8·row + r]`.
pub type Dot8Fn = fn(&[u8], usize, &ActTile8<'_>, &mut [f32]);

/// An integer kernel: activation block size plus 1-row, 4-row and (where a type has
/// one) 8-row dot functions, all bitwise identical per row.
#[derive(Clone, Copy)]
pub struct IntKernel {
    pub block: usize,
    pub dot1: dot::DotFn,
    pub dot4: Dot4Fn,
    pub dot8: Option<Dot8Fn>,
}

fn scalar_int_kernel(dtype: DType) -> Option<IntKernel> {
    let (dot1, block) = dot::scalar_kernel(dtype)?;
    // Scalar four-row kernels simply call the one-row kernel four times.
    macro_rules! four {
        ($f:path) => {
            |w: &[u8], rb: usize, a: &ActTile4<'_>, o: &mut [f32]| {
                for (row, o) in o.chunks_exact_mut(4).enumerate() {
                    for k in 0..4 {
                        o[k] = $f(&w[row * rb..(row + 1) * rb], &a.rows[k]);
                    }
                }
            }
        };
    }
    let dot4: Dot4Fn = match dtype {
        DType::Q4_0 => four!(dot::dot_q4_0),
        DType::Q4_1 => four!(dot::dot_q4_1),
        DType::Q5_0 => four!(dot::dot_q5_0),
        DType::Q5_1 => four!(dot::dot_q5_1),
        DType::Q8_0 => four!(dot::dot_q8_0),
        DType::Q4_K => four!(dot::dot_q4_k),
        DType::Q5_K => four!(dot::dot_q5_k),
        DType::Q6_K => four!(dot::dot_q6_k),
        _ => return None,
    };
    Some(IntKernel {
        block,
        dot1,
        dot4,
        dot8: None,
    })
}

/// The best integer kernel for `dtype` on this CPU.
pub fn int_kernel(dtype: DType) -> Option<IntKernel> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::dot_avx2::int_kernel(dtype) {
        return Some(k);
    }
    scalar_int_kernel(dtype)
}

/// The portable integer kernel (tests compare it with the SIMD one).
#[cfg(test)]
pub fn portable_int_kernel(dtype: DType) -> Option<IntKernel> {
    scalar_int_kernel(dtype)
}

pub fn matmul(m: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    if m.layout == Layout::Interleaved8 {
        return matmul_many(&[m], x, n, &mut [y]);
    }
    match int_kernel(m.dtype) {
        Some(k) => matmul_int(m, &k, x, n, y),
        None if !m.dtype.is_quantized() => run(&[m.rows], m.cols, n, &mut [y], &|_, r, i, out| {
            out.strided(r.len(), i.len(), |o, ldo| float_tile(m, x, r, i, o, ldo))
        }),
        None => matmul_exact(m, x, n, y),
    }
}

/// Integer path with an explicit kernel (tests use the portable one).
pub fn matmul_int(m: &QMatrix, k: &IntKernel, x: &[f32], n: usize, y: &mut [f32]) {
    if m.cols == 0 {
        y.fill(0.0);
        return;
    }
    let acts = QActs::quantize(x, m.cols, k.block);
    run(&[m.rows], m.cols, n, &mut [y], &|_, r, i, out| {
        out.strided(r.len(), i.len(), |o, ldo| {
            int_tile(m, k, &acts, r, i, o, ldo)
        })
    });
}

pub fn matmul_exact(m: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    run(&[m.rows], m.cols, n, &mut [y], &|_, r, i, out| {
        out.strided(r.len(), i.len(), |o, ldo| exact_tile(m, x, r, i, o, ldo))
    });
}

/// Several matrices with the same `cols` applied to the same `x` in one parallel
/// region; when they share an integer kernel, `x` is quantized once.
pub fn matmul_many(ms: &[&QMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    let Some(first) = ms.first() else { return };
    let same = ms
        .iter()
        .all(|m| m.dtype == first.dtype && m.cols == first.cols && m.layout == first.layout);
    if first.layout == Layout::Interleaved8 && same {
        if first.cols == 0 {
            ys.iter_mut().for_each(|y| y.fill(0.0));
            return;
        }
        let kern = PackedKernels::new(first.dtype, n);
        let acts = QActs::quantize(x, first.cols, first.dtype.block_len());
        let rows: Vec<usize> = ms.iter().map(|m| m.rows).collect();
        run(&rows, first.cols, n, ys, &|j, r, i, out| {
            packed_tile(ms[j], kern, &acts, r, i, out)
        });
        return;
    }
    match int_kernel(first.dtype) {
        Some(k) if same && first.cols > 0 => {
            let acts = QActs::quantize(x, first.cols, k.block);
            let rows: Vec<usize> = ms.iter().map(|m| m.rows).collect();
            run(&rows, first.cols, n, ys, &|j, r, i, out| {
                out.strided(r.len(), i.len(), |o, ldo| {
                    int_tile(ms[j], &k, &acts, r, i, o, ldo)
                })
            });
        }
        _ => {
            for (m, y) in ms.iter().zip(ys.iter_mut()) {
                matmul(m, x, n, y);
            }
        }
    }
}

type Range = std::ops::Range<usize>;
/// Computes, for matrix `j`, weight rows `r` × activation rows `i` into `out`.
type TileFn<'a> = dyn Fn(usize, Range, Range, &mut Out<'_, '_>) + Sync + 'a;

/// Where a tile's results go: element (activation row q, weight row c), both
/// relative to the tile's first.
enum Out<'a, 'b> {
    /// `buf[q·ldo + c]`.
    Strided(&'a mut [f32], usize),
    /// `rows[q][c]`: each activation row's own slice of y (weight-row splits).
    Rows(&'a mut [&'b mut [f32]]),
}

impl Out<'_, '_> {
    /// Results of activation row `q`, from the tile's first weight row on.
    fn row(&mut self, q: usize) -> &mut [f32] {
        match self {
            Out::Strided(buf, ldo) => &mut buf[q * *ldo..],
            Out::Rows(rows) => &mut rows[q][..],
        }
    }

    /// Columns `c..c + len` of activation rows `q0..q0 + n` (n ≤ R), for a group
    /// kernel to write into; rows past `n` are empty.
    fn rows<const R: usize>(
        &mut self,
        q0: usize,
        n: usize,
        c: usize,
        len: usize,
    ) -> [&mut [f32]; R] {
        match self {
            Out::Strided(buf, ldo) => row_array(
                buf[q0 * *ldo..].chunks_mut((*ldo).max(1)).take(n),
                c..c + len,
            ),
            Out::Rows(rows) => row_array(rows[q0..q0 + n].iter_mut().map(|r| &mut **r), c..c + len),
        }
    }

    /// Runs a tile that writes `o[q·ldo + c]` (`n_i` activation rows × `n_r`
    /// weight rows), through a local buffer where the destination is not strided.
    fn strided(&mut self, n_r: usize, n_i: usize, f: impl FnOnce(&mut [f32], usize)) {
        match self {
            Out::Strided(buf, ldo) => f(buf, *ldo),
            Out::Rows(rows) => {
                let mut buf = vec![0f32; n_i * n_r];
                f(&mut buf, n_r);
                for (d, o) in rows.iter_mut().zip(buf.chunks_exact(n_r)) {
                    d.copy_from_slice(o);
                }
            }
        }
    }
}

/// Columns `cols` of each of `rows`, then empty rows up to R.
fn row_array<'a, const R: usize>(
    mut rows: impl Iterator<Item = &'a mut [f32]>,
    cols: Range,
) -> [&'a mut [f32]; R] {
    std::array::from_fn(|_| rows.next().map_or(&mut [][..], |r| &mut r[cols.clone()]))
}

/// One unit of parallel work writing a disjoint part of an output.
struct Job<'a> {
    j: usize,
    r: Range,
    i: Range,
    out: &'a mut [f32],
    ldo: usize,
}

/// Splits the problem (matrices with `rows[j]` rows, `cols` columns; outputs
/// `ys[j]` of n×rows[j]) into tasks and runs them.
fn run(rows: &[usize], cols: usize, n: usize, ys: &mut [&mut [f32]], tile: &TileFn<'_>) {
    let total_rows: usize = rows.iter().sum();
    if total_rows == 0 || n == 0 {
        return;
    }
    let work = total_rows * n * cols.max(1);
    let threads = rayon::current_num_threads();
    if threads <= 1 || work < MIN_PARALLEL_WORK {
        for (j, y) in ys.iter_mut().enumerate() {
            tile(j, 0..rows[j], 0..n, &mut Out::Strided(y, rows[j]));
        }
        return;
    }
    let max_tasks = (work / MIN_TASK_WORK).clamp(1, threads * 4);
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(max_tasks + ys.len());
    if n >= SPLIT_ACTS_FROM {
        // Prefill: contiguous blocks of activation rows (multiples of 4).
        let per = n.div_ceil(max_tasks.min(n.div_ceil(4))).next_multiple_of(4);
        for (j, y) in ys.iter_mut().enumerate() {
            for (t, out) in y.chunks_mut(per * rows[j]).enumerate() {
                let i0 = t * per;
                let i = i0..i0 + out.len() / rows[j];
                jobs.push(Job {
                    j,
                    r: 0..rows[j],
                    i,
                    out,
                    ldo: rows[j],
                });
            }
        }
    } else if n == 1 {
        let per = total_rows.div_ceil(max_tasks).next_multiple_of(ROW_SPLIT);
        for (j, y) in ys.iter_mut().enumerate() {
            for (t, out) in y.chunks_mut(per).enumerate() {
                let r0 = t * per;
                let len = out.len();
                jobs.push(Job {
                    j,
                    r: r0..r0 + len,
                    i: 0..1,
                    out,
                    ldo: len,
                });
            }
        }
    } else {
        // A few activation rows: split the weight rows; each task writes its own
        // slice of every row of y.
        let per = total_rows.div_ceil(max_tasks).next_multiple_of(ROW_SPLIT);
        let mut pieces: Vec<(usize, Range, Vec<&mut [f32]>)> = Vec::new();
        for (j, y) in ys.iter_mut().enumerate() {
            let mut slots: Vec<Vec<&mut [f32]>> = (0..rows[j].div_ceil(per))
                .map(|_| Vec::with_capacity(n))
                .collect();
            for y_row in y.chunks_mut(rows[j]) {
                for (slot, piece) in slots.iter_mut().zip(y_row.chunks_mut(per)) {
                    slot.push(piece);
                }
            }
            for (t, slot) in slots.into_iter().enumerate() {
                pieces.push((j, t * per..((t + 1) * per).min(rows[j]), slot));
            }
        }
        pieces.into_par_iter().for_each(|(j, r, mut dst)| {
            tile(j, r, 0..n, &mut Out::Rows(&mut dst));
        });
        return;
    }
    jobs.into_par_iter()
        .with_max_len(1)
        .for_each(|job| tile(job.j, job.r, job.i, &mut Out::Strided(job.out, job.ldo)));
}

fn int_tile(
    m: &QMatrix,
    k: &IntKernel,
    acts: &QActs,
    r: Range,
    i: Range,
    out: &mut [f32],
    ldo: usize,
) {
    let (r0, i0) = (r.start, i.start);
    let rb = m.row_bytes();
    let bytes = m.data.bytes();
    if i.len() == 1 {
        let a = acts.row(i0);
        let w = &bytes[r0 * rb..r.end * rb];
        for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
            *o = (k.dot1)(row, &a);
        }
        return;
    }
    // Activation rows in groups of eight where the kernel has an 8-row dot, then
    // groups of four (built once per task), the rest singly.
    let dot8 = k.dot8;
    let n8 = if dot8.is_some() { i.len() / 8 } else { 0 };
    let groups8: Vec<ActTile8<'_>> = (0..n8)
        .map(|g| ActTile8::new(std::array::from_fn(|q| acts.row(i0 + 8 * g + q))))
        .collect();
    let i4 = i0 + 8 * n8;
    let groups: Vec<ActTile4<'_>> = (0..(i.end - i4) / 4)
        .map(|g| ActTile4::new(std::array::from_fn(|q| acts.row(i4 + 4 * g + q))))
        .collect();
    let rest = i4 + 4 * groups.len()..i.end;
    let mut o8 = [0f32; 8 * TILE_ROWS];
    // `o8` holds weight rows t0.. × `width` activation rows from `ib`; into `out`.
    let scatter = |out: &mut [f32], o8: &[f32], t0: usize, ib: usize, width: usize| {
        for (row, o) in (t0..).zip(o8.chunks_exact(width)) {
            for (q, v) in o.iter().enumerate() {
                out[(ib + q - i0) * ldo + row - r0] = *v;
            }
        }
    };
    let mut t0 = r.start;
    while t0 < r.end {
        let t1 = (t0 + TILE_ROWS).min(r.end);
        let w = &bytes[t0 * rb..t1 * rb];
        if let Some(dot8) = dot8 {
            for (g, a) in groups8.iter().enumerate() {
                dot8(w, rb, a, &mut o8[..8 * (t1 - t0)]);
                scatter(out, &o8[..8 * (t1 - t0)], t0, i0 + 8 * g, 8);
            }
        }
        for (g, a) in groups.iter().enumerate() {
            (k.dot4)(w, rb, a, &mut o8[..4 * (t1 - t0)]);
            scatter(out, &o8[..4 * (t1 - t0)], t0, i4 + 4 * g, 4);
        }
        for ii in rest.clone() {
            let a = acts.row(ii);
            for row in t0..t1 {
                out[(ii - i0) * ldo + row - r0] = (k.dot1)(m.row_data(row), &a);
            }
        }
        t0 = t1;
    }
}

/// The kernels of an interleaved matrix's type: its vector group kernel, and
/// the AMX tile kernel where the CPU has one and the batch is worth it.
#[derive(Clone, Copy)]
struct PackedKernels {
    group: GroupFn,
    tile: Option<interleave::TileKernel>,
}

impl PackedKernels {
    fn new(dtype: DType, n: usize) -> PackedKernels {
        PackedKernels {
            group: interleave::kernel(dtype),
            tile: (n >= TILE_KERNEL_FROM)
                .then(|| interleave::tile_kernel(dtype))
                .flatten(),
        }
    }
}

/// A tile kernel (where there is one) takes chunks of at least this many
/// activation rows, the vector kernel smaller ones: below it, storing and
/// scaling the tile unit's sums every block costs more than the tile unit
/// saves (single-thread 1536×576 Q4_1: at 4 rows 2× slower, at 8 even, at 16
/// 1.3× faster, at 32 1.35×).
const TILE_KERNEL_FROM: usize = 12;

/// Weight rows `r` (starting on a group boundary) of an interleaved matrix ×
/// activation rows `i`: with a tile kernel, chunks of up to 16 activation rows
/// against all the groups per call (the kernel sets the tile unit up once per
/// call); otherwise a few groups at a time (kept in cache) against four
/// activation rows per call.
fn packed_tile(
    m: &QMatrix,
    kern: PackedKernels,
    acts: &QActs,
    r: Range,
    i: Range,
    out: &mut Out<'_, '_>,
) {
    debug_assert!(r.start.is_multiple_of(GROUP));
    let groups = r.start / GROUP..r.end.div_ceil(GROUP);
    let Some(tile_kernel) = kern.tile else {
        let first = i.start;
        return group_calls(m, kern.group, acts, r, groups, i, first, out);
    };
    let group_bytes = GROUP * m.row_bytes();
    let w = &m.data.bytes()[groups.start * group_bytes..groups.end * group_bytes];
    let nb = m.cols / m.dtype.block_len();
    let mut res = Vec::new();
    for q0 in (i.start..i.end).step_by(interleave::TILE_ROWS_MAX) {
        let q1 = (q0 + interleave::TILE_ROWS_MAX).min(i.end);
        if q1 - q0 < TILE_KERNEL_FROM {
            group_calls(
                m,
                kern.group,
                acts,
                r.clone(),
                groups.clone(),
                q0..q1,
                i.start,
                out,
            );
            continue;
        }
        res.resize(groups.len() * (q1 - q0), [0f32; GROUP]);
        tile_kernel(w, nb, acts, q0..q1, &mut res);
        scatter(out, &res, r.clone(), groups.clone(), q0 - i.start);
    }
}

/// The vector group kernel over activation rows `i`, `TILE_GROUPS` groups by
/// up to `CALL_ROWS` activation rows per call, writing straight into `out`;
/// activation row `q` goes to `out.row(q - out_first)`. A tile whose last group
/// is cut off at `r.end` (rows not a multiple of 8) goes through a local buffer.
#[allow(clippy::too_many_arguments)]
fn group_calls(
    m: &QMatrix,
    kern: GroupFn,
    acts: &QActs,
    r: Range,
    groups: Range,
    i: Range,
    out_first: usize,
    out: &mut Out<'_, '_>,
) {
    let group_bytes = GROUP * m.row_bytes();
    let bytes = m.data.bytes();
    let act_rows: Vec<ActRow<'_>> = i.clone().map(|ii| acts.row(ii)).collect();
    for tile in groups.clone().step_by(TILE_GROUPS) {
        let tile = tile..(tile + TILE_GROUPS).min(groups.end);
        let w = &bytes[tile.start * group_bytes..tile.end * group_bytes];
        let (c, len) = (tile.start * GROUP - r.start, tile.len() * GROUP);
        let whole = tile.end * GROUP <= r.end;
        for (k, ak) in act_rows.chunks(CALL_ROWS).enumerate() {
            let q0 = i.start + CALL_ROWS * k - out_first;
            if whole {
                let mut dst = out.rows::<CALL_ROWS>(q0, ak.len(), c, len);
                kern(w, ak, &mut dst[..ak.len()]);
                continue;
            }
            // Only a cut-off last tile gets here: its buffer is set up here, not
            // zeroed on every call.
            let mut spare = [0f32; CALL_ROWS * TILE_GROUPS * GROUP];
            let mut dst: [&mut [f32]; CALL_ROWS] =
                row_array(spare.chunks_exact_mut(TILE_GROUPS * GROUP), 0..len);
            kern(w, ak, &mut dst[..ak.len()]);
            let kept = r.end - tile.start * GROUP;
            for (q, res) in (q0..).zip(&dst[..ak.len()]) {
                out.row(q)[c..c + kept].copy_from_slice(&res[..kept]);
            }
        }
    }
}

/// Copies a tile kernel's results (`res[g·n + q]`: group `groups.start + g`,
/// activation row q of n) into rows `q0..q0 + n` of `out`, columns relative to
/// `r.start` (the last group may be cut off at `r.end`).
fn scatter(out: &mut Out<'_, '_>, res: &[[f32; GROUP]], r: Range, groups: Range, q0: usize) {
    let n = res.len() / groups.len().max(1);
    if n == 0 {
        return;
    }
    for (g, res) in groups.zip(res.chunks_exact(n)) {
        let c = g * GROUP - r.start;
        let lanes = (r.end - g * GROUP).min(GROUP);
        for (q, res) in (q0..).zip(res) {
            let dst = &mut out.row(q)[c..c + lanes];
            match <&mut [f32; GROUP]>::try_from(&mut *dst) {
                // A whole group: a fixed-size copy (no memmove call).
                Ok(dst) => *dst = *res,
                Err(_) => dst.copy_from_slice(&res[..lanes]),
            }
        }
    }
}

fn float_tile(m: &QMatrix, x: &[f32], r: Range, i: Range, out: &mut [f32], ldo: usize) {
    if i.len() > 1 {
        return exact_tile(m, x, r, i, out, ldo);
    }
    let cols = m.cols;
    for row in r.clone() {
        let w = m.row_data(row);
        for ii in i.clone() {
            out[(ii - i.start) * ldo + row - r.start] =
                float::dot_float_row(m.dtype, w, &x[ii * cols..(ii + 1) * cols]);
        }
    }
}

fn exact_tile(m: &QMatrix, x: &[f32], r: Range, i: Range, out: &mut [f32], ldo: usize) {
    let cols = m.cols;
    let mut buf = vec![0f32; cols];
    let xr = |ii: usize| &x[ii * cols..(ii + 1) * cols];
    for row in r.clone() {
        // F32 rows are used in place (QMatrix keeps F32 data 4-byte aligned).
        let in_place = match m.layout {
            Layout::Rows if m.dtype == DType::F32 => bytemuck::try_cast_slice(m.row_data(row)).ok(),
            _ => None,
        };
        let w: &[f32] = match in_place {
            Some(w) => w,
            None => {
                m.dequantize_row(row, &mut buf);
                &buf
            }
        };
        let o = row - r.start;
        let mut ii = i.start;
        while ii + 4 <= i.end {
            let v = float::dot_f32_x4(w, [xr(ii), xr(ii + 1), xr(ii + 2), xr(ii + 3)]);
            for (q, v) in v.into_iter().enumerate() {
                out[(ii + q - i.start) * ldo + o] = v;
            }
            ii += 4;
        }
        for ii in ii..i.end {
            out[(ii - i.start) * ldo + o] = float::dot_f32(w, xr(ii));
        }
    }
}
