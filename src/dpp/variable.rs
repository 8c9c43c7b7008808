//! Exact DPP sampling (variable size).

use super::eigen::{KernelSpectrum, Spectrum};
use super::projection::sample_spanned;
use crate::error::Result;

/// Exact DPP sampler (variable size, Hough et al. / Kulesza & Taskar Alg. 1).
///
/// `P(Y) = det(L_Y) / det(L + I)`; the size is random with mean
/// [`KernelSpectrum::expected_dpp_size`]. Works over a full [`Spectrum`] (the default
/// type) or a [`super::PartialSpectrum`].
#[derive(Clone, Debug)]
pub struct DppSampler<'a, S: KernelSpectrum = Spectrum> {
    spectrum: &'a S,
}

impl<'a, S: KernelSpectrum> DppSampler<'a, S> {
    /// A sampler over `spectrum`; nothing to precompute.
    pub fn new(spectrum: &'a S) -> Self {
        DppSampler { spectrum }
    }

    /// Sorted, distinct indices; possibly none. Eigenvector i is kept with probability
    /// `lambda_i / (1 + lambda_i)`, then the kept ones are sampled as a projection DPP.
    /// Errors only where the spectrum's [`KernelSpectrum::eigenvectors_of`] does.
    pub fn try_sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Result<Vec<usize>> {
        self.try_sample_with_progress(rng, &mut crate::progress::NoProgress)
    }

    /// [`Self::try_sample`], reporting the eigenvector computation of a partial spectrum to
    /// `progress`.
    pub fn try_sample_with_progress<R: rand::Rng + ?Sized>(
        &self,
        rng: &mut R,
        progress: &mut dyn crate::progress::Progress,
    ) -> Result<Vec<usize>> {
        let cols = self.eigenvector_indices(rng);
        sample_spanned(self.spectrum, &cols, rng, progress)
    }

    /// The first phase of a draw: which eigenvectors span the projection DPP that the
    /// second phase samples from (indices into the spectrum; possibly none).
    /// [`Self::try_sample`] is this followed by that projection sampling, with the same `rng`.
    pub fn eigenvector_indices<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        self.spectrum
            .eigenvalues()
            .iter()
            .enumerate()
            .filter(|&(_, &lambda)| rng.random::<f64>() < lambda / (1.0 + lambda))
            .map(|(i, _)| i)
            .collect()
    }
}

impl DppSampler<'_, Spectrum> {
    /// Sorted, distinct indices; possibly none (a full spectrum has every eigenvector
    /// already: nothing can fail).
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        self.try_sample(rng)
            .expect("a full spectrum holds every eigenvector")
    }
}
