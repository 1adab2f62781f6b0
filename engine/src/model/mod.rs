//! The transformer forward pass, written once over the [`Backend`] trait.
//! (OWNER: engine core.)

pub mod weights;

pub use weights::{LayerWeights, ModelWeights, TensorNaming, TensorSource};
