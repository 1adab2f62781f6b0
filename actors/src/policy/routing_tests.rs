//! Tests of the routing policies: unit cases for parsing, prefix overlap and load
//! order, and proptest properties of [`choose_worker`] over generated worker sets.

use std::collections::HashMap;

use pdserve_cluster::ids::{Role, WorkerId};
use pdserve_cluster::protocol::WorkerLoad;
use proptest::prelude::*;

use super::*;

const CASES: u32 = 500;

/// Numbers of one load report; `cached` are prefix-cache block hashes.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    total: u32,
    free: u32,
    running: u32,
    waiting: u32,
    draining: bool,
    cached: Vec<u128>,
}

pub(crate) fn load(id: &str, l: &Load) -> WorkerLoad {
    WorkerLoad {
        worker: WorkerId(id.to_string()),
        role: Role::Decode,
        model: "m".to_string(),
        model_spec: "m".to_string(),
        max_model_len: 4096,
        block_size: 16,
        free_blocks: l.free,
        total_blocks: l.total,
        running: l.running,
        waiting: l.waiting,
        prefill_queue_depth: 0,
        draining: l.draining,
        remote_prefills: 0,
        prefill_fallbacks: 0,
        cached_blocks: l.cached.clone(),
        seq: 1,
    }
}

fn view(id: &str, alive: bool, l: &Load) -> WorkerView {
    WorkerView::new(load(id, l), alive)
}

pub(crate) fn idle(total: u32, free: u32) -> Load {
    Load {
        total,
        free,
        running: 0,
        waiting: 0,
        draining: false,
        cached: vec![],
    }
}

// ---- strategies ----

/// Block hashes come from a small universe so that overlaps are common.
fn hash() -> impl Strategy<Value = u128> {
    0u128..12
}

fn load_numbers() -> impl Strategy<Value = Load> {
    (
        0u32..48,
        0u32..52, // sometimes more free than total: a bad report must not break anything
        0u32..6,
        0u32..6,
        any::<bool>(),
        prop::collection::vec(hash(), 0..10),
    )
        .prop_map(|(total, free, running, waiting, draining, cached)| Load {
            total,
            free: if free > total && free % 4 != 0 {
                total
            } else {
                free
            },
            running,
            waiting,
            draining,
            cached,
        })
}

/// 0..8 workers with distinct ids in arbitrary order.
fn workers() -> impl Strategy<Value = Vec<WorkerView>> {
    prop::collection::btree_set(0u8..40, 0..8)
        .prop_flat_map(|ids| {
            let n = ids.len();
            (
                Just(ids.into_iter().collect::<Vec<_>>()),
                prop::collection::vec((any::<bool>(), load_numbers()), n),
            )
        })
        .prop_map(|(ids, states)| {
            ids.iter()
                .zip(states)
                .map(|(id, (alive, l))| view(&format!("node{id}/decode/0"), alive, &l))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn policy() -> impl Strategy<Value = RoutingPolicy> {
    prop_oneof![
        Just(RoutingPolicy::RoundRobin),
        Just(RoutingPolicy::Random),
        Just(RoutingPolicy::LeastLoaded),
        (0.0f64..4.0).prop_map(|overlap_weight| RoutingPolicy::KvAware { overlap_weight }),
    ]
}

fn prompt() -> impl Strategy<Value = Vec<u128>> {
    prop::collection::vec(hash(), 0..10)
}

fn find<'a>(workers: &'a [WorkerView], id: &WorkerId) -> Option<&'a WorkerView> {
    workers.iter().find(|w| w.id() == id)
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Never a dead, draining or unknown worker; `None` iff nobody is eligible.
    #[test]
    fn only_eligible_workers_are_chosen(
        policy in policy(), prompt in prompt(), workers in workers(), ticket in any::<u64>()
    ) {
        let any_eligible = workers.iter().any(|w| w.alive && !w.load().draining);
        match choose_worker(&policy, &prompt, &workers, ticket) {
            None => prop_assert!(!any_eligible),
            Some(id) => {
                let w = find(&workers, &id);
                prop_assert!(w.is_some(), "unknown worker {id}");
                let w = w.unwrap();
                prop_assert!(w.alive, "dead worker {id}");
                prop_assert!(!w.load().draining, "draining worker {id}");
            }
        }
    }

    /// Same inputs, same answer; and the order of the worker list does not matter.
    #[test]
    fn deterministic_and_order_independent(
        policy in policy(), prompt in prompt(),
        (workers, shuffled) in workers().prop_flat_map(|w| (Just(w.clone()), Just(w).prop_shuffle())),
        ticket in any::<u64>()
    ) {
        let first = choose_worker(&policy, &prompt, &workers, ticket);
        prop_assert_eq!(&first, &choose_worker(&policy, &prompt, &workers, ticket));
        prop_assert_eq!(&first, &choose_worker(&policy, &prompt, &shuffled, ticket));
    }

    /// least-loaded returns a worker whose load key is minimal among the eligible,
    /// the lowest id among equal minima.
    #[test]
    fn least_loaded_picks_a_minimum(
        prompt in prompt(), workers in workers(), ticket in any::<u64>()
    ) {
        let chosen = choose_worker(&RoutingPolicy::LeastLoaded, &prompt, &workers, ticket);
        let eligible: Vec<&WorkerView> = workers.iter().filter(|w| w.is_eligible()).collect();
        let Some(id) = chosen else {
            prop_assert!(eligible.is_empty());
            return Ok(());
        };
        let key = find(&workers, &id).unwrap().load_key();
        for w in &eligible {
            prop_assert!(key <= w.load_key(), "{id} {key:?} beats {} {:?}", w.id(), w.load_key());
            if w.load_key() == key {
                prop_assert!(&id <= w.id());
            }
        }
    }

    /// kv-aware returns a worker of minimal cost (the documented formula).
    #[test]
    fn kv_aware_picks_a_minimum_cost(
        weight in 0.0f64..4.0, prompt in prompt(), workers in workers(), ticket in any::<u64>()
    ) {
        let policy = RoutingPolicy::KvAware { overlap_weight: weight };
        if let Some(id) = choose_worker(&policy, &prompt, &workers, ticket) {
            let cost = kv_aware_cost(weight, &prompt, find(&workers, &id).unwrap());
            for w in workers.iter().filter(|w| w.is_eligible()) {
                prop_assert!(cost <= kv_aware_cost(weight, &prompt, w));
            }
        }
    }

    /// kv-aware, all loads equal: the chosen worker has the largest cached overlap.
    #[test]
    fn kv_aware_equal_loads_prefers_larger_overlap(
        weight in 0.01f64..4.0,
        prompt in prompt(),
        shared in load_numbers(),
        per_worker in prop::collection::vec((any::<bool>(), any::<bool>(), prop::collection::vec(hash(), 0..10)), 1..8),
        ticket in any::<u64>(),
    ) {
        let workers: Vec<WorkerView> = per_worker
            .iter()
            .enumerate()
            .map(|(i, (alive, draining, cached))| {
                let l = Load { draining: *draining, cached: cached.clone(), ..shared.clone() };
                view(&format!("w{i}"), *alive, &l)
            })
            .collect();
        let policy = RoutingPolicy::KvAware { overlap_weight: weight };
        if let Some(id) = choose_worker(&policy, &prompt, &workers, ticket) {
            let overlap = find(&workers, &id).unwrap().cached_overlap(&prompt);
            for w in workers.iter().filter(|w| w.is_eligible()) {
                prop_assert!(overlap >= w.cached_overlap(&prompt));
            }
        }
    }

    /// kv-aware, all overlaps equal: the chosen worker has the fewest used blocks,
    /// and among those the smallest load key.
    #[test]
    fn kv_aware_equal_overlaps_prefers_lower_load(
        weight in 0.0f64..4.0,
        prompt in prompt(),
        cached in prop::collection::vec(hash(), 0..10),
        loads in prop::collection::vec((any::<bool>(), load_numbers()), 1..8),
        ticket in any::<u64>(),
    ) {
        let workers: Vec<WorkerView> = loads
            .iter()
            .enumerate()
            .map(|(i, (alive, l))| view(&format!("w{i}"), *alive, &Load { cached: cached.clone(), ..l.clone() }))
            .collect();
        let policy = RoutingPolicy::KvAware { overlap_weight: weight };
        if let Some(id) = choose_worker(&policy, &prompt, &workers, ticket) {
            let chosen = find(&workers, &id).unwrap();
            for w in workers.iter().filter(|w| w.is_eligible()) {
                prop_assert!(chosen.used_blocks() <= w.used_blocks());
                if chosen.used_blocks() == w.used_blocks() {
                    prop_assert!(chosen.load_key() <= w.load_key());
                }
            }
        }
    }

    /// round-robin: N×k consecutive tickets hit each of the N eligible workers exactly
    /// k times, and nobody else.
    #[test]
    fn round_robin_spreads_exactly(
        workers in workers(), k in 1u64..6, start in 0u64..(u64::MAX / 2)
    ) {
        let n = workers.iter().filter(|w| w.is_eligible()).count() as u64;
        let mut counts: HashMap<WorkerId, u64> = HashMap::new();
        for ticket in start..start + n * k {
            let id = choose_worker(&RoutingPolicy::RoundRobin, &[], &workers, ticket);
            prop_assert!(id.is_some());
            *counts.entry(id.unwrap()).or_default() += 1;
        }
        prop_assert_eq!(counts.len() as u64, n);
        for w in workers.iter().filter(|w| w.is_eligible()) {
            prop_assert_eq!(counts.get(w.id()).copied(), Some(k), "worker {}", w.id());
        }
    }

    /// The load order is a total order (antisymmetric, consistent with Eq).
    #[test]
    fn load_key_order_is_consistent(a in load_numbers(), b in load_numbers()) {
        let (ka, kb) = (LoadKey::of(&load("a", &a)), LoadKey::of(&load("b", &b)));
        prop_assert_eq!(ka.cmp(&kb), kb.cmp(&ka).reverse());
        prop_assert_eq!(ka.cmp(&kb) == Ordering::Equal, ka == kb);
    }
}

// ---- unit cases ----

#[test]
fn policy_names_round_trip() {
    for name in RoutingPolicy::NAMES {
        let policy: RoutingPolicy = name.parse().unwrap();
        assert_eq!(policy.to_string(), name);
    }
    assert_eq!(
        "kv-aware".parse::<RoutingPolicy>().unwrap(),
        RoutingPolicy::KvAware {
            overlap_weight: 1.0
        }
    );
    assert_eq!(RoutingPolicy::default(), RoutingPolicy::RoundRobin);
}

#[test]
fn unknown_policy_error_lists_valid_names() {
    let err = "fastest".parse::<RoutingPolicy>().unwrap_err();
    assert_eq!(
        err,
        PolicyError::UnknownPolicy {
            name: "fastest".into()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("\"fastest\""), "{msg}");
    for name in RoutingPolicy::NAMES {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
    assert!("Round-Robin".parse::<RoutingPolicy>().is_err());
}

#[test]
fn kv_aware_weight_is_checked() {
    assert_eq!(
        RoutingPolicy::kv_aware(2.5),
        Ok(RoutingPolicy::KvAware {
            overlap_weight: 2.5
        })
    );
    assert!(RoutingPolicy::kv_aware(0.0).is_ok());
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            RoutingPolicy::kv_aware(bad),
            Err(PolicyError::InvalidOverlapWeight { .. })
        ));
    }
}

#[test]
fn cached_overlap_is_a_prefix_match() {
    let w = view(
        "w",
        true,
        &Load {
            cached: vec![1, 2, 4],
            ..idle(10, 10)
        },
    );
    assert_eq!(w.cached_overlap(&[1, 2, 3, 4]), 2);
    assert_eq!(
        w.cached_overlap(&[3, 1, 2]),
        0,
        "a miss first means no reuse"
    );
    assert_eq!(w.cached_overlap(&[1, 2, 4]), 3);
    assert_eq!(w.cached_overlap(&[]), 0);
}

#[test]
fn kv_aware_trades_overlap_against_load() {
    // a: 3 prompt blocks cached, 5 used; b: nothing cached, 0 used. Prompt: 4 blocks.
    let a = view(
        "a",
        true,
        &Load {
            cached: vec![10, 11, 12],
            ..idle(20, 15)
        },
    );
    let b = view("b", true, &idle(20, 20));
    let prompt = [10, 11, 12, 13];
    let workers = [a, b];
    let pick = |w: f64| {
        choose_worker(
            &RoutingPolicy::KvAware { overlap_weight: w },
            &prompt,
            &workers,
            0,
        )
    };
    // weight 1: a = 1 + 5 = 6, b = 4 + 0 = 4.
    assert_eq!(pick(1.0), Some(WorkerId("b".into())));
    // weight 2: a = 2 + 5 = 7, b = 8 + 0 = 8.
    assert_eq!(pick(2.0), Some(WorkerId("a".into())));
    // weight 0: load only.
    assert_eq!(pick(0.0), Some(WorkerId("b".into())));
}

#[test]
fn least_loaded_orders_queue_before_blocks() {
    let busy_queue = view(
        "a",
        true,
        &Load {
            running: 2,
            ..idle(10, 10)
        },
    );
    let full_blocks = view("b", true, &idle(10, 1));
    let half = view("c", true, &idle(100, 50));
    let workers = [busy_queue, full_blocks, half];
    assert_eq!(
        choose_worker(&RoutingPolicy::LeastLoaded, &[], &workers, 0),
        Some(WorkerId("c".into()))
    );
    // Equal queue and fraction (5/10 vs 50/100): fewer used blocks first, before id.
    let workers = [
        view("z", true, &idle(10, 5)),
        view("y", true, &idle(100, 50)),
    ];
    assert_eq!(
        choose_worker(&RoutingPolicy::LeastLoaded, &[], &workers, 0),
        Some(WorkerId("z".into()))
    );
    // Identical keys: the lower id.
    let workers = [view("z", true, &idle(10, 5)), view("y", true, &idle(10, 5))];
    assert_eq!(
        choose_worker(&RoutingPolicy::LeastLoaded, &[], &workers, 0),
        Some(WorkerId("y".into()))
    );
}

#[test]
fn random_spreads_over_workers() {
    let workers: Vec<WorkerView> = (0..4)
        .map(|i| view(&format!("w{i}"), true, &idle(8, 8)))
        .collect();
    let mut counts: HashMap<WorkerId, u32> = HashMap::new();
    for ticket in 0..4000u64 {
        *counts
            .entry(choose_worker(&RoutingPolicy::Random, &[], &workers, ticket).unwrap())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4);
    for (id, c) in &counts {
        assert!((800..1200).contains(c), "{id} got {c} of 4000");
    }
}

#[test]
fn no_workers_or_none_eligible_gives_none() {
    for policy in [
        RoutingPolicy::RoundRobin,
        RoutingPolicy::Random,
        RoutingPolicy::LeastLoaded,
        RoutingPolicy::KvAware {
            overlap_weight: 1.0,
        },
    ] {
        assert_eq!(choose_worker(&policy, &[1], &[], 7), None);
        let workers = [
            view("dead", false, &idle(8, 8)),
            view(
                "draining",
                true,
                &Load {
                    draining: true,
                    ..idle(8, 8)
                },
            ),
        ];
        assert_eq!(choose_worker(&policy, &[1], &workers, 7), None);
    }
}
