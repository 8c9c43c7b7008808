//! File formats: npy, safetensors, IDX, JSON index lists, and atomic writes for all outputs.

pub mod atomic;
pub mod data;
pub mod idx;
pub mod keep;
pub mod npy;
pub mod safetensors;
pub mod sniff;
