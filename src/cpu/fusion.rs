//! CPU twin of [`crate::gpu::fusion::assemble`]: the fusion system in f64 with faer.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::error::Result;
use crate::types::{FusionSystem, GramStats, NextLayer};

/// Assembles the normal equations of the fusion and the two energies of the reconstruction
/// error, in f64. `keep` and `dropped` partition the layer's neurons (validated by the
/// caller, [`crate::fusion::fuse_next_layer`]).
pub fn assemble(
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
) -> Result<FusionSystem> {
    let k = keep.len();
    let n = stats.gram.nrows();
    let n_out = next.n_out;
    let g = &stats.gram;
    let s = &stats.col_sums;
    let par = faer::get_global_parallelism();

    // Index `n` stands for the constant input: G~[i, n] = s_i, G~[n, n] = m, W~[o, n] = b_o.
    let mut aug_keep = keep.to_vec();
    aug_keep.push(n);
    let g_aug = |i: usize, j: usize| match (i < n, j < n) {
        (true, true) => g[(i, j)],
        (true, false) => s[i],
        (false, true) => s[j],
        (false, false) => stats.samples as f64,
    };
    let w_aug_t = |cols: &[usize]| -> Mat<f64> {
        // (|cols| x n_out): column o is row o of W~ gathered, read contiguously.
        let mut m = Mat::<f64>::zeros(cols.len(), n_out);
        for o in 0..n_out {
            let row = &next.weight[o * n..(o + 1) * n];
            let b = next.bias.map_or(0.0, |b| b[o] as f64);
            for (j, &c) in cols.iter().enumerate() {
                m[(j, o)] = if c < n { row[c] as f64 } else { b };
            }
        }
        m
    };

    let wp_t = w_aug_t(dropped);
    let wy_t = w_aug_t(&aug_keep);

    let g_yp = Mat::<f64>::from_fn(k + 1, dropped.len(), |i, j| g_aug(aug_keep[i], dropped[j]));
    let mut rhs = Mat::<f64>::zeros(k + 1, n_out);
    matmul(rhs.as_mut(), Accum::Replace, &g_yp, &wp_t, 1.0, par);
    drop(g_yp);

    let kept_energy = quadratic_trace(wy_t.as_ref(), |i, j| g_aug(aug_keep[i], aug_keep[j]), par);
    let dropped_energy = quadratic_trace(wp_t.as_ref(), |i, j| g[(dropped[i], dropped[j])], par);

    Ok(FusionSystem {
        lhs: stats.augmented_block(keep),
        rhs,
        kept_energy,
        dropped_energy,
    })
}

/// Rows of `V V^T` formed at a time in [`quadratic_trace`]: bounds the memory to
/// `PANEL x d` values whatever the layer's width.
const PANEL: usize = 512;

/// `tr(V^T H V)` for symmetric H given entry-wise, as `<H, V V^T>` with only the lower
/// triangle of `V V^T` formed, one panel of rows at a time (half the work of `H V`, and no
/// gathered copy of H).
fn quadratic_trace(v: MatRef<'_, f64>, h: impl Fn(usize, usize) -> f64, par: Par) -> f64 {
    let d = v.nrows();
    let mut total = 0.0;
    let mut block = Mat::<f64>::zeros(0, 0);
    let mut i0 = 0;
    while i0 < d {
        let rows = PANEL.min(d - i0);
        let i1 = i0 + rows;
        // Rows i0..i1 of V V^T up to column i1: the part left of the diagonal block in
        // full, the diagonal block too (its upper half is the only waste, rows/d of it).
        block.resize_with(rows, i1, |_, _| 0.0);
        matmul(
            block.as_mut(),
            Accum::Replace,
            v.subrows(i0, rows),
            v.subrows(0, i1).transpose(),
            1.0,
            par,
        );
        for j in 0..i1 {
            let mut col = 0.0;
            for r in 0..rows {
                let i = i0 + r;
                if j < i {
                    col += 2.0 * h(i, j) * block[(r, j)];
                } else if j == i {
                    col += h(i, j) * block[(r, j)];
                }
            }
            total += col;
        }
        i0 = i1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadratic_trace_over_several_panels_matches_naive_loops() {
        let (d, c) = (2 * PANEL + 37, 3);
        let v = Mat::<f64>::from_fn(d, c, |i, j| ((i * 7 + j * 13) % 17) as f64 - 8.0);
        let h = |i: usize, j: usize| 1.0 / (1.0 + (i as f64 - j as f64).abs());
        let mut naive = 0.0;
        for col in 0..c {
            for i in 0..d {
                for j in 0..d {
                    naive += v[(i, col)] * h(i, j) * v[(j, col)];
                }
            }
        }
        let got = quadratic_trace(v.as_ref(), h, Par::Seq);
        assert!(
            (got - naive).abs() < 1e-10 * naive.abs(),
            "{got} vs {naive}"
        );
    }
}
