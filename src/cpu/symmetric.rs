//! Square f64 matrices written on all threads: a zeroed n x n matrix,
//! a shared writer through which threads fill disjoint parts of one, and the mirror of a
//! lower triangle. The statistics results (n x n, hundreds of MB for wide layers) are
//! assembled with these on both backends.

use std::marker::PhantomData;

use faer::Mat;
use rayon::prelude::*;

/// Columns per task in the parallel loops below: enough work per task, enough tasks.
const COLUMNS_PER_TASK: usize = 16;

/// An n x n zero matrix, its pages touched by all threads (faer's `Mat::zeros` writes them
/// from one). No huge-page advice here: with the kernel's THP defrag set to `madvise`, the
/// advice makes page faults compact memory synchronously, which on this project's shared
/// machine made a fresh 512 MB matrix take 1.8-1.9 s instead of 0.7-0.8 s.
pub(crate) fn zeros(n: usize) -> Mat<f64> {
    let mut g = Mat::<f64>::with_capacity(n, n);
    // SAFETY: the capacity is n x n; every element is written below before `g` is read or
    // returned (f64 needs no drop, so no uninitialised value is ever dropped either).
    unsafe { g.set_dims(n, n) };
    let stride = g.col_stride() as usize;
    let base = SharedColumns(g.as_ptr_mut());
    (0..n)
        .into_par_iter()
        .with_min_len(COLUMNS_PER_TASK)
        .for_each(|j| {
            // SAFETY: column j, rows 0..n, lies inside the allocation (column stride >= n);
            // each task writes its own columns, by writes only.
            unsafe { std::ptr::write_bytes(base.get().add(j * stride), 0, n) };
        });
    g
}

/// `src` converted element by element (`f`) into a new matrix of its shape, columns on
/// all threads: the one-pass route's co-moments rounded to f32 and widened back.
pub(crate) fn converted<A, B>(src: &Mat<A>, f: impl Fn(A) -> B + Sync) -> Mat<B>
where
    A: Copy + Sync,
    B: faer::traits::ComplexField + Copy + Send,
{
    let mut dst = Mat::<B>::zeros(src.nrows(), src.ncols());
    dst.par_col_iter_mut()
        .zip(src.par_col_iter())
        .with_min_len(COLUMNS_PER_TASK)
        .for_each(|(d, s)| {
            let (d, s) = (super::contiguous_mut(d), super::contiguous(s));
            d.iter_mut().zip(s).for_each(|(d, &s)| *d = f(s));
        });
    dst
}

/// Writes into a square column-major matrix from several threads at once. Each writer must
/// touch elements no other writer touches at the same time.
#[derive(Clone, Copy)]
pub(crate) struct SharedMatrix<'a> {
    base: SharedColumns,
    stride: usize,
    n: usize,
    _matrix: PhantomData<&'a mut Mat<f64>>,
}

/// The base pointer of a matrix shared by the threads writing disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedColumns(*mut f64);
// SAFETY: used only through `SharedMatrix` and `zeros`, whose users write disjoint elements.
unsafe impl Send for SharedColumns {}
unsafe impl Sync for SharedColumns {}

impl SharedColumns {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f64 {
        self.0
    }
}

impl<'a> SharedMatrix<'a> {
    /// A writer over `m` (square), for as long as `m` is borrowed.
    pub(crate) fn new(m: &'a mut Mat<f64>) -> Self {
        assert_eq!(m.nrows(), m.ncols(), "a square matrix");
        Self {
            base: SharedColumns(m.as_ptr_mut()),
            stride: m.col_stride() as usize,
            n: m.nrows(),
            _matrix: PhantomData,
        }
    }

    /// Rows `rows` of column `j`.
    ///
    /// # Safety
    /// No other thread may access these elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn column(&self, j: usize, rows: std::ops::Range<usize>) -> &mut [f64] {
        assert!(j < self.n && rows.end <= self.n && rows.start <= rows.end);
        // SAFETY: in bounds (checked above, column stride >= n); exclusivity is the caller's.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.get().add(j * self.stride + rows.start),
                rows.end - rows.start,
            )
        }
    }
}

/// Copies the strict lower triangle of `g` onto the upper one, on all threads: each task
/// takes a band of columns of the upper triangle and reads the matching rows of the lower
/// one in square tiles, so that both stay in cache.
pub(crate) fn mirror_lower(g: &mut Mat<f64>) {
    const TILE: usize = 32;
    let n = g.nrows();
    let shared = SharedMatrix::new(g);
    (0..n.div_ceil(TILE)).into_par_iter().for_each(|jb| {
        let j0 = jb * TILE;
        let j1 = (j0 + TILE).min(n);
        // Band j0..j1 of the upper triangle: (i, j) with i < j, read from (j, i).
        for ib in (0..j1).step_by(TILE) {
            for j in j0..j1 {
                let rows = ib..(ib + TILE).min(j);
                if rows.is_empty() {
                    continue;
                }
                // SAFETY: this task alone writes column j above the diagonal (rows < j);
                // it reads (j, i) with i < j, below the diagonal, which no task writes.
                let dst = unsafe { shared.column(j, rows.clone()) };
                for (d, i) in dst.iter_mut().zip(rows) {
                    // SAFETY: (j, i) with i < j is in the lower triangle, only read.
                    *d = unsafe { *shared.base.get().add(i * shared.stride + j) };
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_and_mirror() {
        for n in [1, 5, 31, 32, 33, 100] {
            let z = zeros(n);
            assert!((0..n).all(|j| (0..n).all(|i| z[(i, j)] == 0.0)));
            let mut g = Mat::from_fn(
                n,
                n,
                |i, j| if i >= j { (i * 1000 + j) as f64 } else { -1.0 },
            );
            mirror_lower(&mut g);
            for j in 0..n {
                for i in 0..n {
                    let (r, c) = if i >= j { (i, j) } else { (j, i) };
                    assert_eq!(g[(i, j)], (r * 1000 + c) as f64, "n = {n} ({i}, {j})");
                }
            }
        }
    }
}
