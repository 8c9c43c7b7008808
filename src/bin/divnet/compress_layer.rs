//! `divnet compress-layer`: one hidden layer of any network stored as safetensors, given its
//! activations on a calibration set. Keeps a subset of its neurons, fuses the dropped ones
//! into the next layer, slices the layer(s) that produce it, copies everything else.

use std::path::PathBuf;

use anyhow::{bail, ensure};
use divnet::compress::{
    compress_layer_tensors, fusion_name, plan_layer_tensors, KeepSpec, LayerOptions, LayerPlan,
    LayerReport, LayerTensors, Route, DEFAULT_EPS,
};
use divnet::fusion::{FusionMode, FusionOptions};
use divnet::io::keep::read_keep_list;
use divnet::io::safetensors::{read_safetensors, stage_safetensors};
use divnet::kernel::{Beta, RowSource};
use divnet::memory::gb;
use divnet::select::SelectionMethod;

use crate::common::{
    check_outputs, counted, open_activations, select_backend, selection_method_parser, stage_json,
    swap_cap_note, swap_counts, BackendArg, BarProgress, StageTimer,
};

/// Compress one hidden layer of a network stored as safetensors.
///
/// The layer's activations (m samples x n neurons) decide which neurons to keep; the next
/// layer `NAME.weight` (n_out x n) absorbs the dropped ones by least squares (its bias too,
/// created if missing); the layers that produce the activations (`--prev`) keep only the
/// rows of the kept neurons. Every other tensor is copied unchanged, dtypes kept.
#[derive(clap::Args)]
pub struct Args {
    /// Activations of the layer: m x n npy (samples x neurons; f16, f32 or f64; C or Fortran
    /// order). Read in row chunks, once per pass, never whole.
    #[arg(long)]
    activations: PathBuf,
    /// The network: safetensors (a PyTorch state dict).
    #[arg(long)]
    weights: PathBuf,
    /// Tensor prefix(es) of the layer(s) reading the activations: NAME.weight [n_out, n],
    /// optional NAME.bias [n_out]. Several (comma-separated) are fused together, and the
    /// fusion-aware selection serves them all.
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
    /// The neurons to keep: a JSON file holding an array of 0-based indices, as `divnet
    /// sample` writes them (skips selection, so not with --select).
    #[arg(long, group = "size", value_name = "FILE", conflicts_with = "select")]
    keep: Option<PathBuf>,
    /// Selection method (dpp chooses the number of neurons itself; fusion-greedy keeps the
    /// neurons that best explain the next layers' pre-activation, and fusion-swap improves
    /// that set by swaps, the most accurate with fusion in the README's measurements; both
    /// deterministic; quality-kdpp and quality-greedy weigh the kernel by the energy each
    /// neuron sends into them). The default is the paper's k-DPP.
    #[arg(long = "select", default_value = "kdpp", value_parser = selection_method_parser())]
    select: SelectionMethod,
    /// RBF bandwidth of the DPP kernel: paper (10/m), median or a positive number. The
    /// paper's value ignores the activations' scale (scaled up 5 times, neurons look 25 times
    /// farther apart); median (1 / median squared distance) follows it.
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
    /// Ridge of the fusion system, as a fraction of the kept neurons' mean variance (the mean
    /// eigenvalue of their centred Gram matrix); the constant term is not damped.
    #[arg(long, default_value_t = FusionOptions::default().ridge_factor)]
    ridge_factor: f64,
    /// Seed of the random selection methods.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// How the fusion gets its statistics: one-pass (the n x n Gram collected with the
    /// kernel's distances: two n x n matrices at once, G kept in f32 beside the kernel on the
    /// CPU when only the fusion reads it (kdpp, dpp, greedy), one read of the activations) or
    /// two-pass (the fusion's statistics from a second read after selection: one n x n
    /// matrix at a time) or columns (greedy only: no n x n matrix; greedy MAP computes the
    /// kernel columns it reads from further reads of the activations, a batch per read).
    /// auto takes one pass when it needs at most 1/8 of the free memory (the second read
    /// costs little time: 8% at n = 8192, under 1% at n = 16384), else two, and for greedy
    /// the columns route when two passes do not fit.
    #[arg(long, value_enum, default_value_t = RouteArg::Auto)]
    route: RouteArg,
    /// Check the inputs, print the route and the memory plan (what each stage holds, the
    /// peak, what is available), and stop: nothing is computed or written.
    #[arg(long)]
    dry_run: bool,
    /// Output safetensors (written atomically).
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<PathBuf>,
    /// Report (JSON): kept indices, ridge, reconstruction error, time per stage.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `--route` as clap sees it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RouteArg {
    /// One pass when it needs at most 1/8 of the free memory, else two (else columns,
    /// for greedy).
    Auto,
    /// G collected with the kernel's distances.
    OnePass,
    /// The fusion's statistics from a second pass.
    TwoPass,
    /// Greedy MAP from kernel columns computed on demand, a batch per pass.
    Columns,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    backend: &'a str,
    /// The files the run read.
    inputs: Inputs<'a>,
    #[serde(flatten)]
    layer: &'a LayerReport,
    plan: &'a LayerPlan,
}

/// The input files, as given.
#[derive(serde::Serialize)]
struct Inputs<'a> {
    activations: &'a std::path::Path,
    weights: &'a std::path::Path,
    keep: Option<&'a std::path::Path>,
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
    // A dry run checks them too: it should find whatever the run would refuse.
    check_outputs(
        &[
            ("--out", args.out.as_deref()),
            ("--report", args.report.as_deref()),
        ],
        &[
            ("--activations", Some(&args.activations)),
            ("--weights", Some(&args.weights)),
            ("--keep", args.keep.as_deref()),
        ],
    )?;

    let mut reader = open_activations(&args.activations, &mut timer)?;
    let n = reader.width();
    // Every input file is checked before any work, so that a bad one is the only message.
    let keep = match &args.keep {
        Some(path)
            if !path.exists() && path.to_str().is_some_and(|s| s.parse::<usize>().is_ok()) =>
        {
            bail!(
                "--keep takes a JSON file of neuron indices; to keep {} neurons, use -k {0}",
                path.display()
            )
        }
        Some(path) => KeepSpec::Indices(read_keep_list(path, n)?),
        None if method == SelectionMethod::Dpp => {
            ensure!(
                args.k.is_none() && args.keep_ratio.is_none(),
                "--select dpp chooses its own size: drop -k/--keep-ratio, or use --select kdpp"
            );
            KeepSpec::Drawn
        }
        None => match (args.k, args.keep_ratio) {
            (Some(k), _) => KeepSpec::Count(k),
            (None, Some(r)) => KeepSpec::Ratio(r),
            (None, None) => bail!(
                "say which neurons to keep: -k K, --keep-ratio R, --keep FILE.json or --select dpp"
            ),
        },
    };
    let mut file = read_safetensors(&args.weights)?;
    eprintln!("next layer(s): {}", args.next.join(", "));

    let backend = select_backend(args.backend)?;
    let opts = LayerOptions {
        method,
        keep,
        fusion: FusionOptions {
            mode,
            ridge_factor: args.ridge_factor,
        },
        beta: args.beta,
        eps: args.eps,
        seed: args.seed,
        cpu_fallback: matches!(args.backend, BackendArg::Auto),
        route: match args.route {
            RouteArg::Auto => None,
            RouteArg::OnePass => Some(Route::OnePass),
            RouteArg::TwoPass => Some(Route::TwoPass),
            RouteArg::Columns => Some(Route::Columns),
        },
    };
    let tensors = LayerTensors {
        file: &mut file,
        source: &args.weights,
        activations: &args.activations,
        next: &args.next,
        prev: &args.prev,
    };
    if args.dry_run {
        let plan = plan_layer_tensors(&backend, &reader, &tensors, &opts)?;
        print!("{}", describe_plan(&plan));
        return Ok(());
    }
    let out = args
        .out
        .as_ref()
        .expect("clap requires --out without --dry-run");
    let outcome = compress_layer_tensors(
        &backend,
        &mut reader,
        tensors,
        &opts,
        &mut BarProgress::default(),
    )?;
    let mut report = outcome.report;
    let peaks: std::collections::HashMap<&str, Option<u64>> = report
        .memory
        .peak_rss_after
        .iter()
        .map(|(s, p)| (s.as_str(), *p))
        .collect();
    for (stage, secs) in &report.seconds {
        let peak = peaks.get(stage.as_str()).copied().flatten();
        eprintln!(
            "  {stage:<24} {secs:>9.3} s   peak memory {}",
            peak.map_or("?".into(), gb)
        );
    }
    for note in &report.notes {
        eprintln!("{note}");
    }
    // The model is written to its temporary file now (timed as "write"), and put in place
    // with the report: the two appear together or not at all.
    let model = timer.try_stage("write", || stage_safetensors(out, &file))?;

    let k = outcome.kept.len();
    eprintln!(
        "kept {k} of {n} neurons ({}), fusion {}: ridge {:.2e}, next-layer error {:.4}",
        report.method,
        fusion_name(mode),
        report.ridge,
        report.relative_error
    );
    if let Some(search) = &report.swap_search {
        eprintln!(
            "  fusion-swap: {}{}",
            swap_counts(search),
            swap_cap_note(search, k)
        );
    }
    if args.next.len() > 1 {
        for (name, error) in args.next.iter().zip(&report.next_errors) {
            eprintln!("  {name}: next-layer error {error:.4}");
        }
    }
    let json = match &args.report {
        Some(path) => {
            let mut seconds = timer.stages().to_vec();
            seconds.splice(1..1, report.seconds.drain(..));
            report.seconds = seconds;
            Some(stage_json(
                path,
                &Report {
                    backend: backend.name(),
                    inputs: Inputs {
                        activations: &args.activations,
                        weights: &args.weights,
                        keep: args.keep.as_deref(),
                    },
                    layer: &report,
                    plan: &outcome.plan,
                },
            )?)
        }
        None => None,
    };
    model.commit()?;
    if let Some(json) = json {
        json.commit()?;
    }
    println!(
        "{} -> {}, next-layer error {:.4}; wrote {}",
        n,
        counted(k, "neuron"),
        report.relative_error,
        out.display()
    );
    Ok(())
}

/// The plan as `--dry-run` prints it: the route and why, each stage's footprint with what
/// makes it up, the peak and the free memory.
fn describe_plan(plan: &LayerPlan) -> String {
    let mut text = format!("route: {} ({})\n", plan.route.name(), plan.reason);
    for stage in &plan.memory.stages {
        text.push_str(&format!("  {:<20} {:>9}\n", stage.stage, gb(stage.bytes())));
        for a in &stage.holds {
            text.push_str(&format!("      {:>9}  {}\n", gb(a.bytes), a.what));
        }
    }
    text.push_str(&format!(
        "{} needs {}\nwith the margin {}; {}\n",
        plan.memory.subject,
        plan.memory.describe_peak(),
        gb(plan.memory.need_with_margin()),
        plan.available.describe()
    ));
    if let Some(peak) = plan.predicted_peak_rss() {
        text.push_str(&format!("predicted peak resident memory: {}\n", gb(peak)));
    }
    text
}
