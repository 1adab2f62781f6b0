//! Keeps the rayon pool's other workers awake for the length of a forward pass.
//!
//! Why: a forward pass launches ~120 parallel regions (matmuls, attention,
//! quantization) separated by short serial stretches (norms, RoPE, residual
//! adds). Between regions an idle rayon worker yields ~32 times and then sleeps on
//! a futex; the next region then waits for it to be woken, which on a VM costs
//! tens of µs. Measured at batch 16 on the 2-core machine (temporary counters):
//! per matmul, 2 × wall − Σ task time was ~40 µs of thread time without keepers
//! and about half that with them. Forward passes alternating in one process
//! took 9–18% less time with keepers at batch 16 (one by one, or two by two)
//! and 6–10% less at batch 1; a three-way rotation (none, 500 µs, 5 ms) showed
//! no batch-16 gain, so in-process alternation depends on the order, and the
//! end-to-end figures in BENCHMARKS.md (bench-engine, separate processes) are
//! the ones to trust.
//!
//! How: [`run_warm`] runs `f` on a pool worker and, beside it, one *keeper* job
//! per other worker. A keeper polls `rayon::yield_now` — which runs any pending
//! rayon job at once, stealing it from `f`'s worker — until `f` returns. It is
//! bounded so that it can never hold a thread hostage: it returns as soon as `f`
//! is done, when it finds itself on `f`'s own worker (that worker only pops it
//! while waiting for stolen work, and must get back to `f`), or after
//! [`MAX_IDLE`] without finding work (a long serial stretch: the worker then
//! idles and sleeps as rayon normally lets it). While idle it spins on
//! `spin_loop` rather than `thread::yield_now`: with a `sched_yield` per idle
//! poll, batch-16 passes took ~25% longer.
//!
//! Keepers are detached (`rayon::spawn`), not scoped: `yield_now` may hand a
//! keeper another caller's whole job (a second engine in the same process
//! injecting its forward pass), and `f`'s caller must not wait for that to end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A keeper that found no work for this long returns (and its worker may sleep).
/// At 500 µs, keepers timed out in about half of the batch-16 forward passes
/// (the pass's own thread off the CPU, or a long serial stretch) and were gone
/// for ~5 ms of a ~33 ms pass on average; at 5 ms none timed out.
const MAX_IDLE: Duration = Duration::from_millis(5);

/// Polls between clock reads while idle (a clock read costs ~25 ns).
const POLLS_PER_CLOCK_READ: u32 = 64;

/// Runs `f` on a worker of the current rayon pool with the pool's other workers
/// kept awake until it returns (see the module header).
pub fn run_warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    run_tracked(f).0
}

/// [`run_warm`], also returning the flag its keepers hold (each keeper owns a
/// clone until it returns, which the tests watch).
fn run_tracked<R: Send>(f: impl FnOnce() -> R + Send) -> (R, Arc<AtomicBool>) {
    let done = Arc::new(AtomicBool::new(false));
    let keepers = rayon::current_num_threads().saturating_sub(1);
    let r = rayon::scope(|_| {
        let owner = rayon::current_thread_index();
        for _ in 0..keepers {
            let done = Arc::clone(&done);
            rayon::spawn(move || keep_warm(&done, owner));
        }
        f()
    });
    done.store(true, Ordering::Release);
    (r, done)
}

/// Runs pending rayon jobs as they appear until `done`, or until idle for
/// [`MAX_IDLE`]; returns at once on `owner`'s thread.
fn keep_warm(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle_since: Option<Instant> = None;
    let mut polls = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = None;
            polls = 0;
            continue;
        }
        std::hint::spin_loop();
        polls += 1;
        if polls.is_multiple_of(POLLS_PER_CLOCK_READ) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > MAX_IDLE {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn returns_what_f_returns() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let sum: u64 = pool.install(|| run_warm(|| (0..10_000u64).into_par_iter().sum()));
        assert_eq!(sum, 10_000 * 9_999 / 2);
    }

    /// Waits (bounded) until no keeper holds `done` any more.
    fn keepers_gone(done: &Arc<AtomicBool>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(done) > 1 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn keepers_end_after_f_does() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for round in 0..100u64 {
            // Nested parallel work inside f, and f with none at all.
            let (v, done) = pool.install(|| {
                run_tracked(|| {
                    if round % 2 == 0 {
                        (0..1000u64).into_par_iter().map(|x| x * round).sum()
                    } else {
                        round
                    }
                })
            });
            let want = if round % 2 == 0 {
                round * 1000 * 999 / 2
            } else {
                round
            };
            assert_eq!(v, want);
            assert!(done.load(Ordering::Acquire));
            assert!(keepers_gone(&done), "a keeper outlived its forward pass");
        }
    }

    #[test]
    fn single_thread_pool_runs_f_inline() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| run_warm(|| 7)), 7);
    }

    #[test]
    fn concurrent_callers_on_one_pool_all_finish() {
        // Several engines may share the global pool (tests do): each one's
        // keepers must never block another's forward pass for good.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let pool = &pool;
                s.spawn(move || {
                    for _ in 0..50 {
                        let v: u64 = pool.install(|| {
                            run_warm(|| (0..500u64).into_par_iter().map(|x| x + t).sum())
                        });
                        assert_eq!(v, 500 * 499 / 2 + 500 * t);
                    }
                });
            }
        });
    }
}
