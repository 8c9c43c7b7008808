//! The input ring: host rows go straight into reused, mapped staging buffers (f32 bytes as
//! they are, f16 packed two per word as they are stored), then by one copy on the device's
//! queue into one of two input buffers. The host fills chunk k + 1 while the device computes
//! chunk k; a slot is reused once the device has finished the chunk that last used it (its
//! staging buffer is mapped again by then), which also bounds the memory in flight.

use std::sync::mpsc;
use std::time::Instant;

use rayon::prelude::*;

use super::counters::Stage;
use super::gram::RowFormat;
use super::GpuContext;
use crate::error::{Error, Result};
use crate::types::ActivationRows;

/// Slots in flight: one being filled by the host, one being computed on.
const SLOTS: usize = 2;
/// Copies into staging memory above this size are split across threads.
const PARALLEL_COPY_BYTES: usize = 8 << 20;

/// A chunk handed to the device: which slot's input buffer holds it, and its rows.
pub(crate) struct FilledSlot {
    pub(crate) slot: usize,
    pub(crate) rows: usize,
    pub(crate) format: RowFormat,
}

struct Slot {
    /// `MAP_WRITE | COPY_SRC`, mapped while the host fills it.
    staging: wgpu::Buffer,
    /// `STORAGE | COPY_DST`: what the kernels read.
    input: wgpu::Buffer,
    /// The mapping of `staging` while it is being filled.
    view: Option<wgpu::BufferViewMut>,
    /// After a submit: the submission that used the slot, and the answer of its re-mapping.
    remap: Option<(
        wgpu::SubmissionIndex,
        mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    )>,
    rows: usize,
    format: RowFormat,
}

/// Two staging buffers and two device input buffers of `rows` rows of n values each.
pub(crate) struct InputRing {
    slots: Vec<Slot>,
    current: usize,
    n: usize,
    capacity_rows: usize,
}

impl InputRing {
    /// A ring for chunks of up to `rows` rows of `n` values (sized for f32, the larger format).
    pub(crate) fn new(ctx: &GpuContext, n: usize, rows: usize) -> Result<Self> {
        let bytes = (rows * RowFormat::F32.row_words(n) * 4) as u64;
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            let staging = ctx.buffer(
                "divnet input staging",
                bytes,
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                true,
            )?;
            let input = ctx.buffer(
                "divnet input rows",
                bytes,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                false,
            )?;
            let view = Some(
                staging
                    .get_mapped_range_mut(..)
                    .map_err(|e| Error::Gpu(format!("mapping input staging: {e}")))?,
            );
            slots.push(Slot {
                staging,
                input,
                view,
                remap: None,
                rows: 0,
                format: RowFormat::F32,
            });
        }
        Ok(Self {
            slots,
            current: 0,
            n,
            capacity_rows: rows,
        })
    }

    /// The device buffer of `slot`.
    pub(crate) fn input(&self, slot: usize) -> &wgpu::Buffer {
        &self.slots[slot].input
    }

    /// Rows of `format` that the slot being filled can still take: 0 when it is full or
    /// holds rows of the other format (the caller then hands it over first).
    pub(crate) fn room(&self, format: RowFormat) -> usize {
        let slot = &self.slots[self.current];
        if slot.rows > 0 && slot.format != format {
            return 0;
        }
        self.capacity_rows - slot.rows
    }

    /// Copies the first `count` rows of `rows` (at most [`InputRing::room`]) into the slot
    /// being filled, waiting first if the device still uses that slot.
    pub(crate) fn write(
        &mut self,
        ctx: &GpuContext,
        rows: ActivationRows<'_>,
        count: usize,
    ) -> Result<()> {
        let n = self.n;
        let format = match rows {
            ActivationRows::F32(_) => RowFormat::F32,
            ActivationRows::F16(_) => RowFormat::F16,
        };
        assert!(count <= self.room(format), "the ring slot is full");
        if count == 0 {
            return Ok(());
        }
        let slot = &mut self.slots[self.current];
        if slot.view.is_none() {
            // Unmapped and not in flight: the submit that should have taken it failed.
            let (submission, answer) = slot.remap.take().ok_or_else(|| {
                Error::Gpu("an input slot was lost by an earlier failed submit".into())
            })?;
            ctx.wait_for(Some(submission))?;
            answer
                .try_recv()
                .map_err(|_| Error::Gpu("input staging never mapped (device lost?)".into()))?
                .map_err(|e| Error::Gpu(format!("mapping input staging: {e}")))?;
            slot.view = Some(
                slot.staging
                    .get_mapped_range_mut(..)
                    .map_err(|e| Error::Gpu(format!("mapping input staging: {e}")))?,
            );
        }
        let start = Instant::now();
        let row_bytes = format.row_words(n) * 4;
        let at = slot.rows * row_bytes;
        let view = slot.view.as_mut().expect("mapped");
        let mut dst = view.slice(at..at + count * row_bytes);
        match rows {
            ActivationRows::F32(v) => copy_into(dst, bytemuck::cast_slice(&v[..count * n])),
            // An even width packs as the halves lie in memory (the even column in the low
            // half of each little-endian word).
            ActivationRows::F16(v) if n.is_multiple_of(2) => {
                copy_into(dst, bytemuck::cast_slice(&v[..count * n]))
            }
            ActivationRows::F16(v) => {
                for row in v[..count * n].chunks_exact(n) {
                    let (mut values, rest) = dst.split_at(2 * n);
                    values.copy_from_slice(bytemuck::cast_slice(row));
                    let (mut pad, rest) = rest.split_at(2);
                    pad.fill(0);
                    dst = rest;
                }
            }
        }
        slot.rows += count;
        slot.format = format;
        ctx.count().upload((count * row_bytes) as u64);
        ctx.count().time(Stage::Upload, start);
        Ok(())
    }

    /// Hands the slot being filled to the device: unmaps it and records the copy into its
    /// input buffer on `encoder`. `None` when it holds no rows. The next slot becomes current.
    pub(crate) fn take(&mut self, encoder: &mut wgpu::CommandEncoder) -> Option<FilledSlot> {
        let index = self.current;
        let slot = &mut self.slots[index];
        if slot.rows == 0 {
            return None;
        }
        drop(slot.view.take());
        slot.staging.unmap();
        let bytes = (slot.rows * slot.format.row_words(self.n) * 4) as u64;
        encoder.copy_buffer_to_buffer(&slot.staging, 0, &slot.input, 0, bytes);
        let filled = FilledSlot {
            slot: index,
            rows: slot.rows,
            format: slot.format,
        };
        slot.rows = 0;
        self.current = (index + 1) % SLOTS;
        Some(filled)
    }

    /// Tells the ring that the chunk of `slot` went out in `submission`: its staging buffer is
    /// mapped again once the device is done with it.
    pub(crate) fn submitted(&mut self, slot: usize, submission: wgpu::SubmissionIndex) {
        let (tx, rx) = mpsc::channel();
        let slot = &mut self.slots[slot];
        slot.staging.map_async(wgpu::MapMode::Write, .., move |r| {
            let _ = tx.send(r);
        });
        slot.remap = Some((submission, rx));
    }
}

/// A pointer into mapped staging memory that the copying threads share; each writes its own
/// disjoint range.
#[derive(Clone, Copy)]
struct StagingPtr(*mut u8);
// SAFETY: only used by `copy_into`, whose threads write disjoint ranges of one mapping that
// outlives them.
unsafe impl Send for StagingPtr {}
unsafe impl Sync for StagingPtr {}

impl StagingPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// `dst = src`, on several threads for large copies (one thread does not saturate the
/// memory bus: a 64 MiB chunk is ~10 ms on one).
fn copy_into(mut dst: wgpu::WriteOnly<'_, [u8]>, src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "staging range and rows differ in size"
    );
    if src.len() < PARALLEL_COPY_BYTES {
        dst.copy_from_slice(src);
        return;
    }
    let base = StagingPtr(dst.as_raw_element_ptr().as_ptr());
    let piece = src
        .len()
        .div_ceil(rayon::current_num_threads())
        .max(1 << 20);
    src.par_chunks(piece).enumerate().for_each(|(i, part)| {
        // SAFETY: `dst` is a writable mapping of exactly src.len() bytes, alive until this
        // function returns; piece i covers [i * piece, i * piece + part.len()), inside it
        // and disjoint from every other piece.
        unsafe {
            std::ptr::copy_nonoverlapping(part.as_ptr(), base.get().add(i * piece), part.len())
        }
    });
}
