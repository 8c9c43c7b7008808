//! Sampling from the projection DPP spanned by chosen eigenvectors (the second phase of
//! Kulesza & Taskar 2012, Alg. 1 and Alg. 8).
//!
//! With V the n x k matrix of chosen eigenvectors (orthonormal columns) and v_i its rows,
//! the chain rule gives: after choosing rows Y, item i comes next with probability
//! proportional to `||P v_i||^2`, P the projector onto the orthogonal complement (in R^k) of
//! span{v_y : y in Y}. We keep an orthonormal basis Q of that span, extended by one vector
//! per step and re-orthogonalised twice (classical Gram-Schmidt twice, which keeps Q
//! orthonormal to working precision), and the residual norms `d_i = ||v_i||^2 - ||Q^T v_i||^2`,
//! updated with `w = V q_new`: O(n k) per step, O(n k^2) per sample. This is the same
//! sampler as Alg. 1's "eliminate a column, then orthonormalise" but without rewriting V.

use faer::{linalg::matmul::matmul, Accum, Col, Mat, MatRef, Par};
use rand::Rng;

/// Rows of `eigenvectors[:, cols]` drawn from the projection DPP: `cols.len()` sorted,
/// distinct indices.
pub(crate) fn sample_projection<R: Rng + ?Sized>(
    eigenvectors: MatRef<'_, f64>,
    cols: &[usize],
    rng: &mut R,
) -> Vec<usize> {
    let n = eigenvectors.nrows();
    let k = cols.len();
    if k == 0 {
        return Vec::new();
    }
    let mut v = Mat::<f64>::zeros(n, k);
    for (j, &c) in cols.iter().enumerate() {
        v.col_mut(j).copy_from(eigenvectors.col(c));
    }
    let mut d = vec![0.0f64; n];
    for j in 0..k {
        for (di, x) in d.iter_mut().zip(v.col(j).iter()) {
            *di += x * x;
        }
    }
    let mut q = Mat::<f64>::zeros(k, k);
    let mut r = Col::<f64>::zeros(k);
    let mut coef = Col::<f64>::zeros(k);
    let mut w = Col::<f64>::zeros(n);
    let mut chosen = Vec::with_capacity(k);
    let mut is_chosen = vec![false; n];
    while chosen.len() < k {
        let t = chosen.len();
        let i = draw(&d, &is_chosen, rng);
        for j in 0..k {
            r[j] = v[(i, j)];
        }
        if t > 0 {
            let basis = q.get(.., ..t);
            for _ in 0..2 {
                let mut c = coef.get_mut(..t);
                matmul(
                    c.as_mut(),
                    Accum::Replace,
                    basis.transpose(),
                    &r,
                    1.0,
                    Par::Seq,
                );
                matmul(r.as_mut(), Accum::Add, basis, c.as_ref(), -1.0, Par::Seq);
            }
        }
        let norm = r.norm_l2();
        // The residual of a row with d_i > 0 is nonzero in exact arithmetic; a tiny one
        // means d_i was rounding noise: drop the row and draw again.
        if !(norm > 1e-10) {
            d[i] = 0.0;
            continue;
        }
        for j in 0..k {
            q[(j, t)] = r[j] / norm;
        }
        matmul(w.as_mut(), Accum::Replace, &v, q.col(t), 1.0, Par::Seq);
        for (di, wi) in d.iter_mut().zip(w.iter()) {
            *di = (*di - wi * wi).max(0.0);
        }
        d[i] = 0.0;
        is_chosen[i] = true;
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
}

/// An index drawn with probability proportional to `d` among those not chosen yet.
fn draw<R: Rng + ?Sized>(d: &[f64], is_chosen: &[bool], rng: &mut R) -> usize {
    let total: f64 = d.iter().sum();
    if total > 0.0 && total.is_finite() {
        let target = rng.random::<f64>() * total;
        let mut acc = 0.0;
        let mut last_positive = None;
        for (i, &di) in d.iter().enumerate() {
            if di > 0.0 {
                acc += di;
                last_positive = Some(i);
                if acc > target {
                    return i;
                }
            }
        }
        if let Some(i) = last_positive {
            return i;
        }
    }
    // Only reachable if every residual rounded to 0 before k rows were chosen, which
    // orthonormal eigenvectors rule out; keep the sample well-formed anyway.
    debug_assert!(false, "projection sampling ran out of mass");
    let free: Vec<usize> = (0..d.len()).filter(|&i| !is_chosen[i]).collect();
    free[rng.random_range(0..free.len())]
}
