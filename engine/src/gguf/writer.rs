//! Writes GGUF v3 files: used by test fixtures (tiny models) and tools.
//!
//! OWNER: helper A.
