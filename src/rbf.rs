//! The RBF kernel over neurons from their pairwise squared distances: host arithmetic, the
//! same whichever backend computed the distances.

use faer::Mat;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::types::Distances;

/// The RBF bandwidth beta in `L_ij = exp(-beta * ||v_i - v_j||^2)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beta {
    /// The paper's default, `10 / m`.
    Paper,
    /// The median heuristic, `1 / median_{i<j} ||v_i - v_j||^2`.
    Median,
    /// A given positive value.
    Value(f64),
}

impl std::str::FromStr for Beta {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Beta::Paper),
            "median" => Ok(Beta::Median),
            other => match other.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Beta::Value(v)),
                _ => Err(Error::invalid(format!(
                    "invalid beta {other:?}: expected paper, median or a positive number"
                ))),
            },
        }
    }
}

impl Beta {
    /// The value of beta for these distances: `10 / m` (paper), `1 / median_{i<j} D_ij`
    /// (median; an error when there is no pair or the median is 0), or the given value.
    pub fn resolve(&self, d: &Distances) -> Result<f64> {
        let beta = match *self {
            Beta::Paper => {
                if d.samples == 0 {
                    return Err(Error::invalid("beta = 10/m needs at least one sample"));
                }
                10.0 / d.samples as f64
            }
            Beta::Median => {
                let n = d.squared.nrows();
                let mut off: Vec<f64> = (0..n)
                    .flat_map(|j| (0..j).map(move |i| (i, j)))
                    .map(|(i, j)| d.squared[(i, j)])
                    .collect();
                if off.is_empty() {
                    return Err(Error::invalid(
                        "the median heuristic needs at least two neurons",
                    ));
                }
                let mid = off.len() / 2;
                let (_, &mut upper, _) = off.select_nth_unstable_by(mid, f64::total_cmp);
                let median = if off.len() % 2 == 1 {
                    upper
                } else {
                    let lower = off[..mid].iter().copied().fold(f64::MIN, f64::max);
                    0.5 * (lower + upper)
                };
                if median <= 0.0 {
                    return Err(Error::invalid(
                        "the median squared distance between neurons is 0 (most neurons are \
                         identical on these samples): give beta as a number",
                    ));
                }
                1.0 / median
            }
            Beta::Value(v) => v,
        };
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::invalid(format!(
                "beta must be a positive finite number, got {beta}"
            )));
        }
        Ok(beta)
    }
}

/// L = exp(-beta D) + eps I, with the beta actually used.
#[derive(Clone, Debug)]
pub struct RbfKernel {
    /// L, n x n, symmetric positive definite when eps > 0.
    pub matrix: Mat<f64>,
    /// The bandwidth used.
    pub beta: f64,
    /// The diagonal shift used.
    pub eps: f64,
}

/// `L = exp(-beta D) + eps I` from distances; `eps` must be finite and >= 0.
pub fn rbf_from_distances(d: &Distances, beta: Beta, eps: f64) -> Result<RbfKernel> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(format!(
            "eps must be a finite number >= 0, got {eps}"
        )));
    }
    let beta = beta.resolve(d)?;
    let n = d.squared.nrows();
    // Columns on all threads: n^2 exponentials are a second of one core at n = 8192.
    let mut matrix = crate::cpu::symmetric::zeros(n);
    matrix
        .par_col_iter_mut()
        .zip(d.squared.par_col_iter())
        .enumerate()
        .for_each(|(j, (dst, src))| {
            let dst = crate::cpu::contiguous_mut(dst);
            for (i, (l, &x)) in dst.iter_mut().zip(crate::cpu::contiguous(src)).enumerate() {
                *l = (-beta * x).exp() + if i == j { eps } else { 0.0 };
            }
        });
    Ok(RbfKernel { matrix, beta, eps })
}
