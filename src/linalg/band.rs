//! The first stage of the two-stage reduction: a dense symmetric matrix to a band of
//! half-width b, `A = Q1 B Q1^T`, in place (PLASMA's and ELPA's `sy2sb`).
//!
//! Why two stages: the one-stage reduction ([`super::reduction`]) reads the whole trailing
//! matrix once per column in a matrix-vector product, so half of its 4/3 n^3 flops run at
//! the speed of memory. Here each panel of b columns is reduced by a QR factorisation of
//! the b columns below the band, and the trailing matrix is updated by `Q^T A22 Q` with two
//! matrix products of inner dimension b (about 2b flops per value read: at the speed of the
//! arithmetic on two cores, 11.6 s at n = 8192 against 28-30 s; a machine with many cores
//! per memory channel would want a wider band). The band
//! is then reduced to tridiagonal form by bulge chasing ([`super::bulge`]), O(n^2 b).
//!
//! Storage: panel p (columns p..p+b) keeps its reflectors below the band, `v_c` of column
//! c with its leading one at row c + b (the one is stored), as the one-stage reduction
//! keeps its own at row c + 1; [`super::back_transform`] applies both. The band itself
//! (b + 1 diagonals) is copied out as the panels finish, since the reflectors' ones take
//! the place of its outermost diagonal.
//!
//! Parallel steps run on a [`SpinTeam`] with parts fixed by the trailing matrix's order
//! alone, so the result is the same bit for bit whatever the team's size.

use faer::linalg::matmul::matmul as gemm;
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::back_transform::triangular_factor;
use super::bulge::chase_bulges;
use super::reduction::{
    for_each_share, householder, part_count, symmetric_rank_2k_update, Stages, Tridiagonal,
};
use super::team::{SpinTeam, TeamLease};
use crate::cpu::contiguous_mut;
use crate::progress::Progress;

/// A symmetric band matrix of half-width `width`: `diagonals[(d, c)] = B[c + d, c]` for
/// d in 0..=width (entries past the matrix's end are zero).
pub(crate) struct Band {
    pub(crate) width: usize,
    pub(crate) diagonals: Mat<f64>,
}

/// Columns of n values the two-stage reduction holds beside the matrix, for half-width b:
/// the band (b + 1 diagonals) and, in the first stage, V, `A22 V` and Y (then W) and the
/// two n x 2b operands of the trailing update; the second stage's working band (2b
/// diagonals) is less.
pub(crate) const fn workspace_columns(b: usize) -> usize {
    (b + 1) + 3 * b + 4 * b
}

/// Reduces the symmetric matrix whose lower triangle is that of `a` to a band of
/// half-width `width` in place: returns the band and the reflectors' taus (n - width of
/// them, or none), `a` keeping the reflectors below the band. Progress counts columns.
pub(crate) fn reduce_to_band(
    a: &mut Mat<f64>,
    width: usize,
    team: &mut SpinTeam,
    progress: &mut dyn Progress,
) -> (Band, Vec<f64>) {
    let n = a.nrows();
    let mut band = Band {
        width,
        diagonals: Mat::zeros(width + 1, n),
    };
    let mut taus = vec![0.0; n.saturating_sub(width)];
    progress.start("band reduction", n as u64);
    let mut p = 0;
    while p < n {
        let bs = width.min(n - p);
        let below = p + bs;
        if below < n {
            let r = n - below;
            let reflectors = bs.min(r);
            let panel_taus = factor_panel(a.as_mut().get_mut(below.., p..below), reflectors);
            copy_band(a.as_ref(), &mut band, p, bs);
            // The band's outermost diagonal now lives in `band`; the reflectors' ones take
            // its place.
            for t in 0..reflectors {
                a[(below + t, p + t)] = 1.0;
            }
            taus[p..p + reflectors].copy_from_slice(&panel_taus);
            update_trailing(team, a, p, width, &panel_taus);
        } else {
            copy_band(a.as_ref(), &mut band, p, bs);
        }
        progress.advance(bs as u64);
        p += bs;
    }
    progress.finish();
    (band, taus)
}

/// Householder QR of the panel (r x b, r >= 1) in place, `dgeqr2`: R on and above the
/// diagonal, the reflectors below it (their ones implied); returns the taus of the first
/// `reflectors` columns.
fn factor_panel(mut panel: MatMut<'_, f64>, reflectors: usize) -> Vec<f64> {
    let b = panel.ncols();
    let mut taus = vec![0.0; reflectors];
    for t in 0..reflectors {
        let x = &mut contiguous_mut(panel.rb_mut().col_mut(t))[t..];
        let (beta, tau) = householder(x);
        taus[t] = tau;
        if tau != 0.0 && t + 1 < b {
            x[0] = 1.0;
            let (left, right) = panel.rb_mut().split_at_col_mut(t + 1);
            let v = left.rb().get(t.., t..t + 1);
            let mut rest = right.get_mut(t.., ..);
            // rest -= tau v (v^T rest)
            let mut vtr = Mat::<f64>::zeros(1, b - t - 1);
            gemm(
                vtr.as_mut(),
                Accum::Replace,
                v.transpose(),
                rest.rb(),
                1.0,
                Par::Seq,
            );
            gemm(rest.rb_mut(), Accum::Add, v, vtr.as_ref(), -tau, Par::Seq);
        }
        panel[(t, t)] = beta;
    }
    taus
}

/// Columns p..p+bs of the band from `a`: their diagonal block's lower triangle and, below
/// it, R's upper triangle (rows p + bs.., the panel's QR), as far as the band reaches.
fn copy_band(a: MatRef<'_, f64>, band: &mut Band, p: usize, bs: usize) {
    let n = a.nrows();
    for c in p..p + bs {
        let last = (c + band.width).min(n - 1);
        for row in c..=last {
            band.diagonals[(row - c, c)] = a[(row, c)];
        }
    }
}

/// `A22 <- Q^T A22 Q` for the panel at column p, A22 = `a[p+b.., p+b..]`, Q = I - V T V^T
/// from the panel's reflectors: with Y = A22 V T and M = T^T V^T Y (symmetric),
/// W = Y - V M / 2 and `A22 -= V W^T + W V^T`.
fn update_trailing(team: &mut SpinTeam, a: &mut Mat<f64>, p: usize, b: usize, taus: &[f64]) {
    let n = a.nrows();
    let q = p + b;
    let r = n - q;
    let k = taus.len();
    // V: the reflectors with their ones, zeros above.
    let v = Mat::<f64>::from_fn(r, k, |i, j| if i < j { 0.0 } else { a[(q + i, p + j)] });
    let t = triangular_factor(&v, taus, Par::Seq);
    let mut av = Mat::<f64>::zeros(r, k);
    symmetric_times(team, a.as_ref().get(q.., q..), v.as_ref(), av.as_mut());
    let y = product(av.as_ref(), t.as_ref());
    let m = product(t.transpose(), product(v.transpose(), y.as_ref()).as_ref());
    let mut w = y;
    gemm(
        w.as_mut(),
        Accum::Add,
        v.as_ref(),
        m.as_ref(),
        -0.5,
        Par::Seq,
    );
    symmetric_rank_2k_update(team, a.as_mut().get_mut(q.., q..), v.as_ref(), w.as_ref());
}

/// `a b` on this thread (the team's members are spinning).
fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    gemm(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `out = S x` for the symmetric S stored in the lower triangle of the square `s`, its
/// rows split into [`part_count`] parts, each from three sequential products: the columns
/// left of the part's diagonal block (stored), the block itself (its lower triangle and
/// that triangle's transpose), and the columns right of it (the transpose of the stored
/// rows below).
fn symmetric_times(
    team: &mut SpinTeam,
    s: MatRef<'_, f64>,
    x: MatRef<'_, f64>,
    out: MatMut<'_, f64>,
) {
    let r = s.nrows();
    let parts = part_count(r);
    let bounds: Vec<usize> = (0..=parts).map(|t| t * r / parts).collect();
    let mut shares = Vec::with_capacity(parts);
    let mut rest = out;
    for t in 0..parts {
        let (share, tail) = rest.split_at_row_mut(bounds[t + 1] - bounds[t]);
        shares.push(share);
        rest = tail;
    }
    for_each_share(team, shares, |part, mut share| {
        let (i0, i1) = (bounds[part], bounds[part + 1]);
        if i0 == i1 {
            return;
        }
        gemm(
            share.rb_mut(),
            Accum::Replace,
            s.get(i0..i1, ..i0),
            x.get(..i0, ..),
            1.0,
            Par::Seq,
        );
        let block = s.get(i0..i1, i0..i1);
        matmul(
            share.rb_mut(),
            BlockStructure::Rectangular,
            Accum::Add,
            block,
            BlockStructure::TriangularLower,
            x.get(i0..i1, ..),
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        matmul(
            share.rb_mut(),
            BlockStructure::Rectangular,
            Accum::Add,
            block.transpose(),
            BlockStructure::StrictTriangularUpper,
            x.get(i0..i1, ..),
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        gemm(
            share,
            Accum::Add,
            s.get(i1.., i0..i1).transpose(),
            x.get(i1.., ..),
            1.0,
            Par::Seq,
        );
    });
}

/// The two-stage reduction of the symmetric matrix whose lower triangle is that of `a`:
/// to a band of half-width `width` (at most [`MAX_BAND_WIDTH`]), then to tridiagonal form
/// by [`super::bulge::chase_bulges`], both on a [`SpinTeam`] as large as the thread
/// budget allows.
pub(crate) fn tridiagonalize_in_two_stages(
    a: Mat<f64>,
    width: usize,
    progress: &mut dyn Progress,
) -> Tridiagonal {
    let lease = TeamLease::claim(faer::get_global_parallelism().degree());
    std::thread::scope(|scope| {
        let mut team = SpinTeam::new(scope, lease.size());
        two_stages(a, width, &mut team, progress)
    })
}

/// The widest band [`tridiagonalize_in_two_stages`] takes (the back-transformation's
/// kernels hold two reflectors' rows on the stack).
pub(crate) const MAX_BAND_WIDTH: usize = 64;

fn two_stages(
    mut a: Mat<f64>,
    width: usize,
    team: &mut SpinTeam,
    progress: &mut dyn Progress,
) -> Tridiagonal {
    assert!(
        (1..=MAX_BAND_WIDTH).contains(&width),
        "band half-width {width} outside 1..={MAX_BAND_WIDTH}"
    );
    let (band, taus) = reduce_to_band(&mut a, width, team, progress);
    let (diag, offdiag) = chase_bulges(&band, &mut a, team, progress);
    Tridiagonal {
        diag,
        offdiag,
        reflectors: a,
        taus,
        stages: Stages::Two { width },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::back_transform::apply_q;
    use crate::linalg::{assert_same_reduction, random_symmetric};
    use crate::progress::NoProgress;

    /// Q T Q^T, Q from the back-transformation of the identity, equals A, and Q is
    /// orthogonal: every size against every band width, the ends included (a band as wide
    /// as the matrix, a last panel shorter than the band, widths 1 and 2).
    #[test]
    fn two_stages_rebuild_the_matrix() {
        for n in [1, 2, 3, 5, 17, 70, 131] {
            for width in [1, 2, 3, 8, 32, MAX_BAND_WIDTH] {
                let a = random_symmetric(n, (n * 100 + width) as u64);
                let t = tridiagonalize_in_two_stages(a.clone(), width, &mut NoProgress);
                let mut q = Mat::<f64>::identity(n, n);
                apply_q(&t, &mut q, &mut NoProgress);
                let tri = t.dense_t();
                let rebuilt = &q * &tri * q.transpose();
                let qtq = q.transpose() * &q;
                let (mut err, mut orth) = (0.0f64, 0.0f64);
                for j in 0..n {
                    for i in 0..n {
                        err = err.max((rebuilt[(i, j)] - a[(i, j)]).abs());
                        let id = if i == j { 1.0 } else { 0.0 };
                        orth = orth.max((qtq[(i, j)] - id).abs());
                    }
                }
                assert!(
                    err < 1e-12 * n as f64,
                    "n = {n}, width {width}: error {err:e}"
                );
                assert!(
                    orth < 1e-13 * n as f64,
                    "n = {n}, width {width}: Q^T Q - I {orth:e}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "band half-width 65 outside 1..=64")]
    fn bands_wider_than_the_kernels_take_are_refused() {
        tridiagonalize_in_two_stages(random_symmetric(80, 1), MAX_BAND_WIDTH + 1, &mut NoProgress);
    }

    /// The reduction gives the same bits on teams of one, two and three threads: the
    /// products' parts and the bulge-chasing pipeline do not depend on the team's size.
    #[test]
    fn two_stages_do_not_depend_on_the_team_size() {
        let n = 600;
        let a = random_symmetric(n, 23);
        let reduce = |threads: usize| {
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, threads);
                two_stages(a.clone(), 8, &mut team, &mut NoProgress)
            })
        };
        let one = reduce(1);
        for threads in [2, 3] {
            assert_same_reduction(&reduce(threads), &one, &format!("{threads} threads"));
        }
    }
}
