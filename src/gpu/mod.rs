//! The WGSL kernels and the context that runs them. One file per kernel family; each
//! operation has a CPU twin with the same signature in [`crate::cpu`].

mod context;
pub mod forward;
pub mod fusion;
pub mod gram;
pub mod rbf;

pub use context::{GpuContext, ShaderEntry};

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
