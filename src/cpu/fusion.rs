//! CPU twin of [`crate::gpu::fusion::assemble`]: the fusion system in f64 with faer.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

use crate::error::Result;
use crate::fusion::{gather_lhs, FusionSystem, NextLayer};
use crate::kernel::GramStats;

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
        lhs: gather_lhs(stats, keep),
        rhs,
        kept_energy,
        dropped_energy,
    })
}

/// `tr(V^T H V)` for symmetric H given entry-wise, as `<H, V V^T>` with only the lower
/// triangle of `V V^T` formed (half the work of `H V`, and no gathered copy of H).
fn quadratic_trace(v: MatRef<'_, f64>, h: impl Fn(usize, usize) -> f64, par: Par) -> f64 {
    let d = v.nrows();
    if d == 0 {
        return 0.0;
    }
    let mut vvt = Mat::<f64>::zeros(d, d);
    triangular::matmul(
        vvt.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        v,
        BlockStructure::Rectangular,
        v.transpose(),
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    let mut total = 0.0;
    for j in 0..d {
        total += h(j, j) * vvt[(j, j)];
        let mut col = 0.0;
        for i in j + 1..d {
            col += h(i, j) * vvt[(i, j)];
        }
        total += 2.0 * col;
    }
    total
}
