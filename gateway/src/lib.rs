//! pdserve-gateway: the OpenAI-compatible HTTP front door.

pub mod backend;
