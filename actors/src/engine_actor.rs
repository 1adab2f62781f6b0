//! The engine actor: the only owner of one [`Engine`] (and so of its device and KV
//! pool). Its step loop runs on a dedicated OS thread; its mailbox is a channel
//! drained between steps. Other actors hold an [`EngineHandle`] and never block on
//! the engine: commands are fire-and-forget, results come back as [`EngineEvent`]s
//! through the callback given at spawn (the owning worker casts them to itself), and
//! the few queries that need an answer (KV reads/writes for transports) return a
//! oneshot that only transport tasks await.
//!
//! Invariants:
//! - every command is applied between two steps, in arrival order;
//! - a KV write is accepted only into blocks the named import sequence owns at that
//!   moment, so a late transfer can never land in reused blocks;
//! - the thread ends when every handle is dropped or on `Stop`; outstanding
//!   sequences are aborted (their blocks freed) first;
//! - KV memory registered with a transport (NIXL) is never freed while
//!   registered: the registration is *pinned* to the engine thread
//!   ([`spawn_engine_pinned`]), which, when it ends, waits for the last other
//!   holder of each pin to let go before the engine (and its pool) is dropped, and
//!   leaks the pool rather than free it under a live registration.
//!
//! NIXL writes bypass the ownership check above (they are one-sided); the decode
//! worker keeps the destination blocks of an abandoned NIXL transfer out of reuse
//! instead (see `decode_worker`).

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pdserve_cluster::protocol::{KvLayoutDesc, PrefillLocation};
use pdserve_cluster::transport::{BoxFuture, KvBlockStore, TransportError};
use pdserve_engine::engine::{Engine, EngineRequest, EngineStats, ImportReservation, SeqOutput};
use pdserve_engine::sampling::SampledToken;
use pdserve_engine::{BlockId, SeqId};
use tokio::sync::oneshot;

use crate::policy::disagg::{prefill_decision, PrefillDecisionInput};

/// Inputs of the local/remote prefill decision that the worker knows (the engine
/// adds its own prefix-cache hit).
#[derive(Clone, Copy, Debug)]
pub struct RemoteOption {
    pub max_local_prefill_length: usize,
    pub prefill_queue_len: usize,
    pub max_prefill_queue_size: usize,
    pub live_prefill_workers: usize,
}

/// Where the engine thread sends the answer to a query.
pub type Reply<T> = oneshot::Sender<Result<T, TransportError>>;

pub enum EngineCmd {
    /// Admit a request: decide local vs remote prefill (when `remote` is given) and
    /// either queue it for local prefill or reserve import blocks for it.
    Admit {
        req: EngineRequest,
        remote: Option<RemoteOption>,
        /// The request's span (its cluster-wide id): the decision is logged in it.
        span: tracing::Span,
    },
    /// Prefill only (prefill worker): compute the prompt and first token, keep the KV.
    PrefillOnly {
        req: EngineRequest,
    },
    CommitImport {
        seq: SeqId,
        first: SampledToken,
    },
    WriteImport {
        seq: SeqId,
        blocks: Vec<BlockId>,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    /// Reads `count` blocks of `seq` starting at its block `skip`.
    ReadSeqBlocks {
        seq: SeqId,
        skip: usize,
        count: usize,
        reply: Reply<Vec<u8>>,
    },
    ReadBlocks {
        blocks: Vec<BlockId>,
        reply: Reply<Vec<u8>>,
    },
    /// The ids of `count` blocks of `seq` starting at its block `skip` (for a
    /// transport that reads the pool directly).
    SeqBlockIds {
        seq: SeqId,
        skip: usize,
        count: usize,
        reply: Reply<Vec<BlockId>>,
    },
    /// Abort a sequence (running, waiting, parked or reserved import): frees its blocks.
    Abort {
        seq: SeqId,
    },
    Stop,
}

pub enum EngineEvent {
    /// A request was admitted.
    Admitted {
        seq: SeqId,
        location: PrefillLocation,
        /// Set for `Remote`: destination blocks of the import.
        reservation: Option<ImportReservation>,
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    Rejected {
        seq: SeqId,
        error: pdserve_engine::EngineError,
    },
    Outputs(Vec<SeqOutput>),
    /// The engine failed a step; these sequences are gone.
    Failed {
        seqs: Vec<SeqId>,
        error: String,
    },
}

/// Figures published by the engine thread after every step and command.
#[derive(Clone, Debug, Default)]
pub struct EngineSnapshot {
    pub stats: EngineStats,
    /// Prefix-cache block hashes (refreshed at most every 200 ms).
    pub cached_blocks: Vec<u128>,
}

/// Fixed facts about an engine, known at spawn.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    pub model_name: String,
    pub max_model_len: usize,
    pub block_size: usize,
    pub layout: KvLayoutDesc,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<EngineCmd>,
    pub info: EngineInfo,
    snapshot: Arc<Mutex<EngineSnapshot>>,
}

impl EngineHandle {
    /// Sends a command; false when the engine thread is gone.
    pub fn send(&self, cmd: EngineCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }
    pub fn snapshot(&self) -> EngineSnapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }
    /// Sends the command `make` builds around a reply port; resolves to the
    /// engine's answer, or `EngineGone` when the engine thread is gone.
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> EngineCmd,
    ) -> BoxFuture<Result<T, TransportError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(make(reply));
        Box::pin(async move {
            if !sent {
                return Err(TransportError::EngineGone);
            }
            rx.await.unwrap_or(Err(TransportError::EngineGone))
        })
    }

    /// The ids of `count` blocks of `seq` starting at its block `skip`.
    pub fn seq_block_ids(
        &self,
        seq: SeqId,
        skip: usize,
        count: usize,
    ) -> BoxFuture<Result<Vec<BlockId>, TransportError>> {
        self.ask(|reply| EngineCmd::SeqBlockIds {
            seq,
            skip,
            count,
            reply,
        })
    }

    /// Reads `count` blocks of `seq` starting at its block `skip`.
    pub fn read_seq_blocks(
        &self,
        seq: SeqId,
        skip: usize,
        count: usize,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        self.ask(|reply| EngineCmd::ReadSeqBlocks {
            seq,
            skip,
            count,
            reply,
        })
    }
}

impl KvBlockStore for EngineHandle {
    fn layout(&self) -> KvLayoutDesc {
        self.info.layout
    }
    fn read_blocks(&self, blocks: Vec<BlockId>) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        self.ask(|reply| EngineCmd::ReadBlocks { blocks, reply })
    }
    fn write_import(
        &self,
        seq: SeqId,
        blocks: Vec<BlockId>,
        data: Vec<u8>,
    ) -> BoxFuture<Result<(), TransportError>> {
        self.ask(|reply| EngineCmd::WriteImport {
            seq,
            blocks,
            data,
            reply,
        })
    }
}

pub type EventSink = Box<dyn Fn(EngineEvent) + Send + 'static>;

/// Something that must be dropped before the engine's KV pool is freed (a
/// transport registration of that pool).
pub type Pin = Arc<dyn Send + Sync>;

/// How long an ending engine thread waits for a pin's other holders.
const PIN_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Starts the engine thread.
pub fn spawn_engine(
    engine: Engine,
    name: &str,
    on_event: EventSink,
) -> std::io::Result<EngineHandle> {
    spawn_engine_pinned(engine, name, on_event, Vec::new())
}

/// Starts the engine thread, which drops `pins` (after their other holders did)
/// before the engine.
pub fn spawn_engine_pinned(
    engine: Engine,
    name: &str,
    on_event: EventSink,
    pins: Vec<Pin>,
) -> std::io::Result<EngineHandle> {
    let layout = engine.kv_layout();
    let info = EngineInfo {
        model_name: engine.model_name().to_string(),
        max_model_len: engine.max_model_len(),
        block_size: layout.block_size,
        layout: layout.into(),
    };
    let snapshot = Arc::new(Mutex::new(EngineSnapshot {
        stats: engine.stats(),
        cached_blocks: Vec::new(),
    }));
    let (tx, rx) = channel();
    let snap = snapshot.clone();
    std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(move || {
            let engine = run(engine, rx, on_event, snap);
            release_pins(engine, pins);
        })?;
    Ok(EngineHandle { tx, info, snapshot })
}

struct Loop {
    engine: Engine,
    on_event: EventSink,
    snapshot: Arc<Mutex<EngineSnapshot>>,
    live: std::collections::HashSet<SeqId>,
    hashes_at: Instant,
}

/// Drops `pins` once this thread holds the last reference of each, then the
/// engine; leaks the engine (its KV pool) if a pin is still shared after
/// [`PIN_RELEASE_WAIT`], because freeing registered memory could let a peer write
/// into whatever is allocated there next.
fn release_pins(engine: Engine, pins: Vec<Pin>) {
    let since = Instant::now();
    while pins.iter().any(|p| Arc::strong_count(p) > 1) {
        if since.elapsed() > PIN_RELEASE_WAIT {
            tracing::error!("KV pool still registered with a transport; leaking it");
            std::mem::forget(engine);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(pins);
    drop(engine);
}

fn run(
    engine: Engine,
    rx: Receiver<EngineCmd>,
    on_event: EventSink,
    snapshot: Arc<Mutex<EngineSnapshot>>,
) -> Engine {
    let mut l = Loop {
        engine,
        on_event,
        snapshot,
        live: Default::default(),
        hashes_at: Instant::now() - Duration::from_secs(1),
    };
    'outer: loop {
        // Block only when idle; otherwise take what is there and step.
        if !l.engine.has_work() {
            match rx.recv() {
                Ok(cmd) => {
                    if !l.apply(cmd) {
                        break 'outer;
                    }
                }
                Err(_) => break 'outer,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !l.apply(cmd) {
                        break 'outer;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'outer,
            }
        }
        if l.engine.has_work() {
            match l.engine.step() {
                Ok(outs) => {
                    for o in &outs {
                        if o.finish.is_some() {
                            l.live.remove(&o.id);
                        }
                    }
                    if !outs.is_empty() {
                        (l.on_event)(EngineEvent::Outputs(outs));
                    }
                }
                Err(e) => {
                    tracing::error!("engine step failed: {e}");
                    let seqs: Vec<SeqId> = l.live.drain().collect();
                    for s in &seqs {
                        l.engine.abort(*s);
                    }
                    (l.on_event)(EngineEvent::Failed {
                        seqs,
                        error: e.to_string(),
                    });
                }
            }
        }
        l.publish();
    }
    for s in l.live.drain() {
        l.engine.abort(s);
    }
    l.engine
}

impl Loop {
    fn publish(&mut self) {
        let stats = self.engine.stats();
        let hashes = if self.hashes_at.elapsed() >= Duration::from_millis(200) {
            self.hashes_at = Instant::now();
            let mut h: Vec<u128> = self
                .engine
                .cached_block_hashes()
                .iter()
                .map(|b| b.0)
                .collect();
            h.truncate(1024);
            Some(h)
        } else {
            None
        };
        if let Ok(mut s) = self.snapshot.lock() {
            s.stats = stats;
            if let Some(h) = hashes {
                s.cached_blocks = h;
            }
        }
    }

    /// Applies one command; false on `Stop`.
    fn apply(&mut self, cmd: EngineCmd) -> bool {
        match cmd {
            EngineCmd::Admit { req, remote, span } => {
                let _in_request = span.enter();
                self.admit(req, remote)
            }
            EngineCmd::PrefillOnly { req } => {
                let seq = req.id;
                match self.engine.add_prefill_only(req) {
                    Ok(()) => {
                        self.live.insert(seq);
                    }
                    Err(error) => (self.on_event)(EngineEvent::Rejected { seq, error }),
                }
            }
            EngineCmd::CommitImport { seq, first } => match self.engine.commit_import(seq, first) {
                Ok(out) => {
                    if out.finish.is_some() {
                        self.live.remove(&seq);
                    }
                    (self.on_event)(EngineEvent::Outputs(vec![out]));
                }
                Err(error) => {
                    self.live.remove(&seq);
                    self.engine.abort(seq);
                    (self.on_event)(EngineEvent::Rejected { seq, error });
                }
            },
            EngineCmd::WriteImport {
                seq,
                blocks,
                data,
                reply,
            } => {
                let _ = reply.send(self.write_import(seq, &blocks, &data));
            }
            EngineCmd::ReadSeqBlocks {
                seq,
                skip,
                count,
                reply,
            } => {
                let r = self
                    .seq_blocks(seq, skip, count)
                    .and_then(|b| self.read(&b));
                let _ = reply.send(r);
            }
            EngineCmd::SeqBlockIds {
                seq,
                skip,
                count,
                reply,
            } => {
                let _ = reply.send(self.seq_blocks(seq, skip, count));
            }
            EngineCmd::ReadBlocks { blocks, reply } => {
                let _ = reply.send(self.read(&blocks));
            }
            EngineCmd::Abort { seq } => {
                self.live.remove(&seq);
                self.engine.abort(seq);
            }
            EngineCmd::Stop => return false,
        }
        true
    }

    fn admit(&mut self, req: EngineRequest, remote: Option<RemoteOption>) {
        let seq = req.id;
        let prompt_tokens = req.prompt_tokens.len();
        let cached_tokens = self.engine.cached_prefix_len(&req.prompt_tokens);
        let location = match remote {
            Some(r) => {
                let input = PrefillDecisionInput {
                    prompt_tokens,
                    locally_cached_tokens: cached_tokens,
                    max_local_prefill_length: r.max_local_prefill_length,
                    prefill_queue_len: r.prefill_queue_len,
                    max_prefill_queue_size: r.max_prefill_queue_size,
                    live_prefill_workers: r.live_prefill_workers,
                };
                let decision = prefill_decision(&input);
                tracing::debug!(
                    %seq,
                    prompt_tokens,
                    cached_tokens,
                    queue_depth = r.prefill_queue_len,
                    live_prefill_workers = r.live_prefill_workers,
                    path = ?decision.location(),
                    ?decision,
                    "prefill decision"
                );
                decision.location()
            }
            None => PrefillLocation::Local,
        };
        let result = match location {
            PrefillLocation::Local => self.engine.add_request(req).map(|()| None),
            PrefillLocation::Remote => self.engine.reserve_import(req).map(Some),
        };
        match result {
            Ok(reservation) => {
                self.live.insert(seq);
                let cached_tokens = reservation
                    .as_ref()
                    .map_or(cached_tokens, |r| r.cached_tokens);
                (self.on_event)(EngineEvent::Admitted {
                    seq,
                    location,
                    reservation,
                    prompt_tokens,
                    cached_tokens,
                });
            }
            Err(error) => (self.on_event)(EngineEvent::Rejected { seq, error }),
        }
    }

    /// `count` blocks of `seq` from its block `skip` on.
    fn seq_blocks(
        &self,
        seq: SeqId,
        skip: usize,
        count: usize,
    ) -> Result<Vec<BlockId>, TransportError> {
        match self.engine.kv_blocks(seq) {
            Some(b) if skip + count <= b.len() => Ok(b[skip..skip + count].to_vec()),
            Some(b) => Err(TransportError::Refused(format!(
                "{seq} has {} KV blocks, asked for {count} after {skip}",
                b.len()
            ))),
            None => Err(TransportError::Refused(format!("{seq} has no KV blocks"))),
        }
    }

    fn read(&self, blocks: &[BlockId]) -> Result<Vec<u8>, TransportError> {
        let bb = self.engine.kv_layout().block_bytes();
        let mut out = vec![0u8; bb * blocks.len()];
        for (b, chunk) in blocks.iter().zip(out.chunks_mut(bb)) {
            self.engine
                .read_kv_block(*b, chunk)
                .map_err(|e| TransportError::Engine(e.to_string()))?;
        }
        Ok(out)
    }

    fn write_import(
        &mut self,
        seq: SeqId,
        blocks: &[BlockId],
        data: &[u8],
    ) -> Result<(), TransportError> {
        let owned = self
            .engine
            .kv_blocks(seq)
            .ok_or_else(|| TransportError::Refused(format!("{seq} is not a reserved import")))?;
        if let Some(b) = blocks.iter().find(|b| !owned.contains(b)) {
            return Err(TransportError::Refused(format!(
                "block {} is not owned by {seq}",
                b.0
            )));
        }
        let bb = self.engine.kv_layout().block_bytes();
        if data.len() != bb * blocks.len() {
            return Err(TransportError::Refused(format!(
                "{} bytes for {} blocks of {bb} bytes",
                data.len(),
                blocks.len()
            )));
        }
        for (b, chunk) in blocks.iter().zip(data.chunks(bb)) {
            self.engine
                .write_kv_block(*b, chunk)
                .map_err(|e| TransportError::Engine(e.to_string()))?;
        }
        Ok(())
    }
}
