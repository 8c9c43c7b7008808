//! MLP description, forward pass, evaluation and training (issue 5).
//!
//! An [`Mlp`] is read from a PyTorch state dict in safetensors form
//! ([`Mlp::from_tensors`] / [`Mlp::load`]) and written back with the same tensor names and
//! dtypes ([`Mlp::to_tensors`]). The forward pass and training run on the CPU through faer's
//! matrix products.

pub mod mlp;
pub mod train;

pub use mlp::{parent_module, tensor_name, Activation, Linear, Mlp};
pub use train::{
    evaluate, evaluate_against, predict, train, EpochReport, Evaluation, Optimizer, TrainConfig,
};
