//! divnet's file readers, compiled from the very source files of the divnet crate (not
//! copies), with only the dependencies they need.

#[path = "../../src/error.rs"]
pub mod error;

#[path = "../../src/io/atomic.rs"]
#[doc(hidden)]
pub mod atomic_src;
#[path = "../../src/io/idx.rs"]
#[doc(hidden)]
pub mod idx_src;
#[path = "../../src/io/npy.rs"]
#[doc(hidden)]
pub mod npy_src;
#[path = "../../src/io/safetensors.rs"]
#[doc(hidden)]
pub mod safetensors_src;

/// The same paths as `divnet::io`, so that the readers' `crate::io::...` imports resolve.
pub mod io {
    pub use crate::atomic_src as atomic;
    pub use crate::idx_src as idx;
    pub use crate::npy_src as npy;
    pub use crate::safetensors_src as safetensors;
}
