//! The C allocator's arena count, the one knob of glibc malloc that moves the CPU
//! engine's peak memory (an FFI module: its one `unsafe` block calls `mallopt`).
//!
//! A forward allocates its activations on whichever rayon worker runs it, and glibc
//! gives each allocating thread its own arena, which keeps what was freed in it.
//! A 512-token prefill chunk's ~12 MiB of activations then stay resident once per
//! worker that ever ran a forward: the peak RSS of the same command varied by ~9 MiB
//! between runs (192 or 201 MiB), and a single arena made it 189.5 MiB every time,
//! with no measurable change in speed (BENCHMARKS.md, prefill RSS). Small
//! allocations stay lock-free in glibc's per-thread caches either way.

/// Limits glibc malloc to one arena, unless `MALLOC_ARENA_MAX` is set (the user's
/// choice wins; glibc reads it itself). Call first thing in `main`, before other
/// threads allocate. A no-op on other C libraries.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only stores the parameter (M_ARENA_MAX takes effect as
        // threads pick arenas); it has no memory-safety preconditions and is safe
        // to call at any time. A refusal (return 0) leaves the default, harmlessly.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}
