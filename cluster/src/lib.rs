//! pdserve-cluster: what nodes share.
//!
//! - [`ids`]: request, node and worker ids, and every process-group name;
//! - [`protocol`]: every message that crosses a node (bincode 2) and the protocol
//!   version checked at handshake;
//! - [`node`]: starting a node (ractor_cluster `NodeServer`), cookie, seeds,
//!   transitive peer discovery, reconnect with backoff, protocol version check;
//! - [`transport`]: moving KV blocks between engines (in-process copy, TCP data
//!   plane, NIXL) — KV never rides in actor messages.

pub mod ids;
pub mod node;
mod peer_targets;
pub mod protocol;
pub mod transport;

pub use ids::{groups, NodeName, RequestId, Role, WorkerId};
