//! The partial eigendecomposition a k-DPP draw needs: all eigenvalues, and only the k
//! eigenvectors its first phase selects.

use faer::Mat;

use super::eigen::{
    clamp_psd_eigenvalues, symmetrize_lower, validate_kernel, ChosenEigenvectors, KernelSpectrum,
};
use crate::error::Result;
use crate::linalg::eigh::PartialEigen;
use crate::memory::ensure_host_columns;
use crate::progress::{NoProgress, Progress};

/// All eigenvalues of a kernel L, and the eigenvectors of any chosen indices on demand:
/// the eigendecomposition behind an exact k-DPP (or DPP) draw when n is large.
///
/// Built by consuming L: L is reduced to tridiagonal form in place (its storage ends up
/// holding the Householder reflectors, about 4/3 n^3 flops; from 4096 neurons in two
/// stages, through a band, which runs at the speed of the arithmetic rather than of
/// memory), and all eigenvalues of the tridiagonal matrix follow in O(n^2). Each call to
/// [`PartialSpectrum::eigenvectors`] then computes only the vectors asked for: inverse
/// iteration on the tridiagonal matrix, O(n) per vector and step, and the
/// back-transformation of those k columns, 2 n^2 k flops (4 n^2 k after two stages). A
/// k-DPP draw thus costs about 4/3 n^3 + 2 n^2 k + 2 n k^2 flops (4 n^2 k) against the
/// ~9 n^3 of [`super::Spectrum`], and holds one n x n matrix (L itself) plus n x k, where
/// the full decomposition holds three n x n.
/// Further draws reuse the reduction and the eigenvalues and compute only the
/// eigenvectors they need.
///
/// Eigenvalues are validated and clamped as [`super::Spectrum::new`] does them. The
/// eigenvectors are those of the full decomposition to within what the matrix determines:
/// for an eigenvalue separated from the others by a gap g, to about `eps ||L|| / g`, up to
/// sign; inside a cluster of eigenvalues too close to tell apart (within 1e-10 ||L||), the
/// cluster's vectors are computed together and form a fixed orthonormal basis of its
/// invariant subspace, which is what a k-DPP draw needs to stay exact (see
/// `src/linalg/inverse_iteration.rs`). They do not depend on the thread count (they can
/// differ in the last bits between CPUs), and on which other indices are asked for only by
/// the rounding-level orthonormalisation of vectors with close eigenvalues.
pub struct PartialSpectrum {
    eigen: PartialEigen,
    eigenvalues: Vec<f64>,
}

impl PartialSpectrum {
    /// Validates L as [`super::Spectrum::new`] does (square, non-empty, finite, symmetric
    /// within a relative 1e-6, else Error::InvalidInput), then reduces it in place and
    /// computes all its eigenvalues. The symmetric part `(L + L^T) / 2` is what is
    /// decomposed; eigenvalues below `-1e-6 * max |lambda|` mean L is not positive
    /// semi-definite (an error), smaller negative ones are clamped at 0. Non-convergence
    /// is an Error::Numerical.
    pub fn new(l: Mat<f64>) -> Result<Self> {
        Self::with_progress(l, &mut NoProgress)
    }

    /// [`PartialSpectrum::new`], reporting its stages to `progress`: the tridiagonal
    /// reduction (by panel of columns; from 4096 neurons the band reduction by column and
    /// the bulge chasing by sweep) and the eigenvalues.
    pub fn with_progress(mut l: Mat<f64>, progress: &mut dyn Progress) -> Result<Self> {
        let exactly_symmetric = validate_kernel(l.as_ref())?;
        let n = l.nrows();
        // L exists already; the reduction adds panels of a few dozen columns.
        ensure_host_columns(
            n,
            PartialEigen::REDUCTION_COLUMNS,
            "the tridiagonal reduction",
        )?;
        symmetrize_lower(&mut l, exactly_symmetric);
        let eigen = PartialEigen::new(l, progress)?;
        let mut eigenvalues = eigen.eigenvalues();
        clamp_psd_eigenvalues(&mut eigenvalues)?;
        Ok(PartialSpectrum { eigen, eigenvalues })
    }

    /// The eigenvectors of the eigenvalues at `indices` (positions in
    /// [`KernelSpectrum::eigenvalues`], distinct), as the columns of an n x k matrix in
    /// that order.
    ///
    /// Errors: an index out of range or repeated, or an n x k result this process cannot
    /// allocate (Error::InvalidInput); inverse iteration that does not converge
    /// (Error::Numerical).
    pub fn eigenvectors(&self, indices: &[usize]) -> Result<Mat<f64>> {
        self.eigenvectors_with_progress(indices, &mut NoProgress)
    }

    /// [`PartialSpectrum::eigenvectors`], reporting its stages to `progress`: inverse
    /// iteration (by vector) and the back-transformation (by block of reflectors; after the
    /// two-stage reduction, first the band's, by column of the result).
    pub fn eigenvectors_with_progress(
        &self,
        indices: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<Mat<f64>> {
        let n = self.eigenvalues.len();
        ensure_host_columns(
            n,
            PartialEigen::eigenvector_columns(n, indices.len()),
            "computing eigenvectors",
        )?;
        self.eigen.eigenvectors(indices, progress)
    }
}

impl KernelSpectrum for PartialSpectrum {
    fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }

    fn eigenvectors_with_progress(
        &self,
        indices: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<ChosenEigenvectors<'_>> {
        Ok(ChosenEigenvectors::owned(
            self.eigenvectors_with_progress(indices, progress)?,
        ))
    }
}

impl std::fmt::Debug for PartialSpectrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialSpectrum")
            .field("n", &self.eigenvalues.len())
            .field("eigenvalues", &self.eigenvalues)
            .finish_non_exhaustive()
    }
}
