//! The options of the Python functions, parsed as the command line parses its flags: the same
//! names (`kdpp`, `paper`, `auto`, ...), the library's parsers and their messages.

use divnet::compress::{CompressOptions, KeepSpec, LayerOptions};
use divnet::fusion::{FusionMode, FusionOptions};
use divnet::kernel::Beta;
use divnet::select::SelectionMethod;
use divnet::BackendChoice;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::{invalid, raise};

/// `auto`, `gpu` or `cpu`.
pub fn backend(py: Python<'_>, name: &str) -> PyResult<BackendChoice> {
    name.parse().map_err(|e| raise(py, e))
}

/// `kdpp`, `dpp`, `greedy`, `random`, `importance`, ...
pub fn method(py: Python<'_>, name: &str) -> PyResult<SelectionMethod> {
    name.parse().map_err(|e| raise(py, e))
}

/// `"paper"` (10 / m), `"median"`, or a positive number (as a float or a string).
pub fn beta(value: &Bound<'_, PyAny>) -> PyResult<Beta> {
    let py = value.py();
    let text = match value.cast::<PyString>() {
        Ok(s) => s.to_string(),
        Err(_) => value.extract::<f64>()?.to_string(),
    };
    text.parse().map_err(|e| raise(py, e))
}

/// `fuse` (least squares with the constant term, the default), `fuse-no-bias` (the paper's
/// objective) or `prune`, and the ridge factor.
pub fn fusion(py: Python<'_>, mode: &str, ridge_factor: f64) -> PyResult<FusionOptions> {
    let mode = match mode {
        "fuse" => FusionMode::Fuse,
        "fuse-no-bias" => FusionMode::FuseNoBias,
        "prune" => FusionMode::Prune,
        other => {
            return Err(invalid(
                py,
                format!("unknown fusion {other:?}: expected fuse, fuse-no-bias or prune"),
            ))
        }
    };
    Ok(FusionOptions { mode, ridge_factor })
}

/// How many neurons of one layer to keep, from `k`, `keep_ratio` or `keep` (at most one) and
/// the method, with the rules of `divnet compress-layer`: a DPP chooses its own size.
pub fn layer_keep(
    py: Python<'_>,
    method: SelectionMethod,
    k: Option<usize>,
    keep_ratio: Option<f64>,
    keep: Option<Vec<usize>>,
) -> PyResult<KeepSpec> {
    let given = [k.is_some(), keep_ratio.is_some(), keep.is_some()];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(invalid(py, "give only one of k, keep_ratio and keep"));
    }
    Ok(match (keep, k, keep_ratio) {
        (Some(indices), _, _) => KeepSpec::Indices(indices),
        (None, k, ratio) if method == SelectionMethod::Dpp => {
            if k.is_some() || ratio.is_some() {
                return Err(dpp_size(py));
            }
            KeepSpec::Drawn
        }
        (None, Some(k), _) => KeepSpec::Count(k),
        (None, None, Some(r)) => KeepSpec::Ratio(r),
        (None, None, None) => {
            return Err(invalid(
                py,
                "say which neurons to keep: k=K, keep_ratio=R, keep=[indices] or method='dpp'",
            ))
        }
    })
}

/// How many neurons of each hidden layer of an MLP to keep (one value for all, or one per
/// layer), with the rules of `divnet compress`.
pub fn mlp_keep(
    py: Python<'_>,
    method: SelectionMethod,
    k: Option<Vec<usize>>,
    keep_ratio: Option<Vec<f64>>,
) -> PyResult<Vec<KeepSpec>> {
    if k.is_some() && keep_ratio.is_some() {
        return Err(invalid(py, "give only one of k and keep_ratio"));
    }
    if method == SelectionMethod::Dpp {
        if k.is_some() || keep_ratio.is_some() {
            return Err(dpp_size(py));
        }
        return Ok(vec![KeepSpec::Drawn]);
    }
    match (k, keep_ratio) {
        (Some(k), _) => Ok(k.into_iter().map(KeepSpec::Count).collect()),
        (None, Some(r)) => Ok(r.into_iter().map(KeepSpec::Ratio).collect()),
        (None, None) => Err(invalid(
            py,
            "say how many neurons to keep: k=K, keep_ratio=R or method='dpp'",
        )),
    }
}

fn dpp_size(py: Python<'_>) -> PyErr {
    invalid(
        py,
        "method='dpp' chooses its own size: drop k/keep_ratio, or use method='kdpp'",
    )
}

/// The options both compression functions take, as the Python wrappers pass them: a dict
/// with these keys.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct Compression<'py> {
    method: String,
    fusion: String,
    ridge_factor: f64,
    beta: Bound<'py, PyAny>,
    eps: f64,
    seed: u64,
    backend: String,
}

impl Compression<'_> {
    /// The selection method and the backend choice.
    pub fn method_and_backend(&self, py: Python<'_>) -> PyResult<(SelectionMethod, BackendChoice)> {
        Ok((method(py, &self.method)?, backend(py, &self.backend)?))
    }

    /// [`LayerOptions`] for `keep`; a GPU failure under `auto` falls back to the CPU, as in
    /// `divnet compress-layer`.
    pub fn layer(&self, py: Python<'_>, keep: KeepSpec) -> PyResult<LayerOptions> {
        let (method, choice) = self.method_and_backend(py)?;
        Ok(LayerOptions {
            method,
            keep,
            fusion: fusion(py, &self.fusion, self.ridge_factor)?,
            beta: beta(&self.beta)?,
            eps: self.eps,
            seed: self.seed,
            cpu_fallback: choice == BackendChoice::Auto,
            route: None,
        })
    }

    /// [`CompressOptions`] for `keep` (one spec for all hidden layers, or one per layer).
    pub fn mlp(
        &self,
        py: Python<'_>,
        keep: Vec<KeepSpec>,
        chunk_rows: usize,
    ) -> PyResult<CompressOptions> {
        let layer = self.layer(py, KeepSpec::All)?;
        Ok(CompressOptions {
            method: layer.method,
            keep,
            fusion: layer.fusion,
            beta: layer.beta,
            eps: layer.eps,
            seed: layer.seed,
            chunk_rows,
        })
    }
}
