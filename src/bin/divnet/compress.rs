//! `divnet compress`: every hidden layer of an MLP, each observed through the compressed
//! layers before it.

use std::path::PathBuf;

use divnet::compress::{compress_mlp, CompressOptions, KeepSpec, DEFAULT_CHUNK_ROWS, DEFAULT_EPS};
use divnet::fusion::{FusionMode, FusionOptions};
use divnet::io::safetensors::{read_safetensors, stage_safetensors};
use divnet::kernel::Beta;
use divnet::model::{Activation, Mlp};
use divnet::select::SelectionMethod;

use crate::common::{
    check_outputs, parse_list, select_backend, selection_method_parser, stage_json, swap_cap_note,
    swap_counts, with_cpu_fallback, BackendArg, BarProgress,
};

/// Compress every hidden layer of an MLP read from safetensors (PyTorch state dict).
///
/// Each hidden layer in turn: run the calibration set through the (already compressed)
/// network, build the RBF kernel over the layer's neurons, keep a subset (k-DPP by default),
/// fuse the dropped neurons into the next layer by least squares, slice the layer.
#[derive(clap::Args)]
pub struct Args {
    /// The model: safetensors with NAME.weight [out, in] and optional NAME.bias per layer.
    #[arg(long)]
    model: PathBuf,
    /// Calibration inputs: npy (m x d, f32/f16/f64) or IDX images (gzipped or not).
    #[arg(long)]
    calibration: PathBuf,
    /// Layer prefixes in order (e.g. fc1,fc2,fc3); inferred from the chain of shapes if omitted.
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Activation function between layers.
    #[arg(long, default_value = "relu", value_parser = ["relu", "tanh", "sigmoid", "gelu"])]
    activation: String,
    /// Neurons to keep per hidden layer: one value for all, or a comma list per layer.
    #[arg(short = 'k', long = "keep", group = "size")]
    keep: Option<String>,
    /// Fraction of neurons to keep per hidden layer: one value or a comma list.
    #[arg(long, group = "size")]
    keep_ratio: Option<String>,
    /// Let a DPP choose how many neurons to keep (the same as --select dpp).
    #[arg(long, group = "size", conflicts_with = "select")]
    dpp: bool,
    /// Selection method: the paper's kdpp (the default; or dpp, greedy MAP), random,
    /// importance, fusion-greedy (the neurons that best explain the next layer's
    /// pre-activation, deterministic) or fusion-swap (fusion-greedy's neurons improved by
    /// swaps: the most accurate with fusion in the README's measurements, deterministic), or
    /// the k-DPP and greedy MAP on the kernel weighed by the energy each neuron sends into
    /// the next layer (quality-kdpp, quality-greedy).
    #[arg(long = "select", default_value = "kdpp", value_parser = selection_method_parser())]
    select: SelectionMethod,
    /// Plain pruning: drop the unselected neurons without fusing them into the next layer.
    #[arg(long, conflicts_with = "no_bias")]
    no_fusion: bool,
    /// Fuse without the constant term (the paper's original objective).
    #[arg(long)]
    no_bias: bool,
    /// RBF bandwidth: paper (10/m), median (1/median squared distance) or a number. The
    /// paper's value ignores the activations' scale; median follows it.
    #[arg(long, default_value = "paper")]
    beta: String,
    /// Added to the kernel's diagonal.
    #[arg(long, default_value_t = DEFAULT_EPS)]
    eps: f64,
    /// Seed of the random selection methods.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Calibration rows per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS)]
    chunk_rows: usize,
    /// Output safetensors: same tensor names, new widths, dtypes kept.
    #[arg(long)]
    out: PathBuf,
    /// Report (JSON): kept indices per layer, parameter counts, errors, timings.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let activation: Activation = args.activation.parse()?;
    let beta: Beta = args.beta.parse()?;
    let mut method = args.select;
    let keep = keep_specs(&args, &mut method)?;
    check_outputs(
        &[
            ("--out", Some(&args.out)),
            ("--report", args.report.as_deref()),
        ],
        &[
            ("--model", Some(&args.model)),
            ("--calibration", Some(&args.calibration)),
        ],
    )?;
    let file = read_safetensors(&args.model)?;
    // The same errors as Mlp::load: a missing tensor or a broken chain names the model file.
    let mlp = Mlp::from_tensors(&file, args.layers.as_deref(), activation)
        .map_err(|e| e.in_file(&args.model))?;
    let inputs = divnet::io::data::read_inputs(&args.calibration)?;
    anyhow::ensure!(
        inputs.cols == mlp.input_dim(),
        "{}: {} features per row, but the model's first layer takes {}",
        args.calibration.display(),
        inputs.cols,
        mlp.input_dim()
    );
    let opts = CompressOptions {
        method,
        keep,
        fusion: FusionOptions {
            mode: if args.no_fusion {
                FusionMode::Prune
            } else if args.no_bias {
                FusionMode::FuseNoBias
            } else {
                FusionMode::Fuse
            },
            ..FusionOptions::default()
        },
        beta,
        eps: args.eps,
        seed: args.seed,
        chunk_rows: args.chunk_rows,
    };
    // A second reader of a hidden layer that will change width is refused before the work
    // (writing the model would refuse it after).
    mlp.check_second_readers(&file, &opts.width_changes(&mlp))
        .map_err(|e| e.in_file(&args.model))?;
    let backend = select_backend(args.backend)?;
    let (compressed, report) = with_cpu_fallback(args.backend, &backend, |b| {
        compress_mlp(
            b,
            &mlp,
            &inputs.data,
            inputs.rows,
            &opts,
            &mut BarProgress::default(),
        )
    })?;
    for l in &report.layers {
        eprintln!(
            "{:<8} {:>6} -> {:<6} {:<10} ridge {:.2e}  next-layer error {:.4}",
            l.name,
            l.neurons_before,
            l.kept.len(),
            l.method,
            l.ridge,
            l.relative_error
        );
        if let Some(search) = &l.swap_search {
            eprintln!(
                "  fusion-swap: {}{}",
                swap_counts(search),
                swap_cap_note(search, l.kept.len())
            );
        }
        for note in &l.notes {
            eprintln!("  {note}");
        }
    }
    let out = compressed
        .to_tensors(&file)
        .map_err(|e| divnet::Error::format(&args.model, format!("the compressed model: {e}")))?;
    // The model and its report appear together or not at all.
    let model = stage_safetensors(&args.out, &out)?;
    let json = match &args.report {
        Some(path) => Some(stage_json(
            path,
            &Report {
                inputs: Inputs {
                    model: &args.model,
                    calibration: &args.calibration,
                },
                report: &report,
            },
        )?),
        None => None,
    };
    model.commit()?;
    if let Some(json) = json {
        json.commit()?;
    }
    println!(
        "parameters {} -> {} ({:.1}%), {:.2} s; wrote {}",
        report.params_before,
        report.params_after,
        100.0 * report.params_after as f64 / report.params_before.max(1) as f64,
        report.seconds,
        args.out.display()
    );
    Ok(())
}

/// What `--report` writes: the library's report and the files the run read.
#[derive(serde::Serialize)]
struct Report<'a> {
    inputs: Inputs<'a>,
    #[serde(flatten)]
    report: &'a divnet::compress::CompressReport,
}

/// The input files, as given.
#[derive(serde::Serialize)]
struct Inputs<'a> {
    model: &'a std::path::Path,
    calibration: &'a std::path::Path,
}

fn keep_specs(args: &Args, method: &mut SelectionMethod) -> anyhow::Result<Vec<KeepSpec>> {
    if args.dpp {
        *method = SelectionMethod::Dpp;
        return Ok(vec![KeepSpec::Drawn]);
    }
    if *method == SelectionMethod::Dpp {
        anyhow::ensure!(
            args.keep.is_none() && args.keep_ratio.is_none(),
            "--select dpp chooses its own size: drop -k/--keep-ratio, or use --select kdpp"
        );
        return Ok(vec![KeepSpec::Drawn]);
    }
    if let Some(k) = &args.keep {
        return parse_list("-k", k, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .map(KeepSpec::Count)
        })
        .map_err(|e| {
            if k.parse::<f64>().is_err() && !k.contains(',') {
                anyhow::anyhow!(
                    "-k/--keep: {k:?} is not a number of neurons: compress takes counts (one, or \
                     one per hidden layer); to keep given neurons of a layer, use \
                     compress-layer --keep FILE.json"
                )
            } else {
                e
            }
        });
    }
    if let Some(r) = &args.keep_ratio {
        return parse_list("--keep-ratio", r, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0 && *r <= 1.0)
                .map(KeepSpec::Ratio)
        });
    }
    anyhow::bail!("say how many neurons to keep: -k K, --keep-ratio R or --dpp")
}
