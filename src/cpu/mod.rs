//! CPU twins of the GPU kernels: the reference in tests, the fallback without an adapter,
//! the baseline in benchmarks. Same signatures as [`crate::gpu`].

pub mod fusion;
pub mod gram;
pub mod rbf;
