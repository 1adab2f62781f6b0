//! KV block transports: how a prefill worker's KV blocks reach a decode engine.
//!
//! - [`inproc`]: same process — the prefill worker reads its engine's blocks and
//!   writes them into the decode engine through its [`KvBlockStore`];
//! - [`tcp`]: the TCP data plane — the decode node listens, a prefill worker
//!   connects and streams blocks for one ticket;
//! - `nixl` (feature `nixl`, library checked at run time): one-sided writes into
//!   the decode engine's registered KV memory with a completion notification;
//! - [`MemKvStore`]: a [`KvBlockStore`] over one host buffer, for tests and
//!   benchmarks that move KV without a model.
//!
//! Invariant: a write is accepted only into blocks that the named destination
//! sequence owns at the moment of the write (the engine checks, on its own thread),
//! so a late or forged transfer can never corrupt another sequence's KV.

pub mod inproc;
#[cfg(feature = "nixl")]
pub mod nixl;
pub mod tcp;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use pdserve_engine::{BlockId, SeqId};

use crate::protocol::KvLayoutDesc;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TransportError {
    #[error("KV layout mismatch: sender {sender:?}, receiver {receiver:?}")]
    LayoutMismatch {
        sender: KvLayoutDesc,
        receiver: KvLayoutDesc,
    },
    #[error("transfer refused: {0}")]
    Refused(String),
    #[error("transfer timed out after {0} ms")]
    Timeout(u64),
    #[error("I/O: {0}")]
    Io(String),
    #[error("engine: {0}")]
    Engine(String),
    #[error("engine is gone")]
    EngineGone,
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io(e.to_string())
    }
}

/// One engine's KV blocks, as a transport sees them. Implemented by the engine
/// actor's handle: reads and writes run on the engine thread between steps.
pub trait KvBlockStore: Send + Sync + 'static {
    fn layout(&self) -> KvLayoutDesc;
    /// Copies whole blocks out (`blocks.len() * block_bytes` bytes, in order).
    fn read_blocks(&self, blocks: Vec<BlockId>) -> BoxFuture<Result<Vec<u8>, TransportError>>;
    /// Writes whole blocks of the import sequence `seq`; refused unless `seq` is a
    /// reserved import that owns every block in `blocks`.
    fn write_import(
        &self,
        seq: SeqId,
        blocks: Vec<BlockId>,
        data: Vec<u8>,
    ) -> BoxFuture<Result<(), TransportError>>;
    /// Base address and length of the engine's whole KV pool when it is host
    /// memory that a transport may register (NIXL); `None` where it cannot be.
    fn pool_region(&self) -> Option<(usize, usize)> {
        None
    }
}

/// A [`KvBlockStore`] over one zeroed host buffer of `num_blocks` blocks, with the
/// same import rule as an engine: `write_import` succeeds only for a sequence that
/// [`reserve_import`](MemKvStore::reserve_import) gave every written block.
///
/// Invariant: the buffer is allocated once and never resized, so
/// [`pool_region`](KvBlockStore::pool_region) stays valid for the store's life.
pub struct MemKvStore {
    layout: KvLayoutDesc,
    num_blocks: usize,
    /// `[num_blocks][block_bytes]`.
    data: Mutex<Vec<u8>>,
    /// Import sequences and the blocks each owns.
    owners: Mutex<HashMap<SeqId, Vec<BlockId>>>,
    /// Successful `write_import` calls.
    writes: std::sync::atomic::AtomicUsize,
    base: usize,
}

impl MemKvStore {
    pub fn new(layout: KvLayoutDesc, num_blocks: usize) -> MemKvStore {
        let data = vec![0u8; num_blocks * layout.block_bytes()];
        let base = data.as_ptr() as usize;
        MemKvStore {
            layout,
            num_blocks,
            data: Mutex::new(data),
            owners: Mutex::new(HashMap::new()),
            writes: Default::default(),
            base,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Gives `blocks` to the import sequence `seq` (replacing what it had).
    pub fn reserve_import(&self, seq: SeqId, blocks: Vec<BlockId>) {
        lock(&self.owners).insert(seq, blocks);
    }

    /// Ends the import sequence `seq`: later writes for it are refused.
    pub fn release(&self, seq: SeqId) {
        lock(&self.owners).remove(&seq);
    }

    /// Copies whole blocks out, synchronously.
    pub fn read_now(&self, blocks: &[BlockId]) -> Result<Vec<u8>, TransportError> {
        let bb = self.layout.block_bytes();
        let data = lock(&self.data);
        let mut out = Vec::with_capacity(blocks.len() * bb);
        for b in blocks {
            out.extend_from_slice(&data[self.block_range(*b)?]);
        }
        Ok(out)
    }

    /// Overwrites whole blocks, synchronously and without the ownership check (to
    /// fill a source store).
    pub fn fill(&self, blocks: &[BlockId], bytes: &[u8]) -> Result<(), TransportError> {
        let bb = self.layout.block_bytes();
        if bytes.len() != blocks.len() * bb {
            return Err(TransportError::Refused(format!(
                "{} bytes for {} blocks of {bb}",
                bytes.len(),
                blocks.len()
            )));
        }
        let mut data = lock(&self.data);
        for (b, chunk) in blocks.iter().zip(bytes.chunks_exact(bb.max(1))) {
            let r = self.block_range(*b)?;
            data[r].copy_from_slice(chunk);
        }
        Ok(())
    }

    /// How many `write_import` calls succeeded.
    pub fn writes(&self) -> usize {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Address of one block inside the buffer.
    pub fn block_addr(&self, block: BlockId) -> Option<usize> {
        let bb = self.layout.block_bytes();
        ((block.0 as usize) < self.num_blocks).then(|| self.base + block.0 as usize * bb)
    }

    fn block_range(&self, b: BlockId) -> Result<std::ops::Range<usize>, TransportError> {
        let bb = self.layout.block_bytes();
        let i = b.0 as usize;
        if i >= self.num_blocks {
            return Err(TransportError::Engine(format!(
                "block {} out of range",
                b.0
            )));
        }
        Ok(i * bb..(i + 1) * bb)
    }

    fn write_now(
        &self,
        seq: SeqId,
        blocks: &[BlockId],
        bytes: &[u8],
    ) -> Result<(), TransportError> {
        let owned = lock(&self.owners)
            .get(&seq)
            .map(|own| blocks.iter().all(|b| own.contains(b)))
            .unwrap_or(false);
        if !owned {
            return Err(TransportError::Engine(format!(
                "{seq} is not an import that owns the written blocks"
            )));
        }
        self.fill(blocks, bytes)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

impl KvBlockStore for MemKvStore {
    fn layout(&self) -> KvLayoutDesc {
        self.layout
    }
    fn read_blocks(&self, blocks: Vec<BlockId>) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let r = self.read_now(&blocks);
        Box::pin(async move { r })
    }
    fn write_import(
        &self,
        seq: SeqId,
        blocks: Vec<BlockId>,
        data: Vec<u8>,
    ) -> BoxFuture<Result<(), TransportError>> {
        let r = self.write_now(seq, &blocks, &data);
        Box::pin(async move { r })
    }
    fn pool_region(&self) -> Option<(usize, usize)> {
        Some((self.base, self.num_blocks * self.layout.block_bytes()))
    }
}

/// Locks a mutex, taking the data of a poisoned one (a panicked holder leaves
/// plain data behind, never a broken invariant, in this module's users).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
