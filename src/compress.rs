//! The layer-by-layer pipeline: observe a hidden layer through the already compressed
//! layers before it, build its kernel, select the neurons to keep, fuse the dropped ones into
//! the next layer, slice the layer itself, move on.
//!
//! Activations are streamed in row chunks into the Gram and distance accumulators: the
//! calibration set's activations are never all in memory at once.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fusion::{fuse_next_layer, FusionMode, FusionOptions, NextLayer};
use crate::gpu::forward::GpuMlp;
use crate::kernel::{
    rbf_from_distances, ActivationRows, Beta, Distances, GramAccumulator, GramStats,
    LayerStatsAccumulator, RbfKernel,
};
use crate::model::Mlp;
pub use crate::progress::{NoProgress, Progress};
use crate::select::{
    diversity, importance_scores, Diversity, LayerSelector, SelectionMethod, SelectionSize,
};

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

/// Everything `compress_mlp` needs besides the model and the data.
#[derive(Clone, Debug)]
pub struct CompressOptions {
    /// How neurons are selected.
    pub method: SelectionMethod,
    /// One entry per hidden layer, or a single entry for all of them.
    pub keep: Vec<KeepSpec>,
    /// Fusion into the next layer (or plain pruning).
    pub fusion: FusionOptions,
    /// The RBF bandwidth.
    pub beta: Beta,
    /// Added to the kernel's diagonal.
    pub eps: f64,
    /// Seed of the random methods; layer l uses `seed + l`.
    pub seed: u64,
    /// Calibration rows per chunk.
    pub chunk_rows: usize,
}

impl CompressOptions {
    /// The paper's setup: k-DPP selection, fusion with bias, beta = 10/m.
    pub fn new(keep: Vec<KeepSpec>) -> Self {
        Self {
            method: SelectionMethod::KDpp,
            keep,
            fusion: FusionOptions::default(),
            beta: Beta::Paper,
            eps: DEFAULT_EPS,
            seed: 0,
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }

    fn keep_for(&self, layer: usize, hidden: usize) -> Result<&KeepSpec> {
        match self.keep.len() {
            1 => Ok(&self.keep[0]),
            n if n == hidden => Ok(&self.keep[layer]),
            n => Err(Error::invalid(format!(
                "{n} keep values given for {hidden} hidden layers: give one for all or one per layer"
            ))),
        }
    }
}

/// One pass of the calibration set through the network up to a hidden layer.
pub struct LayerObservation {
    /// G = A^T A and s = A^T 1 of the layer's activations (for fusion and importance).
    pub stats: GramStats,
    /// Pairwise squared distances between neurons (for the kernel), when asked for.
    pub distances: Option<Distances>,
}

/// Streams the calibration set `x` (m x input_dim, row-major) through `mlp` up to hidden layer
/// `layer`, accumulating the layer's Gram statistics and, if `with_distances`, the pairwise
/// squared distances between its neurons.
#[allow(clippy::too_many_arguments)]
pub fn observe_hidden_layer(
    backend: &Backend,
    mlp: &Mlp,
    x: &[f32],
    m: usize,
    layer: usize,
    chunk_rows: usize,
    with_distances: bool,
    progress: &mut dyn Progress,
) -> Result<LayerObservation> {
    check_hidden(mlp, layer)?;
    let d = mlp.input_dim();
    if x.len() != m * d {
        return Err(Error::invalid(format!(
            "calibration data has {} values, expected {m} rows x {d} inputs",
            x.len()
        )));
    }
    if m == 0 {
        return Err(Error::invalid("the calibration set is empty"));
    }
    let n = mlp.layers[layer].out_dim;
    let mut acc = if with_distances {
        Accumulator::Both(Box::new(LayerStatsAccumulator::new(backend, n)?))
    } else {
        Accumulator::Gram(Box::new(GramAccumulator::new(backend, n)?))
    };
    // On the GPU backend the forward pass runs there too. A network whose layers do not fit
    // the device's bindings is run on the CPU instead: the forward pass is cheap next to the
    // Gram accumulation, which stays on the GPU.
    let gpu_net = match backend {
        Backend::Gpu(ctx) => GpuMlp::upload(ctx, mlp).ok().map(|net| (ctx, net)),
        Backend::Cpu => None,
    };
    // Never more rows than there are: keeps chunk_rows * d from overflowing.
    let chunk_rows = match &gpu_net {
        Some((ctx, net)) => chunk_rows.min(net.max_rows(ctx, layer)),
        None => chunk_rows,
    }
    .clamp(1, m);
    progress.start(&format!("observe {}", mlp.layers[layer].name), m as u64);
    for (rows, chunk) in x.chunks(chunk_rows * d).map(|c| (c.len() / d, c)) {
        let h = match &gpu_net {
            Some((ctx, net)) => net.hidden(ctx, chunk, rows, layer)?,
            None => mlp.hidden(chunk, rows, layer),
        };
        match &mut acc {
            Accumulator::Gram(a) => a.push(ActivationRows::F32(&h))?,
            Accumulator::Both(a) => a.push(ActivationRows::F32(&h))?,
        }
        progress.advance(rows as u64);
    }
    progress.finish();
    Ok(match acc {
        Accumulator::Gram(a) => LayerObservation {
            stats: a.finish()?,
            distances: None,
        },
        Accumulator::Both(a) => {
            let (stats, distances) = a.finish()?;
            LayerObservation {
                stats,
                distances: Some(distances),
            }
        }
    })
}

enum Accumulator {
    Gram(Box<GramAccumulator>),
    Both(Box<LayerStatsAccumulator>),
}

fn check_hidden(mlp: &Mlp, layer: usize) -> Result<()> {
    if layer + 1 >= mlp.layers.len() {
        return Err(Error::invalid(format!(
            "layer {layer} is not a hidden layer: the model has {} hidden layers",
            mlp.layers.len().saturating_sub(1)
        )));
    }
    Ok(())
}

/// What happened to one layer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    /// The layer's tensor prefix (e.g. `fc1`).
    pub name: String,
    /// Its position among the hidden layers (0-based).
    pub index: usize,
    /// Width before.
    pub neurons_before: usize,
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
    /// ||Z - Z'||_F / ||Z||_F of the next layer's pre-activation on the calibration set.
    pub relative_error: f64,
    /// Diversity of the kept set under the kernel, when one was built.
    pub diversity: Option<Diversity>,
    /// Seconds per stage: observe, kernel, select, fuse.
    pub seconds: Vec<(String, f64)>,
}

/// What happened to the whole network.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompressReport {
    /// "cpu" or "gpu".
    pub backend: String,
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

/// Replaces hidden layer `layer` by the neurons `keep` and folds the dropped ones into the
/// next layer, given the layer's Gram statistics. Returns the ridge and the relative error.
pub fn apply_selection(
    backend: &Backend,
    mlp: &mut Mlp,
    layer: usize,
    keep: &[usize],
    stats: &GramStats,
    fusion: &FusionOptions,
) -> Result<(f64, f64)> {
    check_hidden(mlp, layer)?;
    let next = &mlp.layers[layer + 1];
    let fused = fuse_next_layer(
        backend,
        stats,
        keep,
        NextLayer {
            weight: &next.weight,
            bias: next.has_bias.then_some(next.bias.as_slice()),
            n_out: next.out_dim,
            n_in: next.in_dim,
        },
        fusion,
    )?;
    let cur = &mut mlp.layers[layer];
    let d = cur.in_dim;
    cur.weight = keep
        .iter()
        .flat_map(|&i| cur.weight[i * d..(i + 1) * d].iter().copied())
        .collect();
    cur.bias = keep.iter().map(|&i| cur.bias[i]).collect();
    cur.out_dim = keep.len();
    let next = &mut mlp.layers[layer + 1];
    next.in_dim = keep.len();
    next.weight = fused.weight;
    next.has_bias = next.has_bias || fused.bias.iter().any(|&b| b != 0.0);
    next.bias = fused.bias;
    Ok((fused.ridge, fused.relative_error))
}

/// Compresses every hidden layer of `mlp` in turn (as the paper does): each is observed
/// through the already compressed layers before it, on the calibration set `x` (m rows).
pub fn compress_mlp(
    backend: &Backend,
    mlp: &Mlp,
    x: &[f32],
    m: usize,
    opts: &CompressOptions,
    progress: &mut dyn Progress,
) -> Result<(Mlp, CompressReport)> {
    let start = Instant::now();
    let hidden = mlp.layers.len().saturating_sub(1);
    if hidden == 0 {
        return Err(Error::invalid(
            "the model has a single layer: there is no hidden layer to compress",
        ));
    }
    let mut out = mlp.clone();
    let mut reports = Vec::new();
    for layer in 0..hidden {
        let spec = opts.keep_for(layer, hidden)?;
        if *spec == KeepSpec::All {
            continue;
        }
        let n = out.layers[layer].out_dim;
        let mut seconds = Vec::new();
        let mut timed =
            |name: &str, t: Instant| seconds.push((name.to_string(), t.elapsed().as_secs_f64()));

        let t = Instant::now();
        let given = matches!(spec, KeepSpec::Indices(_));
        let needs_kernel = !given && opts.method.needs_kernel();
        let obs = observe_hidden_layer(
            backend,
            &out,
            x,
            m,
            layer,
            opts.chunk_rows,
            needs_kernel,
            progress,
        )?;
        timed("observe", t);

        let t = Instant::now();
        let kernel: Option<RbfKernel> = obs
            .distances
            .as_ref()
            .map(|d| rbf_from_distances(d, opts.beta, opts.eps))
            .transpose()?;
        timed("kernel", t);

        let t = Instant::now();
        let keep = match spec {
            KeepSpec::Indices(v) => check_keep(v, n)?,
            _ => {
                let next = &out.layers[layer + 1];
                let scores = if opts.method == SelectionMethod::Importance {
                    Some(importance_scores(&obs.stats, &next.weight, next.out_dim)?)
                } else {
                    None
                };
                let next_layer = NextLayer {
                    weight: &next.weight,
                    bias: next.has_bias.then_some(next.bias.as_slice()),
                    n_out: next.out_dim,
                    n_in: next.in_dim,
                };
                let selector =
                    LayerSelector::new(n, kernel.as_ref().map(|k| &k.matrix), scores.as_deref())
                        .with_next_layers(&obs.stats, &[next_layer]);
                selector.select(
                    opts.method,
                    spec.size(n)?,
                    opts.seed.wrapping_add(layer as u64),
                )?
            }
        };
        timed("select", t);

        let t = Instant::now();
        let (ridge, relative_error) =
            apply_selection(backend, &mut out, layer, &keep, &obs.stats, &opts.fusion)?;
        timed("fuse", t);

        reports.push(LayerReport {
            name: out.layers[layer].name.clone(),
            index: layer,
            neurons_before: n,
            diversity: kernel.as_ref().map(|k| diversity(&k.matrix, &keep)),
            kept: keep,
            method: if given {
                "given".into()
            } else {
                opts.method.name().into()
            },
            fusion: fusion_name(opts.fusion.mode).into(),
            beta: kernel.as_ref().map(|k| k.beta),
            ridge,
            relative_error,
            seconds,
        });
    }
    let report = CompressReport {
        backend: backend.name().into(),
        samples: m,
        params_before: mlp.param_count(),
        params_after: out.param_count(),
        layers: reports,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((out, report))
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
fn check_keep(keep: &[usize], n: usize) -> Result<Vec<usize>> {
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
