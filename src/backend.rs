//! Choosing where the kernels run: the GPU through wgpu, or the CPU twins.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when the adapter is a real GPU; the CPU twins on a software adapter
    /// (lavapipe, where a tiled WGSL Gram runs about 100x slower than BLAS) or with none.
    #[default]
    Auto,
    /// The GPU, any adapter including a software one; no adapter is an error.
    Gpu,
    /// The CPU twins.
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(Error::invalid(format!(
                "unknown backend {other:?}: expected auto, gpu or cpu"
            ))),
        }
    }
}

/// Where the kernels run. Cheap to clone: the GPU context is shared.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The CPU reference implementations (faer).
    Cpu,
    /// The WGSL kernels on this context's device.
    Gpu(Arc<GpuContext>),
}

/// The outcome of [`Backend::select`]: the backend and a sentence saying why, for the user.
#[derive(Clone, Debug)]
pub struct BackendSelection {
    /// The chosen backend.
    pub backend: Backend,
    /// e.g. "GPU: NVIDIA RTX 4070 (Vulkan, DiscreteGpu)" or
    /// "CPU: the only adapter is a software one (llvmpipe ...)".
    pub reason: String,
}

impl Backend {
    /// Resolves `choice` against the adapters present on this machine.
    pub fn select(choice: BackendChoice) -> Result<BackendSelection> {
        match choice {
            BackendChoice::Cpu => Ok(BackendSelection {
                backend: Backend::Cpu,
                reason: "CPU (asked for)".into(),
            }),
            BackendChoice::Gpu => {
                let ctx = GpuContext::new()?;
                let reason = format!("GPU: {}", ctx.adapter_description());
                Ok(BackendSelection {
                    backend: Backend::Gpu(Arc::new(ctx)),
                    reason,
                })
            }
            BackendChoice::Auto => match GpuContext::new() {
                Ok(ctx) if ctx.is_software() => Ok(BackendSelection {
                    reason: format!(
                        "CPU: the adapter is a software one ({}), slower than the CPU path",
                        ctx.adapter_description()
                    ),
                    backend: Backend::Cpu,
                }),
                Ok(ctx) => Ok(BackendSelection {
                    reason: format!("GPU: {}", ctx.adapter_description()),
                    backend: Backend::Gpu(Arc::new(ctx)),
                }),
                Err(e) => Ok(BackendSelection {
                    backend: Backend::Cpu,
                    reason: format!("CPU: no GPU available ({e})"),
                }),
            },
        }
    }

    /// The GPU context, if this is the GPU backend.
    pub fn gpu(&self) -> Option<&Arc<GpuContext>> {
        match self {
            Backend::Gpu(ctx) => Some(ctx),
            Backend::Cpu => None,
        }
    }

    /// "cpu" or "gpu".
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }
}
