//! TEMPORARY contract stubs (replaced by the dpp branch).
#![allow(missing_docs, unused_variables)]
use crate::Result;
pub struct Spectrum { pub eigenvalues: Vec<f64>, pub eigenvectors: faer::Mat<f64> }
impl Spectrum {
    pub fn new(l: faer::MatRef<'_, f64>) -> Result<Self> { unimplemented!() }
    pub fn len(&self) -> usize { unimplemented!() }
    pub fn numerical_rank(&self) -> usize { unimplemented!() }
    pub fn expected_dpp_size(&self) -> f64 { unimplemented!() }
}
pub struct KDppSampler<'a> { s: &'a Spectrum }
impl<'a> KDppSampler<'a> {
    pub fn new(spectrum: &'a Spectrum, k: usize) -> Result<Self> { unimplemented!() }
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> { unimplemented!() }
}
pub struct DppSampler<'a> { s: &'a Spectrum }
impl<'a> DppSampler<'a> {
    pub fn new(spectrum: &'a Spectrum) -> Self { unimplemented!() }
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> { unimplemented!() }
}
pub enum GreedyStop { Count(usize), MinGain(f64) }
pub fn greedy_map(l: faer::MatRef<'_, f64>, stop: GreedyStop) -> Result<Vec<usize>> { unimplemented!() }
