//! `divnet evaluate`: accuracy and cross-entropy of an MLP on labelled data, and how often it
//! predicts what a reference network (the original of a compressed one) predicts.

use std::path::PathBuf;

use anyhow::Context;
use divnet::io::data::{read_inputs, read_labels};
use divnet::model::{evaluate, evaluate_against, predict, Activation, Mlp};

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
    /// A reference network, such as the original of a compressed --model (same layer names
    /// and activation): also report the share of samples that get the class the reference
    /// predicts. A compressed network can match the original's accuracy while erring on
    /// other samples; this says how faithfully it reproduces the original.
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let activation: Activation = args.activation.parse().context("--activation")?;
    let mlp = Mlp::load(&args.model, args.layers.as_deref(), activation)?;
    let inputs = read_inputs(&args.data)?;
    let labels = read_labels(&args.labels)?;
    check_sizes(&mlp, &inputs, &labels, &args.data, &args.labels)?;
    let reference = match &args.reference {
        Some(path) => {
            let reference = Mlp::load(path, args.layers.as_deref(), activation)?;
            if reference.input_dim() != mlp.input_dim()
                || reference.output_dim() != mlp.output_dim()
            {
                anyhow::bail!(
                    "{}: the reference maps {} inputs to {} outputs, the model {} to {}",
                    path.display(),
                    reference.input_dim(),
                    reference.output_dim(),
                    mlp.input_dim(),
                    mlp.output_dim()
                );
            }
            let predictions = predict(&reference, &inputs.data, inputs.rows)
                .with_context(|| format!("running the reference {}", path.display()))?;
            Some((path, predictions))
        }
        None => None,
    };
    // The evaluation, and with a reference, its path and the share of samples that agree.
    let running = || {
        format!(
            "running {} on {}",
            args.model.display(),
            args.data.display()
        )
    };
    let (ev, agreement) = match &reference {
        Some((path, predictions)) => {
            let (ev, agreement) =
                evaluate_against(&mlp, &inputs.data, inputs.rows, &labels, predictions)
                    .with_context(running)?;
            (ev, Some((path, agreement)))
        }
        None => (
            evaluate(&mlp, &inputs.data, inputs.rows, &labels).with_context(running)?,
            None,
        ),
    };
    println!(
        "model {} ({} parameters, widths {:?})",
        args.model.display(),
        mlp.param_count(),
        mlp.dims()
    );
    println!("samples  {}", ev.samples);
    println!("accuracy {:.4} ({:.2}%)", ev.accuracy, 100.0 * ev.accuracy);
    println!("loss     {:.4}", ev.loss);
    if let Some((path, agreement)) = agreement {
        println!(
            "agrees   {agreement:.4} ({:.2}% of the samples get the class {} predicts)",
            100.0 * agreement,
            path.display()
        );
    }
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
            "{}: the label at row {i} is {} but the model has {} outputs",
            labels_path.display(),
            labels[i],
            mlp.output_dim()
        );
    }
    Ok(())
}
