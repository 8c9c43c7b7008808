//! The tiled WGSL Gram and distance kernels (`shaders/gram.wgsl`) and the host side that
//! drives them: output blocks that respect the binding limits, input streamed in row chunks,
//! f32 partial sums per chunk added in f64 on the host.
//!
//! `BlockedProduct` (crate-private) is the engine shared by the Gram and the distance
//! kernels; [`gram_from_buffer`] takes activations that already live in a GPU buffer.

use faer::Mat;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, ShaderEntry};
use crate::types::{ActivationRows, GramStats};

/// The kernels with f32 input. The f16 variant is a separate module because
/// `unpack2x16float` needs f16-in-f32 shader support, which the f32 kernels must not.
const SOURCE_F32: &str = concat!(
    include_str!("../../shaders/gram.wgsl"),
    include_str!("../../shaders/gram_load_f32.wgsl")
);
/// The kernels with packed f16 input.
const SOURCE_F16: &str = concat!(
    include_str!("../../shaders/gram.wgsl"),
    include_str!("../../shaders/gram_load_f16.wgsl")
);

/// The entry points of one input format.
struct Kernels {
    gram: ShaderEntry,
    dist: ShaderEntry,
    sums: ShaderEntry,
}

const KERNELS_F32: Kernels = Kernels {
    gram: ShaderEntry {
        key: "gram::gram_block::f32",
        source: SOURCE_F32,
        entry_point: "gram_block",
    },
    dist: ShaderEntry {
        key: "gram::dist_block::f32",
        source: SOURCE_F32,
        entry_point: "dist_block",
    },
    sums: ShaderEntry {
        key: "gram::col_sums::f32",
        source: SOURCE_F32,
        entry_point: "col_sums",
    },
};
const KERNELS_F16: Kernels = Kernels {
    gram: ShaderEntry {
        key: "gram::gram_block::f16",
        source: SOURCE_F16,
        entry_point: "gram_block",
    },
    dist: ShaderEntry {
        key: "gram::dist_block::f16",
        source: SOURCE_F16,
        entry_point: "dist_block",
    },
    sums: ShaderEntry {
        key: "gram::col_sums::f16",
        source: SOURCE_F16,
        entry_point: "col_sums",
    },
};

/// The complete WGSL modules of this file, with whether each needs f16-in-f32 support
/// (for validation in tests).
#[doc(hidden)]
pub fn shader_modules() -> [(&'static str, &'static str, bool); 2] {
    [
        ("gram f32", SOURCE_F32, false),
        ("gram f16", SOURCE_F16, true),
    ]
}

/// Output tile of one workgroup in `gram.wgsl`.
const TILE: usize = 64;
/// Rows per chunk at most: bounds the length of each f32 partial sum (about
/// `sqrt(CHUNK_ROWS) * 2^-24` relative error) before it is added in f64.
pub(crate) const CHUNK_ROWS: usize = 4096;
/// Output block bytes at most, whatever the device allows: a 20000-neuron layer's 1.6 GB
/// result then exists on the device (and in each readback) only as 256 MiB blocks.
const MAX_BLOCK_BYTES: u64 = 256 << 20;

/// How activations are laid out in a GPU buffer: row-major, `m` rows of `n` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFormat {
    /// `f32` values, row stride `n`.
    F32,
    /// IEEE half values packed two per `u32` (the even column in the low 16 bits, as
    /// `half::f16::to_bits` gives them); each row padded to `ceil(n / 2)` words.
    F16,
}

impl RowFormat {
    /// Words (u32) per row of `n` values.
    pub fn row_words(self, n: usize) -> usize {
        match self {
            RowFormat::F32 => n,
            RowFormat::F16 => n.div_ceil(2),
        }
    }
}

/// Which symmetric product [`BlockedProduct`] accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Product {
    /// `G = A^T A` and the column sums.
    Gram,
    /// `D_ij = sum_t (A_ti - A_tj)^2`.
    Distance,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    i0: u32,
    bi: u32,
    j0: u32,
    bj: u32,
    base: u32,
    stride: u32,
    _pad: [u32; 4],
}

/// Streams row chunks of a row-major `m x n` matrix through the tiled kernel and keeps the
/// upper triangle of the symmetric n x n result in f64. Each chunk runs once per output
/// block pair (bi <= bj); blocks are square, as large as one storage binding allows.
pub(crate) struct BlockedProduct {
    n: usize,
    product: Product,
    block: usize,
    /// Row-major n x n, only `i <= j` meaningful.
    upper: Vec<f64>,
    sums: Vec<f64>,
    samples: usize,
    out: Option<wgpu::Buffer>,
    sums_buf: Option<wgpu::Buffer>,
    params: Option<wgpu::Buffer>,
}

impl BlockedProduct {
    /// Chooses the block size from the context's limits; allocates nothing on the device yet.
    pub(crate) fn new(ctx: &GpuContext, n: usize, product: Product) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        let max_elems = (ctx.max_binding_bytes().min(MAX_BLOCK_BYTES) / 4) as usize;
        let mut block = (max_elems as f64).sqrt() as usize;
        while block * block > max_elems {
            block -= 1;
        }
        if block >= TILE {
            block = block / TILE * TILE;
        }
        let block = block.clamp(1, n);
        let upper = vec![
            0.0;
            n.checked_mul(n)
                .ok_or_else(|| Error::invalid("n too large"))?
        ];
        Ok(Self {
            n,
            product,
            block,
            upper,
            sums: vec![0.0; n],
            samples: 0,
            out: None,
            sums_buf: None,
            params: None,
        })
    }

    /// Rows per chunk so that one chunk of `format` rows, plus the alignment slack of its
    /// binding window, fits one binding.
    pub(crate) fn chunk_rows(ctx: &GpuContext, n: usize, format: RowFormat) -> usize {
        let row_bytes = (format.row_words(n) * 4).max(4) as u64;
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let budget = ctx.max_binding_bytes().saturating_sub(align);
        ((budget / row_bytes) as usize).clamp(1, CHUNK_ROWS)
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// Adds `rows` rows of `input`, starting at byte `offset` (a multiple of 4).
    pub(crate) fn accumulate(
        &mut self,
        ctx: &GpuContext,
        input: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        if rows == 0 {
            self.samples += rows;
            return Ok(());
        }
        let n = self.n;
        let stride = format.row_words(n);
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let window_start = offset / align * align;
        let end = offset + (rows * stride * 4) as u64;
        if end > input.size() {
            return Err(Error::invalid(format!(
                "activation buffer holds {} bytes, {rows} rows of {n} need {end}",
                input.size()
            )));
        }
        let window = end - window_start;
        let device_max = ctx.limits().max_storage_buffer_binding_size;
        if window > device_max {
            return Err(Error::Gpu(format!(
                "a chunk of {rows} rows of {n} values needs a {window}-byte binding, over the device limit {device_max}"
            )));
        }
        let base = ((offset - window_start) / 4) as u32;
        let block = self.block;
        let out_bytes = (block * block * 4) as u64;
        if self.out.is_none() {
            self.out = Some(ctx.storage_buffer("divnet block", out_bytes)?);
            self.params = Some(ctx.uniform_buffer(
                "divnet block params",
                &<Params as bytemuck::Zeroable>::zeroed(),
            )?);
            if self.product == Product::Gram {
                self.sums_buf = Some(ctx.storage_buffer("divnet col sums", (n * 4) as u64)?);
            }
        }
        let out = self.out.as_ref().expect("allocated");
        let params_buf = self.params.as_ref().expect("allocated");
        let kernels = match format {
            RowFormat::F32 => &KERNELS_F32,
            RowFormat::F16 => &KERNELS_F16,
        };
        let entry = match self.product {
            Product::Gram => kernels.gram,
            Product::Distance => kernels.dist,
        };
        let pipeline = ctx.pipeline(entry)?;
        let input_binding = wgpu::BufferBinding {
            buffer: input,
            offset: window_start,
            size: std::num::NonZeroU64::new(window),
        };
        let bind = |pipeline: &wgpu::ComputePipeline, output: &wgpu::Buffer| {
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Buffer(input_binding.clone()),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: output.as_entire_binding(),
                    },
                ],
            })
        };
        let starts: Vec<usize> = (0..n).step_by(block).collect();
        let mut first = true;
        for (bi_idx, &i0) in starts.iter().enumerate() {
            for &j0 in &starts[bi_idx..] {
                let bi = block.min(n - i0);
                let bj = block.min(n - j0);
                let params = Params {
                    rows: rows as u32,
                    n: n as u32,
                    i0: i0 as u32,
                    bi: bi as u32,
                    j0: j0 as u32,
                    bj: bj as u32,
                    base,
                    stride: stride as u32,
                    _pad: [0; 4],
                };
                ctx.queue()
                    .write_buffer(params_buf, 0, bytemuck::bytes_of(&params));
                let mut encoder = ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                let groups = ctx.checked("binding a chunk", || bind(&pipeline, out))?;
                let sums_groups = match (&self.sums_buf, first) {
                    (Some(sums), true) => {
                        let p = ctx.pipeline(kernels.sums)?;
                        let g = ctx.checked("binding a chunk", || bind(&p, sums))?;
                        Some((p, g))
                    }
                    _ => None,
                };
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &groups, &[]);
                    pass.dispatch_workgroups(bj.div_ceil(TILE) as u32, bi.div_ceil(TILE) as u32, 1);
                    if let Some((p, g)) = &sums_groups {
                        pass.set_pipeline(p);
                        pass.set_bind_group(0, g, &[]);
                        pass.dispatch_workgroups(n.div_ceil(256) as u32, 1, 1);
                    }
                }
                ctx.queue().submit([encoder.finish()]);
                let values: Vec<f32> = ctx.read_buffer(out, 0, bi * bj)?;
                for i in 0..bi {
                    let gi = i0 + i;
                    let row = &values[i * bj..(i + 1) * bj];
                    let dst = &mut self.upper[gi * n + j0..gi * n + j0 + bj];
                    // On a diagonal block only the upper triangle is computed.
                    let from = if i0 == j0 { i } else { 0 };
                    for (d, &v) in dst[from..].iter_mut().zip(&row[from..]) {
                        *d += v as f64;
                    }
                }
                if sums_groups.is_some() {
                    let sums: Vec<f32> =
                        ctx.read_buffer(self.sums_buf.as_ref().expect("gram"), 0, n)?;
                    for (d, &v) in self.sums.iter_mut().zip(&sums) {
                        *d += v as f64;
                    }
                }
                first = false;
            }
        }
        self.samples += rows;
        Ok(())
    }

    /// The symmetric result (upper triangle mirrored) and the column sums.
    pub(crate) fn finish(self) -> (Mat<f64>, Vec<f64>, usize) {
        let n = self.n;
        let upper = &self.upper;
        let mat = Mat::from_fn(n, n, |i, j| {
            if i == j && self.product == Product::Distance {
                0.0
            } else if i <= j {
                upper[i * n + j]
            } else {
                upper[j * n + i]
            }
        });
        (mat, self.sums, self.samples)
    }
}

/// Host rows staged into GPU-sized chunks: a one-row push does not cost a kernel launch and
/// a readback of every block.
pub(crate) struct StagedProduct {
    engine: BlockedProduct,
    format: RowFormat,
    staged: Vec<u32>,
    staged_rows: usize,
    input: Option<(wgpu::Buffer, RowFormat)>,
}

impl StagedProduct {
    pub(crate) fn new(ctx: &GpuContext, n: usize, product: Product) -> Result<Self> {
        Ok(Self {
            engine: BlockedProduct::new(ctx, n, product)?,
            format: RowFormat::F32,
            staged: Vec::new(),
            staged_rows: 0,
            input: None,
        })
    }

    pub(crate) fn samples(&self) -> usize {
        self.engine.samples() + self.staged_rows
    }

    pub(crate) fn push(&mut self, ctx: &GpuContext, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.engine.n;
        let format = match rows {
            ActivationRows::F32(_) => RowFormat::F32,
            ActivationRows::F16(_) => RowFormat::F16,
        };
        if format != self.format {
            self.flush(ctx)?;
            self.format = format;
        }
        let count = rows.row_count(n)?;
        let chunk = BlockedProduct::chunk_rows(ctx, n, format);
        for r in 0..count {
            match rows {
                ActivationRows::F32(v) => self
                    .staged
                    .extend(v[r * n..(r + 1) * n].iter().map(|x| x.to_bits())),
                ActivationRows::F16(v) => {
                    let row = &v[r * n..(r + 1) * n];
                    self.staged.extend(row.chunks(2).map(|p| {
                        let lo = p[0].to_bits() as u32;
                        let hi = p.get(1).map_or(0, |h| h.to_bits() as u32);
                        lo | (hi << 16)
                    }));
                }
            }
            self.staged_rows += 1;
            if self.staged_rows == chunk {
                self.flush(ctx)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, ctx: &GpuContext) -> Result<()> {
        if self.staged_rows == 0 {
            return Ok(());
        }
        let n = self.engine.n;
        let capacity =
            (BlockedProduct::chunk_rows(ctx, n, self.format) * self.format.row_words(n) * 4) as u64;
        if !matches!(&self.input, Some((_, f)) if *f == self.format) {
            self.input = Some((ctx.storage_buffer("divnet rows", capacity)?, self.format));
        }
        let (input, _) = self.input.as_ref().expect("allocated");
        ctx.queue()
            .write_buffer(input, 0, bytemuck::cast_slice(&self.staged));
        let rows = self.staged_rows;
        self.staged.clear();
        self.staged_rows = 0;
        self.engine.accumulate(ctx, input, 0, rows, self.format)
    }

    /// Adds `rows` rows already on the device (see [`BlockedProduct::accumulate`]), after
    /// the rows staged so far.
    pub(crate) fn push_buffer(
        &mut self,
        ctx: &GpuContext,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        self.flush(ctx)?;
        let n = self.engine.n;
        let row_bytes = (format.row_words(n) * 4) as u64;
        let need = offset + rows as u64 * row_bytes;
        if buffer.size() < need {
            return Err(Error::invalid(format!(
                "activation buffer holds {} bytes, {rows} x {n} {format:?} rows from byte {offset} need {need}",
                buffer.size()
            )));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::invalid(
                "activation buffer lacks wgpu::BufferUsages::STORAGE",
            ));
        }
        let chunk = BlockedProduct::chunk_rows(ctx, n, format);
        let mut start = 0;
        while start < rows {
            let take = chunk.min(rows - start);
            self.engine
                .accumulate(ctx, buffer, offset + start as u64 * row_bytes, take, format)?;
            start += take;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self, ctx: &GpuContext) -> Result<(Mat<f64>, Vec<f64>, usize)> {
        self.flush(ctx)?;
        Ok(self.engine.finish())
    }
}

/// Runs `product` over `m` rows that already live in `buffer` (row-major, `format`),
/// chunk by chunk so that each binding fits the device limits.
pub(crate) fn product_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
    product: Product,
) -> Result<(Mat<f64>, Vec<f64>, usize)> {
    let row_bytes = (format.row_words(n) * 4) as u64;
    let need = m as u64 * row_bytes;
    if buffer.size() < need {
        return Err(Error::invalid(format!(
            "activation buffer holds {} bytes, {m} x {n} {format:?} needs {need}",
            buffer.size()
        )));
    }
    if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::invalid(
            "activation buffer lacks wgpu::BufferUsages::STORAGE",
        ));
    }
    let mut engine = BlockedProduct::new(ctx, n, product)?;
    let chunk = BlockedProduct::chunk_rows(ctx, n, format);
    let mut start = 0;
    while start < m {
        let rows = chunk.min(m - start);
        engine.accumulate(ctx, buffer, start as u64 * row_bytes, rows, format)?;
        start += rows;
    }
    Ok(engine.finish())
}

/// `G = A^T A` and `s = A^T 1` of the `m x n` activations already in `buffer` (row-major,
/// laid out as `format` says; usage must include `STORAGE`). For applications that produce
/// activations on the GPU: nothing is copied back but the result.
pub fn gram_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
) -> Result<GramStats> {
    let (gram, col_sums, samples) = product_from_buffer(ctx, buffer, format, m, n, Product::Gram)?;
    Ok(GramStats {
        gram,
        col_sums,
        samples,
    })
}
