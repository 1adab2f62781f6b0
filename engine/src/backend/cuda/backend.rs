//! [`CudaBackend`]: the model forward on one CUDA device, through the same
//! [`Backend`] trait as the CPU backend.
//!
//! - Storage is bf16 everywhere on the device (weights, activations, the KV pool);
//!   the kernels (`kernels.cu`) and cuBLAS accumulate in f32. GGUF quantized and
//!   f16/f32 weights are dequantized on the host at load and uploaded as bf16.
//! - Matrix products are cuBLAS `GemmEx` (bf16 in, bf16 out, f32 compute):
//!   `out[n][rows] = x[n][cols] · wᵀ` is, column-major, `outᵀ = W · xᵀ` with `W`
//!   the row-major weight read transposed.
//! - One compute stream; every op is queued on it and nothing waits until
//!   `to_host`. KV block copies for transports go on a second (copy) stream. The small per-step tables (KV slots, attention's row positions
//!   and block tables) are uploaded once per step and reused by every layer.
//! - Errors: the `Backend` ops cannot return one, so the first CUDA error is
//!   kept, later ops are skipped, and `take_fault` hands it to the model runner,
//!   which fails the step with `EngineError::Device`. Nothing panics.
//! - Sampling: greedy and plain-temperature rows are picked on the device
//!   (`pick.rs`, see `sampling::device`); only the other rows' logits (penalties,
//!   truncation, logprobs) come to the host, as f32.
//! - Attention (its per-step tables and launch) is in `attention.rs`.
//!
//! Not here yet (issue 5): CUDA graphs for decode steps, a tensor-core
//! (flash-attention style) prefill attention, top-k / top-p on the device.

use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::{compile_kernels, probe, DeviceInfo};
use crate::backend::{AttnSeq, Backend, MemKind};
use crate::kv::pool::{KvDtype, KvLayout};
use crate::quant::QMatrix;
use crate::sampling::device::{DevicePick, Picked};
use crate::{BlockId, EngineError, Result};

/// Threads per block of the row-wise kernels.
const ROW_THREADS: u32 = 256;

/// A device buffer of bf16 values. `None` only after a fault (allocation failed).
pub struct DevBuf {
    pub(super) data: Option<CudaSlice<u16>>,
}

/// A weight matrix `[rows][cols]`, bf16, row-major.
pub struct DevMatrix {
    data: CudaSlice<u16>,
    rows: usize,
    cols: usize,
}

/// The KV pool in device memory (layout as [`KvLayout`], bf16 elements).
pub struct DevKv {
    pub(super) data: CudaSlice<u16>,
    pub(super) layout: KvLayout,
}

/// cos/sin tables `[rows][head_dim / 2]`, f32 (built on the host exactly as the
/// CPU backend does).
/// `None` only after a fault (the upload failed).
pub struct DevRope {
    tables: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    rows: usize,
}

pub(super) struct Kernels {
    pub(super) rms_norm: CudaFunction,
    pub(super) head_rms_norm: CudaFunction,
    pub(super) rope: CudaFunction,
    pub(super) silu_mul: CudaFunction,
    pub(super) add: CudaFunction,
    pub(super) add_bias: CudaFunction,
    pub(super) gather_rows: CudaFunction,
    pub(super) store_kv: CudaFunction,
    pub(super) attention: CudaFunction,
    pub(super) pick: CudaFunction,
}

/// Host copies of the last uploaded per-step tables, so that layers 2..N reuse
/// the device copy.
#[derive(Default)]
pub(super) struct StepTables {
    pub(super) slots: Vec<u32>,
    pub(super) slots_dev: Option<CudaSlice<u32>>,
    pub(super) attn: Vec<u32>,
    pub(super) attn_dev: Option<CudaSlice<u32>>,
}

pub struct CudaBackend {
    pub(super) info: DeviceInfo,
    pub(super) stream: Arc<CudaStream>,
    /// KV block copies to and from the host (transports), beside the compute
    /// stream; cudarc's per-slice events order them against the kernels that
    /// wrote or will overwrite the blocks.
    copy_stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    pub(super) k: Kernels,
    pub(super) tables: Mutex<StepTables>,
    pub(super) fault: Mutex<Option<String>>,
}

/// NVRTC wants the architecture as a static string.
fn arch_name(cc: (i32, i32)) -> Option<&'static str> {
    Some(match cc {
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        _ => return None,
    })
}

/// Grid and block for `n` elementwise values.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROW_THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row.
pub(super) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

impl CudaBackend {
    /// Opens device `ordinal`: context, stream, cuBLAS, kernels compiled for its
    /// architecture. Every failure is one line.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let dev = |m: String| EngineError::Device(format!("cuda:{ordinal}: {m}"));
        let info = probe(ordinal).map_err(EngineError::Device)?;
        let arch = arch_name(info.compute_capability).ok_or_else(|| {
            dev(format!(
                "compute capability {}.{} is not supported (8.0 or newer: A100, L4, H100, ...)",
                info.compute_capability.0, info.compute_capability.1
            ))
        })?;
        let ptx = compile_kernels(arch).map_err(dev)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| dev(e.to_string()))?;
        let stream = ctx.new_stream().map_err(|e| dev(e.to_string()))?;
        let copy_stream = ctx.new_stream().map_err(|e| dev(e.to_string()))?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| dev(format!("loading the kernels: {e}")))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| dev(format!("kernel {name}: {e}")))
        };
        let k = Kernels {
            rms_norm: f("rms_norm_bf16")?,
            head_rms_norm: f("head_rms_norm_bf16")?,
            rope: f("rope_bf16")?,
            silu_mul: f("silu_mul_bf16")?,
            add: f("add_bf16")?,
            add_bias: f("add_bias_bf16")?,
            gather_rows: f("gather_rows_bf16")?,
            store_kv: f("store_kv_bf16")?,
            attention: f("paged_attention_bf16")?,
            pick: f("pick_bf16")?,
        };
        // SAFETY: only tries to open the library by its known names (cudarc
        // panics on the first cuBLAS call when it is absent).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(dev(
                "cuBLAS (libcublas.so.13) could not be loaded: add its directory (a CUDA \
                 toolkit's lib64, or the nvidia-cublas wheel's nvidia/cu13/lib) to \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| dev(format!("cuBLAS: {e}")))?;
        Ok(CudaBackend {
            info,
            stream,
            copy_stream,
            blas,
            k,
            tables: Mutex::new(StepTables::default()),
            fault: Mutex::new(None),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Device memory free now, in bytes.
    pub fn free_memory(&self) -> Result<usize> {
        self.stream
            .context()
            .mem_get_info()
            .map(|(free, _)| free)
            .map_err(|e| EngineError::Device(e.to_string()))
    }

    pub(super) fn faulted(&self) -> bool {
        self.fault.lock().map_or(true, |f| f.is_some())
    }

    pub(super) fn record<E: std::fmt::Display>(&self, r: std::result::Result<(), E>) {
        if let Err(e) = r {
            self.fail(e.to_string());
        }
    }

    pub(super) fn fail(&self, msg: String) {
        if let Ok(mut f) = self.fault.lock() {
            if f.is_none() {
                tracing::error!(device = %self.info.ordinal, "CUDA backend fault: {msg}");
                *f = Some(msg);
            }
        }
    }

    /// Checks a shape condition; a false one is a fault (a bug upstream), not UB.
    pub(super) fn ensure(&self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(format!("shape check failed: {}", what()));
        }
        ok && !self.faulted()
    }

    pub(super) fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| EngineError::Device(format!("upload of {} values: {e}", host.len())))
    }

    /// Uploads `host` unless the device copy in `slot` already holds it.
    pub(super) fn cached_upload(
        &self,
        cache: &mut Vec<u32>,
        dev: &mut Option<CudaSlice<u32>>,
        host: Vec<u32>,
    ) -> bool {
        if dev.is_some() && *cache == host {
            return true;
        }
        match self.upload(&host) {
            Ok(d) => {
                *dev = Some(d);
                *cache = host;
                true
            }
            Err(e) => {
                self.fail(e.to_string());
                false
            }
        }
    }

    /// `c[n][m] = a[n][k] · bᵀ` with `b` `[m][k]`, all bf16 row-major.
    fn gemm(&self, x: &CudaSlice<u16>, w: &DevMatrix, n: usize, out: &mut CudaSlice<u16>) {
        if n == 0 || self.faulted() {
            return;
        }
        let (m, k) = (w.rows, w.cols);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a_ptr, _ra) = w.data.device_ptr(&self.stream);
        let (b_ptr, _rb) = x.device_ptr(&self.stream);
        let (c_ptr, _rc) = out.device_ptr_mut(&self.stream);
        // SAFETY: W is m×k (lda = k, read transposed), x is n×k (ldb = k), out is
        // n×m (ldc = m); the caller checked those lengths. The pointers come from
        // live slices whose stream is the handle's stream, and the guards above
        // keep them recorded until the call is queued.
        let r = unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                a_ptr as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                k as i32,
                b_ptr as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                k as i32,
                (&beta) as *const f32 as *const _,
                c_ptr as *mut _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                m as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        self.record(r);
    }

    /// `f(x, y, n)` over the `n` values both buffers hold (`x` updated in place).
    fn elementwise_pair(&self, f: &CudaFunction, x: &mut DevBuf, y: &DevBuf) {
        let (Some(x), Some(y)) = (x.data.as_mut(), y.data.as_ref()) else {
            return;
        };
        let n = x.len().min(y.len());
        let n_l = n as i64;
        launch!(self, f, elementwise(n); x, y, &n_l);
    }

    fn block_elems_range(&self, kv: &DevKv, block: BlockId) -> Option<std::ops::Range<usize>> {
        let b = block.0 as usize;
        (b < kv.layout.num_blocks).then(|| {
            let n = kv.layout.block_elems();
            b * n..(b + 1) * n
        })
    }
}

impl Backend for CudaBackend {
    type Buf = DevBuf;
    type Matrix = DevMatrix;
    type Vector = CudaSlice<u16>;
    type Kv = DevKv;
    type Rope = DevRope;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.info.ordinal, self.info.name)
    }
    fn kv_dtype(&self) -> KvDtype {
        KvDtype::Bf16
    }

    fn upload_matrix(&self, m: &QMatrix) -> Result<DevMatrix> {
        let mut host = vec![0u16; m.rows * m.cols];
        let mut row = vec![0f32; m.cols];
        for (r, dst) in host.chunks_exact_mut(m.cols.max(1)).enumerate() {
            m.dequantize_row(r, &mut row);
            for (d, v) in dst.iter_mut().zip(&row) {
                *d = bf16_bits(*v);
            }
        }
        Ok(DevMatrix {
            data: self.upload(&host)?,
            rows: m.rows,
            cols: m.cols,
        })
    }

    fn upload_vector(&self, v: &[f32]) -> Result<CudaSlice<u16>> {
        let host: Vec<u16> = v.iter().map(|&x| bf16_bits(x)).collect();
        self.upload(&host)
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<DevKv> {
        if layout.dtype != KvDtype::Bf16 {
            return Err(EngineError::InvalidConfig(format!(
                "CUDA stores the KV cache as bf16, not {}",
                layout.dtype
            )));
        }
        let elems = layout.num_blocks * layout.block_elems();
        let data = self.stream.alloc_zeros::<u16>(elems).map_err(|e| {
            EngineError::Device(format!(
                "KV pool of {} blocks ({} MiB): {e}",
                layout.num_blocks,
                (elems * 2) >> 20
            ))
        })?;
        Ok(DevKv { data, layout })
    }

    fn alloc(&self, len: usize) -> DevBuf {
        if self.faulted() {
            return DevBuf { data: None };
        }
        match self.stream.alloc_zeros::<u16>(len) {
            Ok(d) => DevBuf { data: Some(d) },
            Err(e) => {
                self.fail(format!("allocating {len} activations: {e}"));
                DevBuf { data: None }
            }
        }
    }

    fn buf_from_host(&self, values: &[f32]) -> DevBuf {
        if self.faulted() {
            return DevBuf { data: None };
        }
        let host: Vec<u16> = values.iter().map(|&v| bf16_bits(v)).collect();
        match self.upload(&host) {
            Ok(d) => DevBuf { data: Some(d) },
            Err(e) => {
                self.fail(e.to_string());
                DevBuf { data: None }
            }
        }
    }

    fn embed(&self, table: &DevMatrix, tokens: &[u32], out: &mut DevBuf) {
        let Some(o) = out.data.as_mut() else { return };
        let dim = table.cols;
        if !self.ensure(o.len() >= tokens.len() * dim, || "embed output".into()) {
            return;
        }
        let ids = match self.upload(tokens) {
            Ok(d) => d,
            Err(e) => return self.fail(e.to_string()),
        };
        let dim_i = dim as i32;
        launch!(self, self.k.gather_rows, per_row(tokens.len()); &table.data, &ids, o, &dim_i);
    }

    fn rms_norm(&self, x: &DevBuf, w: &CudaSlice<u16>, eps: f32, out: &mut DevBuf) {
        let (Some(x), Some(o)) = (x.data.as_ref(), out.data.as_mut()) else {
            return;
        };
        let dim = w.len();
        let rows = x.len() / dim.max(1);
        if !self.ensure(o.len() >= rows * dim, || "rms_norm output".into()) {
            return;
        }
        let null: u64 = 0;
        let dim_i = dim as i32;
        launch!(self, self.k.rms_norm, per_row(rows); x, &null, w, o, &dim_i, &eps);
    }

    fn add_rms_norm(
        &self,
        residual: &mut DevBuf,
        x: &DevBuf,
        w: &CudaSlice<u16>,
        eps: f32,
        out: &mut DevBuf,
    ) {
        let (Some(r), Some(x), Some(o)) =
            (residual.data.as_mut(), x.data.as_ref(), out.data.as_mut())
        else {
            return;
        };
        let dim = w.len();
        let rows = x.len() / dim.max(1);
        if !self.ensure(r.len() >= rows * dim && o.len() >= rows * dim, || {
            "add_rms_norm shapes".into()
        }) {
            return;
        }
        let dim_i = dim as i32;
        launch!(self, self.k.rms_norm, per_row(rows); x, r, w, o, &dim_i, &eps);
    }

    fn head_rms_norm(&self, x: &mut DevBuf, w: &CudaSlice<u16>, eps: f32) {
        let Some(x) = x.data.as_mut() else { return };
        let head_dim = w.len();
        let heads = x.len() / head_dim.max(1);
        let hd = head_dim as i32;
        let cfg = LaunchConfig {
            block_dim: (64, 1, 1),
            ..per_row(heads)
        };
        launch!(self, self.k.head_rms_norm, cfg; x, w, &hd, &eps);
    }

    fn matmul(&self, x: &DevBuf, w: &DevMatrix, n: usize, out: &mut DevBuf) {
        let (Some(x), Some(o)) = (x.data.as_ref(), out.data.as_mut()) else {
            return;
        };
        if self.ensure(x.len() >= n * w.cols && o.len() >= n * w.rows, || {
            format!("matmul {n}x{} by {}x{}", x.len() / n.max(1), w.rows, w.cols)
        }) {
            self.gemm(x, w, n, o);
        }
    }

    fn add_bias(&self, x: &mut DevBuf, b: &CudaSlice<u16>) {
        let Some(x) = x.data.as_mut() else { return };
        let dim = b.len();
        let rows = x.len() / dim.max(1);
        let dim_i = dim as i32;
        launch!(self, self.k.add_bias, per_row(rows); x, b, &dim_i);
    }

    fn add(&self, x: &mut DevBuf, y: &DevBuf) {
        self.elementwise_pair(&self.k.add, x, y);
    }

    fn silu_mul(&self, gate: &mut DevBuf, up: &DevBuf) {
        self.elementwise_pair(&self.k.silu_mul, gate, up);
    }

    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f32) -> DevRope {
        let (cos, sin) = crate::backend::cpu::ops::rope_tables(positions, head_dim, theta);
        let up = |v: &[f32]| match self.upload(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(e.to_string());
                None
            }
        };
        DevRope {
            tables: up(&cos).zip(up(&sin)),
            rows: positions.len(),
        }
    }

    fn rope(&self, x: &mut DevBuf, table: &DevRope, head_dim: usize) {
        let (Some(x), Some((cos, sin))) = (x.data.as_mut(), table.tables.as_ref()) else {
            return;
        };
        let heads = x.len() / (table.rows * head_dim).max(1);
        let (heads_i, hd) = (heads as i32, head_dim as i32);
        launch!(self, self.k.rope, per_row(table.rows); x, cos, sin, &heads_i, &hd);
    }

    fn store_kv(&self, kv: &mut DevKv, layer: usize, k: &DevBuf, v: &DevBuf, slots: &[usize]) {
        let (Some(k), Some(v)) = (k.data.as_ref(), v.data.as_ref()) else {
            return;
        };
        let l = kv.layout;
        let total = l.num_blocks * l.block_size;
        if !self.ensure(
            slots.iter().all(|&s| s < total)
                && k.len() >= slots.len() * l.kv_dim()
                && v.len() >= slots.len() * l.kv_dim(),
            || "store_kv slots or shapes".into(),
        ) {
            return;
        }
        let Ok(mut t) = self.tables.lock() else {
            return;
        };
        let t = &mut *t;
        let host: Vec<u32> = slots.iter().map(|&s| s as u32).collect();
        if !self.cached_upload(&mut t.slots, &mut t.slots_dev, host) {
            return;
        }
        let Some(dev_slots) = t.slots_dev.as_ref() else {
            return;
        };
        let (layer_i, layers_i, bs_i, kvd_i) = (
            layer as i32,
            l.num_layers as i32,
            l.block_size as i32,
            l.kv_dim() as i32,
        );
        launch!(self, self.k.store_kv, per_row(slots.len());
            &mut kv.data, k, v, dev_slots, &layer_i, &layers_i, &bs_i, &kvd_i);
    }

    fn attention(
        &self,
        q: &DevBuf,
        kv: &DevKv,
        layer: usize,
        seqs: &[AttnSeq],
        n_heads: usize,
        out: &mut DevBuf,
    ) {
        self.paged_attention(q, kv, layer, seqs, n_heads, out);
    }

    fn copy_rows(
        &self,
        src: &DevBuf,
        src_row: usize,
        dst: &mut DevBuf,
        dst_row: usize,
        count: usize,
        dim: usize,
    ) {
        let (Some(s), Some(d)) = (src.data.as_ref(), dst.data.as_mut()) else {
            return;
        };
        let (from, to) = (src_row * dim, dst_row * dim);
        let len = count * dim;
        if !self.ensure(from + len <= s.len() && to + len <= d.len(), || {
            "copy_rows out of range".into()
        }) {
            return;
        }
        let mut window = d.slice_mut(to..to + len);
        if let Err(e) = self
            .stream
            .memcpy_dtod(&s.slice(from..from + len), &mut window)
        {
            self.fail(format!("copy_rows: {e}"));
        }
    }

    fn gather_rows(&self, x: &DevBuf, rows: &[usize], dim: usize, out: &mut DevBuf) {
        let (Some(x), Some(o)) = (x.data.as_ref(), out.data.as_mut()) else {
            return;
        };
        let have = x.len() / dim.max(1);
        if !self.ensure(
            rows.iter().all(|&r| r < have) && o.len() >= rows.len() * dim,
            || "gather_rows".into(),
        ) {
            return;
        }
        let host: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = match self.upload(&host) {
            Ok(d) => d,
            Err(e) => return self.fail(e.to_string()),
        };
        let dim_i = dim as i32;
        launch!(self, self.k.gather_rows, per_row(rows.len()); x, &idx, o, &dim_i);
    }

    fn to_host(&self, x: DevBuf) -> Vec<f32> {
        let Some(d) = x.data else {
            return Vec::new();
        };
        if self.faulted() {
            return vec![0.0; d.len()];
        }
        match self.stream.clone_dtoh(&d) {
            Ok(h) => h
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
            Err(e) => {
                self.fail(format!("copying {} values to the host: {e}", d.len()));
                vec![0.0; d.len()]
            }
        }
    }

    fn pick(
        &self,
        logits: &DevBuf,
        vocab: usize,
        picks: &[Option<DevicePick>],
    ) -> Option<Vec<Option<Picked>>> {
        self.pick_rows(logits, vocab, picks)
    }

    fn take_fault(&self) -> Option<String> {
        self.fault.lock().ok()?.clone()
    }

    fn kv_block_region(&self, kv: &DevKv, block: BlockId) -> Option<(usize, usize, MemKind)> {
        let range = self.block_elems_range(kv, block)?;
        let (base, _guard) = kv.data.device_ptr(&self.stream);
        Some((
            base as usize + range.start * 2,
            range.len() * 2,
            MemKind::Cuda(self.info.ordinal as u32),
        ))
    }

    fn read_kv_block(&self, kv: &DevKv, block: BlockId, out: &mut [u8]) -> Result<()> {
        let range = self
            .block_elems_range(kv, block)
            .ok_or_else(|| EngineError::KvTransfer(format!("block {} out of range", block.0)))?;
        if out.len() != range.len() * 2 {
            return Err(EngineError::KvTransfer(format!(
                "block buffer is {} bytes, a block is {}",
                out.len(),
                range.len() * 2
            )));
        }
        // After everything queued on the compute stream (the block's last write).
        let host = self
            .copy_stream
            .join(&self.stream)
            .and_then(|_| self.copy_stream.clone_dtoh(&kv.data.slice(range)))
            .map_err(|e| EngineError::Device(format!("reading KV block {}: {e}", block.0)))?;
        for (dst, v) in out.chunks_exact_mut(2).zip(host) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    fn write_kv_block(&self, kv: &mut DevKv, block: BlockId, data: &[u8]) -> Result<()> {
        let range = self
            .block_elems_range(kv, block)
            .ok_or_else(|| EngineError::KvTransfer(format!("block {} out of range", block.0)))?;
        if data.len() != range.len() * 2 {
            return Err(EngineError::KvTransfer(format!(
                "block data is {} bytes, a block is {}",
                data.len(),
                range.len() * 2
            )));
        }
        let host: Vec<u16> = data
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        // After everything already queued on the compute stream (which may still
        // read what this block held before).
        self.copy_stream
            .join(&self.stream)
            .and_then(|_| {
                self.copy_stream
                    .memcpy_htod(&host, &mut kv.data.slice_mut(range))
            })
            .and_then(|_| self.copy_stream.synchronize())
            .map_err(|e| EngineError::Device(format!("writing KV block {}: {e}", block.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_map_to_nvrtc_names() {
        assert_eq!(arch_name((9, 0)), Some("sm_90"));
        assert_eq!(arch_name((8, 0)), Some("sm_80"));
        assert_eq!(
            arch_name((7, 5)),
            None,
            "pre-Ampere has no bf16 tensor cores"
        );
    }
}
