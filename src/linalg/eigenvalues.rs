//! Eigenvalues alone of a symmetric tridiagonal matrix, in O(n^2): LAPACK's `dsterf`, the
//! Pal-Walker-Kahan square-root-free variant of implicit QL and QR with Wilkinson shifts.
//!
//! The matrix is first split where an off-diagonal entry is negligible
//! (`|e_i| <= eps sqrt(|d_i| |d_{i+1}|)`, the test `dsterf` and `dstebz` use), and each
//! unreduced block is solved on its own: inverse iteration (`inverse_iteration.rs`) computes
//! an eigenvector on the block its eigenvalue belongs to, so the blocks are kept.
//!
//! `dsterf` does not need the eigenvectors' rotations, only `e_i^2`, so each step costs
//! a few flops per row and the whole spectrum about 30 n^2 (two or three sweeps per
//! eigenvalue). More than [`IterationLimits::ql_sweeps`] sweeps per eigenvalue on average is
//! an [`Error::Numerical`].

use std::ops::Range;

use rayon::prelude::*;

use super::IterationLimits;
use crate::error::{Error, Result};

/// All eigenvalues of a symmetric tridiagonal matrix, with the unreduced block each one
/// belongs to: what inverse iteration needs to compute any of their eigenvectors.
pub(crate) struct TridiagonalEigenvalues {
    /// T's diagonal.
    pub(crate) diag: Vec<f64>,
    /// T's subdiagonal.
    pub(crate) offdiag: Vec<f64>,
    /// The unreduced blocks, as ranges of rows.
    pub(crate) blocks: Vec<Range<usize>>,
    /// The eigenvalues, ascending (ties ordered by block).
    pub(crate) values: Vec<f64>,
    /// For each block, the indices into `values` of its eigenvalues, ascending.
    pub(crate) block_members: Vec<Vec<usize>>,
}

impl TridiagonalEigenvalues {
    /// Splits (diag, offdiag) into unreduced blocks and computes each block's eigenvalues
    /// (the blocks in parallel: each on its own, so the result does not depend on the
    /// thread count).
    pub(crate) fn new(diag: Vec<f64>, offdiag: Vec<f64>, limits: &IterationLimits) -> Result<Self> {
        let blocks = unreduced_blocks(&diag, &offdiag);
        let per_block: Vec<Vec<f64>> = blocks
            .par_iter()
            .map(|rows| {
                tridiagonal_eigenvalues(
                    &diag[rows.clone()],
                    &offdiag[rows.start..rows.end - 1],
                    limits,
                )
            })
            .collect::<Result<_>>()?;
        let mut tagged: Vec<(f64, usize)> = per_block
            .iter()
            .enumerate()
            .flat_map(|(b, values)| values.iter().map(move |&v| (v, b)))
            .collect();
        tagged.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut block_members = vec![Vec::new(); blocks.len()];
        for (i, &(_, b)) in tagged.iter().enumerate() {
            block_members[b].push(i);
        }
        Ok(TridiagonalEigenvalues {
            diag,
            offdiag,
            blocks,
            values: tagged.into_iter().map(|(v, _)| v).collect(),
            block_members,
        })
    }
}

/// The unreduced blocks of the tridiagonal (d, e): ranges of rows between negligible
/// off-diagonal entries, in order, covering `0..d.len()`.
pub(crate) fn unreduced_blocks(d: &[f64], e: &[f64]) -> Vec<Range<usize>> {
    let n = d.len();
    let eps = f64::EPSILON / 2.0;
    let mut blocks = Vec::new();
    let mut start = 0;
    for i in 0..n.saturating_sub(1) {
        if e[i].abs() <= (d[i].abs().sqrt() * d[i + 1].abs().sqrt()) * eps {
            blocks.push(start..i + 1);
            start = i + 1;
        }
    }
    if n > 0 {
        blocks.push(start..n);
    }
    blocks
}

/// The eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and subdiagonal
/// `e` (one shorter), ascending, by `dsterf`. Errors when the iteration has not converged
/// after `limits.ql_sweeps` sweeps per eigenvalue on average.
pub(crate) fn tridiagonal_eigenvalues(
    d: &[f64],
    e: &[f64],
    limits: &IterationLimits,
) -> Result<Vec<f64>> {
    let mut d = d.to_vec();
    let mut e2 = e.to_vec();
    sterf(&mut d, &mut e2, limits.ql_sweeps)?;
    d.sort_by(f64::total_cmp);
    Ok(d)
}

/// `dsterf` on (d, e) in place: d ends with the eigenvalues, unsorted; e is destroyed.
fn sterf(d: &mut [f64], e: &mut [f64], sweeps_per_value: usize) -> Result<()> {
    let n = d.len();
    if n <= 1 {
        return Ok(());
    }
    let eps = f64::EPSILON / 2.0;
    let eps2 = eps * eps;
    let safe_min = f64::MIN_POSITIVE;
    let safe_max = 1.0 / safe_min;
    let scaled_max = safe_max.sqrt() / 3.0;
    let scaled_min = safe_min.sqrt() / eps2;
    let max_sweeps = n * sweeps_per_value;
    let mut sweeps = 0;
    let mut l1 = 0;
    while l1 < n {
        if l1 > 0 {
            e[l1 - 1] = 0.0;
        }
        // The block l1..=m ends at the first negligible off-diagonal entry.
        let mut m = l1;
        while m < n - 1 {
            if e[m].abs() <= (d[m].abs().sqrt() * d[m + 1].abs().sqrt()) * eps {
                e[m] = 0.0;
                break;
            }
            m += 1;
        }
        let (start, end) = (l1, m);
        l1 = m + 1;
        if end == start {
            continue;
        }
        // Scale the block into range: its squared entries must neither overflow nor
        // underflow.
        let block_norm = d[start..=end]
            .iter()
            .chain(&e[start..end])
            .fold(0.0f64, |a, v| a.max(v.abs()));
        if block_norm == 0.0 {
            continue;
        }
        let scale = if block_norm > scaled_max {
            scaled_max / block_norm
        } else if block_norm < scaled_min {
            scaled_min / block_norm
        } else {
            1.0
        };
        if scale != 1.0 {
            d[start..=end].iter_mut().for_each(|x| *x *= scale);
            e[start..end].iter_mut().for_each(|x| *x *= scale);
        }
        for x in &mut e[start..end] {
            *x *= *x;
        }
        // QL when the block's top is larger than its bottom, QR otherwise: the iteration
        // deflates from the end where the smaller eigenvalues collect.
        let converged = if d[end].abs() < d[start].abs() {
            qr_sweeps(d, e, end, start, &mut sweeps, max_sweeps, eps2)
        } else {
            ql_sweeps(d, e, start, end, &mut sweeps, max_sweeps, eps2)
        };
        if scale != 1.0 {
            d[start..=end].iter_mut().for_each(|x| *x /= scale);
        }
        if !converged {
            return Err(Error::Numerical(format!(
                "tridiagonal eigenvalues (QL/QR): not converged after {max_sweeps} sweeps \
                 ({sweeps_per_value} per eigenvalue) on a matrix of order {n}"
            )));
        }
    }
    Ok(())
}

/// Implicit QL sweeps on rows `l..=lend` (l < lend) of (d, e^2) until every eigenvalue of
/// the range has converged; false when `sweeps` reaches `max_sweeps` first.
fn ql_sweeps(
    d: &mut [f64],
    e: &mut [f64],
    mut l: usize,
    lend: usize,
    sweeps: &mut usize,
    max_sweeps: usize,
    eps2: f64,
) -> bool {
    loop {
        // The first negligible squared off-diagonal entry at or after l.
        let m = (l..lend)
            .find(|&m| e[m].abs() <= eps2 * (d[m] * d[m + 1]).abs())
            .unwrap_or(lend);
        if m < lend {
            e[m] = 0.0;
        }
        if m == l {
            // d[l] is an eigenvalue.
            l += 1;
        } else if m == l + 1 {
            // A 2 x 2 block: its eigenvalues directly.
            let (rt1, rt2) = symmetric_2x2_eigenvalues(d[l], e[l].sqrt(), d[l + 1]);
            d[l] = rt1;
            d[l + 1] = rt2;
            e[l] = 0.0;
            l += 2;
        } else {
            if *sweeps == max_sweeps {
                return false;
            }
            *sweeps += 1;
            let sigma = wilkinson_shift(d[l], e[l].sqrt(), d[l + 1]);
            let mut sweep = Sweep::new(d[m] - sigma);
            for i in (l..m).rev() {
                let (e_behind, d_behind) = sweep.step(e[i], d[i], sigma);
                if i != m - 1 {
                    e[i + 1] = e_behind;
                }
                d[i + 1] = d_behind;
            }
            (e[l], d[l]) = sweep.finish(sigma);
            continue;
        }
        if l > lend {
            return true;
        }
    }
}

/// Implicit QR sweeps on rows `lend..=l` (lend < l) of (d, e^2), from the bottom up: the
/// mirror image of [`ql_sweeps`].
fn qr_sweeps(
    d: &mut [f64],
    e: &mut [f64],
    mut l: usize,
    lend: usize,
    sweeps: &mut usize,
    max_sweeps: usize,
    eps2: f64,
) -> bool {
    loop {
        // The last negligible squared off-diagonal entry at or before l (e[m - 1] joins
        // rows m - 1 and m).
        let m = (lend + 1..=l)
            .rev()
            .find(|&m| e[m - 1].abs() <= eps2 * (d[m] * d[m - 1]).abs())
            .unwrap_or(lend);
        if m > lend {
            e[m - 1] = 0.0;
        }
        if m == l {
            if l == lend {
                return true;
            }
            l -= 1;
        } else if m + 1 == l {
            let (rt1, rt2) = symmetric_2x2_eigenvalues(d[l], e[l - 1].sqrt(), d[l - 1]);
            d[l] = rt1;
            d[l - 1] = rt2;
            e[l - 1] = 0.0;
            if l < lend + 2 {
                return true;
            }
            l -= 2;
        } else {
            if *sweeps == max_sweeps {
                return false;
            }
            *sweeps += 1;
            let sigma = wilkinson_shift(d[l], e[l - 1].sqrt(), d[l - 1]);
            let mut sweep = Sweep::new(d[m] - sigma);
            for i in m..l {
                let (e_behind, d_behind) = sweep.step(e[i], d[i + 1], sigma);
                if i != m {
                    e[i - 1] = e_behind;
                }
                d[i] = d_behind;
            }
            (e[l - 1], d[l]) = sweep.finish(sigma);
        }
    }
}

/// The state of one Pal-Walker-Kahan sweep (a QL or QR sweep on the squared off-diagonal
/// entries, without square roots), chased one row at a time.
struct Sweep {
    c: f64,
    s: f64,
    p: f64,
    gamma: f64,
}

impl Sweep {
    /// A sweep starting at the row whose diagonal entry less the shift is `gamma`.
    fn new(gamma: f64) -> Self {
        Sweep {
            c: 1.0,
            s: 0.0,
            p: gamma * gamma,
            gamma,
        }
    }

    /// Passes the next row, with squared off-diagonal entry `bb` and diagonal entry
    /// `alpha`: returns the new squared off-diagonal entry and diagonal entry of the row
    /// behind (the off-diagonal one is unused on the sweep's first row).
    fn step(&mut self, bb: f64, alpha: f64, sigma: f64) -> (f64, f64) {
        let r = self.p + bb;
        let e_behind = self.s * r;
        let old_c = self.c;
        self.c = self.p / r;
        self.s = bb / r;
        let old_gamma = self.gamma;
        self.gamma = self.c * (alpha - sigma) - self.s * old_gamma;
        let d_behind = old_gamma + (alpha - self.gamma);
        self.p = if self.c != 0.0 {
            (self.gamma * self.gamma) / self.c
        } else {
            old_c * bb
        };
        (e_behind, d_behind)
    }

    /// The last row's squared off-diagonal entry and diagonal entry.
    fn finish(&self, sigma: f64) -> (f64, f64) {
        (self.s * self.p, sigma + self.gamma)
    }
}

/// The eigenvalue of `[[p, e], [e, next]]` nearer p (Wilkinson's shift), for e > 0.
fn wilkinson_shift(p: f64, e: f64, next: f64) -> f64 {
    let sigma = (next - p) / (2.0 * e);
    let r = sigma.hypot(1.0);
    p - e / (sigma + if sigma >= 0.0 { r } else { -r })
}

/// The eigenvalues of `[[a, b], [b, c]]`, the larger in absolute value first (`dlae2`):
/// the smaller from the product of the two, which keeps its relative accuracy.
fn symmetric_2x2_eigenvalues(a: f64, b: f64, c: f64) -> (f64, f64) {
    let sum = a + c;
    let diff = a - c;
    let adf = diff.abs();
    let ab = (b + b).abs();
    let (larger, smaller) = if a.abs() > c.abs() { (a, c) } else { (c, a) };
    let rt = if adf > ab {
        adf * (1.0 + (ab / adf).powi(2)).sqrt()
    } else if adf < ab {
        ab * (1.0 + (adf / ab).powi(2)).sqrt()
    } else {
        ab * std::f64::consts::SQRT_2
    };
    if sum < 0.0 {
        let rt1 = 0.5 * (sum - rt);
        (rt1, (larger / rt1) * smaller - (b / rt1) * b)
    } else if sum > 0.0 {
        let rt1 = 0.5 * (sum + rt);
        (rt1, (larger / rt1) * smaller - (b / rt1) * b)
    } else {
        (0.5 * rt, -0.5 * rt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::divide_conquer::tridiagonal_matrix;
    use faer::Side;
    use rand::{Rng, SeedableRng};

    /// Against faer's dense solver, to 1e-13 of the largest eigenvalue (both solvers are
    /// backward stable: their eigenvalues agree to a small multiple of eps ||T||).
    fn check(d: &[f64], e: &[f64], what: &str) {
        let got = tridiagonal_eigenvalues(d, e, &IterationLimits::DEFAULT).unwrap();
        let dense = tridiagonal_matrix(d, e)
            .self_adjoint_eigen(Side::Lower)
            .unwrap();
        let scale = got.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
        for (i, v) in got.iter().enumerate() {
            let want = dense.S()[i];
            assert!(
                (v - want).abs() <= 1e-13 * scale * (d.len() as f64).sqrt(),
                "{what}: eigenvalue {i}: {v} vs {want}"
            );
        }
    }

    #[test]
    fn matches_dense_solver_on_random_graded_and_clustered_tridiagonals() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        for n in [1usize, 2, 3, 4, 7, 50, 301] {
            let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let e: Vec<f64> = (0..n.saturating_sub(1))
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            check(&d, &e, &format!("random n={n}"));
            // Graded from 1 to 1e-12 both ways, so that both QL and QR run.
            let g: Vec<f64> = (0..n)
                .map(|i| 10f64.powf(-12.0 * i as f64 / n as f64))
                .collect();
            let ge: Vec<f64> = (0..n.saturating_sub(1)).map(|i| 0.3 * g[i + 1]).collect();
            check(&g, &ge, &format!("graded down n={n}"));
            let gr: Vec<f64> = g.iter().rev().copied().collect();
            let ger: Vec<f64> = ge.iter().rev().copied().collect();
            check(&gr, &ger, &format!("graded up n={n}"));
            // Wilkinson's matrices: pairs of eigenvalues equal to many digits.
            let half = (n / 2) as f64;
            let w: Vec<f64> = (0..n).map(|i| (i as f64 - half).abs()).collect();
            check(
                &w,
                &vec![1.0; n.saturating_sub(1)],
                &format!("wilkinson n={n}"),
            );
            // Splits: zero and tiny couplings, repeated diagonal values.
            let d: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
            let e: Vec<f64> = (0..n.saturating_sub(1))
                .map(|i| {
                    if i % 5 == 0 {
                        1e-18
                    } else if i % 7 == 0 {
                        0.0
                    } else {
                        0.5
                    }
                })
                .collect();
            check(&d, &e, &format!("split n={n}"));
        }
        // Entries near the ends of the f64 range: the block scaling keeps e^2 finite.
        for factor in [1e-300, 1e300] {
            let d: Vec<f64> = (0..40).map(|i| factor * (i as f64 * 0.3).cos()).collect();
            let e: Vec<f64> = (0..39).map(|i| factor * (0.5 + 0.01 * i as f64)).collect();
            check(&d, &e, &format!("scaled by {factor:e}"));
        }
    }

    #[test]
    fn blocks_split_at_negligible_couplings_only() {
        let d = [1.0, 2.0, 3.0, 4.0, 5.0];
        let e = [0.5, 1e-30, 0.0, 0.25];
        assert_eq!(unreduced_blocks(&d, &e), vec![0..2, 2..3, 3..5]);
        assert_eq!(unreduced_blocks(&[7.0], &[]), vec![0..1]);
        assert!(unreduced_blocks(&[], &[]).is_empty());
    }

    #[test]
    fn too_few_sweeps_is_an_error() {
        let n = 60;
        let d: Vec<f64> = (0..n).map(|i| (i as f64 * 0.9).sin()).collect();
        let e = vec![0.7; n - 1];
        let limits = IterationLimits {
            ql_sweeps: 0,
            ..IterationLimits::DEFAULT
        };
        let err = tridiagonal_eigenvalues(&d, &e, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("numerical: tridiagonal eigenvalues (QL/QR): not converged"),
            "{err}"
        );
    }
}
