//! Inputs and labels for evaluation, training and calibration, from npy or IDX files.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::idx::parse_idx;
use crate::io::npy::{check_float_matrix, parse_npy, NpyData};

/// A dense row-major matrix of inputs: one sample per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// `rows x cols` values, row-major.
    pub data: Vec<f32>,
    /// The number of samples.
    pub rows: usize,
    /// The number of features per sample.
    pub cols: usize,
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Inputs: npy (m x d, f16/f32/f64) or IDX images (m x h x w -> m x (h*w), pixels / 255).
pub fn read_inputs(path: &Path) -> Result<Inputs> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    inputs_from_bytes(path, bytes)
}

/// [`read_inputs`] on the bytes of such a file (data built into a program, say): `path` is
/// not opened, only named in errors. The bytes are taken by value so that they are freed
/// before the f32 copy is made.
pub fn inputs_from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Inputs> {
    if bytes.starts_with(NPY_MAGIC) {
        let a = parse_npy(&bytes).map_err(|m| Error::format(path, m))?;
        drop(bytes);
        check_float_matrix(path, &a)?;
        let (rows, cols) = (a.shape[0], a.shape[1]);
        let data = a.to_f32();
        // Finite in the file, an infinity in f32: an f64 beyond f32's range.
        if let (Some(i), NpyData::F64(values)) = (data.iter().position(|v| !v.is_finite()), &a.data)
        {
            return Err(Error::format(
                path,
                format!(
                    "value at row {}, column {} is {:e}, beyond f32's range (3.4e38), in which \
                     inputs are read",
                    i / cols,
                    i % cols,
                    values[i]
                ),
            ));
        }
        Ok(Inputs { data, rows, cols })
    } else {
        let a = parse_idx(&bytes).map_err(|m| Error::format(path, m))?;
        drop(bytes);
        if a.shape.len() < 2 {
            return Err(Error::format(
                path,
                format!(
                    "IDX shape {:?} is not a set of samples: expected images (count x rows x cols) \
                     or count x features",
                    a.shape
                ),
            ));
        }
        let rows = a.shape[0];
        let cols = a.shape[1..].iter().product();
        Ok(Inputs {
            data: a.data.iter().map(|&p| p as f32 / 255.0).collect(),
            rows,
            cols,
        })
    }
}

/// Labels: npy 1-D integers (u8/i32/i64) or IDX labels; values must be < 2^31 and >= 0.
pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    labels_from_bytes(path, &bytes)
}

/// [`read_labels`] on the bytes of such a file: `path` is not opened, only named in errors.
pub fn labels_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.starts_with(NPY_MAGIC) {
        let a = parse_npy(bytes).map_err(|m| Error::format(path, m))?;
        if a.shape.len() != 1 {
            return Err(Error::format(
                path,
                format!("labels must be a 1-D array, got shape {:?}", a.shape),
            ));
        }
        if a.shape[0] == 0 {
            return Err(Error::format(path, "the label array is empty"));
        }
        let values: Vec<i64> = match a.data {
            NpyData::U8(v) => v.into_iter().map(i64::from).collect(),
            NpyData::I32(v) => v.into_iter().map(i64::from).collect(),
            NpyData::I64(v) => v,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "labels must be integers (uint8, int32 or int64), got {:?}",
                        a.dtype()
                    ),
                ))
            }
        };
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if (0..1i64 << 31).contains(&v) {
                    Ok(v as u32)
                } else {
                    Err(Error::format(
                        path,
                        format!("the label at row {i} is {v}: expected a class index in 0..2^31"),
                    ))
                }
            })
            .collect()
    } else {
        let a = parse_idx(bytes).map_err(|m| Error::format(path, m))?;
        if a.shape.len() != 1 {
            return Err(Error::format(
                path,
                format!(
                    "labels must be a 1-D IDX array, got shape {:?} (is this an image file?)",
                    a.shape
                ),
            ));
        }
        Ok(a.data.into_iter().map(u32::from).collect())
    }
}
