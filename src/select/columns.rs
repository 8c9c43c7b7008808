//! Greedy MAP on the RBF kernel of a layer too wide to hold it: kernel columns computed
//! from the activations on demand, so that selection holds O(n k), never n x n.
//!
//! Greedy MAP reads L's diagonal and one column per pick (`KernelColumns`). Column j of
//! `L = exp(-beta D) + eps I` needs column j of the centred co-moments
//! `M = (A - 1 mu^T)^T (A - 1 mu^T)` (the distances follow from it as in
//! [`crate::cpu::rbf`]): a pass over the activations. One pass computes a batch of columns:
//! the picked item's and those of the unpicked items with the largest gains `d_i^2`, the
//! likeliest next picks. Gains only fall, so an item outside the batch is picked only once
//! every batch item above it was picked or fell below it; then the next pass starts, and
//! computes only the columns the batch does not hold yet (a column is read once, when its
//! item is picked, and its slot freed). The picks are greedy MAP's on the whole kernel (the
//! tests compare them).
//!
//! A first pass collects what every column needs: the column sums and M's diagonal (in
//! f64). The columns are computed as the statistics engine computes all of M
//! ([`crate::cpu::gram`]): f32 products of row chunks centred on their own means, merged in
//! f64. Their rounding differs from the whole kernel's (the diagonal is exact here), so a
//! pick decided by a rounding-level difference in gain can differ from the whole kernel's.

use faer::linalg::matmul::matmul as gemm;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use super::{diversity, Diversity};
use crate::cpu::gram::{checked_column_sums, staged_rows, RowChunk, RunningMean};
use crate::cpu::rbf::DistanceParts;
use crate::dpp::{greedy_map_over, GreedyStop, KernelColumns};
use crate::error::{Error, Result};
use crate::memory::Allocation;
use crate::progress::Progress;
use crate::rbf::{check_eps, rbf_entry, Beta};
use crate::types::{ActivationRows, RowSource};

/// Bytes of a pass's batch at most: its columns in f64 and the f32 product (12 n bytes per
/// column).
const BATCH_BYTES: usize = 256 << 20;
/// Columns per batch at least (when n allows): fewer would mean a pass for every few picks.
const MIN_BATCH: usize = 64;

/// What [`greedy_from_activations`] found.
#[derive(Clone, Debug)]
pub struct ColumnGreedy {
    /// The kept neurons, sorted.
    pub kept: Vec<usize>,
    /// The bandwidth used.
    pub beta: f64,
    /// log det and mean off-diagonal of the kept neurons' kernel block.
    pub diversity: Diversity,
    /// Passes over the activations: the first (sums and variances) and one per batch.
    pub passes: usize,
    /// Kernel columns computed (k of them read).
    pub columns_computed: usize,
}

/// Greedy MAP keeping `k` of the source's neurons on their RBF kernel (`beta` as paper or
/// a value; the median needs every distance), kernel columns computed in batches from
/// passes over `source` (`batch_columns` per pass). Progress: one stage per pass.
pub fn greedy_from_activations(
    source: &mut dyn RowSource,
    k: usize,
    beta: Beta,
    eps: f64,
    progress: &mut dyn Progress,
) -> Result<ColumnGreedy> {
    let batch = batch_columns(source.width(), k);
    greedy_in_batches(source, k, beta, eps, batch, progress)
}

/// Columns per pass for a layer of `n` neurons keeping `k`.
pub(crate) fn batch_columns(n: usize, k: usize) -> usize {
    (BATCH_BYTES / (12 * n.max(1)))
        .max(MIN_BATCH)
        .min(k.max(1))
        .min(n.max(1))
}

/// What greedy MAP from kernel columns holds for `n` neurons, `k` kept, `rows` rows: its
/// Cholesky rows, the batch, a chunk of rows and its batch columns, the kept block.
pub(crate) fn planned_memory(n: usize, k: usize, rows: usize) -> Vec<Allocation> {
    let batch = batch_columns(n, k);
    let chunk = staged_rows(n, rows);
    vec![
        Allocation::matrix("greedy MAP's Cholesky rows", k, n, 8),
        Allocation::matrix("a batch of kernel columns", n, batch, 8),
        Allocation::matrix("the batch's f32 product", n, batch, 4),
        Allocation::matrix("a chunk of rows", chunk, n, 4),
        Allocation::matrix("the chunk's batch columns", chunk, batch, 4),
        Allocation::matrix("the kept neurons' kernel block", k, k, 8),
    ]
}

pub(crate) fn greedy_in_batches(
    source: &mut dyn RowSource,
    k: usize,
    beta: Beta,
    eps: f64,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<ColumnGreedy> {
    FirstPass::read(source, k, beta, eps, progress)?.greedy(source, batch, progress)
}

/// What the columns route knows after its first pass: the request, checked before the
/// pass, and the column sums and variances.
pub(crate) struct FirstPass {
    moments: ColumnMoments,
    k: usize,
    beta: f64,
    eps: f64,
}

impl FirstPass {
    /// Checks k, beta and eps, then reads `source` once; an error when it has no rows.
    pub(crate) fn read(
        source: &mut dyn RowSource,
        k: usize,
        beta: Beta,
        eps: f64,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let n = source.width();
        check_eps(eps)?;
        // Any m will do to check the median's refusal and a given value.
        beta.resolve_without_distances(1)?;
        if k == 0 || k > n {
            return Err(Error::invalid(format!(
                "cannot keep {k} of {n} neurons: k must be between 1 and {n}"
            )));
        }
        let moments = ColumnMoments::of(source, progress)?;
        if moments.samples() == 0 {
            return Err(Error::invalid("the activations have no rows"));
        }
        Ok(Self {
            k,
            beta: beta.resolve_without_distances(moments.samples())?,
            eps,
            moments,
        })
    }

    /// Greedy MAP from kernel columns computed from further passes over `source` (the
    /// source just read), `batch` columns at most per pass.
    pub(crate) fn greedy(
        self,
        source: &mut dyn RowSource,
        batch: usize,
        progress: &mut dyn Progress,
    ) -> Result<ColumnGreedy> {
        let (k, beta) = (self.k, self.beta);
        let mut columns =
            ActivationColumns::new(source, self.moments, beta, self.eps, batch, progress);
        let picked = greedy_map_over(&mut columns, GreedyStop::Count(k))?;
        // The kept block in pick order, then in the sorted order the caller gets.
        let block = columns.kept_block();
        let mut order: Vec<usize> = (0..picked.len()).collect();
        order.sort_by_key(|&t| picked[t]);
        let diversity = diversity(block.as_ref(), &order);
        let mut kept = picked;
        kept.sort_unstable();
        Ok(ColumnGreedy {
            kept,
            beta,
            diversity,
            passes: columns.passes + 1,
            columns_computed: columns.computed,
        })
    }
}

/// The column sums and M's diagonal (each column's squared deviations from its mean), in
/// f64, chunk by chunk with the pairwise update.
struct ColumnMoments {
    sums: Vec<f64>,
    diag: Vec<f64>,
    /// The rows' mean so far, and their count.
    running: RunningMean,
}

impl ColumnMoments {
    /// Rows read.
    fn samples(&self) -> usize {
        self.running.count()
    }

    /// One pass over `source`.
    fn of(source: &mut dyn RowSource, progress: &mut dyn Progress) -> Result<Self> {
        let n = source.width();
        let mut moments = Self {
            sums: vec![0.0; n],
            diag: vec![0.0; n],
            running: RunningMean::new(n),
        };
        progress.start("statistics", source.rows() as u64);
        let result = source.pass(&mut |rows| {
            let count = rows.whole_rows(n)?;
            if count == 0 {
                return Ok(());
            }
            let sums = checked_column_sums(rows, n)?;
            moments.merge(rows, &sums, count);
            progress.advance(count as u64);
            Ok(())
        });
        progress.finish();
        result?;
        Ok(moments)
    }

    /// Adds `count` rows whose column sums are `sums`: their squared deviations from their
    /// own mean (row ranges on all threads), merged by the pairwise update.
    fn merge(&mut self, rows: ActivationRows<'_>, sums: &[f64], count: usize) {
        let n = self.sums.len();
        let r = count as f64;
        let mean: Vec<f64> = sums.iter().map(|s| s / r).collect();
        let squares_of = |range: std::ops::Range<usize>| {
            let mut squares = vec![0.0f64; n];
            for t in range {
                let row = rows.slice(t * n..(t + 1) * n);
                let mut add = |x: f64, j: usize| {
                    let dev = x - mean[j];
                    squares[j] += dev * dev;
                };
                match row {
                    ActivationRows::F32(v) => {
                        v.iter().enumerate().for_each(|(j, &x)| add(x as f64, j))
                    }
                    ActivationRows::F16(v) => {
                        v.iter().enumerate().for_each(|(j, x)| add(x.to_f64(), j))
                    }
                }
            }
            squares
        };
        const ROWS_PER_TASK: usize = 256;
        let squares = (0..count.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .map(|p| squares_of(p * ROWS_PER_TASK..((p + 1) * ROWS_PER_TASK).min(count)))
            .reduce(
                || vec![0.0f64; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        // About the rows' own mean: no shift.
        let correction = self.running.merge(&mean, vec![0.0; n], count);
        for j in 0..n {
            self.diag[j] += squares[j] + correction.term(j, j);
            self.sums[j] += sums[j];
        }
    }
}

/// Kernel columns from passes over the activations, a batch per pass.
struct ActivationColumns<'a> {
    source: &'a mut dyn RowSource,
    progress: &'a mut dyn Progress,
    n: usize,
    samples: usize,
    parts: DistanceParts,
    beta: f64,
    eps: f64,
    batch: usize,
    /// The batch: kernel columns (n x batch), the item of each slot, the slot of each item.
    columns: Mat<f64>,
    owner: Vec<Option<usize>>,
    slot: Vec<Option<usize>>,
    /// Items in the order their columns were read, and the kept block's lower triangle
    /// (row t: `L[picked[s], picked[t]]` for s <= t).
    picked: Vec<usize>,
    block_rows: Vec<Vec<f64>>,
    passes: usize,
    computed: usize,
}

impl<'a> ActivationColumns<'a> {
    fn new(
        source: &'a mut dyn RowSource,
        moments: ColumnMoments,
        beta: f64,
        eps: f64,
        batch: usize,
        progress: &'a mut dyn Progress,
    ) -> Self {
        let n = source.width();
        let samples = moments.samples();
        let parts = DistanceParts::from_parts(moments.diag, &moments.sums, samples);
        Self {
            source,
            progress,
            n,
            samples,
            parts,
            beta,
            eps,
            batch: batch.clamp(1, n),
            columns: Mat::zeros(0, 0),
            owner: Vec::new(),
            slot: vec![None; n],
            picked: Vec::new(),
            block_rows: Vec::new(),
            passes: 0,
            computed: 0,
        }
    }

    /// Makes sure the batch holds the kernel columns of `j` and of the unpicked items with
    /// the largest gains: those it holds already stay, the others are computed in one
    /// pass over the activations, into the slots of columns no longer wanted.
    fn read_batch(&mut self, j: usize, gains: &[f64], chosen: &[bool]) -> Result<()> {
        let n = self.n;
        let mut others: Vec<usize> = (0..n).filter(|&i| i != j && !chosen[i]).collect();
        let extra = (self.batch - 1).min(others.len());
        if extra < others.len() {
            // Largest gains first; ties to the lower index, as greedy MAP breaks them.
            others.select_nth_unstable_by(extra, |&a, &b| {
                gains[b].total_cmp(&gains[a]).then(a.cmp(&b))
            });
        }
        others.truncate(extra);
        let mut wanted = vec![false; n];
        for &i in std::iter::once(&j).chain(&others) {
            wanted[i] = true;
        }
        if self.columns.ncols() != self.batch {
            self.columns = Mat::zeros(n, self.batch);
            self.owner = vec![None; self.batch];
        }
        let mut free = Vec::new();
        for (s, owner) in self.owner.iter_mut().enumerate() {
            match *owner {
                Some(i) if wanted[i] => {}
                Some(i) => {
                    self.slot[i] = None;
                    *owner = None;
                    free.push(s);
                }
                None => free.push(s),
            }
        }
        // The new columns: (slot, item), j first.
        let new: Vec<(usize, usize)> = std::iter::once(j)
            .chain(others)
            .filter(|&i| self.slot[i].is_none())
            .zip(free)
            .map(|(i, s)| (s, i))
            .collect();
        for &(s, i) in &new {
            self.owner[s] = Some(i);
            self.slot[i] = Some(s);
        }
        self.passes += 1;
        self.computed += new.len();
        let stage = format!(
            "kernel columns (pass {}, {} new columns)",
            self.passes,
            new.len()
        );
        self.comoment_columns(&new, &stage)?;
        self.kernel_columns(&new);
        Ok(())
    }

    /// Into the slots of `new` (slot, item): column `item` of the centred co-moments M,
    /// each chunk of rows centred on its own means and multiplied in f32, the chunks merged
    /// in f64 by the pairwise update, as the statistics engine computes all of M
    /// ([`crate::cpu::gram`]). An error when the pass does not give the first pass's rows.
    fn comoment_columns(&mut self, new: &[(usize, usize)], stage: &str) -> Result<()> {
        let (n, width) = (self.n, new.len());
        // For each slot, its column of the chunk's product.
        let mut product_column = vec![None; self.columns.ncols()];
        for (q, &(s, _)) in new.iter().enumerate() {
            product_column[s] = Some(q);
            self.columns.col_mut(s).fill(0.0);
        }
        let mut product = Mat::<f32>::zeros(n, width);
        let mut chunk = RowChunk::new(n);
        let mut running = RunningMean::new(n);
        let mut gathered: Vec<f32> = Vec::new();
        let columns = &mut self.columns;
        let progress = &mut *self.progress;
        progress.start(stage, self.source.rows() as u64);
        let mut add_chunk = |chunk: &mut RowChunk| {
            let (values, rows) = chunk.take();
            if rows == 0 {
                return;
            }
            let correction = running.centre_and_merge(values, rows);
            gathered.resize(rows * width, 0.0);
            gathered
                .par_chunks_mut(rows)
                .zip(new.par_iter())
                .for_each(|(col, &(_, i))| {
                    for (g, row) in col.iter_mut().zip(values.chunks_exact(n)) {
                        *g = row[i];
                    }
                });
            let a = MatRef::from_row_major_slice(&*values, rows, n);
            let b = MatRef::from_column_major_slice(&gathered[..], rows, width);
            gemm(
                product.as_mut(),
                Accum::Replace,
                a.transpose(),
                b,
                1.0f32,
                Par::rayon(0),
            );
            columns
                .par_col_iter_mut()
                .zip(product_column.par_iter())
                .for_each(|(dst, q)| {
                    if let Some(q) = *q {
                        let j = new[q].1;
                        let dst = crate::cpu::contiguous_mut(dst);
                        let src = crate::cpu::contiguous(product.col(q));
                        for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                            *d += x as f64 + correction.term(i, j);
                        }
                    }
                });
        };
        let result = self.source.pass(&mut |rows| {
            let count = rows.whole_rows(n)?;
            let mut r = 0;
            while r < count {
                r += chunk.fill(rows.slice(r * n..count * n));
                if chunk.is_full() {
                    add_chunk(&mut chunk);
                }
            }
            progress.advance(count as u64);
            Ok(())
        });
        add_chunk(&mut chunk);
        progress.finish();
        result?;
        let samples = running.count();
        let finite = new
            .iter()
            .all(|&(s, _)| self.columns.col(s).iter().all(|x| x.is_finite()));
        if samples != self.samples || !finite {
            return Err(Error::invalid(format!(
                "the activations changed between passes: pass {} read {samples} rows{}, the \
                 first {}",
                self.passes + 1,
                if finite {
                    ""
                } else {
                    " with non-finite values"
                },
                self.samples
            )));
        }
        Ok(())
    }

    /// The kernel columns of `new` (slot, item) from their columns of M, in place, as
    /// [`crate::rbf::rbf_from_distances`] builds L.
    fn kernel_columns(&mut self, new: &[(usize, usize)]) {
        let mut item_of_slot = vec![None; self.columns.ncols()];
        for &(s, i) in new {
            item_of_slot[s] = Some(i);
        }
        let (parts, beta, eps) = (&self.parts, self.beta, self.eps);
        self.columns
            .par_col_iter_mut()
            .zip(item_of_slot.par_iter())
            .for_each(|(col, item)| {
                let Some(j) = *item else { return };
                for (i, v) in crate::cpu::contiguous_mut(col).iter_mut().enumerate() {
                    *v = rbf_entry(beta, eps, i == j, parts.distance(i, j, *v));
                }
            });
    }

    /// The kept block, in pick order, both triangles.
    fn kept_block(&self) -> Mat<f64> {
        let k = self.picked.len();
        Mat::from_fn(k, k, |s, t| {
            let (s, t) = if s <= t { (s, t) } else { (t, s) };
            self.block_rows[t][s]
        })
    }
}

impl KernelColumns for ActivationColumns<'_> {
    fn items(&self) -> usize {
        self.n
    }

    fn diagonal(&self) -> Vec<f64> {
        vec![1.0 + self.eps; self.n]
    }

    fn column(&mut self, j: usize, gains: &[f64], chosen: &[bool], out: &mut [f64]) -> Result<()> {
        if self.slot[j].is_none() {
            self.read_batch(j, gains, chosen)?;
        }
        let s = self.slot[j].take().expect("the batch holds j");
        self.owner[s] = None;
        out.copy_from_slice(crate::cpu::contiguous(self.columns.col(s)));
        self.picked.push(j);
        self.block_rows
            .push(self.picked.iter().map(|&y| out[y]).collect());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::dpp::greedy_map;
    use crate::kernel::rbf_kernel;
    use crate::progress::NoProgress;
    use crate::types::SliceRows;
    use half::f16;
    use rand::{Rng, SeedableRng};

    /// m x n rows: neurons in clusters around a few centres (so that picking one lowers its
    /// cluster's gains and batches miss), with an offset.
    fn clustered(m: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..6)
            .map(|_| (0..m).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        let mut a = vec![0.0f32; m * n];
        for j in 0..n {
            let (c, spread) = (j % 6, 0.05 + 0.1 * (j % 4) as f32);
            for t in 0..m {
                a[t * n + j] = 2.0 + centres[c][t] + spread * rng.random_range(-1.0f32..1.0);
            }
        }
        a
    }

    #[test]
    fn picks_are_greedy_map_on_the_whole_kernel() {
        let (m, n, k) = (500, 48, 20);
        let a = clustered(m, n, 3);
        let halves: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
        for rows in [ActivationRows::F32(&a), ActivationRows::F16(&halves)] {
            for beta in [Beta::Paper, Beta::Value(0.004)] {
                let l = rbf_kernel(&Backend::Cpu, rows, n, beta, 1e-6).unwrap();
                let mut want = greedy_map(l.matrix.as_ref(), GreedyStop::Count(k)).unwrap();
                want.sort_unstable();
                for batch in [1, 5, 16, n] {
                    let mut source = SliceRows::new(rows, n).unwrap().with_chunk_rows(77);
                    let got = greedy_in_batches(&mut source, k, beta, 1e-6, batch, &mut NoProgress)
                        .unwrap();
                    assert_eq!(got.kept, want, "batch {batch} {beta:?}");
                    assert_eq!(got.beta, l.beta);
                    // The same block up to the f32 products' rounding (both paths make
                    // their own).
                    let whole = diversity(l.matrix.as_ref(), &want);
                    let log_det_err = (got.diversity.log_det - whole.log_det).abs();
                    assert!(log_det_err <= 1e-5 * (1.0 + whole.log_det.abs()));
                    let off_err = (got.diversity.mean_off_diagonal - whole.mean_off_diagonal).abs();
                    assert!(off_err <= 1e-6);
                    // One column per pass is a pass per pick; a batch of all n is one pass.
                    // Each pick's column was computed (a column evicted from the batch may
                    // be computed again later).
                    assert!(got.columns_computed >= k);
                    match batch {
                        1 => assert_eq!((got.passes, got.columns_computed), (k + 1, k)),
                        b if b == n => assert_eq!((got.passes, got.columns_computed), (2, n)),
                        _ => assert!(got.passes > 2 && got.passes <= k + 1),
                    }
                }
            }
        }
    }

    /// Near-duplicate pairs far from zero, their offset drifting over the rows (so that a
    /// single shift would leave large sums): the columns' centring per chunk keeps greedy's
    /// picks those of the whole kernel.
    #[test]
    fn near_duplicates_with_drift_pick_as_the_whole_kernel() {
        let (m, n, k) = (20_000, 24, 10);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let mut a = vec![0.0f32; m * n];
        for t in 0..m {
            let offset = 5.0 + 3.0 * t as f32 / m as f32;
            for j in 0..n / 2 {
                let v = offset + (j as f32 * 0.1 + 0.5) * rng.random_range(-1.0f32..1.0);
                a[t * n + 2 * j] = v;
                a[t * n + 2 * j + 1] = v + 1e-3 * rng.random_range(-1.0f32..1.0);
            }
        }
        let rows = ActivationRows::F32(&a);
        let l = rbf_kernel(&Backend::Cpu, rows, n, Beta::Paper, 1e-6).unwrap();
        let mut want = greedy_map(l.matrix.as_ref(), GreedyStop::Count(k)).unwrap();
        want.sort_unstable();
        // One of each pair.
        assert!(want.windows(2).all(|w| w[0] / 2 != w[1] / 2), "{want:?}");
        for batch in [3, n] {
            let mut source = SliceRows::new(rows, n).unwrap().with_chunk_rows(999);
            let got = greedy_in_batches(&mut source, k, Beta::Paper, 1e-6, batch, &mut NoProgress)
                .unwrap();
            assert_eq!(got.kept, want, "batch {batch}");
        }
    }

    /// A source that gives fewer rows after its first pass.
    struct Shrinking<'a> {
        rows: &'a [f32],
        n: usize,
        passes: usize,
    }

    impl RowSource for Shrinking<'_> {
        fn width(&self) -> usize {
            self.n
        }
        fn rows(&self) -> usize {
            self.rows.len() / self.n
        }
        fn pass(&mut self, visit: &mut dyn FnMut(ActivationRows<'_>) -> Result<()>) -> Result<()> {
            self.passes += 1;
            let take = if self.passes == 1 {
                self.rows.len()
            } else {
                self.rows.len() / 2
            };
            visit(ActivationRows::F32(&self.rows[..take / self.n * self.n]))
        }
    }

    #[test]
    fn a_source_that_changes_between_passes_is_an_error() {
        let (m, n) = (100, 12);
        let a = clustered(m, n, 9);
        let mut source = Shrinking {
            rows: &a,
            n,
            passes: 0,
        };
        let err = greedy_from_activations(&mut source, 3, Beta::Paper, 0.0, &mut NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("changed between passes") && err.contains("read 50 rows"),
            "{err}"
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        let (m, n) = (50, 8);
        let a = clustered(m, n, 5);
        let rows = ActivationRows::F32(&a);
        let mut source = SliceRows::new(rows, n).unwrap();
        let mut run = |k, beta, eps| {
            greedy_from_activations(&mut source, k, beta, eps, &mut NoProgress)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(run(0, Beta::Paper, 0.0).contains("between 1 and 8"));
        assert!(run(9, Beta::Paper, 0.0).contains("between 1 and 8"));
        assert!(run(2, Beta::Median, 0.0).contains("median"));
        assert!(run(2, Beta::Paper, f64::NAN).contains("eps"));
        // Refused before any pass: an empty source is an error only after its first.
        let mut empty = SliceRows::new(ActivationRows::F32(&[]), n).unwrap();
        let err = greedy_from_activations(&mut empty, 2, Beta::Median, 0.0, &mut NoProgress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("median"), "{err}");
        let err = greedy_from_activations(&mut empty, 2, Beta::Paper, 0.0, &mut NoProgress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no rows"), "{err}");
    }
}
