//! Kernel construction: the Gram statistics of a layer's activations and the RBF kernel
//! over its neurons. Entry points dispatch to [`crate::gpu`] or [`crate::cpu`] by
//! [`crate::Backend`] (issue 2 fills this in).

use faer::Mat;

use crate::error::{Error, Result};

/// What one pass over a calibration set yields for a layer of n neurons over m samples:
/// the Gram matrix `G = A^T A` (n x n, f64, both triangles filled) and the column sums
/// `s = A^T 1`. Everything fusion needs, and the RBF kernel can be derived from it.
#[derive(Clone, Debug)]
pub struct GramStats {
    /// `G = A^T A`, n x n, symmetric.
    pub gram: Mat<f64>,
    /// `s = A^T 1`, length n.
    pub col_sums: Vec<f64>,
    /// m, the number of samples accumulated.
    pub samples: usize,
}

/// The RBF bandwidth beta in `L_ij = exp(-beta * ||v_i - v_j||^2)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beta {
    /// The paper's default, `10 / m`.
    Paper,
    /// The median heuristic, `1 / median_{i<j} ||v_i - v_j||^2`.
    Median,
    /// A given positive value.
    Value(f64),
}

impl std::str::FromStr for Beta {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Beta::Paper),
            "median" => Ok(Beta::Median),
            other => match other.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Beta::Value(v)),
                _ => Err(Error::invalid(format!(
                    "invalid beta {other:?}: expected paper, median or a positive number"
                ))),
            },
        }
    }
}

// ---- TEMPORARY contract stubs (replaced by the kernels branch) ----
use crate::Backend;
/// stub
#[derive(Clone, Copy, Debug)]
pub enum ActivationRows<'a> {
    /// stub
    F32(&'a [f32]),
    /// stub
    F16(&'a [half::f16]),
}
/// stub
pub struct GramAccumulator;
impl GramAccumulator {
    /// stub
    pub fn new(_b: &Backend, _n: usize) -> Result<Self> { unimplemented!() }
    /// stub
    pub fn push(&mut self, _rows: ActivationRows<'_>) -> Result<()> { unimplemented!() }
    /// stub
    pub fn samples(&self) -> usize { unimplemented!() }
    /// stub
    pub fn finish(self) -> Result<GramStats> { unimplemented!() }
}
/// stub
pub struct DistanceAccumulator;
impl DistanceAccumulator {
    /// stub
    pub fn new(_b: &Backend, _n: usize) -> Result<Self> { unimplemented!() }
    /// stub
    pub fn push(&mut self, _rows: ActivationRows<'_>) -> Result<()> { unimplemented!() }
    /// stub
    pub fn finish(self) -> Result<Distances> { unimplemented!() }
}
/// stub
pub struct Distances {
    /// stub
    pub squared: Mat<f64>,
    /// stub
    pub samples: usize,
}
/// stub
pub struct RbfKernel {
    /// stub
    pub matrix: Mat<f64>,
    /// stub
    pub beta: f64,
    /// stub
    pub eps: f64,
}
/// stub
pub fn rbf_from_distances(_d: &Distances, _beta: Beta, _eps: f64) -> Result<RbfKernel> { unimplemented!() }
/// stub
pub fn rbf_kernel(_b: &Backend, _rows: ActivationRows<'_>, _n: usize, _beta: Beta, _eps: f64) -> Result<RbfKernel> { unimplemented!() }
