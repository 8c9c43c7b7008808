//! Reduction of a dense symmetric matrix to tridiagonal form, LAPACK's `dsytrd` with
//! `dlatrd` panels (lower triangle), in place.
//!
//! `A = Q T Q^T` with `Q = H_0 H_1 ... H_{n-2}`, `H_c = I - tau_c v_c v_c^T`, where `v_c` is
//! zero above row c + 1, one at row c + 1, and stored below it in column c of the reduced
//! matrix (the one is stored too). [`crate::linalg::back_transform`] applies Q.
//!
//! Why not faer's `self_adjoint_evd`: its reduction updates the whole trailing matrix after
//! every column (a fused rank-2 update and product: each step reads and writes
//! (n - c)^2 / 2 values). Here each column only reads the trailing matrix once (a symmetric
//! matrix-vector product); the rank-2 updates of a panel of [`PANEL`] columns are applied
//! together as one matrix product. The reduction is memory-bound, so half the traffic is
//! about half the time: at n = 4000 this solver takes about 5-6 s on two cores where
//! faer's takes 8 (see README, Benchmarks).
//!
//! The reduction runs on a [`SpinTeam`]: thousands of sub-millisecond parallel steps, one
//! per column, where waking rayon's parked workers each time would cost as much as the
//! step. Both parallel steps (the symmetric product and the panel's rank-2k update) split
//! their work into [`part_count`] parts fixed by the trailing matrix's order alone; members
//! take parts in turn and the parts' partial sums are added in part order, so the result is
//! the same bit for bit whatever the team's size (a smaller team when another solve holds
//! the thread budget, or another thread count).

use std::sync::Mutex;

use faer::linalg::matmul::matmul as gemm;
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::simd::{dot, dot_add_scaled, dot_add_scaled4, sub_scaled};
use super::team::{SpinTeam, TeamLease};
use crate::cpu::contiguous;
use crate::progress::Progress;

/// Columns per panel.
pub(crate) const PANEL: usize = 32;

/// The part counts a parallel step chooses from (see [`part_count`]): from 12 on, each is
/// divisible by the usual team sizes (2, 3, 4, 6, 8, 12, and 16 at 48), so that members
/// get equal shares.
const PART_COUNTS: [usize; 7] = [1, 2, 4, 8, 12, 24, 48];

/// Columns of the trailing matrix per part, at the least. The parts' partial sums cost
/// about `4/3 r` memory operations per part and column (zeroing, and adding in order), so
/// with at most `r / 256` parts they stay under 0.5% of the symmetric product's `r^2 / 2`
/// reads; below 512 columns a step runs as one part, on one thread.
const PART_MIN_COLUMNS: usize = 256;

/// Columns of n values the reduction holds beside the matrix: W, the two n x 2 PANEL
/// operands of the trailing update, the symmetric product's parts and the column.
pub(crate) const WORKSPACE_COLUMNS: usize = 5 * PANEL + PART_COUNTS[PART_COUNTS.len() - 1] + 1;

/// The result of [`tridiagonalize`] or [`super::band::tridiagonalize_in_two_stages`].
pub(crate) struct Tridiagonal {
    /// The diagonal of T (n).
    pub(crate) diag: Vec<f64>,
    /// The subdiagonal of T (n - 1).
    pub(crate) offdiag: Vec<f64>,
    /// Column c holds `v_c` from its leading one at row c + 1 (one stage) or c + b (two
    /// stages, which keep the second stage's reflectors in the strict upper triangle); the
    /// rest is scratch.
    pub(crate) reflectors: Mat<f64>,
    /// `tau_c` of each reflector (n - 1, or n - b after two stages).
    pub(crate) taus: Vec<f64>,
    /// Which reduction made T.
    pub(crate) stages: Stages,
}

#[cfg(test)]
impl Tridiagonal {
    /// T as a dense matrix.
    pub(crate) fn dense_t(&self) -> Mat<f64> {
        let n = self.diag.len();
        Mat::from_fn(n, n, |i, j| {
            if i == j {
                self.diag[i]
            } else if i == j + 1 {
                self.offdiag[j]
            } else if j == i + 1 {
                self.offdiag[i]
            } else {
                0.0
            }
        })
    }
}

/// The reduction that made a [`Tridiagonal`], which says where its reflectors are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stages {
    /// This module's: `v_c` from row c + 1, n - 1 of them.
    One,
    /// [`super::band`] then [`super::bulge`]: the first stage's `v_c` from row
    /// c + `width` (n - width of them, the taus), the second stage's in the strict upper
    /// triangle.
    Two { width: usize },
}

/// Reduces the symmetric matrix whose lower triangle is that of `a` (n x n, column-major)
/// to tridiagonal form, in place, on a [`SpinTeam`] as large as the thread budget allows
/// (faer's global parallelism, less what other solves hold), reporting progress by panel.
pub(crate) fn tridiagonalize(a: Mat<f64>, progress: &mut dyn Progress) -> Tridiagonal {
    let lease = TeamLease::claim(faer::get_global_parallelism().degree());
    std::thread::scope(|scope| {
        let mut team = SpinTeam::new(scope, lease.size());
        Reduction::new(a).run(&mut team, progress)
    })
}

/// The reduction's state between steps.
struct Reduction {
    /// The matrix: the reduced columns hold their reflectors, the trailing lower triangle
    /// is brought up to date at each panel's end.
    a: Mat<f64>,
    diag: Vec<f64>,
    offdiag: Vec<f64>,
    taus: Vec<f64>,
    /// The current panel's W (`dlatrd`'s): column i belongs to the panel's column i, so that
    /// the trailing matrix, as of the panel's start, is updated by `- V W^T - W V^T`.
    w: Mat<f64>,
    /// The column being reduced, from its diagonal down; then `v` from its second entry.
    column: Vec<f64>,
    /// The symmetric product's partial sums, one per part; part 0 ends up with the sum.
    products: Vec<Vec<f64>>,
    /// `V^T v` and `W^T v` over the panel's earlier columns.
    v_dots: Mat<f64>,
    w_dots: Mat<f64>,
}

impl Reduction {
    fn new(a: Mat<f64>) -> Self {
        let n = a.nrows();
        Reduction {
            diag: vec![0.0; n],
            offdiag: vec![0.0; n.saturating_sub(1)],
            taus: vec![0.0; n.saturating_sub(1)],
            w: Mat::zeros(n, PANEL),
            column: vec![0.0; n],
            products: (0..part_count(n)).map(|_| vec![0.0; n]).collect(),
            v_dots: Mat::zeros(PANEL, 1),
            w_dots: Mat::zeros(PANEL, 1),
            a,
        }
    }

    /// Reduces panel after panel, each column by [`Reduction::reduce_column`] and each
    /// panel's trailing update by [`Reduction::update_trailing`].
    fn run(mut self, team: &mut SpinTeam, progress: &mut dyn Progress) -> Tridiagonal {
        let n = self.a.nrows();
        progress.start("tridiagonal reduction", n.saturating_sub(1) as u64);
        let mut p = 0;
        while p + 1 < n {
            let bs = PANEL.min(n - 1 - p);
            for i in 0..bs {
                self.reduce_column(team, p, i);
            }
            self.update_trailing(team, p, bs);
            progress.advance(bs as u64);
            p += bs;
        }
        progress.finish();
        if n > 0 {
            self.diag[n - 1] = self.a[(n - 1, n - 1)];
        }
        Tridiagonal {
            diag: self.diag,
            offdiag: self.offdiag,
            reflectors: self.a,
            taus: self.taus,
            stages: Stages::One,
        }
    }

    /// Column `c = p + i` of the panel starting at column p: brought up to date, reduced by
    /// its reflector, and its column of W.
    fn reduce_column(&mut self, team: &mut SpinTeam, p: usize, i: usize) {
        let c = p + i;
        self.update_column(p, i);
        let tau = self.reflect(c);
        self.panel_column(team, p, i, tau);
    }

    /// `column = A[c.., c]` as of now: the stored column less the panel's pending updates,
    /// `V[c.., ..i] W[c, ..i]^T + W[c.., ..i] V[c, ..i]^T`.
    fn update_column(&mut self, p: usize, i: usize) {
        let n = self.a.nrows();
        let c = p + i;
        let col = &mut self.column[..n - c];
        col.copy_from_slice(&self.a.col_as_slice(c)[c..]);
        if i == 0 {
            return;
        }
        let (vb, wb) = (
            self.a.as_ref().get(c.., p..c),
            self.w.as_ref().get(c.., ..i),
        );
        let mut col = MatMut::from_column_major_slice_mut(col, n - c, 1);
        gemm(
            col.rb_mut(),
            Accum::Add,
            vb,
            wb.get(..1, ..).transpose(),
            -1.0,
            Par::Seq,
        );
        gemm(
            col,
            Accum::Add,
            wb,
            vb.get(..1, ..).transpose(),
            -1.0,
            Par::Seq,
        );
    }

    /// The reflector that zeroes rows c + 2.. of the up-to-date column c (`dlarfg`): writes
    /// T's diagonal and subdiagonal entry, tau, and `v_c` (into the column and into A);
    /// returns tau.
    fn reflect(&mut self, c: usize) -> f64 {
        let n = self.a.nrows();
        let col = &mut self.column[..n - c];
        self.diag[c] = col[0];
        let x = &mut col[1..];
        let (beta, tau) = householder(x);
        x[0] = 1.0;
        self.offdiag[c] = beta;
        self.taus[c] = tau;
        self.a.col_as_slice_mut(c)[c..].copy_from_slice(col);
        tau
    }

    /// Column i of W: `w = tau (A22 v - W V^T v - V W^T v)`, then
    /// `w -= (tau / 2)(w^T v) v`, with A22 the trailing matrix as of the panel's start.
    fn panel_column(&mut self, team: &mut SpinTeam, p: usize, i: usize, tau: f64) {
        let n = self.a.nrows();
        let c = p + i;
        let r = n - c - 1;
        let v = &self.column[1..n - c];
        symmetric_product(team, self.a.as_ref(), c + 1, v, &mut self.products);
        let y = &mut self.products[0][..r];
        if i > 0 {
            // The panel's pending updates of A22: y -= W (V^T v) + V (W^T v).
            let (vb, wb) = (
                self.a.as_ref().get(c + 1.., p..c),
                self.w.as_ref().get(c + 1.., ..i),
            );
            let vm = MatRef::from_column_major_slice(v, r, 1);
            let mut vtv = self.v_dots.as_mut().get_mut(..i, ..);
            let mut wtv = self.w_dots.as_mut().get_mut(..i, ..);
            gemm(
                vtv.rb_mut(),
                Accum::Replace,
                vb.transpose(),
                vm,
                1.0,
                Par::Seq,
            );
            gemm(
                wtv.rb_mut(),
                Accum::Replace,
                wb.transpose(),
                vm,
                1.0,
                Par::Seq,
            );
            let mut ym = MatMut::from_column_major_slice_mut(&mut *y, r, 1);
            gemm(ym.rb_mut(), Accum::Add, wb, vtv.rb(), -1.0, Par::Seq);
            gemm(ym, Accum::Add, vb, wtv.rb(), -1.0, Par::Seq);
        }
        for yi in y.iter_mut() {
            *yi *= tau;
        }
        let half = -0.5 * tau * dot(y, v);
        sub_scaled(y, -half, v);
        self.w.col_as_slice_mut(i)[c + 1..].copy_from_slice(y);
    }

    /// The panel's rank-2k update of the trailing matrix's lower triangle: one product
    /// `[V W] [W V]^T` instead of two, so the trailing matrix is read and written once per
    /// panel.
    fn update_trailing(&mut self, team: &mut SpinTeam, p: usize, bs: usize) {
        let n = self.a.nrows();
        let q = p + bs;
        if q >= n {
            return;
        }
        let (reduced, trailing) = self.a.as_mut().split_at_col_mut(q);
        symmetric_rank_2k_update(
            team,
            trailing.get_mut(q.., ..),
            reduced.rb().get(q.., p..q),
            self.w.as_ref().get(q.., ..bs),
        );
    }
}

/// The reflector `H = I - tau v v^T` with `H x = beta e_1` (`dlarfg`): overwrites
/// `x[1..]` with `v[1..]` (v's leading one is implied) and returns beta and tau; tau is 0
/// (H = I) when `x[1..]` is zero already.
pub(super) fn householder(x: &mut [f64]) -> (f64, f64) {
    let alpha = x[0];
    let xnorm = dot(&x[1..], &x[1..]).sqrt();
    if xnorm == 0.0 {
        return (alpha, 0.0);
    }
    let beta = -alpha.hypot(xnorm).copysign(alpha);
    let scale = 1.0 / (alpha - beta);
    for xi in &mut x[1..] {
        *xi *= scale;
    }
    (beta, (beta - alpha) / beta)
}

/// The number of parts a parallel step on a trailing matrix of order `r` is split into:
/// a function of `r` alone (see the module docs), the largest of [`PART_COUNTS`] that
/// leaves each part [`PART_MIN_COLUMNS`].
pub(super) fn part_count(r: usize) -> usize {
    PART_COUNTS
        .into_iter()
        .rev()
        .find(|&p| p * PART_MIN_COLUMNS <= r)
        .unwrap_or(1)
}

/// Column boundaries that split the lower triangle of an r x r matrix into `parts` ranges
/// of (nearly) equal area, at multiples of 4 (the symmetric product's column block).
fn equal_area_columns(r: usize, parts: usize) -> Vec<usize> {
    let mut bounds: Vec<usize> = (0..=parts)
        .map(|t| {
            // Columns 0..j hold r j - j^2 / 2 of the triangle's r^2 / 2 values.
            let j = r as f64 * (1.0 - (1.0 - t as f64 / parts as f64).sqrt());
            ((j as usize) / 4 * 4).min(r)
        })
        .collect();
    bounds[parts] = r;
    bounds
}

/// Runs `job(part)` for every part in `0..parts`, the team's members taking parts in turn
/// (member t takes parts t, t + size, ...).
pub(super) fn for_each_part(team: &mut SpinTeam, parts: usize, job: impl Fn(usize) + Sync) {
    let size = team.size();
    if size == 1 || parts == 1 {
        (0..parts).for_each(job);
        return;
    }
    team.run(|member| (member..parts).step_by(size).for_each(&job));
}

/// Runs `job(part, share)` for every part's share of an output, the team's members taking
/// parts in turn as in [`for_each_part`].
pub(super) fn for_each_share<'a>(
    team: &mut SpinTeam,
    shares: Vec<MatMut<'a, f64>>,
    job: impl Fn(usize, MatMut<'a, f64>) + Sync,
) {
    let shares: Vec<Mutex<Option<MatMut<'a, f64>>>> =
        shares.into_iter().map(|s| Mutex::new(Some(s))).collect();
    for_each_part(team, shares.len(), |part| {
        if let Some(share) = shares[part].lock().expect("unpoisoned").take() {
            job(part, share);
        }
    });
}

/// `dst -= V W^T + W V^T` on the lower triangle of the square `dst`: one product
/// `[V W] [W V]^T` ([`rank_2k_update`]), so `dst` is read and written once.
pub(super) fn symmetric_rank_2k_update(
    team: &mut SpinTeam,
    dst: MatMut<'_, f64>,
    v: MatRef<'_, f64>,
    w: MatRef<'_, f64>,
) {
    let (r, k) = (v.nrows(), v.ncols());
    let mut lhs = Mat::<f64>::zeros(r, 2 * k);
    lhs.as_mut().get_mut(.., ..k).copy_from(v);
    lhs.as_mut().get_mut(.., k..).copy_from(w);
    let mut rhs = Mat::<f64>::zeros(r, 2 * k);
    rhs.as_mut().get_mut(.., ..k).copy_from(w);
    rhs.as_mut().get_mut(.., k..).copy_from(v);
    rank_2k_update(team, dst, lhs.as_ref(), rhs.as_ref());
}

/// `dst -= lhs rhs^T` on the lower triangle of the square `dst`, its columns split into
/// [`part_count`] parts of equal area, each part one or two sequential products (the
/// diagonal block and the rectangle below it).
fn rank_2k_update(
    team: &mut SpinTeam,
    dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
) {
    let r = dst.nrows();
    let bounds = equal_area_columns(r, part_count(r));
    let mut shares = Vec::with_capacity(bounds.len() - 1);
    let mut rest = dst;
    for t in 0..bounds.len() - 1 {
        let (share, tail) = rest.split_at_col_mut(bounds[t + 1] - bounds[t]);
        shares.push(share);
        rest = tail;
    }
    for_each_share(team, shares, |part, share| {
        let (j0, j1) = (bounds[part], bounds[part + 1]);
        if j0 == j1 {
            return;
        }
        let (diagonal, below) = share.split_at_row_mut(j1);
        let diagonal = diagonal.subrows_mut(j0, j1 - j0);
        matmul(
            diagonal,
            BlockStructure::TriangularLower,
            Accum::Add,
            lhs.subrows(j0, j1 - j0),
            BlockStructure::Rectangular,
            rhs.subrows(j0, j1 - j0).transpose(),
            BlockStructure::Rectangular,
            -1.0,
            Par::Seq,
        );
        gemm(
            below,
            Accum::Add,
            lhs.subrows(j1, r - j1),
            rhs.subrows(j0, j1 - j0).transpose(),
            -1.0,
            Par::Seq,
        );
    });
}

/// `S v` for the symmetric S = `a[s.., s..]` stored in its lower triangle, into
/// `products[0][..r]`; each column is read once. The columns are split into
/// [`part_count`] parts of equal area, part t summing into `products[t]`, and the parts are
/// added in order.
fn symmetric_product(
    team: &mut SpinTeam,
    a: MatRef<'_, f64>,
    s: usize,
    v: &[f64],
    products: &mut [Vec<f64>],
) {
    let r = v.len();
    let col = |j: usize| &contiguous(a.col(s + j))[s + j..];
    let columns = |range: std::ops::Range<usize>, y: &mut [f64]| {
        y[range.start..].fill(0.0);
        let mut j = range.start;
        // Four columns at a time: their 4 x 4 corner element by element, the rows below
        // it (which all four have) in one pass.
        while j + 4 <= range.end {
            for jj in j..j + 4 {
                let c = col(jj);
                y[jj] += c[0] * v[jj];
                for rr in jj + 1..j + 4 {
                    y[rr] += c[rr - jj] * v[jj];
                    y[jj] += c[rr - jj] * v[rr];
                }
            }
            let below = j + 4;
            let cols = [
                &col(j)[below - j..],
                &col(j + 1)[below - j - 1..],
                &col(j + 2)[below - j - 2..],
                &col(j + 3)[below - j - 3..],
            ];
            let a4 = [v[j], v[j + 1], v[j + 2], v[j + 3]];
            let dots = dot_add_scaled4(cols, &v[below..], &mut y[below..], a4);
            for t in 0..4 {
                y[j + t] += dots[t];
            }
            j += 4;
        }
        for j in j..range.end {
            let c = col(j);
            let below = dot_add_scaled(&c[1..], &v[j + 1..], &mut y[j + 1..], v[j]);
            y[j] += c[0] * v[j] + below;
        }
    };
    let parts = part_count(r);
    let bounds = equal_area_columns(r, parts);
    {
        let outputs: Vec<Mutex<&mut [f64]>> = products[..parts]
            .iter_mut()
            .map(|p| Mutex::new(&mut p[..r]))
            .collect();
        for_each_part(team, parts, |part| {
            let mut out = outputs[part].lock().expect("unpoisoned");
            columns(bounds[part]..bounds[part + 1], &mut out);
        });
    }
    let (sum, rest) = products.split_at_mut(1);
    for (part, partial) in rest[..parts - 1].iter().enumerate() {
        let from = bounds[part + 1];
        for (yi, pi) in sum[0][from..r].iter_mut().zip(&partial[from..r]) {
            *yi += pi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{assert_same_reduction, random_symmetric};

    /// The symmetric product and the rank-2k update, split across teams of one to three
    /// threads, against dense products and bit for bit against the one-thread result;
    /// sizes split into parts, offsets and widths that are not multiples of the 4-column
    /// block.
    #[test]
    fn team_splits_match_dense_products() {
        let n = 1100;
        let a = random_symmetric(n, 3);
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut first: Vec<Vec<f64>> = Vec::new();
        for threads in 1..=3 {
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, threads);
                let mut products: Vec<Vec<f64>> =
                    (0..part_count(n)).map(|_| vec![f64::NAN; n]).collect();
                for (case, s) in [0, 1, 3, 150, 690, 1090].into_iter().enumerate() {
                    let r = n - s;
                    symmetric_product(&mut team, a.as_ref(), s, &v[s..], &mut products);
                    let y = &products[0][..r];
                    if threads == 1 {
                        first.push(y.to_vec());
                    }
                    assert!(
                        y.iter()
                            .zip(&first[case])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{threads} threads, s = {s}: not the one-thread result"
                    );
                    for (i, yi) in y.iter().enumerate() {
                        let want: f64 = (0..r).map(|j| a[(s + i, s + j)] * v[s + j]).sum();
                        assert!(
                            (yi - want).abs() <= 1e-12 * r as f64,
                            "{threads} threads, s = {s}, row {i}: {yi} vs {want}"
                        );
                    }
                }
                for (r, width) in [(1, 2), (5, 2), (613, 64), (1030, 64)] {
                    let lhs = Mat::<f64>::from_fn(r, width, |i, j| ((i * 3 + j) as f64).cos());
                    let rhs = Mat::<f64>::from_fn(r, width, |i, j| ((i + 5 * j) as f64).sin());
                    let mut dst = random_symmetric(r, r as u64);
                    let before = dst.clone();
                    rank_2k_update(&mut team, dst.as_mut(), lhs.as_ref(), rhs.as_ref());
                    let product = &lhs * rhs.transpose();
                    for j in 0..r {
                        for i in 0..r {
                            let want = if i >= j {
                                before[(i, j)] - product[(i, j)]
                            } else {
                                before[(i, j)]
                            };
                            assert!(
                                (dst[(i, j)] - want).abs() <= 1e-12 * width as f64,
                                "{threads} threads, r = {r}: ({i}, {j})"
                            );
                        }
                    }
                }
            });
        }
    }

    /// Q T Q^T rebuilt from the reflectors equals A.
    #[test]
    fn reflectors_and_tridiagonal_rebuild_the_matrix() {
        for n in [1, 2, 3, 33, 70, 560] {
            let a = random_symmetric(n, n as u64);
            let t = tridiagonalize(a.clone(), &mut crate::progress::NoProgress);
            let mut m = t.dense_t();
            // M <- H_c M H_c for c = n-2 .. 0 gives Q T Q^T.
            for c in (0..n.saturating_sub(1)).rev() {
                let v: Vec<f64> = (0..n)
                    .map(|r| if r <= c { 0.0 } else { t.reflectors[(r, c)] })
                    .collect();
                let tau = t.taus[c];
                for _ in 0..2 {
                    // M <- H M, then transpose (M symmetric throughout).
                    for j in 0..n {
                        let s: f64 = (0..n).map(|r| v[r] * m[(r, j)]).sum();
                        for r in 0..n {
                            m[(r, j)] -= tau * s * v[r];
                        }
                    }
                    m = m.transpose().to_owned();
                }
            }
            let mut worst = 0.0f64;
            for j in 0..n {
                for i in 0..n {
                    worst = worst.max((m[(i, j)] - a[(i, j)]).abs());
                }
            }
            assert!(worst < 1e-12 * n as f64, "n = {n}: max error {worst:e}");
        }
    }

    /// The whole reduction gives the same bits on teams of one, two and three threads.
    #[test]
    fn reduction_does_not_depend_on_the_team_size() {
        let n = 1100;
        let a = random_symmetric(n, 17);
        let reduce = |threads: usize| {
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, threads);
                Reduction::new(a.clone()).run(&mut team, &mut crate::progress::NoProgress)
            })
        };
        let one = reduce(1);
        for threads in [2, 3] {
            assert_same_reduction(&reduce(threads), &one, &format!("{threads} threads"));
        }
    }
}
