//! `divnet bench`: kernel construction (Gram, RBF kernel, fusion assembly) timed on the CPU
//! twins and on the GPU, from host memory and from a GPU-resident buffer, one table per
//! operation. The measuring is the library's (`divnet::bench`); this prints it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use divnet::bench::{Activations, BenchOptions, BenchReport, Operation, Residency, DEFAULT_ROWS};
use divnet::io::npy::{read_matrix, NpyData};
use divnet::kernel::ActivationRows;
use divnet::GpuContext;

use crate::common::{check_outputs, write_json, BarProgress};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Rows (samples) of the synthetic activations. The defaults (m = 32768, n up to 8192)
    /// are the README's sizes: 2 m n^2 = 4.4 TFLOP per Gram at n = 8192, minutes on a CPU;
    /// `--rows 4096 --sizes 1024,2048` is a quick look.
    #[arg(long, default_value_t = DEFAULT_ROWS, conflicts_with = "activations")]
    rows: usize,
    /// Widths (neurons) of the synthetic activations, comma-separated (the default is the
    /// library's `bench::DEFAULT_SIZES`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,2048,4096,8192",
        conflicts_with = "activations"
    )]
    sizes: Vec<usize>,
    /// Store and upload the synthetic activations as f16 (half the bytes) instead of f32.
    #[arg(long, conflicts_with = "activations")]
    f16: bool,
    /// Time on these activations (m x n npy, f16 or f32; other types are rounded to f32)
    /// instead of synthetic ones.
    #[arg(long, value_name = "A.npy")]
    activations: Option<PathBuf>,
    /// Operations, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "gram,rbf,fusion", value_parser = ["gram", "rbf", "fusion"])]
    ops: Vec<String>,
    /// Runs per case; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Leave out the CPU twins.
    #[arg(long)]
    no_cpu: bool,
    /// Leave out the GPU even when an adapter exists.
    #[arg(long)]
    no_gpu: bool,
    /// On a software adapter (lavapipe), skip GPU runs over this many GFLOP.
    #[arg(long, default_value_t = BenchOptions::default().software_gflop_limit)]
    software_gflop_limit: f64,
    /// Device memory the GPU statistics' accumulators may take, in MiB (default: the
    /// library's 4096).
    #[arg(long, value_name = "MIB")]
    gpu_budget_mib: Option<u64>,
    /// Also write the figures as JSON (atomically).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut operations: Vec<Operation> = Vec::new();
    for name in &args.ops {
        let op = name.parse::<Operation>()?;
        if !operations.contains(&op) {
            operations.push(op);
        }
    }
    check_outputs(
        &[("--json", args.json.as_deref())],
        &[("--activations", args.activations.as_deref())],
    )?;
    let gpu = if args.no_gpu {
        None
    } else {
        match GpuContext::new() {
            Ok(ctx) => {
                let ctx = match args.gpu_budget_mib {
                    Some(mib) => ctx.with_memory_budget(mib << 20),
                    None => ctx,
                };
                Some(Arc::new(ctx))
            }
            Err(e) => {
                eprintln!("no GPU: {e}; timing the CPU only");
                None
            }
        }
    };
    if args.no_cpu && gpu.is_none() {
        if args.no_gpu {
            bail!("nothing to time: --no-cpu and --no-gpu leave out both");
        }
        bail!("nothing to time: --no-cpu, and there is no GPU adapter");
    }
    let opts = BenchOptions {
        operations,
        repeat: args.repeat,
        software_gflop_limit: args.software_gflop_limit,
        cpu: !args.no_cpu,
    };
    let file;
    let rounded;
    let activations = match &args.activations {
        Some(path) => {
            file = read_matrix(path)?;
            let n = file.shape[1];
            Activations::Given {
                rows: match &file.data {
                    NpyData::F16(v) => ActivationRows::F16(v),
                    NpyData::F32(v) => ActivationRows::F32(v),
                    _ => {
                        rounded = file.to_f32();
                        ActivationRows::F32(&rounded)
                    }
                },
                n,
            }
        }
        None => Activations::Synthetic {
            m: args.rows,
            sizes: args.sizes.clone(),
            f16: args.f16,
        },
    };
    let env = divnet::bench::environment(gpu.as_deref());
    eprintln!("CPU: {} threads", env.cpu_threads);
    match &env.adapter {
        Some(a) => eprintln!(
            "GPU: {a}, driver {}; timestamps {}{}",
            env.driver.as_deref().unwrap_or("unknown"),
            if env.timestamps { "yes" } else { "no" },
            if env.software_adapter {
                " (a software adapter: its figures say nothing about GPU speed)"
            } else {
                ""
            }
        ),
        None => eprintln!("GPU: none"),
    }
    let report = divnet::bench::run(
        &activations,
        gpu.as_ref(),
        &opts,
        &mut BarProgress::default(),
    )
    .context("benchmark")?;
    print_report(&report);
    if let Some(path) = &args.json {
        write_json(path, &report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_report(report: &BenchReport) {
    let mut ops: Vec<Operation> = Vec::new();
    for m in &report.measurements {
        if !ops.contains(&m.operation) {
            ops.push(m.operation);
        }
    }
    for op in ops {
        let rows: Vec<_> = report
            .measurements
            .iter()
            .filter(|m| m.operation == op)
            .collect();
        let m = rows.first().map_or(0, |r| r.m);
        println!();
        println!(
            "{} ({}, m = {m}, {}; GPU stages in seconds: upload = host copying rows, submit = \
             host inside the queue's submit, wait = host blocked on the device, gpu = \
             timestamps, readback = copy + map (part of wait), assemble = host writing the \
             result; each summed over the threads doing it and overlapping the others, so they \
             need not add up to the total)",
            op.name(),
            match op {
                Operation::Fusion => "flops of the three gathered products",
                _ => "2 m n^2 flops counted",
            },
            report.dtype,
        );
        println!(
            "{:>6} {:>4} {:>6} {:>9} {:>8} | {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} | {:>7} {:>5} {:>9} {:>10} | {:>7}",
            "n", "on", "input", "seconds", "GFLOP/s", "upload", "submit", "wait", "gpu", "readback",
            "assemble", "submits", "waits", "readbacks", "MB back", "GPU/CPU"
        );
        for r in rows {
            let ratio = if r.backend == "gpu" {
                report
                    .speedup(op, r.n, r.input)
                    .map_or("-".to_string(), |s| format!("{s:.2}x"))
            } else {
                String::new()
            };
            let input = match r.input {
                Residency::Host => "host",
                Residency::Device => "device",
            };
            match &r.gpu {
                Some(c) => println!(
                    "{:>6} {:>4} {:>6} {:>9.3} {:>8.1} | {:>7.3} {:>7.3} {:>7.3} {:>7} {:>8.3} {:>8.3} | {:>7} {:>5} {:>9} {:>10.1} | {:>7}",
                    r.n,
                    r.backend,
                    input,
                    r.seconds,
                    r.gflops,
                    c.upload_seconds,
                    c.submit_seconds,
                    c.wait_seconds,
                    if c.timed_passes > 0 {
                        format!("{:.3}", c.gpu_seconds)
                    } else {
                        "-".into()
                    },
                    c.readback_seconds,
                    c.assemble_seconds,
                    c.submits,
                    c.waits,
                    c.readbacks,
                    c.readback_bytes as f64 / 1e6,
                    ratio
                ),
                None => println!(
                    "{:>6} {:>4} {:>6} {:>9.3} {:>8.1} | {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} | {:>7} {:>5} {:>9} {:>10} | {:>7}",
                    r.n, r.backend, input, r.seconds, r.gflops, "", "", "", "", "", "", "", "", "", "", ratio
                ),
            }
        }
    }
    for s in &report.skipped {
        println!(
            "skipped: {} on {} from {:?} memory at n = {}: {}",
            s.operation.name(),
            s.backend,
            s.input,
            s.n,
            s.reason
        );
    }
}
