//! The router: one per frontend (or `serve`) node. Keeps the live set of decode
//! workers (process groups + their load reports), picks one per request with the
//! configured [`RoutingPolicy`], and relays each request's token stream from the
//! decode worker to the gateway's channel.
//!
//! Faults: a decode worker is dead as soon as its inbox group is empty (node lost,
//! actor stopped) or when it has not reported for [`STALE_AFTER`]. Its requests
//! that have not streamed a token yet are routed again; those already streaming end
//! with a `WorkerLost` error. A client that goes away (`cancel`, or its channel
//! closed) cancels the request on the worker.
//!
//! Invariant: every admitted request ends with exactly one terminal event (finish or
//! error) on its channel, or its channel is closed because the client left.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pdserve_cluster::groups;
use pdserve_cluster::protocol::{
    DecodeWire, ErrorKind, GenerateRequest, RouterWire, StreamEvent, WorkerLoad,
};
use pdserve_cluster::{NodeName, RequestId, Role, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc::UnboundedSender;

use crate::decode_worker::DecodeMsg;
use crate::policy::routing::{choose_worker, RoutingPolicy, WorkerView};

/// A worker that has not reported for this long is not chosen.
pub const STALE_AFTER: Duration = Duration::from_millis(1000);
/// A worker that is not alive and has not reported for this long is forgotten
/// (it leaves `/metrics`; a restarted worker comes back under a new id).
pub const FORGET_AFTER: Duration = Duration::from_secs(5);
/// A request is routed at most this many times (first try included).
const MAX_ROUTES: u32 = 3;

pub enum RouterMsg {
    Wire(RouterWire),
    Submit {
        request: GenerateRequest,
        sink: UnboundedSender<StreamEvent>,
    },
    Cancel {
        id: RequestId,
    },
    Tick,
}
pdserve_cluster::impl_wire_message!(RouterMsg, RouterWire);

/// What the router knows, shared read-only with its client (gateway side).
#[derive(Default)]
pub struct RouterView {
    pub workers: HashMap<WorkerId, (WorkerLoad, Instant)>,
}

impl RouterView {
    fn alive(&self, w: &WorkerId, now: Instant) -> bool {
        self.workers
            .get(w)
            .is_some_and(|(_, at)| now.duration_since(*at) < STALE_AFTER)
            && !ractor::pg::get_members(&groups::worker_inbox(w)).is_empty()
    }
    /// Drops workers that are gone and have not reported for [`FORGET_AFTER`];
    /// returns how many.
    fn forget_gone(&mut self, now: Instant) -> usize {
        let gone: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(w, (_, at))| now.duration_since(*at) >= FORGET_AFTER && !self.alive(w, now))
            .map(|(w, _)| w.clone())
            .collect();
        for w in &gone {
            self.workers.remove(w);
            tracing::info!(worker = %w.0, "worker gone; forgotten");
        }
        gone.len()
    }
    /// Live, non-draining decode workers of `model`.
    pub fn serving(&self, model: &str) -> Vec<&WorkerLoad> {
        let now = Instant::now();
        self.workers
            .values()
            .filter(|(l, _)| l.role == Role::Decode && l.model == model && !l.draining)
            .filter(|(l, _)| self.alive(&l.worker, now))
            .map(|(l, _)| l)
            .collect()
    }
    /// Every model served by a live decode worker, with one of its reports.
    pub fn models(&self) -> Vec<WorkerLoad> {
        let now = Instant::now();
        let mut seen: HashMap<&str, &WorkerLoad> = HashMap::new();
        for (l, _) in self.workers.values() {
            if l.role == Role::Decode && !l.draining && self.alive(&l.worker, now) {
                seen.entry(l.model.as_str()).or_insert(l);
            }
        }
        let mut v: Vec<WorkerLoad> = seen.into_values().cloned().collect();
        v.sort_by(|a, b| a.model.cmp(&b.model));
        v
    }
}

pub struct RouterArgs {
    pub node: NodeName,
    pub policy: RoutingPolicy,
    pub view: Arc<RwLock<RouterView>>,
}

pub struct Router;

struct Inflight {
    request: GenerateRequest,
    sink: UnboundedSender<StreamEvent>,
    worker: Option<WorkerId>,
    streaming: bool,
    routes: u32,
}

pub struct RouterState {
    policy: RoutingPolicy,
    view: Arc<RwLock<RouterView>>,
    inflight: HashMap<RequestId, Inflight>,
    ticket: u64,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        ractor::pg::join(groups::ROUTERS.to_string(), vec![myself.get_cell()]);
        ractor::pg::join(groups::router_inbox(&args.node), vec![myself.get_cell()]);
        ractor::pg::monitor_scope(ractor::pg::DEFAULT_SCOPE.to_string(), myself.get_cell());
        myself.send_interval(Duration::from_millis(100), || RouterMsg::Tick);
        Ok(RouterState {
            policy: args.policy,
            view: args.view,
            inflight: HashMap::new(),
            ticket: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Wire(RouterWire::Load(load)) => {
                if let Ok(mut v) = st.view.write() {
                    let newer = v
                        .workers
                        .get(&load.worker)
                        .is_none_or(|(old, _)| old.seq <= load.seq);
                    if newer {
                        v.workers
                            .insert(load.worker.clone(), (load, Instant::now()));
                    }
                }
            }
            RouterMsg::Wire(RouterWire::Events(events)) => {
                for ev in events {
                    st.relay(ev);
                }
            }
            RouterMsg::Submit { request, sink } => {
                let id = request.id;
                st.inflight.insert(
                    id,
                    Inflight {
                        request,
                        sink,
                        worker: None,
                        streaming: false,
                        routes: 0,
                    },
                );
                st.route(id);
            }
            RouterMsg::Cancel { id } => st.cancel(id),
            RouterMsg::Tick => st.check_workers(),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(ractor::pg::GroupChangeMessage::Leave(..)) =
            evt
        {
            st.check_workers();
        }
        Ok(())
    }
}

fn send_to_worker(worker: &WorkerId, msg: DecodeWire) -> bool {
    match ractor::pg::get_members(&groups::worker_inbox(worker))
        .into_iter()
        .next()
    {
        Some(cell) => {
            let actor: ActorRef<DecodeMsg> = cell.into();
            actor.cast(DecodeMsg::Wire(msg)).is_ok()
        }
        None => false,
    }
}

impl RouterState {
    fn route(&mut self, id: RequestId) {
        let Some(inf) = self.inflight.get_mut(&id) else {
            return;
        };
        inf.routes += 1;
        let chosen = if inf.routes > MAX_ROUTES {
            None
        } else {
            let view = match self.view.read() {
                Ok(v) => v,
                Err(_) => return,
            };
            let now = Instant::now();
            let workers: Vec<WorkerView> = view
                .workers
                .values()
                .filter(|(l, _)| l.role == Role::Decode && l.model == inf.request.model)
                .filter(|(l, _)| Some(&l.worker) != inf.worker.as_ref())
                .map(|(l, _)| WorkerView::new(l.clone(), view.alive(&l.worker, now)))
                .collect();
            let block_size = workers
                .first()
                .map_or(16, |w| w.load().block_size as usize)
                .max(1);
            let hashes = prompt_block_hashes(&inf.request.prompt_tokens, block_size);
            self.ticket = self.ticket.wrapping_add(1);
            choose_worker(&self.policy, &hashes, &workers, self.ticket)
        };
        let Some(worker) = chosen else {
            let _ = inf.sink.send(StreamEvent::Error {
                id,
                kind: ErrorKind::Overloaded,
                message: format!(
                    "no decode worker can serve model {:?} now",
                    inf.request.model
                ),
            });
            self.inflight.remove(&id);
            return;
        };
        tracing::debug!(request = %id, %worker, "routed");
        inf.worker = Some(worker.clone());
        if !send_to_worker(&worker, DecodeWire::Generate(inf.request.clone())) {
            self.route(id);
        }
    }

    fn relay(&mut self, ev: StreamEvent) {
        let id = ev.id();
        let Some(inf) = self.inflight.get_mut(&id) else {
            return;
        };
        let terminal = matches!(
            &ev,
            StreamEvent::Error { .. }
                | StreamEvent::Tokens {
                    finish: Some(_),
                    ..
                }
        );
        if matches!(ev, StreamEvent::Tokens { .. }) {
            inf.streaming = true;
        }
        if inf.sink.send(ev).is_err() {
            // The client is gone.
            self.cancel(id);
            return;
        }
        if terminal {
            self.inflight.remove(&id);
        }
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(inf) = self.inflight.remove(&id) {
            if let Some(w) = inf.worker {
                send_to_worker(&w, DecodeWire::Cancel { id });
            }
        }
    }

    /// Re-routes or fails the requests of workers that are gone; cancels requests
    /// whose client left.
    fn check_workers(&mut self) {
        let now = Instant::now();
        let mut lost = Vec::new();
        let mut left = Vec::new();
        if let Ok(view) = self.view.read() {
            for (id, inf) in &self.inflight {
                if inf.sink.is_closed() {
                    left.push(*id);
                } else if let Some(w) = &inf.worker {
                    if !view.alive(w, now) {
                        lost.push(*id);
                    }
                }
            }
        }
        for id in left {
            self.cancel(id);
        }
        if let Ok(mut view) = self.view.write() {
            view.forget_gone(now);
        }
        for id in lost {
            let Some(inf) = self.inflight.get_mut(&id) else {
                continue;
            };
            let worker = inf.worker.clone().map(|w| w.0).unwrap_or_default();
            if inf.streaming {
                tracing::warn!(request = %id, %worker, "decode worker lost mid-stream");
                let _ = inf.sink.send(StreamEvent::Error {
                    id,
                    kind: ErrorKind::WorkerLost,
                    message: format!("decode worker {worker} was lost while streaming"),
                });
                self.inflight.remove(&id);
            } else {
                tracing::warn!(request = %id, %worker, "decode worker lost before streaming; routing again");
                self.route(id);
            }
        }
    }
}

/// The prompt's full-block hashes, as every engine computes them (for kv-aware).
pub fn prompt_block_hashes(tokens: &[u32], block_size: usize) -> Vec<u128> {
    pdserve_engine::kv::prefix_cache::hash_blocks(tokens, block_size)
        .into_iter()
        .map(|h| h.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle decode worker's report (the routing tests' builder).
    fn report(id: &str) -> WorkerLoad {
        crate::policy::routing::tests::load(id, &crate::policy::routing::tests::idle(10, 10))
    }

    #[test]
    fn gone_workers_are_forgotten_only_after_their_grace() {
        // Neither worker has an inbox group in this process: both are not alive.
        let now = Instant::now();
        let mut view = RouterView::default();
        view.workers
            .insert(WorkerId("old".into()), (report("old"), now));
        view.workers
            .insert(WorkerId("recent".into()), (report("recent"), now));
        assert_eq!(view.forget_gone(now + FORGET_AFTER / 2), 0);
        view.workers.get_mut(&WorkerId("recent".into())).unwrap().1 = now + FORGET_AFTER;
        assert_eq!(view.forget_gone(now + FORGET_AFTER), 1);
        assert!(view.workers.contains_key(&WorkerId("recent".into())));
        assert!(!view.workers.contains_key(&WorkerId("old".into())));
        assert!(
            view.models().is_empty(),
            "a worker without inbox is not served"
        );
    }
}
