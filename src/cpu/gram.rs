//! The CPU twin of the Gram kernel: faer's triangular matrix product per row chunk (only
//! the lower triangle, like BLAS syrk), chunk results added in f64.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

use crate::error::{Error, Result};
use crate::kernel::{ActivationRows, GramStats};

/// Rows per chunk at most: bounds each f32 partial sum before it is added in f64 (faer
/// accumulates in registers and in its blocking, about `sqrt(K) * 2^-24` relative).
const CHUNK_ROWS: usize = 8192;
/// Values per chunk at most (64 MiB of f32): long chunks keep the product BLAS-fast.
const CHUNK_ELEMS: usize = 1 << 24;

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
    lower: Mat<f64>,
    sums: Vec<f64>,
    staged: Vec<f32>,
    staged_rows: usize,
    samples: usize,
}

impl CpuGram {
    pub(crate) fn new(n: usize, precision: Precision) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        Ok(Self {
            n,
            precision,
            lower: Mat::zeros(n, n),
            sums: vec![0.0; n],
            staged: Vec::new(),
            staged_rows: 0,
            samples: 0,
        })
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples + self.staged_rows
    }

    pub(crate) fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.n;
        let count = rows.row_count(n)?;
        let limit = CHUNK_ROWS.min((CHUNK_ELEMS / n).max(1));
        for row in 0..count {
            let sums = self.sums.iter_mut();
            match rows {
                ActivationRows::F32(v) => {
                    for (s, &x) in sums.zip(&v[row * n..(row + 1) * n]) {
                        *s += x as f64;
                    }
                }
                ActivationRows::F16(v) => {
                    for (s, x) in sums.zip(&v[row * n..(row + 1) * n]) {
                        *s += x.to_f64();
                    }
                }
            }
        }
        let mut r = 0;
        while r < count {
            let take = (limit - self.staged_rows).min(count - r);
            let range = r * n..(r + take) * n;
            match rows {
                // Whole chunks of f32 rows go to the product without a copy.
                ActivationRows::F32(v) if self.staged_rows == 0 && take == limit => {
                    self.product(&v[range], take);
                    self.samples += take;
                    r += take;
                    continue;
                }
                ActivationRows::F32(v) => self.staged.extend_from_slice(&v[range]),
                ActivationRows::F16(v) => self.staged.extend(v[range].iter().map(|h| h.to_f32())),
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
        let staged = std::mem::take(&mut self.staged);
        self.product(&staged, rows);
        self.staged = staged;
        self.samples += rows;
        self.staged.clear();
        self.staged_rows = 0;
    }

    /// Adds `A^T A` of `rows` row-major rows to the lower triangle.
    fn product(&mut self, values: &[f32], rows: usize) {
        let n = self.n;
        let a = MatRef::from_row_major_slice(values, rows, n);
        match self.precision {
            Precision::F32 => {
                for g in lower_products(a) {
                    add_lower(&mut self.lower, g.as_ref(), |x| x as f64);
                }
            }
            Precision::F64 => {
                let a64 = Mat::<f64>::from_fn(rows, n, |i, j| a[(i, j)] as f64);
                for g in lower_products(a64.as_ref()) {
                    add_lower(&mut self.lower, g.as_ref(), |x| x);
                }
            }
        }
    }

    /// The full symmetric `A^T A`, the column sums and m.
    pub(crate) fn finish(mut self) -> (Mat<f64>, Vec<f64>, usize) {
        self.flush();
        let lower = &self.lower;
        let g = Mat::from_fn(self.n, self.n, |i, j| {
            if i >= j {
                lower[(i, j)]
            } else {
                lower[(j, i)]
            }
        });
        (g, self.sums, self.samples)
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
/// over the output (which it does well there) instead of holding one n x n partial per thread.
const SPLIT_MAX_N: usize = 4096;
/// Rows per thread at least, so that each partial product stays BLAS-efficient.
const MIN_ROWS_PER_THREAD: usize = 256;

/// `A^T A` (lower triangle) as a few partial products over row ranges of `a`, one per
/// thread. faer parallelises a triangular product over its output, which for n of a few
/// hundred leaves the cores idle (about 4x slower than this at n = 512, m = 8192).
fn lower_products<T>(a: MatRef<'_, T>) -> Vec<Mat<T>>
where
    T: faer::traits::ComplexField + Send + Sync,
{
    let (m, n) = (a.nrows(), a.ncols());
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let parts = threads.min(m / MIN_ROWS_PER_THREAD).max(1);
    if n > SPLIT_MAX_N || parts == 1 {
        return vec![lower_product(a, Par::rayon(0))];
    }
    let step = m.div_ceil(parts);
    std::thread::scope(|s| {
        let handles: Vec<_> = (step..m)
            .step_by(step)
            .map(|start| {
                let part = a.subrows(start, step.min(m - start));
                s.spawn(move || lower_product(part, Par::Seq))
            })
            .collect();
        let mut out = vec![lower_product(a.subrows(0, step.min(m)), Par::Seq)];
        out.extend(handles.into_iter().map(|h| h.join().expect("Gram thread")));
        out
    })
}

fn lower_product<T: faer::traits::ComplexField>(a: MatRef<'_, T>, par: Par) -> Mat<T> {
    let n = a.ncols();
    let mut g = Mat::<T>::zeros(n, n);
    matmul(
        g.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        T::one_impl(),
        par,
    );
    g
}

fn add_lower<T: Copy>(dst: &mut Mat<f64>, g: MatRef<'_, T>, to_f64: impl Fn(T) -> f64) {
    for j in 0..g.ncols() {
        for i in j..g.nrows() {
            dst[(i, j)] += to_f64(g[(i, j)]);
        }
    }
}
