//! What a [`crate::GpuContext`] did: how many submits, uploads, readbacks and buffer
//! allocations, and where the host's time went. Tests read the counts (one readback per
//! product whatever m is); `divnet bench` prints them beside the stage times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A snapshot of a context's counters. Counts are totals since the context was created;
/// [`GpuCounters::since`] gives what happened between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct GpuCounters {
    /// Command buffers submitted to the queue.
    pub submits: u64,
    /// Host-to-device transfers: rows copied into staging memory, buffers written through
    /// the queue (parameters included).
    pub uploads: u64,
    /// Bytes of those transfers.
    pub upload_bytes: u64,
    /// Device-to-host transfers: each fill of a mapped readback buffer.
    pub readbacks: u64,
    /// Bytes read back.
    pub readback_bytes: u64,
    /// Buffers created on the device (staging and readback buffers included).
    pub buffers: u64,
    /// Bytes of those buffers.
    pub buffer_bytes: u64,
    /// Times the host blocked until the device finished some submitted work.
    pub waits: u64,
    /// Host seconds spent copying rows into staging memory.
    pub upload_seconds: f64,
    /// Host seconds inside the queue's submit (a driver that runs work synchronously, as
    /// lavapipe may, shows its device time here).
    pub submit_seconds: f64,
    /// Host seconds blocked on the device: waiting for a free input slot (the device still
    /// busy with older chunks) and for readbacks to arrive.
    pub wait_seconds: f64,
    /// Host seconds from the submit of a readback copy to its data being mapped (part of
    /// `wait_seconds`: the tail of the device's work shows up here).
    pub readback_seconds: f64,
    /// Host seconds writing read-back results into the matrices the caller gets.
    pub assemble_seconds: f64,
    /// Device seconds inside timed compute passes, from timestamp queries: 0 unless timing
    /// was switched on with [`crate::GpuContext::enable_timing`] on an adapter that has
    /// `TIMESTAMP_QUERY`.
    pub gpu_seconds: f64,
    /// Compute passes whose device time is in `gpu_seconds`.
    pub timed_passes: u64,
}

impl GpuCounters {
    /// What happened between `earlier` and `self` (both from the same context).
    pub fn since(&self, earlier: &GpuCounters) -> GpuCounters {
        GpuCounters {
            submits: self.submits - earlier.submits,
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            readbacks: self.readbacks - earlier.readbacks,
            readback_bytes: self.readback_bytes - earlier.readback_bytes,
            buffers: self.buffers - earlier.buffers,
            buffer_bytes: self.buffer_bytes - earlier.buffer_bytes,
            waits: self.waits - earlier.waits,
            upload_seconds: self.upload_seconds - earlier.upload_seconds,
            submit_seconds: self.submit_seconds - earlier.submit_seconds,
            wait_seconds: self.wait_seconds - earlier.wait_seconds,
            readback_seconds: self.readback_seconds - earlier.readback_seconds,
            assemble_seconds: self.assemble_seconds - earlier.assemble_seconds,
            gpu_seconds: self.gpu_seconds - earlier.gpu_seconds,
            timed_passes: self.timed_passes - earlier.timed_passes,
        }
    }
}

/// The live counters behind [`GpuCounters`]: atomics, so that a shared context counts
/// without a lock. Times are kept in nanoseconds.
#[derive(Default)]
pub(crate) struct Counters {
    submits: AtomicU64,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    readbacks: AtomicU64,
    readback_bytes: AtomicU64,
    buffers: AtomicU64,
    buffer_bytes: AtomicU64,
    waits: AtomicU64,
    upload_ns: AtomicU64,
    submit_ns: AtomicU64,
    wait_ns: AtomicU64,
    readback_ns: AtomicU64,
    assemble_ns: AtomicU64,
    gpu_ns: AtomicU64,
    timed_passes: AtomicU64,
}

/// Which host stage a timed section belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Upload,
    Submit,
    Wait,
    Readback,
    Assemble,
}

fn add(counter: &AtomicU64, v: u64) {
    counter.fetch_add(v, Ordering::Relaxed);
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl Counters {
    pub(crate) fn submit(&self) {
        add(&self.submits, 1);
    }

    pub(crate) fn upload(&self, bytes: u64) {
        add(&self.uploads, 1);
        add(&self.upload_bytes, bytes);
    }

    pub(crate) fn readback(&self, bytes: u64) {
        add(&self.readbacks, 1);
        add(&self.readback_bytes, bytes);
    }

    pub(crate) fn buffer(&self, bytes: u64) {
        add(&self.buffers, 1);
        add(&self.buffer_bytes, bytes);
    }

    pub(crate) fn wait(&self) {
        add(&self.waits, 1);
    }

    pub(crate) fn gpu_time(&self, ns: u64, passes: u64) {
        add(&self.gpu_ns, ns);
        add(&self.timed_passes, passes);
    }

    /// Adds the time since `start` to `stage`.
    pub(crate) fn time(&self, stage: Stage, start: Instant) {
        let counter = match stage {
            Stage::Upload => &self.upload_ns,
            Stage::Submit => &self.submit_ns,
            Stage::Wait => &self.wait_ns,
            Stage::Readback => &self.readback_ns,
            Stage::Assemble => &self.assemble_ns,
        };
        add(counter, nanos(start.elapsed()));
    }

    pub(crate) fn snapshot(&self) -> GpuCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let secs = |c: &AtomicU64| get(c) as f64 * 1e-9;
        GpuCounters {
            submits: get(&self.submits),
            uploads: get(&self.uploads),
            upload_bytes: get(&self.upload_bytes),
            readbacks: get(&self.readbacks),
            readback_bytes: get(&self.readback_bytes),
            buffers: get(&self.buffers),
            buffer_bytes: get(&self.buffer_bytes),
            waits: get(&self.waits),
            upload_seconds: secs(&self.upload_ns),
            submit_seconds: secs(&self.submit_ns),
            wait_seconds: secs(&self.wait_ns),
            readback_seconds: secs(&self.readback_ns),
            assemble_seconds: secs(&self.assemble_ns),
            gpu_seconds: secs(&self.gpu_ns),
            timed_passes: get(&self.timed_passes),
        }
    }
}
