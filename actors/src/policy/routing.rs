//! Which decode worker serves a request: the routing policies.
//!
//! Owns [`RoutingPolicy`] (the `--router-policy` names), [`WorkerView`] (one
//! worker's last load report, indexed once per report) and [`choose_worker`], a pure
//! function of (policy, prompt block hashes, worker views, ticket).
//!
//! Invariants:
//! - Only an *eligible* worker is ever chosen: present in `workers`, `alive`, and
//!   not `draining`. `None` exactly when no worker is eligible.
//! - Deterministic: the same inputs give the same worker. The answer does not depend
//!   on the order of `workers` (given unique worker ids): candidates are ordered by
//!   worker id and every tie is broken by worker id.
//! - Round-robin: eligible workers sorted by id, pick `ticket % n`, so `n × k`
//!   consecutive tickets hit each of the `n` workers exactly `k` times.
//! - Random: a fixed 64-bit mix (splitmix64) of the ticket, scaled to `n`; the
//!   ticket is the seed, so a replayed ticket replays the choice.
//! - Least-loaded: smallest [`LoadKey`] (queued sequences, then used KV fraction),
//!   ties by worker id.
//! - Kv-aware: smallest cost, where cost = `overlap_weight × uncached + used`
//!   (`uncached`: prompt blocks not cached on the worker; `used`: the worker's used
//!   KV blocks), ties by [`LoadKey`], then worker id. The cached
//!   overlap is the number of *leading* prompt block hashes found in the worker's
//!   reported prefix cache (a prefix match: it stops at the first miss, since a
//!   prefix cache can only reuse a leading run of blocks).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use pdserve_cluster::ids::WorkerId;
use pdserve_cluster::protocol::WorkerLoad;

/// Errors of the routing area: bad policy names or parameters (CLI / config input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown routing policy {name:?}; valid policies: {}", RoutingPolicy::NAMES.join(", "))]
    UnknownPolicy { name: String },
    #[error("kv-aware overlap weight must be a finite number >= 0, got {weight}")]
    InvalidOverlapWeight { weight: f64 },
}

/// How the router picks a decode worker.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RoutingPolicy {
    /// Eligible workers in id order, one after the other.
    #[default]
    RoundRobin,
    /// A pseudo-random eligible worker, seeded by the request ticket.
    Random,
    /// The eligible worker with the smallest [`LoadKey`].
    LeastLoaded,
    /// Prefix-cache overlap against load: lowest
    /// `overlap_weight × uncached prompt blocks + used blocks`.
    KvAware { overlap_weight: f64 },
}

impl RoutingPolicy {
    /// The CLI names, in the order they are listed in errors.
    pub const NAMES: [&'static str; 4] = ["round-robin", "random", "least-loaded", "kv-aware"];

    /// Overlap weight of `kv-aware` when none is given.
    pub const DEFAULT_OVERLAP_WEIGHT: f64 = 1.0;

    /// `kv-aware` with a checked weight (finite and `>= 0`).
    pub fn kv_aware(overlap_weight: f64) -> Result<RoutingPolicy, PolicyError> {
        if overlap_weight.is_finite() && overlap_weight >= 0.0 {
            Ok(RoutingPolicy::KvAware { overlap_weight })
        } else {
            Err(PolicyError::InvalidOverlapWeight {
                weight: overlap_weight,
            })
        }
    }

    /// The CLI name (the weight of `kv-aware` is not part of it).
    pub fn name(&self) -> &'static str {
        match self {
            RoutingPolicy::RoundRobin => "round-robin",
            RoutingPolicy::Random => "random",
            RoutingPolicy::LeastLoaded => "least-loaded",
            RoutingPolicy::KvAware { .. } => "kv-aware",
        }
    }
}

impl fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RoutingPolicy {
    type Err = PolicyError;

    /// Parses a CLI name (exact, lower case); `kv-aware` gets
    /// [`RoutingPolicy::DEFAULT_OVERLAP_WEIGHT`].
    fn from_str(s: &str) -> Result<RoutingPolicy, PolicyError> {
        match s {
            "round-robin" => Ok(RoutingPolicy::RoundRobin),
            "random" => Ok(RoutingPolicy::Random),
            "least-loaded" => Ok(RoutingPolicy::LeastLoaded),
            "kv-aware" => Ok(RoutingPolicy::KvAware {
                overlap_weight: RoutingPolicy::DEFAULT_OVERLAP_WEIGHT,
            }),
            other => Err(PolicyError::UnknownPolicy {
                name: other.to_string(),
            }),
        }
    }
}

/// One worker as the router sees it: its last load report and whether it is alive
/// (in the process group and reported recently; the caller decides).
///
/// The prefix-cache hashes of the report are indexed once, at construction; build
/// a new view for each new report.
#[derive(Debug, Clone)]
pub struct WorkerView {
    load: WorkerLoad,
    /// Set by the caller (membership / report age); may change without a new report.
    pub alive: bool,
    /// `load.cached_blocks` as a set (kept in step with `load`: `load` is read-only).
    cached: HashSet<u128>,
}

impl WorkerView {
    pub fn new(load: WorkerLoad, alive: bool) -> WorkerView {
        let cached = load.cached_blocks.iter().copied().collect();
        WorkerView {
            load,
            alive,
            cached,
        }
    }

    /// The load report this view was built from.
    pub fn load(&self) -> &WorkerLoad {
        &self.load
    }

    pub fn id(&self) -> &WorkerId {
        &self.load.worker
    }

    /// Alive and not draining: may be given new requests.
    pub fn is_eligible(&self) -> bool {
        self.alive && !self.load.draining
    }

    /// Number of leading `prompt_block_hashes` in this worker's prefix cache
    /// (stops at the first miss).
    pub fn cached_overlap(&self, prompt_block_hashes: &[u128]) -> usize {
        prompt_block_hashes
            .iter()
            .take_while(|h| self.cached.contains(h))
            .count()
    }

    /// KV blocks in use (`total - free`; a report with `free > total` counts 0).
    pub fn used_blocks(&self) -> u32 {
        used_blocks(&self.load)
    }

    /// The least-loaded ordering key of this worker.
    pub fn load_key(&self) -> LoadKey {
        LoadKey::of(&self.load)
    }
}

fn used_blocks(load: &WorkerLoad) -> u32 {
    load.total_blocks.saturating_sub(load.free_blocks)
}

/// How busy a worker is, for `least-loaded` and for kv-aware ties. Ordered by
/// `queued = running + waiting` first, then by the used fraction of its KV blocks
/// (`used / total`, compared exactly as a fraction; a worker reporting no blocks at
/// all counts as full), then — so that the order is total — by used blocks and
/// total blocks. Smaller is less loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadKey {
    pub queued: u64,
    pub used_blocks: u32,
    pub total_blocks: u32,
}

impl LoadKey {
    pub fn of(load: &WorkerLoad) -> LoadKey {
        LoadKey {
            queued: u64::from(load.running) + u64::from(load.waiting),
            used_blocks: used_blocks(load),
            total_blocks: load.total_blocks,
        }
    }

    /// `(used, total)` with the "no blocks = full" rule applied; `used <= total`.
    fn fraction(&self) -> (u64, u64) {
        if self.total_blocks == 0 {
            (1, 1)
        } else {
            (u64::from(self.used_blocks), u64::from(self.total_blocks))
        }
    }
}

impl Ord for LoadKey {
    fn cmp(&self, other: &LoadKey) -> Ordering {
        let (a_used, a_total) = self.fraction();
        let (b_used, b_total) = other.fraction();
        // a_used / a_total vs b_used / b_total, cross-multiplied (fits in u64:
        // both factors are u32).
        self.queued
            .cmp(&other.queued)
            .then((a_used * b_total).cmp(&(b_used * a_total)))
            // Equal fractions: make the order total and consistent with Eq.
            .then(self.used_blocks.cmp(&other.used_blocks))
            .then(self.total_blocks.cmp(&other.total_blocks))
    }
}

impl PartialOrd for LoadKey {
    fn partial_cmp(&self, other: &LoadKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The kv-aware cost of sending a prompt to `worker`:
/// `overlap_weight × (prompt blocks − cached overlap) + used blocks`.
pub fn kv_aware_cost(
    overlap_weight: f64,
    prompt_block_hashes: &[u128],
    worker: &WorkerView,
) -> f64 {
    let uncached = prompt_block_hashes.len() - worker.cached_overlap(prompt_block_hashes);
    overlap_weight * uncached as f64 + f64::from(worker.used_blocks())
}

/// splitmix64 finalizer: a fixed, well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks the decode worker for one request, or `None` when no worker is eligible
/// (alive and not draining).
///
/// `prompt_block_hashes` are the hashes of the prompt's full KV blocks, in prompt
/// order (used by kv-aware only). `ticket` is the router's request counter: the
/// position for round-robin and the seed for random. Worker ids in `workers` are
/// expected to be unique (one view per worker).
pub fn choose_worker(
    policy: &RoutingPolicy,
    prompt_block_hashes: &[u128],
    workers: &[WorkerView],
    ticket: u64,
) -> Option<WorkerId> {
    let mut eligible: Vec<&WorkerView> = workers.iter().filter(|w| w.is_eligible()).collect();
    if eligible.is_empty() {
        return None;
    }
    eligible.sort_by(|a, b| a.id().cmp(b.id()));
    let n = eligible.len() as u64;
    let chosen = match *policy {
        RoutingPolicy::RoundRobin => eligible[(ticket % n) as usize],
        RoutingPolicy::Random => {
            // Multiply-shift maps the 64-bit hash onto 0..n without a modulo bias
            // worth the name; the result is < n, so it fits in usize.
            let index = (u128::from(splitmix64(ticket)) * u128::from(n)) >> 64;
            eligible[index as usize]
        }
        RoutingPolicy::LeastLoaded => {
            // `eligible` is in id order and min_by_key keeps the first minimum:
            // ties go to the lower id.
            eligible.iter().copied().min_by_key(|w| w.load_key())?
        }
        RoutingPolicy::KvAware { overlap_weight } => eligible
            .iter()
            .map(|w| (kv_aware_cost(overlap_weight, prompt_block_hashes, w), *w))
            .min_by(|(cost_a, a), (cost_b, b)| {
                cost_a
                    .total_cmp(cost_b)
                    .then_with(|| a.load_key().cmp(&b.load_key()))
                    .then_with(|| a.id().cmp(b.id()))
            })
            .map(|(_, w)| w)?,
    };
    Some(chosen.id().clone())
}

#[cfg(test)]
#[path = "routing_tests.rs"]
pub(crate) mod tests;
