//! Fusion: fold the dropped neurons of a layer into the next layer by least squares.
//!
//! Let Y be the kept neurons (k of them), P the dropped ones, and `u = [a_Y; 1]` the kept
//! activations with a constant appended. Over the calibration set each dropped activation is
//! approximated by `a_P ~ C^T u`, where C ((k+1) x |P|) solves the normal equations
//! `(G~_YY + ridge D) C = [G_YP; s_P^T]` with `G~_YY = [[G_YY, s_Y], [s_Y^T, m]]` and
//! `D = diag(1, ..., 1, 0)`: like ridge regression's intercept, the constant is not damped, so
//! the fused layer does not depend on where the activations sit (their mean) or on their
//! scale. The next layer `z = W a + b` then becomes `W'_Y = W_Y + W_P C_top^T`,
//! `b' = b + W_P c_last`.
//!
//! C is never formed: the system is solved directly for `X = C W_P^T` with the right-hand
//! side `R = [G_YP; s_P^T] W_P^T` ((k+1) x n_out), so that `W'_Y = W_Y + X_top^T` and
//! `b' = b + X_last^T`. Assembling R (k |P| n_out multiply-adds) and the two quadratic forms
//! that give the reconstruction error is the expensive part; it runs on the GPU
//! ([`crate::gpu::fusion::assemble`]) or the CPU ([`crate::cpu::fusion::assemble`]). The
//! Cholesky solve runs on the host in f64.
//!
//! A layer too wide for its n x n Gram beside its kernel gets the same system from one more
//! pass over its activations after selection ([`fuse_next_layer_from_rows`]); both routes
//! end in the same solve and the same error formula.

use faer::linalg::triangular_solve::{
    solve_lower_triangular_in_place, solve_upper_triangular_in_place,
};
use faer::Mat;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::linalg::cholesky_lower_in_place;
use crate::progress::Progress;
use crate::select::{CONSTANT_VARIANCE_TOL, RESIDUAL_VARIANCE_TOL};
use crate::types::RowSource;
pub use crate::types::{FusionSystem, GramStats, NextLayer};

/// How the next layer absorbs the dropped neurons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionMode {
    /// Least squares on [a_Y; 1]: W'_Y = W_Y + W_P C_top^T, b' = b + W_P c_last (default).
    Fuse,
    /// The paper's original objective: least squares on a_Y alone, bias untouched.
    FuseNoBias,
    /// Plain pruning: keep columns Y of W, bias untouched.
    Prune,
}

/// Options of [`fuse_next_layer`].
#[derive(Clone, Copy, Debug)]
pub struct FusionOptions {
    /// Which variant of the reweighting to apply.
    pub mode: FusionMode,
    /// ridge = ridge_factor * trace(G_c) / k, a fraction of the mean eigenvalue of the kept
    /// neurons' centred Gram matrix `G_c = G_YY - s_Y s_Y^T / m`, on the kept neurons'
    /// coefficients only (for [`FusionMode::FuseNoBias`], which has no constant: of G_YY,
    /// trace(G_YY) / k). A kept constant (a neuron whose centred variance is at most
    /// [`crate::select::CONSTANT_VARIANCE_TOL`] of its second moment: rounding) gets
    /// [`crate::select::RESIDUAL_VARIANCE_TOL`] of its second moment more on its own
    /// diagonal, unless the factor is 0.
    ///
    /// The default, 1e-6, sits just above the noise floor of a Gram matrix accumulated
    /// from f32 activations (relative rounding ~6e-8 per activation): directions that carry
    /// less than a millionth of the mean variance are not resolved by the data anyway.
    /// Damping them changes the well-determined directions by ~1e-6 relative (below what
    /// the f32 weights that are written out can hold), while it bounds the condition number
    /// by about k * 1e6, which f64 Cholesky handles even for duplicate or dead neurons.
    pub ridge_factor: f64,
}

impl FusionOptions {
    /// Checks the options: the ridge factor must be finite and >= 0. The pipelines check them
    /// before any work, not at the fusion, after the statistics and the selection.
    pub fn check(&self) -> Result<()> {
        if !(self.ridge_factor.is_finite() && self.ridge_factor >= 0.0) {
            return Err(Error::invalid(format!(
                "fusion: ridge factor {} must be finite and >= 0",
                self.ridge_factor
            )));
        }
        Ok(())
    }
}

impl Default for FusionOptions {
    fn default() -> Self {
        Self {
            mode: FusionMode::Fuse,
            ridge_factor: 1e-6,
        }
    }
}

/// The next layer after fusion.
#[derive(Clone, Debug)]
pub struct FusedLayer {
    /// n_out x k, row-major, columns in the order of `keep`.
    pub weight: Vec<f32>,
    /// n_out (zeros + fused constant when the input had no bias).
    pub bias: Vec<f32>,
    /// The ridge actually added (0 for Prune).
    pub ridge: f64,
    /// ||Z - Z'||_F / ||Z||_F of the next layer's pre-activation on the calibration set,
    /// computed from G and s without a second pass over the data. It is a difference of
    /// energies taken from statistics of f32 products, so it resolves errors down to a few
    /// 1e-4: reviews measured 8e-5 to 4.9e-4 reported (CPU and GPU, one- and two-pass) for
    /// fusions whose error on the data was 6e-7 to 2e-6. A value below about 1e-3 says
    /// that the error is that small, not how small; above, it matches the error on the
    /// data to about 1e-6.
    pub relative_error: f64,
    /// The same error for each group of rows ([`crate::types::FusionSystem::groups`]: each
    /// next layer of several stacked into one), in order; one entry otherwise.
    pub group_errors: Vec<f64>,
}

/// Rewrites the next layer so that it reads only the kept neurons `keep` of the layer whose
/// Gram statistics are `stats`, absorbing the dropped neurons as `opts.mode` says.
///
/// `keep` must be non-empty, distinct and in range; it need not be sorted (the output
/// columns follow its order). Keeping every neuron gives back W (permuted) and b.
pub fn fuse_next_layer(
    backend: &Backend,
    stats: &GramStats,
    keep: &[usize],
    next: NextLayer<'_>,
    opts: &FusionOptions,
) -> Result<FusedLayer> {
    fuse_stacked(backend, stats, keep, next, &[next.n_out], opts)
}

/// [`fuse_next_layer`] for several next layers stacked in `next`, `rows` rows each: the
/// same fused rows, and each layer's error in [`FusedLayer::group_errors`].
pub(crate) fn fuse_stacked(
    backend: &Backend,
    stats: &GramStats,
    keep: &[usize],
    next: NextLayer<'_>,
    rows: &[usize],
    opts: &FusionOptions,
) -> Result<FusedLayer> {
    let n = check_stats(stats, "fusion")?;
    let dropped = validate(n, keep, &next, opts)?;
    crate::types::check_row_groups(rows, next.n_out)?;
    // Checked here: the assemblies' own checks (of the public entry points) would scan G
    // and W once more.
    let system = match backend {
        Backend::Cpu => crate::cpu::fusion::assemble_checked(stats, keep, &dropped, next, rows),
        Backend::Gpu(ctx) => {
            crate::gpu::fusion::assemble_checked(ctx, stats, keep, &dropped, next, rows)?
        }
    };
    solve_fusion(&system, keep, next, opts)
}

/// [`fuse_next_layer`] without the n x n Gram: one more pass over the layer's activations
/// (after selection) collects what the fusion needs of them,
/// ([`crate::cpu::fusion::FusionPass`]: `[A_Y, 1]^T [A_Y, 1]`, `[A_Y, 1]^T A_P W_P^T` and
/// `||A_P W_P^T||^2`), and the same system is solved the same way, with the same error.
/// Memory O(k^2 + n n_out) instead of an n x n matrix; work `m n n_out + m k^2 / 2`
/// instead of the Gram's `m n^2 / 2`.
///
/// `progress` advances by rows as a stage called `fusion statistics`. The pass runs on the
/// CPU whatever `backend` says: there is no GPU kernel for it yet.
pub fn fuse_next_layer_from_rows(
    backend: &Backend,
    activations: &mut dyn RowSource,
    keep: &[usize],
    next: NextLayer<'_>,
    opts: &FusionOptions,
    progress: &mut dyn Progress,
) -> Result<FusedLayer> {
    let _ = backend;
    let system = fusion_system_from_rows(activations, keep, next, &[next.n_out], opts, progress)?;
    solve_fusion(&system, keep, next, opts)
}

/// The checks and the pass of [`fuse_next_layer_from_rows`], without the solve (the
/// pipeline times the two as stages of their own).
pub(crate) fn fusion_system_from_rows(
    activations: &mut dyn RowSource,
    keep: &[usize],
    next: NextLayer<'_>,
    rows: &[usize],
    opts: &FusionOptions,
    progress: &mut dyn Progress,
) -> Result<FusionSystem> {
    let n = activations.width();
    let dropped = validate(n, keep, &next, opts)?;
    let mut pass =
        crate::cpu::fusion::FusionPass::new(keep, &dropped, next).with_row_groups(rows)?;
    progress.start("fusion statistics", activations.rows() as u64);
    let read = activations.pass(&mut |rows| {
        pass.push(rows)?;
        progress.advance((rows.len() / n) as u64);
        Ok(())
    });
    progress.finish();
    read?;
    pass.finish()
}

/// Checks the inputs of a fusion of a layer of `n` neurons and returns the dropped
/// neurons, ascending.
fn validate(
    n: usize,
    keep: &[usize],
    next: &NextLayer<'_>,
    opts: &FusionOptions,
) -> Result<Vec<usize>> {
    check_next_layer(next, n, "fusion")?;
    opts.check()?;
    let kept = kept_mask(keep, n, "fusion")?;
    Ok((0..n).filter(|&i| !kept[i]).collect())
}

/// Checks that `keep` holds at least one neuron, each below `n` and once, in errors that
/// name `rule`; returns which of the n neurons are kept.
pub(crate) fn kept_mask(keep: &[usize], n: usize, rule: &str) -> Result<Vec<bool>> {
    if keep.is_empty() {
        return Err(Error::invalid(format!(
            "{rule}: no neuron kept (keep is empty)"
        )));
    }
    let mut seen = vec![false; n];
    for &i in keep {
        if i >= n {
            return Err(Error::invalid(format!(
                "{rule}: kept neuron {i} out of range (layer has {n} neurons)"
            )));
        }
        if seen[i] {
            return Err(Error::invalid(format!(
                "{rule}: kept neuron {i} listed twice"
            )));
        }
        seen[i] = true;
    }
    Ok(seen)
}

/// The checks of the assembly functions ([`crate::cpu::fusion::assemble`],
/// [`crate::gpu::fusion::assemble`]), which are public: statistics and next layer as
/// [`fuse_next_layer`] checks them, and `keep` (not empty) and `dropped` splitting the
/// layer's neurons between them, each once.
pub(crate) fn check_assembly(
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: &NextLayer<'_>,
) -> Result<()> {
    let n = check_stats(stats, "fusion assembly")?;
    check_next_layer(next, n, "fusion assembly")?;
    if keep.is_empty() {
        return Err(Error::invalid(
            "fusion assembly: no neuron kept (keep is empty)",
        ));
    }
    let mut seen = vec![false; n];
    for (list, i) in keep
        .iter()
        .map(|&i| ("keep", i))
        .chain(dropped.iter().map(|&i| ("dropped", i)))
    {
        if i >= n {
            return Err(Error::invalid(format!(
                "fusion assembly: {list} holds neuron {i}, out of range (layer has {n} neurons)"
            )));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::invalid(format!(
                "fusion assembly: neuron {i} is listed twice in keep and dropped"
            )));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(Error::invalid(format!(
            "fusion assembly: neuron {i} is in neither keep nor dropped"
        )));
    }
    Ok(())
}

/// Checks Gram statistics (square, finite, over at least one sample, one column sum per
/// neuron) and returns n. `what` starts the error messages ("fusion", ...).
pub(crate) fn check_stats(stats: &GramStats, what: &str) -> Result<usize> {
    let n = stats.gram.nrows();
    if stats.gram.ncols() != n {
        return Err(Error::invalid(format!(
            "{what}: Gram matrix is {} x {}, expected square",
            n,
            stats.gram.ncols()
        )));
    }
    if stats.col_sums.len() != n {
        return Err(Error::invalid(format!(
            "{what}: {} column sums for a {n} x {n} Gram matrix",
            stats.col_sums.len()
        )));
    }
    if stats.samples == 0 {
        return Err(Error::invalid(format!(
            "{what}: Gram statistics over 0 samples"
        )));
    }
    for (j, s) in stats.col_sums.iter().enumerate() {
        if !s.is_finite() {
            return Err(Error::invalid(format!(
                "{what}: column sum {j} is not finite"
            )));
        }
    }
    for j in 0..n {
        for i in 0..n {
            if !stats.gram[(i, j)].is_finite() {
                return Err(Error::invalid(format!(
                    "{what}: Gram entry ({i}, {j}) is not finite"
                )));
            }
        }
    }
    Ok(n)
}

/// Checks that `next` reads the `n` neurons of the layer: shapes, finite values.
pub(crate) fn check_next_layer(next: &NextLayer<'_>, n: usize, what: &str) -> Result<()> {
    if next.n_in != n {
        return Err(Error::invalid(format!(
            "{what}: next layer reads {} inputs but the layer has {n} neurons",
            next.n_in
        )));
    }
    if next.n_out == 0 {
        return Err(Error::invalid(format!("{what}: next layer has 0 outputs")));
    }
    if next.weight.len() != next.n_out * next.n_in {
        return Err(Error::invalid(format!(
            "{what}: next layer weight has {} values, expected {} x {} = {}",
            next.weight.len(),
            next.n_out,
            next.n_in,
            next.n_out * next.n_in
        )));
    }
    if let Some(b) = next.bias {
        if b.len() != next.n_out {
            return Err(Error::invalid(format!(
                "{what}: next layer bias has {} values, expected {}",
                b.len(),
                next.n_out
            )));
        }
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "{what}: next layer bias[{i}] is not finite"
            )));
        }
    }
    if let Some(i) = next.weight.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what}: next layer weight[{}, {}] is not finite",
            i / n.max(1),
            i % n.max(1)
        )));
    }
    Ok(())
}

/// Solves the assembled system for `opts.mode` and builds the fused layer and its error:
/// the one solve of every route. `system`, `keep` and `next` are checked by the caller.
pub(crate) fn solve_fusion(
    system: &FusionSystem,
    keep: &[usize],
    next: NextLayer<'_>,
    opts: &FusionOptions,
) -> Result<FusedLayer> {
    let k = keep.len();
    let n_out = next.n_out;
    let n_in = next.n_in;
    let rhs = &system.rhs;

    // ||Z||^2 = tr(W~_Y G~ W~_Y^T) + 2 <W~_Y^T, R> + tr(W_P G_PP W_P^T): the cross term
    // between kept and dropped parts is exactly the right-hand side already assembled.
    // Per output row, so that each group of rows gets its own error.
    let cross: Vec<f64> = (0..n_out)
        .map(|o| {
            let row = &next.weight[o * n_in..(o + 1) * n_in];
            let kept: f64 = keep
                .iter()
                .enumerate()
                .map(|(i, &y)| row[y] as f64 * rhs[(i, o)])
                .sum();
            kept + next.bias.map_or(0.0, |b| b[o] as f64 * rhs[(k, o)])
        })
        .collect();

    let (x, ridge, damping) = match opts.mode {
        FusionMode::Prune => (Mat::<f64>::zeros(0, n_out), 0.0, Vec::new()),
        FusionMode::FuseNoBias => {
            let (x, ridge) = solve_ridged(
                k,
                n_out,
                k,
                |i, j| system.lhs[(i, j)],
                |i, o| rhs[(i, o)],
                opts.ridge_factor,
            )?;
            (x, ridge, vec![ridge; k])
        }
        FusionMode::Fuse => solve_with_free_constant(system, k, n_out, opts.ridge_factor)?,
    };
    // Rows of the system the mode solved: all k+1 with the bias, the top k without.
    let dim = x.nrows();

    // Z - Z' = W_P a_P - X^T u, so ||Z - Z'||^2 = tr(W_P G_PP W_P^T) - 2 <X, R> + tr(X^T G~ X),
    // and (G~ + diag(damping)) X = R turns the last term into <X, R> - sum_i damping_i
    // ||X_i||^2 (the constant's row is not damped).
    // Per output row: <X, R> and the damped norm of X.
    let explained: Vec<f64> = (0..n_out)
        .map(|o| {
            (0..dim)
                .map(|i| {
                    let v = x[(i, o)];
                    v * rhs[(i, o)] + damping[i] * v * v
                })
                .sum()
        })
        .collect();
    // The error of rows [start, start + rows) with energies (kept, dropped) of those rows.
    let error_of = |start: usize, rows: usize, kept: f64, dropped: f64| {
        let cross: f64 = cross[start..start + rows].iter().sum();
        let explained: f64 = explained[start..start + rows].iter().sum();
        let z_energy = kept + 2.0 * cross + dropped;
        let err_energy = (dropped - explained).max(0.0);
        if z_energy > 0.0 {
            (err_energy / z_energy).sqrt()
        } else {
            0.0
        }
    };
    let relative_error = error_of(0, n_out, system.kept_energy, system.dropped_energy);
    let mut start = 0;
    let group_errors = system
        .groups
        .iter()
        .map(|g| {
            let e = error_of(start, g.rows, g.kept_energy, g.dropped_energy);
            start += g.rows;
            e
        })
        .collect();

    let mut weight = vec![0f32; n_out * k];
    let mut bias = vec![0f32; n_out];
    for o in 0..n_out {
        let row = &next.weight[o * n_in..(o + 1) * n_in];
        let out = &mut weight[o * k..(o + 1) * k];
        for (i, &y) in keep.iter().enumerate() {
            let delta = if i < dim { x[(i, o)] } else { 0.0 };
            out[i] = (row[y] as f64 + delta) as f32;
        }
        let b = next.bias.map_or(0.0, |b| b[o] as f64);
        let delta = if dim == k + 1 { x[(k, o)] } else { 0.0 };
        bias[o] = (b + delta) as f32;
    }
    Ok(FusedLayer {
        weight,
        bias,
        ridge,
        relative_error,
        group_errors,
    })
}

/// Solves the system with the constant, `(lhs + ridge D) X = rhs` with
/// `D = diag(1, ..., 1, 0)`, by eliminating the constant first: with `lhs = [[G, s], [s^T,
/// m]]` and `rhs = [R; r^T]`, the kept rows solve the centred system
/// `(G - s s^T / m + ridge I) X_top = R - s r^T / m` ([`solve_ridged`], so the ridge is a
/// fraction of the centred trace; unresolved neurons get more, see below), and the
/// constant's row is `(r^T - s^T X_top) / m`. Returns the (k+1) x n_out solution, the ridge
/// and each row's damping (ridge plus extra: the diagonal added to `G~`).
fn solve_with_free_constant(
    system: &FusionSystem,
    k: usize,
    n_out: usize,
    factor: f64,
) -> Result<(Mat<f64>, f64, Vec<f64>)> {
    let lhs = system.lhs.as_ref();
    let rhs = system.rhs.as_ref();
    let m = lhs[(k, k)];
    let s = lhs.col(k).subrows(0, k);
    let r = rhs.row(k);
    // A kept neuron that is constant (saturated; every neuron at m = 1) has a centred
    // variance of rounding only, and so has its row of the centred system: solved as they
    // are, rounding divided by rounding gave fused weights that grew with the square of the
    // activations (732 for constants of 1000, a review measured). Such a neuron, whose
    // centred variance is at most CONSTANT_VARIANCE_TOL of its second moment (what
    // fusion-greedy takes for a constant), gets RESIDUAL_VARIANCE_TOL of its second moment
    // on its diagonal: its coefficients stay near 0 and the constant takes its mean. Only
    // constants: a neuron of mean 500 and spread 1 is resolved (the statistics are taken
    // about the means), and damping it as one lost what the next layer read of it.
    let unresolved: Vec<f64> = (0..k)
        .map(|i| {
            let second_moment = lhs[(i, i)];
            if factor > 0.0
                && second_moment - s[i] * s[i] / m <= CONSTANT_VARIANCE_TOL * second_moment
            {
                RESIDUAL_VARIANCE_TOL * second_moment
            } else {
                0.0
            }
        })
        .collect();
    let (mut x, ridge) = solve_ridged(
        k,
        n_out,
        k + 1,
        |i, j| lhs[(i, j)] - s[i] * s[j] / m + if i == j { unresolved[i] } else { 0.0 },
        |i, o| rhs[(i, o)] - s[i] * r[o] / m,
        factor,
    )?;
    for o in 0..n_out {
        let explained: f64 = (0..k).map(|j| s[j] * x[(j, o)]).sum();
        x[(k, o)] = (r[o] - explained) / m;
    }
    let damping = (0..=k)
        .map(|i| if i < k { ridge + unresolved[i] } else { 0.0 })
        .collect();
    Ok((x, ridge, damping))
}

/// Solves `(L + ridge I) X = B` by Cholesky with `ridge = factor * trace(L) / dim`, for the
/// `dim` x `dim` matrix `L` and the `dim` x `n_out` right-hand side `B` given entry by entry
/// (so that a centred system is built straight into the factor's buffer, never stored beside
/// the assembled one). X comes in the top `dim` of `rows` zeroed rows (room the caller
/// fills). When the factorisation fails (the matrix is singular to working precision and
/// the factor is tiny or zero), the ridge grows tenfold until it succeeds; the one used is
/// returned.
fn solve_ridged(
    dim: usize,
    n_out: usize,
    rows: usize,
    lhs: impl Fn(usize, usize) -> f64,
    rhs: impl Fn(usize, usize) -> f64,
    factor: f64,
) -> Result<(Mat<f64>, f64)> {
    let trace: f64 = (0..dim).map(|i| lhs(i, i)).sum();
    // A zero trace means every kept activation is zero (or, centred, constant) on the
    // calibration set: any positive ridge gives the (zero) minimum-norm answer; take one on
    // the scale of 1.
    let scale = if trace > 0.0 { trace / dim as f64 } else { 1.0 };
    let mut ridge = factor * scale;
    let par = faer::get_global_parallelism();
    for _ in 0..40 {
        // The ridged matrix is built and factored in place: one (k+1)^2 beside the system.
        let mut a = Mat::from_fn(dim, dim, |i, j| {
            lhs(i, j) + if i == j { ridge } else { 0.0 }
        });
        if cholesky_lower_in_place(a.as_mut(), par) {
            let mut x = Mat::from_fn(rows, n_out, |i, o| if i < dim { rhs(i, o) } else { 0.0 });
            solve_lower_triangular_in_place(a.as_ref(), x.as_mut().subrows_mut(0, dim), par);
            solve_upper_triangular_in_place(a.transpose(), x.as_mut().subrows_mut(0, dim), par);
            if x.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Ok((x, ridge));
            }
        }
        ridge = (ridge * 10.0).max(scale * 1e-12);
    }
    Err(Error::Numerical(format!(
        "fusion: Cholesky of the {dim} x {dim} normal equations failed even with ridge {ridge:e}"
    )))
}
