//! The engine: model + KV pool + scheduler + samplers. (OWNER: engine core.)
