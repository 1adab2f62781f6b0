//! NIXL for the workers: the decode side registers its engine's KV pool and hands
//! out [`KvTarget::Nixl`] targets; the prefill side registers its own pool and
//! writes a finished prompt's blocks straight from it into the decode pool (no
//! staging copy on either side).
//!
//! Built with the `nixl` feature these wrap `pdserve_cluster::transport::nixl`;
//! without it [`available`] says so and nothing here can be constructed, so the
//! workers compile one code path either way.
//!
//! Memory: each constructor registers memory it does not own (an engine's pool),
//! hence `unsafe`; the returned [`Pin`] must go to that engine's thread
//! (`spawn_engine_pinned`), which keeps the pool alive until the registration is
//! gone.

use std::time::{Duration, Instant};

use pdserve_cluster::protocol::KvTarget;
use pdserve_cluster::transport::tcp::KvWritten;
use pdserve_engine::{BlockId, SeqId};
use tokio::sync::mpsc::UnboundedSender;

use crate::engine_actor::Pin;

/// A host memory region: `(addr, len)`.
pub type Region = (usize, usize);

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

    use super::Region;
    use crate::engine_actor::Pin;

    /// How often the decode side polls for write notifications.
    const POLL_EVERY: Duration = Duration::from_micros(500);

    pub fn available() -> Result<(), String> {
        ensure_library().map_err(|e| e.to_string())
    }

    /// # Safety
    /// `region` must stay allocated and in place while the endpoint lives.
    unsafe fn endpoint(name: &str, region: Region) -> Result<Arc<NixlEndpoint>, String> {
        // SAFETY: forwarded to the caller.
        let ep = unsafe { NixlEndpoint::new(name, region.0, region.1, &NixlConfig::default()) };
        ep.map(Arc::new).map_err(|e| e.to_string())
    }

    pub struct DecodeNixl {
        recv: NixlKvReceiver,
        agent: String,
        metadata: Vec<u8>,
        base: u64,
        block_bytes: u64,
    }

    impl DecodeNixl {
        /// # Safety
        /// As [`super::DecodeNixl::start`].
        pub unsafe fn start(
            name: &str,
            region: Region,
            block_bytes: usize,
            on_written: UnboundedSender<KvWritten>,
        ) -> Result<(DecodeNixl, Pin), String> {
            // SAFETY: forwarded to the caller.
            let ep = unsafe { endpoint(name, region) }?;
            let metadata = ep.metadata().map_err(|e| e.to_string())?;
            let pin: Pin = ep.clone();
            let recv = NixlKvReceiver::start(ep, on_written, POLL_EVERY);
            Ok((
                DecodeNixl {
                    recv,
                    agent: name.to_string(),
                    metadata,
                    base: region.0 as u64,
                    block_bytes: block_bytes as u64,
                },
                pin,
            ))
        }

        pub fn expect(&self, ticket: u64, seq: SeqId, blocks: &[BlockId], deadline: Instant) {
            let n = blocks.len() as u64;
            self.recv
                .expect(ticket, seq, n as u32, n * self.block_bytes, deadline);
        }

        pub fn forget(&self, ticket: u64) {
            self.recv.forget(ticket);
        }

        pub fn target(&self, ticket: u64, blocks: &[BlockId], tcp: Option<String>) -> KvTarget {
            KvTarget::Nixl {
                agent: self.agent.clone(),
                agent_metadata: self.metadata.clone(),
                block_addrs: blocks
                    .iter()
                    .map(|b| self.base + b.0 as u64 * self.block_bytes)
                    .collect(),
                device_id: 0,
                ticket,
                tcp,
            }
        }
    }

    pub struct PrefillNixl {
        ep: Arc<NixlEndpoint>,
        base: u64,
        block_bytes: usize,
    }

    impl PrefillNixl {
        /// # Safety
        /// As [`super::PrefillNixl::start`].
        pub unsafe fn start(
            name: &str,
            region: Region,
            block_bytes: usize,
        ) -> Result<(PrefillNixl, Pin), String> {
            // SAFETY: forwarded to the caller.
            let ep = unsafe { endpoint(name, region) }?;
            let pin: Pin = ep.clone();
            Ok((
                PrefillNixl {
                    ep,
                    base: region.0 as u64,
                    block_bytes,
                },
                pin,
            ))
        }

        pub async fn write(
            &self,
            target: &KvTarget,
            src: &[BlockId],
            timeout: Duration,
        ) -> Result<(), String> {
            let addrs: Vec<u64> = src
                .iter()
                .map(|b| self.base + b.0 as u64 * self.block_bytes as u64)
                .collect();
            self.ep
                .write_to_target(target, &addrs, self.block_bytes, timeout)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(not(feature = "nixl"))]
mod imp {
    //! Without the `nixl` feature: [`available`] explains, nothing constructs.
    use std::convert::Infallible;
    use std::time::{Duration, Instant};

    use pdserve_cluster::protocol::KvTarget;
    use pdserve_cluster::transport::tcp::KvWritten;
    use pdserve_engine::{BlockId, SeqId};
    use tokio::sync::mpsc::UnboundedSender;

    use super::Region;
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
            _: &str,
            _: Region,
            _: usize,
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
        pub unsafe fn start(_: &str, _: Region, _: usize) -> Result<(PrefillNixl, Pin), String> {
            Err(NOT_BUILT.into())
        }
        pub async fn write(&self, _: &KvTarget, _: &[BlockId], _: Duration) -> Result<(), String> {
            match self.0 {}
        }
    }
}

/// Whether NIXL can be used here (built in, library loadable), or why not.
pub fn available() -> Result<(), String> {
    imp::available()
}

/// The decode side: one agent with the engine's pool registered, and the
/// notification poller that turns finished writes into [`KvWritten`].
pub struct DecodeNixl(imp::DecodeNixl);

impl DecodeNixl {
    /// Registers `region` (an engine's whole KV pool, blocks of `block_bytes` in
    /// block order) with a new agent `name`; finished writes go to `on_written`.
    ///
    /// # Safety
    /// `region` must stay allocated and in place while the returned pin is held:
    /// hand the pin to the engine thread that owns the pool.
    pub unsafe fn start(
        name: &str,
        region: Region,
        block_bytes: usize,
        on_written: UnboundedSender<KvWritten>,
    ) -> Result<(DecodeNixl, Pin), String> {
        // SAFETY: forwarded to the caller.
        unsafe { imp::DecodeNixl::start(name, region, block_bytes, on_written) }
            .map(|(d, p)| (DecodeNixl(d), p))
    }

    /// Reports `ticket`'s write into `blocks` of import `seq` if it lands before
    /// `deadline`.
    pub fn expect(&self, ticket: u64, seq: SeqId, blocks: &[BlockId], deadline: Instant) {
        self.0.expect(ticket, seq, blocks, deadline)
    }

    /// No report for `ticket` any more (its write may still land).
    pub fn forget(&self, ticket: u64) {
        self.0.forget(ticket)
    }

    /// Where a prefill worker writes `ticket`'s `blocks`; `tcp` is the data plane
    /// a prefill worker without NIXL uses instead.
    pub fn target(&self, ticket: u64, blocks: &[BlockId], tcp: Option<String>) -> KvTarget {
        self.0.target(ticket, blocks, tcp)
    }
}

/// The prefill side: one agent with the engine's pool registered, writing
/// blocks from it.
pub struct PrefillNixl(imp::PrefillNixl);

impl PrefillNixl {
    /// Registers `region` (an engine's whole KV pool) with a new agent `name`.
    ///
    /// # Safety
    /// As [`DecodeNixl::start`].
    pub unsafe fn start(
        name: &str,
        region: Region,
        block_bytes: usize,
    ) -> Result<(PrefillNixl, Pin), String> {
        // SAFETY: forwarded to the caller.
        unsafe { imp::PrefillNixl::start(name, region, block_bytes) }
            .map(|(p, pin)| (PrefillNixl(p), pin))
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
        self.0.write(target, src, timeout).await
    }
}

/// A unique agent name for `worker` in this process.
pub fn agent_name(worker: &pdserve_cluster::WorkerId) -> String {
    format!("pdserve-{worker}-{}", std::process::id())
}
