//! Pure decision functions of the serving layer (no actors, no clocks, no I/O).
//!
//! - [`routing`]: which decode worker serves a request (`round-robin`, `random`,
//!   `least-loaded`, `kv-aware`), from the workers' last load reports;
//! - [`disagg`]: whether a decode worker prefills a prompt itself or sends it to
//!   the prefill queue.
//!
//! Invariant: every function here is deterministic in its arguments (randomness
//! comes in as a seed), so that property tests can drive them and a decision can
//! be replayed from a log.

pub mod disagg;
pub mod routing;

pub use disagg::{
    decide_prefill, prefill_decision, LocalReason, PrefillDecision, PrefillDecisionInput,
    DEFAULT_MAX_LOCAL_PREFILL_LENGTH,
};
pub use routing::{choose_worker, kv_aware_cost, LoadKey, PolicyError, RoutingPolicy, WorkerView};
