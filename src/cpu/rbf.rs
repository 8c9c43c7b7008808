//! The CPU twin of the distance kernel: `D_ij = G_ii + G_jj - 2 G_ij` from an f64 Gram.
//!
//! That difference cancels when two neurons are nearly equal, but in f64 the absolute error
//! is about `1e-16 * m * max|a|^2`, so `|dL| <= beta * |dD|` stays near `1e-15 * max|a|^2`
//! for beta = 10/m, far below the 1e-5 the kernel needs (f32 would lose it: see the tests).

use faer::Mat;

use crate::cpu::gram::{CpuGram, Precision};
use crate::error::Result;
use crate::types::{ActivationRows, Distances};

/// `D_ij = G_ii + G_jj - 2 G_ij` (clamped at 0) from an f64 Gram matrix, into a new matrix.
pub(crate) fn squared_distances_from_gram(g: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
        if i == j {
            0.0
        } else {
            (g[(i, i)] + g[(j, j)] - 2.0 * g[(i, j)]).max(0.0)
        }
    })
}

/// [`squared_distances_from_gram`] overwriting the Gram matrix itself, so that a layer's
/// distances never need a second n x n matrix.
pub(crate) fn distances_in_place(mut g: Mat<f64>) -> Mat<f64> {
    let n = g.nrows();
    let diag: Vec<f64> = (0..n).map(|i| g[(i, i)]).collect();
    for j in 0..n {
        let col = crate::cpu::contiguous_mut(g.col_mut(j));
        for (i, v) in col.iter_mut().enumerate() {
            *v = if i == j {
                0.0
            } else {
                (diag[i] + diag[j] - 2.0 * *v).max(0.0)
            };
        }
    }
    g
}

/// `D_ij = ||v_i - v_j||^2` of whole in-memory activations (`rows x n`) on the CPU.
pub fn distances(rows: ActivationRows<'_>, n: usize) -> Result<Distances> {
    let mut acc = CpuGram::new(n, Precision::F64)?;
    acc.push(rows)?;
    let (gram, _, samples) = acc.finish();
    Ok(Distances {
        squared: distances_in_place(gram),
        samples,
    })
}
