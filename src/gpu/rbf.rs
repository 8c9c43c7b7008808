//! Owned by the kernels work (issue 2).
