//! Compute backends. (OWNER: engine core.)

pub mod cpu;
