//! OWNER: helper C.
