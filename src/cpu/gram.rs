//! The CPU twin of the statistics kernels: the co-moments of a layer's activations about
//! their mean, `M = (A - 1 mu^T)^T (A - 1 mu^T)`, from which both statistics follow: the
//! Gram matrix `G = M + s s^T / m` and the distances
//! `D_ij = (M_ii + M_jj - 2 M_ij) + m (mu_i - mu_j)^2` ([`crate::cpu::rbf`]).
//!
//! Each row chunk is centred on its own column means (rounded to f32) and multiplied in
//! f32 by faer's matrix product (only the lower triangle, like BLAS syrk); the chunk's
//! co-moments join the running sum in f64 by the pairwise update of Chan, Golub & LeVeque
//! (1979): `M += M_b + (N r / (N + r)) (mu_b - mu)(mu_b - mu)^T` for a chunk of r rows
//! after N.
//!
//! Why centred f32: the f32 product runs at twice the speed of f64 (n = 4096, m = 16384:
//! 1.75 s against 3.7 s on this project's two cores), but its rounding error scales with
//! the entries it sums. Uncentred, `G_ii` carries the square of a common offset, and
//! `G_ii + G_jj - 2 G_ij` then loses two near-duplicate neurons' distance to it. Centred,
//! the error scales with the variance instead: on unit-variance activations with an offset
//! of 5 (m = 32768, near-duplicate pairs), the kernel `exp(-beta D)` at the paper's
//! `beta = 10 / m` is within 2.2e-6 of the f64 one (`tests/kernels.rs`,
//! `centred_statistics_keep_near_duplicates_apart`), where uncentred f32 products were about
//! 1e-4 off (9e-5 in a numpy prototype of both on such data).

use faer::linalg::matmul::matmul as gemm;
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::contiguous;
use super::symmetric::{mirror_lower, SharedMatrix};
use crate::error::{Error, Result};
use crate::memory::Allocation;
use crate::types::{ActivationRows, GramStats};

/// Rows per chunk at most: bounds each f32 partial sum before it is added in f64 (faer
/// accumulates in registers and in its blocking, about `sqrt(K) * 2^-24` relative).
const CHUNK_ROWS: usize = 8192;
/// Values per chunk at most (64 MiB of f32): long chunks keep the product BLAS-fast.
const CHUNK_ELEMS: usize = 1 << 24;
/// Values of a wide layer's f32 product block at most (64 MiB): the product of a chunk is
/// computed a block of columns at a time and merged at once, so that a wide layer never
/// holds an n x n f32 product beside its f64 sum.
const BLOCK_ELEMS: usize = 1 << 24;
/// Rows centred per task.
const CENTRE_ROWS: usize = 64;

/// The centred statistics of a layer's activations: what [`CpuGram::finish`] returns.
pub(crate) struct Comoments {
    /// `M`, both triangles, f64.
    pub(crate) comoments: Mat<f64>,
    /// `s = A^T 1`.
    pub(crate) col_sums: Vec<f64>,
    /// m, the rows.
    pub(crate) samples: usize,
}

impl Comoments {
    /// The Gram statistics, `G = M + s s^T / m` built in place.
    pub(crate) fn into_gram(self) -> GramStats {
        let mut gram = self.comoments;
        add_mean_outer(&mut gram, &self.col_sums, self.samples);
        GramStats {
            gram,
            col_sums: self.col_sums,
            samples: self.samples,
        }
    }
}

/// `g += s s^T / m` on all threads (nothing when m = 0).
pub(crate) fn add_mean_outer(g: &mut Mat<f64>, col_sums: &[f64], samples: usize) {
    if samples == 0 {
        return;
    }
    // `(s_i s_j) / m`: the same value at (i, j) and (j, i), so that G stays symmetric.
    let m = samples as f64;
    g.par_col_iter_mut()
        .zip(col_sums.par_iter())
        .with_min_len(16)
        .for_each(|(col, &sj)| {
            for (x, si) in super::contiguous_mut(col).iter_mut().zip(col_sums) {
                *x += si * sj / m;
            }
        });
}

/// Streams row chunks into the lower triangle of the co-moments `M` (f64) and `A^T 1`.
pub(crate) struct CpuGram {
    n: usize,
    /// The co-moments of the rows merged so far about their mean (lower triangle), once a
    /// chunk was merged.
    lower: Option<Mat<f64>>,
    /// The mean of the rows merged so far, and their count.
    running: RunningMean,
    sums: Vec<f64>,
    /// Rows waiting for a whole chunk.
    chunk: RowChunk,
    /// The f32 products a chunk is merged from: one n x n per thread for narrow layers
    /// (the rows split across threads), one block of columns for wide ones.
    partials: Vec<Mat<f32>>,
    /// Columns per product block of a wide layer.
    block: usize,
}

impl CpuGram {
    pub(crate) fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        Ok(Self {
            n,
            lower: None,
            running: RunningMean::new(n),
            sums: vec![0.0; n],
            chunk: RowChunk::new(n),
            partials: Vec::new(),
            block: block_columns(n),
        })
    }

    pub(crate) fn samples(&self) -> usize {
        self.running.count + self.chunk.rows
    }

    /// What an accumulator for `n` neurons holds during a pass of `rows` rows: its f64
    /// sum, the f32 products it merges into it (one n x n per thread for narrow layers, one
    /// block of columns for wide ones), and a chunk of rows staged in f32.
    pub(crate) fn planned_pass_memory(n: usize, rows: usize) -> Vec<Allocation> {
        let mut holds = vec![Allocation::matrix("the statistics' f64 sum", n, n, 8)];
        if n > SPLIT_MAX_N {
            holds.push(Allocation::matrix(
                "a chunk's product, a block of columns",
                n,
                block_columns(n),
                4,
            ));
        } else {
            holds.extend(
                (0..threads()).map(|_| Allocation::matrix("a chunk's n x n product", n, n, 4)),
            );
        }
        holds.push(Allocation::matrix(
            "a chunk of rows",
            staged_rows(n, rows),
            n,
            4,
        ));
        holds
    }

    pub(crate) fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.n;
        let count = rows.whole_rows(n)?;
        let sums = checked_column_sums(rows, n)?;
        for (total, s) in self.sums.iter_mut().zip(&sums) {
            *total += s;
        }
        let mut r = 0;
        while r < count {
            r += self.chunk.fill(rows.slice(r * n..count * n));
            if self.chunk.is_full() {
                self.flush();
            }
        }
        Ok(())
    }

    /// Merges the staged rows: centred on their own means, multiplied, added with the
    /// pairwise update's correction.
    fn flush(&mut self) {
        let n = self.n;
        let (chunk, rows) = self.chunk.take();
        if rows == 0 {
            return;
        }
        let merge = self.running.centre_and_merge(chunk, rows);
        let lower = self.lower.get_or_insert_with(|| super::symmetric::zeros(n));
        let a = MatRef::from_row_major_slice(&*chunk, rows, n);
        if n > SPLIT_MAX_N {
            let width = self.block;
            if self.partials.len() != 1 {
                self.partials = vec![Mat::zeros(n, width)];
            }
            for j0 in (0..n).step_by(width) {
                let j1 = (j0 + width).min(n);
                let block = self.partials[0]
                    .as_mut()
                    .submatrix_mut(0, 0, n - j0, j1 - j0);
                block_product(a, j0, j1, block);
                let block = self.partials[0].as_ref().submatrix(0, 0, n - j0, j1 - j0);
                merge_columns(lower, j0, &[block], &merge);
            }
        } else {
            lower_products(a, &mut self.partials);
            let parts: Vec<MatRef<'_, f32>> = self.partials.iter().map(|p| p.as_ref()).collect();
            merge_columns(lower, 0, &parts, &merge);
        }
    }

    /// The full symmetric co-moments, the column sums and m.
    pub(crate) fn finish(mut self) -> Comoments {
        self.flush();
        let n = self.n;
        let mut comoments = self.lower.unwrap_or_else(|| Mat::zeros(n, n));
        mirror_lower(&mut comoments);
        Comoments {
            comoments,
            col_sums: self.sums,
            samples: self.running.count,
        }
    }
}

/// The mean of the rows merged so far and their count: what the pairwise update merges
/// each chunk against.
pub(crate) struct RunningMean {
    mean: Vec<f64>,
    count: usize,
}

impl RunningMean {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            mean: vec![0.0; n],
            count: 0,
        }
    }

    /// Centres the chunk (`rows` rows, row-major) on its own column means rounded to f32,
    /// and merges those means: returns the terms its product is merged with.
    pub(crate) fn centre_and_merge(&mut self, chunk: &mut [f32], rows: usize) -> Correction {
        let n = self.mean.len();
        let chunk_mean: Vec<f64> = column_sums(ActivationRows::F32(chunk), n)
            .0
            .into_iter()
            .map(|s| s / rows as f64)
            .collect();
        let shift: Vec<f32> = chunk_mean.iter().map(|&x| x as f32).collect();
        centre(chunk, &shift);
        let offset = chunk_mean
            .iter()
            .zip(&shift)
            .map(|(&m, &c)| m - c as f64)
            .collect();
        self.merge(&chunk_mean, offset, rows)
    }

    /// Merges a chunk of `rows` rows with mean `chunk_mean` whose product was taken about
    /// `chunk_mean - offset`: returns the terms it is merged with. The product is about the
    /// shift, not the chunk's mean: `M_b = S - r d d^T` with `d = offset`; the merge adds
    /// `f delta delta^T`, `delta` the means' gap.
    pub(crate) fn merge(
        &mut self,
        chunk_mean: &[f64],
        offset: Vec<f64>,
        rows: usize,
    ) -> Correction {
        let before = self.count as f64;
        let r = rows as f64;
        let correction = Correction {
            d: offset,
            r,
            delta: chunk_mean
                .iter()
                .zip(&self.mean)
                .map(|(b, a)| b - a)
                .collect(),
            f: before * r / (before + r),
        };
        for (mu, delta) in self.mean.iter_mut().zip(&correction.delta) {
            *mu += delta * r / (before + r);
        }
        self.count += rows;
        correction
    }

    /// Rows merged so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }
}

/// The rank-one terms a chunk's f32 product `S` (about its shift) is merged with:
/// `M_ij += S_ij + term(i, j)`.
pub(crate) struct Correction {
    d: Vec<f64>,
    r: f64,
    delta: Vec<f64>,
    f: f64,
}

impl Correction {
    /// `f delta_i delta_j - r d_i d_j`.
    #[inline]
    pub(crate) fn term(&self, i: usize, j: usize) -> f64 {
        self.f * self.delta[i] * self.delta[j] - self.r * self.d[i] * self.d[j]
    }
}

/// Rows gathered in f32 into chunks of [`chunk_rows`] rows, the unit of one product; the
/// buffer grows to a chunk as rows come (a few rows need no 64 MB), then is reused.
pub(crate) struct RowChunk {
    n: usize,
    limit: usize,
    values: Vec<f32>,
    rows: usize,
}

impl RowChunk {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            limit: chunk_rows(n),
            values: Vec::new(),
            rows: 0,
        }
    }

    /// Copies (f16: converts) the leading rows of `rows` until the chunk is full; returns
    /// how many it took.
    pub(crate) fn fill(&mut self, rows: ActivationRows<'_>) -> usize {
        let n = self.n;
        let take = (self.limit - self.rows).min(rows.len() / n);
        let end = (self.rows + take) * n;
        if self.values.len() < end {
            self.values.resize(end, 0.0);
        }
        let dst = &mut self.values[self.rows * n..end];
        match rows.slice(0..take * n) {
            ActivationRows::F32(v) => dst.copy_from_slice(v),
            ActivationRows::F16(v) => dst
                .par_chunks_mut(CONVERT_PIECE)
                .zip(v.par_chunks(CONVERT_PIECE))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, x)| *d = x.to_f32())),
        }
        self.rows += take;
        take
    }

    pub(crate) fn is_full(&self) -> bool {
        self.rows == self.limit
    }

    /// The staged rows (row-major, to be centred and multiplied in place) and their count;
    /// the chunk is empty again.
    pub(crate) fn take(&mut self) -> (&mut [f32], usize) {
        let rows = std::mem::take(&mut self.rows);
        (&mut self.values[..rows * self.n], rows)
    }
}

/// Subtracts `shift` from every row of `chunk` (row-major, `shift.len()` values per row),
/// rows on all threads.
pub(crate) fn centre(chunk: &mut [f32], shift: &[f32]) {
    let n = shift.len();
    chunk.par_chunks_mut(CENTRE_ROWS * n).for_each(|part| {
        for row in part.chunks_exact_mut(n) {
            for (x, c) in row.iter_mut().zip(shift) {
                *x -= c;
            }
        }
    });
}

/// Rows per product for a layer of `n` neurons.
pub(crate) fn chunk_rows(n: usize) -> usize {
    CHUNK_ROWS.min((CHUNK_ELEMS / n).max(1))
}

/// The rows a pass over `rows` rows stages at once, for a plan: a whole chunk when the
/// count is not known yet (0, a stream before its first pass).
pub(crate) fn staged_rows(n: usize, rows: usize) -> usize {
    if rows == 0 {
        chunk_rows(n)
    } else {
        chunk_rows(n).min(rows)
    }
}

/// Columns per product block of a wide layer of `n` neurons.
fn block_columns(n: usize) -> usize {
    (BLOCK_ELEMS / n).clamp(1, n)
}

/// Values converted per task when f16 rows are staged.
const CONVERT_PIECE: usize = 1 << 16;

/// Rows j0.. of columns j0..j1 of `a^T a` (the block's top square, its lower triangle
/// only) into `out` ((n - j0) x (j1 - j0)), faer parallelising over the output.
fn block_product(a: MatRef<'_, f32>, j0: usize, j1: usize, out: MatMut<'_, f32>) {
    let width = j1 - j0;
    let cols = a.subcols(j0, width);
    let (top, below) = out.split_at_row_mut(width);
    lower_product(cols, top, Par::rayon(0));
    if j1 < a.ncols() {
        gemm(
            below,
            Accum::Replace,
            a.subcols(j1, a.ncols() - j1).transpose(),
            cols,
            1.0f32,
            Par::rayon(0),
        );
    }
}

/// `M[j0 + i, j0 + j] += sum of parts[(i, j)] + correction` for i >= j over the parts'
/// columns, columns spread over all threads. Each part's (i, j) stands for M's
/// `(j0 + i, j0 + j)`.
fn merge_columns(lower: &mut Mat<f64>, j0: usize, parts: &[MatRef<'_, f32>], c: &Correction) {
    let n = lower.nrows();
    let width = parts[0].ncols();
    let shared = SharedMatrix::new(lower);
    (0..width).into_par_iter().with_min_len(16).for_each(|jj| {
        let j = j0 + jj;
        // SAFETY: each task writes its own column j (rows j..n) and nothing else.
        let out = unsafe { shared.column(j, j..n) };
        for (i, o) in (j..n).zip(out.iter_mut()) {
            *o += c.term(i, j);
        }
        for p in parts {
            let src = &contiguous(p.col(jj))[jj..];
            for (o, &x) in out.iter_mut().zip(src) {
                *o += x as f64;
            }
        }
    });
}

/// `G = A^T A` and `s = A^T 1` of whole in-memory activations (`rows x n`) on the CPU.
pub fn gram_stats(rows: ActivationRows<'_>, n: usize) -> Result<GramStats> {
    let mut acc = CpuGram::new(n)?;
    acc.push(rows)?;
    Ok(acc.finish().into_gram())
}

/// Layers up to this width split the rows across threads, one n x n product each; wider
/// ones let faer parallelise over the output, which it does well there (n = 2048,
/// m = 8192: 217 ms against 247 ms for two row halves), a block of columns at a time.
const SPLIT_MAX_N: usize = 1024;
/// Rows per thread at least, so that each partial product stays BLAS-efficient.
const MIN_ROWS_PER_THREAD: usize = 256;

/// `A^T A` (lower triangle) of a narrow layer's chunk as a few partial products over row
/// ranges of `a`, one per thread, written into `out` (resized to the number of parts).
/// faer parallelises a triangular product over its output, which for n of a few hundred
/// leaves the cores idle (about 4x slower than this at n = 512, m = 8192).
fn lower_products(a: MatRef<'_, f32>, out: &mut Vec<Mat<f32>>) {
    let (m, n) = (a.nrows(), a.ncols());
    let parts = threads().min(m / MIN_ROWS_PER_THREAD).max(1);
    out.truncate(parts);
    while out.len() < parts {
        out.push(Mat::zeros(n, n));
    }
    if parts == 1 {
        lower_product(a, out[0].as_mut(), Par::rayon(0));
        return;
    }
    let step = m.div_ceil(parts);
    std::thread::scope(|s| {
        let (first, rest) = out.split_first_mut().expect("at least one part");
        for (t, g) in rest.iter_mut().enumerate() {
            let start = (t + 1) * step;
            let part = a.subrows(start, step.min(m - start));
            s.spawn(move || lower_product(part, g.as_mut(), Par::Seq));
        }
        lower_product(a.subrows(0, step), first.as_mut(), Par::Seq);
    });
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// Overwrites the lower triangle of `g` with that of `a^T a`.
fn lower_product(a: MatRef<'_, f32>, g: MatMut<'_, f32>, par: Par) {
    matmul(
        g,
        BlockStructure::TriangularLower,
        Accum::Replace,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        1.0f32,
        par,
    );
}

/// `A^T 1` in f64, and an error naming the first value the statistics do not take (not
/// finite, or larger than [`crate::types::MAX_ACTIVATION`]) if there is one.
///
/// The pass that sums the columns doubles as the check: finite f32 values summed in f64
/// cannot overflow (3.4e38 times any row count stays far below 1.8e308), so a sum is
/// non-finite exactly when a value is, and the same pass keeps the largest magnitude. Only
/// when one of the two says so are the values scanned again, to name the culprit.
pub(crate) fn checked_column_sums(rows: ActivationRows<'_>, n: usize) -> Result<Vec<f64>> {
    let (sums, largest) = column_sums(rows, n);
    if sums.iter().any(|s| !s.is_finite()) || largest > crate::types::MAX_ACTIVATION {
        rows.check_usable(n)?;
    }
    Ok(sums)
}

/// `A^T 1` in f64 and the largest magnitude among the values (NaN aside), the rows split
/// across threads when there are enough of them.
pub(crate) fn column_sums(rows: ActivationRows<'_>, n: usize) -> (Vec<f64>, f32) {
    let count = rows.len() / n;
    let parts = threads().min(count / MIN_ROWS_PER_THREAD).max(1);
    let step = count.div_ceil(parts).max(1);
    let partial = |start: usize| {
        let end = (start + step).min(count);
        let mut sums = vec![0.0f64; n];
        let mut largest = 0.0f32;
        match rows {
            ActivationRows::F32(v) => {
                for row in v[start * n..end * n].chunks_exact(n) {
                    for (s, &x) in sums.iter_mut().zip(row) {
                        *s += x as f64;
                        largest = largest.max(x.abs());
                    }
                }
            }
            // Every finite f16 is far below the limit.
            ActivationRows::F16(v) => {
                for row in v[start * n..end * n].chunks_exact(n) {
                    for (s, x) in sums.iter_mut().zip(row) {
                        *s += x.to_f64();
                    }
                }
            }
        }
        (sums, largest)
    };
    if parts == 1 {
        return partial(0);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (step..count)
            .step_by(step)
            .map(|start| s.spawn(move || partial(start)))
            .collect();
        let (mut sums, mut largest) = partial(0);
        for h in handles {
            let (part, part_largest) = h.join().expect("column-sum thread");
            for (s, x) in sums.iter_mut().zip(part) {
                *s += x;
            }
            largest = largest.max(part_largest);
        }
        (sums, largest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with a drifting offset, so that the chunks' means differ.
    fn rows(m: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|k| {
                let (t, j) = (k / n, k % n);
                let x = ((t * 7919 + j * 104_729) % 1000) as f32 / 1000.0;
                3.0 + t as f32 / m as f32 + x * (1.0 + (j % 5) as f32)
            })
            .collect()
    }

    fn reference(a: &[f32], m: usize, n: usize) -> Mat<f64> {
        Mat::from_fn(n, n, |i, j| {
            (0..m)
                .map(|t| a[t * n + i] as f64 * a[t * n + j] as f64)
                .sum()
        })
    }

    #[test]
    fn wide_layers_merge_block_by_block() {
        let (m, n) = (301, SPLIT_MAX_N + 77);
        let a = rows(m, n);
        let want = reference(&a, m, n);
        let scale = (0..n).map(|i| want[(i, i)]).fold(0.0, f64::max);
        for block in [n, 128, 1000] {
            let mut acc = CpuGram::new(n).unwrap();
            acc.block = block;
            // Two chunks of different lengths, so that the pairwise update merges.
            acc.push(ActivationRows::F32(&a[..100 * n])).unwrap();
            acc.flush();
            acc.push(ActivationRows::F32(&a[100 * n..])).unwrap();
            let stats = acc.finish().into_gram();
            assert_eq!(stats.samples, m);
            let err = (0..n)
                .flat_map(|j| (0..n).map(move |i| (i, j)))
                .map(|(i, j)| (stats.gram[(i, j)] - want[(i, j)]).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 1e-6 * scale,
                "block {block}: error {err:e} of {scale:e}"
            );
        }
    }
}
