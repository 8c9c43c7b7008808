//! The CPU twin of the distance kernel, from the centred co-moments M and the column sums s
//! of [`crate::cpu::gram`]:
//!
//! `D_ij = sum_t (a_ti - a_tj)^2 = (M_ii + M_jj - 2 M_ij) + m (mu_i - mu_j)^2`,
//!
//! the distance between the centred columns plus that between the means. The first part
//! cancels when two neurons are nearly equal, so its absolute error is that of M's entries:
//! centred, about `2^-24` of the variances they sum, not of the squared offsets an
//! uncentred Gram matrix would carry. The second is exact to f64 and never cancels against
//! the first (both are sums of squares).

use faer::Mat;
use rayon::prelude::*;

use crate::cpu::gram::{Comoments, CpuGram};
use crate::error::Result;
use crate::types::{ActivationRows, Distances};

/// The distances from the centred statistics, into a new matrix (M is kept), columns on
/// all threads.
pub(crate) fn distances_from_comoments(centred: &Comoments) -> Mat<f64> {
    let n = centred.comoments.nrows();
    let parts = DistanceParts::new(centred);
    let mut d = crate::cpu::symmetric::zeros(n);
    d.par_col_iter_mut()
        .zip(centred.comoments.par_col_iter())
        .enumerate()
        .for_each(|(j, (dst, src))| {
            let dst = crate::cpu::contiguous_mut(dst);
            let src = crate::cpu::contiguous(src);
            for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                *d = parts.distance(i, j, x);
            }
        });
    d
}

/// [`distances_from_comoments`] overwriting M itself, so that a layer's distances never
/// need a second n x n matrix.
pub(crate) fn distances_in_place(centred: Comoments) -> Mat<f64> {
    let parts = DistanceParts::new(&centred);
    let mut m = centred.comoments;
    m.par_col_iter_mut().enumerate().for_each(|(j, col)| {
        for (i, v) in crate::cpu::contiguous_mut(col).iter_mut().enumerate() {
            *v = parts.distance(i, j, *v);
        }
    });
    m
}

/// What the distances need besides `M_ij`: M's diagonal and `sqrt(m) mu`.
pub(crate) struct DistanceParts {
    diag: Vec<f64>,
    scaled_mean: Vec<f64>,
}

impl DistanceParts {
    fn new(centred: &Comoments) -> Self {
        let n = centred.comoments.nrows();
        let diag = (0..n).map(|i| centred.comoments[(i, i)]).collect();
        Self::from_parts(diag, &centred.col_sums, centred.samples)
    }

    /// From M's diagonal, the column sums and m.
    pub(crate) fn from_parts(diag: Vec<f64>, col_sums: &[f64], samples: usize) -> Self {
        let root = (samples as f64).sqrt();
        Self {
            diag,
            scaled_mean: col_sums
                .iter()
                .map(|s| if root > 0.0 { s / root } else { 0.0 })
                .collect(),
        }
    }

    /// `D_ij` from `M_ij`.
    pub(crate) fn distance(&self, i: usize, j: usize, m_ij: f64) -> f64 {
        if i == j {
            return 0.0;
        }
        let gap = self.scaled_mean[i] - self.scaled_mean[j];
        (self.diag[i] + self.diag[j] - 2.0 * m_ij).max(0.0) + gap * gap
    }
}

/// `D_ij = ||v_i - v_j||^2` of whole in-memory activations (`rows x n`) on the CPU.
pub fn distances(rows: ActivationRows<'_>, n: usize) -> Result<Distances> {
    let mut acc = CpuGram::new(n)?;
    acc.push(rows)?;
    let centred = acc.finish();
    let samples = centred.samples;
    Ok(Distances {
        squared: distances_in_place(centred),
        samples,
    })
}
