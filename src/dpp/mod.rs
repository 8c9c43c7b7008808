//! The DPP engine on the host: eigendecomposition of a kernel, exact k-DPP and DPP
//! sampling, and greedy MAP selection.
//!
//! All of it works on an n x n symmetric positive semi-definite kernel `L` in f64.
//! The eigendecomposition ([`Spectrum`]) costs O(n^3) and is computed once; every sampler
//! borrows it, so any number of samples at any k reuses it. A sample then costs
//! O(n k^2) (projection sampling) plus O(n k) (eigenvector selection). Greedy MAP works
//! on `L` directly in O(n k^2) time and O(n k) memory.
//!
//! Every random step draws from a caller-supplied `rand::Rng`; the `sample_*` helpers
//! seed `rand_chacha::ChaCha8Rng`, so the same seed gives the same subset.

mod eigen;
mod esp;
mod greedy;
mod kdpp;
mod projection;
mod spin_team;
mod tridiag;
mod tridiag_eigen;
mod variable;
pub(crate) mod vector;

pub use eigen::Spectrum;
pub use greedy::{greedy_map, GreedyStop};
pub use kdpp::KDppSampler;
pub use variable::DppSampler;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// One exact k-DPP draw from `spectrum` with a `ChaCha8Rng` seeded by `seed`: exactly `k`
/// sorted, distinct indices. Errors as [`KDppSampler::new`].
pub fn sample_k_dpp(spectrum: &Spectrum, k: usize, seed: u64) -> Result<Vec<usize>> {
    let sampler = KDppSampler::new(spectrum, k)?;
    Ok(sampler.sample(&mut ChaCha8Rng::seed_from_u64(seed)))
}

/// One exact DPP draw from `spectrum` with a `ChaCha8Rng` seeded by `seed`: sorted,
/// distinct indices, possibly none.
pub fn sample_dpp(spectrum: &Spectrum, seed: u64) -> Result<Vec<usize>> {
    Ok(DppSampler::new(spectrum).sample(&mut ChaCha8Rng::seed_from_u64(seed)))
}
