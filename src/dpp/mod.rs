//! The DPP engine on the host: the eigendecomposition of a kernel, exact k-DPP and DPP
//! sampling, and greedy MAP selection.
//!
//! All of it works on an n x n symmetric positive semi-definite kernel `L` in f64. A draw
//! needs every eigenvalue of L but only the eigenvectors its first phase selects; the
//! samplers take either eigendecomposition through [`KernelSpectrum`]:
//! - [`Spectrum`]: all eigenvectors at once (about 9 n^3 flops, three n x n matrices),
//!   then each draw only selects columns. For small n, and wherever all eigenvectors are
//!   wanted.
//! - [`PartialSpectrum`]: the reduction to tridiagonal form and all eigenvalues (about
//!   4/3 n^3, in L's own storage; in two stages from 4096 neurons), then each draw
//!   computes its k eigenvectors (2 n^2 k + 2 n k^2; 4 n^2 k after two stages). For
//!   large n.
//!
//! A sample then costs O(n k^2) (projection sampling) plus O(n k) (eigenvector
//! selection). Greedy MAP works on `L` directly in O(n k^2) time and O(n k) memory. The
//! eigensolvers themselves live in `src/linalg/`.
//!
//! Every random step draws from a caller-supplied `rand::Rng`; the `sample_*` helpers
//! seed `rand_chacha::ChaCha8Rng`, so the same seed gives the same subset, on any thread
//! count (on one CPU type: the last bits of an eigendecomposition depend on the CPU's
//! vector instructions, and a subset can flip where a draw's uniform variate falls within
//! that rounding of a threshold). The two spectra give draws from the same distribution,
//! not the same draws for a seed: their eigenvectors differ by rounding (and, inside a
//! cluster of equal eigenvalues, by a rotation, which the distribution does not see).

mod eigen;
mod esp;
mod greedy;
mod kdpp;
mod partial;
mod projection;
mod variable;

pub use eigen::{ChosenEigenvectors, KernelSpectrum, Spectrum};
pub use greedy::{greedy_map, GreedyStop};
pub(crate) use greedy::{greedy_map_over, KernelColumns};
pub use kdpp::KDppSampler;
pub use partial::PartialSpectrum;
pub use variable::DppSampler;

pub(crate) use projection::sample_projection;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// One exact k-DPP draw from `spectrum` (full or partial) with a `ChaCha8Rng` seeded by
/// `seed`: exactly `k` sorted, distinct indices. Errors as [`KDppSampler::new`] and
/// [`KDppSampler::try_sample`].
pub fn sample_k_dpp<S: KernelSpectrum>(spectrum: &S, k: usize, seed: u64) -> Result<Vec<usize>> {
    let sampler = KDppSampler::new(spectrum, k)?;
    sampler.try_sample(&mut ChaCha8Rng::seed_from_u64(seed))
}

/// One exact DPP draw from `spectrum` (full or partial) with a `ChaCha8Rng` seeded by
/// `seed`: sorted, distinct indices, possibly none. Errors as [`DppSampler::try_sample`].
pub fn sample_dpp<S: KernelSpectrum>(spectrum: &S, seed: u64) -> Result<Vec<usize>> {
    DppSampler::new(spectrum).try_sample(&mut ChaCha8Rng::seed_from_u64(seed))
}
