//! The CPU twin of the distance kernel: `D_ij = G_ii + G_jj - 2 G_ij` from an f64 Gram.
//!
//! That difference cancels when two neurons are nearly equal, but in f64 the absolute error
//! is about `1e-16 * m * max|a|^2`, so `|dL| <= beta * |dD|` stays near `1e-15 * max|a|^2`
//! for beta = 10/m, far below the 1e-5 the kernel needs (f32 would lose it: see the tests).

use faer::Mat;
use rayon::prelude::*;

use crate::cpu::gram::{CpuGram, Precision};
use crate::error::Result;
use crate::types::{ActivationRows, Distances};

/// `D_ij = G_ii + G_jj - 2 G_ij` (clamped at 0) from an f64 Gram matrix, into a new
/// matrix, columns on all threads.
pub(crate) fn squared_distances_from_gram(g: &Mat<f64>) -> Mat<f64> {
    let n = g.nrows();
    let mut d = crate::cpu::symmetric::zeros(n);
    let diag: Vec<f64> = (0..n).map(|i| g[(i, i)]).collect();
    d.par_col_iter_mut()
        .zip(g.par_col_iter())
        .enumerate()
        .for_each(|(j, (dst, src))| {
            let dst = crate::cpu::contiguous_mut(dst);
            let src = crate::cpu::contiguous(src);
            distance_column(j, &diag, src, dst);
        });
    d
}

/// [`squared_distances_from_gram`] overwriting the Gram matrix itself, so that a layer's
/// distances never need a second n x n matrix.
pub(crate) fn distances_in_place(mut g: Mat<f64>) -> Mat<f64> {
    let n = g.nrows();
    let diag: Vec<f64> = (0..n).map(|i| g[(i, i)]).collect();
    g.par_col_iter_mut().enumerate().for_each(|(j, col)| {
        let col = crate::cpu::contiguous_mut(col);
        for (i, v) in col.iter_mut().enumerate() {
            *v = if i == j {
                0.0
            } else {
                (diag[i] + diag[j] - 2.0 * *v).max(0.0)
            };
        }
    });
    g
}

/// Column j of the distances from column j of the Gram matrix.
fn distance_column(j: usize, diag: &[f64], gram: &[f64], dst: &mut [f64]) {
    for (i, (d, &g)) in dst.iter_mut().zip(gram).enumerate() {
        *d = if i == j {
            0.0
        } else {
            (diag[i] + diag[j] - 2.0 * g).max(0.0)
        };
    }
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
