//! The two eigensolver drivers: the whole spectrum (`dsyevd`'s algorithm) and the
//! partial one (all eigenvalues, chosen eigenvectors).
//!
//! Both scale the matrix first, as `dsyevd` and `dstedc` do, so that its largest entry is
//! about 1: otherwise the squared norms of the reflectors underflow (silently dropping a
//! column) or overflow near the ends of the f64 range, and so do the secular equation's
//! squared terms near its poles and `dsterf`'s squared off-diagonal entries. The factor is
//! a power of two, so the scaling is exact, and so is scaling the eigenvalues back;
//! matrices of order 1 skip it.

use faer::Mat;

use super::back_transform::apply_q;
use super::band::tridiagonalize_in_two_stages;
use super::divide_conquer::tridiagonal_eigen;
use super::eigenvalues::TridiagonalEigenvalues;
use super::inverse_iteration;
use super::reduction::{tridiagonalize, Tridiagonal};
use super::IterationLimits;
use crate::error::Result;
use crate::progress::Progress;

/// Eigenvalues (ascending) and eigenvectors of the symmetric matrix whose lower triangle
/// is that of `a`: blocked tridiagonalisation, divide and conquer on the tridiagonal
/// matrix, and the back-transformation, each a stage of `progress`.
pub(crate) fn symmetric_eigen(
    a: Mat<f64>,
    progress: &mut dyn Progress,
) -> Result<(Vec<f64>, Mat<f64>)> {
    let (a, exponent) = scaled_to_unit(a);
    let t = tridiagonalize(a, progress);
    progress.start("divide and conquer", 1);
    let (mut values, mut z) = tridiagonal_eigen(&t.diag, &t.offdiag, &IterationLimits::DEFAULT)?;
    progress.advance(1);
    progress.finish();
    apply_q(&t, &mut z, progress);
    unscale(&mut values, exponent);
    Ok((values, z))
}

/// The order from which [`PartialEigen`] reduces in two stages. The one-stage reduction is
/// bound by memory once the matrix leaves the caches; the two-stage one runs at the speed
/// of the arithmetic but back-transforms twice. Measured on two cores, the reduction and
/// the back-transformation of n / 4 vectors, one stage against two: n = 3072, 1.5 s
/// either way; n = 4096, 4.0 s against 3.5; n = 6144, 13.6 against 10.5; n = 8192, about
/// 32 against 21.
pub(crate) const TWO_STAGE_MIN_N: usize = 4096;

/// The band's half-width in the two-stage reduction: wider bands make the first stage's
/// products more efficient and the bulge chasing longer (n = 8192, k = 2048: 21.0 s in
/// all at 32, 24.5 s at 64).
pub(crate) const BAND_WIDTH: usize = 32;

/// A symmetric matrix reduced to tridiagonal form (its reflectors in the matrix's own
/// storage) with all eigenvalues of T, from which any eigenvectors are computed on demand:
/// inverse iteration on T, then the back-transformation of those columns only.
pub(crate) struct PartialEigen {
    reduced: Tridiagonal,
    eigenvalues: TridiagonalEigenvalues,
    /// The matrix was scaled by 2^exponent.
    exponent: i32,
}

impl PartialEigen {
    /// Columns of n values the reduction holds beside the matrix (either reduction).
    pub(crate) const REDUCTION_COLUMNS: usize = {
        let one = super::reduction::WORKSPACE_COLUMNS;
        let two = super::band::workspace_columns(BAND_WIDTH);
        if one > two {
            one
        } else {
            two
        }
    };

    /// Columns of n values [`PartialEigen::eigenvectors`] holds for k vectors of a matrix
    /// of order n: the result and the back-transformation's panels or stripes. Inverse
    /// iteration holds less than the panels beside the result: O(n) per vector being
    /// iterated, and the orthonormalisation's blocks (k x 256 and 256 x 256, no k x k).
    pub(crate) fn eigenvector_columns(n: usize, k: usize) -> usize {
        k + super::back_transform::workspace_columns(n, k)
    }

    /// Reduces the symmetric matrix whose lower triangle is that of `a`, in place, and
    /// computes all its eigenvalues; `progress` sees the reduction and the eigenvalues.
    /// Matrices of order [`TWO_STAGE_MIN_N`] and more are reduced in two stages.
    pub(crate) fn new(a: Mat<f64>, progress: &mut dyn Progress) -> Result<Self> {
        let width = (a.nrows() >= TWO_STAGE_MIN_N).then_some(BAND_WIDTH);
        Self::reduced_with(a, width, progress)
    }

    /// [`PartialEigen::new`] by the two-stage reduction through a band of half-width
    /// `width`, or the one-stage reduction for None.
    pub(crate) fn reduced_with(
        a: Mat<f64>,
        width: Option<usize>,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let (a, exponent) = scaled_to_unit(a);
        let reduced = match width {
            Some(width) => tridiagonalize_in_two_stages(a, width, progress),
            None => tridiagonalize(a, progress),
        };
        progress.start("tridiagonal eigenvalues", 1);
        let eigenvalues = TridiagonalEigenvalues::new(
            reduced.diag.clone(),
            reduced.offdiag.clone(),
            &IterationLimits::DEFAULT,
        )?;
        progress.advance(1);
        progress.finish();
        Ok(PartialEigen {
            reduced,
            eigenvalues,
            exponent,
        })
    }

    /// All eigenvalues, ascending.
    pub(crate) fn eigenvalues(&self) -> Vec<f64> {
        let mut values = self.eigenvalues.values.clone();
        unscale(&mut values, self.exponent);
        values
    }

    /// The eigenvectors of eigenvalues `indices` (positions in [`PartialEigen::eigenvalues`],
    /// distinct), as the columns of an n x k matrix in that order.
    pub(crate) fn eigenvectors(
        &self,
        indices: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<Mat<f64>> {
        self.eigenvectors_with(indices, &IterationLimits::DEFAULT, progress)
    }

    /// [`PartialEigen::eigenvectors`] under given iteration limits.
    pub(crate) fn eigenvectors_with(
        &self,
        indices: &[usize],
        limits: &IterationLimits,
        progress: &mut dyn Progress,
    ) -> Result<Mat<f64>> {
        let mut z = inverse_iteration::eigenvectors(&self.eigenvalues, indices, limits, progress)?;
        apply_q(&self.reduced, &mut z, progress);
        Ok(z)
    }
}

/// `a` with its lower triangle scaled by the power of two that brings its largest entry
/// nearest 1, and that power's exponent.
fn scaled_to_unit(mut a: Mat<f64>) -> (Mat<f64>, i32) {
    let n = a.nrows();
    let largest = (0..n)
        .flat_map(|j| a.col_as_slice(j)[j..].iter())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let exponent = if largest > 0.0 {
        -(largest.log2().round() as i32)
    } else {
        0
    };
    if exponent != 0 {
        for j in 0..n {
            for x in &mut a.col_as_slice_mut(j)[j..] {
                *x = times_power_of_two(*x, exponent);
            }
        }
    }
    (a, exponent)
}

/// Undoes [`scaled_to_unit`] on eigenvalues.
fn unscale(values: &mut [f64], exponent: i32) {
    if exponent != 0 {
        for v in values {
            *v = times_power_of_two(*v, -exponent);
        }
    }
}

/// `x 2^e`, exactly (barring underflow), for any |e| up to about 2100: in two factors,
/// since 2^e alone is not an f64 beyond |e| = 1023.
fn times_power_of_two(x: f64, e: i32) -> f64 {
    let half = e / 2;
    x * 2f64.powi(half) * 2f64.powi(e - half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::assert_eigendecomposition;
    use crate::progress::NoProgress;
    use rand::{Rng, SeedableRng};

    /// Symmetric matrices that stress the solvers: random; identity, zero, diagonal with
    /// repeated values, rank one; graded eigenvalues from 1 to 1e-16; an RBF kernel; entries
    /// near the ends of the f64 range; and duplicated neurons.
    fn hard_matrices() -> Vec<(String, Mat<f64>)> {
        let mut cases: Vec<(String, Mat<f64>)> = Vec::new();
        for n in [1usize, 2, 40, 97, 610] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64 + 11);
            let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
            cases.push((
                format!("random {n}"),
                Mat::from_fn(n, n, |i, j| b[(i, j)] + b[(j, i)]),
            ));
        }
        let n = 300;
        cases.push((
            "identity".into(),
            Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 }),
        ));
        cases.push(("zero".into(), Mat::zeros(n, n)));
        cases.push((
            "diagonal".into(),
            Mat::from_fn(n, n, |i, j| if i == j { (i % 7) as f64 } else { 0.0 }),
        ));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let u: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        cases.push(("rank one".into(), Mat::from_fn(n, n, |i, j| u[i] * u[j])));
        // Eigenvalues from 1 down to 1e-16: Q diag Q^T with a random orthogonal Q.
        let g = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
        let q = g.qr().compute_Q();
        let graded = Mat::from_fn(n, n, |i, j| {
            (0..n)
                .map(|t| q[(i, t)] * q[(j, t)] * 10f64.powf(-16.0 * t as f64 / n as f64))
                .sum()
        });
        cases.push(("graded".into(), graded));
        // The DPP benchmarks' kernel: exp(-0.6 |x_i - x_j|^2) + 1e-3 I, points in [0,1]^10.
        let n = 700;
        let x: Vec<f64> = (0..n * 10).map(|_| rng.random::<f64>()).collect();
        cases.push((
            "rbf".into(),
            Mat::from_fn(n, n, |i, j| {
                let d2: f64 = (0..10)
                    .map(|t| (x[i * 10 + t] - x[j * 10 + t]).powi(2))
                    .sum();
                (-0.6 * d2).exp() + if i == j { 1e-3 } else { 0.0 }
            }),
        ));
        // Entries near the ends of the f64 range, where unscaled reflector norms would
        // underflow or overflow.
        let n = 97;
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
        for (what, factor) in [("tiny", 1e-300), ("huge", 1e300)] {
            cases.push((
                what.into(),
                Mat::from_fn(n, n, |i, j| factor * (b[(i, j)] + b[(j, i)])),
            ));
        }
        // Duplicated neurons, the case diversity pruning exists for: 300 distinct points
        // each four times, no ridge, so rank 300 of 1200 and a 900-fold zero eigenvalue;
        // past PARALLEL_MIN and several panels, deflation at every merge.
        let n = 1200;
        let x: Vec<f64> = (0..300 * 10).map(|_| rng.random::<f64>()).collect();
        cases.push((
            "rbf with duplicates".into(),
            Mat::from_fn(n, n, |i, j| {
                let (i, j) = (i % 300, j % 300);
                let d2: f64 = (0..10)
                    .map(|t| (x[i * 10 + t] - x[j * 10 + t]).powi(2))
                    .sum();
                (-0.6 * d2).exp()
            }),
        ));
        cases
    }

    #[test]
    fn symmetric_eigen_matches_faer_with_orthonormal_vectors() {
        for (what, a) in hard_matrices() {
            let (values, z) = symmetric_eigen(a.clone(), &mut NoProgress).unwrap();
            assert_eigendecomposition(a.as_ref(), &values, &z, &what);
        }
    }

    /// The partial path's eigenvalues are the full path's, and its eigenvectors, all of
    /// them asked for in a shuffled order, are an eigendecomposition to the same
    /// standard (values against faer's, orthonormal to 1e-12 n, residual 1e-12 n ||A||).
    ///
    /// Both reductions: one stage, and two through bands of half-width 8 and
    /// [`BAND_WIDTH`] (several panels, and bands wider than the smallest matrices).
    #[test]
    fn partial_eigen_gives_every_eigenpair() {
        let widths = [None, Some(8), Some(BAND_WIDTH)];
        for ((what, a), width) in hard_matrices()
            .into_iter()
            .flat_map(|case| widths.map(|w| (case.clone(), w)))
        {
            let what = format!("{what}, band {width:?}");
            let n = a.nrows();
            let partial = PartialEigen::reduced_with(a.clone(), width, &mut NoProgress).unwrap();
            let values = partial.eigenvalues();
            let (full, _) = symmetric_eigen(a.clone(), &mut NoProgress).unwrap();
            let scale = full.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
            for (i, (p, f)) in values.iter().zip(&full).enumerate() {
                assert!(
                    (p - f).abs() <= 1e-12 * scale * (n as f64).sqrt(),
                    "{what}: eigenvalue {i}: {p} vs {f}"
                );
            }
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let z = partial.eigenvectors(&order, &mut NoProgress).unwrap();
            let mut sorted = Mat::<f64>::zeros(n, n);
            for (c, &i) in order.iter().enumerate() {
                sorted.col_mut(i).copy_from(z.col(c));
            }
            assert_eigendecomposition(a.as_ref(), &values, &sorted, &format!("{what} (partial)"));
        }
    }

    #[test]
    fn partial_eigen_rejects_bad_indices_and_reports_non_convergence() {
        let n = 80;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
        let a = Mat::from_fn(n, n, |i, j| b[(i, j)] + b[(j, i)]);
        let partial = PartialEigen::new(a, &mut NoProgress).unwrap();
        let msg = |r: Result<Mat<f64>>| r.unwrap_err().to_string();
        assert!(msg(partial.eigenvectors(&[3, 80], &mut NoProgress)).contains("out of range"));
        assert!(msg(partial.eigenvectors(&[3, 5, 3], &mut NoProgress)).contains("twice"));
        assert_eq!(
            partial.eigenvectors(&[], &mut NoProgress).unwrap().ncols(),
            0
        );
        // One step cannot be followed by the refining steps convergence requires.
        let limits = IterationLimits {
            inverse: 1,
            ..IterationLimits::DEFAULT
        };
        let err = msg(partial.eigenvectors_with(&[7], &limits, &mut NoProgress));
        assert!(
            err.starts_with(
                "numerical: inverse iteration for eigenvalue 7 did not converge in 1 steps"
            ),
            "{err}"
        );
    }
}
