//! Eigenvectors of a symmetric tridiagonal matrix for chosen eigenvalues only, by inverse
//! iteration (LAPACK's `dstein`, reorganised for clusters): O(n) per vector and iteration
//! instead of the O(n^2) per vector (O(n^3) in all) of a full solve.
//!
//! # One vector
//!
//! For an eigenvalue `sigma` (from `eigenvalues.rs`, accurate to a small multiple of
//! `eps ||T||`), `x <- (T - sigma I)^-1 x` multiplies the component of x along eigenvector j
//! by `1 / (mu_j - sigma)`: the wanted one by about `1 / (eps ||T||)`, one at distance g by
//! `1 / g`. From a start with any component along the wanted vector, one step leaves it
//! dominant, and each further step divides the rest by `g / (eps ||T||)` again. The solve
//! is an LU factorisation of `T - sigma I` with partial pivoting (`dlagtf`: U has two
//! superdiagonals), a pivot below `eps ||T||` raised to it (the matrix is singular to
//! working precision by design). A vector is converged when its residual
//! `||(T - sigma I) x||` is below [`residual_tolerance`]; [`EXTRA_STEPS`] more steps refine
//! its direction, as `dstein` does. Not converging within [`IterationLimits::inverse`]
//! steps is an [`Error::Numerical`]. Start vectors are pseudo-random with a seed fixed by
//! the eigenvalue's index, so an eigenvector does not depend on the thread count, nor on
//! which others are asked for (but for the orthonormalisation below, a rounding-level
//! change).
//!
//! # Close eigenvalues
//!
//! An eigenvector is determined by the matrix only to an angle of about
//! `eps ||T|| / gap` (gap: the distance to the nearest other eigenvalue); any
//! backward-stable solver, this one and divide and conquer alike, computes it to that
//! accuracy and no better. Two regimes follow, split at [`TIGHT_GAP`] `* ||T||`:
//!
//! - **Resolved** (gap above it): inverse iteration converges to the eigenvector itself,
//!   to within about `eps / TIGHT_GAP` (2e-6) at worst, whatever the start. Vectors computed
//!   one by one lean towards their near neighbours by that much, which is why the
//!   requested vectors whose eigenvalues lie within [`ORTHOGONALIZE_GAP`] `* ||T||` of each
//!   other (`dstein`'s `ORTOL`) are orthonormalised together afterwards, in ascending
//!   order (Cholesky QR: they are nearly orthonormal already). That changes each vector by
//!   its overlap with the others, about `eps ||T|| / gap`, and its residual by `gap` times
//!   that: the residuals stay at rounding level.
//! - **Unresolved** (a *tight cluster*: a run of eigenvalues whose consecutive gaps are
//!   all below it): the individual vectors are not determined, only the cluster's
//!   invariant subspace is. Inverse iteration with each member's own shift still prefers
//!   the eigenvector of T nearest that shift, by factors of order one per step (the
//!   shifts' errors are as large as the gaps), so a *subset* of a cluster computed alone
//!   is a biased frame of the subspace: neither the true vectors nor a uniformly random
//!   choice. For a DPP that matters: a k-DPP draw that selects s of the c eigenvalues of a
//!   (near-)degenerate cluster is exact when the s vectors are any fixed orthonormal
//!   basis's s members chosen as Alg. 8 chooses them (that is what the full
//!   decomposition does), or a Haar-random s-frame of the subspace; a frame that leans
//!   towards some directions more often than others is neither. Random start vectors do
//!   not make it Haar-random either: computing only the requested members, from fixed or
//!   from fresh random starts, fails the chi-square test on duplicated neurons
//!   (`tests/dpp.rs`: chi-square about 2000 on 55 degrees of freedom, an item drawn with
//!   frequency 0.58 against a marginal of 0.19). So a tight cluster with any requested
//!   member is computed whole: all c vectors, from their fixed starts, orthonormalised
//!   together after every step (simultaneous inverse iteration), and the requested ones
//!   taken out of that fixed basis. Its residuals are then bounded by the cluster's width
//!   rather than by rounding, which the tolerance allows.
//!
//! Cost: a resolved vector takes about three steps of O(n); a tight cluster of c costs
//! O(n c^2) per step for its orthonormalisation. Where the clusters would cost more than a
//! divide and conquer of the whole unreduced block (one cluster holding most of the
//! spectrum: a kernel numerically equal to a multiple of the identity), the block is
//! solved whole by divide and conquer, which deflates most of such a block, and the
//! requested columns are taken from that (the same fixed-basis argument holds); this
//! needs the block's order squared of memory meanwhile. Exactly
//! repeated eigenvalues of the original matrix mostly appear in different unreduced
//! blocks of T (the Householder reduction of an exactly degenerate matrix splits, up to
//! rounding), whose vectors are orthogonal by construction. The group orthonormalisation
//! costs 2 n s^2 for s requested vectors in one group (for an RBF kernel, usually all of
//! them: thousands of eigenvalues within 1e-3 ||T||), as matrix products.
//!
//! Measured on the benchmarks' RBF kernels (points in [0,1]^10, n = 2000): consecutive
//! gaps below 1e-10 ||T|| occur in pairs, 3 of them; below 1e-8 ||T|| they already chain
//! into clusters of 600, which is why [`TIGHT_GAP`] is not larger.

use std::ops::Range;

use faer::linalg::matmul::matmul as gemm;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::divide_conquer::tridiagonal_eigen;
use super::eigenvalues::TridiagonalEigenvalues;
use super::simd::{dot, sub_scaled};
use super::{
    check_indices, cholesky_lower_in_place, permute_columns, product_par, IterationLimits,
};
use crate::cpu::{contiguous, contiguous_mut};
use crate::error::{Error, Result};
use crate::memory::ensure_host_matrices;
use crate::progress::Progress;

/// Consecutive eigenvalues closer than this times the block's norm belong to one tight
/// cluster, whose vectors are computed together (see the module docs).
pub(crate) const TIGHT_GAP: f64 = 1e-10;

/// Requested eigenvalues closer than this times the block's norm are orthonormalised
/// together after inverse iteration (LAPACK's `ORTOL`).
pub(crate) const ORTHOGONALIZE_GAP: f64 = 1e-3;

/// A block of at least [`WHOLE_BLOCK_MIN_ORDER`] rows whose tight clusters to compute hold
/// `sum c^2` above `order^2 / WHOLE_BLOCK_SHARE` is solved whole by divide and conquer
/// instead: the clusters' orthonormalisation, about `16 order sum c^2` flops over the
/// steps, would cost more than the whole block's `order^3` at worst (a kernel numerically
/// a multiple of the identity, whose thousands of eigenvalues form one tight cluster, is
/// the case; divide and conquer deflates most of such a block, so it is far cheaper).
const WHOLE_BLOCK_SHARE: usize = 16;

/// Blocks below this order are never solved whole: either way costs next to nothing.
const WHOLE_BLOCK_MIN_ORDER: usize = 64;

/// Steps after the first converged one (`dstein`'s `EXTRA`).
const EXTRA_STEPS: usize = 2;

/// Columns per block of the block Gram-Schmidt.
const ORTHONORMALIZE_BLOCK: usize = 32;

/// Eigenvectors (columns) per report to the progress bar.
const PROGRESS_CHUNK: usize = 256;

/// Seeds the start vectors: any fixed value (start vectors only need a component along
/// the wanted vector, which pseudo-random ones have with probability one).
const START_SEED: u64 = 0x5eed_1d17_e0a1_5e75;

/// The residual `||(T - sigma I) x||` below which a unit vector counts as converged, for a
/// block of order `n` scaled to norm about 1: a small multiple of the rounding in
/// computing `T x` and in the eigenvalue itself.
fn residual_tolerance(n: usize) -> f64 {
    64.0 * (n as f64).sqrt().max(1.0) * f64::EPSILON
}

/// The eigenvectors of `t` for the eigenvalues `indices` (positions in `t.values`,
/// distinct), as the columns of an n x k matrix in the order asked for, each zero outside
/// its unreduced block. Computed block by block into the result's own columns (no second
/// n x k), then put in the order asked for. Progress counts requested vectors.
pub(crate) fn eigenvectors(
    t: &TridiagonalEigenvalues,
    indices: &[usize],
    limits: &IterationLimits,
    progress: &mut dyn Progress,
) -> Result<Mat<f64>> {
    let n = t.values.len();
    check_indices(indices, n)?;
    let mut asked = vec![false; n];
    for &i in indices {
        asked[i] = true;
    }
    let mut z = Mat::<f64>::zeros(n, indices.len());
    // Column of z holding each computed eigenvalue's vector: block by block, ascending.
    let mut column_of = vec![usize::MAX; n];
    let mut next = 0;
    progress.start("eigenvectors (inverse iteration)", indices.len() as u64);
    for (b, rows) in t.blocks.iter().enumerate() {
        let members = &t.block_members[b];
        let requested: Vec<usize> = (0..members.len()).filter(|&p| asked[members[p]]).collect();
        if requested.is_empty() {
            continue;
        }
        for &p in &requested {
            column_of[members[p]] = next;
            next += 1;
        }
        let block = BlockProblem::new(t, rows.clone(), members);
        let target = z
            .as_mut()
            .subrows_mut(rows.start, rows.len())
            .subcols_mut(next - requested.len(), requested.len());
        block.requested_vectors(&requested, target, limits, progress)?;
    }
    progress.finish();
    let order: Vec<usize> = indices.iter().map(|&i| column_of[i]).collect();
    permute_columns(&mut z, &order);
    Ok(z)
}

/// One unreduced block of T, scaled by a power of two to norm about 1 (exactly, so that
/// its eigenvectors are those of the unscaled block), with its ascending eigenvalues.
struct BlockProblem {
    d: Vec<f64>,
    e: Vec<f64>,
    values: Vec<f64>,
    /// The global index of each of the block's eigenvalues (seeds the start vectors).
    indices: Vec<usize>,
}

impl BlockProblem {
    fn new(t: &TridiagonalEigenvalues, rows: Range<usize>, members: &[usize]) -> Self {
        let d = &t.diag[rows.clone()];
        let e = &t.offdiag[rows.start..rows.end - 1];
        let norm = (0..d.len())
            .map(|i| {
                d[i].abs()
                    + if i > 0 { e[i - 1].abs() } else { 0.0 }
                    + if i + 1 < d.len() { e[i].abs() } else { 0.0 }
            })
            .fold(0.0f64, f64::max);
        let scale = if norm > 0.0 {
            2f64.powi(-(norm.log2().round() as i32))
        } else {
            1.0
        };
        BlockProblem {
            d: d.iter().map(|x| x * scale).collect(),
            e: e.iter().map(|x| x * scale).collect(),
            values: members.iter().map(|&i| t.values[i] * scale).collect(),
            indices: members.to_vec(),
        }
    }

    fn order(&self) -> usize {
        self.d.len()
    }

    /// The block's tight clusters that hold a requested position, as ranges of positions.
    fn clusters_to_compute(&self, requested: &[usize]) -> Vec<Range<usize>> {
        let mut clusters: Vec<Range<usize>> = Vec::new();
        for &p in requested {
            if clusters.last().is_some_and(|c| c.contains(&p)) {
                continue;
            }
            let mut start = p;
            while start > 0 && self.values[start] - self.values[start - 1] <= TIGHT_GAP {
                start -= 1;
            }
            let mut end = p + 1;
            while end < self.values.len() && self.values[end] - self.values[end - 1] <= TIGHT_GAP {
                end += 1;
            }
            clusters.push(start..end);
        }
        clusters
    }

    /// The vectors of the requested positions (ascending) into the columns of `x`
    /// (`order x requested.len()`): clusters by inverse iteration, in parallel, then each
    /// group of close eigenvalues orthonormalised together.
    fn requested_vectors(
        &self,
        requested: &[usize],
        mut x: MatMut<'_, f64>,
        limits: &IterationLimits,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if self.order() == 1 {
            x.fill(1.0);
            progress.advance(requested.len() as u64);
            return Ok(());
        }
        let clusters = self.clusters_to_compute(requested);
        let clustered: usize = clusters
            .iter()
            .filter(|c| c.len() > 1)
            .map(|c| c.len() * c.len())
            .sum();
        if self.order() >= WHOLE_BLOCK_MIN_ORDER
            && clustered * WHOLE_BLOCK_SHARE > self.order().pow(2)
        {
            return self.vectors_by_divide_and_conquer(requested, x, limits, progress);
        }
        let mut next = 0;
        for chunk in clusters.chunks(PROGRESS_CHUNK) {
            let computed: Vec<Result<Mat<f64>>> = chunk
                .par_iter()
                .map(|c| self.cluster_vectors(c.clone(), limits))
                .collect();
            for (cluster, vectors) in chunk.iter().zip(computed) {
                let vectors = vectors?;
                let mut taken = 0;
                while next < requested.len() && cluster.contains(&requested[next]) {
                    let p = requested[next];
                    contiguous_mut(x.rb_mut().col_mut(next))
                        .copy_from_slice(vectors.col_as_slice(p - cluster.start));
                    next += 1;
                    taken += 1;
                }
                progress.advance(taken as u64);
            }
        }
        debug_assert_eq!(next, requested.len());
        // Groups of requested vectors whose eigenvalues chain within ORTHOGONALIZE_GAP.
        let mut start = 0;
        for end in 1..=requested.len() {
            if end == requested.len()
                || self.values[requested[end]] - self.values[requested[end - 1]] > ORTHOGONALIZE_GAP
            {
                if end - start > 1 {
                    orthonormalize_nearly_orthonormal(x.rb_mut().subcols_mut(start, end - start))?;
                }
                start = end;
            }
        }
        Ok(())
    }

    /// The requested vectors out of all of the block's, by divide and conquer: for a block
    /// whose tight clusters would cost more by inverse iteration (see
    /// [`WHOLE_BLOCK_SHARE`]). Holds the block's n x n eigenvectors meanwhile.
    fn vectors_by_divide_and_conquer(
        &self,
        requested: &[usize],
        mut x: MatMut<'_, f64>,
        limits: &IterationLimits,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        ensure_host_matrices(self.order(), 2)?;
        // Both solvers order the eigenvalues ascending, and they agree to rounding, far
        // below the gaps that separate eigenvalues outside tight clusters: a position
        // means the same eigenvalue (inside a tight cluster, the same cluster).
        let (_, vectors) = tridiagonal_eigen(&self.d, &self.e, limits)?;
        for (c, &p) in requested.iter().enumerate() {
            contiguous_mut(x.rb_mut().col_mut(c)).copy_from_slice(vectors.col_as_slice(p));
        }
        progress.advance(requested.len() as u64);
        Ok(())
    }

    /// The vectors of all positions in `cluster` (one for a resolved eigenvalue), by
    /// simultaneous inverse iteration, orthonormalised after every step.
    fn cluster_vectors(&self, cluster: Range<usize>, limits: &IterationLimits) -> Result<Mat<f64>> {
        let nb = self.order();
        let c = cluster.len();
        let shifts = &self.values[cluster.clone()];
        let width = shifts[c - 1] - shifts[0];
        let tolerance = residual_tolerance(nb) + width;
        let factors: Vec<ShiftedLu> = shifts
            .iter()
            .map(|&s| ShiftedLu::new(&self.d, &self.e, s))
            .collect();
        let mut x = Mat::<f64>::zeros(nb, c);
        for (t, &index) in self.indices[cluster.clone()].iter().enumerate() {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(START_SEED ^ index as u64);
            for v in x.col_as_slice_mut(t) {
                *v = rng.random_range(-1.0..1.0);
            }
        }
        orthonormalize(x.as_mut())?;
        let mut converged_steps = 0;
        let mut worst = f64::INFINITY;
        for _ in 0..limits.inverse {
            for (t, lu) in factors.iter().enumerate() {
                lu.solve(x.col_as_slice_mut(t));
            }
            orthonormalize(x.as_mut())?;
            worst = (0..c)
                .map(|t| residual(&self.d, &self.e, shifts[t], x.col_as_slice(t)))
                .fold(0.0, f64::max);
            if worst <= tolerance {
                converged_steps += 1;
                if converged_steps > EXTRA_STEPS {
                    return Ok(x);
                }
            }
        }
        let what = if c == 1 {
            format!("eigenvalue {}", self.indices[cluster.start])
        } else {
            format!(
                "a cluster of {c} eigenvalues ({} to {})",
                self.indices[cluster.start],
                self.indices[cluster.end - 1]
            )
        };
        Err(Error::Numerical(format!(
            "inverse iteration for {what} did not converge in {} steps \
             (residual {worst:.3e}, tolerance {tolerance:.3e}, relative to the matrix norm)",
            limits.inverse
        )))
    }
}

/// `||(T - sigma I) x||_2` for the tridiagonal (d, e).
fn residual(d: &[f64], e: &[f64], sigma: f64, x: &[f64]) -> f64 {
    let n = d.len();
    let mut sum = 0.0;
    for i in 0..n {
        let mut r = (d[i] - sigma) * x[i];
        if i > 0 {
            r += e[i - 1] * x[i - 1];
        }
        if i + 1 < n {
            r += e[i] * x[i + 1];
        }
        sum += r * r;
    }
    sum.sqrt()
}

/// Above this, a partial solution is scaled down (by an exact power of two) before it can
/// overflow: a cluster of c nearly equal eigenvalues makes up to c pivots tiny.
const SOLVE_RESCALE_ABOVE: f64 = 1e150;

/// `P (T - sigma I) = L U` with partial pivoting for a tridiagonal T (LAPACK's `dlagtf`):
/// U upper triangular with two superdiagonals, L unit lower bidiagonal, stored as one
/// multiplier per step and whether the step swapped its two rows.
struct ShiftedLu {
    u0: Vec<f64>,
    u1: Vec<f64>,
    u2: Vec<f64>,
    multipliers: Vec<f64>,
    swapped: Vec<bool>,
}

impl ShiftedLu {
    /// Factors `T - sigma I` for the tridiagonal (d, e) of norm about 1; pivots below eps
    /// are raised to eps (keeping their sign), a perturbation of eps to a matrix that is
    /// singular to working precision by design.
    fn new(d: &[f64], e: &[f64], sigma: f64) -> Self {
        let n = d.len();
        let floor = f64::EPSILON;
        let mut lu = ShiftedLu {
            u0: vec![0.0; n],
            u1: vec![0.0; n],
            u2: vec![0.0; n],
            multipliers: vec![0.0; n.saturating_sub(1)],
            swapped: vec![false; n.saturating_sub(1)],
        };
        // The row left over from the previous step: its entries in columns i and i + 1.
        let (mut c0, mut c1) = (d[0] - sigma, if n > 1 { e[0] } else { 0.0 });
        for i in 0..n.saturating_sub(1) {
            // Row i + 1 of T - sigma I: e_i, d_{i+1} - sigma, e_{i+1}.
            let (sub, diag, sup) = (
                e[i],
                d[i + 1] - sigma,
                if i + 2 < n { e[i + 1] } else { 0.0 },
            );
            if c0.abs() >= sub.abs() {
                let pivot = if c0 == 0.0 { floor } else { c0 };
                let m = sub / pivot;
                (lu.u0[i], lu.u1[i], lu.u2[i]) = (c0, c1, 0.0);
                lu.multipliers[i] = m;
                (c0, c1) = (diag - m * c1, sup);
            } else {
                let m = c0 / sub;
                (lu.u0[i], lu.u1[i], lu.u2[i]) = (sub, diag, sup);
                lu.multipliers[i] = m;
                lu.swapped[i] = true;
                (c0, c1) = (c1 - m * diag, -m * sup);
            }
        }
        lu.u0[n - 1] = c0;
        for p in &mut lu.u0 {
            if p.abs() < floor {
                *p = if *p < 0.0 { -floor } else { floor };
            }
        }
        lu
    }

    /// `x <- (T - sigma I)^-1 x`, up to a positive factor (the caller normalises).
    fn solve(&self, x: &mut [f64]) {
        let n = x.len();
        for i in 0..n - 1 {
            if self.swapped[i] {
                x.swap(i, i + 1);
            }
            x[i + 1] -= self.multipliers[i] * x[i];
        }
        for i in (0..n).rev() {
            let mut v = x[i];
            if i + 1 < n {
                v -= self.u1[i] * x[i + 1];
            }
            if i + 2 < n {
                v -= self.u2[i] * x[i + 2];
            }
            v /= self.u0[i];
            x[i] = v;
            if v.abs() > SOLVE_RESCALE_ABOVE {
                let scale = 2f64.powi(-500);
                x.iter_mut().for_each(|xi| *xi *= scale);
            }
        }
    }
}

/// Largest `|X^T X - I|` entry for which Cholesky QR alone orthonormalises X: a
/// deviation d costs about `eps / (1 - d)^2` of orthogonality.
const CHOLESKY_QR_MAX_DEVIATION: f64 = 0.5;

/// Columns per block of [`orthonormalize_nearly_orthonormal`]: besides X it holds the
/// block's projections on the columns before it (at most `k x` this) and the block's Gram
/// matrix (this squared), never a `k x k` matrix (1 GB at k = 8192, which a wide layer's
/// draw cannot spare beside its kernel).
const CHOLESKY_QR_BLOCK: usize = 256;

/// Orthonormalises columns that are nearly orthonormal already (converged eigenvectors
/// of distinct eigenvalues: overlaps of `eps ||T|| / gap`) in order, by Cholesky QR in
/// blocks of [`CHOLESKY_QR_BLOCK`] columns (see [`block_cholesky_qr`]). For X that close to
/// orthonormal one pass is orthogonal to working precision; otherwise (never expected)
/// [`orthonormalize`] does it.
fn orthonormalize_nearly_orthonormal(x: MatMut<'_, f64>) -> Result<()> {
    block_cholesky_qr(x, CHOLESKY_QR_BLOCK)
}

/// `X <- X R^-1` with `R^T R = X^T X`, computed block by block of `block` columns: each
/// block less its projections on the columns before it (one classical Gram-Schmidt step,
/// as matrix products), then orthonormalised by the Cholesky factor of its own Gram matrix
/// (factored in place). In exact arithmetic this is the Q of X's QR, as Cholesky QR of the
/// whole is, for about 2 n k^2 flops; where a projection or a block's Gram matrix is off
/// the identity by more than [`CHOLESKY_QR_MAX_DEVIATION`], or a Cholesky fails, the
/// columns (whose leading spans are unchanged so far) go to [`orthonormalize`].
fn block_cholesky_qr(mut x: MatMut<'_, f64>, block: usize) -> Result<()> {
    let c = x.ncols();
    let par = product_par(x.nrows());
    let block = block.max(1);
    let width_max = block.min(c);
    // The last block starts after all the columns it is projected on.
    let last_start = c.saturating_sub(1) / block * block;
    let mut projections = Mat::<f64>::zeros(last_start, width_max);
    let mut gram = Mat::<f64>::zeros(width_max, width_max);
    let mut nearly_orthonormal = true;
    for start in (0..c).step_by(block) {
        let width = block.min(c - start);
        let (done, rest) = x.rb_mut().split_at_col_mut(start);
        let mut cols = rest.subcols_mut(0, width);
        if start > 0 {
            let h = projections.as_mut().get_mut(..start, ..width);
            // Subtracting keeps the leading spans, so a hand-over after it is still exact.
            subtract_projections(done.rb(), cols.rb_mut(), h);
            let h = projections.as_ref().get(..start, ..width);
            if max_abs_deviation(h, false) > CHOLESKY_QR_MAX_DEVIATION {
                nearly_orthonormal = false;
                break;
            }
        }
        let mut g = gram.as_mut().get_mut(..width, ..width);
        gemm(
            g.rb_mut(),
            Accum::Replace,
            cols.rb().transpose(),
            cols.rb(),
            1.0,
            product_par(width),
        );
        if max_abs_deviation(g.rb(), true) > CHOLESKY_QR_MAX_DEVIATION
            || !cholesky_lower_in_place(g.rb_mut(), Par::Seq)
        {
            nearly_orthonormal = false;
            break;
        }
        // cols R^-1 with R = L^T: solve L Y = cols^T for Y = (cols R^-1)^T, in place.
        solve_lower_triangular_in_place(g.rb(), cols.transpose_mut(), par);
    }
    if nearly_orthonormal {
        Ok(())
    } else {
        orthonormalize(x)
    }
}

/// `block <- block - done (done^T block)`: one classical Gram-Schmidt step against the
/// orthonormal columns `done`, as two matrix products; `h` (`done.ncols() x
/// block.ncols()`) receives the projections `done^T block`. The products run on one thread
/// for a one-column block (see [`product_par`]).
fn subtract_projections(done: MatRef<'_, f64>, block: MatMut<'_, f64>, mut h: MatMut<'_, f64>) {
    let par = product_par(block.ncols());
    gemm(
        h.rb_mut(),
        Accum::Replace,
        done.transpose(),
        block.rb(),
        1.0,
        par,
    );
    gemm(block, Accum::Add, done, h.rb(), -1.0, par);
}

/// Largest `|a_ij - delta_ij|` (with the identity's delta when `identity`, else 0).
fn max_abs_deviation(a: MatRef<'_, f64>, identity: bool) -> f64 {
    let mut largest = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let id = if identity && i == j { 1.0 } else { 0.0 };
            largest = largest.max((a[(i, j)] - id).abs());
        }
    }
    largest
}

/// Orthonormalises the columns of `x` in order (column j keeps the part of itself
/// orthogonal to columns 0..j) by block classical Gram-Schmidt, each projection run twice
/// ("twice is enough": orthogonal to working precision), the blocks' projections as
/// matrix products. A column with nothing left after its projections is an error.
pub(crate) fn orthonormalize(mut x: MatMut<'_, f64>) -> Result<()> {
    let c = x.ncols();
    for start in (0..c).step_by(ORTHONORMALIZE_BLOCK) {
        let width = ORTHONORMALIZE_BLOCK.min(c - start);
        let (done, rest) = x.rb_mut().split_at_col_mut(start);
        let mut block = rest.subcols_mut(0, width);
        if start > 0 {
            let mut h = Mat::<f64>::zeros(start, width);
            for _ in 0..2 {
                subtract_projections(done.rb(), block.rb_mut(), h.as_mut());
            }
        }
        for j in 0..width {
            let (left, right) = block.rb_mut().split_at_col_mut(j);
            let col = contiguous_mut(right.col_mut(0));
            for _ in 0..2 {
                for i in 0..j {
                    let q = contiguous(left.rb().col(i));
                    let coef = dot(q, col);
                    sub_scaled(col, coef, q);
                }
            }
            let norm = dot(col, col).sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                return Err(Error::Numerical(format!(
                    "orthonormalising eigenvectors: column {} has norm {norm:e} after \
                     its projections",
                    start + j
                )));
            }
            col.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::divide_conquer::tridiagonal_matrix;
    use rand::SeedableRng;

    /// The LU solve against the dense system, for shifts that pivot every way (inside the
    /// spectrum, outside, and at a diagonal entry, where a pivot is zero).
    #[test]
    fn shifted_lu_solves_the_tridiagonal_system() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 40;
        let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let e: Vec<f64> = (0..n - 1).map(|_| rng.random_range(-1.0..1.0)).collect();
        let t = tridiagonal_matrix(&d, &e);
        for sigma in [0.1, -3.0, 2.5, d[0]] {
            let x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut y = x.clone();
            ShiftedLu::new(&d, &e, sigma).solve(&mut y);
            for i in 0..n {
                let ty: f64 = (0..n).map(|j| t[(i, j)] * y[j]).sum::<f64>() - sigma * y[i];
                let scale = y.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert!(
                    (ty - x[i]).abs() <= 1e-12 * scale,
                    "sigma {sigma}, row {i}: {ty} vs {}",
                    x[i]
                );
            }
        }
    }

    /// Both orthonormalisations keep the leading spans (column j stays in the span of the
    /// input's columns 0..=j) and reach orthogonality to rounding; Cholesky QR on columns
    /// far from orthonormal hands over to Gram-Schmidt.
    #[test]
    fn orthonormalisations_keep_the_leading_spans() {
        let (n, c) = (300, 70);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let g = Mat::<f64>::from_fn(n, c, |_, _| rng.random_range(-1.0..1.0));
        let q = g.qr().compute_thin_Q();
        let nearly = Mat::<f64>::from_fn(n, c, |i, j| q[(i, j)] + 1e-7 * g[(j % n, (i + j) % c)]);
        type Orthonormalize = fn(MatMut<'_, f64>) -> Result<()>;
        let methods: [(&str, Orthonormalize); 3] = [
            ("block Gram-Schmidt", orthonormalize),
            ("Cholesky QR", orthonormalize_nearly_orthonormal),
            // Several blocks, the last one narrower: the projections between blocks.
            ("Cholesky QR in blocks of 16", |x| block_cholesky_qr(x, 16)),
        ];
        // Orthonormal, then random from column 35 on: blocked Cholesky QR hands over after
        // two blocks of 16 that it has orthonormalised already.
        let half = Mat::<f64>::from_fn(n, c, |i, j| if j < 35 { q[(i, j)] } else { g[(i, j)] });
        for (what, input) in [
            ("nearly orthonormal", &nearly),
            ("random", &g),
            ("half orthonormal", &half),
        ] {
            for (name, method) in methods {
                let mut x = input.clone();
                method(x.as_mut()).unwrap();
                let xtx = x.transpose() * &x;
                let a = x.transpose() * input;
                for j in 0..c {
                    for i in 0..c {
                        let id = if i == j { 1.0 } else { 0.0 };
                        assert!(
                            (xtx[(i, j)] - id).abs() < 1e-13,
                            "{name}, {what}: ({i}, {j})"
                        );
                        // X^T input is upper triangular: input's column j has no part
                        // along X's later columns.
                        if i > j {
                            assert!(
                                a[(i, j)].abs() < 1e-12,
                                "{name}, {what}: span at ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }
}
