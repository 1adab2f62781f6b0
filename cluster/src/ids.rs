//! Identifiers that cross nodes, and the process-group names built from them.
//!
//! Remote `ActorId`s are per-session and must never be stored across reconnects:
//! actors are found by process group, and every group name is built here, in one
//! place, from a model name, a role, or a stable worker id.

use serde::{Deserialize, Serialize};

/// One client request, unique across the cluster (random 64 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl RequestId {
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node: one `pdserve` process. Unique per process start (name + random suffix),
/// so a restarted node is a new node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeName(pub String);

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One worker actor (decode or prefill): `<node>/<role>/<index>`. Stable for the
/// life of the actor; used to build its private process group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl WorkerId {
    pub fn new(node: &NodeName, role: Role, index: usize) -> WorkerId {
        WorkerId(format!("{}/{}/{}", node.0, role.as_str(), index))
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Decode,
    Prefill,
    Frontend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Decode => "decode",
            Role::Prefill => "prefill",
            Role::Frontend => "frontend",
        }
    }
}

/// Process-group names. A group holds actors of one kind; the per-actor groups
/// (`*_inbox`) hold exactly one actor and serve as its address.
pub mod groups {
    use super::WorkerId;

    /// Decode workers serving `model`.
    pub fn decode_workers(model: &str) -> String {
        format!("pdserve.decode.{model}")
    }
    /// Prefill workers serving `model`.
    pub fn prefill_workers(model: &str) -> String {
        format!("pdserve.prefill.{model}")
    }
    /// Prefill queues (one per decode worker) of `model`.
    pub fn prefill_queues(model: &str) -> String {
        format!("pdserve.queue.{model}")
    }
    /// Every router (one per frontend / serve node): receives load reports.
    pub const ROUTERS: &str = "pdserve.routers";
    /// Every node's membership actor.
    pub const MEMBERS: &str = "pdserve.members";
    /// The private group of one worker actor.
    pub fn worker_inbox(worker: &WorkerId) -> String {
        format!("pdserve.w.{}", worker.0)
    }
    /// The private group of one router (where decode workers stream tokens to).
    pub fn router_inbox(node: &super::NodeName) -> String {
        format!("pdserve.r.{}", node.0)
    }
}
