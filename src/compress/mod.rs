//! The compression pipelines, built from the library's stages: observe a layer (one
//! streaming pass of [`crate::kernel::LayerStats`]), build its kernel, select the neurons to
//! keep ([`crate::select`]), fuse the dropped ones into the next layer ([`crate::fusion`]),
//! slice the layer itself.
//!
//! - [`compress_layer`]: one layer of any network, from its activations and the next
//!   layer(s) that read it; [`compress_layer_tensors`] does the same on named tensors
//!   (a safetensors file or a Python dict), slicing the producing layers too.
//! - [`compress_mlp`]: every hidden layer of an [`crate::model::Mlp`] in turn, each observed
//!   through the already compressed layers before it (as the paper does).

mod layer;
mod mlp;
mod plan;

pub use layer::{
    compress_layer, compress_layer_tensors, plan_layer_tensors, read_next_tensors, LayerOptions,
    LayerOutcome, LayerTensors, NextTensors,
};
pub use mlp::{
    apply_selection, compress_mlp, observe_hidden_layer, CompressOptions, LayerObservation,
};
pub use plan::{plan_layer, LayerPlan, Route, ONE_PASS_SHARE};

use crate::error::{Error, Result};
use crate::fusion::FusionMode;
pub use crate::progress::{NoProgress, Progress};
use crate::select::{Diversity, SelectionSize};

/// Default `eps` added to the RBF kernel's diagonal so that L is positive definite.
pub const DEFAULT_EPS: f64 = 1e-6;
/// Default number of calibration rows pushed through the network at a time.
pub const DEFAULT_CHUNK_ROWS: usize = 1024;

/// How many neurons of one hidden layer to keep.
#[derive(Clone, Debug, PartialEq)]
pub enum KeepSpec {
    /// Exactly this many.
    Count(usize),
    /// This fraction of the layer's width (rounded, at least 1).
    Ratio(f64),
    /// As many as a DPP draw yields.
    Drawn,
    /// These neurons (skips selection).
    Indices(Vec<usize>),
    /// Leave the layer as it is.
    All,
}

impl KeepSpec {
    /// The selection size for a layer of `n` neurons.
    pub fn size(&self, n: usize) -> Result<SelectionSize> {
        match *self {
            KeepSpec::Count(k) => Ok(SelectionSize::Exactly(k)),
            KeepSpec::Ratio(r) => {
                if !(r > 0.0 && r <= 1.0) {
                    return Err(Error::invalid(format!("keep ratio {r} is not in (0, 1]")));
                }
                Ok(SelectionSize::Exactly(
                    ((r * n as f64).round() as usize).clamp(1, n),
                ))
            }
            KeepSpec::Drawn => Ok(SelectionSize::Drawn),
            KeepSpec::Indices(ref v) => Ok(SelectionSize::Exactly(v.len())),
            KeepSpec::All => Ok(SelectionSize::Exactly(n)),
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    /// The divnet version that wrote the report.
    pub version: String,
    /// The layer's tensor prefix (e.g. `fc1`; for a single layer, its producing layers).
    pub name: String,
    /// The layers that read it, whose weights the fusion rewrote.
    pub next: Vec<String>,
    /// The seed of the random methods (with the method and the data, what reproduces the
    /// selection).
    pub seed: u64,
    /// Its position among the hidden layers (0-based).
    pub index: usize,
    /// Width before.
    pub neurons_before: usize,
    /// Calibration samples the statistics were taken over.
    pub samples: usize,
    /// Kept neurons (0-based, sorted), as indices into the original layer.
    pub kept: Vec<usize>,
    /// How they were chosen.
    pub method: String,
    /// Fusion mode: "fuse", "fuse-no-bias" or "prune".
    pub fusion: String,
    /// beta of the RBF kernel, when one was built.
    pub beta: Option<f64>,
    /// The ridge added to the fusion system.
    pub ridge: f64,
    /// ||Z - Z'||_F / ||Z||_F of the next layer's pre-activation on the calibration set
    /// (resolved down to a few 1e-4: see [`crate::fusion::FusedLayer::relative_error`]).
    pub relative_error: f64,
    /// The same error for each layer in `next`, in order (fused together, they share the
    /// kept set and the solve; the combined error weighs them by their energy).
    pub next_errors: Vec<f64>,
    /// Diversity of the kept set under the kernel, when one was built (and not reduced in
    /// place by a wide layer's partial eigendecomposition).
    pub diversity: Option<Diversity>,
    /// Which eigendecomposition a DPP draw came from: "full eigendecomposition",
    /// "partial: 4/3 n^3 + 2 n^2 k" or "partial, two-stage reduction: 4/3 n^3 + 4 n^2 k"
    /// (chosen by the layer's width, see [`crate::select::LayerSelector::eigen_path`]);
    /// none for the other methods.
    pub eigen_path: Option<String>,
    /// For fusion-swap, how its search went: swaps made, passes over the rows, and whether
    /// the cap ([`crate::select::max_swaps`]) stopped it; none for the other methods.
    pub swap_search: Option<crate::select::SwapSearch>,
    /// How the fusion got its statistics: "one-pass" (G collected with the kernel's
    /// distances) or "two-pass" (a second pass over the activations after selection); see
    /// [`Route`].
    pub route: String,
    /// Planned and measured memory.
    pub memory: MemoryReport,
    /// Seconds per stage, in order (e.g. statistics, kernel, select, fuse).
    pub seconds: Vec<(String, f64)>,
    /// What the user should know about how the layer was processed: a stage that fell back
    /// to the CPU after a GPU failure, a bias created to hold the fused constant, ...
    pub notes: Vec<String>,
}

/// The memory of one layer's compression: what the plan predicted and what the process
/// reached. Bytes; `None` where the system does not say (peaks come from `VmHWM`, Linux).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryReport {
    /// The plan's peak, above what the process held when planning (`None` without a plan).
    pub planned_peak_bytes: Option<u64>,
    /// The process's resident memory when planning.
    pub rss_at_plan_bytes: Option<u64>,
    /// The memory available when planning.
    pub available_bytes: Option<u64>,
    /// The process's peak resident memory when the layer was done.
    pub peak_rss_bytes: Option<u64>,
    /// The process's peak resident memory after each stage, in stage order: the stage
    /// where it grows is the one that raised it.
    pub peak_rss_after: Vec<(String, Option<u64>)>,
}

/// What happened to the whole network.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompressReport {
    /// "cpu" or "gpu".
    pub backend: String,
    /// The activation between the layers ("relu", ...), as the network was read.
    pub activation: String,
    /// Calibration samples.
    pub samples: usize,
    /// Parameters before.
    pub params_before: usize,
    /// Parameters after.
    pub params_after: usize,
    /// One entry per hidden layer that was compressed.
    pub layers: Vec<LayerReport>,
    /// Total seconds.
    pub seconds: f64,
}

/// "fuse", "fuse-no-bias" or "prune".
pub fn fusion_name(mode: FusionMode) -> &'static str {
    match mode {
        FusionMode::Fuse => "fuse",
        FusionMode::FuseNoBias => "fuse-no-bias",
        FusionMode::Prune => "prune",
    }
}

/// Checks a given keep list (distinct, in range, non-empty) and returns it sorted.
pub(crate) fn check_keep(keep: &[usize], n: usize) -> Result<Vec<usize>> {
    if keep.is_empty() {
        return Err(Error::invalid("the keep list is empty"));
    }
    let mut sorted = keep.to_vec();
    sorted.sort_unstable();
    if let Some(&bad) = sorted.iter().find(|&&i| i >= n) {
        return Err(Error::invalid(format!(
            "keep index {bad} is out of range for a layer of {n} neurons"
        )));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!("keep index {} appears twice", w[0])));
    }
    Ok(sorted)
}
