//! The decode worker: owns one decode engine (through its engine actor), admits
//! requests, decides local vs remote prefill, and supervises every remote prefill.
//!
//! Remote prefill: the engine reserves destination blocks (`Admitted` with a
//! reservation); the worker authorizes the transfer (a single-use ticket on the TCP
//! data plane, or the in-process registry), enqueues a [`PrefillRequest`] on its
//! prefill queue, and joins the sequence to the running batch only when both the
//! prefill worker's `PrefillDone` (first token) and the transfer confirmation are in.
//!
//! Supervision: a remote prefill is abandoned — and the prompt prefilled locally,
//! invisibly to the client — when its prefill worker leaves (process group leave:
//! actor death or node loss), reports failure, or its deadline passes. Abandoning
//! withdraws the ticket, cancels the queue entry or the assigned prefill, and aborts
//! the import sequence (its blocks return to the pool; the engine refuses any later
//! write into them). Every attempt has a number; a late answer to an old attempt is
//! dropped.
//!
//! NIXL writes are one-sided: the engine cannot refuse a late one. So when a remote
//! prefill over NIXL is abandoned, its import sequence is *quarantined* rather
//! than aborted — its blocks stay out of reuse until no write of that attempt can
//! land any more: the queue never handed the attempt out, the prefill worker
//! answered it (`PrefillDone` or `PrefillFailed`, which it sends for a cancelled
//! attempt once its write is over), the prefill worker is gone, or the attempt's deadline plus
//! `quarantine_slack` ([`QUARANTINE_SLACK`] by default) passed (a prefill worker starts no write after the
//! deadline and bounds each write by it; node clocks are assumed to agree within
//! the slack).
//!
//! Invariant: each request is in exactly one phase, owns exactly one engine
//! sequence, and every exit path (finish, error, cancel, deadline) aborts or
//! finishes that sequence (or quarantines it, as above, which ends in an abort).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pdserve_cluster::groups;
use pdserve_cluster::protocol::{
    DecodeWire, ErrorKind, GenerateRequest, KvTarget, PrefillLocation, PrefillRequest, PrefillWire,
    RouterWire, StreamEvent, WorkerLoad,
};
use pdserve_cluster::transport::tcp::{KvWritten, TcpKvReceiver};
use pdserve_cluster::transport::{inproc, KvBlockStore};
use pdserve_cluster::{RequestId, Role, WorkerId};
use pdserve_engine::engine::{Engine, EngineRequest};
use pdserve_engine::sampling::SampledToken;
use pdserve_engine::{EngineError, SeqId};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::engine_actor::{
    spawn_engine_pinned, EngineCmd, EngineEvent, EngineHandle, RemoteOption,
};
use crate::kv_nixl::{self, DecodeNixl};
use crate::prefill_queue::{PrefillQueue, QueueArgs, QueueMsg};
use crate::prefill_worker::PrefillMsg;
use crate::router::RouterMsg;

pub enum DecodeMsg {
    Wire(DecodeWire),
    Engine(EngineEvent),
    KvWritten(KvWritten),
    /// The prefill queue handed attempt `attempt` of `id` to `worker`.
    Assigned {
        id: RequestId,
        attempt: u32,
        worker: WorkerId,
    },
    /// The prefill queue dropped attempt `attempt` of `id` on cancel, before
    /// handing it to any prefill worker.
    NeverAssigned {
        id: RequestId,
        attempt: u32,
    },
    Tick,
    /// Stop taking work (SIGTERM); reply with the number of requests still held.
    Drain(ractor::RpcReplyPort<usize>),
    /// Requests still held.
    Active(ractor::RpcReplyPort<usize>),
}
pdserve_cluster::impl_wire_message!(DecodeMsg, DecodeWire);

/// How remote prefills reach this worker's engine.
#[derive(Clone, Debug)]
pub enum KvIngress {
    /// Only local prefill (no prefill workers can reach us).
    None,
    /// Prefill workers in this process (`pdserve serve`).
    InProcess,
    /// The TCP data plane, listening on this address (port 0: any).
    Tcp {
        listen: String,
        advertise_host: String,
    },
    /// NIXL into the registered KV pool, with the TCP data plane (as in `Tcp`)
    /// for prefill workers that have no NIXL.
    Nixl {
        listen: String,
        advertise_host: String,
    },
}

/// Default of how long past its deadline an abandoned NIXL attempt's blocks stay
/// out of reuse.
pub const QUARANTINE_SLACK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct DecodeConfig {
    pub worker: WorkerId,
    /// Served model name.
    pub model: String,
    /// `--model` as given, reported to frontends.
    pub model_spec: String,
    pub max_local_prefill_length: usize,
    pub max_prefill_queue_size: usize,
    /// A remote prefill not done by then is done locally.
    pub remote_prefill_timeout: Duration,
    pub ingress: KvIngress,
    pub load_interval: Duration,
    /// How long past its deadline an abandoned NIXL attempt's blocks stay out of
    /// reuse (module header).
    pub quarantine_slack: Duration,
}

pub struct DecodeArgs {
    pub config: DecodeConfig,
    pub engine: Engine,
}

pub struct DecodeWorker;

struct Remote {
    attempt: u32,
    ticket: u64,
    assigned: Option<WorkerId>,
    deadline: Instant,
    first: Option<SampledToken>,
    kv_written: bool,
}

/// The import sequence of an abandoned NIXL attempt, held until no write of the
/// attempt can land.
struct Quarantined {
    seq: SeqId,
    worker: Option<WorkerId>,
    until: Instant,
}

enum Phase {
    Admitting,
    Remote(Remote),
    Running,
}

struct Req {
    reply_to: String,
    prompt: Vec<u32>,
    params: pdserve_engine::sampling::SamplingParams,
    seq: SeqId,
    phase: Phase,
    deadline: Option<Instant>,
    started: bool,
    attempts: u32,
}

pub struct DecodeState {
    cfg: DecodeConfig,
    engine: EngineHandle,
    queue: ActorRef<QueueMsg>,
    queue_depth: Arc<AtomicUsize>,
    tcp: Option<Arc<TcpKvReceiver>>,
    tcp_addr: Option<String>,
    nixl: Option<DecodeNixl>,
    /// Abandoned NIXL attempts, by (request, attempt).
    quarantine: HashMap<(RequestId, u32), Quarantined>,
    reqs: HashMap<RequestId, Req>,
    by_seq: HashMap<SeqId, RequestId>,
    next_seq: u64,
    draining: bool,
    remote_prefills: u64,
    prefill_fallbacks: u64,
    report_seq: u64,
    last_report: Instant,
    dirty: bool,
}

impl Actor for DecodeWorker {
    type Msg = DecodeMsg;
    type State = DecodeState;
    type Arguments = DecodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DecodeMsg>,
        args: DecodeArgs,
    ) -> Result<DecodeState, ActorProcessingErr> {
        let cfg = args.config;
        let (on_written, mut written) = tokio::sync::mpsc::unbounded_channel();
        let me = myself.clone();
        tokio::spawn(async move {
            while let Some(w) = written.recv().await {
                if me.cast(DecodeMsg::KvWritten(w)).is_err() {
                    break;
                }
            }
        });
        let (nixl, pins) = match &cfg.ingress {
            KvIngress::Nixl { .. } => {
                let pool = kv_nixl::EnginePool::of(&cfg.worker, &args.engine)?;
                // SAFETY: the pool is the engine's, allocated once for its life;
                // the pin goes to the engine thread, which frees the pool only
                // after the registration is dropped.
                let (d, pin) = unsafe { DecodeNixl::start(&pool, on_written.clone()) }?;
                (Some(d), vec![pin])
            }
            _ => (None, Vec::new()),
        };
        let me = myself.clone();
        let engine = spawn_engine_pinned(
            args.engine,
            &cfg.worker.0,
            Box::new(move |ev| {
                let _ = me.cast(DecodeMsg::Engine(ev));
            }),
            pins,
        )?;
        let (tcp, tcp_addr) = match &cfg.ingress {
            KvIngress::Tcp {
                listen,
                advertise_host,
            }
            | KvIngress::Nixl {
                listen,
                advertise_host,
            } => {
                let store: Arc<dyn KvBlockStore> = Arc::new(engine.clone());
                let recv = TcpKvReceiver::bind(listen, store, on_written).await?;
                let addr = format!("{advertise_host}:{}", recv.local_addr().port());
                tracing::info!(worker = %cfg.worker, %addr, nixl = nixl.is_some(), "KV data plane (TCP) listening");
                (Some(Arc::new(recv)), Some(addr))
            }
            KvIngress::InProcess => {
                inproc::register(cfg.worker.clone(), Arc::new(engine.clone()));
                (None, None)
            }
            KvIngress::None => (None, None),
        };
        let queue_depth = Arc::new(AtomicUsize::new(0));
        let (queue, _) = Actor::spawn_linked(
            None,
            PrefillQueue,
            QueueArgs {
                model: cfg.model.clone(),
                decode: myself.clone(),
                depth: queue_depth.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        ractor::pg::join(groups::decode_workers(&cfg.model), vec![myself.get_cell()]);
        ractor::pg::join(groups::worker_inbox(&cfg.worker), vec![myself.get_cell()]);
        ractor::pg::monitor_scope(ractor::pg::DEFAULT_SCOPE.to_string(), myself.get_cell());
        myself.send_interval(Duration::from_millis(50), || DecodeMsg::Tick);
        let mut st = DecodeState {
            cfg,
            engine,
            queue,
            queue_depth,
            tcp,
            tcp_addr,
            nixl,
            quarantine: HashMap::new(),
            reqs: HashMap::new(),
            by_seq: HashMap::new(),
            next_seq: 1,
            draining: false,
            remote_prefills: 0,
            prefill_fallbacks: 0,
            report_seq: 0,
            last_report: Instant::now(),
            dirty: true,
        };
        st.report();
        Ok(st)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DecodeMsg>,
        st: &mut DecodeState,
    ) -> Result<(), ActorProcessingErr> {
        inproc::unregister(&st.cfg.worker);
        st.engine.send(EngineCmd::Stop);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<DecodeMsg>,
        msg: DecodeMsg,
        st: &mut DecodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DecodeMsg::Wire(DecodeWire::Generate(req)) => st.admit(req),
            DecodeMsg::Wire(DecodeWire::Cancel { id }) => st.cancel(id),
            DecodeMsg::Wire(DecodeWire::PrefillDone(done)) => {
                if st.release_quarantined(done.id, done.attempt) {
                    return Ok(());
                }
                let Some(r) = st.reqs.get_mut(&done.id) else {
                    tracing::debug!(request = %done.id, "late PrefillDone dropped");
                    return Ok(());
                };
                if let Phase::Remote(rem) = &mut r.phase {
                    if rem.attempt == done.attempt {
                        rem.first = Some(done.first);
                        if matches!(st.cfg.ingress, KvIngress::InProcess) {
                            // In process: the copy finished before PrefillDone was sent.
                            rem.kv_written = true;
                        }
                        st.try_commit(done.id);
                        return Ok(());
                    }
                }
                tracing::debug!(request = %done.id, attempt = done.attempt, "stale PrefillDone dropped");
            }
            DecodeMsg::Wire(DecodeWire::PrefillFailed(f)) => {
                if st.release_quarantined(f.id, f.attempt) {
                    return Ok(());
                }
                let current = st.reqs.get(&f.id).is_some_and(
                    |r| matches!(&r.phase, Phase::Remote(rem) if rem.attempt == f.attempt),
                );
                if current {
                    st.fall_back(
                        f.id,
                        &format!("prefill worker {} failed: {}", f.prefill_worker, f.reason),
                        true,
                    );
                }
            }
            DecodeMsg::KvWritten(w) => {
                if let Some(id) = st.by_seq.get(&w.seq).copied() {
                    if let Some(Req {
                        phase: Phase::Remote(rem),
                        ..
                    }) = st.reqs.get_mut(&id)
                    {
                        if rem.ticket == w.ticket {
                            rem.kv_written = true;
                            st.try_commit(id);
                        }
                    }
                }
            }
            DecodeMsg::Assigned {
                id,
                attempt,
                worker,
            } => {
                if let Some(Req {
                    phase: Phase::Remote(rem),
                    ..
                }) = st.reqs.get_mut(&id)
                {
                    if rem.attempt == attempt {
                        rem.assigned = Some(worker);
                        return Ok(());
                    }
                }
                if let Some(q) = st.quarantine.get_mut(&(id, attempt)) {
                    q.worker = Some(worker);
                }
            }
            DecodeMsg::NeverAssigned { id, attempt } => {
                st.release_quarantined(id, attempt);
            }
            DecodeMsg::Engine(ev) => st.on_engine(ev),
            DecodeMsg::Tick => st.tick(),
            DecodeMsg::Drain(reply) => {
                st.draining = true;
                st.dirty = true;
                st.report();
                let _ = reply.send(st.reqs.len());
            }
            DecodeMsg::Active(reply) => {
                let _ = reply.send(st.reqs.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<DecodeMsg>,
        evt: SupervisionEvent,
        st: &mut DecodeState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ProcessGroupChanged(ractor::pg::GroupChangeMessage::Leave(..)) => {
                st.check_prefills();
            }
            SupervisionEvent::ActorFailed(_, e) => {
                return Err(format!("prefill queue failed: {e}").into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// The span of one request on this node: its id is the one the gateway made and
/// every cluster message of the request carries, so one request's log lines on
/// frontend, decode and prefill nodes share it.
fn request_span(id: RequestId) -> tracing::Span {
    tracing::info_span!("request", id = %id)
}

fn unix_to_instant(ms: u64) -> Option<Instant> {
    if ms == 0 {
        return None;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms)))
}

fn error_kind(e: &EngineError) -> ErrorKind {
    match e {
        EngineError::InvalidRequest(_)
        | EngineError::PromptTooLong { .. }
        | EngineError::KvCacheTooSmall { .. } => ErrorKind::InvalidRequest,
        _ => ErrorKind::Internal,
    }
}

impl DecodeState {
    fn new_seq(&mut self, id: RequestId) -> SeqId {
        let seq = SeqId(self.next_seq);
        self.next_seq += 1;
        self.by_seq.insert(seq, id);
        seq
    }

    fn live_prefill_workers(&self) -> usize {
        ractor::pg::get_members(&groups::prefill_workers(&self.cfg.model)).len()
    }

    fn admit(&mut self, req: GenerateRequest) {
        let id = req.id;
        if self.draining {
            self.emit(
                &req.reply_to,
                vec![StreamEvent::Error {
                    id,
                    kind: ErrorKind::Overloaded,
                    message: "decode worker is shutting down".into(),
                }],
            );
            return;
        }
        if self.reqs.contains_key(&id) {
            return;
        }
        let seq = self.new_seq(id);
        let remote = match self.cfg.ingress {
            KvIngress::None => None,
            _ => Some(RemoteOption {
                max_local_prefill_length: self.cfg.max_local_prefill_length,
                prefill_queue_len: self.queue_depth.load(Ordering::Relaxed),
                max_prefill_queue_size: self.cfg.max_prefill_queue_size,
                live_prefill_workers: self.live_prefill_workers(),
            }),
        };
        self.engine.send(EngineCmd::Admit {
            req: EngineRequest {
                id: seq,
                prompt_tokens: req.prompt_tokens.clone(),
                params: req.params.clone(),
            },
            remote,
            span: request_span(id),
        });
        self.reqs.insert(
            id,
            Req {
                reply_to: req.reply_to,
                prompt: req.prompt_tokens,
                params: req.params,
                seq,
                phase: Phase::Admitting,
                deadline: unix_to_instant(req.deadline_unix_ms),
                started: false,
                attempts: 0,
            },
        );
        self.dirty = true;
    }

    fn on_engine(&mut self, ev: EngineEvent) {
        match ev {
            EngineEvent::Admitted {
                seq,
                location,
                reservation,
                prompt_tokens,
                cached_tokens,
            } => {
                let Some(id) = self.by_seq.get(&seq).copied() else {
                    self.engine.send(EngineCmd::Abort { seq });
                    return;
                };
                let worker = self.cfg.worker.clone();
                let Some(r) = self.reqs.get_mut(&id) else {
                    return;
                };
                let mut events = Vec::new();
                if !r.started {
                    r.started = true;
                    events.push(StreamEvent::Started {
                        id,
                        worker,
                        prefill: location,
                        prompt_tokens: prompt_tokens as u32,
                        cached_tokens: cached_tokens as u32,
                    });
                }
                let reply_to = r.reply_to.clone();
                match reservation {
                    Some(res) if location == PrefillLocation::Remote => {
                        self.start_remote(id, seq, res.blocks, res.cached_tokens)
                    }
                    _ => r.phase = Phase::Running,
                }
                self.emit(&reply_to, events);
            }
            EngineEvent::Rejected { seq, error } => {
                let Some(id) = self.by_seq.remove(&seq) else {
                    return;
                };
                if let Some(r) = self.reqs.remove(&id) {
                    self.emit(
                        &r.reply_to,
                        vec![StreamEvent::Error {
                            id,
                            kind: error_kind(&error),
                            message: error.to_string(),
                        }],
                    );
                }
            }
            EngineEvent::Outputs(outs) => {
                let mut batches: HashMap<String, Vec<StreamEvent>> = HashMap::new();
                for o in outs {
                    let Some(id) = self.by_seq.get(&o.id).copied() else {
                        continue;
                    };
                    let Some(r) = self.reqs.get(&id) else {
                        continue;
                    };
                    batches
                        .entry(r.reply_to.clone())
                        .or_default()
                        .push(StreamEvent::Tokens {
                            id,
                            tokens: vec![o.token],
                            text: o.text,
                            finish: o.finish,
                        });
                    if o.finish.is_some() {
                        self.by_seq.remove(&o.id);
                        self.reqs.remove(&id);
                        self.dirty = true;
                    }
                }
                for (to, evs) in batches {
                    self.emit(&to, evs);
                }
            }
            EngineEvent::Failed { seqs, error } => {
                for seq in seqs {
                    if let Some(id) = self.by_seq.remove(&seq) {
                        if let Some(r) = self.reqs.remove(&id) {
                            tracing::error!(request = %id, "engine failure: {error}");
                            self.emit(
                                &r.reply_to,
                                vec![StreamEvent::Error {
                                    id,
                                    kind: ErrorKind::Internal,
                                    message: "internal engine error".into(),
                                }],
                            );
                        }
                    }
                }
            }
        }
    }

    fn start_remote(
        &mut self,
        id: RequestId,
        seq: SeqId,
        blocks: Vec<pdserve_engine::BlockId>,
        cached: usize,
    ) {
        let bs = self.engine.info.block_size.max(1);
        let skip = (cached / bs).min(blocks.len());
        let ticket: u64 = rand::random();
        let deadline = Instant::now() + self.cfg.remote_prefill_timeout;
        let tcp = match (&self.tcp, &self.tcp_addr) {
            (Some(recv), Some(addr)) => {
                recv.expect(ticket, seq, blocks[skip..].to_vec(), deadline);
                Some(addr.clone())
            }
            _ => None,
        };
        let target = match (&self.nixl, tcp) {
            (Some(nixl), tcp) => {
                nixl.expect(ticket, seq, &blocks[skip..], deadline);
                nixl.target(ticket, &blocks[skip..], tcp)
            }
            (None, Some(addr)) => KvTarget::Tcp { addr, ticket },
            (None, None) => KvTarget::InProcess {
                decode_worker: self.cfg.worker.clone(),
            },
        };
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        r.attempts += 1;
        let attempt = r.attempts;
        let pr = PrefillRequest {
            id,
            attempt,
            decode_worker: self.cfg.worker.clone(),
            model: self.cfg.model.clone(),
            prompt_tokens: r.prompt.clone(),
            params: r.params.clone(),
            dest_seq: seq.0,
            dest_blocks: blocks.iter().map(|b| b.0).collect(),
            skip_blocks: skip as u32,
            layout: self.engine.info.layout,
            target,
            deadline_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
                + self.cfg.remote_prefill_timeout.as_millis() as u64,
        };
        r.phase = Phase::Remote(Remote {
            attempt,
            ticket,
            assigned: None,
            deadline,
            first: None,
            kv_written: false,
        });
        tracing::debug!(request = %id, attempt, blocks = blocks.len(), skip, "remote prefill enqueued");
        let _ = self.queue.cast(QueueMsg::Enqueue(Box::new(pr)));
    }

    fn try_commit(&mut self, id: RequestId) {
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        let Phase::Remote(rem) = &mut r.phase else {
            return;
        };
        if !rem.kv_written {
            return;
        }
        let Some(first) = rem.first.take() else {
            return;
        };
        r.phase = Phase::Running;
        self.engine
            .send(EngineCmd::CommitImport { seq: r.seq, first });
        self.remote_prefills += 1;
        self.dirty = true;
    }

    /// Withdraws a remote prefill (ticket, queue entry, assigned prefill) and frees
    /// its import blocks — or, over NIXL, quarantines them (module header) unless
    /// `attempt_over`: the prefill worker said the attempt ended.
    fn withdraw(&mut self, id: RequestId, attempt_over: bool) {
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        let Phase::Remote(rem) = &r.phase else {
            return;
        };
        if let Some(t) = &self.tcp {
            t.forget(rem.ticket);
        }
        if let Some(n) = &self.nixl {
            n.forget(rem.ticket);
        }
        let _ = self.queue.cast(QueueMsg::Cancel { id });
        if let Some(w) = &rem.assigned {
            if let Some(cell) = ractor::pg::get_members(&groups::worker_inbox(w))
                .into_iter()
                .next()
            {
                let a: ActorRef<PrefillMsg> = cell.into();
                let _ = a.cast(PrefillMsg::Wire(PrefillWire::Cancel {
                    id,
                    attempt: rem.attempt,
                }));
            }
        }
        let seq = r.seq;
        self.by_seq.remove(&seq);
        if self.nixl.is_some() && !attempt_over {
            let until = rem.deadline.max(Instant::now()) + self.cfg.quarantine_slack;
            let worker = rem.assigned.clone();
            tracing::debug!(request = %id, attempt = rem.attempt, %seq, "NIXL destination blocks quarantined");
            self.quarantine
                .insert((id, rem.attempt), Quarantined { seq, worker, until });
            self.dirty = true;
        } else {
            self.engine.send(EngineCmd::Abort { seq });
        }
    }

    /// Frees the quarantined blocks of attempt `attempt` of `id`, if any: the
    /// prefill worker answered it, so no write of it is in flight.
    fn release_quarantined(&mut self, id: RequestId, attempt: u32) -> bool {
        match self.quarantine.remove(&(id, attempt)) {
            Some(q) => {
                tracing::debug!(request = %id, attempt, seq = %q.seq, "quarantine released (answered)");
                self.engine.send(EngineCmd::Abort { seq: q.seq });
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// Frees quarantined blocks whose time is up or whose prefill worker is gone.
    fn release_expired_quarantine(&mut self) {
        if self.quarantine.is_empty() {
            return;
        }
        let now = Instant::now();
        let gone = |w: &WorkerId| ractor::pg::get_members(&groups::worker_inbox(w)).is_empty();
        let done: Vec<(RequestId, u32)> = self
            .quarantine
            .iter()
            .filter(|(_, q)| now >= q.until || q.worker.as_ref().is_some_and(gone))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(q) = self.quarantine.remove(&k) {
                tracing::debug!(request = %k.0, attempt = k.1, seq = %q.seq, "quarantine released (expired or worker gone)");
                self.engine.send(EngineCmd::Abort { seq: q.seq });
                self.dirty = true;
            }
        }
    }

    /// Gives up the remote prefill of `id` and prefills locally instead.
    fn fall_back(&mut self, id: RequestId, reason: &str, attempt_over: bool) {
        tracing::warn!(request = %id, "remote prefill abandoned ({reason}); prefilling locally");
        self.withdraw(id, attempt_over);
        self.prefill_fallbacks += 1;
        self.dirty = true;
        let seq = self.new_seq(id);
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        r.seq = seq;
        r.phase = Phase::Admitting;
        self.engine.send(EngineCmd::Admit {
            req: EngineRequest {
                id: seq,
                prompt_tokens: r.prompt.clone(),
                params: r.params.clone(),
            },
            remote: None,
            span: request_span(id),
        });
    }

    fn cancel(&mut self, id: RequestId) {
        let Some(r) = self.reqs.get(&id) else {
            return;
        };
        if matches!(r.phase, Phase::Remote(_)) {
            // Frees (or quarantines) the import sequence.
            self.withdraw(id, false);
        } else {
            self.engine.send(EngineCmd::Abort { seq: r.seq });
        }
        if let Some(r) = self.reqs.remove(&id) {
            self.by_seq.remove(&r.seq);
            tracing::debug!(request = %id, "cancelled");
        }
        self.dirty = true;
    }

    /// Falls back for remote prefills whose worker is gone or whose time is up.
    fn check_prefills(&mut self) {
        let now = Instant::now();
        let mut give_up = Vec::new();
        for (id, r) in &self.reqs {
            if let Phase::Remote(rem) = &r.phase {
                if now >= rem.deadline {
                    give_up.push((*id, "deadline passed".to_string()));
                } else if let Some(w) = &rem.assigned {
                    if ractor::pg::get_members(&groups::worker_inbox(w)).is_empty() {
                        give_up.push((*id, format!("prefill worker {w} left")));
                    }
                } else if self.live_prefill_workers() == 0 {
                    give_up.push((*id, "no prefill worker left".to_string()));
                }
            }
        }
        for (id, why) in give_up {
            self.fall_back(id, &why, false);
        }
        self.release_expired_quarantine();
    }

    fn tick(&mut self) {
        self.check_prefills();
        let now = Instant::now();
        let expired: Vec<RequestId> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(r) = self.reqs.get(&id) {
                let to = r.reply_to.clone();
                self.cancel(id);
                self.emit(
                    &to,
                    vec![StreamEvent::Error {
                        id,
                        kind: ErrorKind::DeadlineExceeded,
                        message: "request deadline exceeded".into(),
                    }],
                );
            }
        }
        if self.dirty || self.last_report.elapsed() >= self.cfg.load_interval {
            self.report();
        }
    }

    fn emit(&mut self, reply_to: &str, events: Vec<StreamEvent>) {
        if events.is_empty() {
            return;
        }
        match ractor::pg::get_members(&reply_to.to_string())
            .into_iter()
            .next()
        {
            Some(cell) => {
                let router: ActorRef<RouterMsg> = cell.into();
                let _ = router.cast(RouterMsg::Wire(RouterWire::Events(events)));
            }
            None => {
                // The router (and so every client of it) is gone: stop the work.
                for ev in events {
                    tracing::debug!(request = %ev.id(), "router {reply_to} gone; cancelling");
                    self.cancel(ev.id());
                }
            }
        }
    }

    fn report(&mut self) {
        let snap = self.engine.snapshot();
        self.report_seq += 1;
        let load = WorkerLoad {
            worker: self.cfg.worker.clone(),
            role: Role::Decode,
            model: self.cfg.model.clone(),
            model_spec: self.cfg.model_spec.clone(),
            max_model_len: self.engine.info.max_model_len as u32,
            block_size: self.engine.info.block_size as u32,
            free_blocks: snap.stats.free_blocks as u32,
            total_blocks: snap.stats.total_blocks as u32,
            running: snap.stats.running as u32,
            waiting: snap.stats.waiting as u32,
            prefill_queue_depth: self.queue_depth.load(Ordering::Relaxed) as u32,
            draining: self.draining,
            remote_prefills: self.remote_prefills,
            prefill_fallbacks: self.prefill_fallbacks,
            cached_blocks: snap.cached_blocks,
            seq: self.report_seq,
        };
        broadcast_load(load);
        self.last_report = Instant::now();
        self.dirty = false;
    }
}

/// Sends a load report to every router.
pub fn broadcast_load(load: WorkerLoad) {
    for cell in ractor::pg::get_members(&groups::ROUTERS.to_string()) {
        let r: ActorRef<RouterMsg> = cell.into();
        let _ = r.cast(RouterMsg::Wire(RouterWire::Load(load.clone())));
    }
}
