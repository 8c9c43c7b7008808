//! Eigendecomposition of a dense symmetric matrix by LAPACK's `dsyevd` algorithm: a blocked
//! reduction to tridiagonal form (`dsytrd` with `dlatrd` panels, lower triangle), divide
//! and conquer on the tridiagonal matrix (`tridiag_eigen.rs`), and a blocked
//! back-transformation (`dormtr`).
//!
//! `A = Q T Q^T` with `Q = H_0 H_1 ... H_{n-2}`, `H_c = I - tau_c v_c v_c^T`, where `v_c` is
//! zero above row c + 1, one at row c + 1, and stored below it in column c of the reduced
//! matrix (the one is stored too).
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
//! step. The matrix products of the merge and the back-transformation use faer's global
//! parallelism.

use faer::linalg::matmul::matmul as gemm;
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::spin_team::SpinTeam;
use super::vector::{dot, dot_add_scaled, dot_add_scaled4, sub_scaled};
use crate::cpu::contiguous;

/// Columns per panel.
const PANEL: usize = 32;

/// Reflectors per block of the back-transformation: each block reads and writes all of z
/// once, so wider blocks mean less memory traffic (the triangular factor costs b^2 per
/// block).
const BACK_PANEL: usize = 128;

/// Trailing sizes below this run the symmetric product on one thread.
const PARALLEL_MIN: usize = 512;

/// The result of [`tridiagonalize`].
pub(crate) struct Tridiagonal {
    /// The diagonal of T (n).
    pub(crate) diag: Vec<f64>,
    /// The subdiagonal of T (n - 1).
    pub(crate) offdiag: Vec<f64>,
    /// Column c below the diagonal holds `v_c` (rows c + 1..n); the rest is scratch.
    pub(crate) reflectors: Mat<f64>,
    /// `tau_c` of each reflector (n - 1).
    pub(crate) taus: Vec<f64>,
}

/// Reduces the symmetric matrix whose lower triangle is that of `a` (n x n, column-major)
/// to tridiagonal form, in place, on a [`SpinTeam`] as large as faer's global parallelism.
pub(crate) fn tridiagonalize(a: Mat<f64>) -> Tridiagonal {
    let threads = faer::get_global_parallelism().degree().max(1);
    std::thread::scope(|scope| {
        let mut team = SpinTeam::new(scope, threads);
        tridiagonalize_with(&mut team, a)
    })
}

fn tridiagonalize_with(team: &mut SpinTeam, mut a: Mat<f64>) -> Tridiagonal {
    let n = a.nrows();
    let mut diag = vec![0.0; n];
    let mut offdiag = vec![0.0; n.saturating_sub(1)];
    let mut taus = vec![0.0; n.saturating_sub(1)];
    let mut w = Mat::<f64>::zeros(n, PANEL);
    let mut column = vec![0.0; n];
    let mut y = vec![0.0; n];
    // One partial product per team member beyond the first.
    let mut partials: Vec<Vec<f64>> = (1..team.size()).map(|_| vec![0.0; n]).collect();
    // V^T v and W^T v for the panel's earlier columns.
    let (mut v_dots, mut w_dots) = (Mat::<f64>::zeros(PANEL, 1), Mat::<f64>::zeros(PANEL, 1));
    let mut p = 0;
    while p + 1 < n {
        let bs = PANEL.min(n - 1 - p);
        for i in 0..bs {
            let c = p + i;
            // Column c, rows c..n, brought up to date with the panel's earlier reflectors:
            // A[c.., c] -= V[c.., ..i] W[c, ..i]^T + W[c.., ..i] V[c, ..i]^T.
            let col = &mut column[..n - c];
            col.copy_from_slice(&a.col_as_slice(c)[c..]);
            if i > 0 {
                let (vb, wb) = (a.as_ref().get(c.., p..c), w.as_ref().get(c.., ..i));
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
            diag[c] = col[0];
            // The reflector that zeroes rows c + 2.. of the column.
            let x = &mut col[1..];
            let alpha = x[0];
            let xnorm = dot(&x[1..], &x[1..]).sqrt();
            let (beta, tau) = if xnorm == 0.0 {
                (alpha, 0.0)
            } else {
                let beta = -alpha.hypot(xnorm).copysign(alpha);
                let scale = 1.0 / (alpha - beta);
                for xi in &mut x[1..] {
                    *xi *= scale;
                }
                (beta, (beta - alpha) / beta)
            };
            x[0] = 1.0;
            offdiag[c] = beta;
            taus[c] = tau;
            a.col_as_slice_mut(c)[c..].copy_from_slice(col);
            // w = tau (A22 v - W V^T v - V W^T v), then w -= (tau / 2)(w^T v) v, with A22
            // the trailing matrix as of the panel's start.
            let r = n - c - 1;
            let v = &column[1..n - c];
            let y = &mut y[..r];
            symmetric_product(team, a.as_ref(), c + 1, v, y, &mut partials);
            if i > 0 {
                // The panel's pending updates of A22: y -= W (V^T v) + V (W^T v).
                let (vb, wb) = (a.as_ref().get(c + 1.., p..c), w.as_ref().get(c + 1.., ..i));
                let vm = MatRef::from_column_major_slice(v, r, 1);
                let mut vtv = v_dots.as_mut().get_mut(..i, ..);
                let mut wtv = w_dots.as_mut().get_mut(..i, ..);
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
            w.col_as_slice_mut(i)[c + 1..].copy_from_slice(y);
        }
        // The panel's rank-2k update of the trailing matrix (lower triangle).
        let q = p + bs;
        if q < n {
            // One product [V W] [W V]^T instead of two: the trailing matrix is read and
            // written once per panel.
            let r = n - q;
            let mut lhs = Mat::<f64>::zeros(r, 2 * bs);
            lhs.as_mut()
                .get_mut(.., ..bs)
                .copy_from(a.as_ref().get(q.., p..q));
            lhs.as_mut()
                .get_mut(.., bs..)
                .copy_from(w.as_ref().get(q.., ..bs));
            let mut rhs = Mat::<f64>::zeros(r, 2 * bs);
            rhs.as_mut()
                .get_mut(.., ..bs)
                .copy_from(w.as_ref().get(q.., ..bs));
            rhs.as_mut()
                .get_mut(.., bs..)
                .copy_from(a.as_ref().get(q.., p..q));
            rank_2k_update(
                team,
                a.as_mut().get_mut(q.., q..),
                lhs.as_ref(),
                rhs.as_ref(),
            );
        }
        p = q;
    }
    if n > 0 {
        diag[n - 1] = a[(n - 1, n - 1)];
    }
    Tridiagonal {
        diag,
        offdiag,
        reflectors: a,
        taus,
    }
}

/// `z <- Q z` for the Q of `t` (`A = Q T Q^T`), panel by panel in compact WY form
/// (`H_p ... H_{p+b-1} = I - V F V^T`, F upper triangular), last panel first: two matrix
/// products per panel.
pub(crate) fn apply_q(t: &Tridiagonal, z: &mut Mat<f64>) {
    let n = t.diag.len();
    let reflectors = n.saturating_sub(1);
    let par = faer::get_global_parallelism();
    let mut end = reflectors;
    while end > 0 {
        let start = end.saturating_sub(BACK_PANEL);
        let bs = end - start;
        let rows = n - (start + 1);
        // v_c is zero above row c + 1 and stored (with its leading one) below.
        let v = Mat::<f64>::from_fn(rows, bs, |r, c| {
            let (row, col) = (start + 1 + r, start + c);
            if row <= col {
                0.0
            } else {
                t.reflectors[(row, col)]
            }
        });
        // F by LAPACK's dlarft recurrence, column i from V^T v_i: all of V^T V in one
        // matrix product rather than b^2 / 2 separate dot products.
        let vtv = v.transpose() * &v;
        let mut f = Mat::<f64>::zeros(bs, bs);
        for i in 0..bs {
            let tau = t.taus[start + i];
            f[(i, i)] = tau;
            if i > 0 && tau != 0.0 {
                for r in 0..i {
                    f[(r, i)] = (r..i).map(|c| f[(r, c)] * -tau * vtv[(c, i)]).sum();
                }
            }
        }
        let mut target = z.as_mut().get_mut(start + 1.., ..);
        let mut vtz = Mat::<f64>::zeros(bs, target.ncols());
        gemm(
            &mut vtz,
            Accum::Replace,
            v.transpose(),
            target.as_ref(),
            1.0,
            par,
        );
        let fvtz = &f * &vtz;
        gemm(
            &mut target,
            Accum::Add,
            v.as_ref(),
            fvtz.as_ref(),
            -1.0,
            par,
        );
        end = start;
    }
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric matrix whose lower triangle
/// is that of `a`: blocked tridiagonalisation, divide and conquer on the tridiagonal
/// matrix, and the back-transformation.
pub(crate) fn symmetric_eigen(mut a: Mat<f64>) -> crate::error::Result<(Vec<f64>, Mat<f64>)> {
    // As dsyevd and dstedc do, the matrix is first scaled so that its largest entry is
    // about 1: otherwise the squared norms of the reflectors underflow (silently dropping
    // a column) or overflow near the ends of the f64 range, and so do the secular
    // equation's squared terms near its poles. The factor is a power of two, so the
    // scaling is exact, and so is scaling the eigenvalues back; kernels of order 1 skip it.
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
    let t = tridiagonalize(a);
    let (mut values, mut z) = super::tridiag_eigen::tridiagonal_eigen(&t.diag, &t.offdiag)?;
    apply_q(&t, &mut z);
    if exponent != 0 {
        for v in &mut values {
            *v = times_power_of_two(*v, -exponent);
        }
    }
    Ok((values, z))
}

/// `x 2^e`, exactly (barring underflow), for any |e| up to about 2100: in two factors,
/// since 2^e alone is not an f64 beyond |e| = 1023.
fn times_power_of_two(x: f64, e: i32) -> f64 {
    let half = e / 2;
    x * 2f64.powi(half) * 2f64.powi(e - half)
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

/// `dst -= lhs rhs^T` on the lower triangle of the square `dst`, its columns split across
/// the team by area, each member's share one sequential product (two: the diagonal block
/// and the rectangle below it).
fn rank_2k_update(
    team: &mut SpinTeam,
    dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
) {
    let r = dst.nrows();
    let bounds = equal_area_columns(r, team.size());
    let mut shares = Vec::with_capacity(team.size());
    let mut rest = dst;
    for t in 0..team.size() {
        let (share, tail) = rest.split_at_col_mut(bounds[t + 1] - bounds[t]);
        shares.push(std::sync::Mutex::new(Some(share)));
        rest = tail;
    }
    team.run(|member| {
        let Some(share) = shares[member].lock().expect("unpoisoned").take() else {
            return;
        };
        let (j0, j1) = (bounds[member], bounds[member + 1]);
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
        faer::linalg::matmul::matmul(
            below,
            Accum::Add,
            lhs.subrows(j1, r - j1),
            rhs.subrows(j0, j1 - j0).transpose(),
            -1.0,
            Par::Seq,
        );
    });
}

/// `y = S v` for the symmetric S = `a[s.., s..]` stored in its lower triangle; each column
/// is read once. The team's members take column ranges of equal area, members beyond the
/// first summing into their own `partials`.
fn symmetric_product(
    team: &mut SpinTeam,
    a: MatRef<'_, f64>,
    s: usize,
    v: &[f64],
    y: &mut [f64],
    partials: &mut [Vec<f64>],
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
    if r < PARALLEL_MIN || team.size() == 1 {
        y.fill(0.0);
        columns(0..r, y);
        return;
    }
    let bounds = equal_area_columns(r, team.size());
    let outputs: Vec<std::sync::Mutex<&mut [f64]>> = std::iter::once(&mut *y)
        .chain(partials.iter_mut().map(|p| &mut p[..r]))
        .map(std::sync::Mutex::new)
        .collect();
    team.run(|member| {
        let mut out = outputs[member].lock().expect("unpoisoned");
        columns(bounds[member]..bounds[member + 1], &mut out);
    });
    drop(outputs);
    for (t, partial) in partials.iter().enumerate() {
        let from = bounds[t + 1];
        for (yi, pi) in y[from..].iter_mut().zip(&partial[from..r]) {
            *yi += pi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_symmetric(n: usize, seed: u64) -> Mat<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
        Mat::from_fn(n, n, |i, j| b[(i, j)] + b[(j, i)])
    }

    /// The symmetric product and the rank-2k update, split across teams of one to three
    /// threads, against dense products; sizes past PARALLEL_MIN, offsets and widths that
    /// are not multiples of the 4-column block.
    #[test]
    fn team_splits_match_dense_products() {
        let n = 700;
        let a = random_symmetric(n, 3);
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        for threads in 1..=3 {
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, threads);
                let mut partials: Vec<Vec<f64>> = (1..threads).map(|_| vec![0.0; n]).collect();
                for s in [0, 1, 3, 150, 690] {
                    let r = n - s;
                    let mut y = vec![f64::NAN; r];
                    symmetric_product(&mut team, a.as_ref(), s, &v[s..], &mut y, &mut partials);
                    for (i, yi) in y.iter().enumerate() {
                        let want: f64 = (0..r).map(|j| a[(s + i, s + j)] * v[s + j]).sum();
                        assert!(
                            (yi - want).abs() <= 1e-12 * r as f64,
                            "{threads} threads, s = {s}, row {i}: {yi} vs {want}"
                        );
                    }
                }
                for (r, width) in [(1, 2), (5, 2), (613, 64)] {
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
            let t = tridiagonalize(a.clone());
            let mut m = Mat::<f64>::from_fn(n, n, |i, j| {
                if i == j {
                    t.diag[i]
                } else if i == j + 1 {
                    t.offdiag[j]
                } else if j == i + 1 {
                    t.offdiag[i]
                } else {
                    0.0
                }
            });
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
}

#[cfg(test)]
mod eigen_tests {
    use faer::Mat;

    #[test]
    fn symmetric_eigen_matches_faer_with_orthonormal_vectors() {
        use rand::{Rng, SeedableRng};
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
        for (what, a) in cases {
            let (values, z) = super::symmetric_eigen(a.clone()).unwrap();
            crate::dpp::tridiag_eigen::assert_eigendecomposition(a.as_ref(), &values, &z, &what);
        }
    }
}
