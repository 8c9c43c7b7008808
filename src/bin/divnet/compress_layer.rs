//! `divnet compress-layer`: one hidden layer of any network stored as safetensors, given its
//! activations on a calibration set. Keeps a subset of its neurons, fuses the dropped ones
//! into the next layer, slices the layer(s) that produce it, copies everything else.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context};
use divnet::compress::{fusion_name, KeepSpec, DEFAULT_EPS};
use divnet::fusion::{fuse_next_layer, FusionMode, FusionOptions, NextLayer};
use divnet::io::keep::read_keep_list;
use divnet::io::npy::read_matrix;
use divnet::io::safetensors::{read_safetensors, write_safetensors, Tensor, TensorFile};
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::model::tensor_name;
use divnet::select::{importance_scores, LayerSelector, SelectionMethod, SelectionSize};
use safetensors::Dtype;

use crate::common::{select_backend, with_cpu_fallback, write_json, BackendArg, StageTimer};

/// Compress one hidden layer of a network stored as safetensors.
///
/// The layer's activations (m samples x n neurons) decide which neurons to keep; the next
/// layer `NAME.weight` (n_out x n) absorbs the dropped ones by least squares (its bias too,
/// created if missing); the layers that produce the activations (`--prev`) keep only the
/// rows of the kept neurons. Every other tensor is copied unchanged, dtypes kept.
#[derive(clap::Args)]
pub struct Args {
    /// Activations of the layer: m x n npy (samples x neurons; f16, f32 or f64).
    #[arg(long)]
    activations: PathBuf,
    /// The network: safetensors (a PyTorch state dict).
    #[arg(long)]
    weights: PathBuf,
    /// Tensor prefix of the next layer: NAME.weight [n_out, n], optional NAME.bias [n_out].
    #[arg(long)]
    next: String,
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
    /// Selection method (dpp chooses the number of neurons itself).
    #[arg(long = "select", default_value = "kdpp", value_parser = ["kdpp", "dpp", "greedy", "random", "importance"])]
    select: String,
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
    ridge: f64,
    relative_error: f64,
    seconds: &'a [(String, f64)],
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let method: SelectionMethod = args.select.parse()?;
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
    let next_w_name = tensor_name(&args.next, "weight");
    let next_b_name = tensor_name(&args.next, "bias");
    let next_w = float_tensor(&file, &next_w_name, &weights)?;
    ensure!(
        next_w.shape.len() == 2 && next_w.shape[1] == n,
        "{weights}: {next_w_name} has shape {:?}, expected [n_out, {n}] to read the {n} \
         neurons of {}",
        next_w.shape,
        args.activations.display()
    );
    let n_out = next_w.shape[0];
    let next_weight = next_w.to_f32()?;
    let next_bias = match file.get(&next_b_name) {
        Some(_) => {
            let b = float_tensor(&file, &next_b_name, &weights)?;
            ensure!(
                b.shape == [n_out],
                "{weights}: {next_b_name} has shape {:?}, expected [{n_out}]",
                b.shape
            );
            Some(b.to_f32()?)
        }
        None => None,
    };
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
    eprintln!(
        "activations: {m} samples x {n} neurons; next layer {}: {n_out} x {n}",
        args.next
    );

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
            let scores = if method == SelectionMethod::Importance {
                Some(importance_scores(&stats, &next_weight, n_out)?)
            } else {
                None
            };
            let selector =
                LayerSelector::new(n, kernel.as_ref().map(|k| &k.matrix), scores.as_deref());
            let keep = timer.stage("select", || selector.select(method, size, args.seed))?;
            (keep, method.name(), kernel.map(|k| k.beta))
        }
    };
    let k = keep.len();

    let opts = FusionOptions {
        mode,
        ridge_factor: args.ridge_factor,
    };
    let next = NextLayer {
        weight: &next_weight,
        bias: next_bias.as_deref(),
        n_out,
        n_in: n,
    };
    let fused = timer.stage("fuse", || {
        with_cpu_fallback(args.backend, &backend, |b| {
            fuse_next_layer(b, &stats, &keep, next, &opts)
        })
    })?;

    // The next layer: fused weights, and a bias when it had one or fusion created one.
    let w_dtype = file.get(&next_w_name).map(|t| t.dtype).expect("checked");
    file.insert(
        next_w_name,
        Tensor::from_f32(&fused.weight, vec![n_out, k], w_dtype)?,
    );
    let had_bias = next_bias.is_some();
    if had_bias || fused.bias.iter().any(|&b| b != 0.0) {
        let dtype = file.get(&next_b_name).map_or(w_dtype, |t| t.dtype);
        if !had_bias {
            eprintln!("{next_b_name}: created to hold the fused constant term ({dtype:?})");
        }
        file.insert(
            next_b_name,
            Tensor::from_f32(&fused.bias, vec![n_out], dtype)?,
        );
    }
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

    eprintln!(
        "kept {k} of {n} neurons ({method_name}), fusion {}: ridge {:.2e}, next-layer error {:.4}",
        fusion_name(mode),
        fused.ridge,
        fused.relative_error
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
            ridge: fused.ridge,
            relative_error: fused.relative_error,
            seconds: timer.stages(),
        };
        write_json(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} -> {} neurons, next-layer error {:.4}; wrote {}",
        n,
        k,
        fused.relative_error,
        args.out.display()
    );
    Ok(())
}

/// The tensor `name`, which must exist and hold floats.
fn float_tensor<'a>(file: &'a TensorFile, name: &str, path: &str) -> anyhow::Result<&'a Tensor> {
    let t = file
        .get(name)
        .with_context(|| format!("{path}: no tensor {name}"))?;
    match t.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => Ok(t),
        other => bail!("{path}: {name} is {other:?}, expected F32, F16, BF16 or F64"),
    }
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
