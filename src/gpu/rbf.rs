//! Pairwise squared distances between neuron columns on the GPU, computed directly as
//! `sum_t (a_ti - a_tj)^2` by the tiled kernel of [`crate::gpu::gram`] (never from
//! `G_ii + G_jj - 2 G_ij`, which cancels for near-duplicate neurons), and the RBF kernel
//! from them. `exp` runs on the host over the f64 distances: it is n^2 work against the
//! m n^2 of the distances, and the chunk sums are added in f64 on the host anyway.

use crate::error::Result;
use crate::gpu::gram::{product_from_buffer, Product, RowFormat};
use crate::gpu::GpuContext;
use crate::rbf::{rbf_from_distances, Beta, RbfKernel};
use crate::types::Distances;

/// `D_ij = ||v_i - v_j||^2` between the columns of the `m x n` activations already in
/// `buffer` (row-major, laid out as `format` says; usage must include `STORAGE`).
pub fn distances_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
) -> Result<Distances> {
    let (squared, _, samples) = product_from_buffer(ctx, buffer, format, m, n, Product::Distance)?;
    Ok(Distances { squared, samples })
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
    rbf_from_distances(&d, beta, eps)
}
