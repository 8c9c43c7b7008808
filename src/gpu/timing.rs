//! Device time of compute passes from timestamp queries (wgpu's `TIMESTAMP_QUERY`), for
//! `divnet bench`: each timed pass writes a timestamp at its start and end, resolved into a
//! buffer right after the pass; [`PassTimer::read_out`] reads them all back at once.
//!
//! Off unless switched on ([`crate::GpuContext::enable_timing`]): reading the timestamps back
//! is a wait on the device, which ordinary runs must not pay.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// Passes timed between two read-outs at most; later ones run untimed.
const SLOTS: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;
/// Each pass resolves its two timestamps to its own 256-byte-aligned place.
const SLOT_BYTES: u64 = wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;

pub(crate) struct PassTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readable: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    state: Mutex<TimerState>,
}

struct TimerState {
    enabled: bool,
    /// Slots used since the last read-out.
    used: u32,
}

impl PassTimer {
    /// A timer on `device`, which must have been opened with `TIMESTAMP_QUERY`.
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("divnet pass timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * SLOTS,
        });
        let bytes = SLOTS as u64 * SLOT_BYTES;
        let resolved = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("divnet resolved timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readable = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("divnet timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            queries,
            resolved,
            readable,
            period: queue.get_timestamp_period() as f64,
            state: Mutex::new(TimerState {
                enabled: true,
                used: 0,
            }),
        }
    }

    /// Records a compute pass on `encoder`, timed when timing is on and a slot is free.
    pub(crate) fn pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &str,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) {
        let slot = {
            let mut state = self.state.lock().expect("timer state");
            (state.enabled && state.used < SLOTS).then(|| {
                state.used += 1;
                state.used - 1
            })
        };
        let writes = slot.map(|s| wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * s),
            end_of_pass_write_index: Some(2 * s + 1),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: writes,
            });
            record(&mut pass);
        }
        if let Some(s) = slot {
            encoder.resolve_query_set(
                &self.queries,
                2 * s..2 * s + 2,
                &self.resolved,
                s as u64 * SLOT_BYTES,
            );
        }
    }

    /// The device nanoseconds of the passes timed since the last read-out, and how many there
    /// were; frees their slots. Waits for the device (only when something was timed).
    pub(crate) fn read_out(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<(u64, u64)> {
        let mut state = self.state.lock().expect("timer state");
        if state.used == 0 {
            return Ok((0, 0));
        }
        let bytes = state.used as u64 * SLOT_BYTES;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("divnet timestamp read-out"),
        });
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readable, 0, bytes);
        queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        self.readable
            .map_async(wgpu::MapMode::Read, ..bytes, move |r| {
                let _ = tx.send(r);
            });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for timestamps: {e}")))?;
        rx.try_recv()
            .map_err(|_| Error::Gpu("timestamp readback never mapped (device lost?)".into()))?
            .map_err(|e| Error::Gpu(format!("mapping timestamps: {e}")))?;
        let mut ticks = 0u64;
        {
            let view = self
                .readable
                .get_mapped_range(..bytes)
                .map_err(|e| Error::Gpu(format!("reading timestamps: {e}")))?;
            for slot in view.chunks_exact(SLOT_BYTES as usize) {
                let start = u64::from_le_bytes(slot[0..8].try_into().expect("8 bytes"));
                let end = u64::from_le_bytes(slot[8..16].try_into().expect("8 bytes"));
                ticks += end.saturating_sub(start);
            }
        }
        self.readable.unmap();
        let passes = state.used as u64;
        state.used = 0;
        Ok(((ticks as f64 * self.period) as u64, passes))
    }
}
