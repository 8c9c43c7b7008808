//! Every hidden layer of an MLP in turn: each observed through the already compressed layers
//! before it, on the calibration inputs, its activations streamed from the forward pass into
//! the statistics engine chunk by chunk.

use std::time::Instant;

use super::layer::{fuse_from_gram, select_neurons, LayerOptions, LayerWork, SelectionPlan};
use super::{fusion_name, CompressReport, KeepSpec, LayerReport, DEFAULT_CHUNK_ROWS, DEFAULT_EPS};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fusion::{fuse_next_layer, FusedLayer, FusionOptions, NextLayer};
use crate::gpu::forward::{GpuForward, GpuMlp};
use crate::gpu::gram::RowFormat;
use crate::gpu::GpuContext;
use crate::kernel::{ActivationRows, Beta, Distances, GramStats, LayerStats, RowSource, StatsKind};
use crate::model::Mlp;
use crate::progress::{Labelled, Progress};
use crate::select::{SelectionMethod, SelectionSize};

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

    /// The hidden layers of `mlp` these options would cut, as
    /// [`Mlp::check_second_readers`] takes them: name, width, width after (`None`: a DPP
    /// draw decides). A layer whose keep value is invalid is left to [`compress_mlp`], which
    /// refuses it.
    pub fn width_changes(&self, mlp: &Mlp) -> Vec<(String, usize, Option<usize>)> {
        let hidden = mlp.layers.len().saturating_sub(1);
        mlp.layers[..hidden]
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let width = match self.keep_for(i, hidden).ok()?.size(l.out_dim).ok()? {
                    SelectionSize::Exactly(k) => Some(k),
                    SelectionSize::Drawn => None,
                };
                (width != Some(l.out_dim)).then(|| (l.name.clone(), l.out_dim, width))
            })
            .collect()
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
    let kind = if with_distances {
        StatsKind::Both
    } else {
        StatsKind::Gram
    };
    let mut acc = LayerStats::new(backend, n, kind)?;
    let stage = format!("observe {}", mlp.layers[layer].name);
    match backend {
        // On the GPU backend the forward pass runs there too, and its output feeds the
        // statistics where it is: nothing goes through the host but the result.
        Backend::Gpu(ctx) => {
            let net = GpuMlp::upload(ctx, mlp)?;
            // Never more rows than there are: keeps chunk_rows * d from overflowing.
            let rows = chunk_rows.min(net.max_rows(ctx, layer)).clamp(1, m);
            if acc.source_passes() == 1 {
                let mut run = GpuForward::new(ctx, &net, layer, true, rows)?;
                progress.start(&stage, m as u64);
                for chunk in x.chunks(rows * d) {
                    let take = chunk.len() / d;
                    let hidden = run.run(ctx, chunk, take)?;
                    acc.push_buffer(hidden, 0, take, RowFormat::F32)?;
                    progress.advance(take as u64);
                }
                progress.finish();
            } else {
                // A layer too wide for the device's memory at once: the statistics read
                // their input once per group of blocks, so the forward pass is a source
                // that runs again for each.
                let mut source = HiddenRows {
                    net: Forward::Gpu(ctx, &net),
                    x,
                    m,
                    layer,
                    chunk_rows: rows,
                };
                acc.push_source(&mut source, &stage, progress)?;
            }
        }
        Backend::Cpu => {
            let mut source = HiddenRows {
                net: Forward::Cpu(mlp),
                x,
                m,
                layer,
                chunk_rows: chunk_rows.clamp(1, m),
            };
            acc.push_source(&mut source, &stage, progress)?;
        }
    }
    let statistics = acc.finish()?;
    Ok(LayerObservation {
        distances: statistics.distances,
        stats: statistics.gram.expect("always collected"),
    })
}

/// Where a [`HiddenRows`] runs the network.
enum Forward<'a> {
    Cpu(&'a Mlp),
    Gpu(&'a GpuContext, &'a GpuMlp),
}

/// The activations of one hidden layer on a calibration set, as a [`RowSource`]: each pass
/// runs the network on the calibration rows again, chunk by chunk.
struct HiddenRows<'a> {
    net: Forward<'a>,
    x: &'a [f32],
    m: usize,
    layer: usize,
    chunk_rows: usize,
}

impl RowSource for HiddenRows<'_> {
    fn width(&self) -> usize {
        match self.net {
            Forward::Cpu(mlp) => mlp.layers[self.layer].out_dim,
            Forward::Gpu(_, net) => net.output_dim(self.layer),
        }
    }

    fn rows(&self) -> usize {
        self.m
    }

    fn pass(&mut self, visit: &mut dyn FnMut(ActivationRows<'_>) -> Result<()>) -> Result<()> {
        let d = self.x.len() / self.m.max(1);
        for chunk in self.x.chunks(self.chunk_rows * d) {
            let rows = chunk.len() / d;
            let hidden = match self.net {
                Forward::Cpu(mlp) => mlp.hidden(chunk, rows, self.layer),
                Forward::Gpu(ctx, net) => net.hidden(ctx, chunk, rows, self.layer)?,
            };
            visit(ActivationRows::F32(&hidden))?;
        }
        Ok(())
    }
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
    let (ridge, relative_error) = (fused.ridge, fused.relative_error);
    replace_layer(mlp, layer, keep, fused);
    Ok((ridge, relative_error))
}

/// Slices hidden layer `layer` to the rows `keep` and installs the fused next layer.
fn replace_layer(mlp: &mut Mlp, layer: usize, keep: &[usize], fused: FusedLayer) {
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
    opts.fusion.check()?;
    let hidden = mlp.layers.len().saturating_sub(1);
    if hidden == 0 {
        return Err(Error::invalid(
            "the model has a single layer: there is no hidden layer to compress",
        ));
    }
    // Every layer's size is checked before any work: a bad -k for the last layer is not
    // found after the first has been compressed.
    let layer_opts = (0..hidden)
        .map(|layer| {
            let spec = opts.keep_for(layer, hidden)?;
            if *spec == KeepSpec::All {
                return Ok(None);
            }
            let layer_opts = LayerOptions {
                method: opts.method,
                keep: spec.clone(),
                fusion: opts.fusion,
                beta: opts.beta,
                eps: opts.eps,
                seed: opts.seed.wrapping_add(layer as u64),
                cpu_fallback: false,
                route: Some(super::Route::OnePass),
            };
            SelectionPlan::new(&layer_opts, mlp.layers[layer].out_dim)
                .map_err(|e| e.about(&mlp.layers[layer].name))?;
            Ok(Some(layer_opts))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = mlp.clone();
    let mut reports = Vec::new();
    for (layer, layer_opts) in layer_opts.iter().enumerate() {
        let Some(layer_opts) = layer_opts else {
            continue;
        };
        let name = out.layers[layer].name.clone();
        let mut labelled = Labelled::new(progress, &name);
        let report = compress_hidden_layer(
            backend,
            &mut out,
            x,
            m,
            layer,
            layer_opts,
            opts,
            &mut labelled,
        )
        .map_err(|e| e.about(&name))?;
        reports.push(report);
    }
    let report = CompressReport {
        backend: backend.name().into(),
        activation: mlp.activation.to_string(),
        samples: m,
        params_before: mlp.param_count(),
        params_after: out.param_count(),
        layers: reports,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((out, report))
}

/// Compresses hidden layer `layer` of `out` in place (observed through the layers before it,
/// as they are now) and returns its report; [`compress_mlp`]'s loop body.
#[allow(clippy::too_many_arguments)]
fn compress_hidden_layer(
    backend: &Backend,
    out: &mut Mlp,
    x: &[f32],
    m: usize,
    layer: usize,
    layer_opts: &LayerOptions,
    opts: &CompressOptions,
    progress: &mut dyn Progress,
) -> Result<LayerReport> {
    let n = out.layers[layer].out_dim;
    let plan = SelectionPlan::new(layer_opts, n)?;
    let mut work = LayerWork::new(backend, false);

    let t = Instant::now();
    let obs = observe_hidden_layer(
        backend,
        out,
        x,
        m,
        layer,
        opts.chunk_rows,
        plan.needs_kernel(layer_opts),
        progress,
    )?;
    work.stage("observe", t);

    let next = &out.layers[layer + 1];
    let next = NextLayer {
        weight: &next.weight,
        bias: next.has_bias.then_some(next.bias.as_slice()),
        n_out: next.out_dim,
        n_in: next.in_dim,
    };
    let selected = select_neurons(
        &mut work,
        Some(&obs.stats),
        obs.distances,
        next,
        &plan,
        layer_opts,
        layer_opts.seed,
        progress,
    )?;
    let fused = fuse_from_gram(
        &mut work,
        &obs.stats,
        &selected.kept,
        (next, &[next.n_out]),
        layer_opts,
        progress,
    )?;
    let (ridge, relative_error) = (fused.ridge, fused.relative_error);
    let had_bias = out.layers[layer + 1].has_bias;
    replace_layer(out, layer, &selected.kept, fused);
    if !had_bias && out.layers[layer + 1].has_bias {
        work.notes.push(format!(
            "{}.bias: created to hold the fused constant term (--no-bias fuses without one, \
             for a model that must keep its layers bias-free)",
            out.layers[layer + 1].name
        ));
    }

    Ok(LayerReport {
        version: crate::VERSION.into(),
        name: out.layers[layer].name.clone(),
        next: vec![out.layers[layer + 1].name.clone()],
        seed: layer_opts.seed,
        index: layer,
        neurons_before: n,
        samples: m,
        diversity: selected.diversity,
        eigen_path: selected.eigen_path,
        swap_search: selected.swap_search,
        kept: selected.kept,
        method: if matches!(layer_opts.keep, KeepSpec::Indices(_)) {
            "given".into()
        } else {
            opts.method.name().into()
        },
        fusion: fusion_name(opts.fusion.mode).into(),
        beta: selected.beta,
        ridge,
        relative_error,
        next_errors: vec![relative_error],
        route: super::Route::OnePass.name().into(),
        memory: work.memory_report(None),
        seconds: work.seconds,
        notes: work.notes,
    })
}
