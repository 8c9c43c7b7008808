//! `divnet kernel`: the RBF kernel (or the Gram matrix) over a layer's neurons, from an
//! m x n activation matrix in an npy file.

use std::path::PathBuf;

use divnet::io::npy::write_npy_matrix;
use divnet::kernel::{Beta, RowSource, StatsKind};

use crate::common::{
    activation_kernel, activation_statistics, check_outputs, naming_file, open_activations,
    select_backend, BackendArg, StageTimer,
};

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
    /// is rounded to float32 for the computation; C or Fortran order), read in row chunks.
    #[arg(long)]
    activations: PathBuf,
    /// The matrix to compute.
    #[arg(long, value_enum, default_value_t = Kind::Rbf)]
    kind: Kind,
    /// RBF bandwidth: `paper` (10/m, the default), `median` (1 / median squared distance
    /// between neurons) or a positive number. Not for --kind gram.
    #[arg(long)]
    beta: Option<Beta>,
    /// Added to the RBF kernel's diagonal so that L is positive definite even when neurons
    /// coincide; default 1e-6, far below the unit diagonal, so it barely changes the DPP.
    /// Not for --kind gram.
    #[arg(long)]
    eps: Option<f64>,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Output: the n x n matrix as float64 npy in Fortran order, which numpy reads as any
    /// other (written atomically, straight from the matrix: no second copy).
    #[arg(long)]
    out: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    check_outputs(
        &[("--out", Some(&args.out))],
        &[("--activations", Some(&args.activations))],
    )?;
    if matches!(args.kind, Kind::Gram) && (args.beta.is_some() || args.eps.is_some()) {
        anyhow::bail!("--beta and --eps shape the RBF kernel: --kind gram takes neither");
    }
    let mut timer = StageTimer::default();
    let mut reader = open_activations(&args.activations, &mut timer)?;
    let n = reader.width();
    let backend = select_backend(args.backend)?;
    // The pass reads the activations from disk: its time includes the reads.
    let matrix = match args.kind {
        Kind::Gram => {
            timer
                .try_stage("read + gram", || {
                    activation_statistics(args.backend, &backend, &mut reader, StatsKind::Gram)?
                        .into_gram()
                })
                .map_err(|e| naming_file(&args.activations, e))?
                .gram
        }
        Kind::Rbf => {
            activation_kernel(
                &mut reader,
                args.backend,
                &backend,
                args.beta.unwrap_or(Beta::Paper),
                args.eps.unwrap_or(divnet::compress::DEFAULT_EPS),
                &mut timer,
            )?
            .matrix
        }
    };
    timer.try_stage("write", || write_npy_matrix(&args.out, matrix.as_ref()))?;
    eprintln!("wrote {n} x {n} float64 to {}", args.out.display());
    Ok(())
}
