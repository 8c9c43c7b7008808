//! The library's errors as Python exceptions.
//!
//! Each [`divnet::Error`] variant has its class in `divnet._errors` (a `divnet.DivnetError`
//! subclass that is also a `ValueError`, `RuntimeError`, ... as fits); the message is the
//! error's one-line `Display`, the text the `divnet` command prints after `divnet: error: `.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The Python exception for `e`.
pub fn raise(py: Python<'_>, e: divnet::Error) -> PyErr {
    let class_name = match &e {
        divnet::Error::InvalidInput(_) => "InvalidInputError",
        divnet::Error::Format { .. } => "FormatError",
        divnet::Error::Io { .. } => "FileError",
        divnet::Error::NoAdapter(_) => "NoAdapterError",
        divnet::Error::Gpu(_) => "GpuError",
        divnet::Error::Numerical(_) => "NumericalError",
    };
    match error_class(py, class_name) {
        Ok(class) => PyErr::from_type(class, e.to_string()),
        // Only if the package is broken: still say what went wrong.
        Err(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        ERRORS.get_or_try_init(py, || Ok::<_, PyErr>(py.import("divnet._errors")?.unbind()))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// `ForkedProcessError` with `message`.
pub fn forked(py: Python<'_>, message: String) -> PyErr {
    match error_class(py, "ForkedProcessError") {
        Ok(class) => PyErr::from_type(class, message),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// An [`divnet::Error::InvalidInput`] raised as Python's `InvalidInputError`.
pub fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, divnet::Error::invalid(message))
}
