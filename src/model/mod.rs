//! TEMPORARY contract stubs (replaced by the model branch).
#![allow(missing_docs, unused_variables)]
use crate::io::safetensors::TensorFile;
use crate::Result;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation { Relu, Tanh, Sigmoid, Gelu }
impl std::str::FromStr for Activation { type Err = crate::Error; fn from_str(s: &str) -> Result<Self> { unimplemented!() } }
#[derive(Clone, Debug)]
pub struct Linear { pub name: String, pub in_dim: usize, pub out_dim: usize, pub weight: Vec<f32>, pub bias: Vec<f32>, pub has_bias: bool }
#[derive(Clone, Debug)]
pub struct Mlp { pub layers: Vec<Linear>, pub activation: Activation }
impl Mlp {
    pub fn from_tensors(file: &TensorFile, order: Option<&[String]>, activation: Activation) -> Result<Mlp> { unimplemented!() }
    pub fn to_tensors(&self, template: &TensorFile) -> Result<TensorFile> { unimplemented!() }
    pub fn init(dims: &[usize], activation: Activation, seed: u64) -> Mlp { unimplemented!() }
    pub fn input_dim(&self) -> usize { unimplemented!() }
    pub fn output_dim(&self) -> usize { unimplemented!() }
    pub fn param_count(&self) -> usize { unimplemented!() }
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> { unimplemented!() }
    pub fn hidden(&self, x: &[f32], m: usize, layer: usize) -> Vec<f32> { unimplemented!() }
}
pub struct Evaluation { pub accuracy: f64, pub loss: f64, pub samples: usize }
pub fn evaluate(mlp: &Mlp, x: &[f32], m: usize, labels: &[u32]) -> Result<Evaluation> { unimplemented!() }
pub enum Optimizer { Adam, Sgd { momentum: f32 } }
pub struct TrainConfig { pub epochs: usize, pub batch_size: usize, pub learning_rate: f32, pub optimizer: Optimizer, pub seed: u64 }
pub struct EpochReport { pub epoch: usize, pub loss: f64, pub accuracy: f64, pub seconds: f64 }
pub fn train(mlp: &mut Mlp, x: &[f32], m: usize, labels: &[u32], cfg: &TrainConfig, on_batch: &mut dyn FnMut(usize, usize), on_epoch: &mut dyn FnMut(&EpochReport)) -> Result<Vec<EpochReport>> { unimplemented!() }
