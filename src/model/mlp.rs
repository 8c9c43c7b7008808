//! Multi-layer perceptrons: a chain of Linear layers with one activation function between
//! them, read from and written to PyTorch state dicts in safetensors form.

use std::path::Path;
use std::str::FromStr;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::io::safetensors::{read_safetensors, Tensor, TensorFile};

/// The activation function applied after every hidden layer (never after the last one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x)
    Relu,
    /// tanh(x)
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// x Phi(x), the exact (erf) form PyTorch's `nn.GELU()` uses by default.
    Gelu,
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Self::Relu),
            "tanh" => Ok(Self::Tanh),
            "sigmoid" => Ok(Self::Sigmoid),
            "gelu" => Ok(Self::Gelu),
            _ => Err(Error::invalid(format!(
                "unknown activation {s:?}: expected relu, tanh, sigmoid or gelu"
            ))),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Relu => "relu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::Gelu => "gelu",
        })
    }
}

impl Activation {
    /// The function's value at `x`.
    pub fn apply(&self, x: f32) -> f32 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Tanh => x.tanh(),
            Self::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Self::Gelu => {
                (0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2))) as f32
            }
        }
    }

    /// The derivative at pre-activation `z`, given the output `a = apply(z)`.
    pub fn derivative(&self, z: f32, a: f32) -> f32 {
        match self {
            Self::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Tanh => 1.0 - a * a,
            Self::Sigmoid => a * (1.0 - a),
            Self::Gelu => {
                let z = z as f64;
                let cdf = 0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (cdf + z * pdf) as f32
            }
        }
    }

    fn apply_slice(&self, v: &mut [f32]) {
        match self {
            Self::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            _ => v.iter_mut().for_each(|x| *x = self.apply(*x)),
        }
    }
}

/// erf with absolute error below 1.2e-7 everywhere (Numerical Recipes' erfc, a Chebyshev
/// fit), ample for f32 activations; std has no erf.
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// One fully connected layer, `y = W x + b`, in PyTorch's layout.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The state-dict prefix: the layer's tensors are `NAME.weight` and `NAME.bias`.
    pub name: String,
    /// Inputs per sample.
    pub in_dim: usize,
    /// Outputs per sample (neurons).
    pub out_dim: usize,
    /// `out_dim x in_dim`, row-major.
    pub weight: Vec<f32>,
    /// `out_dim` values; zeros when the file has no bias.
    pub bias: Vec<f32>,
    /// Whether the source file had a bias tensor for this layer.
    pub has_bias: bool,
}

impl Linear {
    /// Whether a bias must be stored: the file had one, or it has become non-zero
    /// (fusion folds constants into it).
    pub fn stores_bias(&self) -> bool {
        self.has_bias || self.bias.iter().any(|&b| b != 0.0)
    }

    /// `out = x W^T + b` for m rows of x; `out` has m x out_dim elements.
    fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) {
        debug_assert_eq!(x.len(), m * self.in_dim);
        debug_assert_eq!(out.len(), m * self.out_dim);
        for row in out.chunks_exact_mut(self.out_dim) {
            row.copy_from_slice(&self.bias);
        }
        if m == 0 {
            return;
        }
        let xr = MatRef::from_row_major_slice(x, m, self.in_dim);
        let w = MatRef::from_row_major_slice(&self.weight, self.out_dim, self.in_dim);
        let o = MatMut::from_row_major_slice_mut(out, m, self.out_dim);
        matmul(
            o,
            Accum::Add,
            xr,
            w.transpose(),
            1.0f32,
            faer::get_global_parallelism(),
        );
    }

    fn check(&self) -> Result<()> {
        if self.in_dim == 0 || self.out_dim == 0 {
            return Err(Error::invalid(format!(
                "layer {}: zero width ({} x {})",
                self.name, self.out_dim, self.in_dim
            )));
        }
        if self.weight.len() != self.in_dim * self.out_dim || self.bias.len() != self.out_dim {
            return Err(Error::invalid(format!(
                "layer {}: weight has {} values and bias {}, expected {} x {} and {}",
                self.name,
                self.weight.len(),
                self.bias.len(),
                self.out_dim,
                self.in_dim,
                self.out_dim
            )));
        }
        Ok(())
    }
}

/// A chain of Linear layers with `activation` after every layer but the last.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
    /// The activation between layers.
    pub activation: Activation,
}

/// `NAME.weight`, or `weight` for a bare `nn.Linear` state dict.
pub fn tensor_name(prefix: &str, kind: &str) -> String {
    if prefix.is_empty() {
        kind.to_string()
    } else {
        format!("{prefix}.{kind}")
    }
}

/// The module a dotted name sits in: `model.layers.3.mlp` for `model.layers.3.mlp.down_proj`
/// (of a tensor name, its layer: `fc1` for `fc1.weight`); `""` at the top level.
pub fn parent_module(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(parent, _)| parent)
}

/// A sort key that orders "fc2" before "fc10" and "layers.2" before "layers.10".
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            let mut num = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                num.push(d);
                chars.next();
            }
            out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
        } else {
            text.push(c);
            chars.next();
        }
    }
    out.push((text, 0));
    out
}

/// A weight found in the file: its prefix and (in, out).
#[derive(Clone, Debug)]
struct Candidate {
    prefix: String,
    in_dim: usize,
    out_dim: usize,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} -> {})", self.prefix, self.in_dim, self.out_dim)
    }
}

fn list(c: &[&Candidate]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a file with a 1-D tensor of one value per neuron of a hidden layer that is not a
/// layer's weight or bias: a normalisation between the layers (BatchNorm, LayerNorm), which
/// the MLP's forward pass would skip (its statistics, its compression and its accuracy would
/// be those of another network) and whose width compression would leave behind.
fn check_no_per_neuron_tensors(file: &TensorFile, layers: &[Linear]) -> Result<()> {
    let hidden = &layers[..layers.len().saturating_sub(1)];
    // The bias of any Linear layer in the file (a 2-D NAME.weight), in the MLP or not (a
    // second head beside the layers --layers picks), is a layer's own.
    let own: std::collections::HashSet<String> = weight_prefixes(file)
        .into_iter()
        .filter(|p| {
            file.get(&tensor_name(p, "weight"))
                .is_some_and(|t| t.shape.len() == 2)
        })
        .flat_map(|p| [tensor_name(&p, "weight"), tensor_name(&p, "bias")])
        .collect();
    for name in file.names() {
        let Some(t) = file.get(name) else { continue };
        let [width] = t.shape[..] else { continue };
        if own.contains(name) {
            continue;
        }
        if let Some(l) = hidden.iter().find(|l| l.out_dim == width) {
            return Err(Error::invalid(format!(
                "{name} [{width}] has one value per neuron of layer {} but is not a layer of the \
                 MLP (a normalisation between layers?): divnet's MLP is Linear layers with one \
                 elementwise activation between them; compress other networks layer by layer \
                 with compress-layer",
                l.name
            )));
        }
    }
    Ok(())
}

/// Finds up to two orderings of all candidates in which each layer's input width is the
/// previous one's output width. Gives up (None) after a bounded search.
fn shape_chains(cands: &[Candidate]) -> Option<Vec<Vec<usize>>> {
    fn dfs(
        cands: &[Candidate],
        path: &mut Vec<usize>,
        used: &mut [bool],
        found: &mut Vec<Vec<usize>>,
        budget: &mut usize,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if path.len() == cands.len() {
            found.push(path.clone());
            return true;
        }
        for i in 0..cands.len() {
            if used[i] {
                continue;
            }
            if let Some(&last) = path.last() {
                if cands[last].out_dim != cands[i].in_dim {
                    continue;
                }
            }
            used[i] = true;
            path.push(i);
            let ok = dfs(cands, path, used, found, budget);
            path.pop();
            used[i] = false;
            if !ok {
                return false;
            }
            if found.len() >= 2 {
                return true;
            }
        }
        true
    }
    let mut found = Vec::new();
    let mut budget = 1_000_000usize;
    let mut used = vec![false; cands.len()];
    if dfs(cands, &mut Vec::new(), &mut used, &mut found, &mut budget) {
        Some(found)
    } else {
        None
    }
}

impl Mlp {
    /// From a PyTorch state dict: `NAME.weight [out, in]` (+ optional `NAME.bias [out]`).
    /// `order` = Some(names) uses exactly those prefixes; None infers the chain from shapes
    /// (each layer's in = previous out), with a clear error naming the candidates when it is
    /// ambiguous or broken. nn.Sequential names ("0.weight", "2.weight") and "fc1.weight" both work.
    ///
    /// When several orders fit the shapes (square hidden layers), the natural order of the
    /// names (fc1 < fc2 < fc10, 0 < 2 < 4) is taken if it is one of them.
    pub fn from_tensors(
        file: &TensorFile,
        order: Option<&[String]>,
        activation: Activation,
    ) -> Result<Mlp> {
        let prefixes: Vec<String> = match order {
            Some(names) => explicit_order(file, names)?,
            None => infer_order(file)?,
        };
        let mut layers = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            layers.push(read_layer(file, &prefix)?);
        }
        for pair in layers.windows(2) {
            if pair[1].in_dim != pair[0].out_dim {
                return Err(Error::invalid(format!(
                    "layers do not connect: {} gives {} outputs but {} takes {} inputs",
                    pair[0].name, pair[0].out_dim, pair[1].name, pair[1].in_dim
                )));
            }
        }
        check_no_per_neuron_tensors(file, &layers)?;
        Ok(Mlp { layers, activation })
    }

    /// Reads a safetensors file and builds the MLP as [`Mlp::from_tensors`] does; every
    /// problem is an [`Error::Format`] naming `path`.
    pub fn load(path: &Path, order: Option<&[String]>, activation: Activation) -> Result<Mlp> {
        let file = read_safetensors(path)?;
        Mlp::from_tensors(&file, order, activation).map_err(|e| e.in_file(path))
    }

    /// A copy of `template` with every layer's NAME.weight / NAME.bias replaced by this model's
    /// (new shapes; each tensor keeps the dtype it had in `template`, f32 for new ones; a bias
    /// that did not exist is added only if it is non-zero); all other tensors unchanged.
    pub fn to_tensors(&self, template: &TensorFile) -> Result<TensorFile> {
        self.check_no_stale_readers(template)?;
        let mut out = template.clone();
        for l in &self.layers {
            l.check()?;
            let dtype_of = |name: &str| {
                template
                    .get(name)
                    .map(|t| match t.dtype {
                        Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => t.dtype,
                        _ => Dtype::F32,
                    })
                    .unwrap_or(Dtype::F32)
            };
            let encode = |name: &str, values: &[f32], shape: Vec<usize>| {
                Tensor::from_f32(values, shape, dtype_of(name))
                    .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))
            };
            let wname = tensor_name(&l.name, "weight");
            let w = encode(&wname, &l.weight, vec![l.out_dim, l.in_dim])?;
            out.insert(wname, w);
            let bname = tensor_name(&l.name, "bias");
            if template.get(&bname).is_some() || l.stores_bias() {
                let b = encode(&bname, &l.bias, vec![l.out_dim])?;
                out.insert(bname, b);
            }
        }
        Ok(out)
    }

    /// Refuses a compression that would leave a second reader of a hidden layer behind: a
    /// 2-D tensor of `file` that is not one of this MLP's layers, sits in the same parent
    /// module as a hidden layer whose width changes (`changes`: name, width before, width
    /// after or `None` when a DPP draw decides it), and has that layer's width as its column
    /// count (`aux.weight [5, 64]` beside an `fc2` cut from 64 neurons: a second head).
    /// Copied unchanged it would no longer fit, and the model would not load. Tensors of
    /// other modules are left alone: a decoder's layer of the encoder's width reads the
    /// decoder.
    pub fn check_second_readers(
        &self,
        file: &TensorFile,
        changes: &[(String, usize, Option<usize>)],
    ) -> Result<()> {
        let ours: std::collections::HashSet<String> = self
            .layers
            .iter()
            .flat_map(|l| [tensor_name(&l.name, "weight"), tensor_name(&l.name, "bias")])
            .collect();
        for (layer, old_width, new_width) in changes {
            if *new_width == Some(*old_width) {
                continue;
            }
            let module = parent_module(layer);
            for name in file.names().filter(|n| !ours.contains(*n)) {
                let shape = &file.get(name).expect("listed").shape;
                let [_, cols] = shape[..] else { continue };
                if cols != *old_width || parent_module(parent_module(name)) != module {
                    continue;
                }
                let now = new_width.map_or("fewer".to_string(), |w| w.to_string());
                return Err(Error::invalid(format!(
                    "{name} {shape:?} reads the {old_width} neurons of {layer} (now {now}) but is \
                     not a layer of the MLP (a second head?): copied unchanged it would no longer \
                     fit; compress {layer} with compress-layer, giving every layer that reads it"
                )));
            }
        }
        Ok(())
    }

    /// Refuses to write the MLP into `template` when a hidden layer's width changed and a
    /// second reader of it is left behind ([`Mlp::check_second_readers`]).
    fn check_no_stale_readers(&self, template: &TensorFile) -> Result<()> {
        let hidden = &self.layers[..self.layers.len().saturating_sub(1)];
        let changed: Vec<(String, usize, Option<usize>)> = hidden
            .iter()
            .filter_map(|l| {
                let old = template
                    .get(&tensor_name(&l.name, "weight"))?
                    .shape
                    .first()
                    .copied()?;
                (old != l.out_dim).then(|| (l.name.clone(), old, Some(l.out_dim)))
            })
            .collect();
        self.check_second_readers(template, &changed)
    }

    /// Random init (PyTorch's default uniform(-1/sqrt(in), 1/sqrt(in))), seeded, names fc1, fc2, ...
    ///
    /// # Panics
    /// If `dims` has fewer than two entries or a zero entry.
    pub fn init(dims: &[usize], activation: Activation, seed: u64) -> Mlp {
        assert!(
            dims.len() >= 2 && dims.iter().all(|&d| d > 0),
            "an MLP needs at least input and output widths, all non-zero: {dims:?}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| {
                let (in_dim, out_dim) = (d[0], d[1]);
                let bound = 1.0 / (in_dim as f32).sqrt();
                let weight = (0..in_dim * out_dim)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let bias = (0..out_dim)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                Linear {
                    name: format!("fc{}", i + 1),
                    in_dim,
                    out_dim,
                    weight,
                    bias,
                    has_bias: true,
                }
            })
            .collect();
        Mlp { layers, activation }
    }

    /// The width of the input.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.in_dim)
    }

    /// The number of outputs (classes).
    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_dim)
    }

    /// Weights plus stored biases.
    pub fn param_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight.len() + if l.stores_bias() { l.out_dim } else { 0 })
            .sum()
    }

    /// The layer widths, input first: `[784, 1000, 1000, 10]`.
    pub fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.input_dim()];
        d.extend(self.layers.iter().map(|l| l.out_dim));
        d
    }

    /// Checks that every layer's arrays match its dimensions and the layers connect.
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::invalid("the MLP has no layers"));
        }
        for l in &self.layers {
            l.check()?;
        }
        for pair in self.layers.windows(2) {
            if pair[1].in_dim != pair[0].out_dim {
                return Err(Error::invalid(format!(
                    "layers do not connect: {} gives {} outputs but {} takes {} inputs",
                    pair[0].name, pair[0].out_dim, pair[1].name, pair[1].in_dim
                )));
            }
        }
        Ok(())
    }

    /// Logits for m rows of x (m x input_dim, row-major): m x output_dim.
    ///
    /// # Panics
    /// If `x.len() != m * input_dim()`.
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.run(x, m, self.layers.len() - 1, false)
    }

    /// The activation-function output of hidden layer `layer` (0-based; < layers.len()-1)
    /// for m rows of x: m x `layers[layer].out_dim`. Only layers 0..=layer are evaluated.
    ///
    /// # Panics
    /// If `layer` is not a hidden layer or `x.len() != m * input_dim()`.
    pub fn hidden(&self, x: &[f32], m: usize, layer: usize) -> Vec<f32> {
        assert!(
            layer + 1 < self.layers.len(),
            "layer {layer} is not a hidden layer of an MLP with {} layers",
            self.layers.len()
        );
        self.run(x, m, layer, true)
    }

    /// Runs layers 0..=last; the activation follows every layer before `last`, and `last`
    /// too when `activate_last`.
    fn run(&self, x: &[f32], m: usize, last: usize, activate_last: bool) -> Vec<f32> {
        assert_eq!(
            x.len(),
            m * self.input_dim(),
            "input has {} values, expected {m} rows of {}",
            x.len(),
            self.input_dim()
        );
        let mut cur: Vec<f32> = Vec::new();
        for (i, l) in self.layers[..=last].iter().enumerate() {
            let input: &[f32] = if i == 0 { x } else { &cur };
            let mut out = vec![0.0f32; m * l.out_dim];
            l.forward_into(input, m, &mut out);
            if i < last || activate_last {
                self.activation.apply_slice(&mut out);
            }
            cur = out;
        }
        cur
    }

    /// Pre-activations and activations of every layer for a batch (used by training):
    /// `zs[i]` is layer i's output before the activation, `acts[i]` after it (the last
    /// layer's logits are not activated: `acts` has one entry fewer).
    pub(crate) fn forward_cached(&self, x: &[f32], m: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut zs = Vec::with_capacity(self.layers.len());
        let mut acts: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let input: &[f32] = if i == 0 { x } else { &acts[i - 1] };
            let mut z = vec![0.0f32; m * l.out_dim];
            l.forward_into(input, m, &mut z);
            if i + 1 < self.layers.len() {
                let mut a = z.clone();
                self.activation.apply_slice(&mut a);
                acts.push(a);
            }
            zs.push(z);
        }
        (zs, acts)
    }
}

fn explicit_order(file: &TensorFile, names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Err(Error::invalid("the list of layers is empty"));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        let prefix = n.strip_suffix(".weight").unwrap_or(n).trim().to_string();
        if out.contains(&prefix) {
            return Err(Error::invalid(format!(
                "layer {prefix} is listed twice in the layer order"
            )));
        }
        if file.get(&tensor_name(&prefix, "weight")).is_none() {
            let available: Vec<String> = weight_prefixes(file);
            return Err(Error::invalid(format!(
                "missing tensor {}: the layers with a weight are {}",
                tensor_name(&prefix, "weight"),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            )));
        }
        out.push(prefix);
    }
    Ok(out)
}

fn weight_prefixes(file: &TensorFile) -> Vec<String> {
    file.tensors
        .iter()
        .filter_map(|(n, _)| {
            if n == "weight" {
                Some(String::new())
            } else {
                n.strip_suffix(".weight").map(str::to_string)
            }
        })
        .collect()
}

fn infer_order(file: &TensorFile) -> Result<Vec<String>> {
    let mut cands: Vec<Candidate> = weight_prefixes(file)
        .into_iter()
        .filter_map(|prefix| {
            let t = file.get(&tensor_name(&prefix, "weight"))?;
            (t.shape.len() == 2).then(|| Candidate {
                prefix,
                in_dim: t.shape[1],
                out_dim: t.shape[0],
            })
        })
        .collect();
    if cands.is_empty() {
        let names: Vec<&str> = file.names().take(8).collect();
        return Err(Error::invalid(format!(
            "no 2-D NAME.weight tensor found (tensors: {}{})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            if file.tensors.len() > 8 { ", ..." } else { "" }
        )));
    }
    cands.sort_by_key(|c| natural_key(&c.prefix));
    let named = cands.windows(2).all(|p| p[0].out_dim == p[1].in_dim);
    if named {
        return Ok(cands.into_iter().map(|c| c.prefix).collect());
    }
    let all: Vec<&Candidate> = cands.iter().collect();
    match shape_chains(&cands) {
        None => Err(Error::invalid(format!(
            "too many ways to chain the layers {}: give the order with --layers",
            list(&all)
        ))),
        Some(found) if found.is_empty() => Err(Error::invalid(format!(
            "the layers' shapes do not connect into one chain (each layer's inputs = the \
             previous layer's outputs): {}; give the order with --layers",
            list(&all)
        ))),
        Some(found) if found.len() > 1 => {
            let show = |p: &Vec<usize>| {
                p.iter()
                    .map(|&i| cands[i].prefix.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            Err(Error::invalid(format!(
                "the layer order is ambiguous: both {} and {} fit the shapes of {}; \
                 give the order with --layers",
                show(&found[0]),
                show(&found[1]),
                list(&all)
            )))
        }
        Some(found) => Ok(found[0].iter().map(|&i| cands[i].prefix.clone()).collect()),
    }
}

fn read_layer(file: &TensorFile, prefix: &str) -> Result<Linear> {
    let wname = tensor_name(prefix, "weight");
    let w = file
        .get(&wname)
        .ok_or_else(|| Error::invalid(format!("missing tensor {wname}")))?;
    if w.shape.len() != 2 || w.shape[0] == 0 || w.shape[1] == 0 {
        return Err(Error::invalid(format!(
            "tensor {wname} has shape {:?}: expected a non-empty 2-D [out, in] matrix",
            w.shape
        )));
    }
    let (out_dim, in_dim) = (w.shape[0], w.shape[1]);
    let weight = w.finite_f32(&wname)?;
    let bname = tensor_name(prefix, "bias");
    let (bias, has_bias) = match file.get(&bname) {
        Some(b) => {
            if b.shape != [out_dim] {
                return Err(Error::invalid(format!(
                    "tensor {bname} has shape {:?}: expected [{out_dim}] to match {wname} {:?}",
                    b.shape, w.shape
                )));
            }
            (b.finite_f32(&bname)?, true)
        }
        None => (vec![0.0; out_dim], false),
    };
    Ok(Linear {
        name: prefix.to_string(),
        in_dim,
        out_dim,
        weight,
        bias,
        has_bias,
    })
}
