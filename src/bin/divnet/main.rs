//! The `divnet` command line: a thin layer over the library that parses arguments,
//! reports progress and prints. Every error ends the process with one line and exit code 2.

#[allow(dead_code)] // used as the commands land
mod bench;
mod common;
mod compress;
mod compress_layer;
mod demo;
mod demo_data;
mod evaluate;
mod interrupts;
mod kernel;
mod plots;
mod sample;
mod train;

use clap::{Parser, Subcommand};

/// Compress trained neural networks with Diversity Networks (Mariet & Sra, ICLR 2016):
/// keep a diverse subset of each hidden layer's neurons, chosen by a determinantal point
/// process over their activations, and fuse the dropped ones into the next layer.
#[derive(Parser)]
#[command(name = "divnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the RBF kernel (or the Gram matrix) over a layer's neurons from activations.
    Kernel(kernel::Args),
    /// Draw neuron subsets from a k-DPP or DPP, or pick them by greedy MAP or the rules built for fusion.
    Sample(sample::Args),
    /// Compress one layer: select neurons, fuse the dropped ones into the next layer.
    CompressLayer(compress_layer::Args),
    /// Compress every hidden layer of an MLP, each observed through the compressed ones before it.
    Compress(compress::Args),
    /// Accuracy and loss of an MLP on labelled data.
    Evaluate(evaluate::Args),
    /// Train an MLP (the demo's reference network, or fine-tune a compressed one).
    Train(train::Args),
    /// Reproduce the paper's findings on the shipped Fashion-MNIST network.
    Demo(demo::Args),
    /// Time kernel construction (Gram, RBF kernel, fusion assembly) on the CPU and the GPU.
    Bench(bench::Args),
}

fn main() {
    // Mesa's device-select Vulkan layer asks the Wayland compositor which GPU is the default
    // and prints an "error:" line when there is none (headless machines, CI). divnet picks its
    // adapter itself, so the layer has nothing to add there.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    interrupts::remove_outputs_on_signal();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let result = match cli.command {
        Command::Kernel(a) => kernel::run(a),
        Command::Sample(a) => sample::run(a),
        Command::CompressLayer(a) => compress_layer::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Train(a) => train::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("divnet: error: {}", common::one_line(&e));
        std::process::exit(2);
    }
}

/// Help and version go to stdout as clap prints them; a usage error becomes the same single
/// `divnet: error:` line (exit 2) as every other failure, so scripts see one format.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("divnet: error: {message} (see divnet --help)");
    std::process::exit(2);
}
