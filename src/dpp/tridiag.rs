//! Blocked reduction of a symmetric matrix to tridiagonal form (LAPACK's `dsytrd` with
//! `dlatrd` panels, lower triangle), the first phase of the eigendecomposition.
//!
//! `A = Q T Q^T` with `Q = H_0 H_1 ... H_{n-2}`, `H_c = I - tau_c v_c v_c^T`, where `v_c` is
//! zero above row c + 1, one at row c + 1, and stored below it in column c of the reduced
//! matrix (the one is stored too).
//!
//! Why not faer's: its reduction updates the whole trailing matrix after every column (a
//! fused rank-2 update and product: each step reads and writes (n - c)^2 / 2 values). Here
//! each column only reads the trailing matrix once (a symmetric matrix-vector product);
//! the rank-2 updates of a panel of [`PANEL`] columns are applied together as one
//! matrix product. The reduction is memory-bound, so half the traffic is about half the
//! time on large matrices.

// Not wired into Spectrum::new yet (see the branch history): only the tests call it.
#![allow(dead_code)]

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef};

use super::vector::{dot, dot_add_scaled, dot_add_scaled4, sub_scaled};

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
/// to tridiagonal form, in place.
pub(crate) fn tridiagonalize(mut a: Mat<f64>) -> Tridiagonal {
    let n = a.nrows();
    let mut diag = vec![0.0; n];
    let mut offdiag = vec![0.0; n.saturating_sub(1)];
    let mut taus = vec![0.0; n.saturating_sub(1)];
    let mut w = Mat::<f64>::zeros(n, PANEL);
    let mut column = vec![0.0; n];
    let mut y = vec![0.0; n];
    let mut scratch = vec![0.0; n];
    let mut p = 0;
    while p + 1 < n {
        let bs = PANEL.min(n - 1 - p);
        for i in 0..bs {
            let c = p + i;
            // Column c, rows c..n, brought up to date with the panel's earlier reflectors:
            // A[c.., c] -= V[c.., ..i] W[c, ..i]^T + W[c.., ..i] V[c, ..i]^T.
            let col = &mut column[..n - c];
            col.copy_from_slice(&a.col_as_slice(c)[c..]);
            for t in 0..i {
                let (vt, wt) = (&a.col_as_slice(p + t)[c..], &w.col_as_slice(t)[c..]);
                sub_scaled(col, wt[0], vt);
                sub_scaled(col, vt[0], wt);
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
            symmetric_product(a.as_ref(), c + 1, v, y, &mut scratch[..r]);
            for t in 0..i {
                let (vt, wt) = (&a.col_as_slice(p + t)[c + 1..], &w.col_as_slice(t)[c + 1..]);
                let (vv, wv) = (dot(vt, v), dot(wt, v));
                sub_scaled(y, vv, wt);
                sub_scaled(y, wv, vt);
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
            matmul(
                a.as_mut().get_mut(q.., q..),
                BlockStructure::TriangularLower,
                Accum::Add,
                lhs.as_ref(),
                BlockStructure::Rectangular,
                rhs.transpose(),
                BlockStructure::Rectangular,
                -1.0,
                faer::get_global_parallelism(),
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
        let mut f = Mat::<f64>::zeros(bs, bs);
        for i in 0..bs {
            let tau = t.taus[start + i];
            f[(i, i)] = tau;
            if i > 0 && tau != 0.0 {
                let vi = v.col_as_slice(i);
                let w: Vec<f64> = (0..i).map(|c| -tau * dot(v.col_as_slice(c), vi)).collect();
                for r in 0..i {
                    f[(r, i)] = (r..i).map(|c| f[(r, c)] * w[c]).sum();
                }
            }
        }
        let mut target = z.as_mut().get_mut(start + 1.., ..);
        let mut vtz = Mat::<f64>::zeros(bs, target.ncols());
        matmul_plain(
            &mut vtz,
            v.transpose(),
            target.as_ref(),
            1.0,
            Accum::Replace,
            par,
        );
        let fvtz = &f * &vtz;
        matmul_plain(
            &mut target,
            v.as_ref(),
            fvtz.as_ref(),
            -1.0,
            Accum::Add,
            par,
        );
        end = start;
    }
}

fn matmul_plain(
    dst: impl faer::mat::AsMatMut<T = f64, Rows = usize, Cols = usize>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
    accum: Accum,
    par: faer::Par,
) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, par);
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric matrix whose lower triangle
/// is that of `a`: blocked tridiagonalisation, divide and conquer on the tridiagonal
/// matrix, and the back-transformation.
pub(crate) fn symmetric_eigen(a: Mat<f64>) -> crate::error::Result<(Vec<f64>, Mat<f64>)> {
    let t = tridiagonalize(a);
    let (values, mut z) = super::tridiag_eigen::tridiagonal_eigen(&t.diag, &t.offdiag)?;
    apply_q(&t, &mut z);
    Ok((values, z))
}

/// `y = S v` for the symmetric S = `a[s.., s..]` stored in its lower triangle; each column
/// is read once. Two threads take column ranges of equal area on large matrices.
fn symmetric_product(a: MatRef<'_, f64>, s: usize, v: &[f64], y: &mut [f64], other: &mut [f64]) {
    let r = v.len();
    let col = |j: usize| {
        &a.col(s + j)
            .try_as_col_major()
            .expect("contiguous")
            .as_slice()[s + j..]
    };
    let columns = |range: std::ops::Range<usize>, y: &mut [f64]| {
        y.fill(0.0);
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
    if r < PARALLEL_MIN {
        columns(0..r, y);
        return;
    }
    // Columns 0..split hold half of the triangle's r^2 / 2 values.
    let split = ((r as f64) * (1.0 - std::f64::consts::FRAC_1_SQRT_2)) as usize;
    rayon::join(|| columns(0..split, y), || columns(split..r, other));
    for (yi, oi) in y.iter_mut().zip(other.iter()) {
        *yi += oi;
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
    use faer::{Mat, Side};

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
        for (what, a) in cases {
            let n = a.nrows();
            let (values, z) = super::symmetric_eigen(a.clone()).unwrap();
            let reference = a.self_adjoint_eigen(Side::Lower).unwrap();
            let scale = values
                .iter()
                .fold(1e-300f64, |m, v| m.max(v.abs()))
                .max(1e-300);
            for (i, v) in values.iter().enumerate() {
                let diff = (v - reference.S()[i]).abs();
                assert!(
                    diff <= 1e-12 * scale * n as f64,
                    "{what}: value {i}: {diff:e}"
                );
            }
            let ztz = z.transpose() * &z;
            let az = &a * &z;
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
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore]
    fn time_tridiag() {
        use faer::dyn_stack::{MemBuffer, MemStack};
        let n: usize = std::env::var("TN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2016);
        let x: Vec<f64> = (0..n * 10).map(|_| rng.random::<f64>()).collect();
        let a = faer::Mat::<f64>::from_fn(n, n, |i, j| {
            let d2: f64 = (0..10)
                .map(|t| (x[i * 10 + t] - x[j * 10 + t]).powi(2))
                .sum();
            (-0.6 * d2).exp() + if i == j { 1e-3 } else { 0.0 }
        });
        let t = std::time::Instant::now();
        let _ = super::symmetric_eigen(a.clone()).unwrap();
        println!("ours full {:.3}s", t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let _ = a.self_adjoint_eigen(faer::Side::Lower).unwrap();
        println!("faer full {:.3}s", t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let r = super::tridiagonalize(a.clone());
        println!("ours {:.3}s", t.elapsed().as_secs_f64());
        std::hint::black_box(&r.diag);
        let t = std::time::Instant::now();
        let (vals, mut z) =
            crate::dpp::tridiag_eigen::tridiagonal_eigen(&r.diag, &r.offdiag).unwrap();
        println!("tridiagonal D&C {:.3}s", t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        super::apply_q(&r, &mut z);
        println!("back-transform {:.3}s", t.elapsed().as_secs_f64());
        std::hint::black_box((&vals, &z));
        let par = faer::get_global_parallelism();
        let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(n, n);
        let mut h = faer::Mat::<f64>::zeros(bs, n - 1);
        let req =
            faer::linalg::evd::tridiag::tridiag_in_place_scratch::<f64>(n, par, Default::default());
        let mut mem = MemBuffer::new(req);
        let mut b = a.clone();
        let t = std::time::Instant::now();
        faer::linalg::evd::tridiag::tridiag_in_place(
            b.as_mut(),
            h.as_mut(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        );
        println!("faer {:.3}s", t.elapsed().as_secs_f64());
        // same diagonal up to signs of offdiag
        let mut worst = 0.0f64;
        for i in 0..n {
            worst = worst.max((b[(i, i)] - r.diag[i]).abs());
        }
        println!("max diag diff {worst:e}");
    }
}
