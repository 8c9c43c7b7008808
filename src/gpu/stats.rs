//! The GPU statistics engine behind [`crate::kernel::LayerStats`]: rows stream in chunks
//! (host rows through the [`InputRing`], device rows bound in place), every chunk is one
//! submit that adds into the [`DeviceAccumulator`], and the result comes back once, through
//! one [`Readback`], straight into the matrices the caller gets.
//!
//! When the accumulators of every block do not fit the memory budget together
//! ([`BlockPlan::groups`] > 1), the rows are streamed once per group of blocks: a
//! [`crate::types::RowSource`] is read again for each group; rows pushed one call at a time
//! are kept on the host (device rows: the buffer is kept) until the pass is finished, then
//! replayed for each group. Results of several such rounds add up.
//!
//! The Gram products and column sums are taken about a shift per column, the first chunk's
//! column means ([`ColumnShift`]), and the shift is taken back out on the host in f64: f32
//! products of raw values lose the centred variance of a column whose mean dominates its
//! spread.

use faer::Mat;

use super::accumulator::{ChunkKernels, DeviceAccumulator, Held, Products, TWO_ACCUMULATORS};
use super::assemble::HostResult;
use super::context::Refusal;
use super::gram::{Kernels, RowFormat, CHUNK, MEAN_SHIFT};
use super::plan::{BlockPlan, PlanLimits, TILE_BYTES};
use super::readback::Readback;
use super::ring::InputRing;
use super::GpuContext;
use crate::error::{Error, Result};
use crate::memory::Allocation;
use crate::types::{ActivationRows, RowSource, StatsKind};

/// Rows per chunk at most: bounds each f32 partial sum (about `sqrt(rows) * 2^-24`
/// relative) before it joins the compensated running sum.
pub(crate) const CHUNK_ROWS: usize = 4096;
/// Bytes of one input chunk at most: each of the ring's two staging and two device buffers.
const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Bytes of the readback buffer at most: results larger than this come back in several
/// fills (the count depends on n, never on m).
const MAX_READBACK_BYTES: u64 = 128 << 20;

/// `Chunk` in `shaders/gram.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct ChunkParams {
    rows: u32,
    n: u32,
    base: u32,
    stride: u32,
}

/// A chunk's parameters buffer, its group-0 bind group, and what it holds now.
struct ChunkInput {
    params: wgpu::Buffer,
    bind: wgpu::BindGroup,
    written: Option<ChunkParams>,
}

/// The ring and the bind group of each of its slots.
struct Ring {
    rows: InputRing,
    inputs: Vec<ChunkInput>,
}

/// Rows kept for the next round when the blocks come in several groups.
enum Kept {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Device {
        buffer: wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    },
}

pub(crate) struct GpuStats {
    n: usize,
    plan: BlockPlan,
    acc: DeviceAccumulator,
    tiles: wgpu::Buffer,
    one: wgpu::Buffer,
    ring: Option<Ring>,
    /// The parameters of chunks bound from a caller's buffer.
    window_params: wgpu::Buffer,
    window_written: Option<ChunkParams>,
    /// `Some` when the plan has several groups: the rows of the round being gathered.
    kept: Option<Vec<Kept>>,
    /// The group whose accumulators receive rows (column sums only with group 0).
    loaded: Option<usize>,
    readback: Option<Readback>,
    result: HostResult,
    samples: usize,
    rounds: usize,
    /// The columns' shift, bound in group 0 of every chunk (see [`ColumnShift`]).
    shift: ColumnShift,
}

/// The shift `c` the Gram products and column sums are taken about (`shaders/gram.wgsl`):
/// the column means of the first chunk, computed on the device by `shaders/shift.wgsl` when
/// that chunk is recorded, never changed after, so that every chunk, group and round sums
/// about the same values. Zero until then, and for engines without the Gram (no column
/// sums to take means from, no Gram to keep precise).
struct ColumnShift {
    /// n f32 values.
    values: wgpu::Buffer,
    /// `Params` of `shaders/shift.wgsl`.
    params: wgpu::Buffer,
    /// Whether the first chunk has fixed it.
    fixed: bool,
}

impl GpuStats {
    /// An engine for `n >= 1` neurons collecting `kind`. Allocates the accumulators of one
    /// group; when the device runs out of memory, asks for half as much (more groups).
    pub(crate) fn new(ctx: &GpuContext, n: usize, kind: StatsKind) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("a layer needs at least one neuron (n = 0)"));
        }
        let products = Products {
            gram: kind.has_gram(),
            distances: kind.has_distances(),
        };
        let (plan, acc) = allocate(ctx, n, products)?;
        let tiles = ctx.storage_buffer_init("divnet tile list", &plan.tile_list())?;
        let one = ctx.storage_buffer_init("divnet opaque one", &[1.0f32])?;
        let window_params = ctx.buffer(
            "divnet window params",
            std::mem::size_of::<ChunkParams>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            false,
        )?;
        let kept = (plan.groups() > 1).then(Vec::new);
        let shift = ColumnShift {
            // Zeroed at creation.
            values: ctx.storage_buffer("divnet column shift", (n * 4) as u64)?,
            params: ctx.buffer(
                "divnet column shift params",
                std::mem::size_of::<ChunkParams>() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                false,
            )?,
            fixed: false,
        };
        let mut stats = Self {
            n,
            plan,
            acc,
            tiles,
            one,
            ring: None,
            window_params,
            window_written: None,
            kept,
            loaded: None,
            readback: None,
            result: HostResult::new(n, products),
            samples: 0,
            rounds: 0,
            shift,
        };
        if stats.kept.is_none() {
            stats.load_group(ctx, 0)?;
        }
        Ok(stats)
    }

    /// Rows pushed so far.
    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// How many times [`GpuStats::push_source`] reads its source: once per group of blocks.
    pub(crate) fn source_passes(&self) -> usize {
        if self.kept.is_some() {
            self.plan.groups()
        } else {
            1
        }
    }

    /// Adds host rows (whole rows of n values, all finite).
    pub(crate) fn push(&mut self, ctx: &GpuContext, rows: ActivationRows<'_>) -> Result<()> {
        let count = rows.row_count(self.n)?;
        match &mut self.kept {
            Some(kept) => keep_rows(kept, rows)?,
            None => self.stream_rows(ctx, rows)?,
        }
        self.samples += count;
        Ok(())
    }

    /// Adds `rows` rows already in `buffer` from byte `offset` on (see
    /// [`crate::kernel::LayerStats::push_buffer`]). `unchanged`: the caller keeps these rows
    /// in the buffer until [`GpuStats::finish`], which in several groups reads them once per
    /// group; without it, several groups are an error rather than statistics of whatever
    /// the buffer holds by then.
    pub(crate) fn push_buffer(
        &mut self,
        ctx: &GpuContext,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
        unchanged: bool,
    ) -> Result<()> {
        let n = self.n;
        if self.kept.is_some() && !unchanged {
            return Err(Error::invalid(format!(
                "the statistics of these {n} neurons are computed in {} groups (their \
                 accumulators exceed the device memory budget), each reading every row at \
                 finish: rows in a GPU buffer the application may rewrite before then would \
                 give wrong statistics. Use push_kept_buffer if the buffer keeps these rows \
                 until finish, or raise the budget (GpuContext::with_memory_budget)",
                self.plan.groups()
            )));
        }
        let row_bytes = (format.row_words(n) * 4) as u64;
        let need = offset + rows as u64 * row_bytes;
        if buffer.size() < need {
            return Err(Error::invalid(format!(
                "activation buffer holds {} bytes, {rows} x {n} {format:?} rows from byte {offset} need {need}",
                buffer.size()
            )));
        }
        if !offset.is_multiple_of(4) {
            return Err(Error::invalid(format!(
                "activation rows must start at a multiple of 4 bytes, not {offset}"
            )));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::invalid(
                "activation buffer lacks wgpu::BufferUsages::STORAGE",
            ));
        }
        match &mut self.kept {
            Some(kept) => kept.push(Kept::Device {
                buffer: buffer.clone(),
                offset,
                rows,
                format,
            }),
            None => {
                // Host rows pushed before these go first: the same order as given.
                self.flush_ring(ctx)?;
                self.stream_buffer(ctx, buffer, offset, rows, format)?;
            }
        }
        self.samples += rows;
        Ok(())
    }

    /// One pass over `source` per group of blocks; `advance` hears of every chunk of rows.
    pub(crate) fn push_source(
        &mut self,
        ctx: &GpuContext,
        source: &mut dyn RowSource,
        advance: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if self.kept.is_some() {
            return self.round(ctx, Some(source), advance);
        }
        let n = self.n;
        source.pass(&mut |rows| {
            let count = rows.row_count(n)?;
            self.stream_rows(ctx, rows)?;
            self.samples += count;
            advance(count as u64);
            Ok(())
        })
    }

    /// Reads the result back: (Gram, distances, column sums, m), the matrices with both
    /// triangles filled.
    #[allow(clippy::type_complexity)]
    pub(crate) fn finish(
        mut self,
        ctx: &GpuContext,
    ) -> Result<(Option<Mat<f64>>, Option<Mat<f64>>, Vec<f64>, usize)> {
        match &self.kept {
            None => self.read_group(ctx)?,
            Some(kept) => {
                if !kept.is_empty() || self.rounds == 0 {
                    self.round(ctx, None, &mut |_| {})?;
                }
            }
        }
        let (gram, distances, sums) = self.result.finish(self.samples);
        Ok((gram, distances, sums, self.samples))
    }

    /// Streams the kept rows, then a pass of `source` if given, once per group, reading each
    /// group back after its pass.
    fn round(
        &mut self,
        ctx: &GpuContext,
        mut source: Option<&mut dyn RowSource>,
        advance: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let kept = std::mem::take(self.kept.as_mut().expect("rounds need groups"));
        for g in 0..self.plan.groups() {
            self.load_group(ctx, g)?;
            for input in &kept {
                match input {
                    Kept::F32(v) => self.stream_rows(ctx, ActivationRows::F32(v))?,
                    Kept::F16(v) => self.stream_rows(ctx, ActivationRows::F16(v))?,
                    Kept::Device {
                        buffer,
                        offset,
                        rows,
                        format,
                    } => {
                        self.flush_ring(ctx)?;
                        self.stream_buffer(ctx, buffer, *offset, *rows, *format)?;
                    }
                }
            }
            if let Some(source) = source.as_deref_mut() {
                let n = self.n;
                source.pass(&mut |rows| {
                    let count = rows.row_count(n)?;
                    self.stream_rows(ctx, rows)?;
                    if g == 0 {
                        self.samples += count;
                    }
                    advance(count as u64);
                    Ok(())
                })?;
            }
            self.read_group(ctx)?;
        }
        self.rounds += 1;
        Ok(())
    }

    /// Loads group `g` into the accumulators (cleared), as one submit.
    fn load_group(&mut self, ctx: &GpuContext, g: usize) -> Result<()> {
        let mut encoder = ctx.encoder("divnet load group");
        self.acc.load(ctx, &self.plan, g, g == 0, &mut encoder);
        ctx.submit("clearing the accumulators", encoder)?;
        self.loaded = Some(g);
        Ok(())
    }

    /// Whether the loaded group also sums the columns.
    fn with_sums(&self) -> bool {
        self.loaded == Some(0) && self.acc.products().gram
    }

    /// Copies host rows into the ring, handing each full chunk to the device.
    fn stream_rows(&mut self, ctx: &GpuContext, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.n;
        let format = match rows {
            ActivationRows::F32(_) => RowFormat::F32,
            ActivationRows::F16(_) => RowFormat::F16,
        };
        let count = rows.len() / n;
        if self.ring.is_none() && count > 0 {
            self.ring = Some(self.new_ring(ctx)?);
        }
        let mut r = 0;
        while r < count {
            let ring = &mut self.ring.as_mut().expect("created").rows;
            let room = ring.room(format);
            if room == 0 {
                self.flush_ring(ctx)?;
                continue;
            }
            let take = room.min(count - r);
            ring.write(ctx, rows.slice(r * n..(r + take) * n), take)?;
            r += take;
        }
        Ok(())
    }

    fn new_ring(&self, ctx: &GpuContext) -> Result<Ring> {
        let n = self.n;
        let rows = chunk_rows(ctx, n, RowFormat::F32, 0)?;
        let ring = InputRing::new(ctx, n, rows)?;
        let inputs = (0..2)
            .map(|slot| {
                let params = ctx.buffer(
                    "divnet chunk params",
                    std::mem::size_of::<ChunkParams>() as u64,
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    false,
                )?;
                let bind = ctx.bind_buffers(
                    "divnet chunk",
                    CHUNK,
                    &[
                        &params,
                        ring.input(slot),
                        &self.tiles,
                        &self.one,
                        &self.shift.values,
                    ],
                )?;
                Ok(ChunkInput {
                    params,
                    bind,
                    written: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ring { rows: ring, inputs })
    }

    /// Submits the chunk the ring is filling, if it holds rows: its copy to the device and
    /// its dispatches, one submit.
    fn flush_ring(&mut self, ctx: &GpuContext) -> Result<()> {
        let with_sums = self.with_sums();
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        let mut encoder = ctx.encoder("divnet statistics chunk");
        let Some(filled) = ring.rows.take(&mut encoder) else {
            return Ok(());
        };
        let input = &mut ring.inputs[filled.slot];
        let params = ChunkParams {
            rows: filled.rows as u32,
            n: self.n as u32,
            base: 0,
            stride: filled.format.row_words(self.n) as u32,
        };
        if input.written != Some(params) {
            ctx.write_buffer(&input.params, 0, bytemuck::bytes_of(&params));
            input.written = Some(params);
        }
        record_chunk(
            ctx,
            &self.acc,
            with_sums,
            &mut self.shift,
            filled.rows,
            &mut encoder,
            &input.bind,
            filled.format,
        )?;
        let submission = ctx.submit("statistics chunk", encoder)?;
        ring.rows.submitted(filled.slot, submission);
        Ok(())
    }

    /// Dispatches chunks of rows bound in place from a caller's buffer, one submit each.
    fn stream_buffer(
        &mut self,
        ctx: &GpuContext,
        buffer: &wgpu::Buffer,
        offset: u64,
        rows: usize,
        format: RowFormat,
    ) -> Result<()> {
        let n = self.n;
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let row_bytes = (format.row_words(n) * 4) as u64;
        let chunk = chunk_rows(ctx, n, format, align)?;
        let with_sums = self.with_sums();
        let mut start = 0;
        while start < rows {
            let take = chunk.min(rows - start);
            let begin = offset + start as u64 * row_bytes;
            let window_start = begin / align * align;
            let window = begin + take as u64 * row_bytes - window_start;
            let params = ChunkParams {
                rows: take as u32,
                n: n as u32,
                base: ((begin - window_start) / 4) as u32,
                stride: format.row_words(n) as u32,
            };
            if self.window_written != Some(params) {
                ctx.write_buffer(&self.window_params, 0, bytemuck::bytes_of(&params));
                self.window_written = Some(params);
            }
            let bind = ctx.bind_group(
                "divnet rows in place",
                CHUNK,
                &[
                    self.window_params.as_entire_buffer_binding(),
                    wgpu::BufferBinding {
                        buffer,
                        offset: window_start,
                        size: std::num::NonZeroU64::new(window),
                    },
                    self.tiles.as_entire_buffer_binding(),
                    self.one.as_entire_buffer_binding(),
                    self.shift.values.as_entire_buffer_binding(),
                ],
            )?;
            let mut encoder = ctx.encoder("divnet statistics chunk in place");
            record_chunk(
                ctx,
                &self.acc,
                with_sums,
                &mut self.shift,
                take,
                &mut encoder,
                &bind,
                format,
            )?;
            ctx.submit("statistics chunk", encoder)?;
            start += take;
        }
        Ok(())
    }

    /// Submits what the ring holds, then reads the loaded group back into the result.
    fn read_group(&mut self, ctx: &GpuContext) -> Result<()> {
        self.flush_ring(ctx)?;
        let with_sums = self.with_sums();
        if self.readback.is_none() {
            let products = self.acc.products().count() as u64;
            let tiles = (self.plan.group_blocks() * self.plan.block_tiles()) as u64;
            // The tiles, the column sums and the shift (each piece lies at a multiple of 8).
            let bytes = tiles * TILE_BYTES * products + shift_and_sums_bytes(self.n);
            self.readback = Some(Readback::new(
                ctx,
                bytes.min(MAX_READBACK_BYTES.max(TILE_BYTES)),
            )?);
        }
        let (mut regions, mut held) = self.acc.regions(with_sums);
        if with_sums {
            regions.push(super::readback::Region {
                buffer: &self.shift.values,
                offset: 0,
                bytes: (self.n * 4) as u64,
                granule: 4,
            });
            held.push(Held::Shift);
        }
        let plan = &self.plan;
        let result = &mut self.result;
        self.readback
            .as_ref()
            .expect("created")
            .read(ctx, &regions, &mut |r, offset, bytes| {
                let what: Held = held[r];
                result.add(plan, what, offset, bytes);
                Ok(())
            })?;
        self.loaded = None;
        Ok(())
    }
}

/// The bytes the column sums ((hi, lo) f32 pairs) and their shift (f32) take in a readback,
/// where every piece starts at a multiple of 8 bytes.
fn shift_and_sums_bytes(n: usize) -> u64 {
    (n * 8 + (n * 4).next_multiple_of(8)) as u64
}

/// The host-side buffers an engine for `n` neurons maps at most: the input ring's two
/// staging buffers and the readback buffer (bounds that do not depend on the device).
pub(crate) fn staging_host_memory(n: usize) -> Vec<Allocation> {
    let chunk = ((CHUNK_ROWS * n * 4) as u64).min(MAX_CHUNK_BYTES);
    let result = (n as u64 * n as u64 * 8).min(MAX_READBACK_BYTES);
    vec![
        Allocation {
            what: "the input ring's two staging buffers".into(),
            bytes: 2 * chunk,
        },
        Allocation {
            what: "the readback buffer".into(),
            bytes: result,
        },
    ]
}

/// The plan and the accumulators of its first group. On out-of-memory the budget halves
/// until the device accepts (or a group is down to one tile).
fn allocate(
    ctx: &GpuContext,
    n: usize,
    products: Products,
) -> Result<(BlockPlan, DeviceAccumulator)> {
    let mut budget = ctx.memory_budget();
    loop {
        let limits = PlanLimits {
            max_binding_bytes: ctx
                .max_binding_bytes()
                .max(TILE_BYTES)
                .min(ctx.binding_limit()),
            max_workgroups_per_dimension: ctx.limits().max_compute_workgroups_per_dimension,
            memory_budget: budget,
        };
        let plan = BlockPlan::new(n, products.count(), &limits)?;
        match DeviceAccumulator::new(ctx, &plan, products) {
            Ok(acc) => return Ok((plan, acc)),
            Err(Refusal {
                out_of_memory: true,
                ..
            }) if plan.group_blocks() * plan.block_tiles() > 1 => {
                budget = plan.group_bytes() / 2;
            }
            Err(r) => return Err(r.error),
        }
    }
}

/// Rows per chunk of `format`, with `slack` bytes of binding alignment: as many as one
/// binding and [`MAX_CHUNK_BYTES`] hold, at most [`CHUNK_ROWS`].
fn chunk_rows(ctx: &GpuContext, n: usize, format: RowFormat, slack: u64) -> Result<usize> {
    let row_bytes = (format.row_words(n) * 4) as u64;
    let limit = ctx.binding_limit();
    if row_bytes + slack > limit {
        return Err(Error::Gpu(format!(
            "one row of {n} values needs a {}-byte binding, over the device limit {limit}",
            row_bytes + slack
        )));
    }
    let budget = ctx
        .max_binding_bytes()
        .min(MAX_CHUNK_BYTES)
        .saturating_sub(slack);
    Ok(((budget / row_bytes) as usize).clamp(1, CHUNK_ROWS))
}

/// Records one chunk's dispatches (column sums when asked, then every loaded block) in one
/// compute pass on `encoder`.
#[allow(clippy::too_many_arguments)]
fn record_chunk(
    ctx: &GpuContext,
    acc: &DeviceAccumulator,
    with_sums: bool,
    shift: &mut ColumnShift,
    rows: usize,
    encoder: &mut wgpu::CommandEncoder,
    input: &wgpu::BindGroup,
    format: RowFormat,
) -> Result<()> {
    let kernels = Kernels::of(format);
    let tiles = ctx.pipeline(kernels.tiles(acc.products()))?;
    let sums = if with_sums {
        Some(ctx.pipeline(kernels.sums)?)
    } else {
        None
    };
    // The first chunk with column sums fixes the shift: summed unshifted, its sums become
    // the shift (and are cleared) before the chunk is summed again and multiplied, shifted.
    let first = match (&sums, acc.column_sums()) {
        (Some(sums), Some(buffer)) if !shift.fixed && rows > 0 => {
            let params = ChunkParams {
                rows: rows as u32,
                n: acc.n() as u32,
                base: 0,
                stride: 0,
            };
            ctx.write_buffer(&shift.params, 0, bytemuck::bytes_of(&params));
            let bind = ctx.bind_buffers(
                "divnet column shift",
                TWO_ACCUMULATORS,
                &[&shift.params, buffer, &shift.values],
            )?;
            let pipeline = ctx.pipeline(MEAN_SHIFT)?;
            shift.fixed = true;
            Some((sums.clone(), pipeline, bind))
        }
        _ => None,
    };
    let chunk = ChunkKernels {
        tiles: &tiles,
        sums: sums.as_deref(),
        input,
    };
    ctx.compute_pass(encoder, "divnet statistics", |pass| {
        if let Some((sums, mean_shift, bind)) = &first {
            acc.record_sums(pass, sums, input);
            pass.set_pipeline(mean_shift);
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(acc.n().div_ceil(256) as u32, 1, 1);
        }
        acc.record_chunk(pass, &chunk)
    });
    Ok(())
}

/// Appends host rows to the rows kept for the next round (checking that the host can hold
/// them: a caller pushing a whole calibration set into a layer too wide for one group
/// gets an error, not an abort).
fn keep_rows(kept: &mut Vec<Kept>, rows: ActivationRows<'_>) -> Result<()> {
    fn extend<T: Copy>(v: &mut Vec<T>, add: &[T]) -> Result<()> {
        v.try_reserve(add.len()).map_err(|_| {
            Error::invalid(format!(
                "the layer's blocks do not fit the device at once, so pushed rows are kept \
                 on the host for a pass per group; {} more values do not fit in memory \
                 (push rows through a RowSource instead, which is read again per group)",
                add.len()
            ))
        })?;
        v.extend_from_slice(add);
        Ok(())
    }
    match (kept.last_mut(), rows) {
        (Some(Kept::F32(v)), ActivationRows::F32(r)) => extend(v, r),
        (Some(Kept::F16(v)), ActivationRows::F16(r)) => extend(v, r),
        (_, ActivationRows::F32(r)) => {
            let mut v = Vec::new();
            extend(&mut v, r)?;
            kept.push(Kept::F32(v));
            Ok(())
        }
        (_, ActivationRows::F16(r)) => {
            let mut v = Vec::new();
            extend(&mut v, r)?;
            kept.push(Kept::F16(v));
            Ok(())
        }
    }
}
