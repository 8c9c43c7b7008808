//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): read f16/f32/f64 and integer
//! arrays, in C or Fortran order, and write f32/f64 arrays.
//!
//! The reader trusts nothing in the header: the declared shape is checked against the file's
//! real size before any allocation, and every malformed field yields an [`Error::Format`]
//! naming the file.

use std::io::Write;
use std::path::Path;

use half::f16;

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element type of an array, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f2`
    F16,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
    /// `|u1`
    U8,
    /// `<i4`
    I32,
    /// `<i8`
    I64,
}

impl NpyDtype {
    fn parse(descr: &str) -> Option<Self> {
        Some(match descr {
            "<f2" => Self::F16,
            "<f4" => Self::F32,
            "<f8" => Self::F64,
            "|u1" | "<u1" | "u1" => Self::U8,
            "<i4" => Self::I32,
            "<i8" => Self::I64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

/// The elements of an array in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// Half precision.
    F16(Vec<f16>),
    /// Single precision.
    F32(Vec<f32>),
    /// Double precision.
    F64(Vec<f64>),
    /// Bytes (labels).
    U8(Vec<u8>),
    /// 32-bit integers (labels).
    I32(Vec<i32>),
    /// 64-bit integers (labels).
    I64(Vec<i64>),
}

/// An array read from an npy file, its data in C order whatever the file's order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape; a scalar has an empty shape.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: NpyData,
}

impl NpyArray {
    /// The element type.
    pub fn dtype(&self) -> NpyDtype {
        match self.data {
            NpyData::F16(_) => NpyDtype::F16,
            NpyData::F32(_) => NpyDtype::F32,
            NpyData::F64(_) => NpyDtype::F64,
            NpyData::U8(_) => NpyDtype::U8,
            NpyData::I32(_) => NpyDtype::I32,
            NpyData::I64(_) => NpyDtype::I64,
        }
    }

    /// The elements converted to f64 (exact for every supported type but large i64).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The elements converted to f32 (rounded for f64).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    fn is_float(&self) -> bool {
        matches!(self.dtype(), NpyDtype::F16 | NpyDtype::F32 | NpyDtype::F64)
    }

    /// Position of the first NaN or infinite element, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.data {
            NpyData::F16(v) => v.iter().position(|x| !x.is_finite()),
            NpyData::F32(v) => v.iter().position(|x| !x.is_finite()),
            NpyData::F64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }
}

/// Reads any supported npy file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes).map_err(|m| Error::format(path, m))
}

/// Reads a 2-D floating-point array (m x n, f16/f32/f64) with m, n > 0 and only finite
/// values: a layer's activations or a kernel matrix.
pub fn read_matrix(path: &Path) -> Result<NpyArray> {
    let a = read_npy(path)?;
    check_float_matrix(path, &a)?;
    Ok(a)
}

/// Checks that `a` (read from `path`) is a non-empty, finite, 2-D float array.
pub fn check_float_matrix(path: &Path, a: &NpyArray) -> Result<()> {
    if !a.is_float() {
        return Err(Error::format(
            path,
            format!(
                "dtype {:?} is not supported here: expected float16, float32 or float64",
                a.dtype()
            ),
        ));
    }
    if a.shape.len() != 2 {
        return Err(Error::format(
            path,
            format!(
                "expected a 2-D array (samples x neurons), got shape {:?}",
                a.shape
            ),
        ));
    }
    if a.shape[0] == 0 || a.shape[1] == 0 {
        return Err(Error::format(
            path,
            format!(
                "empty array of shape {:?}: need at least one row and one column",
                a.shape
            ),
        ));
    }
    if let Some(i) = a.first_non_finite() {
        let cols = a.shape[1];
        return Err(Error::format(
            path,
            format!(
                "non-finite value (NaN or Inf) at row {}, column {}",
                i / cols,
                i % cols
            ),
        ));
    }
    Ok(())
}

/// Parses the bytes of an npy file. Errors are messages, without the file name.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not an npy file (missing the \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported npy format version {v}")),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated npy header (header length past the end of the file)")?;
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| "npy header is not valid text")?;
    let descr = dict_value(header, "descr").ok_or("npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = NpyDtype::parse(descr).ok_or_else(|| {
        format!(
            "unsupported dtype {descr:?}: expected <f2, <f4, <f8, |u1, <i4 or <i8 (little-endian)"
        )
    })?;
    let fortran =
        match dict_value(header, "fortran_order").ok_or("npy header has no 'fortran_order'")? {
            "True" => true,
            "False" => false,
            other => return Err(format!("invalid fortran_order {other:?}")),
        };
    let shape_text = dict_value(header, "shape").ok_or("npy header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let available = bytes.len() - data_start;
    if available < nbytes {
        return Err(format!(
            "truncated data: shape {shape:?} of {descr} needs {nbytes} bytes, the file has {available}"
        ));
    }
    let raw = &bytes[data_start..data_start + nbytes];
    let mut data = decode(dtype, raw);
    if fortran && shape.len() >= 2 {
        data = fortran_to_c(data, &shape);
    }
    Ok(NpyArray { shape, data })
}

/// The text of `key`'s value in the header's Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("invalid shape {text:?}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("invalid dimension {s:?} in shape {text}"))
        })
        .collect()
}

fn decode(dtype: NpyDtype, raw: &[u8]) -> NpyData {
    fn chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("exact chunk")))
            .collect()
    }
    match dtype {
        NpyDtype::F16 => NpyData::F16(chunks(raw, f16::from_le_bytes)),
        NpyDtype::F32 => NpyData::F32(chunks(raw, f32::from_le_bytes)),
        NpyDtype::F64 => NpyData::F64(chunks(raw, f64::from_le_bytes)),
        NpyDtype::U8 => NpyData::U8(raw.to_vec()),
        NpyDtype::I32 => NpyData::I32(chunks(raw, i32::from_le_bytes)),
        NpyDtype::I64 => NpyData::I64(chunks(raw, i64::from_le_bytes)),
    }
}

/// Reorders column-major (Fortran) elements into row-major order.
fn fortran_to_c(data: NpyData, shape: &[usize]) -> NpyData {
    fn permute<T: Copy>(v: Vec<T>, shape: &[usize]) -> Vec<T> {
        let n = v.len();
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        // Fortran strides: the first axis varies fastest.
        let mut strides = vec![1usize; shape.len()];
        for d in 1..shape.len() {
            strides[d] = strides[d - 1] * shape[d - 1];
        }
        for _ in 0..n {
            let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out.push(v[off]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
    match data {
        NpyData::F16(v) => NpyData::F16(permute(v, shape)),
        NpyData::F32(v) => NpyData::F32(permute(v, shape)),
        NpyData::F64(v) => NpyData::F64(permute(v, shape)),
        NpyData::U8(v) => NpyData::U8(permute(v, shape)),
        NpyData::I32(v) => NpyData::I32(permute(v, shape)),
        NpyData::I64(v) => NpyData::I64(permute(v, shape)),
    }
}

/// Element types the writer accepts.
pub trait NpyElement: bytemuck::Pod {
    /// The npy `descr` string.
    const DESCR: &'static str;
}
impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
}
impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
}
impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
}

/// The bytes of an npy (version 1.0) file holding `data` with `shape`, C order.
pub fn npy_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "shape does not match data length"
    );
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        T::DESCR
    );
    // Pad so that the data starts on a 64-byte boundary, ending the header with '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + std::mem::size_of_val(data));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    // npy data is little-endian; so is every platform divnet supports.
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// Writes `data` with `shape` to `path` atomically.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::invalid(format!(
            "{}: shape {shape:?} does not match {} elements",
            path.display(),
            data.len()
        )));
    }
    let bytes = npy_bytes(shape, data);
    write_atomic(path, |w| {
        w.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f64_and_f32() {
        let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.5 - 2.0).collect();
        let a = parse_npy(&npy_bytes(&[3, 4], &data)).unwrap();
        assert_eq!(a.shape, vec![3, 4]);
        assert_eq!(a.data, NpyData::F64(data.clone()));
        let f: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        let b = parse_npy(&npy_bytes(&[12], &f)).unwrap();
        assert_eq!(b.shape, vec![12]);
        assert_eq!(b.to_f64(), data);
    }

    #[test]
    fn fortran_order_is_transposed_to_c() {
        let mut bytes = npy_bytes(&[2, 3], &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let pos = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes.splice(pos..pos + 5, b"True ".iter().copied());
        let a = parse_npy(&bytes).unwrap();
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn lying_shape_is_rejected_before_allocation() {
        let mut bytes = npy_bytes(&[2, 2], &[1.0f32; 4]);
        let pos = bytes.windows(6).position(|w| w == b"(2, 2)").unwrap();
        bytes.splice(pos..pos + 6, b"(9999999999, 9)".iter().copied());
        // The header grew: fix the header length so that only the shape lies.
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) + 9;
        bytes[8..10].copy_from_slice(&hl.to_le_bytes());
        let err = parse_npy(&bytes).unwrap_err();
        assert!(err.contains("truncated data"), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(parse_npy(b"hello world").is_err());
        let bytes = npy_bytes(&[4], &[1.0f64; 4]);
        for cut in [5, 9, 20, bytes.len() - 1] {
            assert!(parse_npy(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
