//! Eigenvalues and eigenvectors of a symmetric tridiagonal matrix by divide and conquer
//! (Cuppen's method as in LAPACK's `dstedc`: deflation, the secular equation, and the
//! Gu-Eisenstat recomputation of z that keeps the eigenvectors orthogonal).
//!
//! `T` splits into two halves and a rank-one correction, `T = diag(T1, T2) + rho w w^T`;
//! the halves are solved recursively (small ones by faer's dense solver), and the merge
//! solves `D + rho z z^T` in O(K^2) for its K undeflated values, then multiplies the halves'
//! eigenvectors by the merge's, a matrix product.
//!
//! A root of a secular equation that does not converge within
//! [`IterationLimits::secular`] steps is an [`Error::Numerical`], not a silent best effort.
//! The halves run in parallel (rayon), each root on its own, and the products split their
//! output only: nothing here depends on the thread count.

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Side};

use super::{permute_columns, product_par, IterationLimits};
use crate::cpu::{contiguous, contiguous_mut};
use crate::error::{Error, Result};

/// Columns of a merge's product computed (and written back) at a time.
const MERGE_BLOCK: usize = 512;

/// Subproblems up to this size go to faer's dense solver.
const LEAF: usize = 48;

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetric tridiagonal matrix
/// with diagonal `diag` and subdiagonal `offdiag`.
pub(crate) fn tridiagonal_eigen(
    diag: &[f64],
    offdiag: &[f64],
    limits: &IterationLimits,
) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = diag.len();
    debug_assert_eq!(offdiag.len(), n.saturating_sub(1));
    if n == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    let mut z = Mat::<f64>::zeros(n, n);
    let values = solve(diag.to_vec(), offdiag, z.as_mut(), limits)?;
    // Merges leave the values sorted only within their own output; sort once at the end,
    // moving the columns along permutation cycles (no second n x n matrix).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let sorted = order.iter().map(|&i| values[i]).collect();
    permute_columns(&mut z, &order);
    Ok((sorted, z))
}

/// The dense symmetric tridiagonal matrix with diagonal `d` and subdiagonal `e`.
pub(crate) fn tridiagonal_matrix(d: &[f64], e: &[f64]) -> Mat<f64> {
    Mat::from_fn(d.len(), d.len(), |i, j| {
        if i == j {
            d[i]
        } else if i == j + 1 {
            e[j]
        } else if j == i + 1 {
            e[i]
        } else {
            0.0
        }
    })
}

/// The eigenvalues of the tridiagonal (d, e), in no particular order, with their
/// eigenvectors written to the columns of `out` (square, zero on entry).
fn solve(
    mut d: Vec<f64>,
    e: &[f64],
    mut out: MatMut<'_, f64>,
    limits: &IterationLimits,
) -> Result<Vec<f64>> {
    let n = d.len();
    if n <= LEAF {
        let evd = tridiagonal_matrix(&d, e)
            .self_adjoint_eigen(Side::Lower)
            .map_err(|err| Error::Numerical(format!("tridiagonal eigensolver: {err:?}")))?;
        out.copy_from(evd.U());
        return Ok((0..n).map(|i| evd.S()[i]).collect());
    }
    let m = n / 2;
    let beta = e[m - 1];
    let rho = beta.abs();
    let sign = if beta < 0.0 { -1.0 } else { 1.0 };
    d[m - 1] -= rho;
    d[m] -= rho;
    let right = d.split_off(m);
    let (top_left, _, _, bottom_right) = out.rb_mut().split_at_mut(m, m);
    let (top, bottom) = rayon::join(
        || solve(d, &e[..m - 1], top_left, limits),
        || solve(right, &e[m..], bottom_right, limits),
    );
    merge(top?, bottom?, out, rho, sign, limits)
}

/// Where a column of the merged Q has non-zeros: the top half's rows, the bottom's, or both
/// (after a deflating rotation mixed one of each).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Top,
    Bottom,
    Both,
}

/// Merges the halves' solutions held in the diagonal blocks of `q` (its off-diagonal
/// blocks zero) into the eigenvectors of the whole, in place: `D + rho z z^T` with D the
/// halves' eigenvalues and z from their eigenvectors' rows at the seam, deflated
/// ([`deflate`]), its secular equation solved ([`secular_roots`]), z recomputed from the
/// roots ([`gu_eisenstat_z`]), and the kept columns of Q multiplied by the merge's
/// eigenvectors ([`update_eigenvectors`]).
fn merge(
    d1: Vec<f64>,
    d2: Vec<f64>,
    mut q: MatMut<'_, f64>,
    rho: f64,
    sign: f64,
    limits: &IterationLimits,
) -> Result<Vec<f64>> {
    let (m, n) = (d1.len(), d1.len() + d2.len());
    // Q = diag(Q1, Q2), z = Q^T w with w = e_{m-1} + sign e_m, normalised (|z| = sqrt 2).
    let mut rows: Vec<Rows> = (0..n)
        .map(|j| if j < m { Rows::Top } else { Rows::Bottom })
        .collect();
    let mut d: Vec<f64> = d1.iter().chain(&d2).copied().collect();
    let inv_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
    let mut z: Vec<f64> = (0..m)
        .map(|j| q[(m - 1, j)] * inv_sqrt2)
        .chain((m..n).map(|j| sign * q[(m, j)] * inv_sqrt2))
        .collect();
    let rho = 2.0 * rho;
    let kept = deflate(&mut d, &mut z, &mut rows, q.rb_mut(), rho);
    let mut values = d;
    if kept.is_empty() {
        return Ok(values);
    }
    let dk: Vec<f64> = kept.iter().map(|&j| values[j]).collect();
    let zk: Vec<f64> = kept.iter().map(|&j| z[j]).collect();
    let roots = secular_roots(&dk, &zk, rho, limits)?;
    let zhat = gu_eisenstat_z(&dk, &zk, &roots, rho);
    for (i, root) in roots.iter().enumerate() {
        values[kept[i]] = root.value(&dk);
    }
    update_eigenvectors(q, m, &kept, &rows, &dk, &zhat, &roots);
    Ok(values)
}

/// Deflation (`dlaed2`), in ascending order of d: a value whose z is negligible is an
/// eigenvalue already, and of two values closer than the tolerance a rotation of their
/// columns of `q` moves all of z's weight onto one, the other deflating. Returns the kept
/// (undeflated) positions, sorted by their value in d.
fn deflate(
    d: &mut [f64],
    z: &mut [f64],
    rows: &mut [Rows],
    mut q: MatMut<'_, f64>,
    rho: f64,
) -> Vec<usize> {
    let n = d.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let dmax = d.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let zmax = z.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let tol = 8.0 * f64::EPSILON * dmax.max(rho * zmax);
    let mut kept: Vec<usize> = Vec::with_capacity(n);
    let mut candidate: Option<usize> = None;
    for &j in &order {
        if rho * z[j].abs() <= tol {
            continue;
        }
        let Some(p) = candidate else {
            candidate = Some(j);
            continue;
        };
        // Two close values: a rotation moves all of z's weight onto j; p deflates.
        let tau = z[p].hypot(z[j]);
        let (c, s) = (z[j] / tau, -z[p] / tau);
        if ((d[j] - d[p]) * c * s).abs() <= tol {
            z[j] = tau;
            z[p] = 0.0;
            let (qp, qj) = q.rb_mut().two_cols_mut(p, j);
            for (x, y) in contiguous_mut(qp).iter_mut().zip(contiguous_mut(qj)) {
                (*x, *y) = (c * *x + s * *y, c * *y - s * *x);
            }
            if rows[p] != rows[j] {
                rows[p] = Rows::Both;
                rows[j] = Rows::Both;
            }
            let (dp, dj) = (d[p], d[j]);
            d[p] = dp * c * c + dj * s * s;
            d[j] = dp * s * s + dj * c * c;
            candidate = Some(j);
        } else {
            kept.push(p);
            candidate = Some(j);
        }
    }
    if let Some(p) = candidate {
        kept.push(p);
    }
    // A rotation can reorder d among the kept: the secular equation needs them ascending.
    kept.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    kept
}

/// Gu and Eisenstat's z: the one for which the computed roots are the exact eigenvalues of
/// `D + rho z z^T`, which keeps the eigenvectors built from it orthogonal.
fn gu_eisenstat_z(dk: &[f64], zk: &[f64], roots: &[Root], rho: f64) -> Vec<f64> {
    let k = dk.len();
    let mut zhat: Vec<f64> = (0..k).map(|j| (-roots[j].delta(dk, j)) / rho).collect();
    for (i, root) in roots.iter().enumerate() {
        for j in 0..k {
            if j != i {
                zhat[j] *= -root.delta(dk, j) / (dk[i] - dk[j]);
            }
        }
    }
    zhat.iter()
        .zip(zk)
        .map(|(&z2, &z)| z2.abs().sqrt().copysign(z))
        .collect()
}

/// Replaces the kept columns of `q` by their products with the merge's eigenvectors
/// `u_i = (zhat_j / (d_j - lambda_i))_j / norm`, over the rows each column can be non-zero
/// in (the deflated columns are eigenvectors already).
///
/// U is not stored: it is k x k, at the top merge as large as the eigenvector matrix
/// itself, so each block of [`MERGE_BLOCK`] columns of the products rebuilds the rows it
/// needs, and is written back at once.
fn update_eigenvectors(
    mut q: MatMut<'_, f64>,
    m: usize,
    kept: &[usize],
    rows: &[Rows],
    dk: &[f64],
    zhat: &[f64],
    roots: &[Root],
) {
    use rayon::prelude::*;
    let (n, k) = (q.nrows(), kept.len());
    let norms: Vec<f64> = roots
        .par_iter()
        .map(|root| {
            (0..k)
                .map(|j| {
                    let x = zhat[j] / root.delta(dk, j);
                    x * x
                })
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let u_rows = |rows: &[usize], first: usize, width: usize| -> Vec<f64> {
        let mut block = vec![0.0; rows.len() * width];
        block
            .par_chunks_mut(rows.len().max(1))
            .zip(&roots[first..first + width])
            .zip(&norms[first..first + width])
            .for_each(|((col, root), norm)| {
                for (x, &j) in col.iter_mut().zip(rows) {
                    *x = zhat[j] / root.delta(dk, j) / norm;
                }
            });
        block
    };
    for (half, start, len) in [(Rows::Top, 0, m), (Rows::Bottom, m, n - m)] {
        let cols: Vec<usize> = (0..k)
            .filter(|&t| rows[kept[t]] == half || rows[kept[t]] == Rows::Both)
            .collect();
        if cols.is_empty() {
            // No kept column has rows in this half: their products are zero there, as
            // the columns already are.
            continue;
        }
        // The half's kept columns as they are now: the products overwrite them.
        let mut qs = Mat::<f64>::zeros(len, cols.len());
        for (c, &t) in cols.iter().enumerate() {
            qs.col_as_slice_mut(c)
                .copy_from_slice(&contiguous(q.rb().col(kept[t]))[start..start + len]);
        }
        let mut prod = Mat::<f64>::zeros(len, MERGE_BLOCK.min(k));
        for first in (0..k).step_by(MERGE_BLOCK) {
            let width = MERGE_BLOCK.min(k - first);
            let us = u_rows(&cols, first, width);
            let us = MatRef::from_column_major_slice(&us, cols.len(), width);
            let mut block = prod.as_mut().get_mut(.., ..width);
            matmul(
                block.rb_mut(),
                Accum::Replace,
                &qs,
                us,
                1.0,
                product_par(width),
            );
            for i in 0..width {
                contiguous_mut(q.rb_mut().col_mut(kept[first + i]))[start..start + len]
                    .copy_from_slice(contiguous(block.rb().col(i)));
            }
        }
    }
}

/// A root of the secular equation as `d[origin] + tau`, so that its distances to the
/// poles, `d_j - lambda = (d_j - d[origin]) - tau`, keep full relative accuracy.
struct Root {
    origin: usize,
    tau: f64,
}

impl Root {
    fn value(&self, d: &[f64]) -> f64 {
        d[self.origin] + self.tau
    }

    /// `d_j - lambda`.
    fn delta(&self, d: &[f64], j: usize) -> f64 {
        (d[j] - d[self.origin]) - self.tau
    }
}

/// The k roots of `1 + rho sum_j z_j^2 / (d_j - lambda) = 0` for ascending, distinct d and
/// rho > 0: root i lies in (d_i, d_{i+1}), the last in (d_{k-1}, d_{k-1} + rho |z|^2).
fn secular_roots(d: &[f64], z: &[f64], rho: f64, limits: &IterationLimits) -> Result<Vec<Root>> {
    let k = d.len();
    let znorm2: f64 = z.iter().map(|x| x * x).sum();
    use rayon::prelude::*;
    (0..k)
        .into_par_iter()
        .map(|i| {
            // The origin is the pole nearer the root, found from the sign of f at the middle.
            let (origin, lo, hi) = if i + 1 < k {
                let gap = d[i + 1] - d[i];
                let mid = 0.5 * gap;
                let f_mid = 1.0
                    + rho
                        * (0..k)
                            .map(|j| z[j] * z[j] / ((d[j] - d[i]) - mid))
                            .sum::<f64>();
                if f_mid >= 0.0 {
                    (i, 0.0, mid)
                } else {
                    (i + 1, -mid, 0.0)
                }
            } else {
                (i, 0.0, rho * znorm2)
            };
            let shift: Vec<f64> = d.iter().map(|&dj| dj - d[origin]).collect();
            let lower_pole = (i + 1 < k).then_some(i);
            let tau = solve_shifted(&shift, z, rho, origin, lower_pole, (lo, hi), limits.secular)
                .ok_or_else(|| {
                Error::Numerical(format!(
                    "divide and conquer: root {i} of a secular equation of order {k} did not \
                         converge in {} steps",
                    limits.secular
                ))
            })?;
            Ok(Root { origin, tau })
        })
        .collect()
}

/// The root in (lo, hi) of `g(tau) = 1 + rho sum_j z_j^2 / (shift_j - tau)` (increasing
/// there), by steps kept inside a shrinking bracket, bisecting when a step leaves it:
/// dlaed4's two-pole "middle way" step for a root between poles `lower_pole` and the next,
/// Newton's for the last root, which has no pole above it. `None` when `max_steps` steps
/// end without convergence.
fn solve_shifted(
    shift: &[f64],
    z: &[f64],
    rho: f64,
    origin: usize,
    lower_pole: Option<usize>,
    (lo, hi): (f64, f64),
    max_steps: usize,
) -> Option<f64> {
    let (mut lo, mut hi) = (lo, hi);
    // Start where the nearest pole's term alone would put the root.
    let zo2 = z[origin] * z[origin];
    let mut tau = if hi > 0.0 {
        (rho * zo2).min(0.5 * hi)
    } else {
        (-rho * zo2).max(0.5 * lo)
    };
    if !(tau > lo && tau < hi) {
        tau = 0.5 * (lo + hi);
    }

    for _ in 0..max_steps {
        // shift[origin] is exactly 0, so its distance is exactly -tau.
        let mut next;
        if let Some(i) = lower_pole {
            // LAPACK dlaed4's "middle way": a model with the two poles around the root
            // (psi over poles 0..=i, phi over the rest) that matches f = g / rho and its
            // derivative at tau; converges in a few steps where Newton takes ten.
            let (psi, dpsi) = secular_terms(&shift[..=i], &z[..=i], tau);
            let (phi, dphi) = secular_terms(&shift[i + 1..], &z[i + 1..], tau);
            let f = 1.0 / rho + psi + phi;
            // f is zero within the rounding of its own sum: tau is as good as it gets.
            if f.abs() <= 8.0 * f64::EPSILON * (1.0 / rho + phi - psi) {
                return Some(tau);
            }
            if f < 0.0 {
                lo = tau;
            } else {
                hi = tau;
            }
            let (di, dj) = (shift[i] - tau, shift[i + 1] - tau);
            let c = (f - di * dpsi - dj * dphi).abs();
            let a = (di + dj) * f - di * dj * (dpsi + dphi);
            let b = di * dj * f;
            let eta = if c == 0.0 {
                b / a
            } else if a <= 0.0 {
                (a - (a * a - 4.0 * b * c).abs().sqrt()) / (2.0 * c)
            } else {
                2.0 * b / (a + (a * a - 4.0 * b * c).abs().sqrt())
            };
            next = tau + eta;
        } else {
            let (sum, sum_sq) = secular_terms(shift, z, tau);
            let (g, dg) = (1.0 + rho * sum, rho * sum_sq);
            if g == 0.0 {
                return Some(tau);
            }
            if g < 0.0 {
                lo = tau;
            } else {
                hi = tau;
            }
            next = tau - g / dg;
        }
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - tau).abs() <= 2.0 * f64::EPSILON * tau.abs().max(f64::MIN_POSITIVE)
            || hi - lo <= 2.0 * f64::EPSILON * tau.abs()
        {
            return Some(next);
        }
        tau = next;
    }
    None
}

/// `sum_j z_j^2 / (shift_j - tau)` and `sum_j z_j^2 / (shift_j - tau)^2`, in four lanes so
/// that the divisions run on vectors.
fn secular_terms(shift: &[f64], z: &[f64], tau: f64) -> (f64, f64) {
    let mut a = [0.0f64; 4];
    let mut b = [0.0f64; 4];
    let mut cs = shift.chunks_exact(4);
    let mut cz = z.chunks_exact(4);
    for (s, zz) in (&mut cs).zip(&mut cz) {
        for l in 0..4 {
            let t = zz[l] / (s[l] - tau);
            a[l] += zz[l] * t;
            b[l] += t * t;
        }
    }
    let (mut sa, mut sb) = ((a[0] + a[1]) + (a[2] + a[3]), (b[0] + b[1]) + (b[2] + b[3]));
    for (&s, &zj) in cs.remainder().iter().zip(cz.remainder()) {
        let t = zj / (s - tau);
        sa += zj * t;
        sb += t * t;
    }
    (sa, sb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::assert_eigendecomposition;
    use rand::{Rng, SeedableRng};

    fn check(d: &[f64], e: &[f64], what: &str) {
        let (values, z) = tridiagonal_eigen(d, e, &IterationLimits::DEFAULT).unwrap();
        assert_eigendecomposition(tridiagonal_matrix(d, e).as_ref(), &values, &z, what);
    }

    #[test]
    fn matches_dense_solver_on_random_and_clustered_tridiagonals() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for n in [1usize, 2, 5, 48, 49, 97, 300, 513] {
            let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let e: Vec<f64> = (0..n.saturating_sub(1))
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            check(&d, &e, &format!("random n={n}"));
            // Heavy deflation: tiny couplings and repeated diagonal values.
            let d: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
            let e: Vec<f64> = (0..n.saturating_sub(1))
                .map(|i| if i % 5 == 0 { 1e-18 } else { 0.5 })
                .collect();
            check(&d, &e, &format!("clustered n={n}"));
            // Wilkinson-like: close pairs of eigenvalues.
            let half = (n / 2) as f64;
            let d: Vec<f64> = (0..n).map(|i| (i as f64 - half).abs()).collect();
            let e = vec![1.0; n.saturating_sub(1)];
            check(&d, &e, &format!("wilkinson n={n}"));
        }
    }

    /// A secular equation cut off before its roots converge is an error that says so,
    /// not a silent best effort.
    #[test]
    fn unconverged_secular_equation_is_an_error() {
        let n = 200;
        let d: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
        let e: Vec<f64> = (0..n - 1)
            .map(|i| 0.3 + (i as f64 * 1.3).cos().abs())
            .collect();
        let limits = IterationLimits {
            secular: 1,
            ..IterationLimits::DEFAULT
        };
        let err = tridiagonal_eigen(&d, &e, &limits).unwrap_err().to_string();
        assert!(
            err.starts_with("numerical: divide and conquer: root")
                && err.contains("did not converge in 1 steps"),
            "{err}"
        );
        assert!(tridiagonal_eigen(&d, &e, &IterationLimits::DEFAULT).is_ok());
    }
}
