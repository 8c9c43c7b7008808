//! The MLP forward pass on the GPU: the twin of [`Mlp::hidden`] and [`Mlp::forward`].
//!
//! Weights are uploaded once ([`GpuMlp::upload`]); inputs are processed in row chunks that
//! fit the device's storage-binding limit, and a chunk's hidden activations can stay on the
//! device ([`GpuMlp::hidden_buffer`]) to feed the Gram accumulator without a round trip.

use crate::error::{Error, Result};
use crate::gpu::{Binding, GpuContext, ShaderEntry};
use crate::model::{Activation, Mlp};

const LINEAR: ShaderEntry = ShaderEntry {
    key: "forward::linear",
    source: include_str!("../../shaders/linear.wgsl"),
    entry_point: "linear",
    groups: &[LINEAR_GROUP],
};
/// x, W, b, y, params.
const LINEAR_GROUP: &[Binding] = &[
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageMut,
    Binding::Uniform,
];

/// Output rows (and columns) per workgroup in `linear.wgsl`.
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    act: u32,
}

fn act_code(a: Activation) -> u32 {
    match a {
        Activation::Relu => 1,
        Activation::Tanh => 2,
        Activation::Sigmoid => 3,
        Activation::Gelu => 4,
    }
}

struct GpuLinear {
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    in_dim: usize,
    out_dim: usize,
}

/// An [`Mlp`] whose weights live on the GPU.
pub struct GpuMlp {
    layers: Vec<GpuLinear>,
    activation: Activation,
}

impl std::fmt::Debug for GpuMlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<usize> = self.layers.iter().map(|l| l.out_dim).collect();
        f.debug_struct("GpuMlp")
            .field("input_dim", &self.layers.first().map_or(0, |l| l.in_dim))
            .field("widths", &dims)
            .field("activation", &self.activation)
            .finish()
    }
}

impl GpuMlp {
    /// Uploads the weights and biases of `mlp`. Fails with [`Error::Gpu`] when a layer's
    /// weight matrix does not fit one storage binding or an allocation is refused.
    pub fn upload(ctx: &GpuContext, mlp: &Mlp) -> Result<GpuMlp> {
        mlp.validate()?;
        let max = ctx.max_binding_bytes();
        let mut layers = Vec::with_capacity(mlp.layers.len());
        for l in &mlp.layers {
            let bytes = (l.weight.len() * 4) as u64;
            if bytes > max {
                return Err(Error::Gpu(format!(
                    "layer {}: its {} x {} weight matrix ({bytes} bytes) exceeds the device's \
                     storage binding limit of {max} bytes",
                    l.name, l.out_dim, l.in_dim
                )));
            }
            layers.push(GpuLinear {
                weight: ctx.storage_buffer_init(&format!("{}.weight", l.name), &l.weight)?,
                bias: ctx.storage_buffer_init(&format!("{}.bias", l.name), &l.bias)?,
                in_dim: l.in_dim,
                out_dim: l.out_dim,
            });
        }
        Ok(GpuMlp {
            layers,
            activation: mlp.activation,
        })
    }

    /// The width of the input.
    pub fn input_dim(&self) -> usize {
        self.layers[0].in_dim
    }

    /// The most rows one call of [`GpuMlp::hidden_buffer`] takes for layers `0..=layer`:
    /// every intermediate block must fit one storage binding and the dispatch limits.
    pub fn max_rows(&self, ctx: &GpuContext, layer: usize) -> usize {
        let widest = self.layers[..=layer.min(self.layers.len() - 1)]
            .iter()
            .map(|l| l.in_dim.max(l.out_dim))
            .max()
            .unwrap_or(1);
        let by_binding = (ctx.max_binding_bytes() / (4 * widest as u64)) as usize;
        let by_dispatch = ctx.limits().max_compute_workgroups_per_dimension as usize * TILE;
        by_binding.min(by_dispatch)
    }

    /// The activations of hidden layer `layer` for the m rows of `x` (m x input_dim f32,
    /// already on the device), as a new device buffer of m x out_dim f32.
    /// `m` must be at most [`GpuMlp::max_rows`].
    pub fn hidden_buffer(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        m: usize,
        layer: usize,
    ) -> Result<wgpu::Buffer> {
        self.check_layer(layer)?;
        self.run(ctx, x, m, layer, true)
    }

    /// The activation-function output of hidden layer `layer` for m rows of x:
    /// m x out_dim, as [`Mlp::hidden`] computes it on the CPU.
    pub fn hidden(&self, ctx: &GpuContext, x: &[f32], m: usize, layer: usize) -> Result<Vec<f32>> {
        self.check_layer(layer)?;
        self.chunked(ctx, x, m, layer, true)
    }

    /// Logits for m rows of x: m x output_dim, as [`Mlp::forward`] computes them.
    pub fn forward(&self, ctx: &GpuContext, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.chunked(ctx, x, m, self.layers.len() - 1, false)
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer + 1 >= self.layers.len() {
            return Err(Error::invalid(format!(
                "layer {layer} is not a hidden layer of an MLP with {} layers",
                self.layers.len()
            )));
        }
        Ok(())
    }

    fn chunked(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        m: usize,
        last: usize,
        activate_last: bool,
    ) -> Result<Vec<f32>> {
        let d = self.input_dim();
        if x.len() != m * d {
            return Err(Error::invalid(format!(
                "input has {} values, expected {m} rows of {d}",
                x.len()
            )));
        }
        let out_dim = self.layers[last].out_dim;
        let rows = self.max_rows(ctx, last);
        if rows == 0 {
            return Err(Error::Gpu(format!(
                "the storage binding limit of {} bytes cannot hold one row of the layers",
                ctx.max_binding_bytes()
            )));
        }
        let mut out = Vec::with_capacity(m * out_dim);
        for start in (0..m).step_by(rows) {
            let end = (start + rows).min(m);
            let xb = ctx.storage_buffer_init("forward input", &x[start * d..end * d])?;
            let yb = self.run(ctx, &xb, end - start, last, activate_last)?;
            out.extend(ctx.read_buffer::<f32>(&yb, 0, (end - start) * out_dim)?);
        }
        Ok(out)
    }

    /// Encodes layers 0..=last on one command buffer and submits it.
    fn run(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        m: usize,
        last: usize,
        activate_last: bool,
    ) -> Result<wgpu::Buffer> {
        let max_rows = self.max_rows(ctx, last);
        if m == 0 || m > max_rows {
            return Err(Error::invalid(format!(
                "{m} rows per GPU forward block: expected 1 to {max_rows}"
            )));
        }
        if x.size() < (m * self.input_dim() * 4) as u64 {
            return Err(Error::invalid(format!(
                "the input buffer holds {} bytes, {m} rows of {} need {}",
                x.size(),
                self.input_dim(),
                m * self.input_dim() * 4
            )));
        }
        let pipeline = ctx.pipeline(LINEAR)?;
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("mlp forward"),
            });
        let mut input = x.clone();
        for (i, l) in self.layers[..=last].iter().enumerate() {
            let output = ctx.storage_buffer("forward output", (m * l.out_dim * 4) as u64)?;
            let act = if i < last || activate_last {
                act_code(self.activation)
            } else {
                0
            };
            let params = ctx.uniform_buffer(
                "forward params",
                &Params {
                    m: m as u32,
                    k: l.in_dim as u32,
                    n: l.out_dim as u32,
                    act,
                },
            )?;
            let bind = ctx.bind_buffers(
                "forward bind group",
                LINEAR_GROUP,
                &[&input, &l.weight, &l.bias, &output, &params],
            )?;
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("linear"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(
                    l.out_dim.div_ceil(TILE) as u32,
                    m.div_ceil(TILE) as u32,
                    1,
                );
            }
            input = output;
        }
        ctx.checked("forward submit", || ctx.queue().submit([encoder.finish()]))?;
        Ok(input)
    }
}
