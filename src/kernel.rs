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
use crate::cpu::gram::{CpuGram, Precision};
use crate::error::{Error, Result};
use crate::gpu::gram::{Product, RowFormat, StagedProduct};
use crate::gpu::GpuContext;
use crate::memory::ensure_host_matrices;
use crate::progress::Progress;

pub use crate::rbf::{rbf_from_distances, Beta, RbfKernel};
pub use crate::types::{ActivationRows, Distances, GramStats, RowSource, SliceRows};

/// What one pass of [`LayerStats`] collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsKind {
    /// `G = A^T A` and `s = A^T 1`: fusion, importance, the fusion-aware selection.
    Gram,
    /// `D_ij = ||v_i - v_j||^2`: the RBF kernel of the DPP methods.
    Distances,
    /// Both, from one read of the activations.
    Both,
}

impl StatsKind {
    /// Whether the Gram statistics are collected.
    pub fn has_gram(self) -> bool {
        matches!(self, StatsKind::Gram | StatsKind::Both)
    }

    /// Whether the distances are collected.
    pub fn has_distances(self) -> bool {
        matches!(self, StatsKind::Distances | StatsKind::Both)
    }

    /// The kind that collects what `gram` and `distances` ask for, or `None` for neither.
    pub fn of(gram: bool, distances: bool) -> Option<StatsKind> {
        match (gram, distances) {
            (true, true) => Some(StatsKind::Both),
            (true, false) => Some(StatsKind::Gram),
            (false, true) => Some(StatsKind::Distances),
            (false, false) => None,
        }
    }
}

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
    /// One Gram product serves every kind: in f32 chunks for the Gram alone, in f64 when
    /// distances are derived from it (`G_ii + G_jj - 2 G_ij` cancels for near-duplicate
    /// neurons, see [`crate::cpu::rbf`]).
    Cpu(CpuGram),
    /// The tiled Gram and direct-distance kernels, each where the kind asks for it.
    Gpu {
        ctx: Arc<GpuContext>,
        gram: Option<Box<StagedProduct>>,
        distances: Option<Box<StagedProduct>>,
    },
}

/// The statistics engine: streams row chunks of a layer's activations (host rows with
/// [`LayerStats::push`], rows already on the GPU with [`LayerStats::push_buffer`]) into
/// what its [`StatsKind`] asks for.
pub struct LayerStats {
    n: usize,
    kind: StatsKind,
    engine: Engine,
}

impl LayerStats {
    /// An empty engine for a layer of `n >= 1` neurons on `backend`. Checks that the host
    /// can hold the n x n results; allocates no GPU memory yet.
    pub fn new(backend: &Backend, n: usize, kind: StatsKind) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        let matrices = if kind == StatsKind::Both { 2 } else { 1 };
        ensure_host_matrices(n, matrices)?;
        let engine = match backend {
            Backend::Cpu => {
                let precision = if kind.has_distances() {
                    Precision::F64
                } else {
                    Precision::F32
                };
                Engine::Cpu(CpuGram::new(n, precision)?)
            }
            Backend::Gpu(ctx) => Engine::Gpu {
                ctx: ctx.clone(),
                gram: kind
                    .has_gram()
                    .then(|| StagedProduct::new(ctx, n, Product::Gram).map(Box::new))
                    .transpose()?,
                distances: kind
                    .has_distances()
                    .then(|| StagedProduct::new(ctx, n, Product::Distance).map(Box::new))
                    .transpose()?,
            },
        };
        Ok(Self { n, kind, engine })
    }

    /// n, the layer's width.
    pub fn width(&self) -> usize {
        self.n
    }

    /// What this engine collects.
    pub fn kind(&self) -> StatsKind {
        self.kind
    }

    /// Adds a chunk of whole rows (len % n == 0, any number of rows, even 0 or 1).
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(c) => c.push(rows),
            Engine::Gpu {
                ctx,
                gram,
                distances,
            } => {
                if let Some(g) = gram {
                    g.push(ctx, rows)?;
                }
                if let Some(d) = distances {
                    d.push(ctx, rows)?;
                }
                Ok(())
            }
        }
    }

    /// Adds `rows` rows that already live in `buffer` on this engine's GPU, starting at byte
    /// `offset` (a multiple of 4), laid out as `format` says (usage must include `STORAGE`).
    /// Nothing is copied to the host. An error on the CPU backend.
    pub fn push_buffer(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(_) => Err(Error::invalid(
                "activations in a GPU buffer need the GPU backend",
            )),
            Engine::Gpu {
                ctx,
                gram,
                distances,
            } => {
                if let Some(g) = gram {
                    g.push_buffer(ctx, buffer, offset, rows, format)?;
                }
                if let Some(d) = distances {
                    d.push_buffer(ctx, buffer, offset, rows, format)?;
                }
                Ok(())
            }
        }
    }

    /// One pass over `source` (whose width must be this engine's), with `progress` advanced
    /// by rows as a stage called `stage`.
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
        progress.start(stage, source.rows() as u64);
        let result = source.pass(&mut |rows| {
            self.push(rows)?;
            progress.advance((rows.len() / n) as u64);
            Ok(())
        });
        progress.finish();
        result
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        match &self.engine {
            Engine::Cpu(c) => c.samples(),
            Engine::Gpu {
                gram, distances, ..
            } => gram
                .as_ref()
                .or(distances.as_ref())
                .map_or(0, |p| p.samples()),
        }
    }

    /// The statistics, each with both triangles filled.
    pub fn finish(self) -> Result<LayerStatistics> {
        let kind = self.kind;
        match self.engine {
            Engine::Cpu(c) => {
                let (gram, col_sums, samples) = c.finish();
                Ok(match kind {
                    StatsKind::Gram => LayerStatistics {
                        gram: Some(GramStats {
                            gram,
                            col_sums,
                            samples,
                        }),
                        distances: None,
                    },
                    StatsKind::Distances => LayerStatistics {
                        gram: None,
                        distances: Some(Distances {
                            squared: crate::cpu::rbf::distances_in_place(gram),
                            samples,
                        }),
                    },
                    StatsKind::Both => LayerStatistics {
                        distances: Some(Distances {
                            squared: crate::cpu::rbf::squared_distances_from_gram(&gram),
                            samples,
                        }),
                        gram: Some(GramStats {
                            gram,
                            col_sums,
                            samples,
                        }),
                    },
                })
            }
            Engine::Gpu {
                ctx,
                gram,
                distances,
            } => Ok(LayerStatistics {
                gram: gram
                    .map(|g| {
                        g.finish(&ctx).map(|(gram, col_sums, samples)| GramStats {
                            gram,
                            col_sums,
                            samples,
                        })
                    })
                    .transpose()?,
                distances: distances
                    .map(|d| {
                        d.finish(&ctx)
                            .map(|(squared, _, samples)| Distances { squared, samples })
                    })
                    .transpose()?,
            }),
        }
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
    rbf_from_distances(&distances(backend, rows, n)?, beta, eps)
}
