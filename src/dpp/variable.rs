//! Exact DPP sampling (variable size).

use super::eigen::Spectrum;
use super::projection::sample_projection;

/// Exact DPP sampler (variable size, Hough et al. / Kulesza & Taskar Alg. 1).
///
/// `P(Y) = det(L_Y) / det(L + I)`; the size is random with mean
/// [`Spectrum::expected_dpp_size`].
#[derive(Clone, Debug)]
pub struct DppSampler<'a> {
    spectrum: &'a Spectrum,
}

impl<'a> DppSampler<'a> {
    /// A sampler over `spectrum`; nothing to precompute.
    pub fn new(spectrum: &'a Spectrum) -> Self {
        DppSampler { spectrum }
    }

    /// Sorted, distinct indices; possibly none. Eigenvector i is kept with probability
    /// `lambda_i / (1 + lambda_i)`, then the kept ones are sampled as a projection DPP.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        let cols: Vec<usize> = self
            .spectrum
            .eigenvalues
            .iter()
            .enumerate()
            .filter(|&(_, &lambda)| rng.random::<f64>() < lambda / (1.0 + lambda))
            .map(|(i, _)| i)
            .collect();
        sample_projection(self.spectrum.eigenvectors.as_ref(), &cols, rng)
    }
}
