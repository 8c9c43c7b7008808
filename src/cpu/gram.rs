//! The CPU twin of the Gram kernel: faer's triangular matrix product per row chunk (only
//! the lower triangle, like BLAS syrk), chunk results added in f64, the upper triangle
//! mirrored at the end on all threads.

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
/// Values per chunk at most (64 MiB of f32, 128 MiB of f64): long chunks keep the product
/// BLAS-fast.
const CHUNK_ELEMS: usize = 1 << 24;
/// Values converted per task when rows are widened to f64.
const CONVERT_PIECE: usize = 1 << 16;

/// The arithmetic of the per-chunk product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precision {
    /// f32 products per chunk (BLAS speed), added in f64: the Gram for fusion.
    F32,
    /// f64 products throughout: the Gram that distances are derived from, where
    /// `G_ii + G_jj - 2 G_ij` cancels for near-duplicate neurons and f32 would not do.
    F64,
}

/// Streams row chunks into the lower triangle of `A^T A` (f64) and `A^T 1`.
pub(crate) struct CpuGram {
    n: usize,
    precision: Precision,
    /// The sum of the products so far: both triangles while it holds a single chunk's
    /// symmetric sum (`mirrored`), the lower triangle only after more were added.
    lower: Option<Mat<f64>>,
    mirrored: bool,
    /// The partials hold a product not yet added to `lower`.
    pending: bool,
    sums: Vec<f64>,
    /// Rows waiting for a whole chunk: f32 for [`Precision::F32`], f64 for
    /// [`Precision::F64`] (widened once, as they arrive), allocated once.
    staged: Vec<f32>,
    staged64: Vec<f64>,
    staged_rows: usize,
    samples: usize,
    /// One n x n product per thread, kept between chunks (only the lower triangle is used).
    partials_f32: Vec<Mat<f32>>,
    partials_f64: Vec<Mat<f64>>,
}

impl CpuGram {
    pub(crate) fn new(n: usize, precision: Precision) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        Ok(Self {
            n,
            precision,
            lower: None,
            mirrored: false,
            pending: false,
            sums: vec![0.0; n],
            staged: Vec::new(),
            staged64: Vec::new(),
            staged_rows: 0,
            samples: 0,
            partials_f32: Vec::new(),
            partials_f64: Vec::new(),
        })
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples + self.staged_rows
    }

    /// Rows per product.
    fn chunk_rows(&self) -> usize {
        chunk_rows(self.n)
    }

    /// What an accumulator of `precision` for `n` neurons holds during a pass of `rows` rows:
    /// its f64 sum, the n x n partial products it adds into it (none for wide f64 layers,
    /// which faer adds straight into the sum; one for wide f32 layers; one per thread
    /// otherwise), and a chunk of rows staged in the product's precision.
    pub(crate) fn planned_pass_memory(
        n: usize,
        rows: usize,
        precision: Precision,
    ) -> Vec<Allocation> {
        let wide = n > SPLIT_MAX_N;
        let (elem, partials) = match precision {
            Precision::F32 => (4, if wide { 1 } else { threads() }),
            Precision::F64 => (8, if wide { 0 } else { threads() }),
        };
        let mut holds = vec![Allocation::matrix("the statistics' f64 sum", n, n, 8)];
        holds.extend(
            (0..partials).map(|_| Allocation::matrix("a chunk's n x n product", n, n, elem)),
        );
        let staged = chunk_rows(n).min(rows.max(1));
        holds.push(Allocation::matrix("a chunk of rows", staged, n, elem));
        holds
    }

    pub(crate) fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.n;
        let count = rows.whole_rows(n)?;
        // The column sums double as the finiteness check: finite f32 values summed in f64
        // cannot overflow (3.4e38 times any row count stays far below 1.8e308), so a sum is
        // non-finite exactly when a value is. Only then are the values scanned, to name it.
        let sums = column_sums(rows, n);
        if sums.iter().any(|s| !s.is_finite()) {
            rows.check_finite(n)?;
        }
        for (total, s) in self.sums.iter_mut().zip(&sums) {
            *total += s;
        }
        let limit = self.chunk_rows();
        let mut r = 0;
        while r < count {
            let take = (limit - self.staged_rows).min(count - r);
            let part = rows.slice(r * n..(r + take) * n);
            match (self.precision, part) {
                // Whole chunks of f32 rows go to the f32 product without a copy.
                (Precision::F32, ActivationRows::F32(v))
                    if self.staged_rows == 0 && take == limit =>
                {
                    self.product(Chunk::F32(v), take);
                    self.samples += take;
                    r += take;
                    continue;
                }
                (Precision::F32, ActivationRows::F32(v)) => self.staged.extend_from_slice(v),
                (Precision::F32, ActivationRows::F16(v)) => {
                    self.staged.extend(v.iter().map(|h| h.to_f32()))
                }
                (Precision::F64, part) => {
                    // Grown to a chunk as rows come (a few rows need no 128 MB), then reused.
                    let end = (self.staged_rows + take) * n;
                    if self.staged64.len() < end {
                        self.staged64.resize(end, 0.0);
                    }
                    widen(
                        part,
                        &mut self.staged64[self.staged_rows * n..(self.staged_rows + take) * n],
                    );
                }
            }
            self.staged_rows += take;
            r += take;
            if self.staged_rows == limit {
                self.flush();
            }
        }
        Ok(())
    }

    fn flush(&mut self) {
        let rows = self.staged_rows;
        if rows == 0 {
            return;
        }
        match self.precision {
            Precision::F32 => {
                let staged = std::mem::take(&mut self.staged);
                self.product(Chunk::F32(&staged), rows);
                self.staged = staged;
                self.staged.clear();
            }
            Precision::F64 => {
                let staged = std::mem::take(&mut self.staged64);
                self.product(Chunk::F64(&staged[..rows * self.n]), rows);
                self.staged64 = staged;
            }
        }
        self.samples += rows;
        self.staged_rows = 0;
    }

    /// Adds `A^T A` of `rows` row-major rows: wide f64 layers straight into `lower` (faer
    /// parallelises the product over its output), the others through the per-thread
    /// partials (after adding the previous chunk's).
    fn product(&mut self, values: Chunk<'_>, rows: usize) {
        self.add_pending();
        let n = self.n;
        match values {
            Chunk::F32(v) => {
                let a = MatRef::from_row_major_slice(v, rows, n);
                lower_products(a, &mut self.partials_f32);
                self.pending = true;
            }
            Chunk::F64(v) => {
                let a = MatRef::from_row_major_slice(v, rows, n);
                if n > SPLIT_MAX_N {
                    let lower = self.lower.get_or_insert_with(|| super::symmetric::zeros(n));
                    self.mirrored = false;
                    lower_product(a, lower.as_mut(), Accum::Add, Par::rayon(0));
                } else {
                    lower_products(a, &mut self.partials_f64);
                    self.pending = true;
                }
            }
        }
    }

    /// Adds the partials of the last product to `lower`. The first time, `lower` is built
    /// from them directly (both triangles), so that a one-chunk Gram touches its output
    /// once.
    fn add_pending(&mut self) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        match (&mut self.lower, self.precision) {
            (None, Precision::F32) => {
                self.lower = Some(symmetric_sum(&self.partials_f32, |x| x as f64));
                self.mirrored = true;
            }
            (None, Precision::F64) => {
                self.lower = Some(symmetric_sum(&self.partials_f64, |x| x));
                self.mirrored = true;
            }
            (Some(lower), Precision::F32) => {
                add_lower(lower, &self.partials_f32, |x| x as f64);
                self.mirrored = false;
            }
            (Some(lower), Precision::F64) => {
                add_lower(lower, &self.partials_f64, |x| x);
                self.mirrored = false;
            }
        }
    }

    /// The full symmetric `A^T A`, the column sums and m.
    pub(crate) fn finish(mut self) -> (Mat<f64>, Vec<f64>, usize) {
        self.flush();
        self.add_pending();
        let n = self.n;
        let mut g = self.lower.unwrap_or_else(|| Mat::zeros(n, n));
        if !self.mirrored {
            mirror_lower(&mut g);
        }
        (g, self.sums, self.samples)
    }
}

/// Rows per product for a layer of `n` neurons.
fn chunk_rows(n: usize) -> usize {
    CHUNK_ROWS.min((CHUNK_ELEMS / n).max(1))
}

/// One chunk's rows, row-major, in the precision of its product.
enum Chunk<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// `dst = rows` widened to f64, on all threads.
fn widen(rows: ActivationRows<'_>, dst: &mut [f64]) {
    match rows {
        ActivationRows::F32(v) => dst
            .par_chunks_mut(CONVERT_PIECE)
            .zip(v.par_chunks(CONVERT_PIECE))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &x)| *d = x as f64)),
        ActivationRows::F16(v) => dst
            .par_chunks_mut(CONVERT_PIECE)
            .zip(v.par_chunks(CONVERT_PIECE))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, x)| *d = x.to_f64())),
    }
}

/// `G = A^T A` and `s = A^T 1` of whole in-memory activations (`rows x n`) on the CPU.
pub fn gram_stats(rows: ActivationRows<'_>, n: usize) -> Result<GramStats> {
    let mut acc = CpuGram::new(n, Precision::F32)?;
    acc.push(rows)?;
    let (gram, col_sums, samples) = acc.finish();
    Ok(GramStats {
        gram,
        col_sums,
        samples,
    })
}

/// Layers up to this width split the rows across threads; wider ones let faer parallelise
/// over the output, which it does well there (n = 2048, m = 8192: 217 ms against 247 ms
/// for two row halves), and hold one n x n partial instead of one per thread.
const SPLIT_MAX_N: usize = 1024;
/// Rows per thread at least, so that each partial product stays BLAS-efficient.
const MIN_ROWS_PER_THREAD: usize = 256;

/// `A^T A` (lower triangle) as a few partial products over row ranges of `a`, one per
/// thread, written into `out` (resized to the number of parts). faer parallelises a
/// triangular product over its output, which for n of a few hundred leaves the cores idle
/// (about 4x slower than this at n = 512, m = 8192).
fn lower_products<T>(a: MatRef<'_, T>, out: &mut Vec<Mat<T>>)
where
    T: faer::traits::ComplexField + Send + Sync,
{
    let (m, n) = (a.nrows(), a.ncols());
    let parts = if n > SPLIT_MAX_N {
        1
    } else {
        threads().min(m / MIN_ROWS_PER_THREAD).max(1)
    };
    out.truncate(parts);
    while out.len() < parts {
        out.push(Mat::zeros(n, n));
    }
    if parts == 1 {
        lower_product(a, out[0].as_mut(), Accum::Replace, Par::rayon(0));
        return;
    }
    let step = m.div_ceil(parts);
    std::thread::scope(|s| {
        let (first, rest) = out.split_first_mut().expect("at least one part");
        for (t, g) in rest.iter_mut().enumerate() {
            let start = (t + 1) * step;
            let part = a.subrows(start, step.min(m - start));
            s.spawn(move || lower_product(part, g.as_mut(), Accum::Replace, Par::Seq));
        }
        lower_product(a.subrows(0, step), first.as_mut(), Accum::Replace, Par::Seq);
    });
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// Overwrites (`Accum::Replace`) or adds to (`Accum::Add`) the lower triangle of `g` that
/// of `a^T a`.
fn lower_product<T: faer::traits::ComplexField>(
    a: MatRef<'_, T>,
    g: MatMut<'_, T>,
    accum: Accum,
    par: Par,
) {
    matmul(
        g,
        BlockStructure::TriangularLower,
        accum,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        T::one_impl(),
        par,
    );
}

/// `dst += sum of partials` on the lower triangle, columns spread over all threads.
fn add_lower<T: Copy + Sync>(
    dst: &mut Mat<f64>,
    partials: &[Mat<T>],
    to_f64: impl Fn(T) -> f64 + Sync,
) {
    let n = dst.nrows();
    let shared = SharedMatrix::new(dst);
    (0..n).into_par_iter().with_min_len(16).for_each(|j| {
        // SAFETY: each task writes its own column j (rows j..n) and nothing else.
        let out = unsafe { shared.column(j, j..n) };
        for g in partials {
            let src = &contiguous(g.col(j))[j..];
            for (d, &x) in out.iter_mut().zip(src) {
                *d += to_f64(x);
            }
        }
    });
}

/// The full symmetric matrix whose lower triangle is the sum of the partials' lower
/// triangles, in f64.
///
/// This is the one pass over a one-chunk Gram's output, so it is where the fresh n x n
/// memory is first touched: the columns are split across threads, and on Linux the memory
/// is marked for transparent huge pages first (as numpy does for large arrays). Faulting
/// in 32 MiB in 4 KiB pages took 17 ms of a 200 ms Gram at n = 2048.
fn symmetric_sum<T>(partials: &[Mat<T>], to_f64: impl Fn(T) -> f64 + Sync) -> Mat<f64>
where
    T: Copy + Sync,
{
    let n = partials[0].nrows();
    let mut g = Mat::<f64>::with_capacity(n, n);
    #[cfg(target_os = "linux")]
    super::symmetric::advise_huge_pages(g.as_ptr_mut().cast(), n * n * std::mem::size_of::<f64>());
    // SAFETY: the capacity is n x n; every element is written below before `g` is read or
    // returned (f64 needs no drop, so no uninitialised value is ever dropped either).
    unsafe { g.set_dims(n, n) };
    let shared = SharedMatrix::new(&mut g);
    let min_len = if n * n >= 1 << 16 { 16 } else { n.max(1) };
    (0..n).into_par_iter().with_min_len(min_len).for_each(|j| {
        // SAFETY: each task writes its own column j and nothing else.
        let col = unsafe { shared.column(j, 0..n) };
        for (i, v) in col.iter_mut().enumerate() {
            // Above the diagonal, (i, j) mirrors (j, i): row j of the partials, read
            // across columns, which consecutive j keep in cache.
            let (r, c) = if i >= j { (i, j) } else { (j, i) };
            *v = partials.iter().map(|p| to_f64(p[(r, c)])).sum();
        }
    });
    g
}

/// `A^T 1` in f64, the rows split across threads when there are enough of them.
fn column_sums(rows: ActivationRows<'_>, n: usize) -> Vec<f64> {
    let count = rows.len() / n;
    let parts = threads().min(count / MIN_ROWS_PER_THREAD).max(1);
    let step = count.div_ceil(parts).max(1);
    let partial = |start: usize| {
        let end = (start + step).min(count);
        let mut sums = vec![0.0f64; n];
        match rows {
            ActivationRows::F32(v) => {
                for row in v[start * n..end * n].chunks_exact(n) {
                    for (s, &x) in sums.iter_mut().zip(row) {
                        *s += x as f64;
                    }
                }
            }
            ActivationRows::F16(v) => {
                for row in v[start * n..end * n].chunks_exact(n) {
                    for (s, x) in sums.iter_mut().zip(row) {
                        *s += x.to_f64();
                    }
                }
            }
        }
        sums
    };
    if parts == 1 {
        return partial(0);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (step..count)
            .step_by(step)
            .map(|start| s.spawn(move || partial(start)))
            .collect();
        let mut sums = partial(0);
        for h in handles {
            for (s, x) in sums.iter_mut().zip(h.join().expect("column-sum thread")) {
                *s += x;
            }
        }
        sums
    })
}
