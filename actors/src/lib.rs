//! pdserve-actors: the serving actors and their policies.
//!
//! - [`engine_actor`]: the only owner of an engine; step loop on its own thread;
//! - [`router`]: picks a decode worker per request and relays its stream;
//! - [`decode_worker`]: admits requests, decides local vs remote prefill,
//!   supervises remote prefills and falls back to local prefill;
//! - [`prefill_queue`]: a decode worker's queue of remote prefills, pulled by credit;
//! - [`prefill_worker`]: computes prompts' KV and writes it into decode engines;
//! - [`kv_nixl`]: the workers' NIXL endpoints (feature `nixl`);
//! - [`policy`]: pure decision functions (routing; local or remote prefill).

pub mod decode_worker;
pub mod engine_actor;
pub mod kv_nixl;
pub mod policy;
pub mod prefill_queue;
pub mod prefill_worker;
pub mod router;
