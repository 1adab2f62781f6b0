//! pdserve-actors: the serving actors and their policies.
//!
//! - [`policy`]: pure decision functions (which decode worker; local or remote
//!   prefill), driven by property tests.

pub mod policy;
