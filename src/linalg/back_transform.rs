//! Back-transformation (LAPACK's `dormtr`): eigenvectors of the tridiagonal T become those
//! of A = Q T Q^T by `z <- Q z`, Q applied from the reflectors the reduction stored.
//!
//! The cost is 2 n^2 k for k columns, whichever eigenvectors they are: the full
//! decomposition pays it for all n, a k-DPP draw for the k it selects.

use faer::linalg::matmul::matmul as gemm;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat};
use rayon::prelude::*;

use super::product_par;
use super::reduction::{Stages, Tridiagonal};
use crate::cpu::{contiguous, contiguous_mut};
use crate::progress::Progress;

/// Reflectors per block: each block reads and writes all of z once, so wider blocks mean
/// less memory traffic (the triangular factor costs b^2 per block).
const BACK_PANEL: usize = 128;

/// Columns of n values [`apply_q`] holds beside z, at most: V, and `V^T z` and `F V^T z`
/// (each BACK_PANEL x k with k <= n), or a stripe per thread.
pub(crate) fn workspace_columns() -> usize {
    (3 * BACK_PANEL).max(STRIPE * rayon::current_num_threads())
}

/// `z <- Q z` for the Q of `t` (`A = Q T Q^T`): for the two-stage reduction, the second
/// stage's reflectors first, then the first stage's. Progress counts reflectors.
pub(crate) fn apply_q(t: &Tridiagonal, z: &mut Mat<f64>, progress: &mut dyn Progress) {
    match t.stages {
        Stages::One => apply_reflectors(&t.reflectors, &t.taus, 1, z, progress),
        Stages::Two { width } => {
            apply_bulge_reflectors(&t.reflectors, width, z, progress);
            apply_reflectors(&t.reflectors, &t.taus, width, z, progress);
        }
    }
}

/// `z <- H_0 ... H_{m-1} z` for m = `taus.len()` reflectors stored in the columns of
/// `reflectors`, `v_c` zero above row c + `offset` and stored, with its leading one, from
/// there down; panel by panel in compact WY form (`H_p ... H_{p+b-1} = I - V F V^T`,
/// F upper triangular), last panel first: two matrix products per panel.
fn apply_reflectors(
    reflectors: &Mat<f64>,
    taus: &[f64],
    offset: usize,
    z: &mut Mat<f64>,
    progress: &mut dyn Progress,
) {
    let n = z.nrows();
    let count = taus.len();
    let par = product_par(z.ncols());
    progress.start("back-transformation", count as u64);
    let mut end = count;
    while end > 0 {
        let start = end.saturating_sub(BACK_PANEL);
        let bs = end - start;
        let rows = n - (start + offset);
        let v = Mat::<f64>::from_fn(rows, bs, |r, c| {
            if r < c {
                0.0
            } else {
                reflectors[(start + offset + r, start + c)]
            }
        });
        let f = triangular_factor(&v, &taus[start..end]);
        let mut target = z.as_mut().get_mut(start + offset.., ..);
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

/// Columns of z per stripe of the second stage's back-transformation.
const STRIPE: usize = 64;

/// `z <- Q2 z` for the reflectors of the bulge chasing ([`super::bulge`]), kept in the
/// strict upper triangle of `reflectors` for a band of half-width `width`.
///
/// The reflectors are short (`width` rows) and many (about n^2 / (2 width)), so they are
/// applied one at a time to stripes of [`STRIPE`] columns of z, each stripe copied into a
/// row-major buffer so that a reflector's rows are contiguous, the stripes in parallel.
/// Within a group of `width` consecutive sweeps the reflectors are applied position by
/// position down the matrix (the sweeps' reflectors at one position, last sweep first):
/// reflectors of those sweeps that act on overlapping rows keep their order, so this is
/// the same product, and the rows being worked on stay in the L1 cache.
fn apply_bulge_reflectors(
    reflectors: &Mat<f64>,
    width: usize,
    z: &mut Mat<f64>,
    progress: &mut dyn Progress,
) {
    let n = z.nrows();
    let k = z.ncols();
    progress.start("back-transformation (band)", k as u64);
    let mut stripes: Vec<faer::MatMut<'_, f64>> = Vec::new();
    let mut rest = z.as_mut();
    while rest.ncols() > 0 {
        let w = STRIPE.min(rest.ncols());
        let (stripe, tail) = rest.split_at_col_mut(w);
        stripes.push(stripe);
        rest = tail;
    }
    let batch = 4 * rayon::current_num_threads().max(1);
    let mut stripes = stripes.into_iter();
    loop {
        let group: Vec<_> = stripes.by_ref().take(batch).collect();
        if group.is_empty() {
            break;
        }
        let columns: usize = group.iter().map(|s| s.ncols()).sum();
        group.into_par_iter().for_each(|mut stripe| {
            let mut rows = vec![0.0f64; n * STRIPE];
            for c in 0..stripe.ncols() {
                for (r, x) in contiguous(stripe.rb().col(c)).iter().enumerate() {
                    rows[r * STRIPE + c] = *x;
                }
            }
            apply_to_stripe(reflectors, width, &mut rows);
            for c in 0..stripe.ncols() {
                for (r, x) in contiguous_mut(stripe.rb_mut().col_mut(c))
                    .iter_mut()
                    .enumerate()
                {
                    *x = rows[r * STRIPE + c];
                }
            }
        });
        progress.advance(columns as u64);
    }
    progress.finish();
}

/// [`apply_bulge_reflectors`] on one stripe (n rows of [`STRIPE`] values): groups of
/// `width` sweeps, last group first; in each, position by position down the matrix, the
/// group's reflectors there (last sweep first) two at a time.
fn apply_to_stripe(reflectors: &Mat<f64>, width: usize, rows: &mut [f64]) {
    let n = reflectors.nrows();
    let sweeps = n.saturating_sub(1);
    let reflector = |j: usize, at: usize| -> (usize, &[f64]) {
        let r0 = j + 1 + at;
        let len = width.min(n - r0);
        (r0, &reflectors.col_as_slice(n - 1 - j)[at..at + len])
    };
    let mut group_end = sweeps;
    while group_end > 0 {
        let group_start = group_end.saturating_sub(width);
        let mut at = 0;
        // Sweep j has a reflector at this position while j + 1 + at < n: the group's
        // sweeps from group_start up to `present` do.
        while group_start + 1 + at < n {
            let present = group_end.min(n - 1 - at);
            let mut j = present;
            while j > group_start {
                let (r0, first) = reflector(j - 1, at);
                if j - 1 > group_start {
                    // Sweep j - 1 then j - 2: the second acts one row higher.
                    let (r1, second) = reflector(j - 2, at);
                    let end = (r0 + first.len()).max(r1 + second.len());
                    reflect_pair(&mut rows[r1 * STRIPE..end * STRIPE], first, second);
                    j -= 2;
                } else {
                    reflect_pair(
                        &mut rows[r0 * STRIPE..(r0 + first.len()) * STRIPE],
                        &[],
                        first,
                    );
                    j -= 1;
                }
            }
            at += width;
        }
        group_end = group_start;
    }
}

/// `X <- H2 H1 X` for the rows of X (each [`STRIPE`] values), with H1 acting on rows
/// 1..=first.len() and H2 on rows 0..second.len() (first empty: H1 = I); each reflector
/// stored as tau followed by v past its implied leading one. One pass over the rows for
/// both products with X, one for both updates:
/// `y1 = tau1 v1^T X`, `y2 = tau2 (v2^T X - (v2^T v1) y1)`, `X -= v1 y1^T + v2 y2^T`.
#[inline]
fn reflect_pair(rows: &mut [f64], first: &[f64], second: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports AVX-512F and FMA.
        return unsafe { reflect_pair_avx512(rows, first, second) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA.
        return unsafe { reflect_pair_avx2(rows, first, second) };
    }
    reflect_pair_with::<false>(rows, first, second)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn reflect_pair_avx512(rows: &mut [f64], first: &[f64], second: &[f64]) {
    reflect_pair_with::<true>(rows, first, second)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn reflect_pair_avx2(rows: &mut [f64], first: &[f64], second: &[f64]) {
    reflect_pair_with::<true>(rows, first, second)
}

/// [`reflect_pair`]'s arithmetic, with fused multiply-adds where the CPU has them (the
/// builds then round differently, as the reduction's kernels do: see `simd.rs`).
#[inline(always)]
fn reflect_pair_with<const FUSED: bool>(rows: &mut [f64], first: &[f64], second: &[f64]) {
    #[inline(always)]
    fn madd<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
        if FUSED {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
    let count = rows.len() / STRIPE;
    // Each reflector's coefficient on each row (zero outside its rows).
    let mut c1 = [0.0f64; MAX_PAIR_ROWS];
    let mut c2 = [0.0f64; MAX_PAIR_ROWS];
    assert!(count <= MAX_PAIR_ROWS);
    let tau1 = first.first().copied().unwrap_or(0.0);
    let tau2 = second[0];
    if !first.is_empty() {
        c1[1] = 1.0;
        c1[2..1 + first.len()].copy_from_slice(&first[1..]);
    }
    c2[0] = 1.0;
    c2[1..second.len()].copy_from_slice(&second[1..]);
    let overlap: f64 = c1.iter().zip(&c2).map(|(a, b)| a * b).sum();
    let mut y1 = [0.0f64; STRIPE];
    let mut y2 = [0.0f64; STRIPE];
    for (r, row) in rows.chunks_exact(STRIPE).enumerate() {
        let (a1, a2) = (c1[r], c2[r]);
        for l in 0..STRIPE {
            y1[l] = madd::<FUSED>(a1, row[l], y1[l]);
            y2[l] = madd::<FUSED>(a2, row[l], y2[l]);
        }
    }
    for l in 0..STRIPE {
        y1[l] *= tau1;
        y2[l] = tau2 * madd::<FUSED>(-overlap, y1[l], y2[l]);
    }
    for (r, row) in rows.chunks_exact_mut(STRIPE).enumerate() {
        let (a1, a2) = (c1[r], c2[r]);
        for l in 0..STRIPE {
            row[l] = madd::<FUSED>(-a2, y2[l], madd::<FUSED>(-a1, y1[l], row[l]));
        }
    }
}

/// Rows a pair of reflectors spans at most, for bands up to 64 wide.
const MAX_PAIR_ROWS: usize = 65;

/// F of the compact WY form `H_0 ... H_{b-1} = I - V F V^T` by LAPACK's `dlarft`
/// recurrence, column i from `V^T v_i`: all of `V^T V` in one matrix product rather than
/// b^2 / 2 separate dot products.
pub(super) fn triangular_factor(v: &Mat<f64>, taus: &[f64]) -> Mat<f64> {
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
