//! `divnet kernel`: the RBF kernel (or the Gram matrix) over a layer's neurons, from an
//! m x n activation matrix in an npy file.

use std::path::PathBuf;

use anyhow::Context;
use divnet::io::npy::{read_matrix, write_npy};
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};

use crate::common::{select_backend, with_cpu_fallback, BackendArg, StageTimer};

/// Which n x n matrix to write.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Kind {
    /// L = exp(-beta ||v_i - v_j||^2) + eps I, the DPP kernel over neurons.
    #[default]
    Rbf,
    /// G = A^T A.
    Gram,
}

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Activations: an m x n npy array (samples x neurons; float16, float32 or float64, which
    /// is rounded to float32 for the computation).
    #[arg(long)]
    activations: PathBuf,
    /// The matrix to compute.
    #[arg(long, value_enum, default_value_t = Kind::Rbf)]
    kind: Kind,
    /// RBF bandwidth: `paper` (10/m), `median` (1 / median squared distance between
    /// neurons) or a positive number.
    #[arg(long, default_value = "paper")]
    beta: Beta,
    /// Added to the RBF kernel's diagonal so that L is positive definite even when neurons
    /// coincide. 1e-6 is far below the unit diagonal, so it barely changes the DPP.
    #[arg(long, default_value_t = 1e-6)]
    eps: f64,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Output: the n x n matrix as float64 npy (written atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut timer = StageTimer::default();
    let a = timer.try_stage("read activations", || read_matrix(&args.activations))?;
    let (m, n) = (a.shape[0], a.shape[1]);
    eprintln!(
        "activations: {m} samples x {n} neurons ({:?}) from {}",
        a.dtype(),
        args.activations.display()
    );
    let backend = select_backend(args.backend)?;
    let mut rounded = Vec::new();
    let rows = ActivationRows::from_npy(&a, &mut rounded);
    let what = format!("{}", args.activations.display());
    let matrix = match args.kind {
        Kind::Gram => {
            timer
                .stage("gram", || {
                    with_cpu_fallback(args.backend, &backend, |b| gram_stats(b, rows, n))
                })
                .with_context(|| what.clone())?
                .gram
        }
        Kind::Rbf => {
            let l = timer
                .stage("rbf kernel", || {
                    with_cpu_fallback(args.backend, &backend, |b| {
                        rbf_kernel(b, rows, n, args.beta, args.eps)
                    })
                })
                .with_context(|| what.clone())?;
            eprintln!("beta = {:e} ({:?}), eps = {:e}", l.beta, args.beta, l.eps);
            l.matrix
        }
    };
    let data: Vec<f64> = (0..n * n).map(|k| matrix[(k / n, k % n)]).collect();
    timer.stage("write", || write_npy(&args.out, &[n, n], &data))?;
    eprintln!("wrote {n} x {n} float64 to {}", args.out.display());
    Ok(())
}
