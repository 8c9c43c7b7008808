//! Kernel construction timed on each backend, for people who compare CPU and GPU: the Gram
//! matrix, the RBF kernel and the fusion assembly, on synthetic activations or given ones,
//! from host memory and, on the GPU, from a device-resident buffer (the embedding path).
//! GPU rows carry their stage split from the context's counters and timestamp queries.
//! `divnet bench` prints what [`run`] returns.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::gram::RowFormat;
use crate::gpu::{GpuContext, GpuCounters};
use crate::kernel::{rbf_from_distances, Beta, LayerStats, SliceRows, StatsKind};
use crate::progress::Progress;
use crate::types::{ActivationRows, GramStats, NextLayer};

/// An operation that [`run`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `G = A^T A` and `s = A^T 1` (2 m n^2 flops counted).
    Gram,
    /// `L = exp(-beta D) + eps I` with D the pairwise squared distances (2 m n^2 counted).
    Rbf,
    /// The fusion system for keeping every fourth neuron, into a next layer of n / 2
    /// outputs: `R = [G_YP; s_P^T] W_P^T` and the two energies (2 n_out ((k+1)^2 + (k+1)
    /// |P| + |P|^2) counted, the three gathered products).
    Fusion,
}

impl Operation {
    /// "gram", "rbf" or "fusion".
    pub fn name(self) -> &'static str {
        match self {
            Operation::Gram => "gram",
            Operation::Rbf => "rbf",
            Operation::Fusion => "fusion",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gram" => Ok(Operation::Gram),
            "rbf" => Ok(Operation::Rbf),
            "fusion" => Ok(Operation::Fusion),
            other => Err(Error::invalid(format!(
                "unknown operation {other:?}: expected gram, rbf or fusion"
            ))),
        }
    }
}

/// Where the activations are when the operation starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// In host memory: uploading them is part of the time.
    Host,
    /// Already in a GPU buffer (an application's activations): nothing is uploaded.
    Device,
}

/// The machine the figures come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Environment {
    /// Threads the CPU twins use.
    pub cpu_threads: usize,
    /// The GPU adapter ("name (backend, device type)"), if one was used.
    pub adapter: Option<String>,
    /// Its driver and driver details, as the adapter reports them.
    pub driver: Option<String>,
    /// Whether the adapter is a software one (lavapipe, WARP, SwiftShader): its figures say
    /// nothing about GPU speed.
    pub software_adapter: bool,
    /// Whether the GPU rows have device time from timestamp queries.
    pub timestamps: bool,
}

/// One timed run (the fastest of the repeats).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    /// What ran.
    pub operation: Operation,
    /// "cpu" or "gpu".
    pub backend: &'static str,
    /// Where its input was.
    pub input: Residency,
    /// Samples (rows).
    pub m: usize,
    /// Neurons.
    pub n: usize,
    /// Wall seconds.
    pub seconds: f64,
    /// Flops counted (see [`Operation`]).
    pub flops: f64,
    /// `flops / seconds / 1e9`.
    pub gflops: f64,
    /// GPU rows: what the context did during the run (stage times, submits, readbacks,
    /// uploads, allocations).
    pub gpu: Option<GpuCounters>,
}

/// A run that was not made, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    /// What would have run.
    pub operation: Operation,
    /// "cpu" or "gpu".
    pub backend: &'static str,
    /// Where its input would have been.
    pub input: Residency,
    /// Neurons.
    pub n: usize,
    /// Why not.
    pub reason: String,
}

/// Everything [`run`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// The machine.
    pub environment: Environment,
    /// "f32" or "f16": how the activations were stored and uploaded.
    pub dtype: &'static str,
    /// The runs, in the order made.
    pub measurements: Vec<Measurement>,
    /// The runs left out.
    pub skipped: Vec<Skipped>,
}

impl BenchReport {
    /// CPU seconds over GPU seconds for `operation` at `n` with GPU input `input`: how many
    /// times faster the GPU is (below 1: slower).
    pub fn speedup(&self, operation: Operation, n: usize, input: Residency) -> Option<f64> {
        let find = |backend: &str, input: Residency| {
            self.measurements
                .iter()
                .find(|m| {
                    m.operation == operation && m.n == n && m.backend == backend && m.input == input
                })
                .map(|m| m.seconds)
        };
        Some(find("cpu", Residency::Host)? / find("gpu", input)?)
    }
}

/// The activations to time on.
#[derive(Clone, Debug)]
pub enum Activations<'a> {
    /// Generated: `m` rows for each width in `sizes`, ReLU-like values stored as f16 when
    /// `f16`, else f32.
    Synthetic {
        /// Rows.
        m: usize,
        /// The widths, in order.
        sizes: Vec<usize>,
        /// Store (and upload) as f16.
        f16: bool,
    },
    /// Given rows (an npy file's), `n` values each.
    Given {
        /// The rows.
        rows: ActivationRows<'a>,
        /// Their width.
        n: usize,
    },
}

/// How [`run`] runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The operations, in order.
    pub operations: Vec<Operation>,
    /// Runs per case; the fastest is kept.
    pub repeat: usize,
    /// On a software adapter, GPU runs counting more GFLOP than this are skipped (they
    /// would take minutes and measure a CPU emulating a GPU).
    pub software_gflop_limit: f64,
    /// Whether to time the CPU twins.
    pub cpu: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            operations: vec![Operation::Gram, Operation::Rbf, Operation::Fusion],
            repeat: 1,
            software_gflop_limit: 20.0,
            cpu: true,
        }
    }
}

/// The default ladder of widths at m = 32768: the sizes of the issue that asked for this.
pub const DEFAULT_SIZES: [usize; 4] = [1024, 2048, 4096, 8192];
/// The default number of rows.
pub const DEFAULT_ROWS: usize = 32768;

/// Describes the machine: CPU threads, and the adapter of `gpu`.
pub fn environment(gpu: Option<&GpuContext>) -> Environment {
    let info = gpu.and_then(|g| g.adapter_info());
    Environment {
        cpu_threads: rayon::current_num_threads(),
        adapter: gpu.map(|g| g.adapter_description()),
        driver: info.map(|i| format!("{} ({})", i.driver, i.driver_info)),
        software_adapter: gpu.is_some_and(|g| g.is_software()),
        timestamps: gpu.is_some_and(|g| {
            g.device()
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
        }),
    }
}

/// Times `opts.operations` on `activations`, on the CPU twins and, when `gpu` is given, on
/// the GPU from host memory and from a device buffer. Timing on the GPU is switched on
/// ([`GpuContext::enable_timing`]). `progress` hears of every run.
pub fn run(
    activations: &Activations<'_>,
    gpu: Option<&Arc<GpuContext>>,
    opts: &BenchOptions,
    progress: &mut dyn Progress,
) -> Result<BenchReport> {
    if let Some(ctx) = gpu {
        ctx.enable_timing();
    }
    let mut report = BenchReport {
        environment: environment(gpu.map(|g| g.as_ref())),
        dtype: "f32",
        measurements: Vec::new(),
        skipped: Vec::new(),
    };
    match activations {
        Activations::Synthetic { m, sizes, f16 } => {
            report.dtype = if *f16 { "f16" } else { "f32" };
            for &n in sizes {
                let data = synthetic(*m, n, *f16);
                let rows = match &data {
                    Data::F32(v) => ActivationRows::F32(v),
                    Data::F16(v) => ActivationRows::F16(v),
                };
                run_width(&mut report, rows, n, gpu, opts, progress)?;
            }
        }
        Activations::Given { rows, n } => {
            report.dtype = match rows {
                ActivationRows::F32(_) => "f32",
                ActivationRows::F16(_) => "f16",
            };
            run_width(&mut report, *rows, *n, gpu, opts, progress)?;
        }
    }
    Ok(report)
}

enum Data {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// `m x n` ReLU-like values: max(0, u) for u uniform in [-0.5, 1), from a hash of the
/// position (so any thread can make any part, and every run the same).
fn synthetic(m: usize, n: usize, f16: bool) -> Data {
    let value = |k: usize| {
        let mut z = (k as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
        (1.5 * u - 0.5).max(0.0)
    };
    if f16 {
        Data::F16(
            (0..m * n)
                .into_par_iter()
                .map(|k| half::f16::from_f32(value(k)))
                .collect(),
        )
    } else {
        Data::F32((0..m * n).into_par_iter().map(value).collect())
    }
}

/// Every operation at one width.
fn run_width(
    report: &mut BenchReport,
    rows: ActivationRows<'_>,
    n: usize,
    gpu: Option<&Arc<GpuContext>>,
    opts: &BenchOptions,
    progress: &mut dyn Progress,
) -> Result<()> {
    let m = rows.whole_rows(n)?;
    let software = report.environment.software_adapter;
    // The statistics the fusion assembly starts from: the first Gram computed.
    let mut stats: Option<GramStats> = None;
    // Rows already on the device, made on first need.
    let mut resident: Option<wgpu::Buffer> = None;
    for &op in &opts.operations {
        let (flops, fusion) = match op {
            Operation::Fusion => {
                let stats = match stats.take() {
                    Some(s) => s,
                    None => crate::kernel::gram_stats(&Backend::Cpu, rows, n)?,
                };
                let problem = FusionProblem::new(stats);
                (problem.flops(), Some(problem))
            }
            _ => (2.0 * m as f64 * n as f64 * n as f64, None),
        };
        let mut cases = Vec::new();
        if opts.cpu {
            cases.push((Backend::Cpu, Residency::Host));
        }
        if let Some(ctx) = gpu {
            cases.push((Backend::Gpu(ctx.clone()), Residency::Host));
            if op != Operation::Fusion {
                cases.push((Backend::Gpu(ctx.clone()), Residency::Device));
            }
        }
        for (backend, input) in cases {
            let gflop = flops / 1e9;
            if software && backend.gpu().is_some() && gflop > opts.software_gflop_limit {
                report.skipped.push(Skipped {
                    operation: op,
                    backend: backend.name(),
                    input,
                    n,
                    reason: format!(
                        "{gflop:.1} GFLOP on a software adapter, over the limit of {} GFLOP: \
                         a CPU emulating a GPU takes long and says nothing of GPU speed",
                        opts.software_gflop_limit
                    ),
                });
                continue;
            }
            if input == Residency::Device && resident.is_none() {
                let ctx = backend.gpu().expect("device input is GPU only");
                match upload(ctx, rows, n) {
                    Ok(b) => resident = Some(b),
                    Err(e) => {
                        report.skipped.push(Skipped {
                            operation: op,
                            backend: backend.name(),
                            input,
                            n,
                            reason: format!("the activations do not fit one device buffer: {e}"),
                        });
                        continue;
                    }
                }
            }
            let stage =
                format!("{} {} {:?} n={n}", op.name(), backend.name(), input).to_lowercase();
            let mut best: Option<(f64, Option<GpuCounters>)> = None;
            for _ in 0..opts.repeat.max(1) {
                let before = backend.gpu().map(|c| c.counters()).transpose()?;
                let start = Instant::now();
                match (op, input) {
                    (Operation::Fusion, _) => {
                        let problem = fusion.as_ref().expect("made above");
                        progress.start(&stage, 1);
                        problem.assemble(&backend)?;
                        progress.finish();
                    }
                    (_, Residency::Host) => {
                        let kind = if op == Operation::Gram {
                            StatsKind::Gram
                        } else {
                            StatsKind::Distances
                        };
                        let mut engine = LayerStats::new(&backend, n, kind)?;
                        let mut source = SliceRows::new(rows, n)?;
                        engine.push_source(&mut source, &stage, progress)?;
                        let result = engine.finish()?;
                        match op {
                            Operation::Gram => {
                                if stats.is_none() {
                                    stats = result.gram;
                                }
                            }
                            _ => {
                                rbf_from_distances(result.into_distances()?, Beta::Paper, 1e-6)?;
                            }
                        }
                    }
                    (_, Residency::Device) => {
                        let buffer = resident.as_ref().expect("uploaded");
                        let kind = if op == Operation::Gram {
                            StatsKind::Gram
                        } else {
                            StatsKind::Distances
                        };
                        progress.start(&stage, 1);
                        let mut engine = LayerStats::new(&backend, n, kind)?;
                        engine.push_kept_buffer(buffer, 0, m, format_of(rows))?;
                        let result = engine.finish()?;
                        if op == Operation::Rbf {
                            rbf_from_distances(result.into_distances()?, Beta::Paper, 1e-6)?;
                        }
                        progress.finish();
                    }
                }
                let seconds = start.elapsed().as_secs_f64();
                let counters = match (backend.gpu(), before) {
                    (Some(ctx), Some(before)) => Some(ctx.counters()?.since(&before)),
                    _ => None,
                };
                if best.as_ref().is_none_or(|(s, _)| seconds < *s) {
                    best = Some((seconds, counters));
                }
            }
            let (seconds, gpu_counters) = best.expect("at least one run");
            report.measurements.push(Measurement {
                operation: op,
                backend: backend.name(),
                input,
                m,
                n,
                seconds,
                flops,
                gflops: flops / seconds / 1e9,
                gpu: gpu_counters,
            });
        }
        if let Some(problem) = fusion {
            stats = Some(problem.stats);
        }
    }
    Ok(())
}

fn format_of(rows: ActivationRows<'_>) -> RowFormat {
    match rows {
        ActivationRows::F32(_) => RowFormat::F32,
        ActivationRows::F16(_) => RowFormat::F16,
    }
}

/// The rows in one device buffer, laid out as [`RowFormat`] says (f16 packed two per word,
/// rows padded to whole words).
fn upload(ctx: &GpuContext, rows: ActivationRows<'_>, n: usize) -> Result<wgpu::Buffer> {
    match rows {
        ActivationRows::F32(v) => ctx.storage_buffer_init("bench activations", v),
        ActivationRows::F16(v) => {
            let words = RowFormat::F16.row_words(n);
            let mut packed = vec![0u32; v.len() / n * words];
            packed
                .par_chunks_mut(words)
                .zip(v.par_chunks(n))
                .for_each(|(dst, row)| {
                    for (c, h) in row.iter().enumerate() {
                        dst[c / 2] |= (h.to_bits() as u32) << (16 * (c % 2));
                    }
                });
            ctx.storage_buffer_init("bench activations", &packed)
        }
    }
}

/// The fusion case of one width: keep every fourth neuron, a next layer of n / 2 outputs.
struct FusionProblem {
    stats: GramStats,
    keep: Vec<usize>,
    dropped: Vec<usize>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    n_out: usize,
}

impl FusionProblem {
    fn new(stats: GramStats) -> Self {
        let n = stats.gram.nrows();
        let keep: Vec<usize> = (0..n).step_by(4).collect();
        let dropped: Vec<usize> = (0..n).filter(|i| i % 4 != 0).collect();
        let n_out = (n / 2).max(1);
        let scale = 1.0 / (n as f32).sqrt();
        let weight = (0..n_out * n)
            .map(|k| scale * (((k * 7919) % 2003) as f32 / 1001.5 - 1.0))
            .collect();
        let bias = (0..n_out).map(|o| 0.01 * (o % 7) as f32).collect();
        Self {
            stats,
            keep,
            dropped,
            weight,
            bias,
            n_out,
        }
    }

    fn flops(&self) -> f64 {
        let (k1, p) = (self.keep.len() as f64 + 1.0, self.dropped.len() as f64);
        2.0 * self.n_out as f64 * (k1 * k1 + k1 * p + p * p)
    }

    fn assemble(&self, backend: &Backend) -> Result<()> {
        let next = NextLayer {
            weight: &self.weight,
            bias: Some(&self.bias),
            n_out: self.n_out,
            n_in: self.stats.gram.nrows(),
        };
        match backend {
            Backend::Cpu => {
                crate::cpu::fusion::assemble(&self.stats, &self.keep, &self.dropped, next)?;
            }
            Backend::Gpu(ctx) => {
                crate::gpu::fusion::assemble(ctx, &self.stats, &self.keep, &self.dropped, next)?;
            }
        }
        Ok(())
    }
}
