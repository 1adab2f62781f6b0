//! The prefill queue of one decode worker: remote prefill requests wait here until
//! a prefill worker has room. Prefill workers announce their free slots
//! (`QueueWire::Capacity`, on change and every second) to every queue of their
//! model; the queue hands the oldest request to the worker with the most announced
//! room (pull by credit: a worker only gets work it said it can take).
//!
//! Invariants: a request is handed out at most once per attempt; a cancelled
//! request is never handed out; the decode worker learns who got each request
//! (`Assigned`) so that it can supervise it, and which cancelled attempts were
//! never handed out (`NeverAssigned`: no prefill worker can write for them).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pdserve_cluster::groups;
use pdserve_cluster::protocol::{PrefillRequest, PrefillWire, QueueWire};
use pdserve_cluster::{RequestId, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::decode_worker::DecodeMsg;
use crate::prefill_worker::PrefillMsg;

pub enum QueueMsg {
    Wire(QueueWire),
    Enqueue(Box<PrefillRequest>),
    Cancel { id: RequestId },
}
pdserve_cluster::impl_wire_message!(QueueMsg, QueueWire);

pub struct QueueArgs {
    pub model: String,
    pub decode: ActorRef<DecodeMsg>,
    /// Published queue length (read by the decode worker's prefill decision).
    pub depth: Arc<AtomicUsize>,
}

pub struct PrefillQueue;

pub struct QueueState {
    decode: ActorRef<DecodeMsg>,
    depth: Arc<AtomicUsize>,
    pending: VecDeque<PrefillRequest>,
    credits: HashMap<WorkerId, u32>,
}

impl Actor for PrefillQueue {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = QueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        args: QueueArgs,
    ) -> Result<QueueState, ActorProcessingErr> {
        ractor::pg::join(groups::prefill_queues(&args.model), vec![myself.get_cell()]);
        Ok(QueueState {
            decode: args.decode,
            depth: args.depth,
            pending: VecDeque::new(),
            credits: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        st: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            QueueMsg::Wire(QueueWire::Capacity { worker, free_slots }) => {
                st.credits.insert(worker, free_slots);
            }
            QueueMsg::Enqueue(r) => st.pending.push_back(*r),
            QueueMsg::Cancel { id } => {
                let (gone, kept) = st.pending.drain(..).partition(|r| r.id == id);
                st.pending = kept;
                for r in gone {
                    let _ = st.decode.cast(DecodeMsg::NeverAssigned {
                        id,
                        attempt: r.attempt,
                    });
                }
            }
        }
        st.dispatch();
        st.depth.store(st.pending.len(), Ordering::Relaxed);
        Ok(())
    }
}

impl QueueState {
    fn dispatch(&mut self) {
        while !self.pending.is_empty() {
            // The live worker with the most room (ties: smallest id).
            let best = self
                .credits
                .iter()
                .filter(|(_, c)| **c > 0)
                .filter_map(|(w, c)| {
                    let cell = ractor::pg::get_members(&groups::worker_inbox(w))
                        .into_iter()
                        .next()?;
                    Some((w.clone(), *c, cell))
                })
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
            let Some((worker, _, cell)) = best else {
                // Forget workers that are gone.
                self.credits
                    .retain(|w, _| !ractor::pg::get_members(&groups::worker_inbox(w)).is_empty());
                return;
            };
            let Some(req) = self.pending.pop_front() else {
                return;
            };
            if let Some(c) = self.credits.get_mut(&worker) {
                *c -= 1;
            }
            let (id, attempt) = (req.id, req.attempt);
            let actor: ActorRef<PrefillMsg> = cell.into();
            if actor
                .cast(PrefillMsg::Wire(PrefillWire::Assign(Box::new(req.clone()))))
                .is_err()
            {
                self.credits.remove(&worker);
                self.pending.push_front(req);
                continue;
            }
            tracing::debug!(request = %id, attempt, %worker, "prefill assigned");
            let _ = self.decode.cast(DecodeMsg::Assigned {
                id,
                attempt,
                worker,
            });
        }
    }
}
