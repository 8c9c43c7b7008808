//! The tiled WGSL Gram and distance kernels (`shaders/gram.wgsl`): their entry points and
//! bind group layouts, the layouts of activation rows in GPU buffers, and
//! [`gram_from_buffer`] for activations that already live on the device. The engine that
//! streams chunks through them is `crate::gpu::stats`.

use super::accumulator::{Products, ONE_ACCUMULATOR, TWO_ACCUMULATORS};
use super::context::{Binding, ShaderEntry};
use super::stats::GpuStats;
use super::GpuContext;
use crate::error::Result;
use crate::types::{GramStats, StatsKind};

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

/// Group 0 of every kernel: the chunk's parameters, its rows, the tile list, `opaque_one`,
/// the columns' shift.
pub(crate) const CHUNK: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
];
const ONE: &[&[Binding]] = &[CHUNK, ONE_ACCUMULATOR];
const TWO: &[&[Binding]] = &[CHUNK, TWO_ACCUMULATORS];

/// The entry points of one input format.
pub(crate) struct Kernels {
    gram: ShaderEntry,
    distances: ShaderEntry,
    both: ShaderEntry,
    pub(crate) sums: ShaderEntry,
}

impl Kernels {
    /// The entry points for rows laid out as `format`.
    pub(crate) fn of(format: RowFormat) -> &'static Kernels {
        match format {
            RowFormat::F32 => &KERNELS_F32,
            RowFormat::F16 => &KERNELS_F16,
        }
    }

    /// The tile kernel that fills the accumulators of `products`.
    pub(crate) fn tiles(&self, products: Products) -> ShaderEntry {
        match (products.gram, products.distances) {
            (true, true) => self.both,
            (true, false) => self.gram,
            _ => self.distances,
        }
    }
}

macro_rules! kernels {
    ($source:expr, $format:literal) => {
        Kernels {
            gram: ShaderEntry {
                key: concat!("gram::gram_tiles::", $format),
                source: $source,
                entry_point: "gram_tiles",
                groups: ONE,
            },
            distances: ShaderEntry {
                key: concat!("gram::dist_tiles::", $format),
                source: $source,
                entry_point: "dist_tiles",
                groups: ONE,
            },
            both: ShaderEntry {
                key: concat!("gram::both_tiles::", $format),
                source: $source,
                entry_point: "both_tiles",
                groups: TWO,
            },
            sums: ShaderEntry {
                key: concat!("gram::col_sums::", $format),
                source: $source,
                entry_point: "col_sums",
                groups: ONE,
            },
        }
    };
}

const KERNELS_F32: Kernels = kernels!(SOURCE_F32, "f32");
const KERNELS_F16: Kernels = kernels!(SOURCE_F16, "f16");

/// `shaders/shift.wgsl`: the first chunk's column sums into the shift.
pub(crate) const MEAN_SHIFT: ShaderEntry = ShaderEntry {
    key: "shift::mean_shift",
    source: include_str!("../../shaders/shift.wgsl"),
    entry_point: "mean_shift",
    groups: &[TWO_ACCUMULATORS],
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

/// `G = A^T A` and `s = A^T 1` of the `m x n` activations already in `buffer` (row-major,
/// laid out as `format` says; usage must include `STORAGE`). For applications that produce
/// activations on the GPU: nothing is copied to the device, and nothing but the result
/// comes back.
pub fn gram_from_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    format: RowFormat,
    m: usize,
    n: usize,
) -> Result<GramStats> {
    let mut stats = GpuStats::new(ctx, n, StatsKind::Gram)?;
    // Read before this returns: the buffer cannot change in between.
    stats.push_buffer(ctx, buffer, 0, m, format, true)?;
    let (gram, _, col_sums, samples) = stats.finish(ctx)?;
    Ok(GramStats {
        gram: gram.expect("kept"),
        col_sums,
        samples,
    })
}
