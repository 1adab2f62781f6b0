//! Continuous-batching scheduler (OWNER: helper C). See the API contract in the
//! helper brief; the engine core calls it.
