//! Sampling where the logits are (a GPU), so that only the chosen token and its
//! logprob cross to the host instead of a vocabulary-sized row (151,936 floats
//! for Qwen3: at batch 256 that would be 155 MB per step).
//!
//! Only what needs no sorting and no per-sequence history runs there:
//! - greedy: the first position of the largest logit;
//! - plain temperature sampling: the Gumbel-max trick — the argmax of
//!   `logit / T + G` with `G = −ln(−ln u)` draws exactly from `softmax(logit / T)`.
//!   Each vocabulary entry gets its own uniform `u = uniform(seed, i)` from a
//!   counter-based hash, so the device needs no generator state and the draw
//!   depends only on the sequence's seed and step.
//!
//! A sequence with penalties, top-k / top-p / min-p, requested logprobs or a
//! min_tokens mask still active is sampled on the host from its logits row
//! ([`super::SequenceSampler::device_pick`] decides). The reported logprob is the
//! host sampler's: the chosen logit minus the log-sum-exp of the row, without the
//! temperature. NaN logits count as −∞, like the host's sanitising.
//!
//! [`pick_on_host`] is the definition; the CUDA kernel (`pick_bf16` in
//! `backend/cuda/kernels.cu`) computes the same thing and is checked against it.

use super::rng::splitmix64;

/// How a device picks one row's token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DevicePick {
    /// The largest logit (lowest index on ties).
    Greedy,
    /// Gumbel-max with `1 / temperature` and this step's seed.
    Gumbel { inv_temperature: f32, seed: u64 },
}

/// A device's choice for one row: the token and its logprob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Picked {
    pub token: u32,
    pub logprob: f32,
}

/// Uniform in (0, 1) for vocabulary entry `i` under `seed`: SplitMix64 of
/// `seed + (i + 1)·φ`, top 24 bits, centred (never 0 or 1, so both logarithms of
/// the Gumbel transform are finite).
pub fn uniform(seed: u64, i: u32) -> f32 {
    let mut state = seed.wrapping_add(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let bits = splitmix64(&mut state) >> 40;
    (bits as f32 + 0.5) * (1.0 / (1u32 << 24) as f32)
}

/// Gumbel noise `−ln(−ln u)` for entry `i`.
pub fn gumbel(seed: u64, i: u32) -> f32 {
    -(-uniform(seed, i).ln()).ln()
}

/// The reference pick: `None` for an empty row or one with no finite logit.
pub fn pick_on_host(logits: &[f32], pick: DevicePick) -> Option<Picked> {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let score = |i: usize, x: f32| match pick {
        DevicePick::Greedy => x,
        DevicePick::Gumbel {
            inv_temperature,
            seed,
        } => x * inv_temperature + gumbel(seed, i as u32),
    };
    let mut best = (f32::NEG_INFINITY, 0usize);
    for (i, &x) in logits.iter().enumerate() {
        let x = clean(x);
        if x == f32::NEG_INFINITY {
            continue;
        }
        let s = score(i, x);
        if s > best.0 {
            best = (s, i);
        }
    }
    let sum: f64 = logits
        .iter()
        .map(|&x| f64::from(clean(x) - max).exp())
        .sum();
    let lse = max + sum.ln() as f32;
    Some(Picked {
        token: best.1 as u32,
        logprob: (clean(logits[best.1]) - lse).max(super::MIN_LOGPROB),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_the_first_maximum_with_its_logprob() {
        let l = [1.0, 3.0, f32::NAN, 3.0, -2.0];
        let p = pick_on_host(&l, DevicePick::Greedy).unwrap();
        assert_eq!(p.token, 1);
        let lse = (1f64.exp() + 2.0 * 3f64.exp() + (-2f64).exp()).ln();
        assert!((p.logprob as f64 - (3.0 - lse)).abs() < 1e-6, "{p:?}");
        assert_eq!(pick_on_host(&[], DevicePick::Greedy), None);
        assert_eq!(
            pick_on_host(&[f32::NAN, f32::NEG_INFINITY], DevicePick::Greedy),
            None
        );
    }

    #[test]
    fn uniforms_are_inside_the_open_interval_and_spread() {
        let mut sum = 0.0f64;
        for i in 0..100_000u32 {
            let u = uniform(42, i);
            assert!(u > 0.0 && u < 1.0, "{i}: {u}");
            sum += f64::from(u);
        }
        assert!(
            (sum / 100_000.0 - 0.5).abs() < 0.005,
            "mean {}",
            sum / 100_000.0
        );
        assert_ne!(uniform(1, 7), uniform(2, 7), "the seed matters");
    }

    /// Gumbel-max draws follow softmax(logits / T): 20,000 draws (seeds
    /// 0..20,000) over four tokens, each frequency within 0.015 of its
    /// probability (~5 standard deviations).
    #[test]
    fn gumbel_max_draws_from_the_tempered_softmax() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        for t in [0.5f32, 1.0, 2.0] {
            let z: f64 = logits
                .iter()
                .map(|&x| (f64::from(x) / f64::from(t)).exp())
                .sum();
            let mut counts = [0usize; 4];
            let draws = 20_000u64;
            for seed in 0..draws {
                let pick = DevicePick::Gumbel {
                    inv_temperature: 1.0 / t,
                    seed: seed.wrapping_mul(0x2545_F491_4F6C_DD1D),
                };
                counts[pick_on_host(&logits, pick).unwrap().token as usize] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                let want = (f64::from(logits[i]) / f64::from(t)).exp() / z;
                let got = c as f64 / draws as f64;
                assert!(
                    (got - want).abs() < 0.015,
                    "T {t} token {i}: {got} vs {want}"
                );
            }
        }
    }
}
