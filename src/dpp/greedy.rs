//! Greedy MAP selection (Chen, Zhang & Zhou, "Fast Greedy MAP Inference for Determinantal
//! Point Process", NeurIPS 2018, Alg. 1).
//!
//! The greedy step adds the item j maximising `log det L_{Y+j} - log det L_Y = log d_j^2`,
//! where `d_j^2` is the Schur complement of `L_Y` in `L_{Y+j}`. Keeping the rows of the
//! incremental Cholesky factor (`c_i`, one entry per step) makes every update
//! `e_i = (L_ji - <c_j, c_i>) / d_j`, `d_i^2 -= e_i^2`: O(n k^2) time, O(n k) memory
//! beside L, which is only read, one column per step.

use faer::MatRef;

use super::eigen::validate_kernel;
use crate::error::{Error, Result};

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
    let n = l.nrows();
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
    let mut d2: Vec<f64> = (0..n).map(|i| l[(i, i)]).collect();
    if let Some(i) = d2.iter().position(|&v| v < 0.0) {
        return Err(Error::invalid(format!(
            "kernel is not positive semi-definite: diagonal entry L[{i},{i}] = {} < 0",
            d2[i]
        )));
    }
    // A Schur complement this small relative to the largest diagonal entry is rounding:
    // the item is (numerically) in the span of those chosen.
    let tol = n as f64 * f64::EPSILON * d2.iter().copied().fold(0.0, f64::max);
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
        // Row j of L read as column j (L is symmetric): contiguous in faer's column-major
        // layout, where a row is n cache misses.
        for (ei, &lij) in e.iter_mut().zip(l.col(j).iter()) {
            *ei = lij;
        }
        for t in 0..chosen.len() {
            let row = &c[t * n..(t + 1) * n];
            let cj = row[j];
            for (ei, ci) in e.iter_mut().zip(row) {
                *ei -= cj * ci;
            }
        }
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
