//! IDX files (the MNIST / Fashion-MNIST format), raw or gzipped, told apart by their magic.
//!
//! Only unsigned-byte data (type 0x08) is read: images and labels. The declared dimensions
//! are checked against the real data before anything large is allocated; a gzipped file is
//! decompressed with a cap derived from the declared size (and from deflate's maximal
//! compression ratio), so that neither a lying header nor a gzip bomb can exhaust memory.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// Deflate cannot expand data by more than about 1032:1; anything declaring more than this
/// times the compressed size is lying.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (images: `[count, rows, cols]`; labels: `[count]`).
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzipped or not.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&bytes).map_err(|m| Error::format(path, m))
}

/// Whether `bytes` start like a gzip stream.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Parses the bytes of an IDX file (raw or gzipped). Errors are messages, without the file name.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if is_gzip(bytes) {
        parse_gz(bytes)
    } else {
        let (shape, header_len, count) = parse_header(bytes)?;
        let available = bytes.len() - header_len;
        if available < count {
            return Err(format!(
                "truncated data: shape {shape:?} needs {count} bytes, the file has {available}"
            ));
        }
        if available > count {
            return Err(format!(
                "{} bytes of trailing data after the {count} bytes of shape {shape:?}",
                available - count
            ));
        }
        Ok(IdxArray {
            shape,
            data: bytes[header_len..].to_vec(),
        })
    }
}

fn parse_gz(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    let gz_err = |e: std::io::Error| format!("corrupt gzip data: {e}");
    let mut dec = MultiGzDecoder::new(bytes);
    // Magic (4 bytes), then up to 255 dimensions of 4 bytes: read the fixed part first.
    // A corrupt stream is not a short one: only an early end of data means truncation.
    let header_err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("truncated IDX header in the gzip data: {e}")
        } else {
            gz_err(e)
        }
    };
    let mut head = [0u8; 4];
    dec.read_exact(&mut head).map_err(header_err)?;
    let ndims = check_magic(&head)?;
    let mut dims_bytes = vec![0u8; 4 * ndims];
    dec.read_exact(&mut dims_bytes).map_err(header_err)?;
    let mut header = head.to_vec();
    header.extend_from_slice(&dims_bytes);
    let (shape, _, count) = parse_header(&header)?;
    let limit = (bytes.len() as u64).saturating_mul(MAX_DEFLATE_RATIO);
    if count as u64 > limit {
        return Err(format!(
            "header declares shape {shape:?} ({count} bytes), more than a gzip file of {} bytes can hold",
            bytes.len()
        ));
    }
    // Read at most one byte more than declared, growing the buffer only as data arrives.
    let mut data = Vec::new();
    dec.by_ref()
        .take(count as u64 + 1)
        .read_to_end(&mut data)
        .map_err(gz_err)?;
    if data.len() < count {
        return Err(format!(
            "truncated data: shape {shape:?} needs {count} bytes, the gzip data holds {}",
            data.len()
        ));
    }
    if data.len() > count {
        return Err(format!(
            "trailing data after the {count} bytes of shape {shape:?}"
        ));
    }
    Ok(IdxArray { shape, data })
}

/// Checks the 4-byte magic; returns the number of dimensions.
fn check_magic(head: &[u8]) -> std::result::Result<usize, String> {
    if head.len() < 4 || head[0] != 0 || head[1] != 0 {
        return Err(super::sniff::explain(
            head,
            "not an npy or IDX file (an IDX magic starts with two zero bytes)".into(),
            "save the array with numpy.save (.npy)",
        ));
    }
    let type_name = match head[2] {
        0x08 => None,
        0x09 => Some("signed byte"),
        0x0B => Some("int16"),
        0x0C => Some("int32"),
        0x0D => Some("float32"),
        0x0E => Some("float64"),
        _ => {
            return Err(format!(
                "not an IDX file (unknown data type 0x{:02X})",
                head[2]
            ))
        }
    };
    if let Some(t) = type_name {
        return Err(format!(
            "IDX data type {t} (0x{:02X}) is not supported: expected unsigned byte (0x08)",
            head[2]
        ));
    }
    let ndims = head[3] as usize;
    if ndims == 0 {
        return Err("IDX header declares 0 dimensions".into());
    }
    Ok(ndims)
}

/// Parses magic and dimensions; returns (shape, header length, element count).
fn parse_header(bytes: &[u8]) -> std::result::Result<(Vec<usize>, usize, usize), String> {
    if bytes.len() < 4 {
        return Err("truncated IDX header (shorter than the 4-byte magic)".into());
    }
    let ndims = check_magic(&bytes[..4])?;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format!(
            "truncated IDX header: {ndims} dimensions need {header_len} bytes, the file has {}",
            bytes.len()
        ));
    }
    let shape: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if let Some(axis) = shape.iter().position(|&d| d == 0) {
        return Err(format!(
            "dimension {axis} of shape {shape:?} is zero: the array is empty"
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    Ok((shape, header_len, count))
}

/// The bytes of a raw (uncompressed) IDX file of unsigned bytes.
pub fn idx_bytes(shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    if shape.is_empty() || shape.len() > 255 {
        return Err(Error::invalid(format!(
            "an IDX array needs 1 to 255 dimensions, got {}",
            shape.len()
        )));
    }
    if shape.iter().any(|&d| d == 0 || d > u32::MAX as usize)
        || shape.iter().product::<usize>() != data.len()
    {
        return Err(Error::invalid(format!(
            "shape {shape:?} does not match {} bytes",
            data.len()
        )));
    }
    let mut out = vec![0, 0, 0x08, shape.len() as u8];
    for &d in shape {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes an IDX file atomically, gzipped when `gzip` is set.
pub fn write_idx(path: &Path, shape: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    use std::io::Write;
    let raw = idx_bytes(shape, data)?;
    crate::io::atomic::write_atomic(path, |w| {
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::best());
            enc.write_all(&raw).map_err(|e| Error::io(path, e))?;
            enc.finish().map_err(|e| Error::io(path, e))?;
            Ok(())
        } else {
            w.write_all(&raw).map_err(|e| Error::io(path, e))
        }
    })
}
