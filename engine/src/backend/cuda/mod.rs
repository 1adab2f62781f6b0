//! CUDA backend (feature `cuda`). cudarc loads libcuda and libnvrtc at run time,
//! so this builds and its tests run on machines without CUDA (CI); both loaders
//! are checked before the first call, because cudarc panics when a library is
//! absent.
//!
//! - [`probe`]: the driver, the device count and one device's name, compute
//!   capability and memory — or one clear error;
//! - [`compile_kernels`]: `kernels.cu` (RMSNorm with fused residual add, head
//!   RMSNorm, RoPE, SiLU·mul, embedding, add/bias/gather, KV store, paged
//!   attention, greedy / Gumbel-max token picks; bf16 storage, f32 math) to PTX with NVRTC. NVRTC needs no GPU and
//!   no driver: CI compiles the kernels on every run;
//! - [`CudaBackend`] (`backend.rs`): the `Backend` ops on the device;
//! - [`cuda_model_runner`] (`runner.rs`): weights + KV pool sized from
//!   `--gpu-memory-utilization`.
//!
//! Status (no GPU has run this yet): see `backend.rs` for what is still missing.

/// Queues one kernel: `launch!(self, function, config; args...)`. Skipped after
/// a fault or for an empty grid; a launch error becomes the fault.
macro_rules! launch {
    ($self:ident, $f:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let cfg: LaunchConfig = $cfg;
        if !$self.faulted() && cfg.grid_dim.0 > 0 && cfg.grid_dim.1 > 0 {
            let mut b = $self.stream.launch_builder(&$f);
            $( b.arg($arg); )*
            // SAFETY: every kernel in kernels.cu is called with the argument list
            // its signature declares (device pointers to buffers sized by the
            // checks in the calling op, then scalars of the declared C types), and
            // the grid covers exactly the rows/elements those buffers hold.
            let r = unsafe { b.launch(cfg) };
            $self.record(r.map(|_| ()));
        }
    }};
}

mod attention;
mod backend;
mod pick;
mod runner;

pub use backend::{CudaBackend, DevBuf, DevKv, DevMatrix, DevRope};
pub use runner::{activation_bytes, bf16_weight_bytes, cuda_model_runner, kv_pool_bytes};

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;

use cudarc::driver::CudaContext;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

/// The kernels' CUDA C source.
pub const KERNELS_SRC: &str = include_str!("kernels.cu");
/// Entry points in [`KERNELS_SRC`].
pub const KERNEL_NAMES: [&str; 10] = [
    "rms_norm_bf16",
    "head_rms_norm_bf16",
    "rope_bf16",
    "silu_mul_bf16",
    "add_bf16",
    "add_bias_bf16",
    "gather_rows_bf16",
    "store_kv_bf16",
    "paged_attention_bf16",
    "pick_bf16",
];
/// Environment variable naming a directory with `libnvrtc.so.13` (and its builtins).
pub const NVRTC_DIR_ENV: &str = "PDSERVE_NVRTC_LIB_DIR";
const NVRTC_SONAME: &str = "libnvrtc.so.13";

/// A CUDA device as the driver reports it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    pub free_mem: usize,
}

/// Finds device `ordinal`: libcuda loadable, a device with that number, a context
/// on it. Every failure is one line for the user.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, String> {
    // SAFETY: only tries to open the library by its known names; no CUDA call.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver on this machine (libcuda.so could not be loaded)".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e}"))?;
    if count <= 0 {
        return Err("the CUDA driver sees no device".into());
    }
    if ordinal >= count as usize {
        return Err(format!(
            "no CUDA device {ordinal}: the driver sees {count} (0..{})",
            count - 1
        ));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
    let err = |e: cudarc::driver::DriverError| format!("CUDA device {ordinal}: {e}");
    let (free_mem, total_mem) = ctx.mem_get_info().map_err(err)?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name().map_err(err)?,
        compute_capability: ctx.compute_capability().map_err(err)?,
        total_mem,
        free_mem,
    })
}

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// Loads libnvrtc (once per process) so that cudarc's lookup by soname finds it:
/// from `PDSERVE_NVRTC_LIB_DIR`, the loader's path, or `~/.cache/pdserve/nvrtc`
/// (what `scripts/fetch-nvrtc.sh` fills).
pub fn ensure_nvrtc() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED.get_or_init(load_nvrtc).clone()
}

fn load_nvrtc() -> Result<(), String> {
    let explicit = std::env::var_os(NVRTC_DIR_ENV).map(PathBuf::from);
    let cached = std::env::var_os("PDSERVE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pdserve")))
        .map(|c| c.join("nvrtc"));
    for dir in explicit.into_iter().chain(cached) {
        // libnvrtc opens its builtins library by soname at compile time: load it
        // first from the same directory, so that the lookup finds it.
        let mut builtins: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
            })
            .collect();
        builtins.sort();
        if builtins.is_empty() {
            continue;
        }
        if builtins.iter().all(|b| try_dlopen(b)) && try_dlopen(&dir.join(NVRTC_SONAME)) {
            break;
        }
    }
    // SAFETY: only tries to open the library by its known names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(format!(
            "NVRTC is not available (run scripts/fetch-nvrtc.sh or set {NVRTC_DIR_ENV})"
        ))
    }
}

fn try_dlopen(path: &std::path::Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; a library that loads stays loaded for
    // the life of the process, as cudarc expects of its libraries.
    !unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
}

/// Compiles [`KERNELS_SRC`] to PTX for compute capability `arch` (e.g.
/// `"sm_90"`), returning the PTX text. Compiled once per architecture and
/// process: every engine of a `serve` process (decode and prefill workers)
/// reuses it.
pub fn compile_kernels(arch: &'static str) -> Result<String, String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<&'static str, String>>;
    static PTX: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = PTX.get_or_init(Cache::default);
    if let Some(ptx) = cache.lock().ok().and_then(|c| c.get(arch).cloned()) {
        return Ok(ptx);
    }
    let ptx = compile_uncached(arch)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(arch, ptx.clone());
    }
    Ok(ptx)
}

fn compile_uncached(arch: &'static str) -> Result<String, String> {
    ensure_nvrtc()?;
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some("pdserve_kernels.cu".into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(KERNELS_SRC, opts)
        .map(|ptx| ptx.to_src())
        .map_err(|e| format!("NVRTC: {e}"))
}
