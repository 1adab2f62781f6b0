//! NIXL for the workers: the decode side registers its engine's KV pool and hands
//! out [`KvTarget::Nixl`] targets; the prefill side registers its own pool and
//! writes a finished prompt's blocks straight from it into the decode pool (no
//! staging copy on either side).
//!
//! Built with the `nixl` feature, [`DecodeNixl`] and [`PrefillNixl`] wrap
//! `pdserve_cluster::transport::nixl`; without it [`available`] says why and
//! their constructors fail with that reason, so the workers compile one code path
//! either way.
//!
//! Memory: the constructors register memory they do not own (an engine's pool),
//! hence `unsafe`; the returned [`Pin`] must go to that engine's thread
//! (`spawn_engine_pinned`), which keeps the pool alive until the registration is
//! gone.

use pdserve_cluster::protocol::PoolMemory;
use pdserve_cluster::WorkerId;
use pdserve_engine::backend::MemKind;
use pdserve_engine::engine::Engine;

#[cfg(feature = "nixl")]
pub use imp::{available, DecodeNixl, PrefillNixl};
#[cfg(not(feature = "nixl"))]
pub use stub::{available, DecodeNixl, PrefillNixl};

/// An engine's whole KV pool as a transport registers it: one region (host
/// memory, or a CUDA device's) with block `i` at `base + i * block_bytes`, and
/// the agent name to register it under.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "nixl"), allow(dead_code))] // read by NIXL only
pub struct EnginePool {
    name: String,
    base: usize,
    len: usize,
    block_bytes: usize,
    memory: PoolMemory,
}

impl EnginePool {
    /// `engine`'s pool, for worker `worker`'s agent; an error when the pool is
    /// not one region.
    pub fn of(worker: &WorkerId, engine: &Engine) -> Result<EnginePool, String> {
        let (base, len, kind) = engine
            .kv_pool_region()
            .ok_or("NIXL: this engine's KV pool is not one region")?;
        let memory = match kind {
            MemKind::Host => PoolMemory::Host,
            MemKind::Cuda(n) => PoolMemory::Cuda(n),
        };
        Ok(EnginePool {
            // Unique in the cluster: a restarted worker gets a new agent.
            name: format!("pdserve-{worker}-{}", std::process::id()),
            base,
            len,
            block_bytes: engine.kv_layout().block_bytes(),
            memory,
        })
    }

    #[cfg_attr(not(feature = "nixl"), allow(dead_code))]
    fn block_addr(&self, b: pdserve_engine::BlockId) -> u64 {
        (self.base + b.0 as usize * self.block_bytes) as u64
    }
}

#[cfg(feature = "nixl")]
mod imp {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use pdserve_cluster::protocol::KvTarget;
    use pdserve_cluster::transport::nixl::{
        ensure_library, NixlConfig, NixlEndpoint, NixlKvReceiver,
    };
    use pdserve_cluster::transport::tcp::KvWritten;
    use pdserve_engine::{BlockId, SeqId};
    use tokio::sync::mpsc::UnboundedSender;

    use super::EnginePool;
    use crate::engine_actor::Pin;

    /// How often the decode side polls for write notifications.
    const POLL_EVERY: Duration = Duration::from_micros(500);

    /// Whether NIXL can be used here (built in, library loadable), or why not.
    pub fn available() -> Result<(), String> {
        ensure_library().map_err(|e| e.to_string())
    }

    /// # Safety
    /// `pool`'s region must stay allocated and in place while the endpoint lives.
    unsafe fn register(pool: &EnginePool) -> Result<Arc<NixlEndpoint>, String> {
        // SAFETY: forwarded to the caller.
        let ep = unsafe {
            NixlEndpoint::new(
                &pool.name,
                pool.base,
                pool.len,
                pool.memory,
                &NixlConfig::default(),
            )
        };
        let ep = ep.map(Arc::new).map_err(|e| format!("NIXL: {e}"))?;
        tracing::info!(agent = %pool.name, bytes = pool.len, "KV pool registered with NIXL");
        Ok(ep)
    }

    /// The decode side: one agent with the engine's pool registered, and the
    /// notification poller that turns finished writes into [`KvWritten`].
    pub struct DecodeNixl {
        recv: NixlKvReceiver,
        pool: EnginePool,
        metadata: Vec<u8>,
    }

    impl DecodeNixl {
        /// Registers `pool`; finished writes go to `on_written`.
        ///
        /// # Safety
        /// The pool must stay allocated and in place while the returned pin is
        /// held: hand the pin to the engine thread that owns the pool.
        pub unsafe fn start(
            pool: &EnginePool,
            on_written: UnboundedSender<KvWritten>,
        ) -> Result<(DecodeNixl, Pin), String> {
            // SAFETY: forwarded to the caller.
            let ep = unsafe { register(pool) }?;
            let metadata = ep.metadata().map_err(|e| format!("NIXL: {e}"))?;
            let pin: Pin = ep.clone();
            let recv = NixlKvReceiver::start(ep, on_written, POLL_EVERY);
            let pool = pool.clone();
            Ok((
                DecodeNixl {
                    recv,
                    pool,
                    metadata,
                },
                pin,
            ))
        }

        /// Reports `ticket`'s write into `blocks` of import `seq` if it lands
        /// before `deadline`.
        pub fn expect(&self, ticket: u64, seq: SeqId, blocks: &[BlockId], deadline: Instant) {
            let n = blocks.len() as u64;
            let bytes = n * self.pool.block_bytes as u64;
            self.recv.expect(ticket, seq, n as u32, bytes, deadline);
        }

        /// No report for `ticket` any more (its write may still land).
        pub fn forget(&self, ticket: u64) {
            self.recv.forget(ticket);
        }

        /// Where a prefill worker writes `ticket`'s `blocks`; `tcp` is the data
        /// plane a prefill worker without NIXL uses instead.
        pub fn target(&self, ticket: u64, blocks: &[BlockId], tcp: Option<String>) -> KvTarget {
            KvTarget::Nixl {
                agent: self.pool.name.clone(),
                agent_metadata: self.metadata.clone(),
                block_addrs: blocks.iter().map(|b| self.pool.block_addr(*b)).collect(),
                memory: self.pool.memory,
                ticket,
                tcp,
            }
        }
    }

    /// The prefill side: one agent with the engine's pool registered, writing
    /// blocks from it.
    pub struct PrefillNixl {
        ep: Arc<NixlEndpoint>,
        pool: EnginePool,
    }

    impl PrefillNixl {
        /// Registers `pool`.
        ///
        /// # Safety
        /// As [`DecodeNixl::start`].
        pub unsafe fn start(pool: &EnginePool) -> Result<(PrefillNixl, Pin), String> {
            // SAFETY: forwarded to the caller.
            let ep = unsafe { register(pool) }?;
            let pin: Pin = ep.clone();
            let pool = pool.clone();
            Ok((PrefillNixl { ep, pool }, pin))
        }

        /// Writes this pool's blocks `src` to the blocks `target` names, in order,
        /// with `target`'s ticket as the notification; returns when the write
        /// completed (or failed, or `timeout` passed).
        pub async fn write(
            &self,
            target: &KvTarget,
            src: &[BlockId],
            timeout: Duration,
        ) -> Result<(), String> {
            let addrs: Vec<u64> = src.iter().map(|b| self.pool.block_addr(*b)).collect();
            self.ep
                .write_to_target(target, &addrs, self.pool.block_bytes, timeout)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(not(feature = "nixl"))]
mod stub {
    //! Without the `nixl` feature: [`available`] explains, nothing constructs,
    //! so the methods can never run.
    use std::convert::Infallible;
    use std::time::{Duration, Instant};

    use pdserve_cluster::protocol::KvTarget;
    use pdserve_cluster::transport::tcp::KvWritten;
    use pdserve_engine::{BlockId, SeqId};
    use tokio::sync::mpsc::UnboundedSender;

    use super::EnginePool;
    use crate::engine_actor::Pin;

    const NOT_BUILT: &str =
        "this pdserve was built without NIXL (rebuild with `cargo build --release --features nixl`)";

    pub fn available() -> Result<(), String> {
        Err(NOT_BUILT.into())
    }

    pub struct DecodeNixl(Infallible);

    impl DecodeNixl {
        /// # Safety
        /// None needed: this build registers nothing.
        pub unsafe fn start(
            _: &EnginePool,
            _: UnboundedSender<KvWritten>,
        ) -> Result<(DecodeNixl, Pin), String> {
            Err(NOT_BUILT.into())
        }
        pub fn expect(&self, _: u64, _: SeqId, _: &[BlockId], _: Instant) {
            match self.0 {}
        }
        pub fn forget(&self, _: u64) {
            match self.0 {}
        }
        pub fn target(&self, _: u64, _: &[BlockId], _: Option<String>) -> KvTarget {
            match self.0 {}
        }
    }

    pub struct PrefillNixl(Infallible);

    impl PrefillNixl {
        /// # Safety
        /// None needed: this build registers nothing.
        pub unsafe fn start(_: &EnginePool) -> Result<(PrefillNixl, Pin), String> {
            Err(NOT_BUILT.into())
        }
        pub async fn write(&self, _: &KvTarget, _: &[BlockId], _: Duration) -> Result<(), String> {
            match self.0 {}
        }
    }
}
