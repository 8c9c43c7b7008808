//! Selection built for the fusion, improved by exchanges: fusion-greedy's set, then one kept
//! neuron swapped for one dropped neuron while a swap lowers the fused error (the exchange
//! algorithm of optimal design, Fedorov 1972).
//!
//! The objective is fusion-greedy's: the part of the next layers' centred pre-activation
//! `Z_c` that the centred kept activations `Y` explain,
//! `E(Y) = tr(H_Y^T S H_Y)` with `S = G_c[Y, Y]^-1`, `H = G_c W^T`. Greedy forward selection
//! never revisits a choice, so a neuron picked early, when it explained most, stays kept once
//! later ones explain the same; a swap repairs that. Every pair (kept slot i, dropped j) is
//! scored exactly from the current state, in O(1) each:
//!
//! - removing `y_i` loses `||B_i||^2 / S_ii` (`B = S H_Y`, row i the regression coefficients
//!   of `Z_c` on `y_i`);
//! - with `w_j = S G_c[Y, j]` (the coefficients of `a_j` on `Y`), `d_j` its residual variance
//!   and `h_j = H_j - w_j^T H_Y` its residual cross-covariance, `a_j` regressed on `Y \ {y_i}`
//!   leaves `d'_j = d_j + w_ji^2 / S_ii` and `h'_j = h_j + (w_ji / S_ii) B_i`, so it gains
//!   `||h'_j||^2 / d'_j` with `||h'_j||^2 = ||h_j||^2 + 2 w_ji <h_j, B_i> / S_ii +
//!   w_ji^2 ||B_i||^2 / S_ii^2`.
//!
//! The state is `S`, `B`, and per neuron `w_j`, `d_j`, `h_j`, `||h_j||^2` and
//! `M_j = B h_j` (so `<h_j, B_i>` is `M_ji`). A swap is a removal and an addition, each a
//! rank-one change of all of it: O(k^2 + k n_out) on `S` and `B`, and O(k + n_out) on each
//! row. Reading and writing every row costs more than a swap's arithmetic on a row in cache,
//! so the swaps come in batches, one pass over the rows per batch: the pass brings each row
//! through the batch's swaps, then scores its pairs for the next batch. A row goes through a
//! whole batch in one sweep: its products with the batch's vectors at the start give every
//! swap's coefficients (see `bring_through`), and rows are moved four at a time, so that each
//! of the batch's vectors is read once for four rows. A batch starts with
//! the best pair and goes on down the pass's ranking of rows while the next row's best pair,
//! rescored exactly after the swaps made so far, still beats the ranking's next score (see
//! `SwapState::batch`): up to [`MAX_BATCH`] swaps, usually the ones a swap-by-swap search
//! would make. The state is built from the statistics, O(n k (k + n_out)) like the greedy
//! pass, at the start, every [`REFRESH_SWAPS`] swaps and before stopping, so that the
//! updates' rounding never decides the result: the search ends when the rebuilt state finds
//! no swap that gains more than [`ZERO_GAIN_TOL`] of `||Z_c||^2`, or after [`max_swaps`]
//! swaps.
//!
//! Degenerate neurons follow fusion-greedy's rules ([`super::residual_floor`]): a dropped
//! neuron comes in only if its residual variance on the kept set without the slot it takes is
//! above its floor, and the best pair is made only if every other kept neuron's residual on
//! the new set stays above its own floor (checked in O(k), `SwapState::admissible`; a refused
//! pair is set aside and the next best taken, up to [`MAX_REFUSED`] in a row), so the kept
//! set stays resolvable: the statistics come from f32 products, and on a set that spans the
//! layer their rounding would otherwise pass for gains. For the same reason no swap is made
//! once the predicted error is at or below [`RESOLVED_ERROR`], what the statistics resolve.
//! Should the rebuilt state still find the end worse than the start, the start is returned.
//! A kept neuron that adds nothing (a constant, a duplicate, or any neuron when
//! fusion-greedy ran out of neurons that add something) holds an empty slot: removing it
//! costs nothing, and any neuron that adds something takes its place.
//!
//! Every step is deterministic: candidates are scored row by row and ranked with ties to the
//! lowest neuron, then the lowest slot, whatever the number of threads.

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef};
use rayon::prelude::*;

use super::fusion_greedy::{
    allocate, centred_variances, check_size, greedy_on, relative_error, residual_floors,
    FusionGreedy, Target,
};
use super::ZERO_GAIN_TOL;
use crate::cpu::{contiguous, contiguous_mut};
use crate::error::Result;
use crate::fusion::{check_stats, kept_mask, NextLayer};
use crate::kernel::GramStats;
use crate::linalg::cholesky_lower_in_place;
use crate::linalg::simd::{dot, dot_portable, sub_scaled, sub_scaled_terms_rows};
use crate::progress::{NoProgress, Progress};

/// Swaps between two rebuilds of the state from the statistics. A rebuild costs
/// O(n k (k + n_out)) in matrix products (about 2.5 s at n = 8192, k = 2048, as much as 120
/// to 150 swaps there); in f64 the rank-one updates' rounding stays
/// near machine precision over a thousand swaps (the tests compare rebuilding after every
/// swap with never), and the search always confirms on a rebuilt state before it stops.
pub const REFRESH_SWAPS: usize = 1024;

/// The predicted relative error at or below which no swap is made: fusion's reported error
/// resolves errors only down to a few 1e-4 (see
/// [`crate::fusion::FusedLayer::relative_error`]), so below this the statistics cannot tell
/// a better set from a worse one. A review's layers of neurons combining a few others, up to
/// noise of 0 to 0.1%, showed it: at k equal to the rank, swaps from greedy's sets (errors
/// on the data about 2e-5) left errors of 1e-3 on the data in most cases. The stop is flat:
/// on a well-conditioned set, whose errors the statistics resolve far lower, it also skips
/// real gains (a second review's layer: 7.6e-4 where one swap gives 1.4e-4).
pub const RESOLVED_ERROR: f64 = 1e-3;

/// Pairs in a row found best but refused because they would leave a kept neuron at or below
/// its floor (see the module docs), after which the search stops: the state is then close
/// to degenerate, and the next pairs are as likely to be refused.
pub const MAX_REFUSED: usize = 16;

/// Swaps made in one pass over the rows at most (see `SwapState::batch`). A pass reads and
/// writes the whole state, O(n (k + n_out)) values: at n = 8192, k = 2048, n_out = 1024
/// (2 cores) about 15 to 20 ms per pass, and 7.5 to 9 ms more for each swap of the batch
/// (against 17 and 14 to 16 ms when a row went through the swaps one at a time). Measured
/// there: 2.6 swaps per pass on average, 10 at most.
pub const MAX_BATCH: usize = 16;

/// Rows a pass returns, best first, for `SwapState::batch` to choose from: a batch stops
/// at [`MAX_BATCH`] swaps, and its last candidate needs the next one's score.
const CANDIDATES: usize = MAX_BATCH + 1;

/// The most swaps made for `k` kept neurons: `2 k`. Every swap strictly lowers the error, so
/// the search ends by itself; the bound only caps its time. Measured on the demo's layers:
/// at most 0.84 k swaps (k = 25), 0.27 k at k = 400.
pub fn max_swaps(k: usize) -> usize {
    2 * k
}

/// What [`fusion_swap`] selected and the error of the fused next layers it predicts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FusionSwap {
    /// The kept neurons, sorted.
    pub kept: Vec<usize>,
    /// Swaps made.
    pub swaps: usize,
    /// Passes over the rows of the state (each reads every candidate's row once; a pass
    /// makes up to [`MAX_BATCH`] swaps, and one follows each rebuild of the state).
    pub passes: usize,
    /// Whether the search stopped at [`max_swaps`] with a swap still to make (else it ended
    /// at a set no single swap improves).
    pub capped: bool,
    /// `||Z - Z'||_F^2` over the calibration set with the starting set kept (for
    /// [`fusion_swap`], fusion-greedy's), the others fused.
    pub start_residual_energy: f64,
    /// `||Z - Z'||_F^2` with `kept` kept and the others fused (summed over the next layers),
    /// before fusion's ridge; computed afresh from the statistics.
    pub residual_energy: f64,
    /// `||Z_c||_F^2`: the error with no neuron kept, only the constant.
    pub centred_energy: f64,
    /// `||Z||_F^2` with the bias: the denominator of fusion's `relative_error`.
    pub z_energy: f64,
}

/// How a fusion-swap search went: what a report says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SwapSearch {
    /// Swaps made.
    pub swaps: usize,
    /// Passes over the rows of the state.
    pub passes: usize,
    /// Whether the search stopped at [`max_swaps`] with a swap still to make.
    pub capped: bool,
}

impl FusionSwap {
    /// The search's counts.
    pub fn search(&self) -> SwapSearch {
        SwapSearch {
            swaps: self.swaps,
            passes: self.passes,
            capped: self.capped,
        }
    }

    /// The relative error `||Z - Z'||_F / ||Z||_F` predicted for the kept set, as
    /// [`crate::fusion::FusedLayer::relative_error`] reports it.
    pub fn relative_error(&self) -> f64 {
        relative_error(self.residual_energy, self.z_energy)
    }

    /// The same for the starting set.
    pub fn start_relative_error(&self) -> f64 {
        relative_error(self.start_residual_energy, self.z_energy)
    }
}

/// Keeps `k` of the layer's neurons for the fusion into `next`: fusion-greedy's selection
/// ([`super::fusion_greedy()`]), then swaps while one lowers the fused error (see the module
/// docs). Errors as [`super::fusion_greedy()`].
pub fn fusion_swap(stats: &GramStats, next: &[NextLayer<'_>], k: usize) -> Result<FusionSwap> {
    fusion_swap_with_progress(stats, next, k, &mut NoProgress)
}

/// [`fusion_swap`] reporting fusion-greedy's steps, then the swaps, to `progress`.
pub fn fusion_swap_with_progress(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    k: usize,
    progress: &mut dyn Progress,
) -> Result<FusionSwap> {
    check_size(stats, k, "fusion-swap")?;
    Ok(greedy_then_swaps(stats, next, k, progress)?.1)
}

/// Fusion-greedy's selection of `k` (for a later prefix) and [`fusion_swap`]'s, sharing
/// `H = G_c W^T`.
pub(super) fn greedy_then_swaps(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    k: usize,
    progress: &mut dyn Progress,
) -> Result<(FusionGreedy, FusionSwap)> {
    let target = Target::new(stats, next)?;
    let greedy = greedy_on(stats, target.clone(), k, progress)?;
    let swapped = swap_on(stats, &target, &greedy.order, progress)?;
    Ok((greedy, swapped))
}

/// Improves the kept set `start` (distinct indices below n, any order) by swaps for the
/// fusion into `next`: the local search of [`fusion_swap`] from any set. Errors as
/// [`super::fusion_greedy()`], and for indices out of range or repeated.
pub fn improve_by_swaps(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    start: &[usize],
) -> Result<FusionSwap> {
    improve_by_swaps_with_progress(stats, next, start, &mut NoProgress)
}

/// [`improve_by_swaps`] reporting one unit of `progress` per swap, out of [`max_swaps`] (the
/// stage ends early when no swap helps).
pub fn improve_by_swaps_with_progress(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    start: &[usize],
    progress: &mut dyn Progress,
) -> Result<FusionSwap> {
    let n = check_stats(stats, "fusion-swap")?;
    kept_mask(start, n, "fusion-swap")?;
    let target = Target::new(stats, next)?;
    swap_on(stats, &target, start, progress)
}

/// The search from the checked `start` on the prepared `target`.
fn swap_on(
    stats: &GramStats,
    target: &Target,
    start: &[usize],
    progress: &mut dyn Progress,
) -> Result<FusionSwap> {
    search(stats, target, start, REFRESH_SWAPS, progress)
}

/// [`swap_on`] rebuilding the state every `refresh` swaps.
fn search(
    stats: &GramStats,
    target: &Target,
    start: &[usize],
    refresh: usize,
    progress: &mut dyn Progress,
) -> Result<FusionSwap> {
    let k = start.len();
    let mut state = SwapState::new(stats, target, start)?;
    let start_residual_energy = state.residual_energy();
    let gain_floor = ZERO_GAIN_TOL * target.centred_energy;
    let cap = max_swaps(k);
    let resolved = RESOLVED_ERROR * RESOLVED_ERROR * target.z_energy;
    let (mut swaps, mut passes, mut since_rebuild) = (0, 1, 0);
    // Pairs found best but refused (see `SwapState::admissible`) since the last swap.
    let mut refused: Vec<(usize, usize)> = Vec::new();
    progress.start("fusion-swap", cap as u64);
    let mut candidates = state.pass(&[], gain_floor, &refused);
    let mut capped = false;
    loop {
        let residual = state.residual_energy();
        if residual <= resolved {
            candidates.clear();
        }
        match candidates.first() {
            Some(&best) if !state.admissible(best.slot, &state.row(best.neuron), &[]) => {
                refused.push((best.neuron, best.slot));
                candidates = if refused.len() < MAX_REFUSED {
                    passes += 1;
                    state.pass(&[], gain_floor, &refused)
                } else {
                    Vec::new()
                };
            }
            // A swap that would be made is left: the cap stopped the search.
            Some(_) if swaps == cap => {
                capped = true;
                break;
            }
            Some(_) => {
                let updates = state.batch(&candidates, residual, gain_floor, cap - swaps, resolved);
                candidates = state.pass(&updates, gain_floor, &[]);
                refused.clear();
                passes += 1;
                swaps += updates.len();
                since_rebuild += updates.len();
                progress.advance(updates.len() as u64);
                if since_rebuild >= refresh {
                    state.rebuild()?;
                    candidates = state.pass(&[], gain_floor, &refused);
                    passes += 1;
                    since_rebuild = 0;
                }
            }
            // The updated state found nothing: confirm on a fresh one.
            None if since_rebuild > 0 => {
                state.rebuild()?;
                refused.clear();
                candidates = state.pass(&[], gain_floor, &refused);
                passes += 1;
                since_rebuild = 0;
            }
            None => break,
        }
    }
    if since_rebuild > 0 {
        state.rebuild()?;
    }
    progress.finish();
    // Every swap lowered the error by its exact score; should the rebuilt state say
    // otherwise, the start is kept.
    let mut residual_energy = state.residual_energy();
    let mut kept = state.slots;
    if residual_energy > start_residual_energy {
        (kept, swaps, capped, residual_energy) = (start.to_vec(), 0, false, start_residual_energy);
    }
    kept.sort_unstable();
    Ok(FusionSwap {
        kept,
        swaps,
        passes,
        capped,
        start_residual_energy,
        residual_energy,
        centred_energy: target.centred_energy,
        z_energy: target.z_energy,
    })
}

/// The search's state; row-major n x k for `w` and `mb`, n x n_out for `h_res`. Slot `i`
/// holds kept neuron `slots[i]`; it is active when `active[i]` (its neuron is resolved
/// against the other active ones), else empty for the algebra (columns i of `S`, `B`, `w`,
/// `mb` are zero).
struct SwapState<'s> {
    stats: &'s GramStats,
    h: &'s [f64],
    centred_energy: f64,
    n: usize,
    k: usize,
    n_out: usize,
    slots: Vec<usize>,
    active: Vec<bool>,
    /// Kept (in a slot, active or not): never a candidate.
    taken: Vec<bool>,
    floor: Vec<f64>,
    /// S as of the last batch (a batch's own swaps are applied to it once, at its end).
    s: Mat<f64>,
    /// S's diagonal, kept up to date through a batch.
    s_diag: Vec<f64>,
    /// B = S H_Y, k x n_out row-major.
    b: Vec<f64>,
    /// What scoring needs of S and B, kept with them.
    scores: SlotScores,
    w: Vec<f64>,
    d: Vec<f64>,
    h_res: Vec<f64>,
    h_norm2: Vec<f64>,
    mb: Vec<f64>,
}

/// Rows a thread updates together.
const ROWS_PER_TASK: usize = 64;

impl<'s> SwapState<'s> {
    fn new(stats: &'s GramStats, target: &'s Target, start: &[usize]) -> Result<Self> {
        let n = stats.col_sums.len();
        let (k, n_out) = (start.len(), target.n_out);
        let floor = residual_floors(stats, &centred_variances(stats));
        let mut taken = vec![false; n];
        for &j in start {
            taken[j] = true;
        }
        let mut state = SwapState {
            stats,
            h: &target.h,
            centred_energy: target.centred_energy,
            n,
            k,
            n_out,
            slots: start.to_vec(),
            active: vec![false; k],
            taken,
            floor,
            s: Mat::zeros(k, k),
            s_diag: vec![0.0; k],
            b: vec![0.0; k * n_out],
            scores: SlotScores {
                inv: Vec::new(),
                b_norm2: Vec::new(),
                loss: Vec::new(),
            },
            w: allocate(n, k, "the kept set's coefficients")?,
            d: vec![0.0; n],
            h_res: allocate(n, n_out, "the unexplained part of G W^T")?,
            h_norm2: vec![0.0; n],
            mb: allocate(n, k, "the residuals' products with B")?,
        };
        state.rebuild()?;
        Ok(state)
    }

    /// `G_c[i, j]`.
    fn gc(&self, i: usize, j: usize) -> f64 {
        let s = &self.stats.col_sums;
        self.stats.gram[(i, j)] - s[i] * s[j] / self.stats.samples as f64
    }

    /// The Cholesky factor of `G_c` on the `slots` (in their order) whose pivots, their
    /// residual variances on the slots kept before them, are above their floors, row by row,
    /// skipping the others; and the slots kept.
    fn factor_skipping(&self, gc_y: &[f64], slots: &[usize]) -> (Vec<usize>, Mat<f64>) {
        let k = self.k;
        let mut active: Vec<usize> = Vec::with_capacity(slots.len());
        let mut rows: Vec<Vec<f64>> = Vec::with_capacity(slots.len());
        for &slot in slots {
            let y = self.slots[slot];
            let mut row = Vec::with_capacity(active.len() + 1);
            for (b, &other) in active.iter().enumerate() {
                let r: &Vec<f64> = &rows[b];
                let v = (gc_y[y * k + other] - dot(&row[..b], &r[..b])) / r[b];
                row.push(v);
            }
            let pivot = gc_y[y * k + slot] - dot(&row, &row);
            if pivot > self.floor[y] {
                row.push(pivot.sqrt());
                rows.push(row);
                active.push(slot);
            }
        }
        let ka = active.len();
        let l = Mat::from_fn(ka, ka, |a, b| if b <= a { rows[a][b] } else { 0.0 });
        (active, l)
    }

    /// The slots whose pivots, in slot order over the slots not `excluded`, are above their
    /// floors, and `G_c` on them inverted (in their order).
    fn inverse_on_active(&self, gc_y: &[f64], excluded: &[bool]) -> (Vec<usize>, Mat<f64>) {
        let par = faer::get_global_parallelism();
        let candidates: Vec<usize> = (0..self.k).filter(|&slot| !excluded[slot]).collect();
        // Usually every pivot is above its floor: then faer's blocked factor of all of them
        // is the one `factor_skipping` would build, in a fraction of the time.
        let y: Vec<usize> = candidates.iter().map(|&slot| self.slots[slot]).collect();
        let kc = y.len();
        let k = self.k;
        let gc = |a: usize, b: usize| gc_y[y[a] * k + candidates[b]];
        let mut l = Mat::from_fn(kc, kc, |a, b| if b <= a { gc(a, b) } else { 0.0 });
        let factored = cholesky_lower_in_place(l.as_mut(), par)
            && (0..kc).all(|a| l[(a, a)] * l[(a, a)] > self.floor[y[a]]);
        let (active, l) = if factored {
            (candidates, l)
        } else {
            self.factor_skipping(gc_y, &candidates)
        };
        let ka = active.len();
        // S = L^-T L^-1.
        let mut l_inv = Mat::<f64>::zeros(ka, ka);
        invert_lower_triangular(l_inv.as_mut(), l.as_ref(), par);
        for a in 0..ka {
            for b in a + 1..ka {
                l_inv[(a, b)] = 0.0;
            }
        }
        let mut s_active = Mat::<f64>::zeros(ka, ka);
        matmul(
            s_active.as_mut(),
            Accum::Replace,
            l_inv.transpose(),
            l_inv.as_ref(),
            1.0,
            par,
        );
        (active, s_active)
    }

    /// Builds the state from the statistics for the current slots, deciding which are active:
    /// a kept neuron whose residual variance on the other active ones is at or below its
    /// floor is left out of the algebra.
    fn rebuild(&mut self) -> Result<()> {
        let (n, k, n_out) = (self.n, self.k, self.n_out);
        // G_c[:, Y], by blocks of rows, so that each column is read in runs and the block stays
        // in cache; its kept rows are G_c[Y, Y].
        let mut gc_y = allocate(n, k, "G_c on the kept columns")?;
        let cols: Vec<&[f64]> = self
            .slots
            .iter()
            .map(|&y| contiguous(self.stats.gram.col(y)))
            .collect();
        let m = self.stats.samples as f64;
        let sums = &self.stats.col_sums;
        gc_y.par_chunks_mut(ROWS_PER_TASK * k)
            .enumerate()
            .for_each(|(block, rows)| {
                let first = block * ROWS_PER_TASK;
                for (slot, col) in cols.iter().enumerate() {
                    let s_y = sums[self.slots[slot]];
                    for (r, row) in rows.chunks_exact_mut(k).enumerate() {
                        let j = first + r;
                        row[slot] = col[j] - sums[j] * s_y / m;
                    }
                }
            });
        // The active slots: each kept neuron whose residual variance on the other active ones
        // is above its floor. A Cholesky factor in slot order, skipping a slot whose pivot (its
        // residual on the slots before it) is at or below the floor, then S = G_c[Y, Y]^-1,
        // whose diagonal gives each neuron's residual on all the others (1 / S_ii): the
        // neuron furthest below its floor there is left out too, and S recomputed.
        let mut excluded = vec![false; k];
        let (active, s_active) = loop {
            let (active, s_active) = self.inverse_on_active(&gc_y, &excluded);
            let worst = active
                .iter()
                .enumerate()
                .map(|(a, &slot)| {
                    (
                        slot,
                        1.0 / (s_active[(a, a)] * self.floor[self.slots[slot]]),
                    )
                })
                .filter(|&(_, ratio)| ratio.is_nan() || ratio <= 1.0)
                .min_by(|x, y| x.1.total_cmp(&y.1));
            match worst {
                Some((slot, _)) => excluded[slot] = true,
                None => break (active, s_active),
            }
        };
        self.active = vec![false; k];
        for &slot in &active {
            self.active[slot] = true;
        }
        self.s = Mat::zeros(k, k);
        for (a, &sa) in active.iter().enumerate() {
            for (b, &sb) in active.iter().enumerate() {
                self.s[(sa, sb)] = s_active[(a, b)];
            }
        }
        self.s_diag = (0..k).map(|slot| self.s[(slot, slot)]).collect();
        // G_c[:, Y] and H_Y, with zero columns and rows for empty slots.
        for (slot, active) in self.active.iter().enumerate() {
            if !active {
                for row in gc_y.chunks_exact_mut(k) {
                    row[slot] = 0.0;
                }
            }
        }
        let mut h_y = vec![0.0; k * n_out];
        for &slot in &active {
            let y = self.slots[slot];
            h_y[slot * n_out..(slot + 1) * n_out]
                .copy_from_slice(&self.h[y * n_out..(y + 1) * n_out]);
        }
        let par = faer::get_global_parallelism();
        // w = G_c[:, Y] S, B = S H_Y, h_res = H - G_c[:, Y] B, M = h_res B^T.
        matmul(
            MatMut::from_row_major_slice_mut(&mut self.w, n, k),
            Accum::Replace,
            MatRef::from_row_major_slice(&gc_y, n, k),
            self.s.as_ref(),
            1.0,
            par,
        );
        matmul(
            MatMut::from_row_major_slice_mut(&mut self.b, k, n_out),
            Accum::Replace,
            self.s.as_ref(),
            MatRef::from_row_major_slice(&h_y, k, n_out),
            1.0,
            par,
        );
        self.h_res.copy_from_slice(self.h);
        matmul(
            MatMut::from_row_major_slice_mut(&mut self.h_res, n, n_out),
            Accum::Add,
            MatRef::from_row_major_slice(&gc_y, n, k),
            MatRef::from_row_major_slice(&self.b, k, n_out),
            -1.0,
            par,
        );
        matmul(
            MatMut::from_row_major_slice_mut(&mut self.mb, n, k),
            Accum::Replace,
            MatRef::from_row_major_slice(&self.h_res, n, n_out),
            MatRef::from_row_major_slice(&self.b, k, n_out).transpose(),
            1.0,
            par,
        );
        let (w, h_res) = (&self.w, &self.h_res);
        self.d
            .par_iter_mut()
            .zip(self.h_norm2.par_iter_mut())
            .enumerate()
            .for_each(|(j, (d, h_norm2))| {
                let g_jj = self.stats.gram[(j, j)] - sums[j] * sums[j] / m;
                *d = (g_jj - dot(&gc_y[j * k..(j + 1) * k], &w[j * k..(j + 1) * k])).max(0.0);
                let h = &h_res[j * n_out..(j + 1) * n_out];
                *h_norm2 = dot(h, h);
            });
        for slot in 0..k {
            self.set_kept_row(slot);
        }
        self.scores = self.slot_scores();
        Ok(())
    }

    /// The exact state of the row of the neuron in `slot` once it is active (or inert).
    fn set_kept_row(&mut self, slot: usize) {
        let (k, n_out) = (self.k, self.n_out);
        let y = self.slots[slot];
        let w = &mut self.w[y * k..(y + 1) * k];
        w.fill(0.0);
        if self.active[slot] {
            w[slot] = 1.0;
        }
        self.mb[y * k..(y + 1) * k].fill(0.0);
        self.h_res[y * n_out..(y + 1) * n_out].fill(0.0);
        self.d[y] = 0.0;
        self.h_norm2[y] = 0.0;
    }

    fn b_row(&self, slot: usize) -> &[f64] {
        &self.b[slot * self.n_out..(slot + 1) * self.n_out]
    }

    /// `||Z_c||^2 - tr(B^T H_Y)`.
    fn residual_energy(&self) -> f64 {
        let n_out = self.n_out;
        let per_slot: Vec<f64> = self
            .b
            .par_chunks(n_out)
            .enumerate()
            .map(|(slot, b)| {
                if self.active[slot] {
                    let y = self.slots[slot];
                    dot(b, &self.h[y * n_out..(y + 1) * n_out])
                } else {
                    0.0
                }
            })
            .collect();
        (self.centred_energy - per_slot.iter().sum::<f64>()).max(0.0)
    }

    /// Column i of S after the `earlier` swaps of the batch.
    fn s_column(&self, i: usize, earlier: &[Update]) -> Vec<f64> {
        let mut col = contiguous(self.s.col(i)).to_vec();
        for update in earlier {
            update.move_s_column(i, &mut col);
        }
        col
    }

    /// Whether swapping the neuron whose current `row` is given into `slot` (after the
    /// `earlier` swaps of the batch) leaves every kept
    /// neuron's residual variance on the others above its floor. The incoming one's is
    /// checked by the scoring; another kept neuron l's is `1 / S'_ll`, with
    /// `S'_ll = S_ll - S_li^2 / S_ii + u_l^2 / delta` (`u` and `delta` the incoming neuron's
    /// coefficients and residual variance on the kept set without the slot): O(k). Without
    /// it, statistics whose rounding leaves `G_c` a little indefinite let the search chase
    /// gains in directions that are rounding (a review's layers with fewer samples than
    /// neurons, or neurons that are combinations of a few, at k equal to the rank: the swaps
    /// raised the real error from 0 to 0.07).
    fn admissible(&self, slot: usize, row: &RowMut, earlier: &[Update]) -> bool {
        let w_t = &row.w;
        let (g, w_ti) = if self.active[slot] {
            (self.s_diag[slot], w_t[slot])
        } else {
            (1.0, 0.0)
        };
        let s_col = self.active[slot].then(|| self.s_column(slot, earlier));
        let delta = row.d + w_ti * w_ti / g;
        (0..self.k)
            .filter(|&l| l != slot && self.active[l])
            .all(|l| {
                let s_li = s_col.as_ref().map_or(0.0, |col| col[l]);
                let u_l = w_t[l] - w_ti * s_li / g;
                let s_new = self.s_diag[l] - s_li * s_li / g + u_l * u_l / delta;
                1.0 / s_new > self.floor[self.slots[l]]
            })
    }

    /// Per slot, what scoring a swap needs: `1 / S_ii`, `||B_i||^2` and the energy lost by
    /// emptying the slot (zeros for an empty slot).
    fn slot_scores(&self) -> SlotScores {
        let b_norm2: Vec<f64> = self
            .b
            .par_chunks(self.n_out)
            .enumerate()
            .map(|(slot, b)| if self.active[slot] { dot(b, b) } else { 0.0 })
            .collect();
        self.slot_scores_with(b_norm2)
    }

    /// [`SwapState::slot_scores`] given `||B_i||^2` (zero for an empty slot).
    fn slot_scores_with(&self, b_norm2: Vec<f64>) -> SlotScores {
        let inv: Vec<f64> = (0..self.k)
            .map(|slot| {
                if self.active[slot] {
                    1.0 / self.s_diag[slot]
                } else {
                    0.0
                }
            })
            .collect();
        let loss = b_norm2.iter().zip(&inv).map(|(b, i)| b * i).collect();
        SlotScores { inv, b_norm2, loss }
    }

    /// Neuron `j`'s row of the state, copied.
    fn row(&self, j: usize) -> RowMut {
        let (k, n_out) = (self.k, self.n_out);
        RowMut {
            w: self.w[j * k..(j + 1) * k].to_vec(),
            d: self.d[j],
            h_res: self.h_res[j * n_out..(j + 1) * n_out].to_vec(),
            h_norm2: self.h_norm2[j],
            mb: self.mb[j * k..(j + 1) * k].to_vec(),
        }
    }

    /// The swaps of one pass over the rows, made on `S`, `B` and the slots (the rows are
    /// left to [`SwapState::pass`]): first the best pair, `candidates[0]` (admissible), then,
    /// in the order of `candidates`, each next row's best pair scored exactly after the swaps
    /// made so far (its row brought up to date alone, O(k + n_out) per swap), made while it
    /// gains more than the next candidate's score from before the batch. A row's best gain
    /// can rise with a swap, so that score is no bound and a batch's later swaps need not be
    /// the best pairs; but the batch stops at the first candidate that has fallen below the
    /// next one, every swap made lowers the error by its exact gain, and the search ends only
    /// where a full pass finds no swap. A batch swaps each slot at most once, never brings
    /// back a neuron it took out, and stops at [`MAX_BATCH`] swaps, at `room`, or once the
    /// error, `residual` before the batch, is `resolved`.
    fn batch(
        &mut self,
        candidates: &[Candidate],
        residual: f64,
        gain_floor: f64,
        room: usize,
        resolved: f64,
    ) -> Vec<Update> {
        let first = candidates[0];
        // The error as the swaps' scores predict it (the search checks it on the state).
        let mut residual = residual - first.gain;
        let mut updates =
            vec![self.begin_swap(first.slot, first.neuron, self.row(first.neuron), &[])];
        let mut gains = vec![0.0; self.k];
        for (c, candidate) in candidates.iter().enumerate().skip(1) {
            if updates.len() == MAX_BATCH.min(room) || residual <= resolved {
                break;
            }
            let j = candidate.neuron;
            let bar = candidates.get(c + 1).map_or(gain_floor, |next| next.gain);
            let mut row = self.row(j);
            // The slots this batch changed are not swapped again in it.
            let used: Vec<(usize, usize)> = updates.iter().map(|u| (j, u.slot)).collect();
            let scoring = Scoring {
                slots: &self.scores,
                floor: &self.floor,
                gain_floor: bar.max(gain_floor),
                refused: &used,
            };
            let mut best = [None];
            let tile = Tile {
                js: [j],
                firsts: [0],
                rows: &mut [row.view()],
                best: &mut best,
            };
            tile.score(&Terms::new(&updates, None), &scoring, &mut gains);
            match best[0] {
                Some((gain, slot)) if self.admissible(slot, &row, &updates) => {
                    let update = self.begin_swap(slot, j, row, &updates);
                    updates.push(update);
                    residual -= gain;
                }
                _ => break,
            }
        }
        // S through the batch's swaps, one pass for all of them.
        self.s.par_col_iter_mut().enumerate().for_each(|(c, col)| {
            let col = contiguous_mut(col);
            for update in &updates {
                update.move_s_column(c, col);
            }
        });
        updates
    }

    /// Replaces the neuron in `slot` by `incoming`, whose current row is `row_t`, in `S`, `B`
    /// and the slots, and returns the swap as the rows apply it (module docs): a removal and
    /// an addition, each a rank-one change.
    fn begin_swap(
        &mut self,
        slot: usize,
        incoming: usize,
        mut row_t: RowMut,
        earlier: &[Update],
    ) -> Update {
        let (k, n_out, t) = (self.k, self.n_out, incoming);
        let outgoing = self.slots[slot];
        // The removal: `g = S_ii`, `s_col = S[:, i] / g`, `B_i`, `||B_i||^2`, `B B_i`.
        let removal = self.active[slot].then(|| {
            let g = self.s_diag[slot];
            let s_col: Vec<f64> = self.s_column(slot, earlier).iter().map(|s| s / g).collect();
            let b_i = self.b_row(slot).to_vec();
            let bn = dot(&b_i, &b_i);
            let bb: Vec<f64> = self.b.par_chunks(n_out).map(|b| dot(b, &b_i)).collect();
            Removal {
                slot,
                g,
                s_col,
                b_i,
                bn,
                bb,
            }
        });
        if removal.is_some() {
            // The outgoing row, exact (w = e_slot, residuals zero), becomes a candidate's
            // from this swap on.
            self.set_kept_row(slot);
            self.active[slot] = false;
        }
        self.taken[outgoing] = false;
        // The incoming row on the kept set without the slot.
        let then = Terms::new(&[], removal.as_ref());
        bring_through(&then, [t], [0], &mut [row_t.view()]);
        let delta = row_t.d;
        let inv = 1.0 / delta;
        let mut v: Vec<f64> = row_t.w.iter().map(|x| -x).collect();
        v[slot] = 1.0;
        // S -= g s s^T and B -= s B_i^T (the removal; the slot's row and column then zero),
        // then S += v v^T / delta and B += v h_t^T / delta: B in one pass, S's diagonal below
        // and the rest at the batch's end (`Update::move_s_column`).
        let h_t = &row_t.h_res;
        let active = &self.active;
        let b_norm2: Vec<f64> = self
            .b
            .par_chunks_mut(n_out)
            .enumerate()
            .map(|(l, row)| {
                if let Some(r) = &removal {
                    if r.s_col[l] != 0.0 {
                        sub_scaled(row, r.s_col[l], &r.b_i);
                    }
                    if l == slot {
                        row.fill(0.0);
                    }
                }
                if v[l] != 0.0 {
                    sub_scaled(row, -inv * v[l], h_t);
                }
                if l == slot || active[l] {
                    dot(row, row)
                } else {
                    0.0
                }
            })
            .collect();
        // G_c[y_l, t] over the active slots (zero elsewhere, where w's columns are zero), and
        // G_c[j, t] as `gc` computes it, so that a kept row's coefficient is exactly zero.
        let g_y: Vec<f64> = (0..k)
            .map(|l| {
                if self.active[l] {
                    self.gc(self.slots[l], t)
                } else {
                    0.0
                }
            })
            .collect();
        let g_t = contiguous(self.stats.gram.col(t));
        let m = self.stats.samples as f64;
        let sums = &self.stats.col_sums;
        let g_col: Vec<f64> = (0..self.n)
            .map(|j| g_t[j] - sums[j] * sums[t] / m)
            .collect();
        self.slots[slot] = t;
        self.taken[t] = true;
        self.active[slot] = true;
        let (g_dots, h_dots) =
            Addition::products_with(earlier, removal.as_ref(), &g_y, &row_t.h_res);
        let update = Update {
            slot,
            outgoing,
            removal,
            addition: Addition {
                delta,
                inv,
                v,
                g_y,
                g_col,
                h_t: row_t.h_res,
                m_t: row_t.mb,
                hn_t: row_t.h_norm2,
                g_dots,
                h_dots,
            },
        };
        // S's diagonal changed everywhere, B's rows' norms came with its pass.
        update.move_s_diagonal(&mut self.s_diag);
        self.scores = self.slot_scores_with(b_norm2);
        update
    }

    /// One pass over the rows: applies `updates` (made by [`SwapState::batch`]) to every row
    /// that is a candidate after them (a neuron taken out at the s-th update from that one
    /// on), then scores each row, and returns the rows' best swaps (but for the `refused`
    /// pairs), best first: the first [`CANDIDATES`] of them. The rows of the neurons
    /// brought in are then set exactly.
    fn pass(
        &mut self,
        updates: &[Update],
        gain_floor: f64,
        refused: &[(usize, usize)],
    ) -> Vec<Candidate> {
        let (k, n_out) = (self.k, self.n_out);
        let scoring = Scoring {
            slots: &self.scores,
            floor: &self.floor,
            gain_floor,
            refused,
        };
        let taken = &self.taken;
        let terms = Terms::new(updates, None);
        let first = |j: usize| updates.iter().position(|u| u.outgoing == j).unwrap_or(0);
        let mut found: Vec<Candidate> = self
            .w
            .par_chunks_mut(ROWS_PER_TASK * k)
            .zip(self.d.par_chunks_mut(ROWS_PER_TASK))
            .zip(self.h_res.par_chunks_mut(ROWS_PER_TASK * n_out))
            .zip(self.h_norm2.par_chunks_mut(ROWS_PER_TASK))
            .zip(self.mb.par_chunks_mut(ROWS_PER_TASK * k))
            .enumerate()
            .flat_map_iter(|(task, ((((w, d), h_res), h_norm2), mb))| {
                // The task's candidates, by tiles of TILE rows, then one by one.
                let (js, mut rows): (Vec<usize>, Vec<RowView>) = w
                    .chunks_exact_mut(k)
                    .zip(d)
                    .zip(h_res.chunks_exact_mut(n_out))
                    .zip(h_norm2)
                    .zip(mb.chunks_exact_mut(k))
                    .enumerate()
                    .map(|(r, ((((w, d), h_res), h_norm2), mb))| {
                        let row = RowView {
                            w,
                            d,
                            h_res,
                            h_norm2,
                            mb,
                        };
                        (task * ROWS_PER_TASK + r, row)
                    })
                    .filter(|(j, _)| !taken[*j])
                    .unzip();
                let mut gains = vec![0.0; k];
                let mut best = vec![None; js.len()];
                let mut done = 0;
                for size in tile_sizes(js.len()) {
                    let tile = done..done + size;
                    let firsts: Vec<usize> = js[tile.clone()].iter().map(|&j| first(j)).collect();
                    let (js, rows) = (&js[tile.clone()], &mut rows[tile.clone()]);
                    let best = &mut best[tile];
                    let (terms, scoring, gains) = (&terms, &scoring, &mut gains);
                    match size {
                        TILE => {
                            Tile::<TILE>::new(js, &firsts, rows, best).score(terms, scoring, gains)
                        }
                        3 => Tile::<3>::new(js, &firsts, rows, best).score(terms, scoring, gains),
                        2 => Tile::<2>::new(js, &firsts, rows, best).score(terms, scoring, gains),
                        _ => Tile::<1>::new(js, &firsts, rows, best).score(terms, scoring, gains),
                    }
                    done += size;
                }
                js.into_iter()
                    .zip(best)
                    .filter_map(|(neuron, best)| {
                        best.map(|(gain, slot)| Candidate { gain, neuron, slot })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for update in updates {
            self.set_kept_row(update.slot);
        }
        // Best first, ties to the lower neuron.
        let top = CANDIDATES.min(found.len());
        let order =
            |a: &Candidate, b: &Candidate| b.gain.total_cmp(&a.gain).then(a.neuron.cmp(&b.neuron));
        if top < found.len() {
            found.select_nth_unstable_by(top, order);
            found.truncate(top);
        }
        found.sort_unstable_by(order);
        found
    }
}

/// What scoring a swap needs of each slot (see [`SwapState::slot_scores`]), as arrays so
/// that a row's scores are one vectorised loop.
struct SlotScores {
    inv: Vec<f64>,
    b_norm2: Vec<f64>,
    loss: Vec<f64>,
}

/// A row's best swap: bringing in `neuron` for the one in `slot` gains `gain`.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    gain: f64,
    neuron: usize,
    slot: usize,
}

/// A row of the state, copied.
#[derive(Clone, Debug, PartialEq)]
struct RowMut {
    w: Vec<f64>,
    d: f64,
    h_res: Vec<f64>,
    h_norm2: f64,
    mb: Vec<f64>,
}

impl RowMut {
    fn view(&mut self) -> RowView<'_> {
        RowView {
            w: &mut self.w,
            d: &mut self.d,
            h_res: &mut self.h_res,
            h_norm2: &mut self.h_norm2,
            mb: &mut self.mb,
        }
    }
}

/// A row of the state, in place or copied.
struct RowView<'r> {
    w: &'r mut [f64],
    d: &'r mut f64,
    h_res: &'r mut [f64],
    h_norm2: &'r mut f64,
    mb: &'r mut [f64],
}

/// A swap as each row applies it.
struct Update {
    slot: usize,
    /// The neuron taken out: its row is a candidate's from this update on.
    outgoing: usize,
    /// `None` for an empty slot.
    removal: Option<Removal>,
    addition: Addition,
}

impl Update {
    /// Moves S's diagonal through this swap, entry by entry as [`Update::move_s_column`]
    /// moves it (the same operations), in O(k).
    fn move_s_diagonal(&self, diag: &mut [f64]) {
        let add = &self.addition;
        for (l, diag) in diag.iter_mut().enumerate() {
            if let Some(r) = &self.removal {
                if r.s_col[l] != 0.0 {
                    *diag -= (r.g * r.s_col[l]) * r.s_col[l];
                }
                if l == self.slot {
                    *diag = 0.0;
                }
            }
            if add.v[l] != 0.0 {
                *diag -= (-add.inv * add.v[l]) * add.v[l];
            }
        }
    }

    /// Moves column c of S through this swap: `S -= g s s^T`, the slot's row and column
    /// then zero (the removal), `S += v v^T / delta` (the addition).
    fn move_s_column(&self, c: usize, col: &mut [f64]) {
        if let Some(r) = &self.removal {
            if r.s_col[c] != 0.0 {
                sub_scaled(col, r.g * r.s_col[c], &r.s_col);
            }
            col[self.slot] = 0.0;
            if c == self.slot {
                col.fill(0.0);
            }
        }
        let add = &self.addition;
        if add.v[c] != 0.0 {
            sub_scaled(col, -add.inv * add.v[c], &add.v);
        }
    }
}

/// The removal of an active slot, as each row applies it: a row regressed on the kept set
/// without the slot has `w -= w_i S[:, i] / g`, `d += w_i^2 / g`, `h += (w_i / g) B_i`, and
/// `M = B h` of the new B and h is `M += wi B B_i - (M_i + wi ||B_i||^2) S[:, i] / g`
/// (`wi = w_i / g`); `w_i` and `M_i` are then zero.
struct Removal {
    slot: usize,
    g: f64,
    s_col: Vec<f64>,
    b_i: Vec<f64>,
    bn: f64,
    bb: Vec<f64>,
}

/// The addition of neuron t to a slot emptied by the removal, as each row applies it: with
/// `c = (G_c[j, t] - <w_j, G_c[Y, t]>) / delta`, row j's coefficient on t's residual, and
/// `q = <h_j, h_t>`, every part of the row moves by c times t's: `w += c v`,
/// `d -= c^2 delta`, `h -= c h_t`, `M += (v / delta) (q - c ||h_t||^2) - c M_t`.
struct Addition {
    /// t's residual variance on the kept set without the slot, and its inverse.
    delta: f64,
    inv: f64,
    /// `e_slot - w_t`: the change of S is `v v^T / delta`.
    v: Vec<f64>,
    /// `G_c[Y, t]` (zero at empty slots) and `G_c[:, t]`.
    g_y: Vec<f64>,
    g_col: Vec<f64>,
    /// t's `h`, `M` and `||h||^2` on the kept set without the slot.
    h_t: Vec<f64>,
    m_t: Vec<f64>,
    hn_t: f64,
    /// `<s_col_r, g_y>, <v_r, g_y>` for each earlier update r of the batch (index 2r and
    /// 2r + 1; 0 for an absent removal), then `<s_col, g_y>` of this update's own removal:
    /// a row's `<w, g_y>` follows from its product at the batch's start (see
    /// [`bring_through`]).
    g_dots: Vec<f64>,
    /// The same for `h_t` with the vectors a row's h moves along: `b_i` and `h_t` of each
    /// earlier update, then `b_i` of this update's removal.
    h_dots: Vec<f64>,
}

impl Addition {
    /// [`Addition::g_dots`] and [`Addition::h_dots`] of an addition whose vectors are `g_y`
    /// and `h_t`, after the `earlier` updates of its batch and its own `removal`.
    fn products_with(
        earlier: &[Update],
        removal: Option<&Removal>,
        g_y: &[f64],
        h_t: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut g_dots = Vec::with_capacity(2 * earlier.len() + 1);
        let mut h_dots = Vec::with_capacity(2 * earlier.len() + 1);
        let removal_dots = |r: Option<&Removal>, g: &mut Vec<f64>, h: &mut Vec<f64>| {
            let (dg, dh) = r.map_or((0.0, 0.0), |r| (dot(&r.s_col, g_y), dot(&r.b_i, h_t)));
            g.push(dg);
            h.push(dh);
        };
        for u in earlier {
            removal_dots(u.removal.as_ref(), &mut g_dots, &mut h_dots);
            g_dots.push(dot(&u.addition.v, g_y));
            h_dots.push(dot(&u.addition.h_t, h_t));
        }
        removal_dots(removal, &mut g_dots, &mut h_dots);
        (g_dots, h_dots)
    }
}

/// How scoring a row's swaps needs to see the slots and the floors (see [`best_in_row`]).
struct Scoring<'a> {
    slots: &'a SlotScores,
    floor: &'a [f64],
    gain_floor: f64,
    refused: &'a [(usize, usize)],
}

/// Rows moved together: each vector of a batch is read once for all of them.
const TILE: usize = 4;

/// Tiles of `rows` rows: of [`TILE`] rows, then of 3 or 2 (a tile of one row, slower per row
/// since its multiply-adds are one dependent chain, only for one row in all).
fn tile_sizes(rows: usize) -> impl Iterator<Item = usize> {
    let (full, tail) = (rows / TILE, rows % TILE);
    let (full, tail): (usize, &[usize]) = match (full, tail) {
        (_, 0) => (full, &[]),
        (0, 1) => (0, &[1]),
        (_, 1) => (full - 1, &[3, 2]),
        (_, 2) => (full, &[2]),
        _ => (full, &[3]),
    };
    std::iter::repeat_n(TILE, full).chain(tail.iter().copied())
}

/// A row's coefficients along the w and h vectors of a batch: two per update (its removal's,
/// its addition's) and one for a last removal.
const WH_TERMS: usize = 2 * MAX_BATCH + 1;

/// The same along the M vectors: four per update, two for a last removal.
const M_TERMS: usize = 4 * MAX_BATCH + 2;

/// The vectors that `updates` (and a last removal `then`) move a row's parts along, in the
/// order they move it, each with its place among a row's coefficients: for update r, w moves
/// along `s_col` (2r) and `v` (2r + 1), M along `bb`, `s_col` (4r, 4r + 1), `v` and `M_t`
/// (4r + 2, 4r + 3), h along `b_i` (2r) and `h_t` (2r + 1); a last removal comes after them.
struct Terms<'u> {
    updates: &'u [Update],
    then: Option<&'u Removal>,
    w: Vec<(usize, &'u [f64])>,
    m: Vec<(usize, &'u [f64])>,
    h: Vec<(usize, &'u [f64])>,
    /// For update r with a removal (and r = the number of updates for `then`): the w and M
    /// terms' vectors at the removed slot, in the terms' order, so that a row's entry there
    /// is followed through the moves without reading the vectors (see [`RowMoves::entry`]).
    at_slot: Vec<(Vec<f64>, Vec<f64>)>,
}

impl<'u> Terms<'u> {
    fn new(updates: &'u [Update], then: Option<&'u Removal>) -> Self {
        let mut terms = Terms {
            updates,
            then,
            w: Vec::with_capacity(WH_TERMS),
            m: Vec::with_capacity(M_TERMS),
            h: Vec::with_capacity(WH_TERMS),
            at_slot: Vec::new(),
        };
        let removal = |terms: &mut Terms<'u>, r: usize, removal: &'u Removal| {
            terms.w.push((2 * r, &removal.s_col));
            terms.m.push((4 * r, &removal.bb));
            terms.m.push((4 * r + 1, &removal.s_col));
            terms.h.push((2 * r, &removal.b_i));
        };
        for (r, update) in updates.iter().enumerate() {
            if let Some(r_move) = &update.removal {
                removal(&mut terms, r, r_move);
            }
            let add = &update.addition;
            terms.w.push((2 * r + 1, &add.v));
            terms.m.push((4 * r + 2, &add.v));
            terms.m.push((4 * r + 3, &add.m_t));
            terms.h.push((2 * r + 1, &add.h_t));
        }
        if let Some(last) = then {
            removal(&mut terms, updates.len(), last);
        }
        let slots = updates
            .iter()
            .map(|u| u.removal.as_ref())
            .chain(then.map(Some));
        terms.at_slot = slots
            .map(|removal| {
                let at =
                    |part: &[(usize, &[f64])], slot| part.iter().map(|(_, u)| u[slot]).collect();
                removal.map_or((Vec::new(), Vec::new()), |r| {
                    (at(&terms.w, r.slot), at(&terms.m, r.slot))
                })
            })
            .collect();
        terms
    }
}

/// How one row moves through a batch: `x -= a_i u_i` over the [`Terms`] of each part in
/// order, with the row's coefficients `a_i` (zero where it does not move), and the removed
/// slots set to zero after their removal's terms, as applying the moves one by one would.
struct RowMoves {
    w_coef: [f64; WH_TERMS],
    m_coef: [f64; M_TERMS],
    h_coef: [f64; WH_TERMS],
    /// (update, slot) of each removal the row made.
    removed: [(usize, usize); MAX_BATCH + 1],
    removals: usize,
    d: f64,
    hn: f64,
}

impl RowMoves {
    /// The moves of neuron j's row, whose parts at the start are `w`, `mb`, `d` and `hn`,
    /// through the terms' `updates[first..]` and then their `then`; `products[r]` is `(<w, g_y>, <h, h_t>)` of
    /// update r's addition with the row at the start. An update's removal needs the row's
    /// entries at its slot, followed through the moves before it; its addition needs
    /// `<w, g_y>` and `<h, h_t>` on the row as moved so far, the products at the start less
    /// the moves' coefficients times the addition's `g_dots` and `h_dots`.
    #[inline(always)]
    fn plan(
        terms: &Terms<'_>,
        first: usize,
        j: usize,
        (w, mb, d, hn): (&[f64], &[f64], f64, f64),
        products: &[(f64, f64)],
    ) -> Self {
        let mut moves = RowMoves {
            w_coef: [0.0; WH_TERMS],
            m_coef: [0.0; M_TERMS],
            h_coef: [0.0; WH_TERMS],
            removed: [(0, 0); MAX_BATCH + 1],
            removals: 0,
            d,
            hn,
        };
        for (r, update) in terms.updates.iter().enumerate().skip(first) {
            if let Some(removal) = &update.removal {
                moves.remove(terms, r, removal, w, mb);
            }
            let add = &update.addition;
            let moved = |coef: &[f64], dots: &[f64]| -> f64 {
                coef[2 * first..=2 * r]
                    .iter()
                    .zip(&dots[2 * first..])
                    .map(|(c, x)| c * x)
                    .sum()
            };
            let (wg0, q0) = products[r];
            let wg = wg0 - moved(&moves.w_coef, &add.g_dots);
            let q = q0 - moved(&moves.h_coef, &add.h_dots);
            let c = (add.g_col[j] - wg) * add.inv;
            let a = -(add.inv * (q - c * add.hn_t));
            moves.w_coef[2 * r + 1] = -c;
            moves.m_coef[4 * r + 2] = a;
            moves.m_coef[4 * r + 3] = c;
            moves.h_coef[2 * r + 1] = c;
            moves.d = (moves.d - c * c * add.delta).max(0.0);
            moves.hn = (moves.hn - 2.0 * c * q + c * c * add.hn_t).max(0.0);
        }
        if let Some(removal) = terms.then {
            moves.remove(terms, terms.updates.len(), removal, w, mb);
        }
        moves
    }

    /// The removal of update r (see [`Removal`]), unless the row's coefficient on the slot
    /// is zero.
    #[inline(always)]
    fn remove(&mut self, terms: &Terms<'_>, r: usize, removal: &Removal, w: &[f64], mb: &[f64]) {
        let slot = removal.slot;
        let (w_at, m_at) = &terms.at_slot[r];
        let w_slot = self.entry((&terms.w, w_at), &self.w_coef, 2, slot, w[slot]);
        if w_slot == 0.0 {
            return;
        }
        let wi = w_slot / removal.g;
        let m_i = self.entry((&terms.m, m_at), &self.m_coef, 4, slot, mb[slot]);
        let coef = m_i + wi * removal.bn;
        self.w_coef[2 * r] = w_slot;
        self.m_coef[4 * r] = -wi;
        self.m_coef[4 * r + 1] = coef;
        self.h_coef[2 * r] = -wi;
        self.removed[self.removals] = (r, slot);
        self.removals += 1;
        self.d += w_slot * wi;
        self.hn += 2.0 * wi * m_i + wi * wi * removal.bn;
    }

    /// The entry of a part (w with `per_update` 2, M with 4) at `slot`, `x` at the start,
    /// after the moves planned so far: the operations the whole part gets, in the same order,
    /// on the terms' vectors `at` the slot.
    #[inline(always)]
    fn entry(
        &self,
        (terms, at): (&[(usize, &[f64])], &[f64]),
        coef: &[f64],
        per_update: usize,
        slot: usize,
        mut x: f64,
    ) -> f64 {
        // A removal's terms are the first half of its update's; the slot is zeroed after them.
        let mut zeros = self.removed[..self.removals]
            .iter()
            .map(|&(r, removed)| (per_update * r + per_update / 2 - 1, removed))
            .peekable();
        for (&(p, _), &u) in terms.iter().zip(at) {
            x = (-coef[p]).mul_add(u, x);
            while let Some(&(last, removed)) = zeros.peek() {
                if last > p {
                    break;
                }
                if last == p && removed == slot {
                    x = 0.0;
                }
                zeros.next();
            }
        }
        x
    }
}

/// Moves a tile of rows through a batch, each as its `plans` say: every part read and
/// written once, each of the batch's vectors read once for the tile.
#[inline(always)]
fn move_rows<'t, const R: usize>(
    terms: &Terms<'t>,
    plans: &[RowMoves; R],
    rows: &mut [RowView<'_>; R],
) {
    // The removed slots' entries, followed one move at a time (they are zeroed in passing).
    let mut fixed = [[(0usize, 0.0f64, 0.0f64); MAX_BATCH + 1]; R];
    for ((plan, row), fixed) in plans.iter().zip(rows.iter()).zip(&mut fixed) {
        for (z, &(r, slot)) in plan.removed[..plan.removals].iter().enumerate() {
            let (w_at, m_at) = &terms.at_slot[r];
            fixed[z] = (
                slot,
                plan.entry((&terms.w, w_at), &plan.w_coef, 2, slot, row.w[slot]),
                plan.entry((&terms.m, m_at), &plan.m_coef, 4, slot, row.mb[slot]),
            );
        }
    }
    let coefs = |terms: &[(usize, &'t [f64])], coef: fn(&RowMoves) -> &[f64]| {
        terms
            .iter()
            .map(|&(p, u)| (plans.each_ref().map(|plan| coef(plan)[p]), u))
            .collect::<Vec<_>>()
    };
    let w_terms = coefs(&terms.w, |plan| &plan.w_coef);
    sub_scaled_terms_rows(rows.each_mut().map(|row| &mut *row.w), &w_terms);
    let m_terms = coefs(&terms.m, |plan| &plan.m_coef);
    sub_scaled_terms_rows(rows.each_mut().map(|row| &mut *row.mb), &m_terms);
    let h_terms = coefs(&terms.h, |plan| &plan.h_coef);
    sub_scaled_terms_rows(rows.each_mut().map(|row| &mut *row.h_res), &h_terms);
    for ((plan, row), fixed) in plans.iter().zip(rows.iter_mut()).zip(&fixed) {
        for &(slot, w, mb) in &fixed[..plan.removals] {
            row.w[slot] = w;
            row.mb[slot] = mb;
        }
        *row.d = plan.d;
        *row.h_norm2 = plan.hn;
    }
}

/// Brings the `rows` (neurons `js`) through the terms' updates, each from its update in
/// `firsts` on, then through their `then` (a removal alone): their products with the
/// additions' vectors, each row's moves ([`RowMoves::plan`]), then [`move_rows`].
#[inline(always)]
fn bring_through<const R: usize>(
    terms: &Terms<'_>,
    js: [usize; R],
    firsts: [usize; R],
    rows: &mut [RowView<'_>; R],
) {
    let mut products = [[(0.0, 0.0); MAX_BATCH]; R];
    for (r, update) in terms.updates.iter().enumerate() {
        let add = &update.addition;
        for (products, row) in products.iter_mut().zip(rows.iter()) {
            products[r] = (
                dot_portable(row.w, &add.g_y),
                dot_portable(row.h_res, &add.h_t),
            );
        }
    }
    let plans: [RowMoves; R] = std::array::from_fn(|t| {
        let row = &rows[t];
        let start = (&*row.w, &*row.mb, *row.d, *row.h_norm2);
        RowMoves::plan(terms, firsts[t], js[t], start, &products[t])
    });
    move_rows(terms, &plans, rows);
}

/// Rows a pass moves and scores together: neurons `js`, each a candidate before and after
/// every update from its `firsts` on, their `rows`, and where their best swaps go.
struct Tile<'a, 'r, const R: usize> {
    js: [usize; R],
    firsts: [usize; R],
    rows: &'a mut [RowView<'r>; R],
    best: &'a mut [Option<(f64, usize)>; R],
}

impl<'a, 'r, const R: usize> Tile<'a, 'r, R> {
    /// The tile of the `R` rows given as slices.
    fn new(
        js: &[usize],
        firsts: &[usize],
        rows: &'a mut [RowView<'r>],
        best: &'a mut [Option<(f64, usize)>],
    ) -> Self {
        Tile {
            js: js.try_into().expect("R neurons"),
            firsts: firsts.try_into().expect("R first updates"),
            rows: rows.try_into().expect("R rows"),
            best: best.try_into().expect("R results"),
        }
    }

    /// Brings the rows through the `terms`' updates ([`bring_through`]), then scores each as
    /// [`best_in_row`]. A tile's work is one function, so that on x86-64 a copy compiled for
    /// AVX-512 or AVX2 with FMA is chosen once per tile (the same operations in the same order
    /// as the portable one: every build gives the same bits); `gains` (k values) is scratch.
    fn score(self, terms: &Terms<'_>, scoring: &Scoring<'_>, gains: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, the only requirement of the build.
                return unsafe { self.score_avx512(terms, scoring, gains) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA, the only requirements of the build.
                return unsafe { self.score_avx2(terms, scoring, gains) };
            }
        }
        self.score_portable(terms, scoring, gains)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn score_avx512(self, terms: &Terms<'_>, scoring: &Scoring<'_>, gains: &mut [f64]) {
        self.score_portable(terms, scoring, gains)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_avx2(self, terms: &Terms<'_>, scoring: &Scoring<'_>, gains: &mut [f64]) {
        self.score_portable(terms, scoring, gains)
    }

    #[inline(always)]
    fn score_portable(self, terms: &Terms<'_>, scoring: &Scoring<'_>, gains: &mut [f64]) {
        bring_through(terms, self.js, self.firsts, self.rows);
        for (t, best) in self.best.iter_mut().enumerate() {
            *best = best_in_row(self.js[t], &self.rows[t], scoring, gains);
        }
    }
}

/// The best swap bringing in neuron j: (gain, slot), if one gains more than the scoring's
/// floor, but for its refused pairs; ties to the lowest slot.
#[inline(always)]
fn best_in_row(
    j: usize,
    row: &RowView<'_>,
    scoring: &Scoring<'_>,
    gains: &mut [f64],
) -> Option<(f64, usize)> {
    let (d, h_norm2, floor) = (*row.d, *row.h_norm2, scoring.floor[j]);
    let slots = scoring.slots;
    // First a bound without a division per slot: `d_after >= d`, so no slot gains more than
    // `h_after / d` (with a margin over the roundings of both); most rows gain nothing by any
    // swap, and stop here with the answer the exact scores would give.
    if d > 0.0 {
        let inv_d = (1.0 + 1e-12) / d;
        let mut over = 0u64;
        let per_slot = slots.inv.iter().zip(&slots.b_norm2).zip(&slots.loss);
        for ((&w, &mb), ((&inv, &b_norm2), &loss)) in row.w.iter().zip(row.mb.iter()).zip(per_slot)
        {
            let wi = w * inv;
            let d_after = d + w * wi;
            let h_after = (h_norm2 + wi * (2.0 * mb + wi * b_norm2)).max(0.0);
            over += (h_after * inv_d - loss > scoring.gain_floor && d_after > floor) as u64;
        }
        if over == 0 {
            return None;
        }
    }
    // Every slot's gain without a branch (so that the loop vectorises), then the largest.
    let per_slot = slots.inv.iter().zip(&slots.b_norm2).zip(&slots.loss);
    for ((gain, (&w, &mb)), ((&inv, &b_norm2), &loss)) in gains
        .iter_mut()
        .zip(row.w.iter().zip(row.mb.iter()))
        .zip(per_slot)
    {
        let wi = w * inv;
        let d_after = d + w * wi;
        let h_after = (h_norm2 + wi * (2.0 * mb + wi * b_norm2)).max(0.0);
        let value = h_after / d_after - loss;
        *gain = if d_after > floor {
            value
        } else {
            f64::NEG_INFINITY
        };
    }
    for &(_, slot) in scoring.refused.iter().filter(|&&(rj, _)| rj == j) {
        gains[slot] = f64::NEG_INFINITY;
    }
    let mut best = None;
    let mut bar = scoring.gain_floor;
    for (slot, &gain) in gains.iter().enumerate() {
        if gain > bar {
            bar = gain;
            best = Some((gain, slot));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::fusion_greedy::test_layer;
    use super::*;

    /// The rank-one updates against the rebuilt state: rebuilding after every swap, every 7
    /// swaps or never (but before stopping) makes the same swaps to the same end.
    #[test]
    fn rebuilding_the_state_does_not_change_the_search() {
        let (stats, target) = test_layer(9, 60, 7);
        let n = stats.col_sums.len();
        // A poor start: the last 25 neurons.
        let start: Vec<usize> = (n - 25..n).collect();
        let run = |refresh| search(&stats, &target, &start, refresh, &mut NoProgress).unwrap();
        let never = run(usize::MAX);
        assert!(never.swaps > 14, "{} swaps", never.swaps);
        // Batches: swap by swap, the search would make swaps + 2 passes over the rows (the
        // first and the confirming one after the final rebuild make no swap).
        assert!(never.passes < never.swaps, "{} passes", never.passes);
        for refresh in [1, 7] {
            let other = run(refresh);
            assert_eq!(other.kept, never.kept, "refresh {refresh}");
            assert_eq!(other.swaps, never.swaps, "refresh {refresh}");
            assert!(
                (other.residual_energy - never.residual_energy).abs()
                    <= 1e-12 * target.centred_energy,
                "refresh {refresh}"
            );
        }
    }

    /// Row j moved through `updates` one at a time, as the module docs define a removal and
    /// an addition: the reference for the one-sweep [`bring_through`].
    fn one_by_one(updates: &[Update], j: usize, row: &mut RowMut) {
        let sub =
            |x: &mut [f64], a: f64, u: &[f64]| x.iter_mut().zip(u).for_each(|(x, u)| *x -= a * u);
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(x, y)| x * y).sum::<f64>();
        for update in updates {
            if let Some(r) = &update.removal {
                let w_slot = row.w[r.slot];
                if w_slot != 0.0 {
                    let wi = w_slot / r.g;
                    let m_i = row.mb[r.slot];
                    sub(&mut row.w, w_slot, &r.s_col);
                    sub(&mut row.mb, -wi, &r.bb);
                    sub(&mut row.mb, m_i + wi * r.bn, &r.s_col);
                    sub(&mut row.h_res, -wi, &r.b_i);
                    row.d += w_slot * wi;
                    row.h_norm2 += 2.0 * wi * m_i + wi * wi * r.bn;
                    row.w[r.slot] = 0.0;
                    row.mb[r.slot] = 0.0;
                }
            }
            let add = &update.addition;
            let c = (add.g_col[j] - dot(&row.w, &add.g_y)) * add.inv;
            let q = dot(&row.h_res, &add.h_t);
            let a = -(add.inv * (q - c * add.hn_t));
            sub(&mut row.mb, a, &add.v);
            sub(&mut row.mb, c, &add.m_t);
            sub(&mut row.w, -c, &add.v);
            sub(&mut row.h_res, c, &add.h_t);
            row.d = (row.d - c * c * add.delta).max(0.0);
            row.h_norm2 = (row.h_norm2 - 2.0 * c * q + c * c * add.hn_t).max(0.0);
        }
    }

    /// A batch of swaps moves every candidate's row, in one sweep and by tiles of rows, as
    /// the swaps made one at a time would (to rounding); every build the CPU can run
    /// (portable, AVX2, AVX-512) gives the same bits for a row alone or in a tile.
    #[test]
    fn a_batch_moves_each_row_as_its_swaps_one_by_one() {
        let (stats, target) = test_layer(7, 60, 7);
        let n = stats.col_sums.len();
        let start: Vec<usize> = (n - 25..n).collect();
        let mut state = SwapState::new(&stats, &target, &start).unwrap();
        // Five swaps as a batch makes them (any swaps: the algebra holds for all).
        let mut updates: Vec<Update> = Vec::new();
        let incoming: Vec<usize> = (0..n).filter(|&j| !state.taken[j]).take(5).collect();
        for (i, &j) in incoming.iter().enumerate() {
            let mut row = state.row(j);
            bring_through(&Terms::new(&updates, None), [j], [0], &mut [row.view()]);
            let update = state.begin_swap(3 * i, j, row, &updates);
            updates.push(update);
        }
        let gain_floor = ZERO_GAIN_TOL * target.centred_energy;
        let terms = Terms::new(&updates, None);
        let scoring = Scoring {
            slots: &state.scores,
            floor: &state.floor,
            gain_floor,
            refused: &[],
        };
        type Build = fn(Tile<'_, '_, 1>, &Terms<'_>, &Scoring<'_>, &mut [f64]);
        let mut builds: Vec<(&str, Build)> =
            vec![("portable", |tile, t, s, g| tile.score_portable(t, s, g))];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA.
                builds.push(("avx2", |tile, t, s, g| unsafe { tile.score_avx2(t, s, g) }));
            }
            if has!("avx512f") {
                // SAFETY: the CPU supports AVX-512F.
                builds.push(("avx512", |tile, t, s, g| unsafe {
                    tile.score_avx512(t, s, g)
                }));
            }
        }
        let candidates: Vec<usize> = (0..n).filter(|&j| !state.taken[j]).collect();
        let first = |j: usize| updates.iter().position(|u| u.outgoing == j).unwrap_or(0);
        assert!(candidates.iter().any(|&j| first(j) > 0));
        let mut moved = Vec::new();
        for &j in &candidates {
            let mut reference = state.row(j);
            one_by_one(&updates[first(j)..], j, &mut reference);
            let mut results = Vec::new();
            for (name, build) in &builds {
                let mut row = state.row(j);
                let mut best = [None];
                let mut gains = vec![0.0; state.k];
                let tile = Tile {
                    js: [j],
                    firsts: [first(j)],
                    rows: &mut [row.view()],
                    best: &mut best,
                };
                build(tile, &terms, &scoring, &mut gains);
                results.push((name, row, best[0]));
            }
            let (_, row, best) = &results[0];
            for (name, other, other_best) in &results[1..] {
                assert_eq!(other, row, "row {j}: {name} against portable");
                assert_eq!(
                    other_best.map(|b| b.1),
                    best.map(|b| b.1),
                    "row {j}: {name}"
                );
                assert_eq!(
                    other_best.map(|b| b.0.to_bits()),
                    best.map(|b| b.0.to_bits())
                );
            }
            let close = |x: &[f64], y: &[f64]| {
                let scale = y.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0);
                x.iter().zip(y).all(|(a, b)| (a - b).abs() <= 1e-9 * scale)
            };
            assert!(close(&row.w, &reference.w), "row {j}: w");
            assert!(close(&row.mb, &reference.mb), "row {j}: M");
            assert!(close(&row.h_res, &reference.h_res), "row {j}: h");
            assert!(
                close(&[row.d, row.h_norm2], &[reference.d, reference.h_norm2]),
                "row {j}"
            );
            moved.push((row.clone(), *best));
        }
        // The same rows by tiles of four.
        let mut tiles = candidates.chunks_exact(TILE);
        for (t, js) in (&mut tiles).enumerate() {
            let js: [usize; TILE] = js.try_into().unwrap();
            let mut rows = js.map(|j| state.row(j));
            let mut best = [None; TILE];
            let mut gains = vec![0.0; state.k];
            let mut views = rows.each_mut().map(|row| row.view());
            let tile = Tile {
                js,
                firsts: js.map(first),
                rows: &mut views,
                best: &mut best,
            };
            tile.score(&terms, &scoring, &mut gains);
            for (i, row) in rows.iter().enumerate() {
                let (alone, best_alone) = &moved[t * TILE + i];
                assert_eq!(row, alone, "row {} in a tile", js[i]);
                assert_eq!(
                    best[i].map(|b| (b.0.to_bits(), b.1)),
                    best_alone.map(|b| (b.0.to_bits(), b.1))
                );
            }
        }
    }
}
