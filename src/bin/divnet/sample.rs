//! `divnet sample`: draw subsets from a k-DPP or DPP over a kernel, or pick one by greedy
//! MAP or (from activations and the layers that read them) by fusion-greedy or fusion-swap,
//! and print each
//! as a JSON array of sorted 0-based indices, one per line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use divnet::compress::{read_next_tensors, NextTensors};
use divnet::dpp::{greedy_map, DppSampler, GreedyStop, KDppSampler, Spectrum};
use divnet::io::atomic::write_atomic;
use divnet::io::npy::{read_matrix, NpyRowReader};
use divnet::io::safetensors::read_safetensors;
use divnet::kernel::{rbf_from_distances, Beta, GramStats, RowSource, StatsKind};
use divnet::select::quality::{quality_kernel, quality_scores};
use divnet::select::{fusion_greedy_with_progress, fusion_swap_with_progress, QUALITY};
use divnet::{Backend, Error};
use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common::{
    self, activation_statistics, naming_file, open_activations, progress_bar, select_backend,
    swap_cap_note, swap_counts, BackendArg, BarProgress, StageTimer,
};

/// Arguments.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["kernel", "activations"])))]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["k", "dpp", "greedy", "fusion_greedy", "fusion_swap"])))]
pub struct Args {
    /// The n x n kernel L (npy, float16/32/64, symmetric positive semi-definite).
    #[arg(long, value_name = "L.npy")]
    kernel: Option<PathBuf>,
    /// A layer's activations (npy, samples x neurons); the RBF kernel over neurons is built first.
    #[arg(long, value_name = "A.npy")]
    activations: Option<PathBuf>,
    /// RBF bandwidth for --activations: paper (10 / m), median, or a positive number.
    #[arg(long, default_value = "paper", conflicts_with = "kernel")]
    beta: Beta,
    /// Added to the kernel's diagonal for --activations, so that it is positive definite
    /// (as `divnet kernel --eps`).
    #[arg(long, default_value_t = 1e-6, conflicts_with = "kernel")]
    eps: f64,
    /// Where to build the kernel for --activations.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto, conflicts_with = "kernel")]
    backend: BackendArg,
    /// Draw exactly K items from the k-DPP.
    #[arg(short, long, value_name = "K")]
    k: Option<usize>,
    /// Draw from the DPP (the size is random, with mean sum lambda / (1 + lambda)).
    #[arg(long)]
    dpp: bool,
    /// Pick K items by greedy MAP (deterministic: one line).
    #[arg(long, value_name = "K")]
    greedy: Option<usize>,
    /// Pick K neurons by fusion-greedy: those that best explain the pre-activation of the
    /// layers reading them (deterministic: one line). Needs --activations, --weights and
    /// --next: a kernel alone does not say what the next layer reads.
    #[arg(long, value_name = "K")]
    fusion_greedy: Option<usize>,
    /// Pick K neurons by fusion-swap: fusion-greedy's neurons, then swaps of one kept for
    /// one dropped neuron while one lowers the fused error (deterministic: one line). Needs
    /// --activations, --weights and --next.
    #[arg(long, value_name = "K")]
    fusion_swap: Option<usize>,
    /// Weigh the kernel by the energy each neuron sends into the next layers (the
    /// quality-diversity kernel diag(q) L diag(q)) before drawing or greedy MAP. Needs
    /// --activations, --weights and --next.
    #[arg(long, conflicts_with_all = ["fusion_greedy", "fusion_swap"])]
    quality: bool,
    /// Safetensors holding the layer(s) that read the activations (with --next).
    #[arg(long, value_name = "M.safetensors")]
    weights: Option<PathBuf>,
    /// Tensor prefix(es) of the layer(s) reading the activations: NAME.weight [n_out, n].
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    next: Vec<String>,
    /// Number of draws (one line each); not with --greedy, --fusion-greedy or --fusion-swap.
    #[arg(long, default_value_t = 1, value_name = "N")]
    samples: usize,
    /// Seed of the random generator: the same seed gives the same lines.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Write the lines to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    common::check_outputs(
        &[("--out", args.out.as_deref())],
        &[
            ("--kernel", args.kernel.as_deref()),
            ("--activations", args.activations.as_deref()),
            ("--weights", args.weights.as_deref()),
        ],
    )?;
    let fusion_mode = match (args.fusion_greedy, args.fusion_swap) {
        (Some(k), _) => Some(("--fusion-greedy", k)),
        (None, Some(k)) => Some(("--fusion-swap", k)),
        (None, None) => None,
    };
    if (args.greedy.is_some() || fusion_mode.is_some()) && args.samples != 1 {
        bail!(
            "--samples does not apply to --greedy, --fusion-greedy or --fusion-swap, which are \
             deterministic"
        );
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let wants_next = fusion_mode.is_some() || args.quality;
    if wants_next && (args.activations.is_none() || args.weights.is_none() || args.next.is_empty())
    {
        bail!(
            "{} needs the layer's activations and the layers that read them \
             (--activations A.npy --weights M.safetensors --next NAME): a kernel alone does not \
             say what the next layer reads",
            fusion_mode.map_or("--quality", |(flag, _)| flag)
        );
    }
    if !wants_next && (args.weights.is_some() || !args.next.is_empty()) {
        bail!("--weights and --next are only used by --fusion-greedy, --fusion-swap and --quality");
    }
    let mut timer = StageTimer::default();
    let mut activations = match &args.activations {
        Some(path) => Some((
            open_activations(path, &mut timer)?,
            select_backend(args.backend)?,
        )),
        None => None,
    };
    if let Some((flag, k)) = fusion_mode {
        let (reader, backend) = activations.as_mut().expect("checked above");
        let path = reader.path().to_path_buf();
        let (stats, _, nexts) = layer_and_readers(reader, backend, &args, &mut timer, false)?;
        let n = stats.col_sums.len();
        let layers: Vec<_> = nexts.iter().map(|x| x.layer(n)).collect();
        let mut progress = BarProgress::default();
        let (mut y, error) = if flag == "--fusion-swap" {
            let selection = timer
                .try_stage("fusion-swap", || {
                    fusion_swap_with_progress(&stats, &layers, k, &mut progress)
                })
                .map_err(|e| naming_file(&path, e))?;
            eprintln!(
                "{} after fusion-greedy (predicted error {:.6} before them){}",
                swap_counts(&selection.search()),
                selection.start_relative_error(),
                swap_cap_note(&selection.search(), k)
            );
            let error = selection.relative_error();
            (selection.kept, error)
        } else {
            let selection = timer
                .try_stage("fusion-greedy", || {
                    fusion_greedy_with_progress(&stats, &layers, k, &mut progress)
                })
                .map_err(|e| naming_file(&path, e))?;
            let error = selection.relative_error(k);
            (selection.order, error)
        };
        eprintln!(
            "predicted next-layer error after fusion {error:.6} (||Z - Z'|| / ||Z|| on these samples)"
        );
        y.sort_unstable();
        return write_lines(&args, &[y]);
    }
    let l = match (&args.kernel, activations.as_mut()) {
        (Some(path), _) => timer.stage("read kernel", || read_kernel(path))?,
        (None, Some((reader, backend))) if args.quality => {
            let path = reader.path().to_path_buf();
            let (stats, l, nexts) = layer_and_readers(reader, backend, &args, &mut timer, true)?;
            let l = l.expect("asked for distances");
            let n = stats.col_sums.len();
            let layers: Vec<_> = nexts.iter().map(|x| x.layer(n)).collect();
            timer
                .try_stage("quality kernel", || -> divnet::Result<Mat<f64>> {
                    let scores = quality_scores(&stats, &layers, QUALITY)?;
                    quality_kernel(l.as_ref(), &scores)
                })
                .map_err(|e| naming_file(&path, e))?
        }
        (None, Some((reader, backend))) => activation_kernel(reader, backend, &args, &mut timer)?,
        (None, None) => unreachable!("clap requires --kernel or --activations"),
    };
    let source = args
        .kernel
        .as_ref()
        .or(args.activations.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let n = l.nrows();
    eprintln!("kernel: {n} x {n}");

    let lines: Vec<Vec<usize>> = if let Some(k) = args.greedy {
        let y = timer
            .stage("greedy MAP", || {
                greedy_map(l.as_ref(), GreedyStop::Count(k))
            })
            .with_context(|| source.clone())?;
        let mut y = y;
        y.sort_unstable();
        vec![y]
    } else {
        let spectrum = timer
            .stage("eigendecomposition", || Spectrum::new(l.as_ref()))
            .with_context(|| source.clone())?;
        drop(l);
        eprintln!(
            "numerical rank {}, expected DPP size {:.2}",
            spectrum.numerical_rank(),
            spectrum.expected_dpp_size()
        );
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let bar = progress_bar(args.samples as u64, "sampling");
        let lines = timer.stage("sampling", || -> divnet::Result<Vec<Vec<usize>>> {
            let mut out = Vec::with_capacity(args.samples);
            if let Some(k) = args.k {
                let sampler = KDppSampler::new(&spectrum, k)?;
                for _ in 0..args.samples {
                    out.push(sampler.sample(&mut rng));
                    bar.inc(1);
                }
            } else {
                let sampler = DppSampler::new(&spectrum);
                for _ in 0..args.samples {
                    out.push(sampler.sample(&mut rng));
                    bar.inc(1);
                }
            }
            Ok(out)
        });
        bar.finish_and_clear();
        lines.with_context(|| source.clone())?
    };

    write_lines(&args, &lines)
}

/// Prints the subsets, one JSON array per line, to `--out` (atomically) or stdout.
fn write_lines(args: &Args, lines: &[Vec<usize>]) -> anyhow::Result<()> {
    let mut text = String::new();
    for y in lines {
        text.push_str(&serde_json::to_string(y)?);
        text.push('\n');
    }
    match &args.out {
        Some(path) => write_atomic(path, |w| {
            w.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
        })?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing to stdout")?,
    }
    Ok(())
}

/// The Gram statistics (and, with `distances`, the RBF kernel) of the activations in
/// `reader`, from one pass, and the layers `--next` in `--weights` that read them.
fn layer_and_readers(
    reader: &mut NpyRowReader,
    backend: &Backend,
    args: &Args,
    timer: &mut StageTimer,
    distances: bool,
) -> anyhow::Result<(GramStats, Option<Mat<f64>>, Vec<NextTensors>)> {
    let weights = args.weights.as_ref().expect("checked by the caller");
    let n = reader.width();
    let path = reader.path().to_path_buf();
    let file = read_safetensors(weights)?;
    let nexts = read_next_tensors(&file, &args.next, n, weights, &path)?;
    let kind = if distances {
        StatsKind::Both
    } else {
        StatsKind::Gram
    };
    let stats = timer
        .try_stage("read + statistics", || {
            activation_statistics(args.backend, backend, reader, kind)
        })
        .map_err(|e| naming_file(&path, e))?;
    let kernel = match stats.distances {
        Some(d) => {
            let l =
                rbf_from_distances(d, args.beta, args.eps).map_err(|e| naming_file(&path, e))?;
            eprintln!("beta = {:e} ({:?}), eps = {:e}", l.beta, args.beta, l.eps);
            Some(l.matrix)
        }
        None => None,
    };
    Ok((stats.gram.expect("collected"), kernel, nexts))
}

/// The RBF kernel over the neurons of the activations in `reader` (samples x neurons).
fn activation_kernel(
    reader: &mut NpyRowReader,
    backend: &Backend,
    args: &Args,
    timer: &mut StageTimer,
) -> anyhow::Result<Mat<f64>> {
    Ok(
        common::activation_kernel(reader, args.backend, backend, args.beta, args.eps, timer)?
            .matrix,
    )
}

/// Reads an n x n kernel from an npy file as f64.
fn read_kernel(path: &Path) -> divnet::Result<Mat<f64>> {
    let a = read_matrix(path)?;
    let (rows, cols) = (a.shape[0], a.shape[1]);
    if rows != cols {
        return Err(Error::format(
            path,
            format!("a kernel must be square (n x n), got shape [{rows}, {cols}]"),
        ));
    }
    let data = a.to_f64();
    Ok(Mat::from_fn(rows, cols, |i, j| data[i * cols + j]))
}
