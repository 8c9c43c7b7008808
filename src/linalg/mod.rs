//! Dense symmetric eigensolvers on the host (f64), the general linear algebra under the
//! DPP code: LAPACK's `dsyevd` algorithm for the whole spectrum, and a partial path that
//! computes all eigenvalues but only chosen eigenvectors.
//!
//! One file per phase:
//! - [`reduction`]: blocked Householder reduction to tridiagonal form, `A = Q T Q^T`
//!   (`dsytrd`), about 4/3 n^3 flops, on a [`team`] of spinning threads;
//! - [`band`] and [`bulge`]: the same reduction in two stages, to a band of half-width b
//!   by matrix products (4/3 n^3 flops), then to tridiagonal form by bulge chasing
//!   (6 n^2 b);
//! - [`divide_conquer`]: all eigenpairs of T (`dstedc`);
//! - [`eigenvalues`]: all eigenvalues of T alone, O(n^2) (`dsterf`);
//! - [`inverse_iteration`]: eigenvectors of T for chosen eigenvalues (`dstein`, with
//!   clusters computed whole);
//! - [`back_transform`]: eigenvectors of T to those of A, 2 n^2 per vector (`dormtr`),
//!   4 n^2 after the two-stage reduction;
//! - [`simd`]: the vector kernels of the inner loops; [`team`]: the thread team and the
//!   process-wide budget that sizes it;
//! - [`eigh`]: the two drivers, [`eigh::symmetric_eigen`] (reduction, divide and conquer,
//!   back-transformation: about 9 n^3 flops and three n x n matrices) and
//!   [`eigh::PartialEigen`] (reduction and eigenvalues once, then any k eigenvectors on
//!   demand: 4/3 n^3 + 2 n^2 k + 2 n k^2 flops, 4 n^2 k after two stages; one n x n
//!   matrix plus n x k).
//!
//! Flops understate the one-stage reduction: half of it is a matrix-vector product per
//! column, bound by memory, so it takes most of the time of either driver (at n = 4000 on
//! one thread, 9.0 s of the partial path's 10.6 s and 10.5 s of the full one's 15.2 s).
//! The partial path therefore reduces large matrices (from
//! [`eigh::TWO_STAGE_MIN_N`]) in two stages, which run at the speed of the arithmetic and
//! pay for it with a second back-transformation: at n = 8192 with 2048 vectors on two
//! cores, 21 s instead of about 32. The full path keeps one stage: it serves small
//! matrices, where the one-stage reduction is as fast, and it would pay the second
//! back-transformation on all n vectors.
//!
//! # Determinism
//!
//! Every parallel sum is split into parts fixed by the problem's size, never by the
//! thread count, and faer's matrix products split their output only (checked: a product
//! gives the same bits on any number of threads, except a matrix-vector product, which
//! [`product_par`] keeps on one thread). So a decomposition gives the same bits whatever
//! the thread count and whatever share of the thread budget other solves hold. It does
//! depend on the CPU: the vector kernels have AVX-512, AVX2 and portable builds that round
//! differently (see [`simd`]), as do faer's.

pub(crate) mod back_transform;
pub(crate) mod band;
pub(crate) mod bulge;
pub(crate) mod divide_conquer;
pub(crate) mod eigenvalues;
pub(crate) mod eigh;
pub(crate) mod inverse_iteration;
pub(crate) mod reduction;
pub(crate) mod simd;
pub(crate) mod team;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::reborrow::Reborrow;
use faer::{Mat, MatMut, Par};

use crate::cpu::{contiguous, contiguous_mut};

/// Caps on the solvers' iterations; reaching one is an [`crate::Error::Numerical`], never a
/// silent best effort. Tests lower them to reach those errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IterationLimits {
    /// Steps per root of a secular equation (divide and conquer); a few usually suffice.
    pub(crate) secular: usize,
    /// QL/QR sweeps per eigenvalue on average (`dsterf`'s 30); two or three usually.
    pub(crate) ql_sweeps: usize,
    /// Inverse-iteration steps per eigenvector or cluster, the refining steps after
    /// convergence included (three usually).
    pub(crate) inverse: usize,
}

impl IterationLimits {
    /// The limits the solvers run with.
    pub(crate) const DEFAULT: IterationLimits = IterationLimits {
        secular: 200,
        ql_sweeps: 30,
        inverse: 10,
    };
}

/// Factors the symmetric matrix whose lower triangle is `a`'s as `L L^T`, writing L over
/// that lower triangle (the strict upper triangle is left as it was), so that no second
/// copy of a large system exists; false when it is not positive definite to working
/// precision (a pivot is not positive), `a` then partly overwritten.
pub(crate) fn cholesky_lower_in_place(a: MatMut<'_, f64>, par: Par) -> bool {
    let mut scratch = MemBuffer::new(cholesky_in_place_scratch::<f64>(
        a.nrows(),
        par,
        Default::default(),
    ));
    cholesky_in_place(
        a,
        Default::default(),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    )
    .is_ok()
}

/// The parallelism for a matrix product whose output has `columns` columns: faer's global
/// parallelism, except for one column, where faer's matrix-vector kernel would split the
/// sum itself and make the result depend on the thread count.
pub(crate) fn product_par(columns: usize) -> Par {
    if columns <= 1 {
        Par::Seq
    } else {
        faer::get_global_parallelism()
    }
}

/// Puts column `order[j]` of `z` in column j, in place, moving the columns along the
/// permutation's cycles (one column of workspace, no second matrix).
pub(crate) fn permute_columns(z: &mut Mat<f64>, order: &[usize]) {
    let mut done = vec![false; order.len()];
    let mut held = vec![0.0; z.nrows()];
    for start in 0..order.len() {
        if done[start] || order[start] == start {
            continue;
        }
        // The cycle start <- order[start] <- order[order[start]] ... back to start.
        held.copy_from_slice(z.col_as_slice(start));
        let mut j = start;
        loop {
            done[j] = true;
            let src = order[j];
            if src == start {
                z.col_as_slice_mut(j).copy_from_slice(&held);
                break;
            }
            let (dst, from) = z.two_cols_mut(j, src);
            contiguous_mut(dst).copy_from_slice(contiguous(from.rb()));
            j = src;
        }
    }
}

/// Checks that eigenvalue `indices` are distinct and below `n`: an
/// [`crate::Error::InvalidInput`] that names the offending index otherwise.
pub(crate) fn check_indices(indices: &[usize], n: usize) -> crate::error::Result<()> {
    let mut seen = vec![false; n];
    for &i in indices {
        if i >= n {
            return Err(crate::Error::invalid(format!(
                "eigenvalue index {i} out of range: the matrix has {n}"
            )));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(crate::Error::invalid(format!(
                "eigenvalue index {i} asked for twice"
            )));
        }
    }
    Ok(())
}

/// Checks `values`, `z` as the eigendecomposition of the symmetric `a`: the values against
/// faer's solver, `z` orthonormal, `a z = z diag(values)`, all to 1e-12 relative.
#[cfg(test)]
pub(crate) fn assert_eigendecomposition(
    a: faer::MatRef<'_, f64>,
    values: &[f64],
    z: &faer::Mat<f64>,
    what: &str,
) {
    let n = a.nrows();
    let reference = a.self_adjoint_eigen(faer::Side::Lower).unwrap();
    let scale = values.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
    for (i, value) in values.iter().enumerate() {
        assert!(
            (value - reference.S()[i]).abs() <= 1e-12 * scale * (n as f64).sqrt(),
            "{what}: eigenvalue {i}: {value} vs {}",
            reference.S()[i]
        );
    }
    let ztz = z.transpose() * z;
    let az = a * z;
    let (mut orth, mut resid) = (0.0f64, 0.0f64);
    for j in 0..n {
        for i in 0..n {
            let id = if i == j { 1.0 } else { 0.0 };
            orth = orth.max((ztz[(i, j)] - id).abs());
            resid = resid.max((az[(i, j)] - values[j] * z[(i, j)]).abs());
        }
    }
    assert!(orth <= 1e-12 * n as f64, "{what}: orthogonality {orth:e}");
    assert!(
        resid <= 1e-12 * scale * n as f64,
        "{what}: residual {resid:e}"
    );
}

/// A random symmetric n x n matrix (entries in (-2, 2)) from `seed`.
#[cfg(test)]
pub(crate) fn random_symmetric(n: usize, seed: u64) -> Mat<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
    Mat::from_fn(n, n, |i, j| b[(i, j)] + b[(j, i)])
}

/// Asserts that two reductions of the same matrix gave the same bits: T, the taus and the
/// whole reflector storage.
#[cfg(test)]
pub(crate) fn assert_same_reduction(
    t: &reduction::Tridiagonal,
    reference: &reduction::Tridiagonal,
    what: &str,
) {
    let same = |x: &[f64], y: &[f64]| {
        x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
    };
    assert!(same(&t.diag, &reference.diag), "{what}: diagonal");
    assert!(same(&t.offdiag, &reference.offdiag), "{what}: subdiagonal");
    assert!(same(&t.taus, &reference.taus), "{what}: taus");
    assert_eq!(t.stages, reference.stages, "{what}: stages");
    for j in 0..t.reflectors.ncols() {
        assert!(
            same(
                t.reflectors.col_as_slice(j),
                reference.reflectors.col_as_slice(j)
            ),
            "{what}: reflector storage, column {j}"
        );
    }
}
