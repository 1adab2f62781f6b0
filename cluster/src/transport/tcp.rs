//! TCP KV data plane (placeholder API; the implementation lands with its tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pdserve_engine::{BlockId, SeqId};

use super::{KvBlockStore, TransportError};
use crate::protocol::KvLayoutDesc;

/// One completed, verified transfer into the decode engine.
#[derive(Clone, Debug, PartialEq)]
pub struct KvWritten {
    pub ticket: u64,
    pub seq: SeqId,
    pub blocks: u32,
    pub bytes: u64,
}

/// The decode node's listener.
pub struct TcpKvReceiver {
    addr: std::net::SocketAddr,
}

impl TcpKvReceiver {
    pub async fn bind(
        addr: &str,
        _store: Arc<dyn KvBlockStore>,
        _on_written: tokio::sync::mpsc::UnboundedSender<KvWritten>,
    ) -> Result<TcpKvReceiver, TransportError> {
        let l = tokio::net::TcpListener::bind(addr).await?;
        Ok(TcpKvReceiver {
            addr: l.local_addr()?,
        })
    }
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
    /// Authorizes one transfer: `blocks` of import `seq`, before `deadline`.
    pub fn expect(&self, _ticket: u64, _seq: SeqId, _blocks: Vec<BlockId>, _deadline: Instant) {}
    /// Withdraws a ticket: later data for it is refused.
    pub fn forget(&self, _ticket: u64) {}
}

/// Sends `data` (whole blocks, in `dest_blocks` order) for `ticket`; returns once
/// the receiver has written them into its engine.
pub async fn send_blocks(
    _addr: &str,
    _ticket: u64,
    _layout: KvLayoutDesc,
    _dest_blocks: &[BlockId],
    _data: Vec<u8>,
    _timeout: Duration,
) -> Result<(), TransportError> {
    Err(TransportError::Refused(
        "TCP data plane not built yet".into(),
    ))
}
