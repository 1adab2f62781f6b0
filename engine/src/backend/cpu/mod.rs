//! CPU backend. (OWNER: engine core.)
