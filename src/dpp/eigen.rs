//! Validation of a kernel matrix, its full eigendecomposition ([`Spectrum`]), and what
//! every DPP sampler needs from an eigendecomposition ([`KernelSpectrum`]), which the
//! partial one ([`super::PartialSpectrum`]) provides too.

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::linalg::check_indices;
use crate::linalg::eigh::symmetric_eigen;
use crate::memory::ensure_host_matrices;
use crate::progress::{NoProgress, Progress};

/// Largest asymmetry |L_ij - L_ji| accepted, relative to max |L_ij|. Loose enough for a
/// kernel computed in f32 (on the GPU, or stored as float32), tight enough to catch a
/// matrix that is not a kernel at all.
const SYMMETRY_TOL: f64 = 1e-6;

/// Most negative eigenvalue accepted, relative to the largest |eigenvalue|: rounding (an f32
/// kernel, or the eigensolver itself) makes tiny negative eigenvalues, which are clamped at
/// 0; anything below this means `L` is not positive semi-definite.
const PSD_TOL: f64 = 1e-6;

/// Checks that `l` can be a DPP kernel: square, non-empty, finite and symmetric within
/// [`SYMMETRY_TOL`]. Returns whether it is exactly symmetric.
pub(crate) fn validate_kernel(l: MatRef<'_, f64>) -> Result<bool> {
    let (rows, cols) = (l.nrows(), l.ncols());
    if rows != cols {
        return Err(Error::invalid(format!(
            "kernel must be square, got {rows} x {cols}"
        )));
    }
    if rows == 0 {
        return Err(Error::invalid("kernel is empty (0 x 0)"));
    }
    let mut max_abs = 0.0f64;
    for j in 0..cols {
        for i in 0..rows {
            let v = l[(i, j)];
            if !v.is_finite() {
                return Err(Error::invalid(format!(
                    "kernel has a non-finite value ({v}) at row {i}, column {j}"
                )));
            }
            max_abs = max_abs.max(v.abs());
        }
    }
    let tol = SYMMETRY_TOL * max_abs;
    let mut asymmetric = None;
    let mut exact = true;
    for_each_strictly_lower(rows, |i, j| {
        let diff = (l[(i, j)] - l[(j, i)]).abs();
        exact &= diff == 0.0;
        if diff > tol && asymmetric.is_none() {
            asymmetric = Some((i, j, diff));
        }
    });
    if let Some((i, j, diff)) = asymmetric {
        return Err(Error::invalid(format!(
            "kernel is not symmetric: L[{i},{j}] = {} but L[{j},{i}] = {} \
             (difference {diff:.3e}, tolerance {tol:.3e})",
            l[(i, j)],
            l[(j, i)]
        )));
    }
    Ok(exact)
}

/// Calls `f(i, j)` for every `i > j < n`, in 32 x 32 tiles so that reading `(j, i)` next to
/// `(i, j)` stays in cache (row-wise reads of a column-major n x n matrix otherwise miss
/// on every element: 0.3 s of 8.6 at n = 4000).
fn for_each_strictly_lower(n: usize, mut f: impl FnMut(usize, usize)) {
    const TILE: usize = 32;
    for jb in (0..n).step_by(TILE) {
        for ib in (jb..n).step_by(TILE) {
            for j in jb..(jb + TILE).min(n) {
                for i in ib.max(j + 1)..(ib + TILE).min(n) {
                    f(i, j);
                }
            }
        }
    }
}

/// Makes the lower triangle of the validated kernel `l` that of `(L + L^T) / 2`, in place;
/// nothing to do when L is exactly symmetric.
pub(crate) fn symmetrize_lower(l: &mut Mat<f64>, exactly_symmetric: bool) {
    if !exactly_symmetric {
        for_each_strictly_lower(l.nrows(), |i, j| l[(i, j)] = 0.5 * (l[(i, j)] + l[(j, i)]));
    }
}

/// Checks that the eigenvalues of a kernel are those of a positive semi-definite matrix
/// (none below `-1e-6 * max |lambda|`, else Error::InvalidInput) and clamps the small
/// negative ones, rounding, at 0. Non-finite values are an Error::Numerical.
pub(crate) fn clamp_psd_eigenvalues(values: &mut [f64]) -> Result<()> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::Numerical(
            "eigendecomposition produced non-finite values".into(),
        ));
    }
    let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    if min < -PSD_TOL * scale {
        return Err(Error::invalid(format!(
            "kernel is not positive semi-definite: eigenvalue {min:.6e} \
             (largest |eigenvalue| {scale:.6e})"
        )));
    }
    for v in values {
        *v = v.max(0.0);
    }
    Ok(())
}

/// What a DPP sampler needs from the eigendecomposition of its kernel: every eigenvalue,
/// and the eigenvectors of the indices its first phase selects.
///
/// Implemented by [`Spectrum`] (all eigenvectors, computed once) and by
/// [`super::PartialSpectrum`] (each call computes the ones it is asked for). The samplers
/// and the `sample_*` helpers take either.
pub trait KernelSpectrum {
    /// The eigenvalues, nondecreasing, each >= 0.
    fn eigenvalues(&self) -> &[f64];

    /// The eigenvectors of the eigenvalues at `indices` (distinct, each below n).
    ///
    /// Errors: an index out of range or repeated (Error::InvalidInput); for a partial
    /// spectrum also an iteration that does not converge (Error::Numerical) and an n x k
    /// result that this process cannot allocate (Error::InvalidInput).
    fn eigenvectors_of(&self, indices: &[usize]) -> Result<ChosenEigenvectors<'_>> {
        self.eigenvectors_with_progress(indices, &mut crate::progress::NoProgress)
    }

    /// [`KernelSpectrum::eigenvectors_of`], reporting the work to `progress` where there is
    /// any (a partial spectrum computes its vectors; a full one only picks columns).
    fn eigenvectors_with_progress(
        &self,
        indices: &[usize],
        progress: &mut dyn crate::progress::Progress,
    ) -> Result<ChosenEigenvectors<'_>>;

    /// n, the number of items (rows of L).
    fn len(&self) -> usize {
        self.eigenvalues().len()
    }

    /// Always false: a spectrum is only built from a non-empty kernel.
    fn is_empty(&self) -> bool {
        self.eigenvalues().is_empty()
    }

    /// Eigenvalues at or below this are treated as 0: `n * f64::EPSILON * lambda_max`,
    /// the threshold LAPACK-based rank functions use.
    fn rank_tolerance(&self) -> f64 {
        let values = self.eigenvalues();
        let max = values.iter().copied().fold(0.0, f64::max);
        values.len() as f64 * f64::EPSILON * max
    }

    /// The number of eigenvalues above [`KernelSpectrum::rank_tolerance`]: the largest k
    /// for which a k-DPP exists numerically.
    fn numerical_rank(&self) -> usize {
        let tol = self.rank_tolerance();
        self.eigenvalues().iter().filter(|&&v| v > tol).count()
    }

    /// sum_i lambda_i / (1 + lambda_i)
    ///
    /// The expected size of a subset drawn from the DPP with kernel L.
    fn expected_dpp_size(&self) -> f64 {
        self.eigenvalues().iter().map(|&v| v / (1.0 + v)).sum()
    }
}

/// Eigenvectors for chosen indices, as [`KernelSpectrum::eigenvectors_of`] returns them:
/// column `columns()[t]` of `matrix()` is the eigenvector of the t-th index asked for.
pub struct ChosenEigenvectors<'a> {
    matrix: MatrixOrView<'a>,
    columns: Vec<usize>,
}

enum MatrixOrView<'a> {
    View(MatRef<'a, f64>),
    Owned(Mat<f64>),
}

impl<'a> ChosenEigenvectors<'a> {
    /// Columns `columns` of a matrix that holds more eigenvectors (a full spectrum's).
    pub fn columns_of(matrix: MatRef<'a, f64>, columns: Vec<usize>) -> Self {
        ChosenEigenvectors {
            matrix: MatrixOrView::View(matrix),
            columns,
        }
    }

    /// A matrix of exactly the eigenvectors asked for, in order.
    pub fn owned(matrix: Mat<f64>) -> Self {
        let columns = (0..matrix.ncols()).collect();
        ChosenEigenvectors {
            matrix: MatrixOrView::Owned(matrix),
            columns,
        }
    }

    /// The matrix holding the eigenvectors (n rows).
    pub fn matrix(&self) -> MatRef<'_, f64> {
        match &self.matrix {
            MatrixOrView::View(m) => *m,
            MatrixOrView::Owned(m) => m.as_ref(),
        }
    }

    /// Which columns of [`ChosenEigenvectors::matrix`] are the eigenvectors asked for, in
    /// the order asked for.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }
}

/// Eigendecomposition of a symmetric PSD kernel L (f64), eigenvalues clamped at 0; computed
/// once, reused for any number of samples and any k.
///
/// `L = U diag(lambda) U^T`; eigenvalues are in nondecreasing order and column `i` of
/// `eigenvectors` belongs to `eigenvalues[i]`.
#[derive(Clone, Debug)]
pub struct Spectrum {
    /// The eigenvalues, nondecreasing, each >= 0.
    pub eigenvalues: Vec<f64>,
    /// The orthonormal eigenvectors as the columns of an n x n matrix.
    pub eigenvectors: Mat<f64>,
}

impl Spectrum {
    /// Validates L: square, non-empty, finite, symmetric (relative tolerance), else
    /// Error::InvalidInput.
    ///
    /// The symmetric part `(L + L^T) / 2` is decomposed by LAPACK's `dsyevd` algorithm
    /// (blocked Householder tridiagonalisation, divide and conquer, blocked
    /// back-transformation; see `src/linalg/`), on as many threads as faer's global
    /// parallelism (rayon by default). Eigenvalues below
    /// `-1e-6 * max |lambda|` mean L is not positive semi-definite (an error); smaller
    /// negative ones are rounding and are clamped at 0.
    ///
    /// The result is the same bit for bit whatever the thread count, also while other
    /// solves run at the same time; it can differ in the last bits between CPUs, whose
    /// vector instructions (AVX-512, AVX2, none) round differently.
    pub fn new(l: MatRef<'_, f64>) -> Result<Self> {
        Self::with_progress(l, &mut NoProgress)
    }

    /// [`Spectrum::new`], reporting its stages to `progress`: the tridiagonal reduction (by
    /// panel of columns), divide and conquer, and the back-transformation (by block of
    /// reflectors).
    pub fn with_progress(l: MatRef<'_, f64>, progress: &mut dyn Progress) -> Result<Self> {
        let exactly_symmetric = validate_kernel(l)?;
        let n = l.nrows();
        // The solver holds a copy of L, the eigenvectors and, at its top merge, up to one
        // more n x n of workspace: an error now rather than an abort halfway.
        ensure_host_matrices(n, 3)?;
        // The eigensolver works on a copy of the lower triangle: that of (L + L^T) / 2,
        // which is L's own when L is exactly symmetric.
        let mut sym = l.to_owned();
        symmetrize_lower(&mut sym, exactly_symmetric);
        let (mut eigenvalues, eigenvectors) = symmetric_eigen(sym, progress)?;
        if (0..n).any(|j| eigenvectors.col(j).iter().any(|v| !v.is_finite())) {
            return Err(Error::Numerical(
                "eigendecomposition produced non-finite values".into(),
            ));
        }
        clamp_psd_eigenvalues(&mut eigenvalues)?;
        Ok(Spectrum {
            eigenvalues,
            eigenvectors,
        })
    }

    /// n, the number of items (rows of L).
    pub fn len(&self) -> usize {
        KernelSpectrum::len(self)
    }

    /// Always false: a spectrum is only built from a non-empty kernel.
    pub fn is_empty(&self) -> bool {
        KernelSpectrum::is_empty(self)
    }

    /// Eigenvalues at or below this are treated as 0: `n * f64::EPSILON * lambda_max`,
    /// the threshold LAPACK-based rank functions use.
    pub fn rank_tolerance(&self) -> f64 {
        KernelSpectrum::rank_tolerance(self)
    }

    /// The number of eigenvalues above [`Spectrum::rank_tolerance`]: the largest k for
    /// which a k-DPP exists numerically.
    pub fn numerical_rank(&self) -> usize {
        KernelSpectrum::numerical_rank(self)
    }

    /// sum_i lambda_i / (1 + lambda_i)
    ///
    /// The expected size of a subset drawn from the DPP with kernel L.
    pub fn expected_dpp_size(&self) -> f64 {
        KernelSpectrum::expected_dpp_size(self)
    }
}

impl KernelSpectrum for Spectrum {
    fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }

    /// Never fails for valid indices: the columns are there already.
    fn eigenvectors_with_progress(
        &self,
        indices: &[usize],
        _progress: &mut dyn crate::progress::Progress,
    ) -> Result<ChosenEigenvectors<'_>> {
        check_indices(indices, self.eigenvalues.len())?;
        Ok(ChosenEigenvectors::columns_of(
            self.eigenvectors.as_ref(),
            indices.to_vec(),
        ))
    }
}
