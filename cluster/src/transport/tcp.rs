//! TCP KV data plane: a decode node's listener ([`TcpKvReceiver`]) and the prefill
//! side's [`send_blocks`].
//!
//! Wire format, per transfer, on a connection that may carry many in turn:
//! 1. sender: `PDKV` magic, `u16` version, `u32` header length (little endian),
//!    then the bincode-2 [`TransferHeader`] (at most [`MAX_HEADER_BYTES`]);
//! 2. receiver: a reply (`u8` status, `u32` length, message) — `0` means "send";
//! 3. sender: exactly `total_bytes` of raw block bytes, in `blocks` order;
//! 4. receiver: a reply — `0` means written into the engine.
//!
//! Invariants:
//! - Nothing reaches the engine before the whole header is checked against a live
//!   ticket (known, not expired, not withdrawn, unused), the receiver's layout, the
//!   ticket's exact block list and the byte count, and every byte has arrived.
//! - A ticket is single-use: it is claimed when its header is accepted and gone
//!   when that transfer ends, however it ends. After [`TcpKvReceiver::forget`]
//!   returns, no [`KvWritten`] for that ticket is ever sent (a write already in
//!   the engine may still land in blocks its sequence owns; the engine's ownership
//!   check keeps everyone else's blocks safe).
//! - [`KvWritten`] is sent only after the engine accepted the write, and before
//!   the sender's final ack.
//! - Bad input from the network (garbage, oversize header, slow or truncated
//!   senders) ends that connection with a log line and, where possible, an error
//!   reply; it never panics and never touches the engine.
//! - At most `max_connections` connections are served at once; more wait in the
//!   listen backlog.

mod send;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pdserve_engine::{BlockId, SeqId};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

pub use send::send_blocks;
pub use wire::{
    decode_header, encode_header, TransferHeader, MAGIC, MAX_HEADER_BYTES, WIRE_VERSION,
};
use wire::{encode_error, ms, show_blocks, write_reply, PREAMBLE_BYTES, ST_OK};

use super::{lock, KvBlockStore, TransportError};

/// Unclaimed tickets are dropped this long after their deadline.
const EXPIRED_GRACE: Duration = Duration::from_secs(60);
/// One completed, verified transfer into the decode engine.
#[derive(Clone, Debug, PartialEq)]
pub struct KvWritten {
    pub ticket: u64,
    pub seq: SeqId,
    pub blocks: u32,
    pub bytes: u64,
}

/// Receiver limits.
#[derive(Clone, Debug)]
pub struct TcpReceiverConfig {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for any read or write to make progress inside a transfer.
    pub io_timeout: Duration,
    /// Longest wait for the next transfer on an open connection.
    pub idle_timeout: Duration,
    /// Longest wait for the engine to take a write.
    pub engine_timeout: Duration,
}

impl Default for TcpReceiverConfig {
    fn default() -> Self {
        TcpReceiverConfig {
            max_connections: 64,
            io_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            engine_timeout: Duration::from_secs(30),
        }
    }
}

struct Ticket {
    seq: SeqId,
    blocks: Vec<BlockId>,
    deadline: Instant,
    /// A transfer for it is under way.
    claimed: bool,
    /// `forget` was called while it was claimed.
    withdrawn: bool,
}

struct Shared {
    store: Arc<dyn KvBlockStore>,
    on_written: UnboundedSender<KvWritten>,
    tickets: Mutex<HashMap<u64, Ticket>>,
    config: TcpReceiverConfig,
    accepted: std::sync::atomic::AtomicU64,
}

/// The decode node's listener. Dropping it stops accepting and ends every
/// connection it serves.
pub struct TcpKvReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpKvReceiver {
    pub async fn bind(
        addr: &str,
        store: Arc<dyn KvBlockStore>,
        on_written: UnboundedSender<KvWritten>,
    ) -> Result<TcpKvReceiver, TransportError> {
        Self::bind_with(addr, store, on_written, TcpReceiverConfig::default()).await
    }

    pub async fn bind_with(
        addr: &str,
        store: Arc<dyn KvBlockStore>,
        on_written: UnboundedSender<KvWritten>,
        config: TcpReceiverConfig,
    ) -> Result<TcpKvReceiver, TransportError> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store,
            on_written,
            tickets: Mutex::new(HashMap::new()),
            config,
            accepted: Default::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TcpKvReceiver {
            addr: local,
            shared,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Authorizes one transfer: `blocks` of import `seq`, before `deadline`.
    /// Call it before handing the ticket to the sender; tickets should be random
    /// (they are the only thing that ties bytes on the wire to a sequence).
    pub fn expect(&self, ticket: u64, seq: SeqId, blocks: Vec<BlockId>, deadline: Instant) {
        let now = Instant::now();
        let mut t = lock(&self.shared.tickets);
        t.retain(|_, e| e.claimed || e.deadline + EXPIRED_GRACE > now);
        let entry = Ticket {
            seq,
            blocks,
            deadline,
            claimed: false,
            withdrawn: false,
        };
        if t.insert(ticket, entry).is_some() {
            tracing::warn!(ticket, "KV ticket reused; the earlier one is replaced");
        }
    }

    /// Withdraws a ticket: later data for it is refused, and no [`KvWritten`] is
    /// sent for it from now on.
    pub fn forget(&self, ticket: u64) {
        let mut t = lock(&self.shared.tickets);
        match t.get_mut(&ticket) {
            Some(e) if e.claimed => e.withdrawn = true,
            Some(_) => {
                t.remove(&ticket);
            }
            None => {}
        }
    }

    /// Tickets waiting or under way.
    pub fn pending(&self) -> usize {
        lock(&self.shared.tickets).len()
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TcpKvReceiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    // Owning the connection tasks here ends them when the receiver is dropped.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "KV receiver: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = shared.clone();
        conns.spawn(async move {
            serve_conn(&shared, stream, peer).await;
            drop(permit);
        });
    }
}

/// Why a transfer ended badly, whether the peer can still be told, and whether
/// the claimed ticket stays usable (the sender vanished before sending a byte).
struct Failure {
    err: TransportError,
    reply: bool,
    keep_ticket: bool,
}

impl From<TransportError> for Failure {
    fn from(err: TransportError) -> Self {
        Failure {
            err,
            reply: true,
            keep_ticket: false,
        }
    }
}

impl Failure {
    fn silent(err: TransportError) -> Failure {
        Failure {
            err,
            reply: false,
            keep_ticket: false,
        }
    }
}

async fn serve_conn(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let cfg = &shared.config;
    loop {
        let mut pre = [0u8; PREAMBLE_BYTES];
        match timeout(cfg.idle_timeout, stream.read_exact(&mut pre)).await {
            Err(_) => return,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "KV receiver: connection error");
                return;
            }
            Ok(Ok(_)) => {}
        }
        if let Err(f) = serve_one(shared, &mut stream, &pre).await {
            tracing::warn!(%peer, error = %f.err, "KV transfer refused");
            if f.reply {
                let (st, body) = encode_error(&f.err);
                let _ = timeout(cfg.io_timeout, write_reply(&mut stream, st, &body)).await;
            }
            return;
        }
    }
}

fn refused(msg: impl Into<String>) -> TransportError {
    TransportError::Refused(msg.into())
}

/// Serves one transfer whose preamble has arrived.
async fn serve_one(shared: &Shared, stream: &mut TcpStream, pre: &[u8]) -> Result<(), Failure> {
    let cfg = &shared.config;
    if pre[0..4] != MAGIC {
        return Err(refused("not a pdserve KV stream (bad magic)").into());
    }
    let version = u16::from_le_bytes([pre[4], pre[5]]);
    if version != WIRE_VERSION {
        return Err(refused(format!(
            "KV wire version {version}, this receiver speaks {WIRE_VERSION}"
        ))
        .into());
    }
    let hlen = u32::from_le_bytes([pre[6], pre[7], pre[8], pre[9]]) as usize;
    if hlen > MAX_HEADER_BYTES {
        return Err(refused(format!("header of {hlen} bytes over {MAX_HEADER_BYTES}")).into());
    }
    let mut hbytes = vec![0u8; hlen];
    read_exact_timed(stream, &mut hbytes, cfg.io_timeout).await?;
    let header = decode_header(&hbytes).map_err(|e| refused(format!("bad header: {e}")))?;
    let (seq, blocks, deadline) = claim(shared, &header)?;
    // From here on the ticket is ours: every exit below must release it.
    let result = receive_and_write(shared, stream, &header, seq, blocks, deadline).await;
    let withdrawn = {
        let mut t = lock(&shared.tickets);
        match (&result, t.get_mut(&header.ticket)) {
            (Err(f), Some(e)) if f.keep_ticket && !e.withdrawn => {
                e.claimed = false;
                false
            }
            _ => t
                .remove(&header.ticket)
                .map(|e| e.withdrawn)
                .unwrap_or(true),
        }
    };
    match result {
        Ok(()) if withdrawn => Err(refused(format!(
            "ticket {} was withdrawn during the transfer",
            header.ticket
        ))
        .into()),
        Ok(()) => {
            let done = KvWritten {
                ticket: header.ticket,
                seq,
                blocks: header.blocks.len() as u32,
                bytes: header.total_bytes,
            };
            if shared.on_written.send(done).is_err() {
                tracing::warn!(ticket = header.ticket, "KV written, but nobody listens");
            }
            tracing::debug!(
                ticket = header.ticket,
                bytes = header.total_bytes,
                "KV written"
            );
            timeout(cfg.io_timeout, write_reply(stream, ST_OK, &[]))
                .await
                .map_err(|_| Failure::silent(TransportError::Timeout(ms(cfg.io_timeout))))?
                .map_err(|e| Failure::silent(e.into()))
        }
        Err(f) => Err(f),
    }
}

/// Checks a header against its ticket and the store, and claims the ticket.
fn claim(
    shared: &Shared,
    h: &TransferHeader,
) -> Result<(SeqId, Vec<BlockId>, Instant), TransportError> {
    let ours = shared.store.layout();
    let now = Instant::now();
    let mut t = lock(&shared.tickets);
    let Some(e) = t.get_mut(&h.ticket) else {
        return Err(refused(format!("unknown or withdrawn ticket {}", h.ticket)));
    };
    if e.claimed {
        return Err(refused(format!("ticket {} is already in use", h.ticket)));
    }
    if now > e.deadline {
        t.remove(&h.ticket);
        return Err(refused(format!("ticket {} expired", h.ticket)));
    }
    if h.layout != ours {
        return Err(TransportError::LayoutMismatch {
            sender: h.layout,
            receiver: ours,
        });
    }
    if h.blocks.len() != e.blocks.len() || h.blocks.iter().zip(&e.blocks).any(|(a, b)| *a != b.0) {
        return Err(refused(format!(
            "blocks {} do not match ticket {} ({})",
            show_blocks(h.blocks.iter().copied()),
            h.ticket,
            show_blocks(e.blocks.iter().map(|b| b.0)),
        )));
    }
    let want = (h.blocks.len() as u64).saturating_mul(ours.block_bytes() as u64);
    if h.total_bytes != want {
        return Err(refused(format!(
            "{} bytes announced for {} blocks of {} bytes",
            h.total_bytes,
            h.blocks.len(),
            ours.block_bytes()
        )));
    }
    e.claimed = true;
    Ok((e.seq, e.blocks.clone(), e.deadline))
}

/// Says "send", reads every byte (each read within `io_timeout`, all of them
/// before the ticket's deadline), re-checks the ticket and writes into the engine.
async fn receive_and_write(
    shared: &Shared,
    stream: &mut TcpStream,
    h: &TransferHeader,
    seq: SeqId,
    blocks: Vec<BlockId>,
    deadline: Instant,
) -> Result<(), Failure> {
    let cfg = &shared.config;
    let gone = |err: TransportError| Failure {
        err,
        reply: false,
        keep_ticket: true,
    };
    timeout(cfg.io_timeout, write_reply(stream, ST_OK, &[]))
        .await
        .map_err(|_| gone(TransportError::Timeout(ms(cfg.io_timeout))))?
        .map_err(|e| gone(e.into()))?;
    let total = h.total_bytes as usize;
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(total)
        .map_err(|_| TransportError::Refused(format!("cannot allocate {total} bytes")))?;
    {
        // `take` keeps the read inside this transfer's bytes on a reused connection.
        let mut body = (&mut *stream).take(h.total_bytes);
        while data.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(cfg.io_timeout.min(left), body.read_buf(&mut data)).await {
                Err(_) => {
                    return Err(refused(format!(
                        "sender too slow: {} of {total} bytes before the read timeout or deadline",
                        data.len()
                    ))
                    .into());
                }
                Ok(Ok(0)) => {
                    let err = refused(format!(
                        "sender closed after {} of {total} bytes",
                        data.len()
                    ));
                    return Err(if data.is_empty() {
                        gone(err)
                    } else {
                        Failure::silent(err)
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Failure::silent(e.into())),
            }
        }
    }
    {
        let t = lock(&shared.tickets);
        match t.get(&h.ticket) {
            Some(e) if e.withdrawn => {
                return Err(refused(format!("ticket {} was withdrawn", h.ticket)).into())
            }
            Some(e) if Instant::now() > e.deadline => {
                return Err(
                    refused(format!("ticket {} expired during the transfer", h.ticket)).into(),
                )
            }
            Some(_) => {}
            None => return Err(refused(format!("ticket {} was withdrawn", h.ticket)).into()),
        }
    }
    match timeout(
        cfg.engine_timeout,
        shared.store.write_import(seq, blocks, data),
    )
    .await
    {
        Err(_) => Err(TransportError::Timeout(ms(cfg.engine_timeout)).into()),
        Ok(r) => r.map_err(Failure::from),
    }
}
async fn read_exact_timed(s: &mut TcpStream, buf: &mut [u8], t: Duration) -> Result<(), Failure> {
    match timeout(t, s.read_exact(buf)).await {
        Err(_) => Err(TransportError::Timeout(ms(t)).into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure::silent(e.into())),
    }
}
