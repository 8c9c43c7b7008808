//! A reusable readback: results come back from device buffers through one mapped staging
//! buffer, filled as few times as its capacity allows, and each fill is handed to the caller
//! as bytes while still mapped, so that the caller writes the values straight where they
//! belong (no host copy of the staging memory).

use std::time::Instant;

use super::counters::Stage;
use super::GpuContext;
use crate::error::{Error, Result};

/// A range of a device buffer to read back.
pub(crate) struct Region<'a> {
    pub(crate) buffer: &'a wgpu::Buffer,
    /// Byte offset in `buffer` (a multiple of 4).
    pub(crate) offset: u64,
    /// Bytes to read (a multiple of 4).
    pub(crate) bytes: u64,
    /// Pieces handed to the caller start and end at multiples of this many bytes (whole
    /// tiles, whole values) unless the region ends first.
    pub(crate) granule: u64,
}

/// What [`Readback::read`] calls for every piece read back: (region index, byte offset in
/// the region, bytes).
pub(crate) type Visit<'a> = dyn FnMut(usize, u64, &[u8]) -> Result<()> + 'a;

/// One mapped staging buffer (`MAP_READ | COPY_DST`), kept for every read of an engine.
pub(crate) struct Readback {
    staging: wgpu::Buffer,
    capacity: u64,
}

/// Where one piece of a region lies in the staging buffer during a fill.
struct Piece {
    region: usize,
    offset: u64,
    bytes: u64,
    at: u64,
}

impl Readback {
    /// A staging buffer of `capacity` bytes (rounded up to 8).
    pub(crate) fn new(ctx: &GpuContext, capacity: u64) -> Result<Self> {
        let capacity = capacity.max(8).div_ceil(8) * 8;
        let staging = ctx.buffer(
            "divnet readback",
            capacity,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            false,
        )?;
        Ok(Self { staging, capacity })
    }

    /// Copies `regions` back in order and calls `visit(region index, byte offset in the
    /// region, bytes)` for every piece, filling the staging buffer as few times as its
    /// capacity allows (one map per fill). Waits for the work submitted before.
    pub(crate) fn read(
        &self,
        ctx: &GpuContext,
        regions: &[Region<'_>],
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut used = 0u64;
        for (r, region) in regions.iter().enumerate() {
            assert!(
                region.granule <= self.capacity,
                "a readback piece of {} bytes does not fit the staging buffer",
                region.granule
            );
            let mut offset = 0;
            while offset < region.bytes {
                let left = region.bytes - offset;
                let room = self.capacity - used;
                let take = if left <= room {
                    left
                } else {
                    room / region.granule * region.granule
                };
                if take == 0 {
                    self.fill(ctx, regions, &pieces, used, visit)?;
                    pieces.clear();
                    used = 0;
                    continue;
                }
                pieces.push(Piece {
                    region: r,
                    offset,
                    bytes: take,
                    at: used,
                });
                used = (used + take).div_ceil(8) * 8;
                offset += take;
            }
        }
        if !pieces.is_empty() {
            self.fill(ctx, regions, &pieces, used, visit)?;
        }
        Ok(())
    }

    /// One fill: copy the pieces into the staging buffer, map it, visit them, unmap.
    fn fill(
        &self,
        ctx: &GpuContext,
        regions: &[Region<'_>],
        pieces: &[Piece],
        used: u64,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut encoder = ctx.encoder("divnet readback");
        for p in pieces {
            let region = &regions[p.region];
            encoder.copy_buffer_to_buffer(
                region.buffer,
                region.offset + p.offset,
                &self.staging,
                p.at,
                p.bytes,
            );
        }
        let submission = ctx.submit("readback", encoder)?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.staging
            .map_async(wgpu::MapMode::Read, ..used, move |r| {
                let _ = tx.send(r);
            });
        ctx.wait_for(Some(submission))?;
        rx.try_recv()
            .map_err(|_| Error::Gpu("readback buffer never mapped (device lost?)".into()))?
            .map_err(|e| Error::Gpu(format!("mapping readback buffer: {e}")))?;
        ctx.count().readback(used);
        ctx.count().time(Stage::Readback, start);
        let start = Instant::now();
        let result = {
            let view = self
                .staging
                .get_mapped_range(..used)
                .map_err(|e| Error::Gpu(format!("reading mapped buffer: {e}")))?;
            pieces.iter().try_for_each(|p| {
                visit(
                    p.region,
                    p.offset,
                    &view[p.at as usize..(p.at + p.bytes) as usize],
                )
            })
        };
        self.staging.unmap();
        ctx.count().time(Stage::Assemble, start);
        result
    }
}
