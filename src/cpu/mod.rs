//! CPU twins of the GPU kernels: the reference in tests, the fallback without an adapter,
//! the baseline in benchmarks. Same signatures as [`crate::gpu`].

pub mod fusion;
pub mod gram;
pub mod rbf;
pub(crate) mod symmetric;

/// A column of a faer matrix (its own or a view of one: unit row stride) as a slice.
pub(crate) fn contiguous<T>(col: faer::ColRef<'_, T>) -> &[T] {
    col.try_as_col_major()
        .expect("faer matrix columns are contiguous")
        .as_slice()
}

/// A column of a faer matrix (unit row stride) as a mutable slice.
pub(crate) fn contiguous_mut<T>(col: faer::ColMut<'_, T>) -> &mut [T] {
    col.try_as_col_major_mut()
        .expect("faer matrix columns are contiguous")
        .as_slice_mut()
}
