//! Back-transformation (LAPACK's `dormtr`): eigenvectors of the tridiagonal T become those
//! of A = Q T Q^T by `z <- Q z`, Q applied from the reflectors the reduction stored.
//!
//! The cost is 2 n^2 k for k columns, whichever eigenvectors they are: the full
//! decomposition pays it for all n, a k-DPP draw for the k it selects. After the two-stage
//! reduction it is paid twice, once per stage's reflectors.

use faer::linalg::matmul::matmul as gemm;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

use super::band::MAX_BAND_WIDTH;
use super::eigh::TWO_STAGE_MIN_N;
use super::product_par;
use super::reduction::{Stages, Tridiagonal};
use crate::cpu::{contiguous, contiguous_mut};
use crate::progress::Progress;

/// Reflectors per block: each block reads and writes all of z once, so wider blocks mean
/// less memory traffic (the triangular factor costs b^2 per block).
const BACK_PANEL: usize = 128;

/// Columns of n values [`apply_q`] holds beside k columns of z, at most: V, and `V^T z` and
/// `F V^T z` (each BACK_PANEL x k with k <= n), or, after the two-stage reduction (from
/// [`TWO_STAGE_MIN_N`]), a stripe per thread at work.
pub(crate) fn workspace_columns(n: usize, k: usize) -> usize {
    let panels = 3 * BACK_PANEL;
    if n < TWO_STAGE_MIN_N {
        return panels;
    }
    let stripes = rayon::current_num_threads().min(k.div_ceil(STRIPE));
    panels.max(STRIPE * stripes)
}

/// `z <- Q z` for the Q of `t` (`A = Q T Q^T`): for the two-stage reduction, the second
/// stage's reflectors first (progress by column of z), then the first stage's (by
/// reflector).
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
        let f = triangular_factor(&v, &taus[start..end], product_par(bs));
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
/// applied, two at a time, to stripes of [`STRIPE`] columns of z, each stripe copied into a
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
    // Progress after each group of a few stripes per thread.
    let group = 4 * rayon::current_num_threads().max(1) * STRIPE;
    let mut rest = z.as_mut();
    while rest.ncols() > 0 {
        let columns = group.min(rest.ncols());
        let (now, tail) = rest.split_at_col_mut(columns);
        now.par_col_chunks_mut(STRIPE).for_each(|mut stripe| {
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
        rest = tail;
    }
    progress.finish();
}

/// [`apply_bulge_reflectors`] on one stripe (n rows of [`STRIPE`] values): groups of
/// `width` sweeps, last group first; in each, position by position down the matrix, the
/// group's reflectors there (last sweep first) two at a time. On x86-64 a copy compiled for
/// AVX-512 or AVX2 with fused multiply-adds runs when the CPU has them (those builds round
/// differently from the portable one, as the reduction's kernels do: see `simd.rs`).
fn apply_to_stripe(reflectors: &Mat<f64>, width: usize, rows: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports AVX-512F and FMA.
        return unsafe { apply_to_stripe_avx512(reflectors, width, rows) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA.
        return unsafe { apply_to_stripe_avx2(reflectors, width, rows) };
    }
    apply_to_stripe_with::<false>(reflectors, width, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn apply_to_stripe_avx512(reflectors: &Mat<f64>, width: usize, rows: &mut [f64]) {
    apply_to_stripe_with::<true>(reflectors, width, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_to_stripe_avx2(reflectors: &Mat<f64>, width: usize, rows: &mut [f64]) {
    apply_to_stripe_with::<true>(reflectors, width, rows)
}

#[inline(always)]
fn apply_to_stripe_with<const FUSED: bool>(reflectors: &Mat<f64>, width: usize, rows: &mut [f64]) {
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
                let (r0, later) = reflector(j - 1, at);
                if j - 1 > group_start {
                    // Sweep j - 1 then j - 2, whose reflector acts one row higher.
                    let (r1, earlier) = reflector(j - 2, at);
                    let end = (r0 + later.len()).max(r1 + earlier.len());
                    reflect_pair::<FUSED>(&mut rows[r1 * STRIPE..end * STRIPE], later, earlier);
                    j -= 2;
                } else {
                    let end = r0 + later.len();
                    reflect_pair::<FUSED>(&mut rows[r0 * STRIPE..end * STRIPE], &[], later);
                    j -= 1;
                }
            }
            at += width;
        }
        group_end = group_start;
    }
}

/// `X <- H_e H_l X` for the rows of X (each [`STRIPE`] values): H_l, the later sweep's
/// reflector, acts on rows 1..=later.len() and is applied first; H_e, the earlier sweep's,
/// on rows 0..earlier.len() (`later` empty: H_l = I). Each reflector is stored as tau
/// followed by v past its implied leading one. One pass over the rows for both products
/// with X, one for both updates:
/// `y_l = tau_l v_l^T X`, `y_e = tau_e (v_e^T X - (v_e^T v_l) y_l)`,
/// `X -= v_l y_l^T + v_e y_e^T`; with fused multiply-adds when `FUSED`.
#[inline(always)]
fn reflect_pair<const FUSED: bool>(rows: &mut [f64], later: &[f64], earlier: &[f64]) {
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
    let mut cl = [0.0f64; MAX_PAIR_ROWS];
    let mut ce = [0.0f64; MAX_PAIR_ROWS];
    assert!(count <= MAX_PAIR_ROWS);
    let tau_l = later.first().copied().unwrap_or(0.0);
    let tau_e = earlier[0];
    if !later.is_empty() {
        cl[1] = 1.0;
        cl[2..1 + later.len()].copy_from_slice(&later[1..]);
    }
    ce[0] = 1.0;
    ce[1..earlier.len()].copy_from_slice(&earlier[1..]);
    let overlap: f64 = cl.iter().zip(&ce).map(|(a, b)| a * b).sum();
    let mut yl = [0.0f64; STRIPE];
    let mut ye = [0.0f64; STRIPE];
    for (r, row) in rows.chunks_exact(STRIPE).enumerate() {
        let (al, ae) = (cl[r], ce[r]);
        for l in 0..STRIPE {
            yl[l] = madd::<FUSED>(al, row[l], yl[l]);
            ye[l] = madd::<FUSED>(ae, row[l], ye[l]);
        }
    }
    for l in 0..STRIPE {
        yl[l] *= tau_l;
        ye[l] = tau_e * madd::<FUSED>(-overlap, yl[l], ye[l]);
    }
    for (r, row) in rows.chunks_exact_mut(STRIPE).enumerate() {
        let (al, ae) = (cl[r], ce[r]);
        for l in 0..STRIPE {
            row[l] = madd::<FUSED>(-ae, ye[l], madd::<FUSED>(-al, yl[l], row[l]));
        }
    }
}

/// Rows a pair of reflectors spans at most.
const MAX_PAIR_ROWS: usize = MAX_BAND_WIDTH + 1;

/// F of the compact WY form `H_0 ... H_{b-1} = I - V F V^T` by LAPACK's `dlarft`
/// recurrence, column i from `V^T v_i`: all of `V^T V` in one matrix product rather than
/// b^2 / 2 separate dot products.
pub(super) fn triangular_factor(v: &Mat<f64>, taus: &[f64], par: Par) -> Mat<f64> {
    let bs = taus.len();
    let mut vtv = Mat::<f64>::zeros(bs, bs);
    gemm(&mut vtv, Accum::Replace, v.transpose(), v, 1.0, par);
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
