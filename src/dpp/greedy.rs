//! Greedy MAP selection (Chen, Zhang & Zhou, "Fast Greedy MAP Inference for Determinantal
//! Point Process", NeurIPS 2018, Alg. 1).
//!
//! The greedy step adds the item j maximising `log det L_{Y+j} - log det L_Y = log d_j^2`,
//! where `d_j^2` is the Schur complement of `L_Y` in `L_{Y+j}`. Keeping the rows of the
//! incremental Cholesky factor (`c_i`, one entry per step) makes every update
//! `e_i = (L_ji - <c_j, c_i>) / d_j`, `d_i^2 -= e_i^2`: O(n k^2) time, O(n k) memory
//! beside L, which is only read, one column per step.
//!
//! The steps only read L's diagonal and the column of each item picked, so the kernel
//! need not be in memory: [`greedy_map_over`] takes its columns from a [`KernelColumns`]
//! (an n x n matrix for [`greedy_map`], columns computed from the activations on demand
//! for a layer too wide to hold L, [`crate::select::columns`]).

use faer::MatRef;
use rayon::prelude::*;

use super::eigen::validate_kernel;
use crate::error::{Error, Result};
use crate::linalg::simd::sub_scaled;

/// Items per task of the update, at most and at least: a part of `e` stays in cache while
/// the Cholesky rows stream past it, and is long enough to stream them well.
const UPDATE_PART: (usize, usize) = (4096, 1024);

/// When greedy MAP stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GreedyStop {
    /// Select exactly this many items (an error if the kernel's rank is smaller).
    Count(usize),
    /// Stop when the best marginal gain in log det falls below this value. On an RBF
    /// kernel (unit diagonal) every gain is at most about 0, so useful thresholds are
    /// negative, e.g. -3 (stop once the best item keeps less than e^-3 of its variance).
    MinGain(f64),
}

/// Returns indices in selection order (callers sort if they need to).
///
/// Greedy MAP on the kernel `l`: deterministic (ties go to the lowest index). Errors
/// (Error::InvalidInput): `l` not square, empty, non-finite or not symmetric; `Count(0)`,
/// `Count(k)` with `k > n`, or `k` more than the items with a positive gain (the kernel's
/// numerical rank, which the message gives); a NaN `MinGain`; a negative diagonal.
pub fn greedy_map(l: MatRef<'_, f64>, stop: GreedyStop) -> Result<Vec<usize>> {
    validate_kernel(l)?;
    greedy_map_over(&mut KernelMatrix(l), stop)
}

/// Where greedy MAP reads a kernel of n items: its diagonal, then the column of each item
/// as it is picked.
pub(crate) trait KernelColumns {
    /// n.
    fn items(&self) -> usize;
    /// `L_ii` for every item.
    fn diagonal(&self) -> Vec<f64>;
    /// Column j of L into `out` (n). `gains` are the current `d_i^2` of every item and
    /// `chosen` marks the items picked before j, so that a source computing columns in
    /// batches can compute the likeliest next picks' with j's.
    fn column(&mut self, j: usize, gains: &[f64], chosen: &[bool], out: &mut [f64]) -> Result<()>;
}

/// A kernel held whole (symmetric: row j read as column j, contiguous in faer's
/// column-major layout, where a row is n cache misses).
struct KernelMatrix<'a>(MatRef<'a, f64>);

impl KernelColumns for KernelMatrix<'_> {
    fn items(&self) -> usize {
        self.0.nrows()
    }

    fn diagonal(&self) -> Vec<f64> {
        (0..self.0.nrows()).map(|i| self.0[(i, i)]).collect()
    }

    fn column(&mut self, j: usize, _: &[f64], _: &[bool], out: &mut [f64]) -> Result<()> {
        for (o, &x) in out.iter_mut().zip(self.0.col(j).iter()) {
            *o = x;
        }
        Ok(())
    }
}

/// [`greedy_map`] over a kernel read column by column, with the same stops and errors
/// (the kernel's own checks, square, finite and symmetric, are the source's).
pub(crate) fn greedy_map_over(
    kernel: &mut dyn KernelColumns,
    stop: GreedyStop,
) -> Result<Vec<usize>> {
    let n = kernel.items();
    let (max_count, min_gain) = match stop {
        GreedyStop::Count(0) => return Err(Error::invalid("k must be at least 1")),
        GreedyStop::Count(k) if k > n => {
            return Err(Error::invalid(format!(
                "k = {k} exceeds the number of items n = {n}"
            )))
        }
        GreedyStop::Count(k) => (k, f64::NEG_INFINITY),
        GreedyStop::MinGain(g) if g.is_nan() => {
            return Err(Error::invalid("the minimum gain must be a number, got NaN"))
        }
        GreedyStop::MinGain(g) => (n, g),
    };
    let mut d2: Vec<f64> = kernel.diagonal();
    if let Some(i) = d2.iter().position(|&v| v < 0.0) {
        return Err(Error::invalid(format!(
            "kernel is not positive semi-definite: diagonal entry L[{i},{i}] = {} < 0",
            d2[i]
        )));
    }
    // A Schur complement this small relative to the largest diagonal entry is rounding:
    // the item is (numerically) in the span of those chosen.
    let largest = d2.iter().copied().fold(0.0, f64::max);
    let tol = n as f64 * f64::EPSILON * largest;
    // A negative conditional variance this large is a negative direction of the kernel,
    // not rounding (see the check below).
    let indefinite = 1e-3 * largest;
    // c[t * n + i]: entry t of item i's Cholesky row; with a known count, reserved once
    // (growing by doubling would hold up to three times n k while it copies).
    let mut c: Vec<f64> = Vec::new();
    if let GreedyStop::Count(k) = stop {
        c.reserve_exact(k * n);
    }
    let mut chosen = Vec::new();
    let mut is_chosen = vec![false; n];
    let mut e = vec![0.0f64; n];
    while chosen.len() < max_count {
        let mut best = None;
        for i in 0..n {
            if !is_chosen[i] && best.is_none_or(|b: usize| d2[i] > d2[b]) {
                best = Some(i);
            }
        }
        let Some(j) = best else { break };
        let gain_d2 = d2[j];
        if gain_d2.is_nan() || gain_d2 <= tol {
            if let GreedyStop::Count(k) = stop {
                // No item adds anything: the rank is reached, or the kernel has a negative
                // direction (a Schur complement of a PSD kernel is >= 0; one far below the
                // rounding of divnet's own kernels, whose f32 products leave ~1e-6 of the
                // diagonal, is no rounding).
                if let Some(i) = (0..n).find(|&i| !is_chosen[i] && d2[i] < -indefinite) {
                    return Err(Error::invalid(format!(
                        "kernel is not positive semi-definite: item {i}'s variance given the \
                         {} items picked before it is {:.3e} < 0",
                        chosen.len(),
                        d2[i]
                    )));
                }
                return Err(Error::invalid(format!(
                    "k = {k} exceeds the numerical rank {} of the kernel (n = {n}): \
                     greedy MAP found no item with a positive gain after {} items",
                    chosen.len(),
                    chosen.len()
                )));
            }
            break;
        }
        if gain_d2.ln() < min_gain {
            break;
        }
        let dj = gain_d2.sqrt();
        kernel.column(j, &d2, &is_chosen, &mut e)?;
        subtract_projections(&mut e, &c, chosen.len(), j);
        for ((ei, di), &taken) in e.iter_mut().zip(d2.iter_mut()).zip(&is_chosen) {
            *ei /= dj;
            if !taken {
                *di -= *ei * *ei;
            }
        }
        c.extend_from_slice(&e);
        is_chosen[j] = true;
        d2[j] = 0.0;
        chosen.push(j);
    }
    Ok(chosen)
}

/// `e_i -= sum_t c_t[j] c_t[i]` over the first `steps` Cholesky rows (row t at
/// `c[t n..(t + 1) n]`): the step's O(n k) read of the rows, the greedy loop's cost, on all
/// threads for wide kernels. Each item's sum runs in the same order on any part, so the
/// result does not depend on the thread count.
fn subtract_projections(e: &mut [f64], c: &[f64], steps: usize, j: usize) {
    let n = e.len();
    let update = |start: usize, part: &mut [f64]| {
        for t in 0..steps {
            let row = &c[t * n..(t + 1) * n];
            sub_scaled(part, row[j], &row[start..start + part.len()]);
        }
    };
    let part = (n / rayon::current_num_threads().max(1)).clamp(UPDATE_PART.1, UPDATE_PART.0);
    if n >= 2 * part && steps > 0 {
        e.par_chunks_mut(part)
            .enumerate()
            .for_each(|(p, values)| update(p * part, values));
    } else {
        update(0, e);
    }
}
