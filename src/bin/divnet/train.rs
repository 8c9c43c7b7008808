//! `divnet train`: train an MLP from scratch or fine-tune an existing (e.g. compressed) one.

use std::path::PathBuf;

use anyhow::Context;
use divnet::io::data::{read_inputs, read_labels};
use divnet::io::safetensors::{read_safetensors, write_safetensors, TensorFile};
use divnet::model::{train, Activation, Mlp, Optimizer, TrainConfig};

use crate::common::{check_outputs, progress_bar};
use crate::evaluate::check_sizes;

/// The update rule, as clap sees it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OptimizerArg {
    /// Adam (PyTorch's default betas).
    Adam,
    /// SGD with momentum (--momentum).
    Sgd,
}

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Training inputs: npy (samples x features, float) or IDX images (gzipped or not).
    #[arg(long)]
    pub data: PathBuf,
    /// Training labels: npy 1-D integers or IDX labels.
    #[arg(long)]
    pub labels: PathBuf,
    /// Hidden layer widths for a new model [default: 1000,1000]. Not with --init, whose
    /// model has its own widths.
    #[arg(long, value_delimiter = ',', conflicts_with = "init")]
    pub hidden: Option<Vec<usize>>,
    /// Output classes of a new model [default: the largest label + 1]. Not with --init.
    #[arg(long, conflicts_with = "init")]
    pub classes: Option<usize>,
    /// The activation between layers: relu, tanh, sigmoid or gelu.
    #[arg(long, default_value = "relu")]
    pub activation: String,
    /// Passes over the data.
    #[arg(long, default_value_t = 12)]
    pub epochs: usize,
    /// Samples per gradient step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Step size.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// The update rule.
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerArg,
    /// Momentum for --optimizer sgd.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Seeds the initialisation and the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fine-tune this model (safetensors) instead of starting from random weights; the
    /// output keeps its tensor names, dtypes and any other tensors.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The layer names in order for --init (inferred from the shapes when omitted).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
    /// Where to write the trained model (safetensors, PyTorch names).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let activation: Activation = args.activation.parse().context("--activation")?;
    check_outputs(
        &[("--out", Some(&args.out))],
        &[
            ("--data", Some(&args.data)),
            ("--labels", Some(&args.labels)),
            ("--init", args.init.as_deref()),
        ],
    )?;
    let inputs = read_inputs(&args.data)?;
    let labels = read_labels(&args.labels)?;
    let (mut mlp, template) = match &args.init {
        Some(path) => {
            let file = read_safetensors(path)?;
            let mlp = Mlp::load(path, args.layers.as_deref(), activation)?;
            (mlp, file)
        }
        None => {
            let hidden = args.hidden.clone().unwrap_or_else(|| vec![1000, 1000]);
            if hidden.contains(&0) {
                anyhow::bail!("--hidden: layer widths must be at least 1");
            }
            let seen = labels.iter().max().map_or(0, |&l| l as usize + 1);
            let classes = match args.classes {
                // Labels are class indices 0..C-1: a label in the millions is not a class
                // count a network is made for, and would otherwise surface as a model too big
                // for --hidden.
                None if seen > MAX_INFERRED_CLASSES => anyhow::bail!(
                    "{}: the largest label is {}, so a new model would need {seen} outputs: labels \
                     must be class indices 0, 1, ... (give --classes to insist)",
                    args.labels.display(),
                    seen - 1
                ),
                None => seen,
                Some(0) => anyhow::bail!("--classes: must be at least 1"),
                Some(c) if c < seen => anyhow::bail!(
                    "--classes {c}: {} has label {}, which needs at least {seen} classes",
                    args.labels.display(),
                    seen - 1
                ),
                Some(c) => c,
            };
            let mut dims = vec![inputs.cols];
            dims.extend(&hidden);
            dims.push(classes);
            check_model_fits(&dims)?;
            (
                Mlp::init(&dims, activation, args.seed),
                TensorFile::default(),
            )
        }
    };
    check_sizes(&mlp, &inputs, &labels, &args.data, &args.labels)?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        optimizer: match args.optimizer {
            OptimizerArg::Adam => Optimizer::Adam,
            OptimizerArg::Sgd => Optimizer::Sgd {
                momentum: args.momentum,
            },
        },
        seed: args.seed,
    };
    eprintln!(
        "training {:?} ({} parameters, {activation}) on {} samples: {} epochs, batch {}, lr {}",
        mlp.dims(),
        mlp.param_count(),
        inputs.rows,
        cfg.epochs,
        cfg.batch_size,
        cfg.learning_rate
    );
    let batches = inputs.rows.div_ceil(cfg.batch_size.max(1)) as u64;
    let bar = progress_bar(batches, "epoch 1");
    let start = std::time::Instant::now();
    let epochs = cfg.epochs;
    train(
        &mut mlp,
        &inputs.data,
        inputs.rows,
        &labels,
        &cfg,
        &mut |done, _total| {
            let in_epoch = (done as u64 - 1) % batches + 1;
            bar.set_position(in_epoch);
        },
        &mut |r| {
            bar.suspend(|| {
                eprintln!(
                    "epoch {:>3}/{epochs}  loss {:.4}  train accuracy {:.4}  {:.1} s",
                    r.epoch, r.loss, r.accuracy, r.seconds
                )
            });
            bar.reset();
            bar.set_message(format!("epoch {}", r.epoch + 1));
        },
    )?;
    bar.finish_and_clear();
    let out = mlp.to_tensors(&template)?;
    write_safetensors(&args.out, &out)?;
    eprintln!(
        "wrote {} in {:.1} s total",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The most classes `train` infers from the labels without `--classes`.
const MAX_INFERRED_CLASSES: usize = 100_000;

/// A few characters of `--hidden` can ask for more parameters than memory holds; say so
/// instead of letting the allocator abort the process (training needs about 4 copies:
/// weights, gradients and Adam's two moments).
fn check_model_fits(dims: &[usize]) -> anyhow::Result<()> {
    let params = dims.windows(2).try_fold(0usize, |acc, d| {
        d[0].checked_mul(d[1])
            .and_then(|w| w.checked_add(d[1]))
            .and_then(|p| acc.checked_add(p))
    });
    let fits = params
        .and_then(|p| p.checked_mul(4))
        .is_some_and(|floats| Vec::<f32>::new().try_reserve_exact(floats).is_ok());
    if !fits {
        anyhow::bail!(
            "--hidden: a {dims:?} network has {} parameters, more than this machine can train",
            params.map_or_else(|| "too many".to_string(), |p| p.to_string())
        );
    }
    Ok(())
}
