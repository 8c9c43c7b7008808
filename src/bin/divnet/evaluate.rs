//! `divnet evaluate`: accuracy and cross-entropy of an MLP on labelled data.

use std::path::PathBuf;

use anyhow::Context;
use divnet::io::data::{read_inputs, read_labels};
use divnet::model::{evaluate, Activation, Mlp};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a PyTorch state dict as safetensors (NAME.weight [out, in], NAME.bias).
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs: npy (samples x features, float) or IDX images (gzipped or not; pixels / 255).
    #[arg(long)]
    pub data: PathBuf,
    /// Labels: npy 1-D integers or IDX labels (gzipped or not).
    #[arg(long)]
    pub labels: PathBuf,
    /// The layer names in order (e.g. fc1,fc2,fc3); inferred from the shapes when omitted.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
    /// The activation between layers: relu, tanh, sigmoid or gelu.
    #[arg(long, default_value = "relu")]
    pub activation: String,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let activation: Activation = args.activation.parse().context("--activation")?;
    let mlp = Mlp::load(&args.model, args.layers.as_deref(), activation)?;
    let inputs = read_inputs(&args.data)?;
    let labels = read_labels(&args.labels)?;
    check_sizes(&mlp, &inputs, &labels, &args.data, &args.labels)?;
    let ev = evaluate(&mlp, &inputs.data, inputs.rows, &labels)?;
    println!(
        "model {} ({} parameters, widths {:?})",
        args.model.display(),
        mlp.param_count(),
        mlp.dims()
    );
    println!("samples  {}", ev.samples);
    println!("accuracy {:.4} ({:.2}%)", ev.accuracy, 100.0 * ev.accuracy);
    println!("loss     {:.4}", ev.loss);
    Ok(())
}

/// The checks that need two files at once, with both named in the message.
pub fn check_sizes(
    mlp: &Mlp,
    inputs: &divnet::io::data::Inputs,
    labels: &[u32],
    data_path: &std::path::Path,
    labels_path: &std::path::Path,
) -> anyhow::Result<()> {
    if inputs.cols != mlp.input_dim() {
        anyhow::bail!(
            "{}: samples have {} features but the model takes {} inputs",
            data_path.display(),
            inputs.cols,
            mlp.input_dim()
        );
    }
    if labels.len() != inputs.rows {
        anyhow::bail!(
            "{}: {} labels for the {} samples of {}",
            labels_path.display(),
            labels.len(),
            inputs.rows,
            data_path.display()
        );
    }
    if let Some(i) = labels.iter().position(|&l| l as usize >= mlp.output_dim()) {
        anyhow::bail!(
            "{}: label {i} is {} but the model has {} outputs",
            labels_path.display(),
            labels[i],
            mlp.output_dim()
        );
    }
    Ok(())
}
