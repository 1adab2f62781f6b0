//! Behaviour tests of `SequenceSampler`: greedy, seeding, sampling frequencies,
//! truncation sets, penalties, logprobs, min_tokens and stop tokens.

use super::*;
use proptest::prelude::*;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(1234),
        ..Default::default()
    }
}

fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&x| ((x as f64 - m) / t as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Draws `n` tokens from a fresh sampler per draw sharing one stream (penalties off),
/// returns the counts.
fn counts(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
    let mut s = SequenceSampler::new(p, &[], &[]);
    let mut c = vec![0usize; logits.len()];
    let mut row = logits.to_vec();
    for _ in 0..n {
        row.copy_from_slice(logits);
        c[s.sample(&mut row).token as usize] += 1;
    }
    c
}

fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .filter(|(_, &p)| p > 0.0)
        .map(|(&c, &p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id() {
    let mut s = SequenceSampler::new(&SamplingParams::greedy(8), &[], &[]);
    let mut l = vec![0.5, 2.0, -1.0, 2.0, 1.9];
    assert_eq!(s.sample(&mut l).token, 1);
    let mut l = vec![f32::NAN, -3.0, f32::NEG_INFINITY];
    assert_eq!(s.sample(&mut l).token, 1);
    assert_eq!(s.num_generated(), 2);
}

#[test]
fn degenerate_rows_do_not_panic() {
    let mut s = SequenceSampler::new(&params(1.0), &[], &[]);
    let t = s.sample(&mut []);
    assert_eq!((t.token, t.logprob), (0, MIN_LOGPROB));
    let mut l = vec![f32::NAN; 4];
    assert_eq!(s.sample(&mut l).token, 0);
    let mut l = vec![f32::INFINITY, 0.0, f32::INFINITY];
    let t = s.sample(&mut l);
    assert!(t.token == 0 || t.token == 2);
    assert!(t.logprob.is_finite());
}

#[test]
fn seeded_runs_are_reproducible_and_independent_of_batch_mates() {
    let rows: Vec<Vec<f32>> = (0..50)
        .map(|i| {
            (0..32)
                .map(|j| ((i * 7 + j * 13) % 11) as f32 * 0.3)
                .collect()
        })
        .collect();
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.95,
        seed: Some(99),
        ..Default::default()
    };
    let alone: Vec<u32> = {
        let mut s = SequenceSampler::new(&p, &[], &[]);
        rows.iter()
            .map(|r| s.sample(&mut r.clone()).token)
            .collect()
    };
    // Interleave with other samplers, one of them with the same seed, plus a greedy one.
    let mut s = SequenceSampler::new(&p, &[], &[]);
    let mut twin = SequenceSampler::new(&p, &[], &[]);
    let mut other = SequenceSampler::new(
        &SamplingParams {
            seed: Some(7),
            ..p.clone()
        },
        &[],
        &[],
    );
    let mut unseeded = SequenceSampler::new(
        &SamplingParams {
            seed: None,
            ..p.clone()
        },
        &[],
        &[],
    );
    let mut mixed = Vec::new();
    let mut twin_out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for _ in 0..(i % 3) {
            other.sample(&mut r.clone());
            unseeded.sample(&mut r.clone());
        }
        mixed.push(s.sample(&mut r.clone()).token);
        twin_out.push(twin.sample(&mut r.clone()).token);
    }
    assert_eq!(alone, mixed);
    assert_eq!(alone, twin_out);
    // and a different seed gives a different stream
    let mut d = SequenceSampler::new(
        &SamplingParams {
            seed: Some(100),
            ..p
        },
        &[],
        &[],
    );
    let diff: Vec<u32> = rows
        .iter()
        .map(|r| d.sample(&mut r.clone()).token)
        .collect();
    assert_ne!(alone, diff);
}

/// Which steps a device may pick: plain greedy and plain temperature only; the
/// pick leaves the sampler alone, accepting it advances it like `sample`.
#[test]
fn device_picks_only_for_plain_rows() {
    use device::DevicePick;
    let pick = |p: SamplingParams| SequenceSampler::new(&p, &[3, 4], &[2]).device_pick();
    assert_eq!(pick(params(0.0)), Some(DevicePick::Greedy));
    let Some(DevicePick::Gumbel {
        inv_temperature, ..
    }) = pick(SamplingParams {
        seed: Some(9),
        ..params(0.5)
    })
    else {
        panic!("plain temperature sampling is a device pick");
    };
    assert_eq!(inv_temperature, 2.0);
    for p in [
        SamplingParams {
            top_k: 5,
            ..params(0.8)
        },
        SamplingParams {
            top_p: 0.9,
            ..params(0.8)
        },
        SamplingParams {
            min_p: 0.1,
            ..params(0.8)
        },
        SamplingParams {
            repetition_penalty: 1.1,
            ..params(0.0)
        },
        SamplingParams {
            presence_penalty: 0.5,
            ..params(0.0)
        },
        SamplingParams {
            frequency_penalty: 0.5,
            ..params(0.0)
        },
        SamplingParams {
            logprobs: Some(2),
            ..params(0.0)
        },
        SamplingParams {
            min_tokens: 1,
            ..params(0.0)
        },
    ] {
        assert_eq!(pick(p.clone()), None, "{p:?} needs the host sampler");
    }
    // min_tokens without any stop token to mask is plain again.
    let p = SamplingParams {
        min_tokens: 3,
        ignore_eos: true,
        ..params(0.0)
    };
    assert_eq!(pick(p), Some(DevicePick::Greedy));

    // The seed is the number the host path would draw next; accepting the pick
    // advances the state exactly as sampling that token would.
    let p = SamplingParams {
        seed: Some(77),
        ..params(1.0)
    };
    let mut a = SequenceSampler::new(&p, &[], &[]);
    let mut b = SequenceSampler::new(&p, &[], &[]);
    let first = a.device_pick();
    assert_eq!(a.device_pick(), first, "picking does not advance the state");
    let tok = a.accept_picked(device::Picked {
        token: 1,
        logprob: -0.5,
    });
    assert_eq!((tok.token, tok.logprob), (1, -0.5));
    b.record_token(1);
    assert_eq!(a.device_pick(), b.device_pick());
    assert_ne!(a.device_pick(), first, "the next step gets a new seed");
}

#[test]
fn record_token_reproduces_the_state_of_sampling_it() {
    // P/D: the prefill node samples token 1, the decode node records it and goes on.
    let p = SamplingParams {
        temperature: 0.9,
        seed: Some(5),
        presence_penalty: 0.5,
        repetition_penalty: 1.3,
        ..Default::default()
    };
    let rows: Vec<Vec<f32>> = (0..20)
        .map(|i| (0..16).map(|j| ((i + j * 5) % 7) as f32 * 0.4).collect())
        .collect();
    let mut agg = SequenceSampler::new(&p, &[1, 2, 3], &[]);
    let agg_out: Vec<u32> = rows
        .iter()
        .map(|r| agg.sample(&mut r.clone()).token)
        .collect();
    let mut decode = SequenceSampler::new(&p, &[1, 2, 3], &[]);
    decode.record_token(agg_out[0]);
    let rest: Vec<u32> = rows[1..]
        .iter()
        .map(|r| decode.sample(&mut r.clone()).token)
        .collect();
    assert_eq!(&agg_out[1..], &rest[..]);
    assert_eq!(decode.num_generated(), agg.num_generated());
}

#[test]
fn temperature_sampling_matches_softmax_frequencies() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5];
    for t in [0.5f32, 1.0, 1.7] {
        let c = counts(&params(t), &logits, 20_000);
        let chi = chi_square(&c, &softmax(&logits, t));
        // 4 degrees of freedom: p = 0.001 at 18.47
        assert!(chi < 18.47, "T={t}: chi2 {chi} counts {c:?}");
    }
}

#[test]
fn truncated_sampling_matches_renormalised_frequencies() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    // top_k = 3 keeps ids 1, 4, 0
    let p = SamplingParams {
        top_k: 3,
        ..params(1.0)
    };
    let c = counts(&p, &logits, 20_000);
    let mut probs = softmax(
        &[
            1.0,
            2.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            1.5,
            f32::NEG_INFINITY,
        ],
        1.0,
    );
    assert!(chi_square(&c, &probs) < 13.82, "{c:?}"); // df 2, p = 0.001
    assert_eq!(c[2] + c[3] + c[5], 0);
    // min_p = 0.5: keeps p >= 0.5 * p_max, i.e. logit >= 2 - ln 2 = 1.307: ids 1 and 4
    let p = SamplingParams {
        min_p: 0.5,
        ..params(1.0)
    };
    let c = counts(&p, &logits, 20_000);
    probs = softmax(
        &[
            f32::NEG_INFINITY,
            2.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            1.5,
            f32::NEG_INFINITY,
        ],
        1.0,
    );
    assert!(chi_square(&c, &probs) < 10.83, "{c:?}"); // df 1
}

#[test]
fn top_p_matches_renormalised_frequencies() {
    // softmax: id1 .420, id4 .255, id0 .154, id2 .094, id5 .057, id3 .021
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let ninf = f32::NEG_INFINITY;
    // 0.8 needs ids 1, 4, 0 (cumulative .829); with top_k = 5 the same three
    for p in [
        SamplingParams {
            top_p: 0.8,
            ..params(1.0)
        },
        SamplingParams {
            top_p: 0.8,
            top_k: 5,
            ..params(1.0)
        },
    ] {
        let c = counts(&p, &logits, 20_000);
        let probs = softmax(&[1.0, 2.0, ninf, ninf, 1.5, ninf], 1.0);
        assert_eq!(c[2] + c[3] + c[5], 0, "{c:?}");
        assert!(chi_square(&c, &probs) < 13.82, "{c:?}"); // df 2, p = 0.001
    }
}

#[test]
fn invalid_temperatures_fall_back_to_greedy() {
    for t in [-1.0f32, f32::NAN, f32::INFINITY] {
        let mut s = SequenceSampler::new(&params(t), &[], &[]);
        let c: Vec<u32> = (0..20)
            .map(|_| s.sample(&mut [0.1, 0.3, 0.2]).token)
            .collect();
        assert!(c.iter().all(|&t| t == 1), "{t}: {c:?}");
    }
}

#[test]
fn top_p_keeps_the_smallest_nucleus_over_a_large_vocab() {
    // 151_936 tokens, flat except 3 favourites holding ~60% of the mass: a nucleus of
    // 0.9 needs far more than the first guess of candidates.
    let vocab = 151_936;
    let mut logits = vec![0.0f32; vocab];
    let fav = [(100usize, 10.0f32), (50_000, 10.0), (151_000, 10.0)];
    for &(i, x) in &fav {
        logits[i] = x;
    }
    let probs = softmax(&logits, 1.0);
    let fav_mass: f64 = fav.iter().map(|&(i, _)| probs[i]).sum();
    assert!(fav_mass > 0.3 && fav_mass < 0.9);
    let p = SamplingParams {
        top_p: 0.9,
        ..params(1.0)
    };
    let mut s = SequenceSampler::new(&p, &[], &[]);
    // nucleus = favourites + the lowest-id flat tokens needed to reach 0.9
    let flat_p = probs[0];
    let need = ((0.9 - fav_mass) / flat_p).ceil() as usize;
    let mut seen_flat = false;
    for _ in 0..30 {
        let t = s.sample(&mut logits.clone()).token as usize;
        if !fav.iter().any(|&(i, _)| i == t) {
            seen_flat = true;
            // flat tokens are ordered by id; a few extra allowed for rounding
            let rank = t - fav.iter().filter(|&&(i, _)| i < t).count();
            assert!(
                rank <= need + 2,
                "token {t} rank {rank} beyond nucleus {need}"
            );
        }
    }
    assert!(seen_flat);
}

#[test]
fn tight_truncation_settings_reduce_to_argmax() {
    let logits = [0.3f32, 1.2, 1.1, -0.4];
    for p in [
        SamplingParams {
            top_k: 1,
            ..params(1.0)
        },
        SamplingParams {
            top_p: 1e-6,
            ..params(1.0)
        },
        SamplingParams {
            min_p: 1.0,
            ..params(1.0)
        },
        SamplingParams {
            top_k: 3,
            top_p: 0.01,
            ..params(5.0)
        },
    ] {
        let c = counts(&p, &logits, 200);
        assert_eq!(c[1], 200, "{p:?}");
    }
}

#[test]
fn penalties_change_logits_as_specified() {
    let p = SamplingParams {
        repetition_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..SamplingParams::greedy(10)
    };
    // prompt has token 0 and 1; the sampler then generates 3 twice (forced via logits)
    let mut s = SequenceSampler::new(&p, &[0, 1, 1], &[]);
    let mut l = vec![2.0, -2.0, 0.0, 10.0, 1.0];
    assert_eq!(s.sample(&mut l).token, 3);
    // repetition on prompt tokens 0 and 1 only; no output yet
    assert_eq!(l, vec![1.0, -4.0, 0.0, 10.0, 1.0]);
    let mut l = vec![2.0, -2.0, 0.0, 10.0, 1.0];
    s.sample(&mut l);
    // token 3 once: repetition 10/2 = 5, then 5 - 0.25 - 0.5
    assert_eq!(l, vec![1.0, -4.0, 0.0, 4.25, 1.0]);
    let mut l = vec![2.0, -2.0, 0.0, 10.0, 1.0];
    s.sample(&mut l);
    // token 3 twice: 5 - 2 * 0.25 - 0.5
    assert_eq!(l, vec![1.0, -4.0, 0.0, 4.0, 1.0]);
}

#[test]
fn presence_and_frequency_ignore_prompt_tokens() {
    let p = SamplingParams {
        presence_penalty: 1.0,
        frequency_penalty: 1.0,
        ..SamplingParams::greedy(10)
    };
    let mut s = SequenceSampler::new(&p, &[0, 0, 1], &[]);
    let mut l = vec![1.0, 1.0, 3.0];
    assert_eq!(s.sample(&mut l).token, 2);
    assert_eq!(l, vec![1.0, 1.0, 3.0]);
    let mut l = vec![1.0, 1.0, 3.0];
    assert_eq!(s.sample(&mut l).token, 0);
    assert_eq!(l, vec![1.0, 1.0, 1.0]);
}

#[test]
fn logprobs_are_log_softmax_of_processed_logits() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 3.0, -0.2];
    let p = SamplingParams {
        temperature: 0.7,
        top_k: 3,
        logprobs: Some(4),
        repetition_penalty: 1.5,
        ..params(0.7)
    };
    let mut s = SequenceSampler::new(&p, &[5], &[]);
    for _ in 0..20 {
        let mut l = logits.to_vec();
        let t = s.sample(&mut l);
        // reference from the processed row left in `l`, before temperature
        let probs = softmax(&l, 1.0);
        let want = probs[t.token as usize].ln() as f32;
        assert!((t.logprob - want).abs() < 1e-5, "{} vs {want}", t.logprob);
        assert_eq!(t.top_logprobs.len(), 4);
        let mass: f32 = t.top_logprobs.iter().map(|(_, lp)| lp.exp()).sum();
        assert!(mass <= 1.0 + 1e-5);
        for w in t.top_logprobs.windows(2) {
            assert!(w[0].1 >= w[1].1);
        }
        for &(id, lp) in &t.top_logprobs {
            assert!((lp - probs[id as usize].ln() as f32).abs() < 1e-5);
        }
        // the best alternative is the processed argmax
        let best = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(l[t.top_logprobs[0].0 as usize], best);
    }
    // without logprobs: no alternatives, logprob still set
    let mut s = SequenceSampler::new(&SamplingParams::greedy(4), &[], &[]);
    let t = s.sample(&mut logits.to_vec());
    assert!(t.top_logprobs.is_empty());
    assert!((t.logprob - softmax(&logits, 1.0)[5].ln() as f32).abs() < 1e-5);
}

#[test]
fn min_tokens_masks_eos_and_stop_ids_and_delays_stop() {
    let eos = [2u32];
    let p = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![4],
        ..SamplingParams::greedy(10)
    };
    let mut s = SequenceSampler::new(&p, &[], &eos);
    let row = [0.0f32, 1.0, 9.0, 0.0, 8.0];
    for i in 0..3 {
        let mut l = row.to_vec();
        let t = s.sample(&mut l);
        assert_eq!(t.token, 1, "step {i}");
        assert_eq!(l[2], f32::NEG_INFINITY);
        assert_eq!(l[4], f32::NEG_INFINITY);
        assert!((t.logprob + (1.0f64 + 2.0 * (-1.0f64).exp()).ln() as f32).abs() < 1e-6);
        assert!(!s.is_stop_token(1));
    }
    let t = s.sample(&mut row.to_vec());
    assert_eq!(t.token, 2);
    assert!(s.is_stop_token(2) && s.is_stop_token(4) && !s.is_stop_token(1));
}

#[test]
fn stop_token_rules() {
    let p = SamplingParams {
        stop_token_ids: vec![7],
        ..SamplingParams::greedy(10)
    };
    let s = SequenceSampler::new(&p, &[], &[2, 3]);
    assert!(s.is_stop_token(2) && s.is_stop_token(3) && s.is_stop_token(7));
    assert!(!s.is_stop_token(0));
    let s = SequenceSampler::new(
        &SamplingParams {
            ignore_eos: true,
            ..p.clone()
        },
        &[],
        &[2],
    );
    assert!(!s.is_stop_token(2) && s.is_stop_token(7));
    // min_tokens counts generated tokens, recorded ones included
    let mut s = SequenceSampler::new(&SamplingParams { min_tokens: 1, ..p }, &[], &[2]);
    assert!(!s.is_stop_token(2));
    s.record_token(2);
    assert!(s.is_stop_token(2));
}

#[test]
fn unseeded_samplers_get_distinct_seeds() {
    let p = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    let a = SequenceSampler::new(&p, &[], &[]);
    let b = SequenceSampler::new(&p, &[], &[]);
    assert_ne!(a.seed(), b.seed());
    assert_eq!(SequenceSampler::new(&params(1.0), &[], &[]).seed(), 1234);
}

/// Generous reference of the tokens a truncated draw may return: top-p and min-p
/// borders get slack so that rounding differences cannot fail the test.
fn allowed(logits: &[f32], p: &SamplingParams) -> Vec<bool> {
    let probs = softmax(logits, p.temperature);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
    let mut ok = vec![false; logits.len()];
    let k = if p.top_k == 0 {
        logits.len()
    } else {
        p.top_k.min(logits.len())
    };
    let kept_mass: f64 = order[..k].iter().map(|&i| probs[i]).sum();
    let pmax = probs[order[0]];
    let mut acc = 0.0;
    for &i in &order[..k] {
        // inside the nucleus if the mass before it is below top_p (with slack)
        let in_nucleus = acc / kept_mass < p.top_p as f64 + 1e-4;
        let above_min_p = probs[i] >= p.min_p as f64 * pmax - 1e-6;
        ok[i] = in_nucleus && above_min_p;
        acc += probs[i];
    }
    ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn greedy_matches_reference_argmax(
        logits in proptest::collection::vec((-8i32..8).prop_map(|v| v as f32 * 0.5), 1..64),
    ) {
        let mut s = SequenceSampler::new(&SamplingParams::greedy(1), &[], &[]);
        let best = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let want = logits.iter().position(|&x| x == best).unwrap() as u32;
        prop_assert_eq!(s.sample(&mut logits.clone()).token, want);
    }

    #[test]
    fn truncation_never_chooses_excluded_tokens(
        logits in proptest::collection::vec((-40i32..40).prop_map(|v| v as f32 * 0.25), 1..80),
        temperature in prop_oneof![Just(0.05f32), Just(0.5), Just(1.0), Just(3.0)],
        top_k in prop_oneof![Just(0usize), 1usize..10, Just(100)],
        top_p in prop_oneof![Just(1.0f32), 0.01f32..1.0],
        min_p in prop_oneof![Just(0.0f32), 0.0f32..=1.0],
        seed in any::<u64>(),
    ) {
        let p = SamplingParams { temperature, top_k, top_p, min_p, seed: Some(seed), ..Default::default() };
        let ok = allowed(&logits, &p);
        let mut s = SequenceSampler::new(&p, &[], &[]);
        for _ in 0..8 {
            let t = s.sample(&mut logits.clone()).token as usize;
            prop_assert!(t < logits.len());
            prop_assert!(ok[t], "token {} excluded; logits {:?}", t, logits);
        }
    }
}
