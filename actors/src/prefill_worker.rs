//! The prefill worker: owns one prefill engine, takes remote prefill requests from
//! the decode workers' queues (it announces its free slots; queues hand it work),
//! computes each prompt's KV and first token, writes the KV into the decode
//! engine's reserved blocks through the request's transport, and reports
//! `PrefillDone` (or `PrefillFailed`) to the decode worker.
//!
//! KV leaves by the request's target: in process (a copy into the decode
//! engine), TCP (blocks read out, then streamed), or NIXL (one write straight from
//! this engine's registered pool into the decode engine's; a worker without NIXL,
//! or whose NIXL write fails, uses the TCP data plane the NIXL target also names).
//!
//! Invariants: a request's engine sequence is freed on every exit path (done,
//! failed, cancelled, deadline) — but not while a write reads from it; a request
//! whose attempt was cancelled is never reported done, and every cancelled
//! attempt is answered with `PrefillFailed` once no write of it can still land
//! (the decode side holds an abandoned NIXL attempt's blocks until then); no write
//! starts after the request's deadline, and none outlasts it; KV is written only
//! into the blocks the request names, and the decode engine re-checks ownership on
//! its side where the transport allows (in process, TCP).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pdserve_cluster::groups;
use pdserve_cluster::protocol::{
    DecodeWire, KvTarget, PrefillDone, PrefillFailed, PrefillRequest, PrefillWire, QueueWire,
    WorkerLoad,
};
use pdserve_cluster::transport::{inproc, tcp};
use pdserve_cluster::{RequestId, Role, WorkerId};
use pdserve_engine::engine::{Engine, EngineRequest};
use pdserve_engine::sampling::SampledToken;
use pdserve_engine::{BlockId, SeqId};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::decode_worker::{broadcast_load, DecodeMsg};
use crate::engine_actor::{spawn_engine_pinned, EngineCmd, EngineEvent, EngineHandle};
use crate::kv_nixl::{self, PrefillNixl};
use crate::prefill_queue::QueueMsg;

pub enum PrefillMsg {
    Wire(PrefillWire),
    Engine(EngineEvent),
    Transferred {
        id: RequestId,
        attempt: u32,
        result: Result<(), String>,
    },
    Tick,
    Drain(ractor::RpcReplyPort<usize>),
    Active(ractor::RpcReplyPort<usize>),
}
pdserve_cluster::impl_wire_message!(PrefillMsg, PrefillWire);

#[derive(Clone, Debug)]
pub struct PrefillConfig {
    pub worker: WorkerId,
    pub model: String,
    pub model_spec: String,
    /// Prompts prefilled at the same time (the rest wait in the backlog).
    pub max_concurrent: usize,
    pub transfer_timeout: Duration,
    /// Register the engine's KV pool with NIXL and write NIXL targets with it
    /// (start fails if NIXL cannot be used); else NIXL targets go over TCP.
    pub nixl: bool,
}

pub struct PrefillArgs {
    pub config: PrefillConfig,
    pub engine: Engine,
}

pub struct PrefillWorker;

enum JobPhase {
    Prefilling,
    Transferring { first: SampledToken },
}

struct Job {
    req: PrefillRequest,
    seq: SeqId,
    phase: JobPhase,
    /// Cancelled while its write was in flight: answered when the write ends.
    cancelled: bool,
}

pub struct PrefillState {
    cfg: PrefillConfig,
    engine: EngineHandle,
    nixl: Option<Arc<PrefillNixl>>,
    myself: ActorRef<PrefillMsg>,
    jobs: HashMap<RequestId, Job>,
    by_seq: HashMap<SeqId, RequestId>,
    backlog: VecDeque<PrefillRequest>,
    next_seq: u64,
    draining: bool,
    announced: Option<u32>,
    last_announce: Instant,
    report_seq: u64,
}

impl Actor for PrefillWorker {
    type Msg = PrefillMsg;
    type State = PrefillState;
    type Arguments = PrefillArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PrefillMsg>,
        args: PrefillArgs,
    ) -> Result<PrefillState, ActorProcessingErr> {
        let cfg = args.config;
        let (nixl, pins) = if cfg.nixl {
            let pool = kv_nixl::EnginePool::of(&cfg.worker, &args.engine)?;
            // SAFETY: the pool is the engine's, allocated once for its life; the
            // pin goes to the engine thread, which frees the pool only after the
            // registration is dropped.
            let (n, pin) = unsafe { PrefillNixl::start(&pool) }?;
            (Some(Arc::new(n)), vec![pin])
        } else {
            (None, Vec::new())
        };
        let me = myself.clone();
        let engine = spawn_engine_pinned(
            args.engine,
            &cfg.worker.0,
            Box::new(move |ev| {
                let _ = me.cast(PrefillMsg::Engine(ev));
            }),
            pins,
        )?;
        ractor::pg::join(groups::prefill_workers(&cfg.model), vec![myself.get_cell()]);
        ractor::pg::join(groups::worker_inbox(&cfg.worker), vec![myself.get_cell()]);
        myself.send_interval(Duration::from_millis(100), || PrefillMsg::Tick);
        Ok(PrefillState {
            cfg,
            engine,
            nixl,
            myself: myself.clone(),
            jobs: HashMap::new(),
            by_seq: HashMap::new(),
            backlog: VecDeque::new(),
            next_seq: 1,
            draining: false,
            announced: None,
            last_announce: Instant::now(),
            report_seq: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PrefillMsg>,
        st: &mut PrefillState,
    ) -> Result<(), ActorProcessingErr> {
        st.engine.send(EngineCmd::Stop);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PrefillMsg>,
        msg: PrefillMsg,
        st: &mut PrefillState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PrefillMsg::Wire(PrefillWire::Assign(req)) => st.assign(*req),
            PrefillMsg::Wire(PrefillWire::Cancel { id, attempt }) => st.cancel(id, attempt),
            PrefillMsg::Engine(ev) => st.on_engine(ev),
            PrefillMsg::Transferred {
                id,
                attempt,
                result,
            } => st.transferred(id, attempt, result),
            PrefillMsg::Tick => st.tick(),
            PrefillMsg::Drain(reply) => {
                st.draining = true;
                ractor::pg::leave(
                    groups::prefill_workers(&st.cfg.model),
                    vec![st.myself.get_cell()],
                );
                st.announce(true);
                let _ = reply.send(st.jobs.len() + st.backlog.len());
            }
            PrefillMsg::Active(reply) => {
                let _ = reply.send(st.jobs.len() + st.backlog.len());
            }
        }
        st.start_backlog();
        st.announce(false);
        Ok(())
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a write may take: `transfer_timeout`, cut to what is left before
/// the request's deadline (`None`: nothing is left, start no write).
fn write_timeout(
    transfer_timeout: Duration,
    deadline_unix_ms: u64,
    now_unix_ms: u64,
) -> Option<Duration> {
    if deadline_unix_ms == 0 {
        return Some(transfer_timeout);
    }
    let left = deadline_unix_ms
        .checked_sub(now_unix_ms)
        .filter(|&ms| ms > 0)?;
    Some(transfer_timeout.min(Duration::from_millis(left)))
}

/// How one write reaches the decode engine.
enum Route<'a> {
    Nixl(&'a PrefillNixl),
    Tcp { addr: &'a str, ticket: u64 },
    InProcess(&'a WorkerId),
}

/// The route to `target` from a worker with (or without) `nixl`.
fn route<'a>(target: &'a KvTarget, nixl: Option<&'a PrefillNixl>) -> Result<Route<'a>, String> {
    Ok(match (target, nixl) {
        (KvTarget::Nixl { .. }, Some(n)) => Route::Nixl(n),
        (
            KvTarget::Nixl {
                tcp: Some(addr),
                ticket,
                ..
            },
            None,
        )
        | (KvTarget::Tcp { addr, ticket }, _) => Route::Tcp {
            addr,
            ticket: *ticket,
        },
        (KvTarget::Nixl { tcp: None, .. }, None) => {
            return Err("NIXL target without a TCP data plane, and this worker has no NIXL".into())
        }
        (KvTarget::InProcess { decode_worker }, _) => Route::InProcess(decode_worker),
    })
}

/// Moves `seq`'s prompt blocks (after the decode side's cached ones) into the
/// blocks `req` names, by its target.
async fn write_kv(
    req: &PrefillRequest,
    seq: SeqId,
    engine: &EngineHandle,
    nixl: Option<&PrefillNixl>,
    timeout: Duration,
) -> Result<(), String> {
    let skip = req.skip_blocks as usize;
    let count = req.dest_blocks.len().saturating_sub(skip);
    let dest: Vec<BlockId> = req
        .dest_blocks
        .iter()
        .skip(skip)
        .map(|b| BlockId(*b))
        .collect();
    let read = || async {
        engine
            .read_seq_blocks(seq, skip, count)
            .await
            .map_err(|e| e.to_string())
    };
    let started = Instant::now();
    let (transport, written) = match route(&req.target, nixl)? {
        Route::Nixl(nixl) => {
            // Straight from this engine's pool: the sequence (so its blocks)
            // lives until the write ends (`transferred` frees it).
            let src = engine
                .seq_block_ids(seq, skip, count)
                .await
                .map_err(|e| e.to_string())?;
            match (nixl.write(&req.target, &src, timeout).await, &req.target) {
                // The decode node's TCP data plane expects the same ticket: a
                // NIXL path that fails (no usable UCX transport between these
                // hosts, say) costs this request a retry, not a local prefill.
                // A late NIXL write would carry the same bytes.
                (
                    Err(e),
                    KvTarget::Nixl {
                        tcp: Some(addr),
                        ticket,
                        ..
                    },
                ) => {
                    tracing::warn!(request = %req.id, "NIXL write failed ({e}); writing over TCP");
                    let left = timeout.saturating_sub(started.elapsed());
                    let sent =
                        tcp::send_blocks(addr, *ticket, req.layout, &dest, read().await?, left);
                    ("tcp-after-nixl", sent.await.map_err(|e| e.to_string()))
                }
                (written, _) => ("nixl", written),
            }
        }
        Route::Tcp { addr, ticket } => {
            let sent = tcp::send_blocks(addr, ticket, req.layout, &dest, read().await?, timeout);
            ("tcp", sent.await.map_err(|e| e.to_string()))
        }
        Route::InProcess(decode_worker) => {
            let store = inproc::lookup(decode_worker)
                .ok_or_else(|| format!("decode worker {decode_worker} is not in this process"))?;
            let write = store.write_import(SeqId(req.dest_seq), dest, read().await?);
            let copied = tokio::time::timeout(timeout, write)
                .await
                .map_err(|_| format!("in-process KV copy timed out after {timeout:?}"))?;
            ("in-process", copied.map_err(|e| e.to_string()))
        }
    };
    if written.is_ok() {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes = count * req.layout.block_bytes();
        tracing::debug!(request = %req.id, transport, blocks = count, bytes, ms, "KV written");
    }
    written
}

fn send_decode(worker: &WorkerId, msg: DecodeWire) {
    if let Some(cell) = ractor::pg::get_members(&groups::worker_inbox(worker))
        .into_iter()
        .next()
    {
        let a: ActorRef<DecodeMsg> = cell.into();
        let _ = a.cast(DecodeMsg::Wire(msg));
    }
}

impl PrefillState {
    fn fail(&self, req: &PrefillRequest, reason: String) {
        tracing::warn!(request = %req.id, attempt = req.attempt, "prefill failed: {reason}");
        self.report_failed(req, reason);
    }

    /// Answers a cancelled attempt: no write of it will land any more.
    fn answer_cancelled(&self, req: &PrefillRequest) {
        tracing::debug!(request = %req.id, attempt = req.attempt, "prefill cancelled");
        self.report_failed(req, "cancelled".into());
    }

    /// Tells `req`'s decode worker that this attempt ended without a result.
    fn report_failed(&self, req: &PrefillRequest, reason: String) {
        send_decode(
            &req.decode_worker,
            DecodeWire::PrefillFailed(PrefillFailed {
                id: req.id,
                attempt: req.attempt,
                prefill_worker: self.cfg.worker.clone(),
                reason,
            }),
        );
    }

    fn cancel(&mut self, id: RequestId, attempt: u32) {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|r| r.id == id && r.attempt == attempt)
        {
            if let Some(req) = self.backlog.remove(i) {
                self.answer_cancelled(&req);
            }
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.req.attempt != attempt {
            return;
        }
        match job.phase {
            // The write reads this sequence's blocks: free them when it ends.
            JobPhase::Transferring { .. } => job.cancelled = true,
            JobPhase::Prefilling => {
                let req = job.req.clone();
                self.drop_job(id);
                self.answer_cancelled(&req);
            }
        }
    }

    fn assign(&mut self, req: PrefillRequest) {
        if self.draining {
            return self.fail(&req, "prefill worker is shutting down".into());
        }
        if req.layout != self.engine.info.layout {
            return self.fail(
                &req,
                format!(
                    "KV layout mismatch: decode {:?}, prefill {:?}",
                    req.layout, self.engine.info.layout
                ),
            );
        }
        self.backlog.push_back(req);
    }

    fn start_backlog(&mut self) {
        while self.jobs.len() < self.cfg.max_concurrent.max(1) {
            let Some(req) = self.backlog.pop_front() else {
                return;
            };
            if req.deadline_unix_ms != 0 && now_unix_ms() >= req.deadline_unix_ms {
                self.fail(&req, "deadline passed while queued".into());
                continue;
            }
            if self.jobs.contains_key(&req.id) {
                // An older attempt is still running: replace it.
                self.drop_job(req.id);
            }
            let seq = SeqId(self.next_seq);
            self.next_seq += 1;
            self.by_seq.insert(seq, req.id);
            self.engine.send(EngineCmd::PrefillOnly {
                req: EngineRequest {
                    id: seq,
                    prompt_tokens: req.prompt_tokens.clone(),
                    params: req.params.clone(),
                },
            });
            tracing::debug!(request = %req.id, attempt = req.attempt, "prefill started");
            self.jobs.insert(
                req.id,
                Job {
                    req,
                    seq,
                    phase: JobPhase::Prefilling,
                    cancelled: false,
                },
            );
        }
    }

    fn drop_job(&mut self, id: RequestId) {
        if let Some(j) = self.jobs.remove(&id) {
            self.by_seq.remove(&j.seq);
            self.engine.send(EngineCmd::Abort { seq: j.seq });
        }
    }

    fn on_engine(&mut self, ev: EngineEvent) {
        match ev {
            EngineEvent::Outputs(outs) => {
                for o in outs {
                    let Some(id) = self.by_seq.get(&o.id).copied() else {
                        continue;
                    };
                    let Some(job) = self.jobs.get_mut(&id) else {
                        continue;
                    };
                    if matches!(job.phase, JobPhase::Prefilling) {
                        job.phase = JobPhase::Transferring {
                            first: o.token.clone(),
                        };
                        self.transfer(id);
                    }
                }
            }
            EngineEvent::Rejected { seq, error } => {
                if let Some(id) = self.by_seq.remove(&seq) {
                    if let Some(j) = self.jobs.remove(&id) {
                        self.fail(&j.req, error.to_string());
                    }
                }
            }
            EngineEvent::Failed { seqs, error } => {
                for seq in seqs {
                    if let Some(id) = self.by_seq.remove(&seq) {
                        if let Some(j) = self.jobs.remove(&id) {
                            self.fail(&j.req, format!("engine failure: {error}"));
                        }
                    }
                }
            }
            EngineEvent::Admitted { seq, .. } => {
                // Not used by prefill workers; never leave blocks behind.
                self.engine.send(EngineCmd::Abort { seq });
            }
        }
    }

    /// Writes the prompt's KV blocks to the decode side, in a task.
    fn transfer(&self, id: RequestId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let req = job.req.clone();
        let seq = job.seq;
        let engine = self.engine.clone();
        let nixl = self.nixl.clone();
        let me = self.myself.clone();
        let timeout = write_timeout(
            self.cfg.transfer_timeout,
            req.deadline_unix_ms,
            now_unix_ms(),
        );
        tokio::spawn(async move {
            let result = match timeout {
                Some(timeout) => write_kv(&req, seq, &engine, nixl.as_deref(), timeout).await,
                None => Err("deadline passed before the KV write".to_string()),
            };
            let _ = me.cast(PrefillMsg::Transferred {
                id: req.id,
                attempt: req.attempt,
                result,
            });
        });
    }

    fn transferred(&mut self, id: RequestId, attempt: u32, result: Result<(), String>) {
        let matches = self.jobs.get(&id).is_some_and(|j| j.req.attempt == attempt);
        if !matches {
            return;
        }
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        self.by_seq.remove(&job.seq);
        self.engine.send(EngineCmd::Abort { seq: job.seq });
        if job.cancelled {
            return self.answer_cancelled(&job.req);
        }
        match (result, job.phase) {
            (Ok(()), JobPhase::Transferring { first }) => {
                tracing::debug!(request = %id, attempt, "prefill done, KV written");
                send_decode(
                    &job.req.decode_worker,
                    DecodeWire::PrefillDone(PrefillDone {
                        id,
                        attempt,
                        prefill_worker: self.cfg.worker.clone(),
                        first,
                        blocks_written: job.req.dest_blocks.len() as u32 - job.req.skip_blocks,
                    }),
                );
            }
            (Err(e), _) => self.fail(&job.req, format!("KV transfer failed: {e}")),
            (Ok(()), JobPhase::Prefilling) => self.fail(&job.req, "transfer before prefill".into()),
        }
    }

    fn tick(&mut self) {
        if self.last_announce.elapsed() >= Duration::from_millis(500) {
            self.announce(true);
        }
    }

    /// Tells every queue of the model how many more requests this worker takes (on
    /// change, or when `force`), and reports load to the routers.
    fn announce(&mut self, force: bool) {
        let free = if self.draining {
            0
        } else {
            self.cfg
                .max_concurrent
                .saturating_sub(self.jobs.len() + self.backlog.len()) as u32
        };
        if !force && self.announced == Some(free) {
            return;
        }
        self.announced = Some(free);
        self.last_announce = Instant::now();
        for cell in ractor::pg::get_members(&groups::prefill_queues(&self.cfg.model)) {
            let q: ActorRef<QueueMsg> = cell.into();
            let _ = q.cast(QueueMsg::Wire(QueueWire::Capacity {
                worker: self.cfg.worker.clone(),
                free_slots: free,
            }));
        }
        let snap = self.engine.snapshot();
        self.report_seq += 1;
        broadcast_load(WorkerLoad {
            worker: self.cfg.worker.clone(),
            role: Role::Prefill,
            model: self.cfg.model.clone(),
            model_spec: self.cfg.model_spec.clone(),
            max_model_len: self.engine.info.max_model_len as u32,
            block_size: self.engine.info.block_size as u32,
            free_blocks: snap.stats.free_blocks as u32,
            total_blocks: snap.stats.total_blocks as u32,
            running: snap.stats.running as u32,
            waiting: snap.stats.waiting as u32,
            prefill_queue_depth: (self.jobs.len() + self.backlog.len()) as u32,
            draining: self.draining,
            remote_prefills: 0,
            prefill_fallbacks: 0,
            cached_blocks: Vec::new(),
            seq: self.report_seq,
        });
    }
}
