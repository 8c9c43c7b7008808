//! Kernel construction: the Gram statistics of a layer's activations and the RBF kernel
//! over its neurons. Entry points dispatch to [`crate::gpu`] or [`crate::cpu`] by
//! [`crate::Backend`].
//!
//! The streaming accumulators ([`GramAccumulator`], [`DistanceAccumulator`]) take a layer's
//! activations chunk by chunk, so a calibration set never has to be held at once; the
//! one-shot functions ([`gram_stats`], [`rbf_kernel`]) wrap them for in-memory data.

use std::sync::Arc;

use faer::Mat;

use crate::backend::Backend;
use crate::cpu::gram::{CpuGram, Precision};
use crate::cpu::rbf::CpuDistances;
use crate::error::{Error, Result};
use crate::gpu::gram::{Product, StagedProduct};
use crate::gpu::GpuContext;
use crate::io::npy::{NpyArray, NpyData};
use crate::memory::ensure_host_matrix;

/// What one pass over a calibration set yields for a layer of n neurons over m samples:
/// the Gram matrix `G = A^T A` (n x n, f64, both triangles filled) and the column sums
/// `s = A^T 1`. Everything fusion needs, and the RBF kernel can be derived from it.
#[derive(Clone, Debug)]
pub struct GramStats {
    /// `G = A^T A`, n x n, symmetric.
    pub gram: Mat<f64>,
    /// `s = A^T 1`, length n.
    pub col_sums: Vec<f64>,
    /// m, the number of samples accumulated.
    pub samples: usize,
}

/// The RBF bandwidth beta in `L_ij = exp(-beta * ||v_i - v_j||^2)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beta {
    /// The paper's default, `10 / m`.
    Paper,
    /// The median heuristic, `1 / median_{i<j} ||v_i - v_j||^2`.
    Median,
    /// A given positive value.
    Value(f64),
}

impl std::str::FromStr for Beta {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Beta::Paper),
            "median" => Ok(Beta::Median),
            other => match other.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Beta::Value(v)),
                _ => Err(Error::invalid(format!(
                    "invalid beta {other:?}: expected paper, median or a positive number"
                ))),
            },
        }
    }
}

impl Beta {
    /// The value of beta for these distances: `10 / m` (paper), `1 / median_{i<j} D_ij`
    /// (median; an error when there is no pair or the median is 0), or the given value.
    pub fn resolve(&self, d: &Distances) -> Result<f64> {
        let beta = match *self {
            Beta::Paper => {
                if d.samples == 0 {
                    return Err(Error::invalid("beta = 10/m needs at least one sample"));
                }
                10.0 / d.samples as f64
            }
            Beta::Median => {
                let n = d.squared.nrows();
                let mut off: Vec<f64> = (0..n)
                    .flat_map(|j| (0..j).map(move |i| (i, j)))
                    .map(|(i, j)| d.squared[(i, j)])
                    .collect();
                if off.is_empty() {
                    return Err(Error::invalid(
                        "the median heuristic needs at least two neurons",
                    ));
                }
                let mid = off.len() / 2;
                let (_, &mut upper, _) = off.select_nth_unstable_by(mid, f64::total_cmp);
                let median = if off.len() % 2 == 1 {
                    upper
                } else {
                    let lower = off[..mid].iter().copied().fold(f64::MIN, f64::max);
                    0.5 * (lower + upper)
                };
                if median <= 0.0 {
                    return Err(Error::invalid(
                        "the median squared distance between neurons is 0 (most neurons are \
                         identical on these samples): give beta as a number",
                    ));
                }
                1.0 / median
            }
            Beta::Value(v) => v,
        };
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::invalid(format!(
                "beta must be a positive finite number, got {beta}"
            )));
        }
        Ok(beta)
    }
}

/// Row-major activations: `rows x n` samples x neurons, as f32 or as f16.
#[derive(Clone, Copy, Debug)]
pub enum ActivationRows<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// Half precision (uploaded to the GPU as is, two values per 32-bit word).
    F16(&'a [half::f16]),
}

impl<'a> ActivationRows<'a> {
    /// The rows of an npy array as the kernels take them: f16 and f32 as stored, any other
    /// type rounded to f32 into `rounded` (which then holds the data).
    pub fn from_npy(a: &'a NpyArray, rounded: &'a mut Vec<f32>) -> Self {
        match &a.data {
            NpyData::F16(v) => ActivationRows::F16(v),
            NpyData::F32(v) => ActivationRows::F32(v),
            _ => {
                *rounded = a.to_f32();
                let rounded: &'a Vec<f32> = rounded;
                ActivationRows::F32(rounded)
            }
        }
    }
}

impl ActivationRows<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            ActivationRows::F32(v) => v.len(),
            ActivationRows::F16(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of whole rows of `n` values; an error when the length is not a multiple
    /// of `n` or a value is not finite.
    pub fn row_count(&self, n: usize) -> Result<usize> {
        let count = self.whole_rows(n)?;
        self.check_finite(n)?;
        Ok(count)
    }

    /// The number of whole rows of `n` values; an error when the length is not a multiple
    /// of `n`. Values are not looked at.
    pub(crate) fn whole_rows(&self, n: usize) -> Result<usize> {
        let len = self.len();
        if n == 0 || !len.is_multiple_of(n) {
            return Err(Error::invalid(format!(
                "{len} activation values are not whole rows of n = {n}"
            )));
        }
        Ok(len / n)
    }

    /// An error naming the first value that is not finite (row and neuron), if any.
    pub(crate) fn check_finite(&self, n: usize) -> Result<()> {
        let bad = match self {
            ActivationRows::F32(v) => v.iter().position(|x| !x.is_finite()),
            ActivationRows::F16(v) => v.iter().position(|x| !x.is_finite()),
        };
        match bad {
            Some(k) => Err(Error::invalid(format!(
                "activation at row {}, neuron {} is not finite",
                k / n,
                k % n
            ))),
            None => Ok(()),
        }
    }
}

enum Engine<C, G> {
    Cpu(C),
    Gpu(Arc<GpuContext>, G),
}

/// Streams row chunks of a layer's activations into `G = A^T A` and `s = A^T 1`.
///
/// On the GPU rows are staged into chunks of up to 4096 rows; each chunk's f32 sums are
/// added in f64 on the host, so precision does not drift with m.
pub struct GramAccumulator {
    engine: Engine<CpuGram, StagedProduct>,
}

impl GramAccumulator {
    /// An empty accumulator for a layer of `n >= 1` neurons. Allocates no GPU memory yet.
    pub fn new(backend: &Backend, n: usize) -> Result<Self> {
        ensure_host_matrix(n)?;
        let engine = match backend {
            Backend::Cpu => Engine::Cpu(CpuGram::new(n, Precision::F32)?),
            Backend::Gpu(ctx) => {
                Engine::Gpu(ctx.clone(), StagedProduct::new(ctx, n, Product::Gram)?)
            }
        };
        Ok(Self { engine })
    }

    /// Adds a chunk of whole rows (len % n == 0, may be any number of rows, even 0 or 1).
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(c) => c.push(rows),
            Engine::Gpu(ctx, g) => g.push(ctx, rows),
        }
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        match &self.engine {
            Engine::Cpu(c) => c.samples(),
            Engine::Gpu(_, g) => g.samples(),
        }
    }

    /// The Gram matrix (both triangles), the column sums and m.
    pub fn finish(self) -> Result<GramStats> {
        let (gram, col_sums, samples) = match self.engine {
            Engine::Cpu(c) => c.finish(),
            Engine::Gpu(ctx, g) => g.finish(&ctx)?,
        };
        Ok(GramStats {
            gram,
            col_sums,
            samples,
        })
    }
}

/// Pairwise squared distances between a layer's neurons over m samples.
#[derive(Clone, Debug)]
pub struct Distances {
    /// `D_ij = ||v_i - v_j||^2`, n x n, symmetric, zero diagonal.
    pub squared: Mat<f64>,
    /// m.
    pub samples: usize,
}

/// Streams row chunks into the pairwise squared distances D_ij = ||v_i - v_j||^2 between
/// neuron columns, computed so that near-duplicate neurons do not suffer from cancellation.
///
/// The GPU sums `(a_ti - a_tj)^2` directly; the CPU derives D from an f64 Gram, whose
/// cancellation error is far below the kernel's tolerance (see [`crate::cpu::rbf`]).
pub struct DistanceAccumulator {
    engine: Engine<CpuDistances, StagedProduct>,
}

impl DistanceAccumulator {
    /// An empty accumulator for a layer of `n >= 1` neurons. Allocates no GPU memory yet.
    pub fn new(backend: &Backend, n: usize) -> Result<Self> {
        ensure_host_matrix(n)?;
        let engine = match backend {
            Backend::Cpu => Engine::Cpu(CpuDistances::new(n)?),
            Backend::Gpu(ctx) => {
                Engine::Gpu(ctx.clone(), StagedProduct::new(ctx, n, Product::Distance)?)
            }
        };
        Ok(Self { engine })
    }

    /// Adds a chunk of whole rows (len % n == 0, may be any number of rows, even 0 or 1).
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(c) => c.push(rows),
            Engine::Gpu(ctx, g) => g.push(ctx, rows),
        }
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        match &self.engine {
            Engine::Cpu(c) => c.samples(),
            Engine::Gpu(_, g) => g.samples(),
        }
    }

    /// The distances and m.
    pub fn finish(self) -> Result<Distances> {
        match self.engine {
            Engine::Cpu(c) => Ok(c.finish()),
            Engine::Gpu(ctx, g) => {
                let (squared, _, samples) = g.finish(&ctx)?;
                Ok(Distances { squared, samples })
            }
        }
    }
}

/// Both statistics of a layer from one pass over its activations: the Gram statistics (for
/// fusion and importance) and the pairwise distances (for the kernel).
///
/// On the CPU one f64 Gram serves both, instead of an f32 Gram beside an f64 one; on the GPU
/// the Gram and the direct-distance kernels both run on each chunk.
pub struct LayerStatsAccumulator {
    engine: Engine<CpuGram, (StagedProduct, StagedProduct)>,
}

impl LayerStatsAccumulator {
    /// An empty accumulator for a layer of `n >= 1` neurons.
    pub fn new(backend: &Backend, n: usize) -> Result<Self> {
        ensure_host_matrix(n)?;
        let engine = match backend {
            Backend::Cpu => Engine::Cpu(CpuGram::new(n, Precision::F64)?),
            Backend::Gpu(ctx) => Engine::Gpu(
                ctx.clone(),
                (
                    StagedProduct::new(ctx, n, Product::Gram)?,
                    StagedProduct::new(ctx, n, Product::Distance)?,
                ),
            ),
        };
        Ok(Self { engine })
    }

    /// Adds a chunk of whole rows (len % n == 0).
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(c) => c.push(rows),
            Engine::Gpu(ctx, (g, d)) => {
                g.push(ctx, rows)?;
                d.push(ctx, rows)
            }
        }
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        match &self.engine {
            Engine::Cpu(c) => c.samples(),
            Engine::Gpu(_, (g, _)) => g.samples(),
        }
    }

    /// The Gram statistics and the distances.
    pub fn finish(self) -> Result<(GramStats, Distances)> {
        let ((gram, col_sums, samples), squared) = match self.engine {
            Engine::Cpu(c) => {
                let stats = c.finish();
                let squared = crate::cpu::rbf::squared_distances_from_gram(&stats.0);
                (stats, squared)
            }
            Engine::Gpu(ctx, (g, d)) => (g.finish(&ctx)?, d.finish(&ctx)?.0),
        };
        Ok((
            GramStats {
                gram,
                col_sums,
                samples,
            },
            Distances { squared, samples },
        ))
    }
}

/// L = exp(-beta D) + eps I, with the beta actually used.
#[derive(Clone, Debug)]
pub struct RbfKernel {
    /// L, n x n, symmetric positive definite when eps > 0.
    pub matrix: Mat<f64>,
    /// The bandwidth used.
    pub beta: f64,
    /// The diagonal shift used.
    pub eps: f64,
}

/// `L = exp(-beta D) + eps I` from distances; `eps` must be finite and >= 0.
pub fn rbf_from_distances(d: &Distances, beta: Beta, eps: f64) -> Result<RbfKernel> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(format!(
            "eps must be a finite number >= 0, got {eps}"
        )));
    }
    let beta = beta.resolve(d)?;
    let n = d.squared.nrows();
    let matrix = Mat::from_fn(n, n, |i, j| {
        let l = (-beta * d.squared[(i, j)]).exp();
        if i == j {
            l + eps
        } else {
            l
        }
    });
    Ok(RbfKernel { matrix, beta, eps })
}

/// `G = A^T A` and `s = A^T 1` of whole in-memory activations (`rows x n`).
pub fn gram_stats(backend: &Backend, rows: ActivationRows<'_>, n: usize) -> Result<GramStats> {
    let mut acc = GramAccumulator::new(backend, n)?;
    acc.push(rows)?;
    acc.finish()
}

/// The RBF kernel over the neurons of whole in-memory activations (`rows x n`).
pub fn rbf_kernel(
    backend: &Backend,
    rows: ActivationRows<'_>,
    n: usize,
    beta: Beta,
    eps: f64,
) -> Result<RbfKernel> {
    let mut acc = DistanceAccumulator::new(backend, n)?;
    acc.push(rows)?;
    rbf_from_distances(&acc.finish()?, beta, eps)
}
