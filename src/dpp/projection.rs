//! Sampling from the projection DPP spanned by chosen eigenvectors (the second phase of
//! Kulesza & Taskar 2012, Alg. 1 and Alg. 8), in blocks so that the O(n k^2) work is
//! matrix-matrix products.
//!
//! With V the n x k matrix of chosen eigenvectors (orthonormal columns) and v_i its rows,
//! the chain rule gives: after choosing rows Y, item i comes next with probability
//! proportional to `d_i = ||P v_i||^2`, P the projector onto the orthogonal complement (in
//! R^k) of span{v_y : y in Y}. This is Alg. 1's "eliminate a column, then orthonormalise"
//! without rewriting V: we keep an orthonormal basis Q of the span and `W = V Q` (so
//! `d_i = ||v_i||^2 - ||W_i||^2`).
//!
//! Updating every d_i after each pick would read all of V per pick (memory-bound). Instead
//! picks come in blocks of b: within a block, candidates are proposed from the d's as they
//! were at the block's start (`d^s`) and accepted with probability `d^t_i / d^s_i`, where
//! `d^t_i` (the exact current value) needs only the block's own picks: with
//! `g_u = <P_s v_{i_u}, P_s v_i> = <v_{i_u}, v_i> - <W_{i_u}, W_i>` and L the Cholesky factor
//! of the block picks' Gram matrix in that space, `d^t_i = d^s_i - ||L^-1 g||^2`. Rejection
//! sampling makes this exact; each item's coordinates on the block's picks are cached and
//! only extended when it is proposed again. [`block_size`] balances the two costs. At the
//! block's end the picks are orthonormalised against Q by block
//! Gram-Schmidt, twice (which keeps Q orthonormal to working precision), and `W`, `d` are
//! updated with one n x k x b product.

use faer::reborrow::*;
use faer::{linalg::matmul::matmul, Accum, Mat, MatRef, Par};
use rand::Rng;

use super::eigen::KernelSpectrum;
use crate::cpu::{contiguous, contiguous_mut};
use crate::error::Result;
use crate::linalg::simd::{dot, sub_scaled};

/// Largest block of picks between two full updates.
const MAX_BLOCK: usize = 32;

/// Residuals at or below this are rounding: such a row lies in the span already chosen
/// (the probability mass ignored is at most n * TINY).
const TINY: f64 = 1e-12;

/// Consecutive rejections after which the mass is taken to be lost to rounding.
const MAX_REJECTIONS: usize = 100_000;

/// The second phase of a k-DPP or DPP draw: the eigenvectors of `spectrum` at `cols` (the
/// first phase's choice), sampled as a projection DPP.
pub(crate) fn sample_spanned<S: KernelSpectrum + ?Sized, R: Rng + ?Sized>(
    spectrum: &S,
    cols: &[usize],
    rng: &mut R,
    progress: &mut dyn crate::progress::Progress,
) -> Result<Vec<usize>> {
    let chosen = spectrum.eigenvectors_with_progress(cols, progress)?;
    Ok(sample_projection(chosen.matrix(), chosen.columns(), rng))
}

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
    let blocks = block_schedule(n, k);
    let committed = k - blocks.last().copied().unwrap_or(0);
    // Column i of Z is item i's row of V followed by its row of W = V Q (rows k.. hold
    // W^T, only as many as are ever committed), so that everything one item needs is
    // contiguous.
    let mut z = Mat::<f64>::zeros(k + committed, n);
    let eig_cols: Vec<&[f64]> = cols
        .iter()
        .map(|&c| contiguous(eigenvectors.col(c)))
        .collect();
    let mut d = vec![0.0f64; n];
    // Row i of k eigenvectors into column i of Z, and its squared norm: k cache lines per
    // item, which the next items reuse. Split across threads like the block updates.
    let gather = |first: usize, mut zc: faer::MatMut<'_, f64>, d: &mut [f64]| {
        for (t, di) in d.iter_mut().enumerate() {
            let col = &mut contiguous_mut(zc.rb_mut().col_mut(t))[..k];
            for (dst, src) in col.iter_mut().zip(&eig_cols) {
                *dst = src[first + t];
            }
            *di = dot(col, col);
        }
    };
    for_item_ranges(z.as_mut(), &mut d, n * k >= 1 << 17, &gather);
    let mut q = Mat::<f64>::zeros(k, k);
    let mut is_chosen = vec![false; n];
    let mut chosen = Vec::with_capacity(k);
    let mut cdf = vec![0.0f64; n];
    // Per item, its coordinates `a = L^-1 g` on the current block's picks, extended lazily
    // when the item is proposed again, and their squared norm.
    let mut cache: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut cache_sq = vec![0.0f64; n];
    let mut touched: Vec<usize> = Vec::new();
    // The block's picks as rows `(v_iu, -W_iu)` (length k + s), so that an item's
    // coordinate on a pick is one dot product with its column of Z.
    let mut pick_rows: Vec<f64> = Vec::new();
    let mut s = 0;
    for &b in &blocks {
        let mut acc = 0.0;
        for (c, &di) in cdf.iter_mut().zip(&d) {
            acc += di;
            *c = acc;
        }
        let total = acc;
        for &i in &touched {
            cache[i].clear();
            cache_sq[i] = 0.0;
        }
        touched.clear();
        // Row u of the block's Cholesky factor at u (u + 1) / 2, packed.
        let mut chol: Vec<f64> = Vec::with_capacity(b * (b + 1) / 2);
        let mut block: Vec<usize> = Vec::with_capacity(b);
        let width = k + s;
        pick_rows.clear();
        let mut rejections = 0usize;
        while block.len() < b {
            let forced = !(total > 0.0 && total.is_finite()) || rejections >= MAX_REJECTIONS;
            let i = if forced {
                // Only reachable if rounding destroyed the remaining mass, which orthonormal
                // eigenvectors rule out; keep the sample well-formed anyway.
                debug_assert!(false, "projection sampling ran out of mass");
                fallback(&d, &is_chosen)
            } else {
                let target = rng.random::<f64>() * total;
                cdf.partition_point(|&c| c <= target).min(n - 1)
            };
            if is_chosen[i] {
                rejections += 1;
                continue;
            }
            let t = block.len();
            let zi = &z.col_as_slice(i)[..width];
            let a = &mut cache[i];
            if a.is_empty() {
                touched.push(i);
            }
            for u in a.len()..t {
                let g = dot(&pick_rows[u * width..(u + 1) * width], zi);
                let row = &chol[u * (u + 1) / 2..(u + 1) * (u + 2) / 2];
                let au = (g - dot(&row[..u], a)) / row[u];
                a.push(au);
                cache_sq[i] += au * au;
            }
            let ds = d[i];
            let dt = ds - cache_sq[i];
            if forced || (dt > TINY && rng.random::<f64>() * ds < dt) {
                chol.extend_from_slice(&a[..t]);
                chol.push(dt.max(TINY).sqrt());
                pick_rows.extend_from_slice(&zi[..k]);
                pick_rows.extend(zi[k..].iter().map(|w| -w));
                block.push(i);
                is_chosen[i] = true;
                rejections = 0;
            } else {
                rejections += 1;
            }
        }
        chosen.extend_from_slice(&block);
        if s + b < k {
            commit_block(&mut z, k, &mut q, &mut d, s, &block);
            for &i in &block {
                d[i] = 0.0;
            }
        }
        s += b;
    }
    chosen.sort_unstable();
    chosen
}

/// The sizes of the blocks of picks for a sample of k out of n: see [`block_size`].
fn block_schedule(n: usize, k: usize) -> Vec<usize> {
    let mut blocks = Vec::new();
    let mut remaining = k;
    while remaining > 0 {
        let b = block_size(n, remaining);
        blocks.push(b);
        remaining -= b;
    }
    blocks
}

/// How many picks to make before the next full update, with `remaining` still to pick.
///
/// A full update costs n k b; a block of b picks without one costs, per proposed item,
/// O((k + b) b) for its lazily extended coordinates, and a block that finishes the sample
/// draws about `remaining * H(remaining)` proposals (H the harmonic number, as acceptance
/// falls to 1 / remaining). When that is at most n / 8, finishing without further updates
/// is cheaper; otherwise blocks of half the remaining picks (at most [`MAX_BLOCK`]) keep
/// at least half the proposals accepted on average. The 8 and the 32 are measured (n = 1000
/// to 4000, k = n / 10): against 4 and 64 they take 10-25% off a sample.
fn block_size(n: usize, remaining: usize) -> usize {
    let harmonic: f64 = (1..=remaining).map(|j| 1.0 / j as f64).sum();
    if 8.0 * remaining as f64 * harmonic <= n as f64 {
        remaining
    } else {
        remaining.div_ceil(2).clamp(1, MAX_BLOCK)
    }
}

/// Extends Q by an orthonormal basis of the block's rows (orthogonalised against Q by block
/// Gram-Schmidt twice, then among themselves by modified Gram-Schmidt twice), and W and d
/// by their projections on it.
fn commit_block(
    z: &mut Mat<f64>,
    k: usize,
    q: &mut Mat<f64>,
    d: &mut [f64],
    s: usize,
    block: &[usize],
) {
    let n = z.ncols();
    let b = block.len();
    let mut x = Mat::<f64>::zeros(k, b);
    for (u, &i) in block.iter().enumerate() {
        x.col_as_slice_mut(u)
            .copy_from_slice(&z.col_as_slice(i)[..k]);
    }
    if s > 0 {
        let mut c = Mat::<f64>::zeros(s, b);
        let basis = q.get(.., ..s);
        for _ in 0..2 {
            matmul(&mut c, Accum::Replace, basis.transpose(), &x, 1.0, Par::Seq);
            matmul(&mut x, Accum::Add, basis, &c, -1.0, Par::Seq);
        }
    }
    for u in 0..b {
        let mut col = x.col_as_slice(u).to_vec();
        for _ in 0..2 {
            for v in 0..u {
                let qv = q.col_as_slice(s + v);
                let coef = dot(qv, &col);
                sub_scaled(&mut col, coef, qv);
            }
        }
        let norm = dot(&col, &col).sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        for (dst, xi) in q.col_as_slice_mut(s + u).iter_mut().zip(&col) {
            *dst = xi * scale;
        }
    }
    // W's new rows and the residuals, for a range of items. Large blocks split the items
    // across faer's threads, each with a sequential product: one join per block, where
    // letting faer parallelise the product synchronised more often (10-15% slower at
    // n = 2000 to 4000).
    let basis = q.get(.., s..s + b);
    let update = |_first: usize, mut zc: faer::MatMut<'_, f64>, d: &mut [f64]| {
        let (v, w) = zc.rb_mut().split_at_row_mut(k);
        matmul(
            w.get_mut(s..s + b, ..),
            Accum::Replace,
            basis.transpose(),
            v.rb(),
            1.0,
            Par::Seq,
        );
        for (i, di) in d.iter_mut().enumerate() {
            let w = &contiguous(zc.rb().col(i))[k + s..k + s + b];
            *di = (*di - dot(w, w)).max(0.0);
        }
    };
    for_item_ranges(z.as_mut(), d, n * k * b > 1 << 22, &update);
}

/// Runs `f(first item, columns of z, their entries of d)` over ranges of items, one per
/// thread of faer's global parallelism when `parallel` (and each range has at least 256
/// items), else over all items at once.
fn for_item_ranges<F>(z: faer::MatMut<'_, f64>, d: &mut [f64], parallel: bool, f: &F)
where
    F: Fn(usize, faer::MatMut<'_, f64>, &mut [f64]) + Sync,
{
    let n = z.ncols();
    let threads = faer::get_global_parallelism().degree().min(n / 256);
    if !parallel || threads < 2 {
        f(0, z, d);
        return;
    }
    let step = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let (mut rest, mut d_rest, mut first) = (z, d, 0);
        while rest.ncols() > step {
            let (part, tail) = rest.split_at_col_mut(step);
            let (d_part, d_tail) = d_rest.split_at_mut(step);
            scope.spawn(move || f(first, part, d_part));
            (rest, d_rest, first) = (tail, d_tail, first + step);
        }
        f(first, rest, d_rest);
    });
}

/// The unchosen item with the largest residual (the lowest index among equals).
fn fallback(d: &[f64], is_chosen: &[bool]) -> usize {
    (0..d.len())
        .filter(|&i| !is_chosen[i])
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if d[b] >= d[i] => Some(b),
            _ => Some(i),
        })
        .expect("fewer items than k")
}
