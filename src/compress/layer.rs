//! One layer of any network, from its activations on a calibration set and the layer(s)
//! that read it: the statistics pass, the kernel, the selection, the fusion.
//!
//! [`compress_layer`] works on numbers ([`NextLayer`] views of the next weights);
//! [`compress_layer_tensors`] works on named tensors (a safetensors file, a Python dict),
//! checks their shapes against the activations before any work, writes the fused next
//! layers back with their dtypes and slices the rows of the layers that produce the
//! activations. Every interface (the CLI's `compress-layer`, the Python package) is a thin
//! layer over these two.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use safetensors::Dtype;

use super::plan::{plan_layer, LayerPlan, Route};
use super::{check_keep, fusion_name, KeepSpec, LayerReport, MemoryReport, DEFAULT_EPS};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fusion::{
    fuse_stacked, fusion_system_from_rows, solve_fusion, FusedLayer, FusionMode, FusionOptions,
    NextLayer,
};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::kernel::{
    rbf_from_distances, Beta, Distances, GramStats, LayerStats, RbfKernel, RowSource, StatsKind,
};
use crate::memory;
use crate::model::{parent_module, tensor_name};
use crate::progress::Progress;
use crate::select::{
    columns, diversity, importance_scores, Diversity, LayerSelector, SelectionMethod,
    SelectionSize, SwapSearch,
};
use crate::types::GramStatsF32;

/// Everything [`compress_layer`] needs besides the activations and the next layer(s).
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// How the kept neurons are chosen (ignored when `keep` lists them).
    pub method: SelectionMethod,
    /// How many neurons to keep, or which.
    pub keep: KeepSpec,
    /// Fusion into the next layer(s), or plain pruning.
    pub fusion: FusionOptions,
    /// The RBF bandwidth of the DPP kernel.
    pub beta: Beta,
    /// Added to the kernel's diagonal.
    pub eps: f64,
    /// Seed of the random selection methods.
    pub seed: u64,
    /// When a stage fails on the GPU with a device error (out of memory, a lost device, a
    /// limit too small), run it again on the CPU and say so in the report's notes. Off: the
    /// error stands.
    pub cpu_fallback: bool,
    /// Where the fusion's statistics come from (see [`Route`]); `None` lets
    /// [`plan_layer`] choose by the free memory.
    pub route: Option<Route>,
}

impl LayerOptions {
    /// The paper's setup for `keep`: k-DPP selection, fusion with bias, beta = 10/m,
    /// seed 0, no CPU fallback, the route chosen by the free memory.
    pub fn new(keep: KeepSpec) -> Self {
        Self {
            method: SelectionMethod::KDpp,
            keep,
            fusion: FusionOptions::default(),
            beta: Beta::Paper,
            eps: DEFAULT_EPS,
            seed: 0,
            cpu_fallback: false,
            route: None,
        }
    }
}

/// What [`compress_layer`] produced.
#[derive(Clone, Debug)]
pub struct LayerOutcome {
    /// The kept neurons, sorted: rows to keep in the producing layer(s).
    pub kept: Vec<usize>,
    /// The next layers after fusion, in the order given: each reads only the kept neurons.
    pub next: Vec<FusedLayer>,
    /// What happened, stage by stage.
    pub report: LayerReport,
    /// The route and memory plan the pipeline followed.
    pub plan: LayerPlan,
}

/// Compresses one hidden layer: the statistics the method needs from `activations`
/// (m x n, any [`RowSource`]), selection, then fusion of the dropped neurons into every
/// layer in `next` (each must read the n neurons; several next layers are fused together, as
/// one least-squares problem with their rows stacked).
///
/// Before the first pass, [`plan_layer`] chooses the route and checks that its peak fits
/// the free memory (an error saying what the layer needs and what is available when not):
/// one pass collecting the Gram statistics beside the distances (G kept in f32 while the
/// kernel is held, on the CPU when only the fusion reads it), or, when G and the kernel
/// do not fit together (or `opts.route` asks), the distances alone and after selection a
/// second pass over the activations for the fusion system; for greedy MAP, when even that
/// does not fit, no kernel at all: greedy reads kernel columns computed from further passes
/// ([`Route::Columns`]). No n x n matrix is copied: the kernel is built over the
/// distances, and each matrix is dropped before the next is made.
///
/// The report's stages are `statistics` (the first pass; it includes reading the
/// activations when they come from a file), `kernel` (DPP methods), `select` (on the
/// columns route, with its passes), `fusion statistics` (the last pass, two-pass and
/// columns routes), `fuse (widening G)` (one-pass route, when G was kept in f32) and
/// `fuse`; the report says which route ran, the plan, and the process's peak memory after
/// each stage.
pub fn compress_layer(
    backend: &Backend,
    activations: &mut dyn RowSource,
    next: &[NextLayer<'_>],
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<LayerOutcome> {
    compress_named_layer(backend, activations, None, next, opts, progress)
}

/// [`compress_layer`], with the selection's input and numerical errors (k above the
/// kernel's numerical rank, say) prefixed by `source`, where the activations came from:
/// they are about the data, and the user should know which file.
fn compress_named_layer(
    backend: &Backend,
    activations: &mut dyn RowSource,
    source: Option<&Path>,
    next: &[NextLayer<'_>],
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<LayerOutcome> {
    let n = activations.width();
    let m = activations.rows();
    let next_rows: Vec<usize> = next.iter().map(|l| l.n_out).collect();
    let stacked = StackedNext::new(next, n)?;
    let selection = SelectionPlan::new(opts, n)?;
    let layer_plan = plan_layer(backend, n, m, &next_rows, opts)?;
    progress.note(&format!(
        "route: {} ({}); planned peak {} above {}",
        layer_plan.route.name(),
        layer_plan.reason,
        crate::memory::gb(layer_plan.memory.peak()),
        layer_plan.rss_at_plan.map_or("?".into(), crate::memory::gb),
    ));
    let mut work = LayerWork::new(backend, opts.cpu_fallback);

    // The first pass: G beside the distances (one-pass), or the distances alone when the
    // method needs a kernel (two-pass); none for a two-pass method that needs neither.
    let needs_kernel = selection.needs_kernel(opts);
    let (gram, distances) = match layer_plan.route {
        Route::OnePass if selection.rounds_gram(opts, backend) => {
            let (rounded, distances) = work.statistics(
                activations,
                progress,
                LayerStats::new_rounding_gram,
                LayerStats::finish_rounding_gram,
            )?;
            (Some(KeptGram::F32(rounded)), Some(distances))
        }
        Route::OnePass => {
            let kind = StatsKind::of(true, needs_kernel).expect("the Gram is collected");
            let statistics = work.statistics(
                activations,
                progress,
                |b, n| LayerStats::new(b, n, kind),
                LayerStats::finish,
            )?;
            (statistics.gram.map(KeptGram::F64), statistics.distances)
        }
        Route::TwoPass if needs_kernel => {
            let statistics = work.statistics(
                activations,
                progress,
                |b, n| LayerStats::new(b, n, StatsKind::Distances),
                LayerStats::finish,
            )?;
            (None, statistics.distances)
        }
        Route::TwoPass | Route::Columns => (None, None),
    };
    let selected = if layer_plan.route == Route::Columns {
        select_from_columns(&mut work, activations, &selection, opts, progress)
    } else {
        select_neurons(
            &mut work,
            gram.as_ref().and_then(KeptGram::full),
            distances,
            stacked.view(),
            &selection,
            opts,
            opts.seed,
            progress,
        )
    };
    let selected = match source {
        Some(path) => selected.map_err(|e| e.about(&path.display().to_string()))?,
        None => selected?,
    };
    let fused = match gram {
        Some(kept) => {
            let stats = kept.into_full(&mut work);
            fuse_from_gram(
                &mut work,
                &stats,
                &selected.kept,
                (stacked.view(), &stacked.rows),
                opts,
                progress,
            )?
        }
        None => fuse_from_rows(
            &mut work,
            activations,
            &selected.kept,
            (stacked.view(), &stacked.rows),
            opts,
            progress,
        )?,
    };
    let report = LayerReport {
        version: crate::VERSION.into(),
        name: String::new(),
        next: Vec::new(),
        seed: opts.seed,
        index: 0,
        neurons_before: n,
        // Read again: a source may learn its row count only in its first pass.
        samples: activations.rows(),
        kept: selected.kept.clone(),
        method: selection.method_name(opts).into(),
        fusion: fusion_name(opts.fusion.mode).into(),
        beta: selected.beta,
        ridge: fused.ridge,
        relative_error: fused.relative_error,
        next_errors: fused.group_errors.clone(),
        diversity: selected.diversity,
        eigen_path: selected.eigen_path,
        swap_search: selected.swap_search,
        route: layer_plan.route.name().into(),
        memory: work.memory_report(Some(&layer_plan)),
        seconds: work.seconds,
        notes: work.notes,
    };
    Ok(LayerOutcome {
        kept: selected.kept,
        next: stacked.split(fused),
        report,
        plan: layer_plan,
    })
}

/// The Gram statistics the one-pass route keeps for the fusion: in f64, or rounded to f32
/// while the kernel is in memory when the selection does not read them
/// ([`SelectionPlan::rounds_gram`]), widened back once the kernel is gone.
enum KeptGram {
    F64(GramStats),
    F32(GramStatsF32),
}

impl KeptGram {
    /// The f64 statistics, which the selection may read; `None` while G is rounded.
    fn full(&self) -> Option<&GramStats> {
        match self {
            KeptGram::F64(stats) => Some(stats),
            KeptGram::F32(_) => None,
        }
    }

    /// The f64 statistics for the fusion: a rounded G is widened back, as the stage
    /// [`WIDEN_STAGE`].
    fn into_full(self, work: &mut LayerWork<'_>) -> GramStats {
        match self {
            KeptGram::F64(stats) => stats,
            KeptGram::F32(rounded) => {
                let t = Instant::now();
                let stats = rounded.widen();
                work.stage(WIDEN_STAGE, t);
                stats
            }
        }
    }
}

/// The stage that widens a rounded G back to f64 before the fusion, in the plan and the
/// report.
pub(crate) const WIDEN_STAGE: &str = "fuse (widening G)";

/// Named tensors for [`compress_layer_tensors`]: the network and which of its layers read
/// and produce the compressed activations.
pub struct LayerTensors<'a> {
    /// The network's tensors (a PyTorch state dict); rewritten in place.
    pub file: &'a mut TensorFile,
    /// Where the tensors came from, for messages (a file path, or a name like `weights`).
    pub source: &'a Path,
    /// Where the activations came from, for messages.
    pub activations: &'a Path,
    /// Tensor prefixes of the layers reading the activations: `NAME.weight` `[n_out, n]`,
    /// optional `NAME.bias` `[n_out]`; fused (a bias is created when fusion needs one).
    pub next: &'a [String],
    /// Tensor prefixes of the layers producing the activations (several for a gated FFN:
    /// gate and up projections): rows of `NAME.weight` and entries of `NAME.bias` are sliced,
    /// bytes kept as stored.
    pub prev: &'a [String],
}

/// [`compress_layer`] on named tensors: checks every named tensor against the activations'
/// width before any work, runs the pipeline, writes the fused next layers back (dtypes kept)
/// and slices the producing layers. Every other tensor is left as it was.
pub fn compress_layer_tensors(
    backend: &Backend,
    activations: &mut dyn RowSource,
    tensors: LayerTensors<'_>,
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<LayerOutcome> {
    let n = activations.width();
    check_tensors(n, &tensors)?;
    let unlisted = unlisted_neighbours(tensors.file, tensors.next, tensors.prev, n);
    let file = tensors.file;
    let next_weights =
        read_next_tensors(file, tensors.next, n, tensors.source, tensors.activations)?;
    let released = release_next_weights(file, tensors.next);
    let next: Vec<NextLayer> = next_weights.iter().map(|x| x.layer(n)).collect();
    let compressed = compress_named_layer(
        backend,
        activations,
        Some(tensors.activations),
        &next,
        opts,
        progress,
    );
    let mut outcome = match compressed {
        Ok(outcome) => outcome,
        Err(e) => {
            restore_next_weights(file, tensors.next, &released, &next_weights)?;
            return Err(e);
        }
    };
    let encoded = match encode_fused(
        file,
        tensors.next,
        n,
        &outcome,
        &next_weights,
        tensors.source,
    ) {
        Ok(encoded) => encoded,
        Err(e) => {
            restore_next_weights(file, tensors.next, &released, &next_weights)?;
            return Err(e);
        }
    };
    for (name, tensor, created) in encoded {
        if created {
            outcome.report.notes.push(format!(
                "{name}: created to hold the fused constant term ({:?}; --no-bias fuses \
                 without one, for a model that must keep its layers bias-free)",
                tensor.dtype
            ));
        }
        file.insert(name, tensor);
    }
    for p in tensors.prev {
        for name in [tensor_name(p, "weight"), tensor_name(p, "bias")] {
            if let Some(t) = file.get(&name) {
                let sliced = slice_rows(t, &outcome.kept);
                file.insert(name, sliced);
            }
        }
    }
    outcome.report.name = tensors.prev.join(",");
    outcome.report.next = tensors.next.to_vec();
    outcome.report.notes.extend(unlisted);
    Ok(outcome)
}

/// Tensors beside the named layers (under the same parent module: `model.layers.3.mlp.` for
/// `model.layers.3.mlp.down_proj`; none for top-level names) that are neither producing nor
/// reading layers but have the layer's width n in a place that suggests one: a weight with
/// n rows or a vector of n values (a gate projection left out of `prev`, a per-neuron
/// scale), a weight with n columns (a second reader left out of `next`). They are copied
/// unchanged and so no longer fit the compressed layer; a note for each, since a shape can
/// match by chance.
fn unlisted_neighbours(
    file: &TensorFile,
    next: &[String],
    prev: &[String],
    n: usize,
) -> Vec<String> {
    let given: Vec<&String> = next.iter().chain(prev).collect();
    let parents: Vec<&str> = given.iter().map(|g| parent_module(g)).collect();
    let mut notes = Vec::new();
    for name in file.names() {
        let layer = parent_module(name);
        let module = parent_module(layer);
        // Top-level names (fc1, fc2, fc3; nn.Sequential's 0, 2, 4) are a chain whose widths
        // repeat by design: there a shape says nothing about a layer's role.
        if module.is_empty() || given.iter().any(|g| *g == layer) || !parents.contains(&module) {
            continue;
        }
        let Some(shape) = file.get(name).map(|t| t.shape.as_slice()) else {
            continue;
        };
        let role = match shape {
            [rows, _] if *rows == n => {
                "one row per neuron: if it produces the activations, it belongs with the \
                 producing layers (prev)"
            }
            [_, cols] if *cols == n => {
                "one column per neuron: if it reads the activations, it belongs with the \
                 reading layers (next)"
            }
            [len] if *len == n => "one value per neuron: it no longer matches the kept neurons",
            _ => continue,
        };
        notes.push(format!(
            "{name} {shape:?}: beside the layers given, with {role}; it was copied unchanged"
        ));
    }
    notes
}

/// The fused next layers (which read `n` neurons before the compression) encoded in their
/// tensors' dtypes (a new bias in the weight's), as `(name, tensor, whether the tensor is
/// new)`, before any is stored: a value the dtype
/// cannot hold (a dropped neuron that is a large multiple of a kept one folds its weight
/// into that neuron's, past F16's 65504, say) is an error naming the file, tensor and entry,
/// and the tensors stay as they were.
fn encode_fused(
    file: &TensorFile,
    names: &[String],
    n: usize,
    outcome: &LayerOutcome,
    read: &[NextTensors],
    source: &Path,
) -> Result<Vec<(String, Tensor, bool)>> {
    let k = outcome.kept.len();
    let mut encoded = Vec::new();
    for ((name, fused), read) in names.iter().zip(&outcome.next).zip(read) {
        let n_out = read.n_out;
        let w_name = tensor_name(name, "weight");
        let w_dtype = file.get(&w_name).expect("checked").dtype;
        let encode = |tensor_name: &str, values: &[f32], shape: Vec<usize>, dtype| {
            Tensor::from_f32(values, shape, dtype).map_err(|e| {
                Error::format(
                    source,
                    format!(
                        "the fused {tensor_name}: {e}; the dropped neurons folded into the kept \
                         ones weigh more than the tensor's dtype holds (keep other neurons, or \
                         store the layer in a wider dtype)"
                    ),
                )
            })
        };
        let mut weight = encode(&w_name, &fused.weight, vec![n_out, k], w_dtype)?;
        keep_f64_precision(&mut weight, file.get(&w_name), &fused.weight, |e| {
            (e / k) * n + outcome.kept[e % k]
        });
        encoded.push((w_name.clone(), weight, false));
        let b_name = tensor_name(name, "bias");
        if read.bias.is_some() || fused.bias.iter().any(|&b| b != 0.0) {
            let dtype = file.get(&b_name).map_or(w_dtype, |t| t.dtype);
            let mut bias = encode(&b_name, &fused.bias, vec![n_out], dtype)?;
            keep_f64_precision(&mut bias, file.get(&b_name), &fused.bias, |o| o);
            encoded.push((b_name, bias, read.bias.is_none()));
        }
    }
    Ok(encoded)
}

/// For an F64 tensor, the precision the computation in f32 would lose: entry e of `encoded`
/// (from the f32 values `fused`) that is entry `source(e)` of the `original` F64 tensor
/// takes the original's f64 value, plus the change fusion made to it (`fused` minus the
/// original rounded to f32). An entry fusion leaves alone (plain pruning, or a neuron the
/// fusion does not move) is copied exactly; a changed one carries the change at f32
/// precision. Other dtypes hold no more than f32: nothing to do.
fn keep_f64_precision(
    encoded: &mut Tensor,
    original: Option<&Tensor>,
    fused: &[f32],
    source: impl Fn(usize) -> usize,
) {
    let Some(original) = original.filter(|t| t.dtype == Dtype::F64 && encoded.dtype == Dtype::F64)
    else {
        return;
    };
    let value = |bytes: &[u8], i: usize| {
        f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))
    };
    for (e, &new) in fused.iter().enumerate() {
        let before = value(&original.bytes, source(e));
        let after = before + (new as f64 - before as f32 as f64);
        encoded.bytes[8 * e..8 * e + 8].copy_from_slice(&after.to_le_bytes());
    }
}

/// Empties the stored weights of the next layers `names` whose f32 copies are exact (F32,
/// F16, BF16). While a layer is compressed only those copies are read, and the stored
/// weights are replaced by the fused ones at the end: a wide layer's `n_out x n` would
/// otherwise be held twice (1.1 GB more at n = 32768, n_out = 8192, f32). Returns the
/// positions in `names` of the weights emptied.
fn release_next_weights(file: &mut TensorFile, names: &[String]) -> Vec<usize> {
    let mut released = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(t) = file.get_mut(&tensor_name(name, "weight")) {
            if matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                t.bytes = Vec::new();
                released.push(i);
            }
        }
    }
    released
}

/// Rebuilds the weights [`release_next_weights`] emptied (positions `released` in `names`)
/// from their exact f32 copies (`copies`, in the order of `names`), so that a failed
/// compression leaves the tensors as they were.
fn restore_next_weights(
    file: &mut TensorFile,
    names: &[String],
    released: &[usize],
    copies: &[NextTensors],
) -> Result<()> {
    for &i in released {
        if let Some(t) = file.get_mut(&tensor_name(&names[i], "weight")) {
            t.bytes = Tensor::from_f32(&copies[i].weight, t.shape.clone(), t.dtype)?.bytes;
        }
    }
    Ok(())
}

/// The plan [`compress_layer_tensors`] would follow on these tensors (see [`plan_layer`]),
/// after the same checks of the tensors (their values too: a weight that is not finite is
/// the same error), without reading the activations' data.
pub fn plan_layer_tensors(
    backend: &Backend,
    activations: &dyn RowSource,
    tensors: &LayerTensors<'_>,
    opts: &LayerOptions,
) -> Result<LayerPlan> {
    let next_rows = check_tensors(activations.width(), tensors)?;
    read_next_tensors(
        tensors.file,
        tensors.next,
        activations.width(),
        tensors.source,
        tensors.activations,
    )?;
    plan_layer(
        backend,
        activations.width(),
        activations.rows(),
        &next_rows,
        opts,
    )
}

/// Checks the named tensors against a layer of `n` neurons: every next layer's weight
/// `[n_out, n]` (floats) and bias `[n_out]`, every producing layer's weight with n rows and
/// bias `[n]`; then that no layer is named twice and none both as a next and as a producing
/// one. Returns
/// each next layer's n_out.
fn check_tensors(n: usize, tensors: &LayerTensors<'_>) -> Result<Vec<usize>> {
    let file: &TensorFile = tensors.file;
    let source = tensors.source;
    if tensors.next.is_empty() {
        return Err(Error::invalid(
            "name the layer(s) that read the activations (next)",
        ));
    }
    for name in tensors.next.iter().chain(tensors.prev) {
        check_layer_name(name)?;
    }
    let next_rows = tensors
        .next
        .iter()
        .map(|name| check_next_tensor(file, name, n, source, tensors.activations))
        .collect::<Result<Vec<usize>>>()?;
    for p in tensors.prev {
        let w_name = tensor_name(p, "weight");
        let w = float_tensor(file, &w_name, source)?;
        if w.shape.first() != Some(&n) {
            return Err(Error::format(
                source,
                format!(
                    "{w_name} has shape {:?}, expected {n} rows (one per neuron)",
                    w.shape
                ),
            ));
        }
        let b_name = tensor_name(p, "bias");
        if let Some(b) = file.get(&b_name) {
            if b.shape != [n] {
                return Err(Error::format(
                    source,
                    format!("{b_name} has shape {:?}, expected [{n}]", b.shape),
                ));
            }
        }
    }
    // Shapes first (they name the tensor that is wrong), then names that make no sense.
    for (i, name) in tensors.prev.iter().enumerate() {
        // Sliced twice, the layer would be cut down to the kept rows of its kept rows.
        if tensors.prev[..i].contains(name) {
            return Err(Error::invalid(format!(
                "producing layer {name} is given twice"
            )));
        }
    }
    for (i, name) in tensors.next.iter().enumerate() {
        if tensors.next[..i].contains(name) {
            return Err(Error::invalid(format!("next layer {name} is given twice")));
        }
        if tensors.prev.contains(name) {
            return Err(Error::invalid(format!(
                "{name} is given both as a layer producing the activations and as one reading them"
            )));
        }
    }
    Ok(next_rows)
}

/// Checks one layer reading the `n` neurons of `activations`: `NAME.weight` `[n_out, n]` and
/// the optional `NAME.bias` `[n_out]`, floats. Returns n_out. Errors name the file `source`
/// and the tensor whose shape or dtype is wrong.
fn check_next_tensor(
    file: &TensorFile,
    name: &str,
    n: usize,
    source: &Path,
    activations: &Path,
) -> Result<usize> {
    let w_name = tensor_name(name, "weight");
    let w = float_tensor(file, &w_name, source)?;
    if w.shape.len() != 2 || w.shape[1] != n {
        return Err(Error::format(
            source,
            format!(
                "{w_name} has shape {:?}, expected [n_out, {n}] to read the {n} neurons of {}",
                w.shape,
                activations.display()
            ),
        ));
    }
    let n_out = w.shape[0];
    if n_out == 0 {
        return Err(Error::format(
            source,
            format!("{w_name} has shape {:?}: a layer with no outputs", w.shape),
        ));
    }
    let b_name = tensor_name(name, "bias");
    if file.get(&b_name).is_some() {
        let b = float_tensor(file, &b_name, source)?;
        if b.shape != [n_out] {
            return Err(Error::format(
                source,
                format!("{b_name} has shape {:?}, expected [{n_out}]", b.shape),
            ));
        }
    }
    Ok(n_out)
}

/// A layer that reads the compressed activations, as read from named tensors (f32).
#[derive(Clone, Debug)]
pub struct NextTensors {
    /// `NAME.weight`, n_out x n, row-major.
    pub weight: Vec<f32>,
    /// `NAME.bias`, when there is one.
    pub bias: Option<Vec<f32>>,
    /// Rows of the weight.
    pub n_out: usize,
}

impl NextTensors {
    /// The layer as fusion and selection take it, reading `n_in` neurons.
    pub fn layer(&self, n_in: usize) -> NextLayer<'_> {
        NextLayer {
            weight: &self.weight,
            bias: self.bias.as_deref(),
            n_out: self.n_out,
            n_in,
        }
    }
}

/// A layer's name as a list of names gives it: not empty (a stray comma) and without spaces
/// around it (`--next "a, b"`), which a tensor name never has.
fn check_layer_name(name: &str) -> Result<()> {
    if name.is_empty() {
        Err(Error::invalid(
            "a layer's name is empty (a stray comma in the list of names?)",
        ))
    } else if name.trim() != name {
        Err(Error::invalid(format!(
            "layer name {name:?} has spaces around it (separate the names by commas alone: \
             a,b)"
        )))
    } else {
        Ok(())
    }
}

/// Reads the layers `names` that read the `n` neurons of `activations` from `file` (read
/// from `source`): `NAME.weight` `[n_out, n]` and the optional `NAME.bias` `[n_out]`, any
/// float dtype, as f32. Errors name the file and the tensor whose shape or dtype is wrong.
pub fn read_next_tensors(
    file: &TensorFile,
    names: &[String],
    n: usize,
    source: &Path,
    activations: &Path,
) -> Result<Vec<NextTensors>> {
    for (i, name) in names.iter().enumerate() {
        check_layer_name(name)?;
        // Read twice, a layer would count twice in what the selection explains.
        if names[..i].contains(name) {
            return Err(Error::invalid(format!("next layer {name} is given twice")));
        }
    }
    names
        .iter()
        .map(|name| {
            let n_out = check_next_tensor(file, name, n, source, activations)?;
            let in_file = |e: Error| e.in_file(source);
            let w_name = tensor_name(name, "weight");
            let weight = file
                .get(&w_name)
                .expect("checked")
                .finite_f32(&w_name)
                .map_err(in_file)?;
            let b_name = tensor_name(name, "bias");
            let bias = file
                .get(&b_name)
                .map(|b| b.finite_f32(&b_name))
                .transpose()
                .map_err(in_file)?;
            Ok(NextTensors {
                weight,
                bias,
                n_out,
            })
        })
        .collect()
}

/// The tensor `name`, which must exist and hold floats.
fn float_tensor<'a>(file: &'a TensorFile, name: &str, source: &Path) -> Result<&'a Tensor> {
    let t = file.get(name).ok_or_else(|| {
        // Layers are named by prefix: "down" for down.weight and down.bias.
        let hint = [
            ".weight.weight",
            ".bias.weight",
            ".weight.bias",
            ".bias.bias",
        ]
        .iter()
        .find_map(|doubled| name.strip_suffix(doubled))
        .filter(|prefix| file.get(&tensor_name(prefix, "weight")).is_some())
        .map_or(String::new(), |prefix| {
            format!(": layers are given by prefix, {prefix} for {prefix}.weight")
        });
        Error::format(source, format!("no tensor {name}{hint}"))
    })?;
    match t.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => Ok(t),
        other => Err(Error::format(
            source,
            format!("{name} is {other:?}, expected F32, F16, BF16 or F64"),
        )),
    }
}

/// Rows `keep` (along the first dimension) of `t`, bytes as stored.
pub(crate) fn slice_rows(t: &Tensor, keep: &[usize]) -> Tensor {
    let rows = t.shape[0];
    let row_bytes = t.bytes.len() / rows.max(1);
    let mut bytes = Vec::with_capacity(row_bytes * keep.len());
    for &i in keep {
        bytes.extend_from_slice(&t.bytes[i * row_bytes..(i + 1) * row_bytes]);
    }
    let mut shape = t.shape.clone();
    shape[0] = keep.len();
    Tensor {
        dtype: t.dtype,
        shape,
        bytes,
    }
}

/// Several next layers as one: their rows stacked (PyTorch layout), missing biases as
/// zeros. Fusing the stack is fusing each: the normal equations share their left-hand side
/// and every output row is its own right-hand side. A single next layer is borrowed, not
/// copied.
struct StackedNext<'a> {
    weight: Cow<'a, [f32]>,
    bias: Option<Cow<'a, [f32]>>,
    /// Rows of each next layer, in order.
    rows: Vec<usize>,
    n_in: usize,
}

impl<'a> StackedNext<'a> {
    fn new(next: &[NextLayer<'a>], n: usize) -> Result<Self> {
        if next.is_empty() {
            return Err(Error::invalid(
                "fusion needs the layer(s) that read the activations",
            ));
        }
        for (i, l) in next.iter().enumerate() {
            if l.n_in != n {
                return Err(Error::invalid(format!(
                    "next layer {i} reads {} inputs but the activations have {n} neurons",
                    l.n_in
                )));
            }
        }
        let rows = next.iter().map(|l| l.n_out).collect();
        if let [one] = next {
            return Ok(Self {
                weight: Cow::Borrowed(one.weight),
                bias: one.bias.map(Cow::Borrowed),
                rows,
                n_in: n,
            });
        }
        let total: usize = next.iter().map(|l| l.n_out).sum();
        let mut weight = Vec::with_capacity(total * n);
        for l in next {
            weight.extend_from_slice(l.weight);
        }
        let bias = next.iter().any(|l| l.bias.is_some()).then(|| {
            next.iter()
                .flat_map(|l| match l.bias {
                    Some(b) => b.to_vec(),
                    None => vec![0.0; l.n_out],
                })
                .collect()
        });
        Ok(Self {
            weight: Cow::Owned(weight),
            bias: bias.map(Cow::Owned),
            rows,
            n_in: n,
        })
    }

    fn view(&self) -> NextLayer<'_> {
        NextLayer {
            weight: &self.weight,
            bias: self.bias.as_deref(),
            n_out: self.rows.iter().sum(),
            n_in: self.n_in,
        }
    }

    /// The stacked fused layer cut back into one per next layer.
    fn split(&self, fused: FusedLayer) -> Vec<FusedLayer> {
        if self.rows.len() == 1 {
            return vec![fused];
        }
        let k = fused.weight.len() / self.rows.iter().sum::<usize>().max(1);
        let mut start = 0;
        self.rows
            .iter()
            .enumerate()
            .map(|(part_index, &rows)| {
                let error = fused.group_errors[part_index];
                let part = FusedLayer {
                    weight: fused.weight[start * k..(start + rows) * k].to_vec(),
                    bias: fused.bias[start..start + rows].to_vec(),
                    ridge: fused.ridge,
                    relative_error: error,
                    group_errors: vec![error],
                };
                start += rows;
                part
            })
            .collect()
    }
}

/// How the kept neurons of a layer will be found: a given list, or a method and a size.
/// Checked before the statistics pass, so that a bad size costs nothing.
pub(crate) struct SelectionPlan {
    given: Option<Vec<usize>>,
    size: SelectionSize,
}

impl SelectionPlan {
    pub(crate) fn new(opts: &LayerOptions, n: usize) -> Result<Self> {
        let given = match &opts.keep {
            KeepSpec::Indices(v) => Some(check_keep(v, n)?),
            _ => None,
        };
        let size = opts.keep.size(n)?;
        if given.is_none() {
            match (opts.method, size) {
                (SelectionMethod::Dpp, SelectionSize::Exactly(_)) => {
                    return Err(Error::invalid(
                        "a DPP chooses its own size: use kdpp for an exact number of neurons",
                    ))
                }
                (SelectionMethod::Dpp, SelectionSize::Drawn) => {}
                (method, SelectionSize::Drawn) => {
                    return Err(Error::invalid(format!(
                        "{method} needs a number of neurons to keep"
                    )))
                }
                (_, SelectionSize::Exactly(k)) if k == 0 || k > n => {
                    return Err(Error::invalid(format!(
                        "cannot keep {k} of {n} neurons: k must be between 1 and {n}"
                    )))
                }
                _ => {}
            }
        }
        Ok(Self { given, size })
    }

    pub(crate) fn needs_kernel(&self, opts: &LayerOptions) -> bool {
        self.given.is_none() && opts.method.needs_kernel()
    }

    /// Whether the one-pass route keeps G in f32 between the statistics and the fusion:
    /// when the method builds a kernel (G would sit beside it) and does not read G itself,
    /// on the CPU backend (see [`LayerStats::new_rounding_gram`]).
    pub(crate) fn rounds_gram(&self, opts: &LayerOptions, backend: &Backend) -> bool {
        self.needs_kernel(opts) && !opts.method.selects_from_gram() && backend.gpu().is_none()
    }

    /// The given kept neurons, sorted, if the selection is given.
    pub(crate) fn given(&self) -> Option<&[usize]> {
        self.given.as_deref()
    }

    /// How many neurons the selection keeps.
    pub(crate) fn size(&self) -> SelectionSize {
        self.size
    }

    pub(crate) fn method_name(&self, opts: &LayerOptions) -> &'static str {
        match self.given {
            Some(_) => "given",
            None => opts.method.name(),
        }
    }
}

/// Stage times, peak memory and notes of one layer, and the GPU-to-CPU fallback.
pub(crate) struct LayerWork<'a> {
    backend: &'a Backend,
    fallback: bool,
    pub(crate) seconds: Vec<(String, f64)>,
    /// The process's peak resident memory after each stage.
    peak_rss: Vec<(String, Option<u64>)>,
    pub(crate) notes: Vec<String>,
}

impl<'a> LayerWork<'a> {
    pub(crate) fn new(backend: &'a Backend, fallback: bool) -> Self {
        Self {
            backend,
            fallback,
            seconds: Vec::new(),
            peak_rss: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records stage `name` as having run since `start`, and the peak memory after it.
    pub(crate) fn stage(&mut self, name: &str, start: Instant) {
        self.seconds
            .push((name.to_string(), start.elapsed().as_secs_f64()));
        self.peak_rss.push((name.to_string(), memory::peak_rss()));
    }

    /// What the report says about memory: the plan's figures (when there was a plan) and
    /// the peaks measured after each stage.
    pub(crate) fn memory_report(&self, plan: Option<&LayerPlan>) -> MemoryReport {
        MemoryReport {
            planned_peak_bytes: plan.map(|p| p.memory.peak()),
            rss_at_plan_bytes: plan.and_then(|p| p.rss_at_plan),
            available_bytes: plan.and_then(|p| p.available.bytes),
            peak_rss_bytes: memory::peak_rss(),
            peak_rss_after: self.peak_rss.clone(),
        }
    }

    /// Runs `work` on the backend; with the fallback on, a GPU device error runs it again on
    /// the CPU and leaves a note.
    pub(crate) fn on_backend<T>(
        &mut self,
        what: &str,
        mut work: impl FnMut(&Backend) -> Result<T>,
    ) -> Result<T> {
        match work(self.backend) {
            Err(Error::Gpu(e)) if self.fallback && self.backend.gpu().is_some() => {
                self.notes.push(format!(
                    "{what}: the GPU failed ({e}); continued on the CPU"
                ));
                work(&Backend::Cpu)
            }
            other => other,
        }
    }

    /// The stage `statistics`: one pass of `source` through the [`LayerStats`] that `new`
    /// makes for the backend and the width, whose results `finish` takes.
    fn statistics<T>(
        &mut self,
        source: &mut dyn RowSource,
        progress: &mut dyn Progress,
        new: impl Fn(&Backend, usize) -> Result<LayerStats>,
        finish: impl Fn(LayerStats) -> Result<T>,
    ) -> Result<T> {
        let t = Instant::now();
        let n = source.width();
        let statistics = self.on_backend("statistics", |b| {
            let mut stats = new(b, n)?;
            stats.push_source(source, "statistics", progress)?;
            finish(stats)
        })?;
        self.stage("statistics", t);
        Ok(statistics)
    }
}

/// The outcome of [`select_neurons`].
pub(crate) struct Selected {
    pub(crate) kept: Vec<usize>,
    pub(crate) beta: Option<f64>,
    pub(crate) diversity: Option<Diversity>,
    /// Which eigendecomposition a DPP draw came from ([`LayerSelector::eigen_path`]).
    pub(crate) eigen_path: Option<String>,
    /// How fusion-swap's search went ([`LayerSelector::last_swap_search`]).
    pub(crate) swap_search: Option<SwapSearch>,
}

/// What every pipeline does once a layer's statistics are in: the kernel (when the method
/// needs one, built over `distances`), and the selection. `stats` is needed by the methods
/// that choose from G (importance). The kernel is dropped before returning, so that the
/// fusion that follows does not hold it. Stages `kernel`, `select`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_neurons(
    work: &mut LayerWork<'_>,
    stats: Option<&GramStats>,
    distances: Option<Distances>,
    next: NextLayer<'_>,
    plan: &SelectionPlan,
    opts: &LayerOptions,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<Selected> {
    let n = next.n_in;
    let kernel: Option<RbfKernel> = match distances {
        Some(d) if plan.needs_kernel(opts) => {
            let t = Instant::now();
            let kernel = rbf_from_distances(d, opts.beta, opts.eps)?;
            work.stage("kernel", t);
            Some(kernel)
        }
        _ => None,
    };

    let t = Instant::now();
    let beta = kernel.as_ref().map(|k| k.beta);
    let (kept, diversity, eigen_path, swap_search) = match &plan.given {
        Some(given) => (given.clone(), None, None, None),
        None => {
            let scores = if opts.method == SelectionMethod::Importance {
                let stats = stats.ok_or_else(|| {
                    Error::invalid("importance selection needs the layer's Gram statistics")
                })?;
                Some(importance_scores(stats, next.weight, next.n_out)?)
            } else {
                None
            };
            // The selector owns the kernel, so that a wide layer's eigendecomposition
            // reduces it in place instead of copying it.
            let mut selector = match kernel {
                Some(k) => LayerSelector::owning(n, k.matrix, scores.as_deref()),
                None => LayerSelector::new(n, None, scores.as_deref()),
            }
            .single_draw();
            if let Some(stats) = stats {
                selector = selector.with_next_layers(stats, &[next]);
            }
            let eigen_path = matches!(
                opts.method,
                SelectionMethod::KDpp | SelectionMethod::Dpp | SelectionMethod::QualityKDpp
            )
            .then(|| selector.eigen_path().to_string());
            let kept = selector.select_with_progress(opts.method, plan.size, seed, progress)?;
            // Not when the partial eigendecomposition has reduced the kernel in place.
            let diversity = selector.with_kernel(|l| Ok(diversity(l, &kept))).ok();
            (kept, diversity, eigen_path, selector.last_swap_search())
        }
    };
    work.stage("select", t);
    Ok(Selected {
        beta,
        diversity,
        eigen_path,
        swap_search,
        kept,
    })
}

/// The columns route's stages `statistics` (the column sums and variances) and `select`
/// (greedy MAP reading kernel columns from further passes over `source`), on the CPU.
fn select_from_columns(
    work: &mut LayerWork<'_>,
    source: &mut dyn RowSource,
    plan: &SelectionPlan,
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<Selected> {
    let n = source.width();
    let k = match plan.size() {
        SelectionSize::Exactly(k) => k,
        SelectionSize::Drawn => {
            return Err(Error::invalid(
                "greedy MAP needs a number of neurons to keep",
            ))
        }
    };
    if work.backend.gpu().is_some() {
        work.notes
            .push("the columns route computes kernel columns on the CPU".into());
    }
    let t = Instant::now();
    let first = columns::FirstPass::read(source, k, opts.beta, opts.eps, progress)?;
    work.stage("statistics", t);
    let t = Instant::now();
    let batch = columns::batch_columns(n, k);
    let found = first.greedy(source, batch, progress)?;
    work.notes.push(format!(
        "greedy MAP computed {} kernel columns for its {k} picks in {} passes over the \
         activations, {batch} columns at most per pass",
        found.columns_computed,
        found.passes - 1
    ));
    work.stage("select", t);
    Ok(Selected {
        kept: found.kept,
        beta: Some(found.beta),
        diversity: Some(found.diversity),
        eigen_path: None,
        swap_search: None,
    })
}

/// Stage `fuse` from the layer's Gram statistics, into `next` (several next layers stacked,
/// rows of each as the slice says).
pub(crate) fn fuse_from_gram(
    work: &mut LayerWork<'_>,
    stats: &GramStats,
    kept: &[usize],
    (next, rows): (NextLayer<'_>, &[usize]),
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<FusedLayer> {
    note_few_rows(work, stats.samples, kept.len(), next.n_in, opts);
    let t = Instant::now();
    progress.start("fuse", 1);
    let fused = work.on_backend("fuse", |b| {
        fuse_stacked(b, stats, kept, next, rows, &opts.fusion)
    });
    progress.finish();
    work.stage("fuse", t);
    fused
}

/// Calibration rows per unknown of the fusion's least squares (k kept neurons and the
/// constant, per output) below which the report warns. Least squares with p unknowns fits
/// m rows of noise to about (1 - p/m) of its energy, and new rows see about (1 + p/m) of it:
/// at 10 rows per unknown the error on the calibration set understates the error on new
/// inputs by about 10%; at 1 it is 0 whatever the layer (a review measured a reported 0.0001
/// for 50 rows and k = 64, and 1.81 on new rows, worse than pruning).
pub const ROWS_PER_FUSION_UNKNOWN: usize = 10;

/// The note of [`ROWS_PER_FUSION_UNKNOWN`], when `rows` calibration rows are too few to fuse
/// the other neurons of `n` into `k` kept ones (none when all are kept: nothing is fitted).
fn note_few_rows(work: &mut LayerWork<'_>, rows: usize, k: usize, n: usize, opts: &LayerOptions) {
    let unknowns = k + usize::from(opts.fusion.mode == FusionMode::Fuse);
    let fused = opts.fusion.mode != FusionMode::Prune && k < n;
    if fused && rows < ROWS_PER_FUSION_UNKNOWN * unknowns {
        work.notes.push(format!(
            "fusion: {rows} calibration rows for {unknowns} unknowns per output: the fused \
             layer fits these rows more closely than it will fit new inputs, and the \
             next-layer error reported here understates the error on them (use at least \
             {} rows)",
            ROWS_PER_FUSION_UNKNOWN * unknowns
        ));
    }
}

/// Stages `fusion statistics` (a second pass over `activations`) and `fuse` (the solve),
/// without the layer's Gram.
fn fuse_from_rows(
    work: &mut LayerWork<'_>,
    activations: &mut dyn RowSource,
    kept: &[usize],
    (next, rows): (NextLayer<'_>, &[usize]),
    opts: &LayerOptions,
    progress: &mut dyn Progress,
) -> Result<FusedLayer> {
    if work.backend.gpu().is_some() {
        work.notes.push(
            "fusion statistics: computed on the CPU (the second pass has no GPU kernel yet)".into(),
        );
    }
    let t = Instant::now();
    let system = fusion_system_from_rows(activations, kept, next, rows, &opts.fusion, progress)?;
    work.stage("fusion statistics", t);
    note_few_rows(work, activations.rows(), kept.len(), next.n_in, opts);
    let t = Instant::now();
    progress.start("fuse", 1);
    let fused = solve_fusion(&system, kept, next, &opts.fusion);
    progress.finish();
    work.stage("fuse", t);
    fused
}
