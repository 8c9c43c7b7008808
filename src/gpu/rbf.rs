//! Pairwise squared distances between neuron columns on the GPU, computed directly as
//! `sum_t (a_ti - a_tj)^2` by the tiled kernel of [`crate::gpu::gram`] (never from
//! `G_ii + G_jj - 2 G_ij`, which cancels for near-duplicate neurons), and the RBF kernel
//! from them. `exp` runs on the host over the f64 distances: it is n^2 work against the
//! m n^2 of the distances, and beta may depend on all of them (the median heuristic).

use crate::error::Result;
use crate::gpu::gram::RowFormat;
use crate::gpu::stats::GpuStats;
use crate::gpu::GpuContext;
use crate::rbf::{rbf_from_distances, Beta, RbfKernel};
use crate::types::{Distances, StatsKind};

/// `D_ij = ||v_i - v_j||^2` between the columns of the `m x n` activations already in
/// `buffer` (row-major, laid out as `format` says; usage must include `STORAGE`).
pub fn distances_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
) -> Result<Distances> {
    let mut stats = GpuStats::new(ctx, n, StatsKind::Distances)?;
    // Read before this returns: the buffer cannot change in between.
    stats.push_buffer(ctx, buffer, 0, m, format, true)?;
    let (_, squared, _, samples) = stats.finish(ctx)?;
    Ok(Distances {
        squared: squared.expect("kept"),
        samples,
    })
}

/// `L = exp(-beta D) + eps I` over the `m x n` activations already in `buffer`.
pub fn rbf_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
    beta: Beta,
    eps: f64,
) -> Result<RbfKernel> {
    let d = distances_from_buffer(ctx, buffer, format, m, n)?;
    rbf_from_distances(d, beta, eps)
}
