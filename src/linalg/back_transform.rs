//! Back-transformation (LAPACK's `dormtr`): eigenvectors of the tridiagonal T become those
//! of A = Q T Q^T by `z <- Q z`, Q applied from the reflectors the reduction stored.
//!
//! The cost is 2 n^2 k for k columns, whichever eigenvectors they are: the full
//! decomposition pays it for all n, a k-DPP draw for the k it selects.

use faer::linalg::matmul::matmul as gemm;
use faer::{Accum, Mat};

use super::product_par;
use super::reduction::Tridiagonal;
use crate::progress::Progress;

/// Reflectors per block: each block reads and writes all of z once, so wider blocks mean
/// less memory traffic (the triangular factor costs b^2 per block).
const BACK_PANEL: usize = 128;

/// Columns of n values [`apply_q`] holds beside z (at most: V, and `V^T z` and `F V^T z`,
/// each BACK_PANEL x k with k <= n).
pub(crate) const WORKSPACE_COLUMNS: usize = 3 * BACK_PANEL;

/// `z <- Q z` for the Q of `t` (`A = Q T Q^T`), panel by panel in compact WY form
/// (`H_p ... H_{p+b-1} = I - V F V^T`, F upper triangular), last panel first: two matrix
/// products per panel. Progress counts reflectors.
pub(crate) fn apply_q(t: &Tridiagonal, z: &mut Mat<f64>, progress: &mut dyn Progress) {
    let n = t.diag.len();
    let reflectors = n.saturating_sub(1);
    let par = product_par(z.ncols());
    progress.start("back-transformation", reflectors as u64);
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
        let f = triangular_factor(&v, &t.taus[start..end]);
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
        let mut fvtz = Mat::<f64>::zeros(bs, target.ncols());
        gemm(&mut fvtz, Accum::Replace, &f, &vtz, 1.0, par);
        gemm(
            &mut target,
            Accum::Add,
            v.as_ref(),
            fvtz.as_ref(),
            -1.0,
            par,
        );
        progress.advance(bs as u64);
        end = start;
    }
    progress.finish();
}

/// F of the compact WY form `H_0 ... H_{b-1} = I - V F V^T` by LAPACK's `dlarft`
/// recurrence, column i from `V^T v_i`: all of `V^T V` in one matrix product rather than
/// b^2 / 2 separate dot products.
fn triangular_factor(v: &Mat<f64>, taus: &[f64]) -> Mat<f64> {
    let bs = taus.len();
    let mut vtv = Mat::<f64>::zeros(bs, bs);
    gemm(
        &mut vtv,
        Accum::Replace,
        v.transpose(),
        v,
        1.0,
        product_par(bs),
    );
    let mut f = Mat::<f64>::zeros(bs, bs);
    for (i, &tau) in taus.iter().enumerate() {
        f[(i, i)] = tau;
        if i > 0 && tau != 0.0 {
            for r in 0..i {
                f[(r, i)] = (r..i).map(|c| f[(r, c)] * -tau * vtv[(c, i)]).sum();
            }
        }
    }
    f
}
