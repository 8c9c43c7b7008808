//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): read f16/f32/f64 and integer
//! arrays, in C or Fortran order, and write f32/f64 arrays.
//!
//! The reader trusts nothing in the header: the declared shape is checked against the file's
//! real size before any allocation, and every malformed field yields an [`Error::Format`]
//! naming the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use faer::MatRef;
use half::f16;

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::types::{too_large, ActivationRows, RowSource};

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
/// values: a layer's activations or a kernel matrix. [`NpyRowReader`] reads the same files
/// in row chunks, never holding the whole array.
pub fn read_matrix(path: &Path) -> Result<NpyArray> {
    let a = read_npy(path)?;
    check_float_matrix(path, &a)?;
    Ok(a)
}

/// Checks that `a` (read from `path`) is a non-empty, finite, 2-D float array.
pub fn check_float_matrix(path: &Path, a: &NpyArray) -> Result<()> {
    check_matrix_header(path, a.dtype(), &a.shape)?;
    if let Some(i) = a.first_non_finite() {
        let cols = a.shape[1];
        return Err(non_finite_value(path, i / cols, i % cols));
    }
    Ok(())
}

/// The part of [`check_float_matrix`] that the header decides: a float type, two
/// dimensions, neither empty.
fn check_matrix_header(path: &Path, dtype: NpyDtype, shape: &[usize]) -> Result<()> {
    if !matches!(dtype, NpyDtype::F16 | NpyDtype::F32 | NpyDtype::F64) {
        return Err(Error::format(
            path,
            format!("dtype {dtype:?} is not supported here: expected float16, float32 or float64"),
        ));
    }
    if shape.len() != 2 {
        return Err(Error::format(
            path,
            format!(
                "expected a 2-D array (one row per sample), got shape {shape:?}{}",
                if shape.len() > 2 {
                    ": reshape it before saving, a.reshape(-1, a.shape[-1]) for one row per \
                     token of (batch, tokens, features) activations, a.reshape(len(a), -1) for \
                     one row per image"
                } else {
                    ""
                }
            ),
        ));
    }
    if shape[0] == 0 || shape[1] == 0 {
        return Err(Error::format(
            path,
            format!("empty array of shape {shape:?}: need at least one row and one column"),
        ));
    }
    Ok(())
}

/// The error for a NaN or infinite value at (`row`, `column`) of the matrix in `path`.
fn non_finite_value(path: &Path, row: usize, column: usize) -> Error {
    Error::format(
        path,
        format!("non-finite value (NaN or Inf) at row {row}, column {column}"),
    )
}

/// What an npy header declares.
#[derive(Clone, Debug)]
struct Header {
    dtype: NpyDtype,
    /// The `descr` text, for messages.
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
    /// Offset of the first data byte.
    data_start: usize,
    /// Bytes of data the shape and dtype call for.
    data_bytes: usize,
}

/// Bytes of an npy file enough to read the length of its header.
const PREFIX_BYTES: usize = 12;

/// Where the header text lies, from the first bytes of a file (at least [`PREFIX_BYTES`]
/// of them when the file has that many): `(start, length)`.
fn header_extent(bytes: &[u8]) -> std::result::Result<(usize, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(super::sniff::explain(
            bytes,
            "not an npy file (missing the \\x93NUMPY magic)".into(),
            "save each array on its own with numpy.save (.npy)",
        ));
    }
    match bytes[6] {
        1 => Ok((u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated npy header".into());
            }
            Ok((
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ))
        }
        v => Err(format!("unsupported npy format version {v}")),
    }
    .map(|(len, start)| (start, len))
}

/// Parses the header of an npy file from its first bytes (the whole header, at least).
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let (header_start, header_len) = header_extent(bytes)?;
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
            "unsupported dtype {descr:?}: expected little-endian floats (<f2, <f4, <f8), or for \
             labels integers (|u1, <i4, <i8)"
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
    let data_bytes = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|count| count.checked_mul(dtype.size()))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    Ok(Header {
        dtype,
        descr: descr.to_string(),
        fortran,
        shape,
        data_start,
        data_bytes,
    })
}

impl Header {
    /// An error when the `available` bytes after the header are fewer than the data needs.
    fn check_data_len(&self, available: u64) -> std::result::Result<(), String> {
        if available < self.data_bytes as u64 {
            return Err(format!(
                "truncated data: shape {:?} of {} needs {} bytes, the file has {available}",
                self.shape, self.descr, self.data_bytes
            ));
        }
        Ok(())
    }
}

/// Parses the bytes of an npy file. Errors are messages, without the file name.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    let h = parse_header(bytes)?;
    h.check_data_len((bytes.len() - h.data_start) as u64)?;
    let raw = &bytes[h.data_start..h.data_start + h.data_bytes];
    let mut data = decode(h.dtype, raw);
    if h.fortran && h.shape.len() >= 2 {
        data = fortran_to_c(data, &h.shape);
    }
    Ok(NpyArray {
        shape: h.shape,
        data,
    })
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

/// Values per chunk that [`NpyRowReader`] hands out by default (64 MiB as f32).
const READER_CHUNK_VALUES: usize = 1 << 24;

/// A layer's activations in an npy file (m x n, f16/f32/f64, C or Fortran order) as a
/// [`RowSource`]: the header is read and checked when the file is opened, the data in
/// chunks of whole rows on every [`RowSource::pass`], so that the m x n matrix is never in
/// memory at once (one chunk, 64 MiB as f32 by default, is).
///
/// f16 and f32 rows are handed out as stored; f64 is rounded to f32 chunk by chunk. In C
/// order a chunk is one read; in Fortran order (column-major on disk) it is one read per
/// column segment, transposed into rows. Every chunk is checked for NaN and infinity, and
/// the error names the file, the row and the column, as [`read_matrix`] does.
pub struct NpyRowReader {
    path: PathBuf,
    file: File,
    header: Header,
    rows: usize,
    cols: usize,
    chunk_rows: usize,
}

impl NpyRowReader {
    /// Opens `path` and checks its header as [`read_matrix`] checks the whole file: an npy
    /// file, a 2-D float array with at least one row and column, and as many data bytes as
    /// the header declares (a longer file is accepted, as numpy does). No data is read.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut bytes = vec![0u8; (len as usize).min(PREFIX_BYTES)];
        file.read_exact(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        let (start, header_len) = header_extent(&bytes).map_err(|m| Error::format(path, m))?;
        let end = (start as u64 + header_len as u64).min(len) as usize;
        if end > bytes.len() {
            let have = bytes.len();
            bytes.resize(end, 0);
            file.read_exact(&mut bytes[have..])
                .map_err(|e| Error::io(path, e))?;
        }
        let header = parse_header(&bytes).map_err(|m| Error::format(path, m))?;
        header
            .check_data_len(len - header.data_start as u64)
            .map_err(|m| Error::format(path, m))?;
        check_matrix_header(path, header.dtype, &header.shape)?;
        let (rows, cols) = (header.shape[0], header.shape[1]);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            header,
            rows,
            cols,
            chunk_rows: (READER_CHUNK_VALUES / cols).max(1),
        })
    }

    /// The same reader, handing out `rows` (at least 1) rows per chunk.
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// The element type as stored.
    pub fn dtype(&self) -> NpyDtype {
        self.header.dtype
    }

    /// Whether the file is in Fortran (column-major) order.
    pub fn is_fortran_order(&self) -> bool {
        self.header.fortran
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads rows `first..first + count` into `raw` as stored: row-major in C order,
    /// column-major (`count` values per column) in Fortran order.
    fn read_rows(&mut self, first: usize, count: usize, raw: &mut Vec<u8>) -> Result<()> {
        let size = self.header.dtype.size();
        let (m, n) = (self.rows, self.cols);
        raw.resize(count * n * size, 0);
        let start = self.header.data_start as u64;
        let segments: Vec<(u64, std::ops::Range<usize>)> = if self.header.fortran {
            (0..n)
                .map(|j| {
                    let offset = start + ((j * m + first) * size) as u64;
                    (offset, j * count * size..(j + 1) * count * size)
                })
                .collect()
        } else {
            vec![(start + (first * n * size) as u64, 0..count * n * size)]
        };
        for (offset, range) in segments {
            self.file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| self.file.read_exact(&mut raw[range]))
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Error::format(
                        &self.path,
                        format!(
                            "the file ends before the {} data bytes its header declares \
                             (was it changed after it was opened?)",
                            self.header.data_bytes
                        ),
                    ),
                    _ => Error::io(&self.path, e),
                })?;
        }
        Ok(())
    }
}

/// Rows of one chunk decoded from the bytes of an npy file, row-major.
enum ChunkValues {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl ChunkValues {
    /// `raw` (`count` rows of `n` values as stored, column-major when `fortran`) decoded:
    /// f16 and f32 as they are, f64 rounded to f32.
    fn decode_into(&mut self, dtype: NpyDtype, raw: &[u8], count: usize, n: usize, fortran: bool) {
        match (self, dtype) {
            (ChunkValues::F16(out), NpyDtype::F16) => {
                rows_from_bytes(raw, count, n, fortran, out, f16::from_le_bytes)
            }
            (ChunkValues::F32(out), NpyDtype::F32) => {
                rows_from_bytes(raw, count, n, fortran, out, f32::from_le_bytes)
            }
            (ChunkValues::F32(out), NpyDtype::F64) => {
                rows_from_bytes(raw, count, n, fortran, out, |b| {
                    f64::from_le_bytes(b) as f32
                })
            }
            _ => unreachable!("the chunk type follows the file's dtype"),
        }
    }

    fn rows(&self) -> ActivationRows<'_> {
        match self {
            ChunkValues::F16(v) => ActivationRows::F16(v),
            ChunkValues::F32(v) => ActivationRows::F32(v),
        }
    }
}

/// Decodes `count x n` values of `N` bytes each from `raw` into `out`, row-major;
/// `raw` is column-major when `fortran` (transposed in square tiles, so that both sides
/// stay in cache).
fn rows_from_bytes<const N: usize, T: Copy + Default>(
    raw: &[u8],
    count: usize,
    n: usize,
    fortran: bool,
    out: &mut Vec<T>,
    decode: impl Fn([u8; N]) -> T,
) {
    let value = |k: usize| decode(raw[k * N..(k + 1) * N].try_into().expect("N bytes"));
    out.clear();
    if !fortran {
        out.extend((0..count * n).map(value));
        return;
    }
    const TILE: usize = 32;
    out.resize(count * n, T::default());
    for j0 in (0..n).step_by(TILE) {
        for t0 in (0..count).step_by(TILE) {
            for j in j0..(j0 + TILE).min(n) {
                for t in t0..(t0 + TILE).min(count) {
                    out[t * n + j] = value(j * count + t);
                }
            }
        }
    }
}

impl RowSource for NpyRowReader {
    fn width(&self) -> usize {
        self.cols
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn pass(&mut self, visit: &mut dyn FnMut(ActivationRows<'_>) -> Result<()>) -> Result<()> {
        let (m, n) = (self.rows, self.cols);
        let dtype = self.header.dtype;
        let fortran = self.header.fortran;
        // The buffers live for one pass only: between passes the pipeline holds its n x n
        // matrices, and a chunk's 100+ MB need not sit beside them.
        let mut raw = Vec::new();
        let mut values = match dtype {
            NpyDtype::F16 => ChunkValues::F16(Vec::new()),
            _ => ChunkValues::F32(Vec::new()),
        };
        let mut first = 0;
        while first < m {
            let count = self.chunk_rows.min(m - first);
            self.read_rows(first, count, &mut raw)?;
            values.decode_into(dtype, &raw, count, n, fortran);
            if let Some((k, value)) = values.rows().first_unusable() {
                let (row, column) = (first + k / n, k % n);
                // An f64 beyond f32's range arrives as an infinity: the file's own value
                // says which it was.
                let stored = match dtype {
                    NpyDtype::F64 if !value.is_finite() => {
                        // Raw rows are column-major for a Fortran-order file.
                        let at = if fortran { column * count + k / n } else { k };
                        f64::from_le_bytes(raw[8 * at..8 * at + 8].try_into().expect("8 bytes"))
                    }
                    _ => value as f64,
                };
                let too_large_as = |shown: String| {
                    Error::format(
                        &self.path,
                        format!("value at row {row}, column {column} is {shown}"),
                    )
                };
                return Err(if value.is_finite() {
                    too_large_as(too_large(value))
                } else if stored.is_finite() {
                    too_large_as(too_large(stored))
                } else {
                    non_finite_value(&self.path, row, column)
                });
            }
            visit(values.rows())?;
            first += count;
        }
        Ok(())
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

/// The header of an npy (version 1.0) file of `T` with `shape`: magic, version, length
/// and the dict, padded so that the data starts on a 64-byte boundary.
fn npy_header<T: NpyElement>(shape: &[usize], fortran: bool) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': {order}, 'shape': {shape_text}, }}",
        T::DESCR
    );
    // Pad so that the data starts on a 64-byte boundary, ending the header with '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// The bytes of an npy (version 1.0) file holding `data` with `shape`, C order.
pub fn npy_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "shape does not match data length"
    );
    let mut out = npy_header::<T>(shape, false);
    // npy data is little-endian; so is every platform divnet supports.
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// Writes `data` with `shape` to `path` atomically, C order.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::invalid(format!(
            "{}: shape {shape:?} does not match {} elements",
            path.display(),
            data.len()
        )));
    }
    write_atomic(path, |w| {
        w.write_all(&npy_header::<T>(shape, false))
            .and_then(|_| w.write_all(bytemuck::cast_slice(data)))
            .map_err(|e| Error::io(path, e))
    })
}

/// Writes the matrix `a` to `path` atomically, in Fortran order (numpy reads it as any
/// array): faer's columns go out as they lie in memory, without a row-major copy, which for
/// an n x n kernel would be a second n x n matrix.
pub fn write_npy_matrix(path: &Path, a: MatRef<'_, f64>) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(&npy_header::<f64>(&[a.nrows(), a.ncols()], true))
            .map_err(|e| Error::io(path, e))?;
        for col in a.col_iter() {
            match col.try_as_col_major() {
                Some(c) => w.write_all(bytemuck::cast_slice(c.as_slice())),
                None => {
                    let values: Vec<f64> = col.iter().copied().collect();
                    w.write_all(bytemuck::cast_slice(&values))
                }
            }
            .map_err(|e| Error::io(path, e))?;
        }
        Ok(())
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
