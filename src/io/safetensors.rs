//! safetensors files as PyTorch writes them (`safetensors.torch.save_file(state_dict)`).
//!
//! Parsing goes through the `safetensors` crate, which checks the header length against the
//! file and every tensor's offsets against its dtype and shape before anything is read; its
//! errors are wrapped with the file name. Tensors keep their bytes as stored, so that the
//! tensors a compression does not touch are written back bit for bit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{SafeTensors, View};
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::io::atomic::{stage, PendingFile};

/// One tensor, bytes kept as stored so that untouched tensors are copied bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The element type as stored.
    pub dtype: Dtype,
    /// The shape (PyTorch order: a Linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// The elements, little-endian, row-major, exactly as in the file.
    pub bytes: Vec<u8>,
}

impl Tensor {
    /// [`Tensor::to_f32`] for weights, which must be finite as f32: a NaN, an infinity or an
    /// f64 beyond f32's range is an error naming the tensor `name` and the entry (`[row,
    /// column]` of a matrix). Callers that know the file add it.
    pub fn finite_f32(&self, name: &str) -> Result<Vec<f32>> {
        let values = self
            .to_f32()
            .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(values),
            Some(i) => Err(Error::invalid(format!(
                "tensor {name}{} (element {i}) is {} as f32: weights must be finite",
                entry_at(&self.shape, i),
                values[i]
            ))),
        }
    }

    /// F32, F16, BF16 (and F64) converted to f32; other dtypes -> an error naming the dtype
    /// (callers that know the file and tensor name add them, see [`read_safetensors`]).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let b = &self.bytes;
        let out = match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("exact chunk")) as f32)
                .collect(),
            other => {
                return Err(Error::invalid(format!(
                    "dtype {other:?} is not a floating-point type: expected F32, F16, BF16 or F64"
                )))
            }
        };
        Ok(out)
    }

    /// Encodes `values` (len = product of shape) as `dtype` (F32, F16 or BF16, F64). A value
    /// the dtype cannot hold (not finite, or beyond its range: 65504 for F16) is an error
    /// naming the entry (`[row, column]` of a matrix) and the dtype's largest value, never
    /// an infinity written into a model; callers add the tensor's name.
    pub fn from_f32(values: &[f32], shape: Vec<usize>, dtype: Dtype) -> Result<Tensor> {
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::invalid(format!("shape {shape:?} overflows")))?;
        if count != values.len() {
            return Err(Error::invalid(format!(
                "shape {shape:?} holds {count} elements, {} given",
                values.len()
            )));
        }
        let largest = match dtype {
            Dtype::F16 => f16::MAX.to_f32(),
            Dtype::BF16 => bf16::MAX.to_f32(),
            _ => f32::MAX,
        };
        // Rounding to F16 / BF16 carries values just past the largest finite one to infinity.
        let fits = |v: f32| match dtype {
            Dtype::F16 => f16::from_f32(v).is_finite(),
            Dtype::BF16 => bf16::from_f32(v).is_finite(),
            _ => v.is_finite(),
        };
        if let Some(i) = values.iter().position(|&v| !fits(v)) {
            return Err(Error::invalid(format!(
                "{} at {} (element {i}) does not fit {dtype:?} (largest {largest:e})",
                values[i],
                entry_at(&shape, i),
            )));
        }
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::F64 => values
                .iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
            other => {
                return Err(Error::invalid(format!(
                    "cannot encode floats as {other:?}: expected F32, F16, BF16 or F64"
                )))
            }
        };
        Ok(Tensor {
            dtype,
            shape,
            bytes,
        })
    }

    /// The number of elements (product of the shape; 1 for a scalar).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// All tensors of a file, in the file's order, plus its metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// (name, tensor) in the order of their data in the file.
    pub tensors: Vec<(String, Tensor)>,
    /// The header's `__metadata__` string map, if any.
    pub metadata: Option<HashMap<String, String>>,
}

impl TensorFile {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The tensor called `name`, to change in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// Inserts or replaces (keeping the position of a replaced tensor).
    pub fn insert(&mut self, name: String, tensor: Tensor) {
        match self.get_mut(&name) {
            Some(slot) => *slot = tensor,
            None => self.tensors.push((name, tensor)),
        }
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let pos = self.tensors.iter().position(|(n, _)| n == name)?;
        Some(self.tensors.remove(pos).1)
    }

    /// The tensor names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(&bytes).map_err(|m| Error::format(path, m))
}

/// Parses the bytes of a safetensors file. Errors are messages, without the file name.
pub fn parse_safetensors(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
    let describe = |e: safetensors::SafeTensorError| {
        super::sniff::explain(
            bytes,
            format!("not a valid safetensors file: {e}"),
            "save the state dict with safetensors.torch.save_file(model.state_dict(), PATH); \
             a sharded checkpoint's shards are read one file at a time, so merge the tensors \
             the command needs into one file first",
        )
    };
    // read_metadata checks the header length against the buffer, the offsets against
    // dtype x shape (with overflow checks) and that the data fills the file exactly.
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(describe)?;
    let st = SafeTensors::deserialize(bytes).map_err(describe)?;
    let mut tensors = Vec::with_capacity(meta.offset_keys().len());
    for name in meta.offset_keys() {
        let view = st.tensor(&name).map_err(describe)?;
        tensors.push((
            name,
            Tensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            },
        ));
    }
    Ok(TensorFile {
        tensors,
        metadata: meta.metadata().clone(),
    })
}

/// The bytes of a safetensors file holding `file` (the crate orders tensors by dtype, then
/// name, as PyTorch's writer does).
pub fn safetensors_bytes(file: &TensorFile) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    for (name, t) in &file.tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(format!("tensor {name:?} appears twice")));
        }
        let expected = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()))
            .map(|bits| bits.div_ceil(8));
        if expected != Some(t.bytes.len()) {
            return Err(Error::invalid(format!(
                "tensor {name:?}: {} bytes do not match shape {:?} of {:?}",
                t.bytes.len(),
                t.shape,
                t.dtype
            )));
        }
    }
    safetensors::serialize(
        file.tensors.iter().map(|(n, t)| (n.as_str(), t)),
        file.metadata.clone(),
    )
    .map_err(|e| Error::invalid(format!("cannot serialize tensors: {e}")))
}

/// Writes `file` to `path` atomically.
pub fn write_safetensors(path: &Path, file: &TensorFile) -> Result<()> {
    stage_safetensors(path, file)?.commit()
}

/// Writes `file` to the temporary file of `path`, to be put in place by
/// [`PendingFile::commit`] (with other outputs, say).
pub fn stage_safetensors(path: &Path, file: &TensorFile) -> Result<PendingFile> {
    let bytes = safetensors_bytes(file).map_err(|e| e.in_file(path))?;
    stage(path, |w| {
        w.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

/// Where element `i` of a tensor of `shape` sits, for messages: `[row, column]` of a
/// matrix, `[i]` otherwise.
fn entry_at(shape: &[usize], i: usize) -> String {
    match shape[..] {
        [_, cols] if cols > 0 => format!("[{}, {}]", i / cols, i % cols),
        _ => format!("[{i}]"),
    }
}
