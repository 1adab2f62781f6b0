//! Stop strings over streamed text: text that might be the start of a stop string is
//! held back until it is known not to be; a matched stop string and everything after
//! it is never emitted.
//!
//! OWNER: helper D.

/// Result of pushing one text delta.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// A stop string matched: generation ends; `emit` excludes the stop string.
    pub stopped: bool,
}

pub struct StopChecker {
    // helper D
}

impl StopChecker {
    pub fn new(stop: &[String]) -> Self {
        let _ = stop;
        todo!("helper D")
    }
    pub fn push(&mut self, delta: &str) -> StopStep {
        let _ = delta;
        todo!("helper D")
    }
    /// End of generation without a stop match: the held-back text.
    pub fn flush(&mut self) -> String {
        todo!("helper D")
    }
}
