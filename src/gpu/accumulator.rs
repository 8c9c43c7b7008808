//! The device accumulator: the running (hi, lo) sums of one group of blocks, and of the
//! column sums, resident on the device across every chunk of a pass. It only records
//! commands (clearing, and the dispatches of one chunk on a bound input); the engine submits
//! them, and reads the buffers back once at the end ([`DeviceAccumulator::regions`]).

use super::context::Binding;
use super::plan::{BlockPlan, TILE_BYTES};
use super::readback::Region;
use super::GpuContext;

/// Group 1 of the kernels with one accumulator (Gram, distances, column sums).
pub(crate) const ONE_ACCUMULATOR: &[Binding] = &[Binding::Uniform, Binding::StorageMut];
/// Group 1 of the kernel that fills both accumulators from one load.
pub(crate) const TWO_ACCUMULATORS: &[Binding] =
    &[Binding::Uniform, Binding::StorageMut, Binding::StorageMut];

/// `Block` in `shaders/gram.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BlockParams {
    first: u32,
    count: u32,
    _pad: [u32; 2],
}

/// Which products the accumulator keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Products {
    pub(crate) gram: bool,
    pub(crate) distances: bool,
}

impl Products {
    pub(crate) fn count(self) -> usize {
        self.gram as usize + self.distances as usize
    }
}

/// One resident block: its tile range and accumulator buffers.
struct Slot {
    params: wgpu::Buffer,
    gram: Option<wgpu::Buffer>,
    distances: Option<wgpu::Buffer>,
    bind: wgpu::BindGroup,
    /// Tiles of the block loaded into this slot (0: unused in this group).
    tiles: usize,
    /// Index of the block's first tile in the plan's tile list.
    first: usize,
}

/// What one chunk's dispatches need: the entry points for the chunk's format, the bound
/// input (group 0) and the grid limit.
pub(crate) struct ChunkKernels<'a> {
    pub(crate) tiles: &'a wgpu::ComputePipeline,
    pub(crate) sums: Option<&'a wgpu::ComputePipeline>,
    pub(crate) input: &'a wgpu::BindGroup,
}

/// The accumulators of one group of blocks (slots reused from group to group) and of the
/// column sums.
pub(crate) struct DeviceAccumulator {
    products: Products,
    slots: Vec<Slot>,
    sums: Option<(wgpu::Buffer, wgpu::BindGroup)>,
    n: usize,
    max_workgroups: u32,
    /// The group whose blocks are loaded.
    group: Option<usize>,
}

impl DeviceAccumulator {
    /// Allocates the slots of the largest group of `plan` (and the column sums when the
    /// Gram is kept). Fails with the device's refusal, out of memory included.
    pub(crate) fn new(
        ctx: &GpuContext,
        plan: &BlockPlan,
        products: Products,
    ) -> std::result::Result<Self, super::context::Refusal> {
        let bytes = plan.block_tiles() as u64 * TILE_BYTES;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let accumulator = |label: &str| ctx.buffer_scoped(label, bytes, storage, false);
        let mut slots = Vec::with_capacity(plan.group_blocks());
        for _ in 0..plan.group_blocks() {
            let params = ctx.buffer_scoped(
                "divnet block params",
                std::mem::size_of::<BlockParams>() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                false,
            )?;
            let gram = products
                .gram
                .then(|| accumulator("divnet Gram accumulator"))
                .transpose()?;
            let distances = products
                .distances
                .then(|| accumulator("divnet distance accumulator"))
                .transpose()?;
            let buffers: Vec<&wgpu::Buffer> = [Some(&params), gram.as_ref(), distances.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            let layout = if products.count() == 2 {
                TWO_ACCUMULATORS
            } else {
                ONE_ACCUMULATOR
            };
            let bind = ctx
                .bind_buffers("divnet block", layout, &buffers)
                .map_err(|error| super::context::Refusal {
                    out_of_memory: false,
                    error,
                })?;
            slots.push(Slot {
                params,
                gram,
                distances,
                bind,
                tiles: 0,
                first: 0,
            });
        }
        let n = plan.n();
        let sums = if products.gram {
            let params = ctx.buffer_scoped(
                "divnet column-sum params",
                std::mem::size_of::<BlockParams>() as u64,
                wgpu::BufferUsages::UNIFORM,
                false,
            )?;
            let buffer = ctx.buffer_scoped("divnet column sums", (n * 8) as u64, storage, false)?;
            let bind = ctx
                .bind_buffers("divnet column sums", ONE_ACCUMULATOR, &[&params, &buffer])
                .map_err(|error| super::context::Refusal {
                    out_of_memory: false,
                    error,
                })?;
            Some((buffer, bind))
        } else {
            None
        };
        Ok(Self {
            products,
            slots,
            sums,
            n,
            max_workgroups: ctx.limits().max_compute_workgroups_per_dimension,
            group: None,
        })
    }

    /// Loads group `g` of `plan`: the slots take its blocks and every accumulator is
    /// cleared (the column sums too when `with_sums`), recorded on `encoder`.
    pub(crate) fn load(
        &mut self,
        ctx: &GpuContext,
        plan: &BlockPlan,
        g: usize,
        with_sums: bool,
        encoder: &mut wgpu::CommandEncoder,
    ) {
        let blocks = plan.group(g);
        for (slot, b) in self
            .slots
            .iter_mut()
            .zip(blocks.clone().map(Some).chain(std::iter::repeat(None)))
        {
            let range = b.map_or(0..0, |b| plan.block(b));
            slot.first = range.start;
            slot.tiles = range.len();
            let params = BlockParams {
                first: range.start as u32,
                count: range.len() as u32,
                _pad: [0; 2],
            };
            ctx.write_buffer(&slot.params, 0, bytemuck::bytes_of(&params));
            for buffer in [&slot.gram, &slot.distances].into_iter().flatten() {
                encoder.clear_buffer(buffer, 0, None);
            }
        }
        if with_sums {
            if let Some((buffer, _)) = &self.sums {
                encoder.clear_buffer(buffer, 0, None);
            }
        }
        self.group = Some(g);
    }

    /// Records one chunk's dispatches into `pass`: the column sums (when `kernels.sums` is
    /// given), then every loaded block, all reading the input bound in `kernels.input`.
    pub(crate) fn record_chunk(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        kernels: &ChunkKernels<'_>,
    ) {
        if let Some(pipeline) = kernels.sums {
            self.record_sums(pass, pipeline, kernels.input);
        }
        pass.set_pipeline(kernels.tiles);
        pass.set_bind_group(0, kernels.input, &[]);
        for slot in self.slots.iter().filter(|s| s.tiles > 0) {
            pass.set_bind_group(1, &slot.bind, &[]);
            let x = slot.tiles.min(self.max_workgroups as usize).max(1);
            pass.dispatch_workgroups(x as u32, slot.tiles.div_ceil(x) as u32, 1);
        }
    }

    /// Records the column-sum dispatch of the chunk bound in `input` (nothing without the
    /// column-sum accumulator).
    pub(crate) fn record_sums(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        pipeline: &wgpu::ComputePipeline,
        input: &wgpu::BindGroup,
    ) {
        if let Some((_, bind)) = &self.sums {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, input, &[]);
            pass.set_bind_group(1, bind, &[]);
            pass.dispatch_workgroups(self.n.div_ceil(256) as u32, 1, 1);
        }
    }

    /// The column-sum accumulator, when the Gram is kept.
    pub(crate) fn column_sums(&self) -> Option<&wgpu::Buffer> {
        self.sums.as_ref().map(|(buffer, _)| buffer)
    }

    /// n, the number of columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// The buffers to read back after a pass, in order: per loaded block its Gram then its
    /// distances (whole tiles), then the column sums when `with_sums`. Each comes with what
    /// it holds ([`Held`]).
    pub(crate) fn regions(&self, with_sums: bool) -> (Vec<Region<'_>>, Vec<Held>) {
        let mut regions = Vec::new();
        let mut held = Vec::new();
        for slot in self.slots.iter().filter(|s| s.tiles > 0) {
            let tiles = [
                (Product::Gram, &slot.gram),
                (Product::Distances, &slot.distances),
            ];
            for (product, buffer) in tiles {
                if let Some(buffer) = buffer {
                    regions.push(Region {
                        buffer,
                        offset: 0,
                        bytes: slot.tiles as u64 * TILE_BYTES,
                        granule: TILE_BYTES,
                    });
                    held.push(Held::Tiles {
                        product,
                        first: slot.first,
                    });
                }
            }
        }
        if with_sums {
            if let Some((buffer, _)) = &self.sums {
                regions.push(Region {
                    buffer,
                    offset: 0,
                    bytes: (self.n * 8) as u64,
                    granule: 8,
                });
                held.push(Held::ColumnSums);
            }
        }
        (regions, held)
    }

    /// Which products this accumulator keeps.
    pub(crate) fn products(&self) -> Products {
        self.products
    }
}

/// One of the two symmetric products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Product {
    Gram,
    Distances,
}

/// What a read-back region holds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    /// Consecutive tiles of `product`, from tile `first` of the plan's list on.
    Tiles { product: Product, first: usize },
    /// The column sums, one (hi, lo) pair per column.
    ColumnSums,
    /// The columns' shift, one f32 per column.
    Shift,
}
