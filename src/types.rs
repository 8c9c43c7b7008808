//! The data that flows between the stages and the backends: activation rows going in,
//! the Gram statistics and distances coming out of the statistics pass, and the next
//! layer and fusion system of the least-squares step.
//!
//! These types sit below everything that computes: [`crate::cpu`] and [`crate::gpu`] produce
//! and consume them, and the dispatchers ([`crate::kernel`], [`crate::fusion`]) choose
//! between the two. Nothing here knows about a backend.

use faer::Mat;

use crate::error::{Error, Result};

/// Row-major activations: `rows x n` samples x neurons, as f32 or as f16.
#[derive(Clone, Copy, Debug)]
pub enum ActivationRows<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// Half precision (uploaded to the GPU as is, two values per 32-bit word).
    F16(&'a [half::f16]),
}

impl<'a> ActivationRows<'a> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            ActivationRows::F32(v) => v.len(),
            ActivationRows::F16(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values in `range` (indices into the flat row-major data).
    pub fn slice(&self, range: std::ops::Range<usize>) -> ActivationRows<'a> {
        match *self {
            ActivationRows::F32(v) => ActivationRows::F32(&v[range]),
            ActivationRows::F16(v) => ActivationRows::F16(&v[range]),
        }
    }

    /// The number of whole rows of `n` values; an error when the length is not a multiple
    /// of `n` or a value is not finite.
    pub fn row_count(&self, n: usize) -> Result<usize> {
        let count = self.whole_rows(n)?;
        self.check_usable(n)?;
        Ok(count)
    }

    /// The number of whole rows of `n` values; an error when the length is not a multiple
    /// of `n`. Values are not looked at.
    pub(crate) fn whole_rows(&self, n: usize) -> Result<usize> {
        let len = self.len();
        if n == 0 || !len.is_multiple_of(n) {
            return Err(Error::invalid(format!(
                "{len} activation values are not whole rows of n = {n}"
            )));
        }
        Ok(len / n)
    }

    /// An error naming the first value the statistics cannot take (row, neuron and value:
    /// see [`usable_activation`]), if any.
    pub(crate) fn check_usable(&self, n: usize) -> Result<()> {
        match self.first_unusable() {
            Some((k, value)) => Err(unusable_activation(k / n, k % n, value)),
            None => Ok(()),
        }
    }

    /// The position and value of the first value the statistics cannot take, if any.
    pub(crate) fn first_unusable(&self) -> Option<(usize, f32)> {
        use rayon::prelude::*;
        // On all threads: the GPU path scans every row it uploads.
        match self {
            ActivationRows::F32(v) => v
                .par_iter()
                .position_first(|&x| !usable_activation(x))
                .map(|k| (k, v[k])),
            ActivationRows::F16(v) => v
                .par_iter()
                .position_first(|x| !usable_activation(x.to_f32()))
                .map(|k| (k, v[k].to_f32())),
        }
    }
}

/// The largest activation, in size, that the statistics take. Their f32 products sum up to
/// 8192 squares before they reach f64; past about 1.8e17 that sum overflows, and such a Gram
/// matrix came back with infinite entries, the error naming neither the file nor the value.
/// 1e15 leaves a margin; no layer's activations come near it.
pub const MAX_ACTIVATION: f32 = 1e15;

/// Whether the statistics take `x`: finite and at most [`MAX_ACTIVATION`] in size.
pub(crate) fn usable_activation(x: f32) -> bool {
    x.abs() <= MAX_ACTIVATION
}

/// What is wrong with a finite activation the statistics do not take, for error messages.
pub(crate) fn too_large(value: impl std::fmt::LowerExp) -> String {
    format!(
        "{value:e}: activations must be at most {MAX_ACTIVATION:e} in size (the statistics' \
         f32 products overflow beyond); scale them down"
    )
}

/// The error for an activation the statistics do not take, at `row` (counted from the first
/// row of the pass) and `neuron`.
pub(crate) fn unusable_activation(row: usize, neuron: usize, value: f32) -> Error {
    if value.is_finite() {
        Error::invalid(format!(
            "activation at row {row}, neuron {neuron} is {}",
            too_large(value)
        ))
    } else {
        Error::invalid(format!(
            "activation at row {row}, neuron {neuron} is not finite"
        ))
    }
}

/// Where a layer's activations come from, one pass at a time: an in-memory matrix, an npy
/// file read in row chunks, a network evaluated chunk by chunk. A pipeline that needs a
/// second look at the data (after selection, say) asks for a second pass.
pub trait RowSource {
    /// n, the number of neurons (values per row).
    fn width(&self) -> usize;

    /// m, the number of rows one pass yields. A source that learns it only by reading (a
    /// stream of chunks from a callback) returns 0 until its first pass has ended; the
    /// pipeline then plans without it and reports the count it read.
    fn rows(&self) -> usize;

    /// Calls `visit` on consecutive chunks of whole rows, in order, covering all `rows()`
    /// rows once. Stops at the first error, from `visit` or from reading.
    fn pass(&mut self, visit: &mut dyn FnMut(ActivationRows<'_>) -> Result<()>) -> Result<()>;
}

/// Row-major activations held in memory, as a [`RowSource`] that hands them out in chunks of
/// at most `chunk_rows` rows (so a consumer's progress advances as it would from a file).
#[derive(Clone, Copy, Debug)]
pub struct SliceRows<'a> {
    rows: ActivationRows<'a>,
    n: usize,
    m: usize,
    chunk_rows: usize,
}

impl<'a> SliceRows<'a> {
    /// `rows` as whole rows of `n` values; an error when they are not.
    pub fn new(rows: ActivationRows<'a>, n: usize) -> Result<Self> {
        let m = rows.whole_rows(n)?;
        Ok(Self {
            rows,
            n,
            m,
            chunk_rows: (SLICE_CHUNK_VALUES / n).max(1),
        })
    }

    /// The same rows, handed out `chunk_rows` (at least 1) at a time.
    pub fn with_chunk_rows(mut self, chunk_rows: usize) -> Self {
        self.chunk_rows = chunk_rows.max(1);
        self
    }
}

/// Values per chunk handed out by [`SliceRows`] by default (64 MiB of f32).
const SLICE_CHUNK_VALUES: usize = 1 << 24;

impl RowSource for SliceRows<'_> {
    fn width(&self) -> usize {
        self.n
    }

    fn rows(&self) -> usize {
        self.m
    }

    fn pass(&mut self, visit: &mut dyn FnMut(ActivationRows<'_>) -> Result<()>) -> Result<()> {
        let step = self.chunk_rows * self.n;
        let mut start = 0;
        while start < self.m * self.n {
            let end = (start + step).min(self.m * self.n);
            visit(self.rows.slice(start..end))?;
            start = end;
        }
        Ok(())
    }
}

/// What one pass over a calibration set yields for a layer of n neurons over m samples:
/// the Gram matrix `G = A^T A` (n x n, f64, both triangles filled) and the column sums
/// `s = A^T 1`. Everything fusion needs, and the RBF kernel can be derived from it.
#[derive(Clone, Debug)]
pub struct GramStats {
    /// `G = A^T A`, n x n, symmetric.
    pub gram: Mat<f64>,
    /// `s = A^T 1`, length n.
    pub col_sums: Vec<f64>,
    /// m, the number of samples accumulated.
    pub samples: usize,
}

impl GramStats {
    /// n, the number of neurons.
    pub fn len(&self) -> usize {
        self.col_sums.len()
    }

    /// True when the statistics cover no neuron.
    pub fn is_empty(&self) -> bool {
        self.col_sums.is_empty()
    }

    /// `G~_YY = [[G_YY, s_Y], [s_Y^T, m]]` in the order `keep, const`: the left-hand side of
    /// the fusion's normal equations.
    pub(crate) fn augmented_block(&self, keep: &[usize]) -> Mat<f64> {
        let k = keep.len();
        let g = &self.gram;
        let s = &self.col_sums;
        let m = self.samples as f64;
        Mat::from_fn(k + 1, k + 1, |i, j| match (i < k, j < k) {
            (true, true) => g[(keep[i], keep[j])],
            (true, false) => s[keep[i]],
            (false, true) => s[keep[j]],
            (false, false) => m,
        })
    }
}

/// [`GramStats`] with G kept in f32: what the one-pass route keeps of a layer's Gram
/// while the kernel fills memory, when the selection does not read G (only the fusion does,
/// after the kernel is gone). Half the memory of the f64 G. What is rounded is the centred
/// `M = G - s s^T / m`, and G is rebuilt from it in f64: the rounding costs at most 2^-24
/// of each co-moment, not of entries that carry the squared column means, less than the
/// f32 products of the two-pass route's fusion pass ([`crate::cpu::fusion::FusionPass`])
/// lose.
pub(crate) struct GramStatsF32 {
    comoments: Mat<f32>,
    col_sums: Vec<f64>,
    samples: usize,
}

impl GramStatsF32 {
    /// The co-moments `comoments` rounded to f32 (columns on all threads), with the column
    /// sums and m.
    pub(crate) fn round(comoments: &Mat<f64>, col_sums: Vec<f64>, samples: usize) -> Self {
        Self {
            comoments: crate::cpu::symmetric::converted(comoments, |x| x as f32),
            col_sums,
            samples,
        }
    }

    /// The f64 statistics the fusion reads, `G = M + s s^T / m` widened from the f32 M
    /// (which is freed).
    pub(crate) fn widen(self) -> GramStats {
        let mut gram = crate::cpu::symmetric::converted(&self.comoments, |x| x as f64);
        drop(self.comoments);
        crate::cpu::gram::add_mean_outer(&mut gram, &self.col_sums, self.samples);
        GramStats {
            gram,
            col_sums: self.col_sums,
            samples: self.samples,
        }
    }
}

/// What one statistics pass ([`crate::kernel::LayerStats`]) collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsKind {
    /// `G = A^T A` and `s = A^T 1`: fusion, importance, the fusion-aware selection.
    Gram,
    /// `D_ij = ||v_i - v_j||^2`: the RBF kernel of the DPP methods.
    Distances,
    /// Both, from one read of the activations.
    Both,
}

impl StatsKind {
    /// Whether the Gram statistics are collected.
    pub fn has_gram(self) -> bool {
        matches!(self, StatsKind::Gram | StatsKind::Both)
    }

    /// Whether the distances are collected.
    pub fn has_distances(self) -> bool {
        matches!(self, StatsKind::Distances | StatsKind::Both)
    }

    /// The kind that collects what `gram` and `distances` ask for, or `None` for neither.
    pub fn of(gram: bool, distances: bool) -> Option<StatsKind> {
        match (gram, distances) {
            (true, true) => Some(StatsKind::Both),
            (true, false) => Some(StatsKind::Gram),
            (false, true) => Some(StatsKind::Distances),
            (false, false) => None,
        }
    }
}

/// Pairwise squared distances between a layer's neurons over m samples.
#[derive(Clone, Debug)]
pub struct Distances {
    /// `D_ij = ||v_i - v_j||^2`, n x n, symmetric, zero diagonal.
    pub squared: Mat<f64>,
    /// m.
    pub samples: usize,
}

/// The next layer z = W a + b; W is n_out x n_in, row-major (PyTorch layout).
#[derive(Clone, Copy, Debug)]
pub struct NextLayer<'a> {
    /// W, `n_out * n_in` values, row-major.
    pub weight: &'a [f32],
    /// b, `n_out` values, or none (treated as zeros).
    pub bias: Option<&'a [f32]>,
    /// Rows of W: the next layer's width.
    pub n_out: usize,
    /// Columns of W: the width of the layer being compressed.
    pub n_in: usize,
}

/// What the assembly step produces (on either backend): everything the host needs to solve
/// the normal equations and to report the reconstruction error.
///
/// The row order of the augmented kept set is `keep[0], ..., keep[k-1], const`.
#[derive(Clone, Debug)]
pub struct FusionSystem {
    /// `G~_YY = [[G_YY, s_Y], [s_Y^T, m]]`, (k+1) x (k+1), f64 (gathered on the host: the
    /// solve needs full precision).
    pub lhs: Mat<f64>,
    /// `R = [G_YP; s_P^T] W_P^T`, (k+1) x n_out.
    pub rhs: Mat<f64>,
    /// `tr(W~_Y G~_YY W~_Y^T)` with `W~_Y = [W_Y, b]`: the energy of the kept part of Z.
    pub kept_energy: f64,
    /// `tr(W_P G_PP W_P^T)`: the energy of the dropped part of Z.
    pub dropped_energy: f64,
    /// The same two energies for each group of consecutive rows of W (each next layer of
    /// several stacked into one; a single group otherwise), whose sums they are: each layer
    /// gets its own error.
    pub groups: Vec<RowGroup>,
}

/// The energies of [`FusionSystem`] over one group of rows of the next layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowGroup {
    /// How many rows (outputs) the group has.
    pub rows: usize,
    /// Its part of [`FusionSystem::kept_energy`].
    pub kept_energy: f64,
    /// Its part of [`FusionSystem::dropped_energy`].
    pub dropped_energy: f64,
}

impl RowGroup {
    /// The groups of `rows` rows each, with their energies, one per group.
    pub(crate) fn zip(rows: &[usize], kept: Vec<f64>, dropped: Vec<f64>) -> Vec<RowGroup> {
        rows.iter()
            .zip(kept.into_iter().zip(dropped))
            .map(|(&rows, (kept_energy, dropped_energy))| RowGroup {
                rows,
                kept_energy,
                dropped_energy,
            })
            .collect()
    }

    /// A value per output row summed over each group of `rows` rows.
    pub(crate) fn sums(rows: &[usize], per_output: &[f64]) -> Vec<f64> {
        let mut start = 0;
        rows.iter()
            .map(|&r| {
                start += r;
                per_output[start - r..start].iter().sum()
            })
            .collect()
    }
}

impl FusionSystem {
    /// The system with its total energies, the sums of the groups'.
    pub(crate) fn from_groups(lhs: Mat<f64>, rhs: Mat<f64>, groups: Vec<RowGroup>) -> Self {
        FusionSystem {
            lhs,
            rhs,
            kept_energy: groups.iter().map(|g| g.kept_energy).sum(),
            dropped_energy: groups.iter().map(|g| g.dropped_energy).sum(),
            groups,
        }
    }
}

/// Checks that `rows` (row groups of a next layer) are positive and add up to `n_out`.
pub(crate) fn check_row_groups(rows: &[usize], n_out: usize) -> crate::error::Result<()> {
    if rows.is_empty() || rows.contains(&0) || rows.iter().sum::<usize>() != n_out {
        return Err(crate::error::Error::invalid(format!(
            "fusion: row groups {rows:?} do not split the next layer's {n_out} rows"
        )));
    }
    Ok(())
}
