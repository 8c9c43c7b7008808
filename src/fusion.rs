//! TEMPORARY contract stubs (replaced by the fusion branch).
#![allow(missing_docs, unused_variables)]
use crate::{kernel::GramStats, Backend, Result};
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionMode { Fuse, FuseNoBias, Prune }
#[derive(Clone, Copy, Debug)]
pub struct FusionOptions { pub mode: FusionMode, pub ridge_factor: f64 }
impl Default for FusionOptions { fn default() -> Self { unimplemented!() } }
#[derive(Clone, Copy, Debug)]
pub struct NextLayer<'a> { pub weight: &'a [f32], pub bias: Option<&'a [f32]>, pub n_out: usize, pub n_in: usize }
#[derive(Clone, Debug)]
pub struct FusedLayer { pub weight: Vec<f32>, pub bias: Vec<f32>, pub ridge: f64, pub relative_error: f64 }
pub fn fuse_next_layer(backend: &Backend, stats: &GramStats, keep: &[usize], next: NextLayer<'_>, opts: &FusionOptions) -> Result<FusedLayer> { unimplemented!() }
