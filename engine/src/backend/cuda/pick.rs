//! Token picks on the device (`Backend::pick`): greedy and Gumbel-max rows are
//! chosen by `pick_bf16` (kernels.cu) from the bf16 logits, and only the token
//! and its logprob per row come back (`sampling::device` is the definition).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::backend::{CudaBackend, DevBuf};
use crate::sampling::device::{DevicePick, Picked};

impl CudaBackend {
    /// `Backend::pick` on the device.
    pub(super) fn pick_rows(
        &self,
        logits: &DevBuf,
        vocab: usize,
        picks: &[Option<DevicePick>],
    ) -> Option<Vec<Option<Picked>>> {
        let l = logits.data.as_ref()?;
        let rows = picks.len();
        if !self.ensure(l.len() >= rows * vocab && vocab > 0, || {
            "pick shapes".into()
        }) {
            return None;
        }
        let mut mode = vec![0i32; rows];
        let mut inv_t = vec![1f32; rows];
        let mut seed = vec![0u64; rows];
        for (k, p) in picks.iter().enumerate() {
            match p {
                None => {}
                Some(DevicePick::Greedy) => mode[k] = 1,
                Some(DevicePick::Gumbel {
                    inv_temperature,
                    seed: s,
                }) => {
                    mode[k] = 2;
                    inv_t[k] = *inv_temperature;
                    seed[k] = *s;
                }
            }
        }
        let up = (self.upload(&mode), self.upload(&inv_t), self.upload(&seed));
        let (Ok(mode_d), Ok(inv_d), Ok(seed_d)) = up else {
            self.fail("uploading the pick parameters".into());
            return None;
        };
        let (mut tok_d, mut lp_d) = match (
            self.stream.alloc_zeros::<u32>(rows),
            self.stream.alloc_zeros::<f32>(rows),
        ) {
            (Ok(t), Ok(p)) => (t, p),
            _ => {
                self.fail("allocating the pick results".into());
                return None;
            }
        };
        let vocab_i = vocab as i32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, self.k.pick, cfg;
            l, &vocab_i, &mode_d, &inv_d, &seed_d, &mut tok_d, &mut lp_d);
        let (Ok(tokens), Ok(logprobs)) = (
            self.stream.clone_dtoh(&tok_d),
            self.stream.clone_dtoh(&lp_d),
        ) else {
            self.fail("copying the picks to the host".into());
            return None;
        };
        if self.faulted() {
            return None;
        }
        Some(
            picks
                .iter()
                .zip(tokens.iter().zip(&logprobs))
                .map(|(p, (&token, &logprob))| {
                    // 0xffffffff: no finite logit in the row; the host sampler decides.
                    (p.is_some() && token != u32::MAX).then_some(Picked { token, logprob })
                })
                .collect(),
        )
    }
}
