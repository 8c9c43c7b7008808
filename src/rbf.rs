//! The RBF kernel over neurons from their pairwise squared distances: host arithmetic, the
//! same whichever backend computed the distances.

use faer::Mat;
use rayon::iter::{IndexedParallelIterator, ParallelIterator};

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

/// How beta was chosen, as the command line names it: `paper (10 / m)`, `median`, `given`.
impl std::fmt::Display for Beta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Beta::Paper => f.write_str("paper: 10 / m"),
            Beta::Median => f.write_str("median: 1 / median squared distance"),
            Beta::Value(_) => f.write_str("given"),
        }
    }
}

impl Beta {
    /// The value of beta for these distances: `10 / m` (paper), `1 / median_{i<j} D_ij`
    /// (median; an error when there is no pair or the median is 0), or the given value.
    pub fn resolve(&self, d: &Distances) -> Result<f64> {
        if *self != Beta::Median {
            return self.resolve_without_distances(d.samples);
        }
        let median = median_off_diagonal(&d.squared)
            .ok_or_else(|| Error::invalid("the median heuristic needs at least two neurons"))?;
        if median <= 0.0 {
            return Err(Error::invalid(
                "the median squared distance between neurons is 0 (most neurons are \
                 identical on these samples): give beta as a number",
            ));
        }
        checked_beta(1.0 / median)
    }

    /// The value of beta for a kernel never held whole (greedy MAP from kernel columns,
    /// [`crate::select::columns`]): `10 / m` or the given value. The median heuristic
    /// needs every pairwise distance: an error.
    pub fn resolve_without_distances(&self, samples: usize) -> Result<f64> {
        match *self {
            Beta::Paper if samples == 0 => {
                Err(Error::invalid("beta = 10/m needs at least one sample"))
            }
            Beta::Paper => checked_beta(10.0 / samples as f64),
            Beta::Median => Err(Error::invalid(
                "the median heuristic needs every pairwise distance, which kernel columns \
                 computed on demand never hold: give beta as paper or a number",
            )),
            Beta::Value(v) => checked_beta(v),
        }
    }
}

/// `beta` when it is a positive finite number.
fn checked_beta(beta: f64) -> Result<f64> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(Error::invalid(format!(
            "beta must be a positive finite number, got {beta}"
        )));
    }
    Ok(beta)
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

/// `L = exp(-beta D) + eps I` from distances, written over them: the kernel takes the
/// distances' memory, so a layer's kernel never needs a second n x n matrix. `eps` must be
/// finite and >= 0.
pub fn rbf_from_distances(d: Distances, beta: Beta, eps: f64) -> Result<RbfKernel> {
    check_eps(eps)?;
    let beta = beta.resolve(&d)?;
    let mut matrix = d.squared;
    // n^2 exponentials (1e9 at n = 32768, seconds on one core): columns across threads.
    matrix.par_col_iter_mut().enumerate().for_each(|(j, col)| {
        let col = crate::cpu::contiguous_mut(col);
        for (i, v) in col.iter_mut().enumerate() {
            *v = rbf_entry(beta, eps, i == j, *v);
        }
    });
    Ok(RbfKernel { matrix, beta, eps })
}

/// `L_ij = exp(-beta D_ij)`, plus eps on the diagonal.
#[inline]
pub(crate) fn rbf_entry(beta: f64, eps: f64, diagonal: bool, distance: f64) -> f64 {
    let l = (-beta * distance).exp();
    if diagonal {
        l + eps
    } else {
        l
    }
}

/// An error unless `eps` is a finite number >= 0.
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(format!(
            "eps must be a finite number >= 0, got {eps}"
        )));
    }
    Ok(())
}

/// The median of the entries strictly above the diagonal of `d` (the mean of the two middle
/// ones for an even count), or `None` when there are none; `d` must be square.
///
/// An exact selection without a copy of the n(n-1)/2 values (half an n x n matrix, 4.3 GB at
/// n = 32768): the values are mapped to integers in the same order and their digits fixed
/// 16 bits at a time, each by counting over the entries that share the digits so far, in
/// four passes over the triangle; the lower middle value of an even count is one more pass.
fn median_off_diagonal(d: &Mat<f64>) -> Option<f64> {
    let n = d.nrows();
    let count = n * n.saturating_sub(1) / 2;
    if count == 0 {
        return None;
    }
    let keys = || {
        (1..n).flat_map(move |j| {
            crate::cpu::contiguous(d.col(j))[..j]
                .iter()
                .map(|&v| order_key(v))
        })
    };
    let mid = count / 2;
    let upper = select_key(keys, mid);
    let median = if count % 2 == 1 {
        from_order_key(upper)
    } else {
        // The lower middle value has rank mid - 1: the largest key below `upper` when
        // `mid` keys lie below it, else `upper` itself repeated.
        let (lower, below) = keys()
            .filter(|&key| key < upper)
            .fold((0u64, 0usize), |(max, c), key| (max.max(key), c + 1));
        let lower = if below >= mid { lower } else { upper };
        0.5 * (from_order_key(lower) + from_order_key(upper))
    };
    Some(median)
}

/// The key of rank `rank` (0-based, ascending) among those each call of `keys` yields.
fn select_key<I: Iterator<Item = u64>>(keys: impl Fn() -> I, rank: usize) -> u64 {
    const BITS: u32 = 16;
    let mut prefix = 0u64;
    let mut rank = rank;
    for level in 0..(64 / BITS) {
        let shift = 64 - BITS * (level + 1);
        let mut counts = vec![0usize; 1 << BITS];
        for key in keys() {
            // The digits fixed so far (none at the first level) must match.
            if level == 0 || key >> (shift + BITS) == prefix >> (shift + BITS) {
                counts[((key >> shift) & ((1 << BITS) - 1)) as usize] += 1;
            }
        }
        let mut digit = 0;
        while rank >= counts[digit] {
            rank -= counts[digit];
            digit += 1;
        }
        prefix |= (digit as u64) << shift;
    }
    prefix
}

/// An integer that orders as `x` does under `f64::total_cmp`.
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The inverse of [`order_key`].
fn from_order_key(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 {
        key & !(1 << 63)
    } else {
        !key
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The median by sorting a copy, as the definition reads.
    fn sorted_median(d: &Mat<f64>) -> f64 {
        let n = d.nrows();
        let mut v: Vec<f64> = (0..n)
            .flat_map(|j| (0..j).map(move |i| (i, j)))
            .map(|(i, j)| d[(i, j)])
            .collect();
        v.sort_by(f64::total_cmp);
        let c = v.len();
        if c % 2 == 1 {
            v[c / 2]
        } else {
            0.5 * (v[c / 2 - 1] + v[c / 2])
        }
    }

    #[test]
    fn median_by_selection_equals_median_by_sorting() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [2, 3, 4, 5, 17, 64, 101] {
            for ties in [false, true] {
                let d = Mat::from_fn(n, n, |_, _| {
                    if ties {
                        rng.random_range(0..4) as f64 * 0.5
                    } else {
                        rng.random::<f64>() * 1e3
                    }
                });
                assert_eq!(median_off_diagonal(&d), Some(sorted_median(&d)), "n = {n}");
            }
        }
        assert_eq!(median_off_diagonal(&Mat::zeros(1, 1)), None);
        for x in [0.0, -0.0, 1e-300, -2.5, 7.0, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
        assert!(order_key(-1.0) < order_key(-0.0) && order_key(-0.0) < order_key(0.0));
        assert!(order_key(0.0) < order_key(1e-300) && order_key(1.0) < order_key(2.0));
    }
}
