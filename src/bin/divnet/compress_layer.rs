//! `divnet compress-layer`: one hidden layer of any network stored as safetensors, given its
//! activations on a calibration set. Keeps a subset of its neurons, fuses the dropped ones
//! into the next layer, slices the layer(s) that produce it, copies everything else.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context};
use divnet::compress::{fusion_name, KeepSpec, DEFAULT_EPS};
use divnet::fusion::{fuse_next_layer, FusionMode, FusionOptions, NextLayer};
use divnet::io::keep::read_keep_list;
use divnet::io::npy::read_matrix;
use divnet::io::safetensors::{read_safetensors, write_safetensors, Tensor};
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::model::tensor_name;
use divnet::select::{importance_scores, LayerSelector, SelectionMethod, SelectionSize};

use crate::common::{
    float_tensor, read_next_tensors, select_backend, selection_method_parser, with_cpu_fallback,
    write_json, BackendArg, NextTensors, StageTimer,
};

/// Compress one hidden layer of a network stored as safetensors.
///
/// The layer's activations (m samples x n neurons) decide which neurons to keep; the next
/// layer `NAME.weight` (n_out x n) absorbs the dropped ones by least squares (its bias too,
/// created if missing), or each of several next layers when more than one reads the layer;
/// the layers that produce the activations (`--prev`) keep only the rows of the kept
/// neurons. Every other tensor is copied unchanged, dtypes kept.
#[derive(clap::Args)]
pub struct Args {
    /// Activations of the layer: m x n npy (samples x neurons; f16, f32 or f64).
    #[arg(long)]
    activations: PathBuf,
    /// The network: safetensors (a PyTorch state dict).
    #[arg(long)]
    weights: PathBuf,
    /// Tensor prefix of the next layer: NAME.weight [n_out, n], optional NAME.bias [n_out].
    /// Several (comma list) when several layers read this one: each is fused, and the
    /// selection methods that look at the next layer use them all.
    #[arg(long, value_delimiter = ',', required = true)]
    next: Vec<String>,
    /// Tensor prefixes of the layer(s) producing the activations (several for a gated FFN,
    /// e.g. gate and up projections): rows of NAME.weight and entries of NAME.bias are sliced.
    #[arg(long, value_delimiter = ',')]
    prev: Vec<String>,
    /// Number of neurons to keep.
    #[arg(short = 'k', group = "size")]
    k: Option<usize>,
    /// Fraction of neurons to keep, in (0, 1].
    #[arg(long, group = "size")]
    keep_ratio: Option<f64>,
    /// The neurons to keep: a JSON array of 0-based indices (skips selection).
    #[arg(long, group = "size")]
    keep: Option<PathBuf>,
    /// Selection method (dpp chooses the number of neurons itself; fusion-greedy keeps the
    /// neurons that best explain the next layers' pre-activation; quality-kdpp and
    /// quality-greedy weigh the kernel by the energy each neuron sends into them).
    #[arg(long = "select", default_value = "kdpp", value_parser = selection_method_parser())]
    select: SelectionMethod,
    /// RBF bandwidth of the DPP kernel: paper (10/m), median or a positive number.
    #[arg(long, default_value = "paper")]
    beta: Beta,
    /// Added to the kernel's diagonal.
    #[arg(long, default_value_t = DEFAULT_EPS)]
    eps: f64,
    /// Plain pruning: slice the next layer's columns without fusing the dropped neurons.
    #[arg(long, conflicts_with = "no_bias")]
    no_fusion: bool,
    /// Fuse without the constant term (the paper's original objective; bias untouched).
    #[arg(long)]
    no_bias: bool,
    /// Ridge of the fusion system, as a fraction of its mean eigenvalue.
    #[arg(long, default_value_t = FusionOptions::default().ridge_factor)]
    ridge_factor: f64,
    /// Seed of the random selection methods.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Output safetensors (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Report (JSON): kept indices, ridge, reconstruction error, time per stage.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    backend: &'a str,
    samples: usize,
    neurons_before: usize,
    kept: &'a [usize],
    method: &'a str,
    fusion: &'a str,
    beta: Option<f64>,
    /// The largest ridge over the next layers.
    ridge: f64,
    /// ||Z - Z'||_F / ||Z||_F over all next layers together.
    relative_error: f64,
    next: Vec<NextReport<'a>>,
    seconds: &'a [(String, f64)],
}

#[derive(serde::Serialize)]
struct NextReport<'a> {
    name: &'a str,
    ridge: f64,
    relative_error: f64,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let method = args.select;
    let mode = if args.no_fusion {
        FusionMode::Prune
    } else if args.no_bias {
        FusionMode::FuseNoBias
    } else {
        FusionMode::Fuse
    };
    let mut timer = StageTimer::default();

    let a = timer.try_stage("read", || read_matrix(&args.activations))?;
    let (m, n) = (a.shape[0], a.shape[1]);
    // Every input file is checked before any work, so that a bad one is the only message.
    let given_keep = args
        .keep
        .as_ref()
        .map(|path| read_keep_list(path, n))
        .transpose()?;
    let mut file = read_safetensors(&args.weights)?;
    let weights = args.weights.display().to_string();
    let mut nexts = Vec::with_capacity(args.next.len());
    for name in &args.next {
        ensure!(
            !args.prev.contains(name),
            "{name} is given as both --prev and --next"
        );
        ensure!(
            nexts.iter().all(|x: &NextTensors| &x.name != name),
            "--next {name} is given twice"
        );
        nexts.push(read_next_tensors(
            &file,
            name,
            n,
            &weights,
            &args.activations,
        )?);
    }
    for p in &args.prev {
        let name = tensor_name(p, "weight");
        let w = float_tensor(&file, &name, &weights)?;
        ensure!(
            w.shape.first() == Some(&n),
            "{weights}: {name} has shape {:?}, expected {n} rows (one per neuron)",
            w.shape
        );
        let bname = tensor_name(p, "bias");
        if let Some(b) = file.get(&bname) {
            ensure!(
                b.shape == [n],
                "{weights}: {bname} has shape {:?}, expected [{n}]",
                b.shape
            );
        }
    }
    for next in &nexts {
        eprintln!(
            "activations: {m} samples x {n} neurons; next layer {}: {} x {n}",
            next.name, next.n_out
        );
    }

    let backend = select_backend(args.backend)?;
    let mut rounded = Vec::new();
    let rows = ActivationRows::from_npy(&a, &mut rounded);
    let activations = args.activations.display().to_string();
    let stats = timer
        .stage("gram", || {
            with_cpu_fallback(args.backend, &backend, |b| gram_stats(b, rows, n))
        })
        .with_context(|| activations.clone())?;

    let (keep, method_name, beta) = match given_keep {
        Some(mut keep) => {
            keep.sort_unstable();
            (keep, "given", None)
        }
        None => {
            let size = if method == SelectionMethod::Dpp {
                ensure!(
                    args.k.is_none() && args.keep_ratio.is_none(),
                    "--select dpp chooses its own size: drop -k/--keep-ratio, or use --select kdpp"
                );
                SelectionSize::Drawn
            } else if let Some(k) = args.k {
                SelectionSize::Exactly(k)
            } else if let Some(r) = args.keep_ratio {
                KeepSpec::Ratio(r).size(n)?
            } else {
                bail!("say which neurons to keep: -k K, --keep-ratio R, --keep FILE.json or --select dpp")
            };
            let kernel = if method.needs_kernel() {
                Some(
                    timer
                        .stage("kernel", || {
                            with_cpu_fallback(args.backend, &backend, |b| {
                                rbf_kernel(b, rows, n, args.beta, args.eps)
                            })
                        })
                        .with_context(|| activations.clone())?,
                )
            } else {
                None
            };
            let next_layers: Vec<NextLayer> = nexts.iter().map(|x| x.layer(n)).collect();
            let scores = if method == SelectionMethod::Importance {
                // The next layers' columns stacked: one norm per neuron over all of them.
                let stacked: Vec<f32> = nexts
                    .iter()
                    .flat_map(|x| x.weight.iter().copied())
                    .collect();
                let rows = nexts.iter().map(|x| x.n_out).sum();
                Some(importance_scores(&stats, &stacked, rows)?)
            } else {
                None
            };
            let selector =
                LayerSelector::new(n, kernel.as_ref().map(|k| &k.matrix), scores.as_deref())
                    .with_next_layers(&stats, &next_layers);
            let keep = timer.stage("select", || selector.select(method, size, args.seed))?;
            (keep, method.name(), kernel.map(|k| k.beta))
        }
    };
    let k = keep.len();

    let opts = FusionOptions {
        mode,
        ridge_factor: args.ridge_factor,
    };
    let fused = timer.stage("fuse", || {
        nexts
            .iter()
            .map(|next| {
                with_cpu_fallback(args.backend, &backend, |b| {
                    fuse_next_layer(b, &stats, &keep, next.layer(n), &opts)
                })
            })
            .collect::<divnet::Result<Vec<_>>>()
    })?;

    // Each next layer: fused weights, and a bias when it had one or fusion created one.
    for (next, fused) in nexts.iter().zip(&fused) {
        let w_dtype = file
            .get(&next.weight_name)
            .map(|t| t.dtype)
            .expect("checked");
        file.insert(
            next.weight_name.clone(),
            Tensor::from_f32(&fused.weight, vec![next.n_out, k], w_dtype)?,
        );
        let had_bias = next.bias.is_some();
        if had_bias || fused.bias.iter().any(|&b| b != 0.0) {
            let dtype = file.get(&next.bias_name).map_or(w_dtype, |t| t.dtype);
            if !had_bias {
                eprintln!(
                    "{}: created to hold the fused constant term ({dtype:?})",
                    next.bias_name
                );
            }
            file.insert(
                next.bias_name.clone(),
                Tensor::from_f32(&fused.bias, vec![next.n_out], dtype)?,
            );
        }
    }
    let z_energy: f64 = fused.iter().map(|f| f.z_energy).sum();
    let relative_error = if z_energy > 0.0 {
        (fused
            .iter()
            .map(|f| f.relative_error.powi(2) * f.z_energy)
            .sum::<f64>()
            / z_energy)
            .sqrt()
    } else {
        0.0
    };
    let ridge = fused.iter().map(|f| f.ridge).fold(0.0, f64::max);
    // The producing layers: rows of the kept neurons, bytes copied as stored.
    for p in &args.prev {
        for name in [tensor_name(p, "weight"), tensor_name(p, "bias")] {
            if let Some(t) = file.get(&name) {
                let sliced = slice_rows(t, &keep);
                file.insert(name, sliced);
            }
        }
    }
    timer.stage("write", || write_safetensors(&args.out, &file))?;

    if nexts.len() > 1 {
        for (next, f) in nexts.iter().zip(&fused) {
            eprintln!(
                "{}: ridge {:.2e}, next-layer error {:.4}",
                next.name, f.ridge, f.relative_error
            );
        }
    }
    eprintln!(
        "kept {k} of {n} neurons ({method_name}), fusion {}: ridge {ridge:.2e}, next-layer error {relative_error:.4}",
        fusion_name(mode),
    );
    if let Some(path) = &args.report {
        let report = Report {
            backend: backend.name(),
            samples: m,
            neurons_before: n,
            kept: &keep,
            method: method_name,
            fusion: fusion_name(mode),
            beta,
            ridge,
            relative_error,
            next: nexts
                .iter()
                .zip(&fused)
                .map(|(x, f)| NextReport {
                    name: &x.name,
                    ridge: f.ridge,
                    relative_error: f.relative_error,
                })
                .collect(),
            seconds: timer.stages(),
        };
        write_json(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} -> {} neurons, next-layer error {:.4}; wrote {}",
        n,
        k,
        relative_error,
        args.out.display()
    );
    Ok(())
}

/// Rows `keep` (along the first dimension) of `t`, bytes as stored.
fn slice_rows(t: &Tensor, keep: &[usize]) -> Tensor {
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
