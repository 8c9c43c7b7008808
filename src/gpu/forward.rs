//! The MLP forward pass on the GPU: the twin of [`Mlp::hidden`] and [`Mlp::forward`].
//!
//! Weights are uploaded once ([`GpuMlp::upload`]), each layer's weight matrix in blocks of
//! output neurons that fit one storage binding (so a layer wider than one binding still runs
//! on the GPU). A [`GpuForward`] runs layers `0..=last` on chunks of rows with device buffers
//! allocated once and reused; its output can stay on the device and feed the statistics
//! engine ([`crate::kernel::LayerStats::push_buffer`]) without a round trip through the host.

use std::collections::VecDeque;

use super::readback::{Readback, Region};
use crate::error::{Error, Result};
use crate::gpu::{Binding, GpuContext, ShaderEntry};
use crate::model::{Activation, Mlp};

const LINEAR: ShaderEntry = ShaderEntry {
    key: "forward::linear",
    source: include_str!("../../shaders/linear.wgsl"),
    entry_point: "linear",
    groups: &[LINEAR_GROUP],
};
/// x, W block, b block, y, params.
const LINEAR_GROUP: &[Binding] = &[
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageMut,
    Binding::Uniform,
];

/// Output rows (and columns) per workgroup in `linear.wgsl`.
const TILE: usize = 64;
/// Runs of a [`GpuForward`] in flight at most: the host prepares the next chunk while the
/// device computes the last, and never queues more.
const IN_FLIGHT: usize = 2;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    act: u32,
    col0: u32,
    ld_y: u32,
    _pad: [u32; 2],
}

fn act_code(a: Activation) -> u32 {
    match a {
        Activation::Relu => 1,
        Activation::Tanh => 2,
        Activation::Sigmoid => 3,
        Activation::Gelu => 4,
    }
}

/// Rows `col0 .. col0 + rows` of a layer's weight matrix, and their biases.
struct WeightBlock {
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    col0: usize,
    rows: usize,
}

struct GpuLinear {
    blocks: Vec<WeightBlock>,
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
    /// Uploads the weights and biases of `mlp`, each weight matrix in blocks of output
    /// neurons that fit one storage binding. Fails with [`Error::Gpu`] when not even one row
    /// of a weight matrix fits a binding or an allocation is refused.
    pub fn upload(ctx: &GpuContext, mlp: &Mlp) -> Result<GpuMlp> {
        mlp.validate()?;
        let max = ctx.max_binding_bytes();
        let max_rows_by_dispatch =
            ctx.limits().max_compute_workgroups_per_dimension as usize * TILE;
        let mut layers = Vec::with_capacity(mlp.layers.len());
        for l in &mlp.layers {
            let row_bytes = (l.in_dim * 4) as u64;
            if row_bytes > max {
                return Err(Error::Gpu(format!(
                    "layer {}: one row of its {} x {} weight matrix ({row_bytes} bytes) exceeds \
                     the device's storage binding limit of {max} bytes",
                    l.name, l.out_dim, l.in_dim
                )));
            }
            let block_rows = ((max / row_bytes) as usize)
                .min(max_rows_by_dispatch)
                .min(l.out_dim)
                .max(1);
            let mut blocks = Vec::new();
            for col0 in (0..l.out_dim).step_by(block_rows) {
                let rows = block_rows.min(l.out_dim - col0);
                blocks.push(WeightBlock {
                    weight: ctx.storage_buffer_init(
                        &format!("{}.weight", l.name),
                        &l.weight[col0 * l.in_dim..(col0 + rows) * l.in_dim],
                    )?,
                    bias: ctx.storage_buffer_init(
                        &format!("{}.bias", l.name),
                        &l.bias[col0..col0 + rows],
                    )?,
                    col0,
                    rows,
                });
            }
            layers.push(GpuLinear {
                blocks,
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

    /// The width of layer `layer`'s output.
    pub fn output_dim(&self, layer: usize) -> usize {
        self.layers[layer.min(self.layers.len() - 1)].out_dim
    }

    /// The most rows one run takes for layers `0..=layer`: every intermediate block must fit
    /// one storage binding and the dispatch limits.
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
    /// already on the device, usage `STORAGE`), as a new device buffer of m x out_dim f32.
    /// `m` must be at most [`GpuMlp::max_rows`]. For repeated chunks, a [`GpuForward`]
    /// reuses its buffers instead.
    pub fn hidden_buffer(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        m: usize,
        layer: usize,
    ) -> Result<wgpu::Buffer> {
        self.check_layer(layer)?;
        if x.size() < (m * self.input_dim() * 4) as u64 {
            return Err(Error::invalid(format!(
                "the input buffer holds {} bytes, {m} rows of {} need {}",
                x.size(),
                self.input_dim(),
                m * self.input_dim() * 4
            )));
        }
        let mut run = GpuForward::with_input(ctx, self, layer, true, m, Some(x))?;
        run.submit(ctx, m)?;
        Ok(run.output().clone())
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

    /// Layers `0..=last` on the host rows of `x`, chunk by chunk through one [`GpuForward`],
    /// each chunk's output read back through one reused [`Readback`].
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
        if m == 0 {
            return Ok(Vec::new());
        }
        let out_dim = self.layers[last].out_dim;
        let rows = self.max_rows(ctx, last).min(m);
        let mut run = GpuForward::with_input(ctx, self, last, activate_last, rows, None)?;
        let readback = Readback::new(ctx, (rows * out_dim * 4) as u64)?;
        let mut out = Vec::with_capacity(m * out_dim);
        for chunk in x.chunks(rows * d) {
            let take = chunk.len() / d;
            let y = run.run(ctx, chunk, take)?;
            let region = Region {
                buffer: y,
                offset: 0,
                bytes: (take * out_dim * 4) as u64,
                granule: 4,
            };
            readback.read(ctx, &[region], &mut |_, _, bytes| {
                out.extend_from_slice(bytemuck::cast_slice(bytes));
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// Layers `0..=last` of a [`GpuMlp`] on up to `rows` rows at a time, with device buffers
/// (input, every layer's output, parameters) and bind groups made once and reused by every
/// run. A run's output buffer is overwritten by the next run; work queued on the device
/// before that (a statistics chunk reading it) still sees the old contents, as the queue
/// runs in order.
pub struct GpuForward<'a> {
    net: &'a GpuMlp,
    last: usize,
    rows: usize,
    activate_last: bool,
    /// The input rows (`None` when the caller's buffer is bound instead).
    input: Option<wgpu::Buffer>,
    outputs: Vec<wgpu::Buffer>,
    /// Per layer, per weight block: the parameters and the bind group.
    blocks: Vec<Vec<(wgpu::Buffer, wgpu::BindGroup)>>,
    /// The row count the parameters hold.
    written_m: Option<usize>,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
}

impl std::fmt::Debug for GpuForward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuForward")
            .field("last", &self.last)
            .field("rows", &self.rows)
            .finish()
    }
}

impl<'a> GpuForward<'a> {
    /// Buffers for running layers `0..=last` of `net` (`last` activated unless it is the
    /// output layer and `activate_last` is false) on up to `rows` rows at a time
    /// (1 to [`GpuMlp::max_rows`]).
    pub fn new(
        ctx: &GpuContext,
        net: &'a GpuMlp,
        last: usize,
        activate_last: bool,
        rows: usize,
    ) -> Result<Self> {
        Self::with_input(ctx, net, last, activate_last, rows, None)
    }

    fn with_input(
        ctx: &GpuContext,
        net: &'a GpuMlp,
        last: usize,
        activate_last: bool,
        rows: usize,
        x: Option<&wgpu::Buffer>,
    ) -> Result<Self> {
        if last >= net.layers.len() {
            return Err(Error::invalid(format!(
                "layer {last} of an MLP with {} layers",
                net.layers.len()
            )));
        }
        let max_rows = net.max_rows(ctx, last);
        if rows == 0 || rows > max_rows {
            return Err(Error::invalid(format!(
                "{rows} rows per GPU forward block: expected 1 to {max_rows}"
            )));
        }
        let input = match x {
            Some(_) => None,
            None => Some(ctx.storage_buffer("forward input", (rows * net.input_dim() * 4) as u64)?),
        };
        let mut outputs: Vec<wgpu::Buffer> = Vec::with_capacity(last + 1);
        let mut blocks = Vec::with_capacity(last + 1);
        for (i, l) in net.layers[..=last].iter().enumerate() {
            let output = ctx.storage_buffer("forward output", (rows * l.out_dim * 4) as u64)?;
            let source = match i {
                0 => x.or(input.as_ref()).expect("an input"),
                _ => &outputs[i - 1],
            };
            let mut layer_blocks = Vec::with_capacity(l.blocks.len());
            for b in &l.blocks {
                let params = ctx.buffer(
                    "forward params",
                    std::mem::size_of::<Params>() as u64,
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    false,
                )?;
                let bind = ctx.bind_buffers(
                    "forward bind group",
                    LINEAR_GROUP,
                    &[source, &b.weight, &b.bias, &output, &params],
                )?;
                layer_blocks.push((params, bind));
            }
            blocks.push(layer_blocks);
            outputs.push(output);
        }
        Ok(Self {
            net,
            last,
            rows,
            activate_last,
            input,
            outputs,
            blocks,
            written_m: None,
            in_flight: VecDeque::new(),
        })
    }

    /// Rows per run at most.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The output of the last run: m x out_dim f32, row-major.
    pub fn output(&self) -> &wgpu::Buffer {
        &self.outputs[self.last]
    }

    /// Uploads the `m` rows of `x` (m x input_dim, at most [`GpuForward::rows`]) and runs
    /// the layers on them (one submit). Returns the output buffer; nothing is read back.
    pub fn run(&mut self, ctx: &GpuContext, x: &[f32], m: usize) -> Result<&wgpu::Buffer> {
        let d = self.net.input_dim();
        if m == 0 || m > self.rows || x.len() != m * d {
            return Err(Error::invalid(format!(
                "a forward run takes 1 to {} rows of {d} values, got {} values for {m} rows",
                self.rows,
                x.len()
            )));
        }
        // At most IN_FLIGHT runs queued: wait for the oldest before adding one.
        if self.in_flight.len() >= IN_FLIGHT {
            ctx.wait_for(self.in_flight.pop_front())?;
        }
        let input = self
            .input
            .as_ref()
            .expect("runs from host rows have their own input buffer");
        ctx.write_buffer(input, 0, bytemuck::cast_slice(x));
        let submission = self.submit(ctx, m)?;
        self.in_flight.push_back(submission);
        Ok(self.output())
    }

    /// Records the layers on `m` rows of the bound input and submits them.
    fn submit(&mut self, ctx: &GpuContext, m: usize) -> Result<wgpu::SubmissionIndex> {
        let pipeline = ctx.pipeline(LINEAR)?;
        if self.written_m != Some(m) {
            for (i, l) in self.net.layers[..=self.last].iter().enumerate() {
                let act = if i < self.last || self.activate_last {
                    act_code(self.net.activation)
                } else {
                    0
                };
                for (b, (params, _)) in l.blocks.iter().zip(&self.blocks[i]) {
                    let p = Params {
                        m: m as u32,
                        k: l.in_dim as u32,
                        n: b.rows as u32,
                        act,
                        col0: b.col0 as u32,
                        ld_y: l.out_dim as u32,
                        _pad: [0; 2],
                    };
                    ctx.write_buffer(params, 0, bytemuck::bytes_of(&p));
                }
            }
            self.written_m = Some(m);
        }
        let mut encoder = ctx.encoder("mlp forward");
        for (l, blocks) in self.net.layers[..=self.last].iter().zip(&self.blocks) {
            // One pass per layer: the next layer reads this one's output.
            ctx.compute_pass(&mut encoder, "linear", |pass| {
                pass.set_pipeline(&pipeline);
                for (b, (_, bind)) in l.blocks.iter().zip(blocks) {
                    pass.set_bind_group(0, bind, &[]);
                    pass.dispatch_workgroups(
                        b.rows.div_ceil(TILE) as u32,
                        m.div_ceil(TILE) as u32,
                        1,
                    );
                }
            });
        }
        ctx.submit("forward submit", encoder)
    }
}
