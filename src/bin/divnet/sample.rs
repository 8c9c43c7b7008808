//! `divnet sample`: draw subsets from a k-DPP or DPP over a kernel, or pick one by greedy
//! MAP, and print each as a JSON array of sorted 0-based indices, one per line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use divnet::dpp::{greedy_map, DppSampler, GreedyStop, KDppSampler, Spectrum};
use divnet::io::{atomic::write_atomic, npy::read_matrix};
use divnet::kernel::Beta;
use divnet::Error;
use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common::{self, open_activations, progress_bar, select_backend, BackendArg, StageTimer};

/// Arguments.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["kernel", "activations"])))]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["k", "dpp", "greedy"])))]
pub struct Args {
    /// The n x n kernel L (npy, float16/32/64, symmetric positive semi-definite).
    #[arg(long, value_name = "L.npy")]
    kernel: Option<PathBuf>,
    /// A layer's activations (npy, samples x neurons); the RBF kernel over neurons is built first.
    #[arg(long, value_name = "A.npy")]
    activations: Option<PathBuf>,
    /// RBF bandwidth for --activations: paper (10 / m), median, or a positive number.
    #[arg(long, default_value = "paper", requires = "activations")]
    beta: Beta,
    /// Added to the kernel's diagonal for --activations, so that it is positive definite
    /// (as `divnet kernel --eps`).
    #[arg(long, default_value_t = 1e-6, requires = "activations")]
    eps: f64,
    /// Where to build the kernel for --activations.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto, requires = "activations")]
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
    /// Number of draws (one line each); not with --greedy.
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
    if args.greedy.is_some() && args.samples != 1 {
        bail!("--samples does not apply to --greedy, which is deterministic");
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let mut timer = StageTimer::default();
    let l = match (&args.kernel, &args.activations) {
        (Some(path), _) => timer.stage("read kernel", || read_kernel(path))?,
        (None, Some(path)) => activation_kernel(path, &args, &mut timer)?,
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
        lines?
    };

    let mut text = String::new();
    for y in &lines {
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

/// The RBF kernel over the neurons of the activations in `path` (samples x neurons).
fn activation_kernel(path: &Path, args: &Args, timer: &mut StageTimer) -> anyhow::Result<Mat<f64>> {
    let mut reader = open_activations(path, timer)?;
    let backend = select_backend(args.backend)?;
    Ok(common::activation_kernel(
        &mut reader,
        args.backend,
        &backend,
        args.beta,
        args.eps,
        timer,
    )?
    .matrix)
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
