//! The CPU twin of the distance kernel: `D_ij = G_ii + G_jj - 2 G_ij` from an f64 Gram.
//!
//! That difference cancels when two neurons are nearly equal, but in f64 the absolute error
//! is about `1e-16 * m * max|a|^2`, so `|dL| <= beta * |dD|` stays near `1e-15 * max|a|^2`
//! for beta = 10/m, far below the 1e-5 the kernel needs (f32 would lose it: see the tests).

use faer::Mat;

use crate::cpu::gram::{CpuGram, Precision};
use crate::error::Result;
use crate::kernel::{ActivationRows, Distances};

/// Streams row chunks into pairwise squared distances between neuron columns.
pub(crate) struct CpuDistances {
    gram: CpuGram,
}

impl CpuDistances {
    pub(crate) fn new(n: usize) -> Result<Self> {
        Ok(Self {
            gram: CpuGram::new(n, Precision::F64)?,
        })
    }

    pub(crate) fn samples(&self) -> usize {
        self.gram.samples()
    }

    pub(crate) fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        self.gram.push(rows)
    }

    pub(crate) fn finish(self) -> Distances {
        let (g, _, samples) = self.gram.finish();
        Distances {
            squared: squared_distances_from_gram(&g),
            samples,
        }
    }
}

/// `D_ij = G_ii + G_jj - 2 G_ij` (clamped at 0) from an f64 Gram matrix.
pub(crate) fn squared_distances_from_gram(g: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
        if i == j {
            0.0
        } else {
            (g[(i, i)] + g[(j, j)] - 2.0 * g[(i, j)]).max(0.0)
        }
    })
}

/// `D_ij = ||v_i - v_j||^2` of whole in-memory activations (`rows x n`) on the CPU.
pub fn distances(rows: ActivationRows<'_>, n: usize) -> Result<Distances> {
    let mut acc = CpuDistances::new(n)?;
    acc.push(rows)?;
    Ok(acc.finish())
}
