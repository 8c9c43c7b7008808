//! numpy arrays in and out.
//!
//! Activations reach the library as row-major [`ActivationRows`]: a float32 or float16 array
//! in C order is borrowed as it is, anything else (float64, Fortran order, strided views,
//! big-endian) is converted once by numpy into a C-order float32 array. Weights become
//! [`Tensor`]s (little-endian bytes, as in a safetensors file) and come back as arrays of the
//! dtype they had.

use std::path::Path;

use divnet::io::safetensors::Tensor;
use divnet::kernel::ActivationRows;
use faer::Mat;
use half::f16;
use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArray2,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use safetensors::Dtype;

use crate::errors::raise;

/// The `numpy` module, imported once.
fn numpy_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    NUMPY
        .get_or_try_init(py, || Ok(py.import("numpy")?.unbind()))
        .map(|m| m.bind(py))
}

/// `numpy.asarray(obj)`: lists, torch CPU tensors and the like become arrays.
fn as_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    let array = numpy_module(obj.py())?
        .call_method1("asarray", (obj,))?
        .cast_into::<PyUntypedArray>()?;
    Ok(array)
}

/// Whether the array's data is aligned for its dtype: an unaligned one (`numpy.frombuffer`
/// at an odd offset, say) cannot be read as a Rust slice.
fn is_aligned(array: &Bound<'_, PyUntypedArray>) -> PyResult<bool> {
    array.getattr("flags")?.getattr("aligned")?.extract()
}

/// `numpy.ascontiguousarray(array, dtype=dtype)`, aligned (copied once more when numpy hands
/// back the same unaligned buffer). Values that overflow the new dtype become infinite
/// without numpy's warning: the finiteness check that follows names them.
fn contiguous<'py>(
    array: &Bound<'py, PyUntypedArray>,
    dtype: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = array.py();
    let np = numpy_module(py)?;
    let quiet = PyDict::new(py);
    quiet.set_item("over", "ignore")?;
    let errstate = np.getattr("errstate")?.call((), Some(&quiet))?;
    errstate.call_method0("__enter__")?;
    let converted = np.call_method1("ascontiguousarray", (array, np.getattr(dtype)?));
    errstate.call_method1("__exit__", (py.None(), py.None(), py.None()))?;
    let converted = converted?.cast_into::<PyUntypedArray>()?;
    if is_aligned(&converted)? {
        Ok(converted)
    } else {
        Ok(converted
            .call_method0("copy")?
            .cast_into::<PyUntypedArray>()?)
    }
}

/// A `what: message` error of the class the library's format errors map to.
fn format_error(py: Python<'_>, what: &str, message: String) -> PyErr {
    raise(py, divnet::Error::format(Path::new(what), message))
}

/// The float width (2, 4 or 8 bytes) of `array`, or an error naming `what` for any other dtype.
fn float_width(what: &str, array: &Bound<'_, PyUntypedArray>) -> PyResult<usize> {
    let dtype = array.dtype();
    let width = dtype.itemsize();
    if dtype.kind() == b'f' && matches!(width, 2 | 4 | 8) {
        Ok(width)
    } else {
        Err(format_error(
            array.py(),
            what,
            format!(
                "dtype {} is not supported here: expected float16, float32 or float64",
                dtype.getattr("name")?
            ),
        ))
    }
}

/// Whether `obj` is (or `numpy.asarray` makes it) an array of floats.
pub fn is_float_array(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(as_array(obj)?.dtype().kind() == b'f')
}

/// The rows, borrowed from a C-order float32 or float16 array.
enum Rows<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F16(PyReadonlyArray2<'py, f16>),
}

/// An m x n float matrix (samples x neurons, or samples x features) ready for the library.
pub struct Matrix<'py> {
    rows: Rows<'py>,
    /// The array whose buffer `rows` reads: the input itself when borrowed, else the copy
    /// numpy made. Whoever keeps the values past this matrix keeps this object alive.
    array: Bound<'py, PyAny>,
    /// m, the number of rows.
    pub m: usize,
    /// n, the number of columns.
    pub n: usize,
    /// Whether the input had to be converted (dtype or layout) rather than borrowed.
    pub copied: bool,
}

impl<'py> Matrix<'py> {
    /// A 2-D float array (anything `numpy.asarray` takes) as rows: float32 and, with
    /// `keep_f16`, float16 in C order borrowed; everything else converted once to float32.
    /// Errors name the input `what` as the command line names a file.
    pub fn from_py(what: &str, obj: &Bound<'py, PyAny>, keep_f16: bool) -> PyResult<Self> {
        let py = obj.py();
        let array = as_array(obj)?;
        let shape = array.shape().to_vec();
        if shape.len() != 2 {
            return Err(format_error(
                py,
                what,
                format!("expected a 2-D array (samples x neurons), got shape {shape:?}"),
            ));
        }
        let width = float_width(what, &array)?;
        if shape[0] == 0 || shape[1] == 0 {
            return Err(format_error(
                py,
                what,
                format!("empty array of shape {shape:?}: need at least one row and one column"),
            ));
        }
        let target = if width == 2 && keep_f16 {
            "float16"
        } else {
            "float32"
        };
        let native = array.dtype().is_native_byteorder() != Some(false);
        let target_width = if target == "float16" { 2 } else { 4 };
        let borrowed =
            array.is_c_contiguous() && native && width == target_width && is_aligned(&array)?;
        let array = if borrowed {
            array
        } else {
            contiguous(&array, target)?
        };
        let source = array.clone().into_any();
        let rows = if target == "float16" {
            Rows::F16(array.cast_into::<PyArray2<f16>>()?.try_readonly()?)
        } else {
            Rows::F32(array.cast_into::<PyArray2<f32>>()?.try_readonly()?)
        };
        let matrix = Matrix {
            rows,
            array: source,
            m: shape[0],
            n: shape[1],
            copied: !borrowed,
        };
        if let Some(i) = matrix.first_non_finite() {
            return Err(format_error(
                py,
                what,
                format!(
                    "non-finite value (NaN or Inf) at row {}, column {}",
                    i / matrix.n,
                    i % matrix.n
                ),
            ));
        }
        Ok(matrix)
    }

    /// The array object whose buffer [`Matrix::view`] reads (the converted copy, when the
    /// input was converted): what must be kept alive to read the values without the matrix.
    pub fn array(&self) -> &Bound<'py, PyAny> {
        &self.array
    }

    /// The m x n values, row-major, as the library takes them.
    pub fn view(&self) -> ActivationRows<'_> {
        match &self.rows {
            Rows::F32(a) => ActivationRows::F32(a.as_slice().expect("C-contiguous")),
            Rows::F16(a) => ActivationRows::F16(a.as_slice().expect("C-contiguous")),
        }
    }

    /// The values as float32 (a copy only for float16 rows).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.view() {
            ActivationRows::F32(v) => std::borrow::Cow::Borrowed(v),
            ActivationRows::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The address of the first value handed to the library.
    pub fn address(&self) -> usize {
        match self.view() {
            ActivationRows::F32(v) => v.as_ptr() as usize,
            ActivationRows::F16(v) => v.as_ptr() as usize,
        }
    }

    fn first_non_finite(&self) -> Option<usize> {
        match self.view() {
            ActivationRows::F32(v) => v.iter().position(|x| !x.is_finite()),
            ActivationRows::F16(v) => v.iter().position(|x| !x.is_finite()),
        }
    }
}

/// An n x n kernel matrix (anything `numpy.asarray` takes; float16/32/64) as f64.
pub fn kernel_matrix(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Mat<f64>> {
    let py = obj.py();
    let array = as_array(obj)?;
    let shape = array.shape().to_vec();
    float_width(what, &array)?;
    // The command's checks, in its order and words: a 2-D array, not empty, square.
    if shape.len() != 2 {
        return Err(format_error(
            py,
            what,
            format!("expected a 2-D array (samples x neurons), got shape {shape:?}"),
        ));
    }
    if shape[0] == 0 || shape[1] == 0 {
        return Err(format_error(
            py,
            what,
            format!("empty array of shape {shape:?}: need at least one row and one column"),
        ));
    }
    if shape[0] != shape[1] {
        return Err(format_error(
            py,
            what,
            format!("a kernel must be square (n x n), got shape {shape:?}"),
        ));
    }
    let array = contiguous(&array, "float64")?.cast_into::<PyArray2<f64>>()?;
    let values = array.try_readonly()?;
    let data = values.as_slice().expect("C-contiguous");
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        let n = shape[0];
        return Err(format_error(
            py,
            what,
            format!(
                "non-finite value (NaN or Inf) at row {}, column {}",
                i / n,
                i % n
            ),
        ));
    }
    let n = shape[0];
    Ok(Mat::from_fn(n, n, |i, j| data[i * n + j]))
}

/// A weight array as a tensor: float16, float32 or float64, any layout, bytes as a
/// safetensors file would hold them.
pub fn tensor_from_py(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let array = as_array(obj)?;
    let width = float_width(name, &array)?;
    let shape = array.shape().to_vec();
    let (dtype, le_name) = match width {
        2 => (Dtype::F16, "float16"),
        4 => (Dtype::F32, "float32"),
        _ => (Dtype::F64, "float64"),
    };
    let array = contiguous(&array, le_name)?;
    let bytes: Vec<u8> = match dtype {
        Dtype::F16 => le_bytes(&array.cast_into::<PyArrayDyn<f16>>()?, |x| x.to_le_bytes())?,
        Dtype::F32 => le_bytes(&array.cast_into::<PyArrayDyn<f32>>()?, |x| x.to_le_bytes())?,
        _ => le_bytes(&array.cast_into::<PyArrayDyn<f64>>()?, |x| x.to_le_bytes())?,
    };
    Ok(Tensor {
        dtype,
        shape,
        bytes,
    })
}

fn le_bytes<T: numpy::Element + Copy, const N: usize>(
    array: &Bound<'_, PyArrayDyn<T>>,
    encode: impl Fn(T) -> [u8; N],
) -> PyResult<Vec<u8>> {
    let values = array.try_readonly()?;
    let slice = values.as_slice().expect("C-contiguous");
    Ok(slice.iter().flat_map(|&x| encode(x)).collect())
}

/// A tensor as a numpy array of its dtype and shape.
pub fn tensor_to_py<'py>(py: Python<'py>, name: &str, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let b = &t.bytes;
    let flat = match t.dtype {
        Dtype::F16 => PyArray1::from_vec(
            py,
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
        .into_any(),
        Dtype::F32 => PyArray1::from_vec(
            py,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
        .into_any(),
        Dtype::F64 => PyArray1::from_vec(
            py,
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("exact chunk")))
                .collect(),
        )
        .into_any(),
        other => {
            return Err(raise(
                py,
                divnet::Error::invalid(format!(
                    "{name}: dtype {other:?} has no numpy equivalent here"
                )),
            ))
        }
    };
    flat.call_method1("reshape", (t.shape.clone(),))
}

/// An f64 matrix as a new C-order numpy array.
pub fn matrix_to_py<'py>(py: Python<'py>, m: &Mat<f64>) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let data: Vec<f64> = (0..rows * cols).map(|k| m[(k / cols, k % cols)]).collect();
    PyArray1::from_vec(py, data).reshape([rows, cols])
}
