//! The `pdserve` binary.
fn main() {}
