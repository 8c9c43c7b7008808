//! # divnet
//!
//! Compress trained neural networks with Diversity Networks (Mariet & Sra, ICLR 2016):
//! keep a diverse subset of each hidden layer's neurons, drawn from a determinantal point
//! process over their activations, and fuse the dropped neurons into the next layer by
//! least squares.
//!
//! The crate is organised by algorithm:
//! - [`types`]: the data that flows between stages and backends (activation rows, Gram
//!   statistics, distances, the next layer, the fusion system); [`rbf`]: the kernel from
//!   distances;
//! - [`kernel`]: the statistics engine ([`kernel::LayerStats`]) and the RBF kernel over
//!   neurons, on the GPU ([`gpu`]) or the CPU ([`cpu`]), chosen by a [`Backend`];
//! - [`dpp`]: eigendecomposition (full or partial), k-DPP and DPP sampling, greedy MAP,
//!   over the crate's own dense symmetric eigensolvers (`src/linalg/`);
//! - [`fusion`]: the least-squares reweighting of the next layer;
//! - [`model`]: MLPs, forward pass, training; [`io`]: npy, safetensors, IDX;
//! - [`compress`]: the pipelines: one layer of any network, every layer of an MLP;
//! - [`progress`], [`memory`]: progress reports and host-memory checks for long work;
//! - [`mod@bench`]: kernel construction timed on each backend (`divnet bench`).

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod compress;
pub mod cpu;
pub mod dpp;
pub mod error;
pub mod experiment;
pub mod fusion;
pub mod gpu;
pub mod io;
pub mod kernel;
mod linalg;
pub mod memory;
pub mod model;
pub mod progress;
pub mod rbf;
pub mod select;
pub mod types;

pub use backend::{Backend, BackendChoice, BackendSelection};
pub use error::{Error, Result};

/// The crates whose types divnet's API takes and returns, at the versions it was built
/// with: an application names `divnet::wgpu::Buffer`, `divnet::faer::Mat` or
/// `divnet::half::f16` without pinning the same versions itself.
pub use {faer, half, wgpu};

/// This crate's version (Cargo's), as reports record it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use gpu::GpuContext;
