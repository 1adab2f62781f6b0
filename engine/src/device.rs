//! `--device cpu|cuda[:N]`: where an engine runs, and whether that device can be
//! used here (`cuda` needs a build with feature `cuda`, a driver and the device;
//! otherwise one line says which is missing).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?} (cpu, cuda, cuda:N)")),
        }
    }
}

impl Device {
    /// Whether an engine can run on this device here; the error is one line.
    pub fn check(self) -> Result<(), String> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => cuda_check(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_check(ordinal: usize) -> Result<(), String> {
    crate::backend::cuda::probe(ordinal).map(|_| ())
}

#[cfg(not(feature = "cuda"))]
fn cuda_check(_: usize) -> Result<(), String> {
    Err("this pdserve was built without CUDA (rebuild with `--features cuda`)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad:?}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(Device::Cpu.check(), Ok(()));
    }
}
