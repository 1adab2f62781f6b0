//! Local or remote prefill: the decode worker's disaggregation decision.
//!
//! Owns [`PrefillDecisionInput`] and [`decide_prefill`], a pure function of the
//! prompt, the worker's own prefix-cache hit and the prefill side's state.
//!
//! Invariant: the prefill is `Remote` exactly when all three hold —
//! 1. the prompt tokens left after the local prefix-cache hit
//!    (`prompt_tokens − locally_cached_tokens`, floored at 0) exceed
//!    `max_local_prefill_length` (strictly);
//! 2. the prefill queue is shorter than `max_prefill_queue_size` (strictly);
//! 3. at least one prefill worker is alive.
//!
//! Otherwise it is `Local`, and [`prefill_decision`] says which condition kept it
//! local (for logs and metrics). The decision is monotonic: a longer prompt, a
//! smaller cache hit or a shorter queue never turns `Remote` into `Local`.

use pdserve_cluster::protocol::PrefillLocation;

/// Default `--max-local-prefill-length`: prompts needing at most this many new
/// tokens are prefilled by the decode worker itself.
pub const DEFAULT_MAX_LOCAL_PREFILL_LENGTH: usize = 512;

/// What the decode worker knows when a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillDecisionInput {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Leading prompt tokens already in this decode worker's prefix cache.
    pub locally_cached_tokens: usize,
    /// `--max-local-prefill-length`.
    pub max_local_prefill_length: usize,
    /// Remote prefills now waiting in this worker's prefill queue.
    pub prefill_queue_len: usize,
    /// `--max-prefill-queue-size`.
    pub max_prefill_queue_size: usize,
    /// Prefill workers of this model currently alive.
    pub live_prefill_workers: usize,
}

impl PrefillDecisionInput {
    /// Prompt tokens the prefill has to compute (`prompt − cached`, floored at 0).
    pub fn tokens_to_prefill(&self) -> usize {
        self.prompt_tokens
            .saturating_sub(self.locally_cached_tokens)
    }
}

/// Why a prefill stays local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalReason {
    /// The uncached part of the prompt is within `max_local_prefill_length`.
    ShortPrompt,
    /// The prefill queue already holds `max_prefill_queue_size` entries.
    QueueFull,
    /// No prefill worker is alive.
    NoPrefillWorkers,
}

impl LocalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReason::ShortPrompt => "short_prompt",
            LocalReason::QueueFull => "queue_full",
            LocalReason::NoPrefillWorkers => "no_prefill_workers",
        }
    }
}

/// The decision with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefillDecision {
    Remote,
    /// Local, for the first failing condition in the order of [`LocalReason`].
    Local(LocalReason),
}

impl PrefillDecision {
    pub fn location(self) -> PrefillLocation {
        match self {
            PrefillDecision::Remote => PrefillLocation::Remote,
            PrefillDecision::Local(_) => PrefillLocation::Local,
        }
    }
}

/// The decision and, when local, why (see the module invariant).
pub fn prefill_decision(input: &PrefillDecisionInput) -> PrefillDecision {
    if input.tokens_to_prefill() <= input.max_local_prefill_length {
        PrefillDecision::Local(LocalReason::ShortPrompt)
    } else if input.prefill_queue_len >= input.max_prefill_queue_size {
        PrefillDecision::Local(LocalReason::QueueFull)
    } else if input.live_prefill_workers == 0 {
        PrefillDecision::Local(LocalReason::NoPrefillWorkers)
    } else {
        PrefillDecision::Remote
    }
}

/// Local or remote prefill for one request (see the module invariant).
pub fn decide_prefill(input: &PrefillDecisionInput) -> PrefillLocation {
    prefill_decision(input).location()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn input() -> impl Strategy<Value = PrefillDecisionInput> {
        (
            0usize..2000,
            0usize..2000,
            0usize..1200,
            0usize..40,
            0usize..40,
            0usize..4,
        )
            .prop_map(|(prompt, cached, max_local, queue, max_queue, live)| {
                PrefillDecisionInput {
                    prompt_tokens: prompt,
                    locally_cached_tokens: cached,
                    max_local_prefill_length: max_local,
                    prefill_queue_len: queue,
                    max_prefill_queue_size: max_queue,
                    live_prefill_workers: live,
                }
            })
    }

    /// The three conditions, written out independently of the implementation.
    fn conditions(i: &PrefillDecisionInput) -> [bool; 3] {
        let left = i.prompt_tokens as i64 - i.locally_cached_tokens as i64;
        [
            left > i.max_local_prefill_length as i64,
            i.prefill_queue_len < i.max_prefill_queue_size,
            i.live_prefill_workers > 0,
        ]
    }

    /// The input with condition `c` forced to `value`, the others untouched.
    fn with_condition(mut i: PrefillDecisionInput, c: usize, value: bool) -> PrefillDecisionInput {
        match (c, value) {
            (0, true) => i.prompt_tokens = i.locally_cached_tokens + i.max_local_prefill_length + 1,
            (0, false) => i.prompt_tokens = i.locally_cached_tokens + i.max_local_prefill_length,
            (1, true) => i.max_prefill_queue_size = i.prefill_queue_len + 1,
            (1, false) => i.max_prefill_queue_size = i.prefill_queue_len,
            (2, true) => i.live_prefill_workers = i.live_prefill_workers.max(1),
            (2, false) => i.live_prefill_workers = 0,
            _ => unreachable!("three conditions"),
        }
        i
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Remote iff all three conditions hold; the reason names the first failing one.
        #[test]
        fn remote_iff_every_condition_holds(i in input()) {
            let conds = conditions(&i);
            let expected = if conds.iter().all(|&c| c) { PrefillLocation::Remote } else { PrefillLocation::Local };
            prop_assert_eq!(decide_prefill(&i), expected);
            let reason = match conds.iter().position(|&c| !c) {
                None => PrefillDecision::Remote,
                Some(0) => PrefillDecision::Local(LocalReason::ShortPrompt),
                Some(1) => PrefillDecision::Local(LocalReason::QueueFull),
                Some(_) => PrefillDecision::Local(LocalReason::NoPrefillWorkers),
            };
            prop_assert_eq!(prefill_decision(&i), reason);
        }

        /// Each threshold alone: with the other two conditions holding, flipping one
        /// at its exact boundary flips the decision; with another one failing,
        /// flipping it holds the decision at Local.
        #[test]
        fn each_threshold_alone_flips_or_holds(i in input(), c in 0usize..3, other_fails in any::<bool>()) {
            let mut base = i;
            for o in (0..3).filter(|&o| o != c) {
                base = with_condition(base, o, true);
            }
            if other_fails {
                base = with_condition(base, (c + 1) % 3, false);
            }
            let on = with_condition(base, c, true);
            let off = with_condition(base, c, false);
            prop_assert_eq!(conditions(&on)[c], true);
            prop_assert_eq!(conditions(&off)[c], false);
            prop_assert_eq!(decide_prefill(&off), PrefillLocation::Local);
            let expected_on = if other_fails { PrefillLocation::Local } else { PrefillLocation::Remote };
            prop_assert_eq!(decide_prefill(&on), expected_on);
        }

        /// A longer prompt (or a smaller cache hit, or a shorter queue) never turns
        /// Remote into Local.
        #[test]
        fn monotonic(i in input(), extra in 0usize..1000, less in 0usize..40) {
            if decide_prefill(&i) == PrefillLocation::Remote {
                let longer = PrefillDecisionInput { prompt_tokens: i.prompt_tokens + extra, ..i };
                prop_assert_eq!(decide_prefill(&longer), PrefillLocation::Remote);
                let less_cached = PrefillDecisionInput {
                    locally_cached_tokens: i.locally_cached_tokens.saturating_sub(less), ..i
                };
                prop_assert_eq!(decide_prefill(&less_cached), PrefillLocation::Remote);
                let shorter_queue = PrefillDecisionInput {
                    prefill_queue_len: i.prefill_queue_len.saturating_sub(less), ..i
                };
                prop_assert_eq!(decide_prefill(&shorter_queue), PrefillLocation::Remote);
            }
            // And the other way: a shorter prompt never turns Local into Remote.
            if decide_prefill(&i) == PrefillLocation::Local {
                let shorter = PrefillDecisionInput { prompt_tokens: i.prompt_tokens.saturating_sub(extra), ..i };
                prop_assert_eq!(decide_prefill(&shorter), PrefillLocation::Local);
            }
        }
    }

    #[test]
    fn default_threshold_boundary() {
        let base = PrefillDecisionInput {
            prompt_tokens: 600,
            locally_cached_tokens: 88,
            max_local_prefill_length: DEFAULT_MAX_LOCAL_PREFILL_LENGTH,
            prefill_queue_len: 0,
            max_prefill_queue_size: 1,
            live_prefill_workers: 1,
        };
        // 600 − 88 = 512: not more than 512, so local.
        assert_eq!(
            prefill_decision(&base),
            PrefillDecision::Local(LocalReason::ShortPrompt)
        );
        let one_more = PrefillDecisionInput {
            prompt_tokens: 601,
            ..base
        };
        assert_eq!(decide_prefill(&one_more), PrefillLocation::Remote);
        // A cache hit larger than the prompt is not an underflow.
        let over_cached = PrefillDecisionInput {
            locally_cached_tokens: 10_000,
            ..one_more
        };
        assert_eq!(over_cached.tokens_to_prefill(), 0);
        assert_eq!(decide_prefill(&over_cached), PrefillLocation::Local);
        // A zero-size queue never takes remote work.
        let no_queue = PrefillDecisionInput {
            max_prefill_queue_size: 0,
            ..one_more
        };
        assert_eq!(
            prefill_decision(&no_queue),
            PrefillDecision::Local(LocalReason::QueueFull)
        );
        let no_workers = PrefillDecisionInput {
            live_prefill_workers: 0,
            ..one_more
        };
        assert_eq!(
            prefill_decision(&no_workers),
            PrefillDecision::Local(LocalReason::NoPrefillWorkers)
        );
    }
}
