//! KV block transports: how a prefill worker's KV blocks reach a decode engine.
//!
//! - [`inproc`]: same process — the prefill worker reads its engine's blocks and
//!   writes them into the decode engine through its [`KvBlockStore`];
//! - [`tcp`]: the TCP data plane — the decode node listens, a prefill worker
//!   connects and streams blocks for one ticket;
//! - `nixl` (feature `nixl`, library checked at run time): one-sided writes into
//!   the decode engine's registered KV memory with a completion notification.
//!
//! Invariant: a write is accepted only into blocks that the named destination
//! sequence owns at the moment of the write (the engine checks, on its own thread),
//! so a late or forged transfer can never corrupt another sequence's KV.

pub mod inproc;
pub mod tcp;

use std::future::Future;
use std::pin::Pin;

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
}
