//! TEMPORARY contract stubs (replaced by the model branch).
#![allow(missing_docs, unused_variables)]
use std::path::Path;
use crate::Result;
pub struct Inputs { pub data: Vec<f32>, pub rows: usize, pub cols: usize }
pub fn read_inputs(path: &Path) -> Result<Inputs> { unimplemented!() }
pub fn read_labels(path: &Path) -> Result<Vec<u32>> { unimplemented!() }
