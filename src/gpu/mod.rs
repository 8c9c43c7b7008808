//! The WGSL kernels and the context that runs them. One file per kernel family; each
//! operation has a CPU twin with the same signature in [`crate::cpu`].
//!
//! The statistics pass (Gram, distances, column sums) is built from small parts, each with
//! one job, in the order the data flows:
//! - [`plan`]: how the n x n result is cut into tiles, blocks and groups (no device needed);
//! - `ring`: host rows into reused staging buffers and two device input buffers;
//! - `accumulator`: the device-resident (hi, lo) sums of a group of blocks; only records
//!   commands;
//! - `readback`: one reusable mapped buffer that brings results back;
//! - `assemble`: read-back tiles into the caller's matrices, on all threads;
//! - `stats`: the engine that drives them, one submit per chunk, one readback per result;
//! - [`GpuContext`]: device, limits, pipelines with explicit layouts, fault capture, counters.

mod accumulator;
mod assemble;
mod context;
mod counters;
pub mod forward;
pub mod fusion;
pub mod gram;
pub mod plan;
pub mod rbf;
mod readback;
mod ring;
pub(crate) mod stats;
mod timing;

pub use context::{
    Binding, GpuContext, ShaderEntry, DEFAULT_MEMORY_BUDGET, MIN_STORAGE_BUFFERS_PER_STAGE,
};
pub use counters::GpuCounters;

/// Fails a test run when no adapter is present and `DIVNET_REQUIRE_GPU=1`; otherwise
/// returns `None` so that GPU tests can skip on machines without Vulkan. For tests.
#[doc(hidden)]
pub fn test_context() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("DIVNET_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("DIVNET_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}
