//! Selection built for the fusion: greedy forward selection of the neurons that best explain
//! the next layer's pre-activation (orthogonal least squares, as ThiNet prunes channels).
//!
//! Fusion reconstructs the next layer's input from the kept neurons `Y` and a constant. Over
//! the calibration set, with `Z = A W^T + b` the next layer's pre-activation (m x n_out),
//! its error is the part of the centred `Z_c = A_c W^T` that the centred kept activations
//! do not span:
//!
//! `||Z - Z'||_F^2 = ||(I - P_Y) Z_c||_F^2`, `P_Y` the projection onto the columns `Y` of `A_c`.
//!
//! The greedy step adds the neuron `j` whose activation, made orthogonal to those kept
//! (`q_j = (I - P_Y) a_c,j`), explains most of what is left: the gain is
//! `||q_j^T Z_c||^2 / ||q_j||^2`. Everything comes from the statistics: `G_c = G - s s^T / m`,
//! `H = G_c W^T` (n x n_out, row j is `a_c,j^T Z_c`), an incremental Cholesky of `G_c` on the
//! kept set (row `c_j` per neuron, as greedy MAP keeps for its kernel) and the residual of H:
//! adding `t` with Schur complement `d_t^2 = ||q_t||^2` and `e_j = (G_c[t, j] - <c_t, c_j>) / d_t`
//! updates, for every candidate j,
//!
//! `d_j^2 -= e_j^2`,  `H_res[j] -= (e_j / d_t) H_res[t]`,  gain_j = `||H_res[j]||^2 / d_j^2`,
//!
//! and the residual energy drops by the gain of `t`. One step costs O(n (k + n_out)), the
//! whole selection O(n^2 n_out) for H plus O(n k (k + n_out)); memory O(n (k + n_out)), no
//! second n x n matrix and no second look at the data.
//!
//! Done step by step, each step streams through all candidates' rows (`c_j` and `H_res[j]`)
//! for two dot products with its pick's, so memory traffic, not arithmetic, decides the
//! speed. The steps come in panels of [`PANEL_STEPS`] instead. The H_res updates of a panel
//! are held back (a step only needs `H_res[j] . B_t`, which updates `||H_res[j]||^2`) and
//! applied as one matrix product at its end. At its start, the [`LOOKAHEAD`] candidates
//! ranked first get their dot products with every row as two matrix products (`G_c[:, A] -
//! C C[A]^T` and `H_start H_start[A]^T`), so that a pick among them (most are) needs only
//! the panel's own few coefficients per row; a pick outside reads the rows as before.
//!
//! With several next layers (a hidden layer read by several tensors) their rows are
//! stacked: the objective is the sum of their errors.
//!
//! Degenerate neurons. A neuron whose variance left after centring and projection is at most
//! [`residual_floor`] (a [`RESIDUAL_VARIANCE_TOL`] share of its centred variance; for a
//! constant, whose centred variance is rounding, [`CONSTANT_VARIANCE_TOL`] of its second
//! moment `G_jj`) adds nothing fusion can resolve: a dead neuron, a duplicate (or linear
//! combination) of kept ones, a constant. It is never
//! picked while another one is left, and its residual is not updated (no division by a
//! vanishing `d_j`). A candidate whose gain is at most [`ZERO_GAIN_TOL`] of the energy of
//! `Z_c` explains nothing more (the next layer is already reproduced, or does not read it).
//! Each step takes, in this order:
//! 1. the largest gain above that floor (ties: the lowest index);
//! 2. else, the largest share of its centred variance left, i.e. the most new direction for
//!    the layer (ties: the lowest index): once the next layer is explained the rest is chosen
//!    for diversity in the geometry fusion uses;
//! 3. else, the lowest index.
//!
//! Every step is a deterministic function of the statistics: the candidates are updated in
//! parallel, in fixed blocks whose products run on one thread each, so the bits are the same
//! whatever the thread count (on one machine: faer's kernels follow the CPU's SIMD level).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::cpu::contiguous;
use crate::error::{Error, Result};
use crate::fusion::{check_next_layer, check_stats, NextLayer};
use crate::kernel::GramStats;
use crate::linalg::simd::{dot, sub_scaled};
use crate::progress::{NoProgress, Progress};

/// Residual variance, relative to the neuron's centred variance, at or below which a neuron
/// adds nothing (see [`residual_floor`]). The statistics come from sums of f32 products, so a
/// neuron that is a linear combination of others keeps a little residual variance once
/// projected on them. Measured for `a_0 - a_1 / 2 + 1/4` and `3 a_0 - 2.9 a_1`, with
/// offsets 0 ... 500 and m = 300 ... 100000: up to 3.6e-6 of its centred variance with the
/// CPU engine (which centres each chunk before its f32 products), up to 3.5e-5 with the GPU
/// engine (lavapipe; products about the first chunk's means, summed in f32 over longer
/// runs). The floor sits above both.
///
/// It is relative to the centred variance, not the second moment, because both engines take
/// their products about the neurons' means: a neuron of mean 500 and spread 1, a linear
/// function of which the next layer reads, is resolved as well as one of mean 0. A floor of
/// 1e-5 of `G_jj` took it for a constant (a review measured fusion's error at 0.50 instead
/// of 7e-7), as one of 1e-4 did a neuron of mean 100 and spread 0.5 before it.
pub const RESIDUAL_VARIANCE_TOL: f64 = 1e-4;

/// Centred variance, relative to the second moment `G_jj`, at or below which a neuron is a
/// constant: what is left of a constant's centred variance is rounding of the f64 sums
/// (measured: 0 with the CPU engine, up to 6e-14 of `G_jj` with the GPU engine; the
/// tolerance sits 16 times above), while a neuron whose spread is 1e-6 of its mean, about 16
/// f32 steps (mean 1000, spread 0.001), is above it. At 1e-11 a review's neuron of mean 1000
/// and spread 0.002 (183 distinct values), which the next layer read, was taken for a
/// constant.
pub const CONSTANT_VARIANCE_TOL: f64 = 1e-12;

/// The residual variance at or below which neuron j adds nothing: [`RESIDUAL_VARIANCE_TOL`]
/// of its centred variance `centred`, and at least [`CONSTANT_VARIANCE_TOL`] of its second
/// moment `second_moment` (so a constant, whose centred variance is rounding, is at or below
/// it).
pub fn residual_floor(second_moment: f64, centred: f64) -> f64 {
    (RESIDUAL_VARIANCE_TOL * centred.max(0.0)).max(CONSTANT_VARIANCE_TOL * second_moment)
}

/// Gain, relative to the centred energy `||Z_c||_F^2`, at or below which a neuron explains
/// nothing more. Within a panel `||H_res[j]||^2` is updated, not recomputed, so it carries
/// rounding of about 1e-14 of its value at the panel's start, which is at most `C_jj
/// ||Z_c||^2` (Cauchy-Schwarz, `C_jj` the neuron's centred variance); divided by a residual
/// variance down to [`RESIDUAL_VARIANCE_TOL`] of `C_jj`, that is at most 1e-10 of the
/// centred energy.
/// A gain of 1e-9 is a part of the centred pre-activation 3e-5 of its size: nothing that
/// f32 weights would keep.
pub const ZERO_GAIN_TOL: f64 = 1e-9;

/// Candidates a thread updates together in a greedy step (each reads its own rows or its
/// panel coefficients), and the blocks of rows of the lookahead's products.
const ROWS_PER_TASK: usize = 128;

/// What [`fusion_greedy`] selected and the error of the fused next layer it predicts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FusionGreedy {
    /// The kept neurons in selection order: any prefix is the greedy selection of its size.
    pub order: Vec<usize>,
    /// `residual_energy[i]`: `||Z - Z'||_F^2` over the calibration set once the first `i + 1`
    /// neurons of `order` are kept and the others fused (summed over the next layers), before
    /// fusion's ridge (which adds about its relative size, 1e-6, to it).
    pub residual_energy: Vec<f64>,
    /// `||Z_c||_F^2`: the error with no neuron kept, only the constant.
    pub centred_energy: f64,
    /// `||Z||_F^2` with the bias: the denominator of fusion's `relative_error`.
    pub z_energy: f64,
}

impl FusionGreedy {
    /// The relative error `||Z - Z'||_F / ||Z||_F` predicted for the first `kept` neurons
    /// of `order` (0: only the constant), as [`crate::fusion::FusedLayer::relative_error`]
    /// reports it. Panics if `kept` exceeds the selection.
    pub fn relative_error(&self, kept: usize) -> f64 {
        let residual = match kept {
            0 => self.centred_energy,
            k => self.residual_energy[k - 1],
        };
        relative_error(residual, self.z_energy)
    }
}

/// `sqrt(residual / ||Z||^2)`, 0 when `Z` is zero: the relative error fusion reports.
pub(super) fn relative_error(residual: f64, z_energy: f64) -> f64 {
    if z_energy > 0.0 {
        (residual / z_energy).sqrt()
    } else {
        0.0
    }
}

/// Each neuron's centred variance (times m), `G_jj - s_j^2 / m`, at least 0.
pub(super) fn centred_variances(stats: &GramStats) -> Vec<f64> {
    let (g, s, m) = (&stats.gram, &stats.col_sums, stats.samples as f64);
    (0..s.len())
        .map(|j| (g[(j, j)] - s[j] * s[j] / m).max(0.0))
        .collect()
}

/// Each neuron's [`residual_floor`], from its `centred` variance.
pub(super) fn residual_floors(stats: &GramStats, centred: &[f64]) -> Vec<f64> {
    (0..centred.len())
        .map(|j| residual_floor(stats.gram[(j, j)], centred[j]))
        .collect()
}

/// Checks the statistics and that `k` is in 1..=n for `rule`; returns n.
pub(super) fn check_size(stats: &GramStats, k: usize, rule: &str) -> Result<usize> {
    let n = check_stats(stats, rule)?;
    if k == 0 || k > n {
        return Err(Error::invalid(format!(
            "{rule}: cannot keep {k} of {n} neurons: k must be between 1 and {n}"
        )));
    }
    Ok(n)
}

/// Keeps `k` of the layer's neurons by greedy forward selection for the fusion into `next`
/// (one or more layers reading this one, `n_in` = n each), from the layer's Gram statistics.
///
/// Errors (Error::InvalidInput): statistics not square or not finite or over no sample, no
/// next layer, a next layer of the wrong shape or with non-finite values, `k` not in 1..=n,
/// or buffers (`n (k + n_out + 192)` values) this machine cannot allocate.
pub fn fusion_greedy(stats: &GramStats, next: &[NextLayer<'_>], k: usize) -> Result<FusionGreedy> {
    fusion_greedy_with_progress(stats, next, k, &mut NoProgress)
}

/// [`fusion_greedy`] reporting one unit of `progress` per kept neuron.
pub fn fusion_greedy_with_progress(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    k: usize,
    progress: &mut dyn Progress,
) -> Result<FusionGreedy> {
    check_size(stats, k, "fusion-greedy")?;
    let target = Target::new(stats, next)?;
    greedy_on(stats, target, k, progress)
}

/// [`fusion_greedy_with_progress`] on the prepared `target` (statistics and `k` checked).
pub(super) fn greedy_on(
    stats: &GramStats,
    target: Target,
    k: usize,
    progress: &mut dyn Progress,
) -> Result<FusionGreedy> {
    greedy_steps(stats, target, k, LOOKAHEAD, progress).map(|(selection, _)| selection)
}

/// [`greedy_on`] with `lookahead_columns` columns per panel; also returns how many picks had
/// one.
fn greedy_steps(
    stats: &GramStats,
    target: Target,
    k: usize,
    lookahead_columns: usize,
    progress: &mut dyn Progress,
) -> Result<(FusionGreedy, usize)> {
    let n = stats.col_sums.len();
    let n_out = target.n_out;
    let mut chol = allocate(n, k, "the Cholesky rows")?;
    let m = stats.samples as f64;
    let s = &stats.col_sums;
    let g = &stats.gram;

    // H_res as of the start of the current panel; the panel's own steps are applied lazily.
    let mut h_start = target.h;
    let mut panel = Panel::new(n, n_out)?;
    let mut lookahead = Lookahead::new(n, lookahead_columns)?;
    let mut d2 = centred_variances(stats);
    let centred = d2.clone();
    let floor = residual_floors(stats, &centred);
    let mut norm2: Vec<f64> = h_start.chunks_exact(n_out).map(|h| dot(h, h)).collect();
    let gain_floor = ZERO_GAIN_TOL * target.centred_energy;
    let mut taken = vec![false; n];
    let mut energy = target.centred_energy;
    let mut order = Vec::with_capacity(k);
    let mut residual_energy = Vec::with_capacity(k);
    let mut looked_ahead = 0;

    progress.start("fusion-greedy", k as u64);
    for step in 0..k {
        let ranking = Ranking {
            d2: &d2,
            norm2: &norm2,
            floor: &floor,
            taken: &taken,
            centred: &centred,
            gain_floor,
        };
        if panel.len() == 0 {
            let leading = ranking.leading(lookahead_columns);
            lookahead.prepare(leading, stats, &chol, k, step, &h_start, n_out);
        }
        let (t, pick) = ranking.next_pick();
        taken[t] = true;
        order.push(t);
        if pick != Pick::Exhausted {
            let dt2 = d2[t];
            let dt = dt2.sqrt();
            energy = (energy - norm2[t] / dt2).max(0.0);
            let first = panel.first_step;
            let q = panel.len();
            // t's coefficients before the panel, and at the panel's earlier steps.
            let ct = &chol[t * k..t * k + first];
            let ct_panel = panel.coef[t * PANEL_STEPS..t * PANEL_STEPS + q].to_vec();
            // B = H_res[t] / d_t, H_res[t] brought up to date from the panel's start.
            let h_t = &h_start[t * n_out..(t + 1) * n_out];
            let mut b = h_t.to_vec();
            for (q, &c) in ct_panel.iter().enumerate() {
                sub_scaled(&mut b, c, panel.row(q));
            }
            b.iter_mut().for_each(|v| *v /= dt);
            let b_norm2 = dot(&b, &b);
            // <B_q, B> at the panel's earlier steps, for H_res[j] . B = H_start[j] . B -
            // sum_q coef[j, q] <B_q, B>.
            let panel_b: Vec<f64> = (0..q).map(|q| dot(panel.row(q), &b)).collect();
            let column = lookahead.column(t);
            looked_ahead += usize::from(column.is_some());
            // Without a lookahead column: G_c[t, j] = G[j, t] - s_t s_j / m from column t of
            // G, and the products with t's rows read from every candidate's rows.
            let g_t = contiguous(g.col(t));
            let st = s[t] / m;
            let (taken, floor, chol, h_start, lookahead) =
                (&taken, &floor, &chol, &h_start, &lookahead);
            let block_len = ROWS_PER_TASK * PANEL_STEPS;
            // Each block of candidates is updated by one thread, in row order: the same bits
            // whatever the number of threads.
            panel
                .coef
                .par_chunks_mut(block_len)
                .zip(panel.h_dots.par_chunks_mut(block_len))
                .zip(d2.par_chunks_mut(ROWS_PER_TASK))
                .zip(norm2.par_chunks_mut(ROWS_PER_TASK))
                .enumerate()
                .for_each(|(block, (((coef, h_dots), d2), norm2))| {
                    let columns = column.map(|a| lookahead.columns(block, a));
                    let rows = coef
                        .chunks_exact_mut(PANEL_STEPS)
                        .zip(h_dots.chunks_exact_mut(PANEL_STEPS))
                        .zip(d2.iter_mut().zip(norm2.iter_mut()));
                    for (r, ((c, p), (d2, norm2))) in rows.enumerate() {
                        let j = block * ROWS_PER_TASK + r;
                        if taken[j] || *d2 <= floor[j] {
                            continue;
                        }
                        // G_c[j, t] - <c_j, c_t> over the steps before the panel, and
                        // H_start[j] . H_start[t].
                        let (gc_res, hh) = match columns {
                            Some((gc_res, hh)) => (gc_res[r], hh[r]),
                            None => (
                                g_t[j] - st * s[j] - dot(&chol[j * k..j * k + first], ct),
                                dot(&h_start[j * n_out..(j + 1) * n_out], h_t),
                            ),
                        };
                        let e = (gc_res - dot(&c[..q], &ct_panel)) / dt;
                        // H_start[j] . B, from H_start[j] . B_q at the panel's earlier steps.
                        let h_b = (hh - dot(&p[..q], &ct_panel)) / dt;
                        let y = h_b - dot(&c[..q], &panel_b);
                        c[q] = e;
                        p[q] = h_b;
                        *d2 -= e * e;
                        // ||H_res[j] - e B||^2; exact again at the panel's end.
                        *norm2 = (*norm2 - 2.0 * e * y + e * e * b_norm2).max(0.0);
                    }
                });
            panel.push(&b);
        } else {
            // Nothing to update; a zero vector keeps the panel aligned with the steps.
            panel.push(&vec![0.0; n_out]);
        }
        if panel.len() == PANEL_STEPS || step + 1 == k {
            panel.finish(&mut h_start, &mut chol, k);
            let (taken, floor) = (&taken, &floor);
            h_start
                .par_chunks(n_out)
                .zip(norm2.par_iter_mut())
                .zip(d2.par_iter())
                .enumerate()
                .for_each(|(j, ((h, norm2), &d2))| {
                    if !taken[j] && d2 > floor[j] {
                        *norm2 = dot(h, h);
                    }
                });
            panel.restart(step + 1);
        }
        residual_energy.push(energy);
        progress.advance(1);
    }
    progress.finish();
    let selection = FusionGreedy {
        order,
        residual_energy,
        centred_energy: target.centred_energy,
        z_energy: target.z_energy,
    };
    Ok((selection, looked_ahead))
}

/// Greedy steps whose residual updates are held back and applied to H_res as one product
/// (the rows are rewritten once per panel instead of once per step), and whose picks' dot
/// products with every row are mostly computed at the panel's start (see [`LOOKAHEAD`]).
const PANEL_STEPS: usize = 32;

/// Candidates whose products with every row are computed at a panel's start, as two matrix
/// products (see [`Lookahead`]). Measured on the synthetic layer of `benches/select.rs` at
/// n = 8192, k = 2048, n_out = 1024: 90% of a panel's picks were among the 64 leading
/// candidates at its start (67% among 32, 94% among 128); 78% to 91% of all picks with 16
/// or 256 outputs, or 4096 neurons. A pick outside costs one pass over all the candidates'
/// rows, as every step did before, and the products cost `2 n (step + n_out)` per column.
/// The last panel of a selection computes all 64 too: fewer, by the steps left, would make a
/// pick's arithmetic depend on k, and a shorter selection would no longer be a bit-exact
/// prefix of a longer one.
const LOOKAHEAD: usize = 2 * PANEL_STEPS;

/// The steps of the current panel: their vectors `B_q = H_res[t_q] / d_tq` (n_out each),
/// and per neuron (n x [`PANEL_STEPS`], row-major) its Cholesky coefficients at the panel's
/// steps (written into the Cholesky rows at the panel's end) and `H_start[j] . B_q`, so that
/// `H_res[j] = H_start[j] - sum_q coef[j, q] B_q`.
struct Panel {
    n_out: usize,
    first_step: usize,
    rows: Vec<f64>,
    coef: Vec<f64>,
    h_dots: Vec<f64>,
}

impl Panel {
    fn new(n: usize, n_out: usize) -> Result<Self> {
        Ok(Panel {
            n_out,
            first_step: 0,
            rows: Vec::with_capacity(PANEL_STEPS * n_out),
            coef: allocate(n, PANEL_STEPS, "the panel's coefficients")?,
            h_dots: allocate(n, PANEL_STEPS, "the panel's products with H")?,
        })
    }

    fn len(&self) -> usize {
        self.rows.len() / self.n_out
    }

    fn row(&self, q: usize) -> &[f64] {
        &self.rows[q * self.n_out..(q + 1) * self.n_out]
    }

    fn push(&mut self, b: &[f64]) {
        self.rows.extend_from_slice(b);
    }

    /// `H_start -= coef B_panel` over all n rows (those of taken or exhausted neurons are
    /// never read again, and are cheaper to update than to skip in a product), and the
    /// panel's coefficients into the Cholesky rows (n x k, row-major).
    fn finish(&self, h_start: &mut [f64], chol: &mut [f64], k: usize) {
        let p = self.len();
        if p == 0 {
            return;
        }
        let n = chol.len() / k;
        // Column-major views: H_start^T is n_out x n, B_panel n_out x p, and the panel's
        // coefficients the first p rows of the PANEL_STEPS x n matrix whose column j is
        // coef[j].
        matmul(
            MatMut::from_column_major_slice_mut(h_start, self.n_out, n),
            Accum::Add,
            MatRef::from_column_major_slice(&self.rows, self.n_out, p),
            MatRef::from_column_major_slice(&self.coef, PANEL_STEPS, n).subrows(0, p),
            -1.0,
            faer::get_global_parallelism(),
        );
        let first = self.first_step;
        chol.par_chunks_mut(k)
            .zip(self.coef.par_chunks(PANEL_STEPS))
            .for_each(|(c, coef)| c[first..first + p].copy_from_slice(&coef[..p]));
    }

    fn restart(&mut self, first_step: usize) {
        self.first_step = first_step;
        self.rows.clear();
        self.coef.fill(0.0);
        self.h_dots.fill(0.0);
    }
}

/// The products a step needs with its pick's rows, computed for the [`LOOKAHEAD`] leading
/// candidates at a panel's start: for each such neuron `t` and every neuron `j`,
/// `G_c[j, t] - <c_j, c_t>` over the steps before the panel and `H_start[j] . H_start[t]`.
/// A step reads every candidate's Cholesky and H rows (`(t + n_out)` values each) to get
/// them for its pick; as two matrix products at the panel's start, those rows are read once
/// per panel instead of once per step. Stored by blocks of [`ROWS_PER_TASK`] rows, each
/// column-major, so that a step's thread reads its block's column in one run.
struct Lookahead {
    n: usize,
    neurons: Vec<usize>,
    gc_res: Vec<f64>,
    h_dots: Vec<f64>,
}

impl Lookahead {
    /// Room for `columns` columns over n rows.
    fn new(n: usize, columns: usize) -> Result<Self> {
        Ok(Lookahead {
            n,
            neurons: Vec::new(),
            gc_res: allocate(n, columns, "the lookahead's products with G_c")?,
            h_dots: allocate(n, columns, "the lookahead's products with H")?,
        })
    }

    /// Computes the products for `neurons` at the start of the panel beginning at `step`.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        neurons: Vec<usize>,
        stats: &GramStats,
        chol: &[f64],
        k: usize,
        step: usize,
        h_start: &[f64],
        n_out: usize,
    ) {
        let (n, l) = (self.n, neurons.len());
        let (s, m) = (&stats.col_sums, stats.samples as f64);
        // <c_j, c_t> over the steps before the panel, and H_start[t], for each lookahead t:
        // step x l and n_out x l, column-major.
        let c_t = Mat::from_fn(step, l, |i, a| chol[neurons[a] * k + i]);
        let h_t = Mat::from_fn(n_out, l, |i, a| h_start[neurons[a] * n_out + i]);
        let g_cols: Vec<&[f64]> = neurons
            .iter()
            .map(|&t| contiguous(stats.gram.col(t)))
            .collect();
        let block_len = ROWS_PER_TASK * l.max(1);
        self.gc_res[..n * l]
            .par_chunks_mut(block_len)
            .zip(self.h_dots[..n * l].par_chunks_mut(block_len))
            .enumerate()
            .for_each(|(block, (gc_res, h_dots))| {
                let first = block * ROWS_PER_TASK;
                let rows = gc_res.len() / l;
                for (a, &t) in neurons.iter().enumerate() {
                    let st = s[t] / m;
                    for (r, v) in gc_res[a * rows..(a + 1) * rows].iter_mut().enumerate() {
                        *v = g_cols[a][first + r] - st * s[first + r];
                    }
                }
                if step > 0 {
                    matmul(
                        MatMut::from_column_major_slice_mut(gc_res, rows, l),
                        Accum::Add,
                        MatRef::from_row_major_slice(&chol[first * k..(first + rows) * k], rows, k)
                            .subcols(0, step),
                        c_t.as_ref(),
                        -1.0,
                        Par::Seq,
                    );
                }
                matmul(
                    MatMut::from_column_major_slice_mut(h_dots, rows, l),
                    Accum::Replace,
                    MatRef::from_row_major_slice(
                        &h_start[first * n_out..(first + rows) * n_out],
                        rows,
                        n_out,
                    ),
                    h_t.as_ref(),
                    1.0,
                    Par::Seq,
                );
            });
        self.neurons = neurons;
    }

    /// The lookahead column of neuron `t`, if it has one.
    fn column(&self, t: usize) -> Option<usize> {
        self.neurons.iter().position(|&u| u == t)
    }

    /// Column `a`'s two products over the rows of `block`.
    fn columns(&self, block: usize, a: usize) -> (&[f64], &[f64]) {
        let l = self.neurons.len();
        let start = block * ROWS_PER_TASK * l;
        let rows = (self.n - block * ROWS_PER_TASK).min(ROWS_PER_TASK);
        let range = start + a * rows..start + (a + 1) * rows;
        (&self.gc_res[range.clone()], &self.h_dots[range])
    }
}

/// The energy of `Z_c` each neuron explains on its own: its first greedy gain
/// `||a_c,j^T Z_c||^2 / ||a_c,j||^2` (0 for a neuron that adds nothing, see the module docs).
/// Same errors as [`fusion_greedy`].
pub fn single_neuron_gains(stats: &GramStats, next: &[NextLayer<'_>]) -> Result<Vec<f64>> {
    let n = check_stats(stats, "fusion gains")?;
    let target = Target::new(stats, next)?;
    let (g, s, m) = (&stats.gram, &stats.col_sums, stats.samples as f64);
    Ok((0..n)
        .map(|j| {
            let variance = g[(j, j)] - s[j] * s[j] / m;
            if variance <= residual_floor(g[(j, j)], variance) {
                return 0.0;
            }
            let h = &target.h[j * target.n_out..(j + 1) * target.n_out];
            dot(h, h) / variance
        })
        .collect())
}

/// How a step chose its neuron, in the order of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pick {
    /// The largest gain above the floor.
    Gain,
    /// No gain left: the largest relative residual variance.
    Variance,
    /// Nothing left but neurons that add nothing: the lowest index.
    Exhausted,
}

/// The candidates as a step sees them, ranked by the rules of the module docs.
struct Ranking<'a> {
    d2: &'a [f64],
    norm2: &'a [f64],
    floor: &'a [f64],
    taken: &'a [bool],
    centred: &'a [f64],
    gain_floor: f64,
}

impl Ranking<'_> {
    /// Candidate `j`'s rank key, lower first: the rule that would choose it, then the
    /// negated value that rule maximises (ties go to the lowest index).
    fn key(&self, j: usize) -> (Pick, f64) {
        let d2 = self.d2[j];
        if d2 <= self.floor[j] {
            return (Pick::Exhausted, 0.0);
        }
        let gain = self.norm2[j] / d2;
        if gain > self.gain_floor {
            (Pick::Gain, -gain)
        } else {
            // d2 > floor >= 0 implies a positive centred variance.
            (Pick::Variance, -(d2 / self.centred[j]))
        }
    }

    fn keys(&self) -> impl Iterator<Item = (Pick, f64, usize)> + '_ {
        (0..self.d2.len()).filter(|&j| !self.taken[j]).map(|j| {
            let (pick, value) = self.key(j);
            (pick, value, j)
        })
    }

    /// The next neuron and which rule chose it.
    fn next_pick(&self) -> (usize, Pick) {
        let (pick, _, j) = self
            .keys()
            .min_by(rank_order)
            .expect("k <= n leaves a candidate at every step");
        (j, pick)
    }

    /// The `count` candidates ranked first that are not exhausted, in no particular order.
    fn leading(&self, count: usize) -> Vec<usize> {
        let mut keys: Vec<_> = self
            .keys()
            .filter(|&(pick, _, _)| pick != Pick::Exhausted)
            .collect();
        if keys.len() > count {
            keys.select_nth_unstable_by(count, rank_order);
            keys.truncate(count);
        }
        keys.into_iter().map(|(_, _, j)| j).collect()
    }
}

fn rank_order(a: &(Pick, f64, usize), b: &(Pick, f64, usize)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// The next layers as the selection sees them: `H = G_c W^T` with the rows of every next
/// layer's W stacked, and the energies of `Z`.
#[derive(Clone)]
pub(super) struct Target {
    /// Stacked output width.
    pub(super) n_out: usize,
    /// `H`, n x n_out, row-major (row j is neuron j's cross-covariance with `Z`).
    pub(super) h: Vec<f64>,
    /// `||Z_c||_F^2 = <W, H^T>`.
    pub(super) centred_energy: f64,
    /// `||Z||_F^2 = ||Z_c||_F^2 + m ||W mu + b||^2`.
    pub(super) z_energy: f64,
}

impl Target {
    pub(super) fn new(stats: &GramStats, next: &[NextLayer<'_>]) -> Result<Self> {
        let n = stats.col_sums.len();
        if next.is_empty() {
            return Err(Error::invalid(
                "fusion-greedy needs the next layer's weights (no next layer given)",
            ));
        }
        for layer in next {
            check_next_layer(layer, n, "fusion-greedy")?;
        }
        let n_out: usize = next.iter().map(|l| l.n_out).sum();
        let mut w = allocate(n, n_out, "the next layers' weights")?;
        for (row, &v) in w.iter_mut().zip(next.iter().flat_map(|l| l.weight.iter())) {
            *row = v as f64;
        }
        let bias: Vec<f64> = next
            .iter()
            .flat_map(|l| (0..l.n_out).map(|o| l.bias.map_or(0.0, |b| b[o] as f64)))
            .collect();
        let m = stats.samples as f64;
        let s = &stats.col_sums;

        // H^T = W G - (W s) s^T / m, column-major n_out x n: column j is row j of H.
        let mut h = allocate(n, n_out, "H = G_c W^T")?;
        let w_ref = MatRef::from_row_major_slice(&w, n_out, n);
        matmul(
            MatMut::from_column_major_slice_mut(&mut h, n_out, n),
            Accum::Replace,
            w_ref,
            stats.gram.as_ref(),
            1.0,
            faer::get_global_parallelism(),
        );
        let ws: Vec<f64> = w.chunks_exact(n).map(|row| dot(row, s)).collect();
        h.par_chunks_mut(n_out).enumerate().for_each(|(j, col)| {
            let sj = s[j] / m;
            for (v, &wso) in col.iter_mut().zip(&ws) {
                *v -= wso * sj;
            }
        });
        // <W, H^T> = sum_j sum_o W[o, j] H[j, o]; the per-neuron terms are added in index
        // order, so that the result does not depend on the thread count.
        let per_neuron: Vec<f64> = (0..n)
            .into_par_iter()
            .map(|j| {
                let hj = &h[j * n_out..(j + 1) * n_out];
                hj.iter()
                    .enumerate()
                    .map(|(o, v)| w[o * n + j] * v)
                    .sum::<f64>()
            })
            .collect();
        let centred_energy = per_neuron.iter().sum::<f64>().max(0.0);
        let mean_energy: f64 = ws
            .iter()
            .zip(&bias)
            .map(|(wso, b)| (wso / m + b).powi(2))
            .sum();
        Ok(Target {
            n_out,
            h,
            centred_energy,
            z_energy: centred_energy + m * mean_energy,
        })
    }
}

/// A zeroed buffer of `n * width` f64, or an error naming what it is for when this machine
/// cannot allocate it (rather than an abort).
pub(super) fn allocate(n: usize, width: usize, what: &str) -> Result<Vec<f64>> {
    let len = n.checked_mul(width);
    let mut buf = Vec::new();
    if len.is_none_or(|len| buf.try_reserve_exact(len).is_err()) {
        return Err(Error::invalid(format!(
            "fusion-greedy over {n} neurons needs {what} ({n} x {width} values, {:.1} GB), \
             more than this machine can allocate",
            n as f64 * width as f64 * 8e-9
        )));
    }
    buf.resize(n * width, 0.0);
    Ok(buf)
}

/// A layer of `n` rectified mixtures of `n` sources over 300 samples and the target of a
/// next layer of `n_out` random outputs.
#[cfg(test)]
pub(super) fn test_layer(seed: u64, n: usize, n_out: usize) -> (GramStats, Target) {
    mixture_layer(seed, n, n, true, n_out, n)
}

/// A layer of `n` neurons over 300 samples, each a mixture of the same `sources` random
/// sources plus an offset (rectified when `rectified`; else the centred layer has rank
/// `sources`), and the target of a next layer of `n_out` random outputs that reads only the
/// first `read` neurons.
#[cfg(test)]
fn mixture_layer(
    seed: u64,
    n: usize,
    sources: usize,
    rectified: bool,
    n_out: usize,
    read: usize,
) -> (GramStats, Target) {
    use rand::{Rng, SeedableRng};
    let m = 300;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mix = Mat::from_fn(sources, n, |_, _| rng.random_range(-1.0..1.0));
    let raw = Mat::from_fn(m, sources, |_, _| rng.random_range(-1.0..1.0));
    let a = Mat::from_fn(m, n, |t, j| {
        let v: f64 = (0..sources).map(|i| raw[(t, i)] * mix[(i, j)]).sum::<f64>() + 0.2;
        if rectified {
            v.max(0.0)
        } else {
            v
        }
    });
    let stats = GramStats {
        gram: a.transpose() * &a,
        col_sums: (0..n).map(|j| (0..m).map(|t| a[(t, j)]).sum()).collect(),
        samples: m,
    };
    let weight: Vec<f32> = (0..n_out * n)
        .map(|i| {
            let w = rng.random_range(-1.0..1.0);
            if i % n < read {
                w
            } else {
                0.0
            }
        })
        .collect();
    let next = [NextLayer {
        weight: &weight,
        bias: None,
        n_out,
        n_in: n,
    }];
    let target = Target::new(&stats, &next).unwrap();
    (stats, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::linalg::solvers::Solve;

    /// `||Z_c||^2 - tr(H_Y^T G_c[Y, Y]^-1 H_Y)`: the residual energy of the kept set `y`,
    /// solved directly.
    fn residual_of(stats: &GramStats, target: &Target, y: &[usize]) -> f64 {
        let (s, m, n_out) = (&stats.col_sums, stats.samples as f64, target.n_out);
        let gc = Mat::from_fn(y.len(), y.len(), |a, b| {
            stats.gram[(y[a], y[b])] - s[y[a]] * s[y[b]] / m
        });
        let h_y = Mat::from_fn(y.len(), n_out, |a, o| target.h[y[a] * n_out + o]);
        let x = gc.llt(faer::Side::Lower).unwrap().solve(&h_y);
        let explained: f64 = (0..y.len())
            .flat_map(|a| (0..n_out).map(move |o| (a, o)))
            .map(|(a, o)| h_y[(a, o)] * x[(a, o)])
            .sum();
        target.centred_energy - explained
    }

    /// Over several panels and more candidates than the lookahead holds, the picks whose
    /// products came from the panel's matrix products and those read row by row make the
    /// same selection: on a full-rank layer, and on one whose next layer reads 12 of its
    /// neurons and whose centred activations have rank 70, so that the gains run out
    /// (picks by residual variance) and then the rank (the rest in index order). A
    /// shorter selection is a bit-exact prefix of a longer one (the Cholesky rows are k
    /// wide, and the products read them), and every prefix's energy is the one its set has.
    #[test]
    fn lookahead_columns_and_row_reads_select_alike() {
        // (layer, k, rank of its centred activations within the k picks)
        let full_rank = (test_layer(5, 160, 9), 110, 110);
        let degenerate = (mixture_layer(11, 200, 70, false, 5, 12), 150, 70);
        for ((stats, target), k, rank) in [full_rank, degenerate] {
            let n = stats.col_sums.len();
            let run = |columns, k| {
                greedy_steps(&stats, target.clone(), k, columns, &mut NoProgress).unwrap()
            };
            let (rows_only, none) = run(0, k);
            assert_eq!(none, 0);
            for columns in [3, LOOKAHEAD] {
                let (selection, looked_ahead) = run(columns, k);
                // Both ways in one selection.
                assert!(
                    looked_ahead > 0 && looked_ahead < k,
                    "n = {n}, {columns} columns: {looked_ahead} picks of {k} looked ahead"
                );
                assert_eq!(
                    selection.order, rows_only.order,
                    "n = {n}, {columns} columns"
                );
                for (a, b) in selection
                    .residual_energy
                    .iter()
                    .zip(&rows_only.residual_energy)
                {
                    assert!((a - b).abs() <= 1e-10 * target.centred_energy, "{a} vs {b}");
                }
            }
            let (short, _) = run(LOOKAHEAD, 70);
            let (long, _) = run(LOOKAHEAD, k);
            assert_eq!(short.order, long.order[..70]);
            let bits = |e: &[f64]| e.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&short.residual_energy),
                bits(&long.residual_energy[..70])
            );
            // Once the rank is used up, the rest come in index order.
            let tail = &rows_only.order[rank..];
            assert!(tail.windows(2).all(|w| w[0] < w[1]), "n = {n}: {tail:?}");
            for kept in [1, 31, 32, 33, 64, rank] {
                let direct = residual_of(&stats, &target, &rows_only.order[..kept]);
                let predicted = rows_only.residual_energy[kept - 1];
                assert!(
                    (predicted - direct).abs() <= 1e-9 * target.centred_energy,
                    "n = {n}, {kept} kept: predicted {predicted}, direct {direct}"
                );
            }
        }
    }
}
