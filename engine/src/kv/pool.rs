//! KV memory pool. (OWNER: engine core.)
