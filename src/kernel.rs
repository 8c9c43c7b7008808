//! Kernel construction: the statistics of a layer's activations (the Gram matrix and column
//! sums for fusion, the pairwise distances between neurons for the RBF kernel), on the GPU
//! ([`crate::gpu`]) or the CPU ([`crate::cpu`]) as the [`Backend`] says.
//!
//! [`LayerStats`] is the one statistics engine: it takes a layer's activations chunk by
//! chunk (so a calibration set never has to be held at once) and collects what
//! [`StatsKind`] asks for in the same pass. The one-shot functions ([`gram_stats`],
//! [`rbf_kernel`], [`layer_statistics`]) wrap it.

use std::sync::Arc;

use crate::backend::Backend;
use crate::cpu::gram::CpuGram;
use crate::error::{Error, Result};
use crate::gpu::gram::RowFormat;
use crate::gpu::stats::GpuStats;
use crate::gpu::GpuContext;
use crate::memory::{ensure_fits, Allocation};
use crate::progress::Progress;
use crate::types::GramStatsF32;

pub use crate::rbf::{rbf_from_distances, Beta, RbfKernel};
pub use crate::types::{
    ActivationRows, Distances, GramStats, RowSource, SliceRows, StatsKind, MAX_ACTIVATION,
};

/// What [`LayerStats::finish`] returns: the statistics its [`StatsKind`] asked for.
#[derive(Clone, Debug)]
pub struct LayerStatistics {
    /// `G` and `s`, for [`StatsKind::Gram`] and [`StatsKind::Both`].
    pub gram: Option<GramStats>,
    /// `D`, for [`StatsKind::Distances`] and [`StatsKind::Both`].
    pub distances: Option<Distances>,
}

impl LayerStatistics {
    /// The Gram statistics; an error when they were not collected.
    pub fn into_gram(self) -> Result<GramStats> {
        self.gram
            .ok_or_else(|| Error::invalid("the Gram statistics were not collected"))
    }

    /// The distances; an error when they were not collected.
    pub fn into_distances(self) -> Result<Distances> {
        self.distances
            .ok_or_else(|| Error::invalid("the distances were not collected"))
    }
}

enum Engine {
    /// One product serves every kind: the centred co-moments M, in f32 products per chunk
    /// added in f64, from which G and D follow (see [`crate::cpu::gram`]).
    Cpu(CpuGram),
    /// The tiled kernels, accumulating on the device: Gram and distances from one upload of
    /// each chunk when both are asked for.
    Gpu {
        ctx: Arc<GpuContext>,
        stats: Box<GpuStats>,
    },
}

/// The statistics engine: streams row chunks of a layer's activations (host rows with
/// [`LayerStats::push`], rows already on the GPU with [`LayerStats::push_buffer`], a whole
/// [`RowSource`] with [`LayerStats::push_source`]) into what its [`StatsKind`] asks for.
///
/// On the GPU the running sums stay on the device and the result is read back once, by
/// [`LayerStats::finish`]. When a layer is so wide that its accumulators do not fit the
/// device's memory budget at once ([`GpuContext::memory_budget`]), they are computed in
/// groups, one pass over the activations per group: [`LayerStats::push_source`] reads its
/// source once per group, and rows given to [`LayerStats::push`] are kept on the host until
/// [`LayerStats::finish`] (device rows then need [`LayerStats::push_kept_buffer`], whose
/// buffers keep their contents until then).
pub struct LayerStats {
    n: usize,
    kind: StatsKind,
    engine: Engine,
    /// Rows came from GPU buffers, whose values were not checked.
    device_rows: bool,
}

impl LayerStats {
    /// An empty engine for a layer of `n >= 1` neurons on `backend`. Checks that the host
    /// can hold the n x n results and what the engine holds beside them
    /// ([`LayerStats::planned_host_memory`]); on the GPU, allocates the device accumulators.
    pub fn new(backend: &Backend, n: usize, kind: StatsKind) -> Result<Self> {
        Self::checked(backend, n, kind, || {
            Self::planned_host_memory(backend, n, 1, kind)
        })
    }

    /// The engine, once n is at least 1 and the host can hold `holds()`: the n x n
    /// matrices; the chunk of rows (its size depends on the rows pushed, 64 MiB at most)
    /// is left to the check's margin.
    fn checked(
        backend: &Backend,
        n: usize,
        kind: StatsKind,
        holds: impl FnOnce() -> Vec<Allocation>,
    ) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        ensure_fits(n, "statistics", holds())?;
        let engine = match backend {
            Backend::Cpu => Engine::Cpu(CpuGram::new(n)?),
            Backend::Gpu(ctx) => Engine::Gpu {
                ctx: ctx.clone(),
                stats: Box::new(GpuStats::new(ctx, n, kind)?),
            },
        };
        Ok(Self {
            n,
            kind,
            engine,
            device_rows: false,
        })
    }

    /// The host memory an engine of `kind` for `n` neurons holds at its peak over a pass of
    /// `rows` rows (during the pass, or while [`LayerStats::finish`] builds its results),
    /// allocation by allocation: what a caller's [`crate::memory::MemoryPlan`] counts before
    /// it starts a pass.
    ///
    /// It describes the engines as they are. The CPU twin keeps one f64 sum and merges each
    /// chunk's f32 product into it: a block of columns at a time (64 MiB) for n > 1024, one
    /// n x n product per thread otherwise; its chunk of rows is staged in f32 (8192 rows or
    /// 2^24 values at most); G and D are built in place of the sum, except for
    /// [`StatsKind::Both`], which hands back G and D as two matrices. The GPU engine reads
    /// its results back once, straight into one n x n f64 matrix per product, through a
    /// readback buffer and a two-slot input ring of mapped staging buffers.
    pub fn planned_host_memory(
        backend: &Backend,
        n: usize,
        rows: usize,
        kind: StatsKind,
    ) -> Vec<Allocation> {
        match backend {
            Backend::Cpu => {
                let pass = CpuGram::planned_pass_memory(n, rows);
                let mut finish = vec![Allocation::matrix("the Gram matrix G", n, n, 8)];
                if kind == StatsKind::Both {
                    finish.push(Allocation::matrix("the distances D", n, n, 8));
                }
                larger(pass, finish)
            }
            Backend::Gpu(_) => {
                let mut holds = Vec::new();
                if kind.has_gram() {
                    holds.push(Allocation::matrix("the Gram matrix G", n, n, 8));
                }
                if kind.has_distances() {
                    holds.push(Allocation::matrix("the distances D", n, n, 8));
                }
                holds.extend(crate::gpu::stats::staging_host_memory(n));
                holds
            }
        }
    }

    /// n, the layer's width.
    pub fn width(&self) -> usize {
        self.n
    }

    /// What this engine collects.
    pub fn kind(&self) -> StatsKind {
        self.kind
    }

    /// How many times [`LayerStats::push_source`] reads its source: 1, or on the GPU the
    /// number of groups of blocks when the layer's accumulators do not fit at once.
    pub fn source_passes(&self) -> usize {
        match &self.engine {
            Engine::Cpu(_) => 1,
            Engine::Gpu { stats, .. } => stats.source_passes(),
        }
    }

    /// Adds a chunk of whole rows (len % n == 0, any number of rows, even 0 or 1).
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(c) => c.push(rows),
            Engine::Gpu { ctx, stats } => stats.push(ctx, rows),
        }
    }

    /// Adds `rows` rows that already live in `buffer` on this engine's GPU, starting at byte
    /// `offset` (a multiple of 4), laid out as `format` says (usage must include `STORAGE`).
    /// Nothing is copied to the host; the rows are read where they are, before this returns
    /// (on the queue: the application may rewrite the buffer after it). Their values are not
    /// checked on the way in, as host rows are: a NaN, an infinity or a value beyond about
    /// 1e15 makes [`LayerStats::finish`] an error.
    ///
    /// An error on the CPU backend, and when the statistics are computed in several groups
    /// ([`LayerStats::source_passes`] > 1: a layer too wide for the device memory budget),
    /// which read every row once per group at [`LayerStats::finish`]: use
    /// [`LayerStats::push_kept_buffer`] then.
    pub fn push_buffer(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        self.push_device_rows(buffer, offset, rows, format, false)
    }

    /// [`LayerStats::push_buffer`] for rows that the buffer keeps, unchanged, until
    /// [`LayerStats::finish`]: in several groups, they are read again then, once per group
    /// (rewritten, they would give wrong statistics, with no error).
    pub fn push_kept_buffer(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        self.push_device_rows(buffer, offset, rows, format, true)
    }

    fn push_device_rows(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
        unchanged: bool,
    ) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(_) => Err(Error::invalid(
                "activations in a GPU buffer need the GPU backend",
            )),
            Engine::Gpu { ctx, stats } => {
                self.device_rows = true;
                stats.push_buffer(ctx, buffer, offset, rows, format, unchanged)
            }
        }
    }

    /// The rows of `source` (whose width must be this engine's), read once, or once per
    /// group of blocks (see [`LayerStats::source_passes`]), with `progress` advanced by rows
    /// over all passes as a stage called `stage`.
    pub fn push_source(
        &mut self,
        source: &mut dyn RowSource,
        stage: &str,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if source.width() != self.n {
            return Err(Error::invalid(format!(
                "activations have {} neurons per row, the statistics expect {}",
                source.width(),
                self.n
            )));
        }
        let n = self.n;
        let passes = self.source_passes();
        progress.start(stage, (source.rows() * passes) as u64);
        let result = match &mut self.engine {
            Engine::Cpu(c) => source.pass(&mut |rows| {
                c.push(rows)?;
                progress.advance((rows.len() / n) as u64);
                Ok(())
            }),
            Engine::Gpu { ctx, stats } => {
                stats.push_source(ctx, source, &mut |rows| progress.advance(rows))
            }
        };
        progress.finish();
        result
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        match &self.engine {
            Engine::Cpu(c) => c.samples(),
            Engine::Gpu { stats, .. } => stats.samples(),
        }
    }

    /// A CPU engine of [`StatsKind::Both`] for [`LayerStats::finish_rounding_gram`],
    /// checked against what that finish holds (the f64 co-moments and their rounded copy) instead of
    /// G and D in f64. The GPU engine hands G and D back from the device together, so
    /// rounding there would add to its peak rather than lower it: an error on the GPU.
    pub(crate) fn new_rounding_gram(backend: &Backend, n: usize) -> Result<Self> {
        if backend.gpu().is_some() {
            return Err(Error::invalid(
                "only the CPU statistics engine rounds the Gram matrix",
            ));
        }
        Self::checked(backend, n, StatsKind::Both, || {
            Self::planned_host_memory_rounding_gram(n, 1)
        })
    }

    /// [`LayerStats::finish`] of an engine from [`LayerStats::new_rounding_gram`], for the
    /// one-pass route when only the fusion reads G: the centred co-moments rounded to f32
    /// ([`GramStatsF32`]) beside the distances. The rounding comes first and the distances
    /// then overwrite the f64 co-moments, so that two n x n f64 matrices are never held.
    pub(crate) fn finish_rounding_gram(self) -> Result<(GramStatsF32, Distances)> {
        match (self.engine, self.kind) {
            (Engine::Cpu(c), StatsKind::Both) => {
                let centred = c.finish();
                let samples = centred.samples;
                let rounded =
                    GramStatsF32::round(&centred.comoments, centred.col_sums.clone(), samples);
                let squared = crate::cpu::rbf::distances_in_place(centred);
                Ok((rounded, Distances { squared, samples }))
            }
            _ => Err(Error::invalid(
                "rounding the Gram matrix needs the CPU engine collecting both statistics",
            )),
        }
    }

    /// What [`LayerStats::finish_rounding_gram`] holds at its peak, as
    /// [`LayerStats::planned_host_memory`] counts a pass: the pass, or the f64 co-moments
    /// beside their rounded copy.
    pub(crate) fn planned_host_memory_rounding_gram(n: usize, rows: usize) -> Vec<Allocation> {
        let pass = CpuGram::planned_pass_memory(n, rows);
        let finish = vec![
            Allocation::matrix("the Gram matrix G", n, n, 8),
            Allocation::matrix("the Gram matrix G in f32", n, n, 4),
        ];
        larger(pass, finish)
    }

    /// The statistics, each with both triangles filled.
    pub fn finish(self) -> Result<LayerStatistics> {
        let kind = self.kind;
        match self.engine {
            Engine::Cpu(c) => {
                let centred = c.finish();
                let samples = centred.samples;
                Ok(match kind {
                    StatsKind::Gram => LayerStatistics {
                        gram: Some(centred.into_gram()),
                        distances: None,
                    },
                    StatsKind::Distances => LayerStatistics {
                        gram: None,
                        distances: Some(Distances {
                            squared: crate::cpu::rbf::distances_in_place(centred),
                            samples,
                        }),
                    },
                    StatsKind::Both => LayerStatistics {
                        distances: Some(Distances {
                            squared: crate::cpu::rbf::distances_from_comoments(&centred),
                            samples,
                        }),
                        gram: Some(centred.into_gram()),
                    },
                })
            }
            Engine::Gpu { ctx, stats } => {
                let (gram, distances, col_sums, samples) = stats.finish(&ctx)?;
                // Host rows are checked on the way in; rows from GPU buffers only here.
                let finite = |m: &Option<faer::Mat<f64>>| {
                    m.as_ref()
                        .is_none_or(|m| m.col_iter().all(|c| c.iter().all(|v| v.is_finite())))
                };
                if self.device_rows
                    && !(finite(&gram)
                        && finite(&distances)
                        && col_sums.iter().all(|v| v.is_finite()))
                {
                    return Err(Error::invalid(
                        "the statistics are not finite: the activations given in GPU buffers \
                         hold a NaN, an infinity or a value whose square overflows f32 (rows from a \
                         buffer are not checked on the way in)",
                    ));
                }
                Ok(LayerStatistics {
                    gram: gram.map(|gram| GramStats {
                        gram,
                        col_sums,
                        samples,
                    }),
                    distances: distances.map(|squared| Distances { squared, samples }),
                })
            }
        }
    }
}

/// Whichever of the CPU engine's pass and its finish holds more: its peak.
fn larger(pass: Vec<Allocation>, finish: Vec<Allocation>) -> Vec<Allocation> {
    let bytes = |v: &[Allocation]| v.iter().map(|a| a.bytes).sum::<u64>();
    if bytes(&finish) >= bytes(&pass) {
        finish
    } else {
        pass
    }
}

/// One pass of `source` through a [`LayerStats`] of `kind` on `backend`.
pub fn layer_statistics(
    backend: &Backend,
    source: &mut dyn RowSource,
    kind: StatsKind,
    progress: &mut dyn Progress,
) -> Result<LayerStatistics> {
    let mut stats = LayerStats::new(backend, source.width(), kind)?;
    stats.push_source(source, "statistics", progress)?;
    stats.finish()
}

/// `G = A^T A` and `s = A^T 1` of whole in-memory activations (`rows x n`).
pub fn gram_stats(backend: &Backend, rows: ActivationRows<'_>, n: usize) -> Result<GramStats> {
    let mut stats = LayerStats::new(backend, n, StatsKind::Gram)?;
    stats.push(rows)?;
    stats.finish()?.into_gram()
}

/// The pairwise squared distances between the neurons of whole in-memory activations.
pub fn distances(backend: &Backend, rows: ActivationRows<'_>, n: usize) -> Result<Distances> {
    let mut stats = LayerStats::new(backend, n, StatsKind::Distances)?;
    stats.push(rows)?;
    stats.finish()?.into_distances()
}

/// The RBF kernel over the neurons of whole in-memory activations (`rows x n`).
pub fn rbf_kernel(
    backend: &Backend,
    rows: ActivationRows<'_>,
    n: usize,
    beta: Beta,
    eps: f64,
) -> Result<RbfKernel> {
    rbf_from_distances(distances(backend, rows, n)?, beta, eps)
}
