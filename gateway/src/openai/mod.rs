//! OpenAI wire types: [`request`] bodies as they arrive, [`response`] bodies as
//! they leave. Validation lives in [`crate::validate`], not here.

pub mod request;
pub mod response;
