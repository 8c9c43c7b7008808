//! Exact k-DPP sampling.

use super::eigen::{KernelSpectrum, Spectrum};
use super::esp::EspRatios;
use super::projection::sample_spanned;
use crate::error::{Error, Result};

/// Exact k-DPP sampler (Kulesza & Taskar 2012, Alg. 8 + projection sampling with
/// re-orthonormalisation); the ESP table is built once in `new` (overflow-free).
///
/// `P(Y) = det(L_Y) / e_k(lambda)` for `|Y| = k`. Eigenvalues at or below the spectrum's
/// rank tolerance are treated as 0, so k may be at most
/// [`KernelSpectrum::numerical_rank`]. Works over a full [`Spectrum`] (the default type)
/// or a [`super::PartialSpectrum`], which computes the k selected eigenvectors per draw.
#[derive(Clone, Debug)]
pub struct KDppSampler<'a, S: KernelSpectrum = Spectrum> {
    spectrum: &'a S,
    /// Indices (into the spectrum) of the eigenvalues above the rank tolerance.
    positive: Vec<usize>,
    esp: EspRatios,
}

impl<'a, S: KernelSpectrum> KDppSampler<'a, S> {
    /// Prepares k-DPP draws of exactly `k` items: builds the elementary symmetric
    /// polynomial ratios in O(n k).
    ///
    /// Errors (Error::InvalidInput): `k = 0`, `k > n`, or `k` above the numerical rank
    /// (the message gives the rank).
    pub fn new(spectrum: &'a S, k: usize) -> Result<Self> {
        let n = spectrum.len();
        if k == 0 {
            return Err(Error::invalid("k must be at least 1"));
        }
        if k > n {
            return Err(Error::invalid(format!(
                "k = {k} exceeds the number of items n = {n}"
            )));
        }
        let tol = spectrum.rank_tolerance();
        let eigenvalues = spectrum.eigenvalues();
        let positive: Vec<usize> = (0..n).filter(|&i| eigenvalues[i] > tol).collect();
        if k > positive.len() {
            return Err(Error::invalid(format!(
                "k = {k} exceeds the numerical rank {} of the kernel (n = {n}): \
                 every subset of more than {} items has determinant 0",
                positive.len(),
                positive.len()
            )));
        }
        let lambdas = positive.iter().map(|&i| eigenvalues[i]).collect();
        Ok(KDppSampler {
            spectrum,
            esp: EspRatios::new(lambdas, k),
            positive,
        })
    }

    /// k, the size of every sample.
    pub fn k(&self) -> usize {
        self.esp.k()
    }

    /// Sorted, distinct indices, exactly k of them. Errors only where the spectrum's
    /// [`KernelSpectrum::eigenvectors_of`] does (a partial spectrum computing the selected
    /// eigenvectors).
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

    /// The first phase of a draw: which k eigenvectors span the projection DPP that the
    /// second phase samples from (indices into the spectrum). [`Self::try_sample`] is this
    /// followed by that projection sampling, with the same `rng`.
    pub fn eigenvector_indices<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        self.esp
            .select(rng)
            .into_iter()
            .map(|p| self.positive[p])
            .collect()
    }
}

impl KDppSampler<'_, Spectrum> {
    /// Sorted, distinct indices, exactly k of them (a full spectrum has every
    /// eigenvector already: nothing can fail).
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        self.try_sample(rng)
            .expect("a full spectrum holds every eigenvector")
    }
}
