//! `divnet demo`: the paper's experiment on the shipped Fashion-MNIST network.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use divnet::compress::{DEFAULT_CHUNK_ROWS, DEFAULT_EPS};
use divnet::experiment::{
    mean_std, run_experiment, Curve, ExperimentConfig, ExperimentData, ExperimentReport, Point,
};
use divnet::io::safetensors::read_safetensors;
use divnet::kernel::Beta;
use divnet::model::{Activation, Mlp};
use divnet::select::SelectionMethod;

use crate::common::{
    check_outputs, parse_list, select_backend, with_cpu_fallback, write_json, BackendArg,
    BarProgress,
};
use crate::demo_data::{
    DemoData, CALIBRATION_IMAGES, CALIBRATION_LABELS, MODEL, TEST_IMAGES, TEST_LABELS,
};
use crate::plots;

/// Reproduce the paper's findings on the shipped Fashion-MNIST MLP (784-1000-1000-10).
///
/// (a) neurons kept by a k-DPP are more diverse than random ones; (b) test accuracy against
/// neurons kept per hidden layer for k-DPP and random selection, with and without fusion;
/// (c) the same with one hidden layer compressed at a time; (d) importance selection (and
/// greedy MAP) with and without fusion; (e) selection built for the fusion (fusion-greedy,
/// fusion-swap, and the k-DPP and greedy MAP on the quality-diversity kernel) against them,
/// before and after a one-epoch fine-tune, and each fused network's agreement with the full
/// one (the share of test images given the class the full network predicts). Writes report.json,
/// table.txt and PNG plots to the output folder and prints the table.
#[derive(clap::Args)]
pub struct Args {
    /// Folder with the demo's data files, named as in divnet's data/fashion-mnist
    /// (default: the copy of those files built into the binary).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model to compress (default: the shipped reference MLP, from --data if given): an MLP
    /// taking the 784 pixels and giving the 10 classes, ReLU between its layers.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Layer prefixes of --model in order (e.g. fc1,fc2,fc3); inferred from the chain of
    /// shapes if omitted.
    #[arg(long, value_delimiter = ',', requires = "model")]
    layers: Option<Vec<String>>,
    /// Output folder (created if missing).
    #[arg(long, default_value = "divnet-demo")]
    out: PathBuf,
    /// Neurons kept per hidden layer.
    #[arg(long, default_value = "10,25,50,100,200,400")]
    sizes: String,
    /// Draws per random method (k-DPP, random).
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    seeds: u64,
    /// Use only the first N calibration images (default: all shipped, 5000).
    #[arg(long)]
    calibration_rows: Option<usize>,
    /// RBF bandwidth: paper (10/m), median or a number.
    #[arg(long, default_value = "paper")]
    beta: String,
    /// Skip the one-layer-at-a-time curves (finding c).
    #[arg(long)]
    no_one_layer: bool,
    /// Skip the one-epoch fine-tunes of finding (e).
    #[arg(long)]
    no_finetune: bool,
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
}

/// `--seeds`: a count of draws, at least one.
fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("at least one draw is needed".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let sizes = parse_list("--sizes", &args.sizes, |s| {
        s.parse::<usize>().ok().filter(|&k| k > 0)
    })?;
    let beta: Beta = args.beta.parse()?;
    let source = DemoData::new(args.data.clone());
    let (model_path, file) = match &args.model {
        Some(path) => (path.clone(), read_safetensors(path)?),
        None => (source.path(&MODEL), source.model(&MODEL)?),
    };
    let model = Mlp::from_tensors(&file, args.layers.as_deref(), Activation::Relu)
        .map_err(|e| e.in_file(&model_path))?;
    let mut calibration = source.inputs(&CALIBRATION_IMAGES)?;
    let mut calibration_labels = source.labels(&CALIBRATION_LABELS)?;
    if let Some(rows) = args.calibration_rows {
        anyhow::ensure!(rows > 0, "--calibration-rows must be positive");
        anyhow::ensure!(
            rows <= calibration.rows,
            "--calibration-rows {rows}: the calibration set has {} images",
            calibration.rows
        );
        calibration.data.truncate(rows * calibration.cols);
        calibration.rows = rows;
        calibration_labels.truncate(rows);
    }
    let test = source.inputs(&TEST_IMAGES)?;
    let test_labels = source.labels(&TEST_LABELS)?;
    anyhow::ensure!(
        test_labels.len() == test.rows && calibration_labels.len() == calibration.rows,
        "{}: images and labels disagree in count",
        source.location().display()
    );
    check_model_fits_data(&model, &model_path, &calibration, &test_labels, &sizes)?;
    let backend = select_backend(args.backend)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // The tables must be writable before minutes of work (the plots are warnings at worst).
    let (table_path, report_path) = (args.out.join("table.txt"), args.out.join("report.json"));
    check_outputs(
        &[
            ("--out", Some(table_path.as_path())),
            ("--out", Some(report_path.as_path())),
        ],
        &[],
    )?;

    let hundred = sizes
        .iter()
        .copied()
        .find(|&k| k == 100)
        .or_else(|| sizes.last().copied());
    let cfg = ExperimentConfig {
        heatmap_size: sizes.iter().copied().find(|&k| k == 50).unwrap_or(sizes[0]),
        sizes,
        seeds: args.seeds,
        beta,
        eps: DEFAULT_EPS,
        chunk_rows: DEFAULT_CHUNK_ROWS,
        one_layer_at_a_time: !args.no_one_layer,
        finetune_size: if args.no_finetune { None } else { hundred },
    };
    eprintln!(
        "model {} ({} parameters), calibration {} images, test {} images",
        model_path.display(),
        model.param_count(),
        calibration.rows,
        test.rows
    );
    let data = ExperimentData {
        model: &model,
        calibration: &calibration.data,
        calibration_labels: &calibration_labels,
        test: &test.data,
        test_labels: &test_labels,
    };
    let report = with_cpu_fallback(args.backend, &backend, |b| {
        run_experiment(b, &data, &cfg, &mut BarProgress::default())
    })?;

    let table = format_table(&report, args.seeds);
    print!("{table}");
    // The tables first: they are the run's result, and a plot that fails must not lose them.
    divnet::io::atomic::write_bytes_atomic(&table_path, table.as_bytes())?;
    write_json(&report_path, &report)?;
    let mut written = vec!["report.json", "table.txt"];
    let plot_path = |name: &str| args.out.join(name);
    let drawn = [
        (
            "accuracy.png",
            plots::accuracy_plot(&plot_path("accuracy.png"), &report).map(|()| true),
        ),
        (
            "one_layer.png",
            plots::one_layer_plot(&plot_path("one_layer.png"), &report),
        ),
        (
            "diversity.png",
            plots::diversity_plot(&plot_path("diversity.png"), &report.heatmaps),
        ),
    ];
    for (name, result) in drawn {
        match result {
            Ok(true) => written.push(name),
            Ok(false) => {}
            Err(e) => eprintln!(
                "divnet: warning: {} not written: {}",
                plot_path(name).display(),
                crate::common::one_line(&e)
            ),
        }
    }
    println!(
        "\nwrote {} to {}",
        written.join(", "),
        absolute(&args.out).display()
    );
    println!("total time {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// A table of `curves` (all over the same sizes): a header of the sizes, then one row per
/// curve, its label and `cell` of each point.
fn curve_rows(s: &mut String, curves: &[&Curve], cell: impl Fn(&Curve, &Point) -> String) {
    let _ = write!(s, "{:<22}", "neurons kept");
    for p in &curves[0].points {
        let _ = write!(s, "{:>13}", p.kept);
    }
    let _ = writeln!(s);
    for c in curves {
        let _ = write!(s, "{:<22}", c.label);
        for p in &c.points {
            let _ = write!(s, "{:>13}", cell(c, p));
        }
        let _ = writeln!(s);
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Checks, before the output folder is made and any work starts, that the model can run on
/// the demo's data: its inputs are the images' features, its outputs cover the labels, and
/// every size in `--sizes` fits its hidden layers. Errors name the model file.
fn check_model_fits_data(
    model: &Mlp,
    path: &std::path::Path,
    images: &divnet::io::data::Inputs,
    labels: &[u32],
    sizes: &[usize],
) -> anyhow::Result<()> {
    let at = path.display();
    anyhow::ensure!(
        model.input_dim() == images.cols,
        "{at}: the model takes {} inputs, but the demo's images have {} features",
        model.input_dim(),
        images.cols
    );
    let top = labels.iter().copied().max().unwrap_or(0) as usize;
    anyhow::ensure!(
        top < model.output_dim(),
        "{at}: the model has {} outputs, but the demo's labels go up to {top}",
        model.output_dim()
    );
    let hidden = &model.layers[..model.layers.len() - 1];
    anyhow::ensure!(!hidden.is_empty(), "{at}: the model has no hidden layer");
    let narrowest = hidden.iter().map(|l| l.out_dim).min().unwrap_or(0);
    if let Some(k) = sizes.iter().find(|&&k| k > narrowest) {
        anyhow::bail!(
            "--sizes: cannot keep {k} neurons: the narrowest hidden layer of {at} has {narrowest}"
        );
    }
    Ok(())
}

/// The terminal table: one block per scope, one row per variant, one column per size.
pub fn format_table(r: &ExperimentReport, seeds: u64) -> String {
    // What a random method's cell is: one draw, or a mean (and spread) over several.
    let (spread, mean) = if seeds == 1 {
        ("one seed".to_string(), "one seed".to_string())
    } else {
        (
            format!("mean ± std over {seeds} seeds"),
            format!("mean over {seeds} seeds"),
        )
    };
    let mut s = String::new();
    let widths: Vec<String> = r.widths.iter().map(|w| w.to_string()).collect();
    let _ = writeln!(
        s,
        "\nFashion-MNIST MLP {}: full network {:.2}% test accuracy ({} test images, {} calibration images, beta = {:.3e} in the first layer)",
        widths.join("-"),
        r.full_accuracy * 100.0,
        r.test_rows,
        r.calibration_rows,
        r.beta_first_layer
    );
    let _ = writeln!(
        s,
        "\n(a) diversity of kept neurons in the first hidden layer ({})",
        if seeds == 1 {
            "one draw".to_string()
        } else {
            format!("mean over {seeds} draws")
        }
    );
    let _ = writeln!(
        s,
        "{:>6}  {:>14} {:>14}  {:>16} {:>16}",
        "kept", "log det k-DPP", "log det random", "mean L_ij k-DPP", "mean L_ij random"
    );
    for p in &r.diversity {
        let m = |v: &[divnet::select::Diversity], f: fn(&divnet::select::Diversity) -> f64| {
            mean_std(&v.iter().map(f).collect::<Vec<_>>()).0
        };
        let _ = writeln!(
            s,
            "{:>6}  {:>14.2} {:>14.2}  {:>16.4} {:>16.4}",
            p.kept,
            m(&p.kdpp, |d| d.log_det),
            m(&p.random, |d| d.log_det),
            m(&p.kdpp, |d| d.mean_off_diagonal),
            m(&p.random, |d| d.mean_off_diagonal)
        );
    }
    let mut scopes: Vec<&str> = Vec::new();
    for c in &r.curves {
        if !scopes.contains(&c.scope.as_str()) {
            scopes.push(&c.scope);
        }
    }
    for (i, scope) in scopes.iter().enumerate() {
        let title = if i == 0 {
            "(b, d) test accuracy (%), all hidden layers compressed".to_string()
        } else {
            format!("(c) test accuracy (%), only {scope} compressed")
        };
        let _ = writeln!(s, "\n{title}; random methods: {spread}");
        let curves: Vec<_> = r.curves.iter().filter(|c| c.scope == *scope).collect();
        curve_rows(&mut s, &curves, |c, p| {
            if c.variant.method.is_random() && p.accuracies.len() > 1 {
                format!("{:.1}±{:.1}", p.mean * 100.0, p.std * 100.0)
            } else {
                format!("{:.1}", p.mean * 100.0)
            }
        });
    }
    let fused: Vec<_> = r
        .curves
        .iter()
        .filter(|c| c.scope == "all hidden layers" && c.variant.fused)
        .collect();
    if !fused.is_empty() {
        let _ = writeln!(
            s,
            "\n(e) agreement with the full network (% of test images given the class the full network predicts), \
             all hidden layers compressed, each + fusion; random methods: {mean}"
        );
        curve_rows(&mut s, &fused, |_, p| format!("{:.1}", p.agreement * 100.0));
    }
    if let Some(first) = r.finetune.first() {
        let _ = writeln!(
            s,
            "\n(e) selection built for fusion against the paper's rules, {} kept per layer, each + fusion, \
             before and after one epoch of fine-tuning on the calibration images; random methods: \
             {spread}",
            first.kept
        );
        let _ = writeln!(
            s,
            "{:<26}{:>13}{:>13}{:>13}",
            "method", "before", "after", "gap closed"
        );
        for f in &r.finetune {
            let cell = |draws: &[f64]| {
                let (mean, std) = mean_std(draws);
                if draws.len() > 1 {
                    format!("{:.1}±{:.1}", mean * 100.0, std * 100.0)
                } else {
                    format!("{:.1}", mean * 100.0)
                }
            };
            let _ = writeln!(
                s,
                "{:<26}{:>13}{:>13}{:>12.0}%",
                f.label,
                cell(&f.before_draws),
                cell(&f.after_draws),
                f.gap_closed * 100.0
            );
        }
    }
    let point = |method: SelectionMethod, fused: bool, k: usize| {
        r.curves
            .iter()
            .find(|c| {
                c.scope == "all hidden layers"
                    && c.variant.method == method
                    && c.variant.fused == fused
            })
            .and_then(|c| c.points.iter().find(|p| p.kept == k))
    };
    let find = |method: SelectionMethod, fused: bool, k: usize| {
        point(method, fused, k).map(|p| p.mean * 100.0)
    };
    let ten_percent = r.widths[1] / 10;
    if let (Some(kf), Some(rf), Some(gf), Some(imf)) = (
        find(SelectionMethod::KDpp, true, ten_percent),
        find(SelectionMethod::Random, true, ten_percent),
        find(SelectionMethod::Greedy, true, ten_percent),
        find(SelectionMethod::Importance, true, ten_percent),
    ) {
        let full = r.full_accuracy * 100.0;
        let _ = writeln!(s, "\nat {ten_percent} kept per layer (10%):");
        let _ = writeln!(
            s,
            "  k-DPP + fusion {kf:.1}%: {:.1} points below the full network (target: within 6), {:.1} above random + fusion (target: at least 3)",
            full - kf,
            kf - rf
        );
        let _ = writeln!(
            s,
            "  greedy + fusion {gf:.1}%: {:.1} points below the full network (target: within 4.5), {:+.1} vs importance + fusion (target: no more than 0.5 below)",
            full - gf,
            gf - imf
        );
    }
    let sizes: Vec<usize> = r
        .curves
        .first()
        .map(|c| c.points.iter().map(|p| p.kept).collect())
        .unwrap_or_default();
    // Per rule built for fusion and size: its accuracy and agreement, each minus greedy's and
    // importance's (two decimals: at 400 kept the rules are a few test images apart).
    for rule in [SelectionMethod::FusionGreedy, SelectionMethod::FusionSwap] {
        let margins: Vec<(usize, [f64; 4])> = sizes
            .iter()
            .filter_map(|&k| {
                let fg = point(rule, true, k)?;
                let g = point(SelectionMethod::Greedy, true, k)?;
                let im = point(SelectionMethod::Importance, true, k)?;
                let pct = |a: f64, b: f64| (a - b) * 100.0;
                Some((
                    k,
                    [
                        pct(fg.mean, g.mean),
                        pct(fg.mean, im.mean),
                        pct(fg.agreement, g.agreement),
                        pct(fg.agreement, im.agreement),
                    ],
                ))
            })
            .collect();
        if margins.is_empty() {
            continue;
        }
        let full = r.full_accuracy * 100.0;
        let _ = writeln!(
            s,
            "\n{rule} + fusion, all hidden layers (target: at or above greedy + fusion and importance + fusion at every size):"
        );
        let _ = write!(s, "  {:<24}", "neurons kept");
        for (k, _) in &margins {
            let _ = write!(s, "{k:>8}");
        }
        for (row, name) in [
            "vs greedy + fusion",
            "vs importance + fusion",
            "agreement vs greedy",
            "agreement vs importance",
        ]
        .into_iter()
        .enumerate()
        {
            let _ = write!(s, "\n  {name:<24}");
            for (_, m) in &margins {
                let _ = write!(s, "{:>+8.2}", m[row]);
            }
        }
        let _ = writeln!(s);
        if let Some(at100) = find(rule, true, ten_percent) {
            let _ = writeln!(
                s,
                "  at {ten_percent} kept: {at100:.1}%, {:.1} points below the full network (target: within 2)",
                full - at100
            );
        }
        if let Some(at25) = find(rule, true, r.widths[1] / 40) {
            let _ = writeln!(
                s,
                "  at {} kept: {at25:.1}% (target: at least 78)",
                r.widths[1] / 40
            );
        }
    }
    let _ = writeln!(s, "\nexperiment time {:.1} s", r.seconds);
    s
}
