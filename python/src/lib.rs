//! `divnet._divnet`: the extension module under the Python package `divnet`.
//!
//! Each function here is a thin layer over the library, as each `divnet` subcommand is: it
//! parses the options with the library's parsers, turns numpy arrays into the library's
//! inputs (without a copy where the layout allows, see [`arrays`]), releases the GIL for the
//! work and hands back arrays and reports. The Python package (`divnet/__init__.py`) gives
//! them their documented signatures and defaults; the defaults themselves come from the
//! constants this module exports, the ones the command line uses.

use std::path::Path;

use divnet::compress::{
    compress_layer_tensors, compress_mlp, LayerTensors, NoProgress, DEFAULT_CHUNK_ROWS, DEFAULT_EPS,
};
use divnet::dpp::{greedy_map, DppSampler, GreedyStop, KDppSampler, Spectrum};
use divnet::fusion::FusionOptions;
use divnet::io::safetensors::TensorFile;
use divnet::kernel::{gram_stats, rbf_kernel, SliceRows};
use divnet::model::{tensor_name, Activation, Mlp};
use divnet::select::{importance_scores, LayerSelector, SelectionMethod, SelectionSize};
use numpy::PyArray1;
use pyo3::exceptions::PyRuntimeWarning;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod arrays;
mod backend;
mod chunks;
mod errors;
mod options;

use arrays::{is_float_array, kernel_matrix, matrix_to_py, tensor_from_py, tensor_to_py, Matrix};
use backend::BackendLog;
use chunks::PyChunks;
use errors::{invalid, raise};

/// Where messages about the backend go: the `divnet` logger (which backend ran and why, at
/// INFO) and a `RuntimeWarning` when a GPU failure sent the work to the CPU.
fn report_backend(py: Python<'_>, log: &BackendLog) -> PyResult<()> {
    if let Some(reason) = &log.reason {
        log_info(py, reason)?;
    }
    if let Some(fallback) = &log.fallback {
        let message = std::ffi::CString::new(fallback.as_str()).expect("no NUL in messages");
        PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 2)?;
    }
    Ok(())
}

/// `logging.getLogger("divnet").info(message)`.
fn log_info(py: Python<'_>, message: &str) -> PyResult<()> {
    py.import("logging")?
        .call_method1("getLogger", ("divnet",))?
        .call_method1("info", (message,))?;
    Ok(())
}

/// The RBF kernel (`kind="rbf"`) or the Gram matrix (`kind="gram"`) over the neurons of
/// `activations` (m x n): an n x n float64 array.
#[pyfunction]
#[pyo3(signature = (activations, kind, beta, eps, backend))]
fn kernel<'py>(
    py: Python<'py>,
    activations: &Bound<'py, PyAny>,
    kind: &str,
    beta: &Bound<'py, PyAny>,
    eps: f64,
    backend: &str,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    backend::check_process(py)?;
    let choice = options::backend(py, backend)?;
    let beta = options::beta(beta)?;
    let rbf = match kind {
        "rbf" => true,
        "gram" => false,
        other => {
            return Err(invalid(
                py,
                format!("unknown kernel kind {other:?}: expected rbf or gram"),
            ))
        }
    };
    let a = Matrix::from_py("activations", activations, true)?;
    let (rows, n) = (a.view(), a.n);
    let mut log = BackendLog::default();
    let result = py.detach(|| {
        backend::run(choice, &mut log, |b| {
            if rbf {
                rbf_kernel(b, rows, n, beta, eps).map(|l| (l.matrix, Some(l.beta)))
            } else {
                gram_stats(b, rows, n).map(|g| (g.gram, None))
            }
        })
    });
    report_backend(py, &log)?;
    let (matrix, beta_used) = result.map_err(|e| raise(py, e))?;
    if let Some(b) = beta_used {
        log_info(py, &format!("beta = {b:e} ({beta:?}), eps = {eps:e}"))?;
    }
    matrix_to_py(py, &matrix)
}

/// G (n x n) and s (n) as numpy arrays.
type GramArrays<'py> = (Bound<'py, numpy::PyArray2<f64>>, Bound<'py, PyArray1<f64>>);

/// `G = A^T A` (n x n) and `s = A^T 1` (n), float64, of `activations` (m x n).
#[pyfunction]
#[pyo3(signature = (activations, backend))]
fn gram<'py>(
    py: Python<'py>,
    activations: &Bound<'py, PyAny>,
    backend: &str,
) -> PyResult<GramArrays<'py>> {
    backend::check_process(py)?;
    let choice = options::backend(py, backend)?;
    let a = Matrix::from_py("activations", activations, true)?;
    let (rows, n) = (a.view(), a.n);
    let mut log = BackendLog::default();
    let result = py.detach(|| backend::run(choice, &mut log, |b| gram_stats(b, rows, n)));
    report_backend(py, &log)?;
    let stats = result.map_err(|e| raise(py, e))?;
    Ok((
        matrix_to_py(py, &stats.gram)?,
        PyArray1::from_vec(py, stats.col_sums),
    ))
}

/// Draws of neuron subsets, each a sorted list of indices: `samples` draws from one random
/// stream seeded by `seed` for the random methods (the lines of `divnet sample`), a single
/// deterministic selection for greedy and importance.
#[pyfunction]
#[pyo3(signature = (kernel, activations, method, k, samples, seed, next_weight, beta, eps, backend))]
#[allow(clippy::too_many_arguments)]
fn sample(
    py: Python<'_>,
    kernel: Option<&Bound<'_, PyAny>>,
    activations: Option<&Bound<'_, PyAny>>,
    method: &str,
    k: Option<usize>,
    samples: usize,
    seed: u64,
    next_weight: Option<&Bound<'_, PyAny>>,
    beta: &Bound<'_, PyAny>,
    eps: f64,
    backend: &str,
) -> PyResult<Vec<Vec<usize>>> {
    backend::check_process(py)?;
    let method = options::method(py, method)?;
    if matches!(
        method,
        SelectionMethod::FusionGreedy
            | SelectionMethod::FusionSwap
            | SelectionMethod::QualityKDpp
            | SelectionMethod::QualityGreedy
    ) {
        return Err(invalid(
            py,
            format!(
                "sample() does not offer {method} yet, which reads the layer that takes the \
                 activations: compress_layer(method=\"{method}\") selects with it, and so does \
                 `divnet sample` (--fusion-greedy, --fusion-swap, --quality)"
            ),
        ));
    }
    let choice = options::backend(py, backend)?;
    let beta = options::beta(beta)?;
    if samples == 0 {
        return Err(invalid(py, "samples must be at least 1"));
    }
    if samples != 1 && !method.is_random() {
        return Err(invalid(
            py,
            format!("samples does not apply to {method}, which is deterministic"),
        ));
    }
    let size = match (method, k) {
        (SelectionMethod::Dpp, None) => SelectionSize::Drawn,
        (_, Some(k)) => SelectionSize::Exactly(k),
        (_, None) => {
            return Err(invalid(
                py,
                format!("{method} needs a number of neurons to keep (k)"),
            ))
        }
    };
    if method == SelectionMethod::Dpp && k.is_some() {
        return Err(invalid(
            py,
            "a DPP chooses its own size: use kdpp for an exact number of neurons",
        ));
    }
    let given_kernel = match (kernel, activations) {
        (Some(l), None) => Some(kernel_matrix("kernel", l)?),
        (None, Some(_)) => None,
        _ => return Err(invalid(py, "give either kernel or activations")),
    };
    let a = activations
        .map(|a| Matrix::from_py("activations", a, true))
        .transpose()?;
    let next = match (method, next_weight) {
        (SelectionMethod::Importance, Some(w)) => Some(Matrix::from_py("next_weight", w, false)?),
        (SelectionMethod::Importance, None) => {
            return Err(invalid(
                py,
                "importance selection needs the next layer's weights (next_weight)",
            ))
        }
        _ => None,
    };
    if method == SelectionMethod::Importance && a.is_none() {
        return Err(invalid(
            py,
            "importance selection needs the activations, not a kernel",
        ));
    }
    // What the work reads, without the GIL: borrowed rows, not the Python arrays.
    let rows = a.as_ref().map(|a| (a.view(), a.n));
    let next_values = next.as_ref().map(|w| (w.to_f32(), w.m));
    let mut log = BackendLog::default();
    let result = py.detach(|| -> divnet::Result<Vec<Vec<usize>>> {
        // The kernel, when the method needs one and none was given.
        let built = match (&given_kernel, rows) {
            (None, Some((rows, n))) if method.needs_kernel() => {
                Some(backend::run(choice, &mut log, |b| {
                    rbf_kernel(b, rows, n, beta, eps)
                })?)
            }
            _ => None,
        };
        let l = given_kernel.as_ref().or(built.as_ref().map(|k| &k.matrix));
        let n = l.map_or_else(|| rows.map_or(0, |(_, n)| n), |l| l.nrows());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // What `divnet sample` says of the kernel's file in its errors (the eigendecomposition,
        // the draws, greedy MAP), the argument's name says here.
        let source = if given_kernel.is_some() {
            "kernel"
        } else {
            "activations"
        };
        let named = |e: divnet::Error| e.about(source);
        match (method, size) {
            (SelectionMethod::KDpp, SelectionSize::Exactly(k)) => {
                let spectrum = Spectrum::new(l.expect("kernel").as_ref()).map_err(named)?;
                let sampler = KDppSampler::new(&spectrum, k).map_err(named)?;
                Ok((0..samples).map(|_| sampler.sample(&mut rng)).collect())
            }
            (SelectionMethod::Dpp, _) => {
                let spectrum = Spectrum::new(l.expect("kernel").as_ref()).map_err(named)?;
                let sampler = DppSampler::new(&spectrum);
                Ok((0..samples).map(|_| sampler.sample(&mut rng)).collect())
            }
            // As `divnet sample --greedy`: greedy MAP on the kernel, its checks and words.
            (SelectionMethod::Greedy, SelectionSize::Exactly(k)) => {
                let mut y =
                    greedy_map(l.expect("kernel").as_ref(), GreedyStop::Count(k)).map_err(named)?;
                y.sort_unstable();
                Ok(vec![y])
            }
            (SelectionMethod::Random, SelectionSize::Exactly(k)) => {
                if k == 0 || k > n {
                    // The library's check, with its message.
                    LayerSelector::new(n, None, None).select(method, size, seed)?;
                }
                Ok((0..samples)
                    .map(|_| {
                        let mut y = rand::seq::index::sample(&mut rng, n, k).into_vec();
                        y.sort_unstable();
                        y
                    })
                    .collect())
            }
            _ => {
                let scores = match (rows, &next_values) {
                    (Some((rows, n)), Some((w, n_out))) => {
                        let stats = backend::run(choice, &mut log, |b| gram_stats(b, rows, n))?;
                        Some(importance_scores(&stats, w, *n_out)?)
                    }
                    _ => None,
                };
                let selector = LayerSelector::new(n, l, scores.as_deref());
                Ok(vec![selector.select(method, size, seed)?])
            }
        }
    });
    report_backend(py, &log)?;
    result.map_err(|e| raise(py, e))
}

/// The tensors named `NAME.weight` and `NAME.bias` for each prefix, where `weights` has them.
fn layer_tensors(weights: &Bound<'_, PyAny>, prefixes: &[String]) -> PyResult<TensorFile> {
    let mut file = TensorFile::default();
    for prefix in prefixes {
        for kind in ["weight", "bias"] {
            let name = tensor_name(prefix, kind);
            if file.get(&name).is_some() {
                continue;
            }
            if weights.contains(&name)? {
                file.insert(
                    name.clone(),
                    tensor_from_py(&name, &weights.get_item(&name)?)?,
                );
            }
        }
    }
    Ok(file)
}

/// Every tensor of `file` as a dict of numpy arrays.
fn tensors_to_py<'py>(
    py: Python<'py>,
    file: &TensorFile,
    names: impl Iterator<Item = String>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for name in names {
        if let Some(t) = file.get(&name) {
            out.set_item(&name, tensor_to_py(py, &name, t)?)?;
        }
    }
    Ok(out)
}

/// One layer: select neurons from the activations (an m x n array, or `chunks`: a callable
/// returning a fresh iterable of row chunks per pass), fuse the dropped ones into the
/// `next` layers, slice the `prev` layers. Returns the tensors it rewrote and the report
/// (JSON, as `divnet compress-layer --report` writes it).
#[pyfunction]
#[pyo3(signature = (activations, chunks, width, weights, next, prev, k, keep_ratio, keep, options))]
#[allow(clippy::too_many_arguments)]
fn compress_layer<'py>(
    py: Python<'py>,
    activations: Option<&Bound<'py, PyAny>>,
    chunks: Option<Py<PyAny>>,
    width: Option<usize>,
    weights: &Bound<'py, PyAny>,
    next: Vec<String>,
    prev: Vec<String>,
    k: Option<usize>,
    keep_ratio: Option<f64>,
    keep: Option<Vec<usize>>,
    options: options::Compression<'py>,
) -> PyResult<(Bound<'py, PyDict>, String)> {
    backend::check_process(py)?;
    let (method, choice) = options.method_and_backend(py)?;
    let keep_given = keep.is_some();
    let opts = options.layer(py, options::layer_keep(py, method, k, keep_ratio, keep)?)?;
    let mut file = layer_tensors(weights, &[next.clone(), prev.clone()].concat())?;
    let matrix = activations
        .map(|a| Matrix::from_py("activations", a, true))
        .transpose()?;
    let mut streamed = match (&matrix, chunks, width) {
        (Some(_), None, _) => None,
        (None, Some(c), Some(w)) if w > 0 => Some(PyChunks::new(c, w)),
        _ => {
            return Err(invalid(
                py,
                "give the activations as one array, or as chunks with their width",
            ))
        }
    };
    let rows = matrix.as_ref().map(|a| (a.view(), a.n));
    let mut log = BackendLog::default();
    let result = py.detach(|| {
        let selection = backend::select(choice)?;
        log.reason = Some(format!("backend: {}", selection.reason));
        let tensors = LayerTensors {
            file: &mut file,
            source: Path::new("weights"),
            activations: Path::new("activations"),
            next: &next,
            prev: &prev,
        };
        let outcome = match (rows, &mut streamed) {
            (Some((rows, n)), _) => {
                let mut rows = SliceRows::new(rows, n)?;
                compress_layer_tensors(
                    &selection.backend,
                    &mut rows,
                    tensors,
                    &opts,
                    &mut NoProgress,
                )
            }
            (None, Some(source)) => {
                compress_layer_tensors(&selection.backend, source, tensors, &opts, &mut NoProgress)
            }
            (None, None) => unreachable!("checked above"),
        }?;
        let mut report = serde_json::to_value(&outcome.report)
            .map_err(|e| divnet::Error::invalid(format!("report: {e}")))?;
        let plan = serde_json::to_value(&outcome.plan)
            .map_err(|e| divnet::Error::invalid(format!("report: {e}")))?;
        // The keys `compress-layer --report` writes: the layer's, the backend and the plan.
        let fields = report
            .as_object_mut()
            .expect("a struct serializes to an object");
        fields.insert("backend".into(), selection.backend.name().into());
        fields.insert("plan".into(), plan);
        // No files here: what the arrays were, where the command names its files.
        fields.insert(
            "inputs".into(),
            serde_json::json!({
                "activations": if rows.is_some() { "array" } else { "chunks" },
                "weights": "dict",
                "keep": if keep_given { "list".into() } else { serde_json::Value::Null },
            }),
        );
        Ok(report.to_string())
    });
    report_backend(py, &log)?;
    if let Some(e) = streamed.as_mut().and_then(PyChunks::take_error) {
        return Err(e);
    }
    let report = result.map_err(|e| raise(py, e))?;
    let names: Vec<String> = file.names().map(str::to_string).collect();
    Ok((tensors_to_py(py, &file, names.into_iter())?, report))
}

/// Every hidden layer of an MLP (a state dict of `NAME.weight [out, in]`, `NAME.bias`), each
/// observed through the already compressed ones on the calibration inputs, as
/// `divnet compress` does. Returns the tensors it rewrote and the report (JSON).
#[pyfunction]
#[pyo3(signature = (state_dict, calibration, layers, activation, k, keep_ratio, chunk_rows, options))]
#[allow(clippy::too_many_arguments)]
fn compress<'py>(
    py: Python<'py>,
    state_dict: &Bound<'py, PyAny>,
    calibration: &Bound<'py, PyAny>,
    layers: Option<Vec<String>>,
    activation: &str,
    k: Option<Vec<usize>>,
    keep_ratio: Option<Vec<f64>>,
    chunk_rows: usize,
    options: options::Compression<'py>,
) -> PyResult<(Bound<'py, PyDict>, String)> {
    backend::check_process(py)?;
    let (method, choice) = options.method_and_backend(py)?;
    let activation: Activation = activation.parse().map_err(|e| raise(py, e))?;
    let opts = options.mlp(
        py,
        options::mlp_keep(py, method, k, keep_ratio)?,
        chunk_rows,
    )?;
    let mut file = TensorFile::default();
    for item in state_dict.call_method0("items")?.try_iter()? {
        let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
        // A key that is not a string names no layer tensor.
        let Ok(name) = key.extract::<String>() else {
            continue;
        };
        if is_float_array(&value)? {
            file.insert(name.clone(), tensor_from_py(&name, &value)?);
        } else if let Some(placeholder) = non_float_placeholder(&value)? {
            // Integer buffers and the like stay as they are, but the MLP sees their dtype
            // and shape, as it does in a file: an integer NAME.weight is the command's error,
            // not a layer silently left out of the chain.
            file.insert(name, placeholder);
        }
    }
    // The command line's errors, with the state dict named as it names the model file.
    let mlp = Mlp::from_tensors(&file, layers.as_deref(), activation)
        .map_err(|e| raise(py, e.in_file("state_dict")))?;
    let x = Matrix::from_py("calibration", calibration, false)?;
    if x.n != mlp.input_dim() {
        return Err(raise(
            py,
            divnet::Error::format(
                "calibration",
                format!(
                    "{} features per row, but the model's first layer takes {}",
                    x.n,
                    mlp.input_dim()
                ),
            ),
        ));
    }
    let (values, m) = (x.to_f32(), x.m);
    let mut log = BackendLog::default();
    let result = py.detach(|| {
        backend::run(choice, &mut log, |b| {
            compress_mlp(b, &mlp, &values, m, &opts, &mut NoProgress)
        })
        .and_then(|(compressed, report)| {
            let out = compressed.to_tensors(&file)?;
            let report = serde_json::to_string(&report)
                .map_err(|e| divnet::Error::invalid(format!("report: {e}")))?;
            Ok((compressed, out, report))
        })
    });
    report_backend(py, &log)?;
    let (compressed, out, report) = result.map_err(|e| raise(py, e))?;
    let names = compressed
        .layers
        .iter()
        .flat_map(|l| [tensor_name(&l.name, "weight"), tensor_name(&l.name, "bias")]);
    Ok((tensors_to_py(py, &out, names)?, report))
}

/// A tensor with the dtype and shape of a non-float array and no data, for [`compress`]: the
/// MLP's checks read dtypes and shapes, and refuse such a tensor where a layer would need its
/// values. `None` for what has no safetensors dtype (objects, strings), which the MLP never
/// reads.
fn non_float_placeholder(
    value: &Bound<'_, PyAny>,
) -> PyResult<Option<divnet::io::safetensors::Tensor>> {
    use safetensors::Dtype;
    let array = value
        .py()
        .import("numpy")?
        .call_method1("asarray", (value,))?;
    let dtype = array.getattr("dtype")?;
    let (kind, size): (String, usize) = (
        dtype.getattr("kind")?.extract()?,
        dtype.getattr("itemsize")?.extract()?,
    );
    let dtype = match (kind.as_str(), size) {
        ("b", _) => Dtype::BOOL,
        ("i", 1) => Dtype::I8,
        ("i", 2) => Dtype::I16,
        ("i", 4) => Dtype::I32,
        ("i", 8) => Dtype::I64,
        ("u", 1) => Dtype::U8,
        ("u", 2) => Dtype::U16,
        ("u", 4) => Dtype::U32,
        ("u", 8) => Dtype::U64,
        _ => return Ok(None),
    };
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    Ok(Some(divnet::io::safetensors::Tensor {
        dtype,
        shape,
        bytes: Vec::new(),
    }))
}

/// What the library would be handed for `activations`: the address of the first value and
/// whether the array had to be converted. Lets the tests see that float32 and float16 arrays
/// in C order are not copied.
#[pyfunction]
fn _activation_view(activations: &Bound<'_, PyAny>) -> PyResult<(usize, bool)> {
    let a = Matrix::from_py("activations", activations, true)?;
    Ok((a.address(), a.copied))
}

/// The extension module.
#[pymodule]
fn _divnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kernel, m)?)?;
    m.add_function(wrap_pyfunction!(gram, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(compress_layer, m)?)?;
    m.add_function(wrap_pyfunction!(compress, m)?)?;
    m.add_function(wrap_pyfunction!(_activation_view, m)?)?;
    let methods: Vec<&str> = SelectionMethod::ALL.iter().map(|m| m.name()).collect();
    m.add("SELECTION_METHODS", methods)?;
    m.add("DEFAULT_EPS", DEFAULT_EPS)?;
    m.add("DEFAULT_CHUNK_ROWS", DEFAULT_CHUNK_ROWS)?;
    m.add(
        "DEFAULT_RIDGE_FACTOR",
        FusionOptions::default().ridge_factor,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
