//! Activations that Python hands over chunk by chunk: a [`RowSource`] whose every pass calls
//! a Python function for a fresh iterator of 2-D arrays (a list of arrays, or batches run
//! through a model by `divnet.torch`). Only one chunk is held at a time, and the library
//! works on it with the GIL released.

use divnet::kernel::{ActivationRows, RowSource};
use pyo3::prelude::*;
use pyo3::types::PyIterator;

use crate::arrays::Matrix;

/// One chunk, converted under the GIL, read by the library without it.
enum Chunk {
    /// A float32 or float16 C-order array, borrowed: the reference keeps its buffer alive.
    Borrowed { _array: Py<PyAny>, rows: RawRows },
    /// Converted rows (float64, Fortran order, ...).
    Owned(Vec<f32>),
}

/// The address and length of borrowed rows.
#[derive(Clone, Copy)]
enum RawRows {
    F32(*const f32, usize),
    F16(*const half::f16, usize),
}

/// Chunks of `width` columns from `passes()`, a Python callable returning an iterable of 2-D
/// arrays each time it is called.
pub struct PyChunks {
    passes: Py<PyAny>,
    width: usize,
    /// Rows of the last complete pass (0 before the first).
    rows: usize,
    completed: usize,
    /// The Python exception that stopped a pass; the caller raises it in place of the
    /// placeholder error the library saw.
    error: Option<PyErr>,
}

impl PyChunks {
    /// Chunks of `width` values per row from `passes`.
    pub fn new(passes: Py<PyAny>, width: usize) -> Self {
        Self {
            passes,
            width,
            rows: 0,
            completed: 0,
            error: None,
        }
    }

    /// The Python exception raised while iterating, if one stopped the work.
    pub fn take_error(&mut self) -> Option<PyErr> {
        self.error.take()
    }

    /// The next chunk of the pass, or None at its end.
    fn next_chunk(
        &self,
        iterator: &Py<PyIterator>,
        index: usize,
    ) -> Result<Option<(Chunk, usize)>, ChunkError> {
        Python::attach(|py| {
            let Some(item) = iterator.bind(py).clone().next() else {
                return Ok(None);
            };
            let item = item.map_err(ChunkError::Python)?;
            let what = format!("activation chunk {index}");
            let matrix = Matrix::from_py(&what, &item, true).map_err(ChunkError::Python)?;
            if matrix.n != self.width {
                return Err(ChunkError::Divnet(divnet::Error::invalid(format!(
                    "{what} has {} columns, expected {} (one per neuron)",
                    matrix.n, self.width
                ))));
            }
            let rows = matrix.m;
            let chunk = if matrix.copied {
                Chunk::Owned(matrix.to_f32().into_owned())
            } else {
                let raw = match matrix.view() {
                    ActivationRows::F32(v) => RawRows::F32(v.as_ptr(), v.len()),
                    ActivationRows::F16(v) => RawRows::F16(v.as_ptr(), v.len()),
                };
                // The array the rows point into, not `item`: numpy.asarray may have made a
                // new array from it (an object with __array__, as h5py and zarr datasets
                // have), which nothing else keeps alive.
                Chunk::Borrowed {
                    _array: matrix.array().clone().unbind(),
                    rows: raw,
                }
            };
            Ok(Some((chunk, rows)))
        })
    }
}

enum ChunkError {
    Python(PyErr),
    Divnet(divnet::Error),
}

impl Chunk {
    fn rows(&self) -> ActivationRows<'_> {
        match self {
            // SAFETY: the array object is held by `_array` for as long as `self` lives, and
            // an array with a live reference is never resized or freed; the pointer and
            // length came from its C-contiguous buffer.
            Chunk::Borrowed { rows, .. } => unsafe {
                match *rows {
                    RawRows::F32(p, len) => ActivationRows::F32(std::slice::from_raw_parts(p, len)),
                    RawRows::F16(p, len) => ActivationRows::F16(std::slice::from_raw_parts(p, len)),
                }
            },
            Chunk::Owned(v) => ActivationRows::F32(v),
        }
    }
}

/// What the library sees when Python raised: the exception itself is kept in the source.
fn python_raised() -> divnet::Error {
    divnet::Error::invalid("the activation chunks raised a Python exception")
}

impl RowSource for PyChunks {
    fn width(&self) -> usize {
        self.width
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn pass(
        &mut self,
        visit: &mut dyn FnMut(ActivationRows<'_>) -> divnet::Result<()>,
    ) -> divnet::Result<()> {
        let iterator = Python::attach(|py| -> PyResult<Py<PyIterator>> {
            Ok(self.passes.bind(py).call0()?.try_iter()?.unbind())
        });
        let iterator = match iterator {
            Ok(it) => it,
            Err(e) => {
                self.error = Some(e);
                return Err(python_raised());
            }
        };
        let mut rows = 0usize;
        let mut index = 0usize;
        loop {
            match self.next_chunk(&iterator, index) {
                Ok(Some((chunk, count))) => {
                    rows += count;
                    index += 1;
                    visit(chunk.rows())?;
                }
                Ok(None) => break,
                Err(ChunkError::Python(e)) => {
                    self.error = Some(e);
                    return Err(python_raised());
                }
                Err(ChunkError::Divnet(e)) => return Err(e),
            }
        }
        if rows == 0 {
            return Err(divnet::Error::invalid(
                "the activation chunks are empty: no rows on this pass (an iterator that is \
                 used up after one pass? give a list, or an object that iterates anew)",
            ));
        }
        if self.completed > 0 && rows != self.rows {
            return Err(divnet::Error::invalid(format!(
                "the activation chunks gave {rows} rows on pass {}, {} on the pass before: \
                 every pass must yield the same rows",
                self.completed + 1,
                self.rows
            )));
        }
        self.rows = rows;
        self.completed += 1;
        Ok(())
    }
}
