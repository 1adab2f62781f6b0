//! The CUDA backend's start-up (feature `cuda`): probing the device and compiling
//! the kernels with NVRTC. The backend's ops are checked in `cuda_backend.rs`.
//!
//! - On a machine without a CUDA driver (CI) the probe must be one clean error,
//!   never a panic; with a device it must name it. Each run prints which it was.
//! - The kernels must compile to PTX. NVRTC needs no GPU: where libnvrtc is absent
//!   the test skips saying why — unless `PDSERVE_REQUIRE_NVRTC=1` (the test
//!   command, which fetched it), where that is a failure.
#![cfg(feature = "cuda")]

use pdserve_engine::backend::cuda::{compile_kernels, ensure_nvrtc, probe, KERNEL_NAMES};
use pdserve_engine::device::Device;

#[test]
fn probe_names_the_device_or_says_why_not() {
    match probe(0) {
        Ok(d) => {
            println!("CUDA device 0: {d:?}");
            assert!(!d.name.is_empty() && d.total_mem > 0 && d.free_mem <= d.total_mem);
            assert!(probe(4096).unwrap_err().contains("no CUDA device 4096"));
            assert_eq!(Device::Cuda(0).check(), Ok(()));
        }
        Err(e) => {
            println!("no CUDA device here: checked that the probe says why in one line ({e})");
            assert!(!e.contains('\n'), "one line: {e}");
            // `--device cuda` fails its check with the same one line.
            assert_eq!(Device::Cuda(0).check(), Err(e));
        }
    }
}

#[test]
fn kernels_compile_to_ptx() {
    if let Err(e) = ensure_nvrtc() {
        if std::env::var("PDSERVE_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("PDSERVE_REQUIRE_NVRTC=1 but {e}");
        }
        println!("skipped: {e}");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let ptx = compile_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(ptx.contains(&format!(".target {arch}")), "{arch} PTX");
        for k in KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {k}")),
                "{arch}: kernel {k} missing from the PTX"
            );
        }
    }
}
