//! Eigenvalues and eigenvectors of a symmetric tridiagonal matrix by divide and conquer
//! (Cuppen's method as in LAPACK's `dstedc`: deflation, the secular equation, and the
//! Gu-Eisenstat recomputation of z that keeps the eigenvectors orthogonal).
//!
//! `T` splits into two halves and a rank-one correction, `T = diag(T1, T2) + rho w w^T`;
//! the halves are solved recursively (small ones by faer's dense solver), and the merge
//! solves `D + rho z z^T` in O(K^2) for its K undeflated values, then multiplies the halves'
//! eigenvectors by the merge's, a matrix product.

// Not wired into Spectrum::new yet: only the tests call it.
#![allow(dead_code)]

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Side};

use crate::error::{Error, Result};

/// Subproblems up to this size go to faer's dense solver.
const LEAF: usize = 48;

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetric tridiagonal matrix
/// with diagonal `diag` and subdiagonal `offdiag`.
pub(crate) fn tridiagonal_eigen(diag: &[f64], offdiag: &[f64]) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = diag.len();
    debug_assert_eq!(offdiag.len(), n.saturating_sub(1));
    if n == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    let (values, vectors) = solve(diag.to_vec(), offdiag)?;
    // Merges leave the values sorted only within their own output; sort once at the end.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let sorted = order.iter().map(|&i| values[i]).collect();
    let mut z = Mat::<f64>::zeros(n, n);
    for (j, &src) in order.iter().enumerate() {
        z.col_as_slice_mut(j)
            .copy_from_slice(vectors.col_as_slice(src));
    }
    Ok((sorted, z))
}

fn solve(mut d: Vec<f64>, e: &[f64]) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = d.len();
    if n <= LEAF {
        let t = Mat::<f64>::from_fn(n, n, |i, j| {
            if i == j {
                d[i]
            } else if i == j + 1 {
                e[j]
            } else if j == i + 1 {
                e[i]
            } else {
                0.0
            }
        });
        let evd = t
            .self_adjoint_eigen(Side::Lower)
            .map_err(|err| Error::Numerical(format!("tridiagonal eigensolver: {err:?}")))?;
        let values = (0..n).map(|i| evd.S()[i]).collect();
        return Ok((values, evd.U().to_owned()));
    }
    let m = n / 2;
    let beta = e[m - 1];
    let rho = beta.abs();
    let sign = if beta < 0.0 { -1.0 } else { 1.0 };
    d[m - 1] -= rho;
    d[m] -= rho;
    let right = d.split_off(m);
    let (top, bottom) = rayon::join(|| solve(d, &e[..m - 1]), || solve(right, &e[m..]));
    let ((d1, q1), (d2, q2)) = (top?, bottom?);
    merge(d1, q1, d2, q2, rho, sign)
}

/// Where a column of the merged Q has non-zeros: the top half's rows, the bottom's, or both
/// (after a deflating rotation mixed one of each).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Top,
    Bottom,
    Both,
}

fn merge(
    d1: Vec<f64>,
    q1: Mat<f64>,
    d2: Vec<f64>,
    q2: Mat<f64>,
    rho: f64,
    sign: f64,
) -> Result<(Vec<f64>, Mat<f64>)> {
    let (m, n) = (d1.len(), d1.len() + d2.len());
    // Q = diag(Q1, Q2), z = Q^T w with w = e_{m-1} + sign e_m, normalised (|z| = sqrt 2).
    let mut q = Mat::<f64>::zeros(n, n);
    q.as_mut().get_mut(..m, ..m).copy_from(&q1);
    q.as_mut().get_mut(m.., m..).copy_from(&q2);
    let mut rows: Vec<Rows> = (0..n)
        .map(|j| if j < m { Rows::Top } else { Rows::Bottom })
        .collect();
    let mut d: Vec<f64> = d1.iter().chain(&d2).copied().collect();
    let inv_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
    let mut z: Vec<f64> = (0..m)
        .map(|j| q1[(m - 1, j)] * inv_sqrt2)
        .chain((0..n - m).map(|j| sign * q2[(0, j)] * inv_sqrt2))
        .collect();
    drop((q1, q2));
    let rho = 2.0 * rho;

    // Deflation, in ascending order of d.
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
            for r in 0..n {
                let (x, y) = (q[(r, p)], q[(r, j)]);
                q[(r, p)] = c * x + s * y;
                q[(r, j)] = c * y - s * x;
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
    let k = kept.len();
    let mut values = d;
    if k == 0 {
        return Ok((values, q));
    }
    let dk: Vec<f64> = kept.iter().map(|&j| values[j]).collect();
    let zk: Vec<f64> = kept.iter().map(|&j| z[j]).collect();
    let roots = secular_roots(&dk, &zk, rho);

    // Gu-Eisenstat: the z for which the computed roots are exact, then the eigenvectors
    // of D + rho z z^T, u_i = (z_j / (d_j - lambda_i))_j normalised.
    let mut zhat: Vec<f64> = (0..k).map(|j| (-roots[j].delta(&dk, j)) / rho).collect();
    for (i, root) in roots.iter().enumerate() {
        for j in 0..k {
            if j != i {
                zhat[j] *= -root.delta(&dk, j) / (dk[i] - dk[j]);
            }
        }
    }
    let zhat: Vec<f64> = zhat
        .iter()
        .zip(&zk)
        .map(|(&z2, &z)| z2.abs().sqrt().copysign(z))
        .collect();
    let mut u = Mat::<f64>::zeros(k, k);
    for (i, root) in roots.iter().enumerate() {
        let col = u.col_as_slice_mut(i);
        for j in 0..k {
            col[j] = zhat[j] / root.delta(&dk, j);
        }
        let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
        for x in col.iter_mut() {
            *x /= norm;
        }
        values[kept[i]] = root.value(&dk);
    }

    // The kept columns of Q times U, over the rows each column can be non-zero in; the
    // products replace those columns of Q (the deflated ones are eigenvectors already).
    let par = faer::get_global_parallelism();
    let mut halves = Vec::with_capacity(2);
    for (half, start, len) in [(Rows::Top, 0, m), (Rows::Bottom, m, n - m)] {
        let cols: Vec<usize> = (0..k)
            .filter(|&t| rows[kept[t]] == half || rows[kept[t]] == Rows::Both)
            .collect();
        let mut prod = Mat::<f64>::zeros(len, k);
        if !cols.is_empty() {
            let mut qs = Mat::<f64>::zeros(len, cols.len());
            for (c, &t) in cols.iter().enumerate() {
                qs.col_as_slice_mut(c)
                    .copy_from_slice(&q.col_as_slice(kept[t])[start..start + len]);
            }
            let us = Mat::<f64>::from_fn(cols.len(), k, |c, i| u[(cols[c], i)]);
            matmul(&mut prod, Accum::Replace, &qs, &us, 1.0, par);
        }
        halves.push((start, len, prod));
    }
    for (start, len, prod) in halves {
        for (i, &col) in kept.iter().enumerate() {
            q.col_as_slice_mut(col)[start..start + len].copy_from_slice(prod.col_as_slice(i));
        }
    }
    let out = q;
    Ok((values, out))
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
fn secular_roots(d: &[f64], z: &[f64], rho: f64) -> Vec<Root> {
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
            let tau = solve_shifted(&shift, z, rho, origin, lo, hi);
            Root { origin, tau }
        })
        .collect()
}

/// The root in (lo, hi) of `g(tau) = 1 + rho sum_j z_j^2 / (shift_j - tau)` (increasing
/// there), by Newton steps kept inside a shrinking bracket, bisecting when a step leaves it.
fn solve_shifted(shift: &[f64], z: &[f64], rho: f64, origin: usize, lo: f64, hi: f64) -> f64 {
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
    for _ in 0..200 {
        // shift[origin] is exactly 0, so its distance is exactly -tau.
        let (sum, sum_sq) = secular_terms(shift, z, tau);
        let (g, dg) = (1.0 + rho * sum, rho * sum_sq);
        if g == 0.0 {
            break;
        }
        if g < 0.0 {
            lo = tau;
        } else {
            hi = tau;
        }
        let mut next = tau - g / dg;
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - tau).abs() <= 2.0 * f64::EPSILON * tau.abs().max(f64::MIN_POSITIVE)
            || hi - lo <= 2.0 * f64::EPSILON * tau.abs()
        {
            tau = next;
            break;
        }
        tau = next;
    }
    tau
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
    use rand::{Rng, SeedableRng};

    fn check(d: &[f64], e: &[f64], what: &str) {
        let n = d.len();
        let (values, z) = tridiagonal_eigen(d, e).unwrap();
        let t = Mat::<f64>::from_fn(n, n, |i, j| {
            if i == j {
                d[i]
            } else if i == j + 1 {
                e[j]
            } else if j == i + 1 {
                e[i]
            } else {
                0.0
            }
        });
        let reference = t.self_adjoint_eigen(Side::Lower).unwrap();
        let scale = values.iter().fold(1e-300f64, |a, v| a.max(v.abs()));
        for i in 0..n {
            assert!(
                (values[i] - reference.S()[i]).abs() <= 1e-12 * scale * (n as f64).sqrt(),
                "{what}: eigenvalue {i}: {} vs {}",
                values[i],
                reference.S()[i]
            );
        }
        // Orthogonality and residual.
        let ztz = z.transpose() * &z;
        let tz = &t * &z;
        let (mut orth, mut resid) = (0.0f64, 0.0f64);
        for j in 0..n {
            for i in 0..n {
                let id = if i == j { 1.0 } else { 0.0 };
                orth = orth.max((ztz[(i, j)] - id).abs());
                resid = resid.max((tz[(i, j)] - values[j] * z[(i, j)]).abs());
            }
        }
        assert!(orth <= 1e-12 * n as f64, "{what}: orthogonality {orth:e}");
        assert!(
            resid <= 1e-12 * scale * n as f64,
            "{what}: residual {resid:e}"
        );
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
}
