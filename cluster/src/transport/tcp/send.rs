//! The sending side of the TCP data plane, and its cache of idle connections.
//!
//! Invariants: a connection goes back to the cache only after a transfer fully
//! succeeded (so the stream is in step); a cached connection is retried once on
//! a fresh one only when it failed before any reply (the receiver had closed it
//! as idle and so never saw the header).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pdserve_engine::BlockId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::wire::{decode_reply, encode_header, ms, preamble, read_reply, TransferHeader};
use crate::protocol::KvLayoutDesc;
use crate::transport::{lock, TransportError};

/// Idle connections kept per receiver address, and how long one may idle.
const POOL_PER_ADDR: usize = 4;
const POOL_MAX_IDLE: Duration = Duration::from_secs(10);

/// Sends `data` (whole blocks, in `dest_blocks` order) for `ticket`; returns once
/// the receiver has written them into its engine. Reuses an idle connection to
/// `addr` when there is one.
pub async fn send_blocks(
    addr: &str,
    ticket: u64,
    layout: KvLayoutDesc,
    dest_blocks: &[BlockId],
    data: Vec<u8>,
    timeout_after: Duration,
) -> Result<(), TransportError> {
    let want = dest_blocks.len() as u64 * layout.block_bytes() as u64;
    if data.len() as u64 != want {
        return Err(TransportError::Refused(format!(
            "{} bytes for {} blocks of {} bytes",
            data.len(),
            dest_blocks.len(),
            layout.block_bytes()
        )));
    }
    let header = TransferHeader {
        ticket,
        layout,
        blocks: dest_blocks.iter().map(|b| b.0).collect(),
        total_bytes: want,
    };
    let hbytes = encode_header(&header)?;
    let mut head = preamble(hbytes.len());
    head.extend_from_slice(&hbytes);
    match timeout(timeout_after, send_pooled(addr, &head, &data, layout)).await {
        Err(_) => Err(TransportError::Timeout(ms(timeout_after))),
        Ok(r) => r,
    }
}

/// How far a transfer got before it failed.
enum SendError {
    /// No reply came at all: on a reused connection, the receiver may have
    /// closed it as idle, so one retry on a fresh connection is safe.
    NoReply(TransportError),
    Failed(TransportError),
}

async fn send_pooled(
    addr: &str,
    head: &[u8],
    data: &[u8],
    layout: KvLayoutDesc,
) -> Result<(), TransportError> {
    if let Some(stream) = pool_take(addr) {
        match transfer(stream, head, data, layout).await {
            Ok(s) => {
                pool_put(addr, s);
                return Ok(());
            }
            Err(SendError::NoReply(e)) => {
                tracing::debug!(addr, error = %e, "stale KV connection; reconnecting");
            }
            Err(SendError::Failed(e)) => return Err(e),
        }
    }
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match transfer(stream, head, data, layout).await {
        Ok(s) => {
            pool_put(addr, s);
            Ok(())
        }
        Err(SendError::NoReply(e) | SendError::Failed(e)) => Err(e),
    }
}

async fn transfer(
    mut s: TcpStream,
    head: &[u8],
    data: &[u8],
    layout: KvLayoutDesc,
) -> Result<TcpStream, SendError> {
    let io = |e: std::io::Error| SendError::NoReply(e.into());
    s.write_all(head).await.map_err(io)?;
    let (st, body) = read_reply(&mut s).await.map_err(io)?;
    decode_reply(st, &body, layout).map_err(SendError::Failed)?;
    let fail = |e: std::io::Error| SendError::Failed(e.into());
    s.write_all(data).await.map_err(fail)?;
    let (st, body) = read_reply(&mut s).await.map_err(fail)?;
    decode_reply(st, &body, layout).map_err(SendError::Failed)?;
    Ok(s)
}

type Pool = Mutex<HashMap<String, Vec<(std::net::TcpStream, Instant)>>>;

/// Idle sender connections, by receiver address. Kept as std sockets so that
/// they can be picked up from any tokio runtime.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

fn pool_take(addr: &str) -> Option<TcpStream> {
    loop {
        let (s, since) = lock(pool()).get_mut(addr)?.pop()?;
        if since.elapsed() > POOL_MAX_IDLE {
            continue;
        }
        // A live idle connection has nothing to read: EOF or stray bytes mean
        // the receiver closed it or the stream is out of step.
        match s.peek(&mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => continue,
        }
        if let Ok(t) = TcpStream::from_std(s) {
            return Some(t);
        }
    }
}

fn pool_put(addr: &str, s: TcpStream) {
    let Ok(s) = s.into_std() else { return };
    let mut p = lock(pool());
    let idle = p.entry(addr.to_string()).or_default();
    idle.retain(|(_, since)| since.elapsed() <= POOL_MAX_IDLE);
    if idle.len() < POOL_PER_ADDR {
        idle.push((s, Instant::now()));
    }
}
