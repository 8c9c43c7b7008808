//! The streaming npy reader (`NpyRowReader`) against the whole-file reader (`read_matrix`):
//! the same rows and the same statistics for f16, f32 and f64 files in C and Fortran order,
//! whatever the chunk size; files whose length disagrees with their header; non-finite
//! values named by file, row and column wherever the chunk boundaries fall.

use std::path::{Path, PathBuf};

use divnet::io::npy::{read_matrix, NpyRowReader};
use divnet::kernel::{ActivationRows, LayerStats, RowSource, SliceRows, StatsKind};
use divnet::progress::NoProgress;
use divnet::{Backend, Error};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug)]
enum Dtype {
    F16,
    F32,
    F64,
}

/// An npy file of `values` (m x n, row-major) stored as `dtype`, in Fortran order when
/// `fortran`, with `extra` bytes after the data.
fn npy_file(
    dir: &Path,
    name: &str,
    values: &[f64],
    (m, n): (usize, usize),
    dtype: Dtype,
    fortran: bool,
) -> PathBuf {
    let descr = match dtype {
        Dtype::F16 => "<f2",
        Dtype::F32 => "<f4",
        Dtype::F64 => "<f8",
    };
    let order = if fortran { "True" } else { "False" };
    let header =
        format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': ({m}, {n}), }}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let stored = |t: usize, j: usize| values[t * n + j];
    let order: Vec<(usize, usize)> = if fortran {
        (0..n).flat_map(|j| (0..m).map(move |t| (t, j))).collect()
    } else {
        (0..m).flat_map(|t| (0..n).map(move |j| (t, j))).collect()
    };
    for (t, j) in order {
        let v = stored(t, j);
        match dtype {
            Dtype::F16 => bytes.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
            Dtype::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::F64 => bytes.extend_from_slice(&v.to_le_bytes()),
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// ReLU-like activations, m x n.
fn activations(m: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * n)
        .map(|_| (rng.random::<f64>() * 3.0 - 1.0).max(0.0))
        .collect()
}

/// Every row a pass of `source` hands out, as f32, and the chunk sizes in rows.
fn all_rows(source: &mut dyn RowSource) -> (Vec<f32>, Vec<usize>) {
    let n = source.width();
    let mut rows = Vec::new();
    let mut chunks = Vec::new();
    source
        .pass(&mut |chunk| {
            chunks.push(chunk.len() / n);
            match chunk {
                ActivationRows::F32(v) => rows.extend_from_slice(v),
                ActivationRows::F16(v) => rows.extend(v.iter().map(|x| x.to_f32())),
            }
            Ok(())
        })
        .unwrap();
    (rows, chunks)
}

const DTYPES: [Dtype; 3] = [Dtype::F16, Dtype::F32, Dtype::F64];

#[test]
fn reader_hands_out_the_rows_read_matrix_reads_in_chunks_of_the_size_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (23, 7);
    let values = activations(m, n, 1);
    for dtype in DTYPES {
        for fortran in [false, true] {
            let path = npy_file(dir.path(), "a.npy", &values, (m, n), dtype, fortran);
            let want = read_matrix(&path).unwrap().to_f32();
            for chunk_rows in [1, 3, 7, m - 1, m, m + 5] {
                let mut reader = NpyRowReader::open(&path)
                    .unwrap()
                    .with_chunk_rows(chunk_rows);
                assert_eq!((reader.rows(), reader.width()), (m, n));
                assert_eq!(reader.is_fortran_order(), fortran);
                let (rows, chunks) = all_rows(&mut reader);
                assert_eq!(rows, want, "{dtype:?} fortran={fortran} chunk={chunk_rows}");
                let full = chunk_rows.min(m);
                assert!(chunks[..chunks.len() - 1].iter().all(|&c| c == full));
                assert_eq!(chunks.iter().sum::<usize>(), m);
                // Every pass reads the file again, the same.
                assert_eq!(all_rows(&mut reader).0, want);
            }
            // f16 is handed out as stored (half the bytes), f64 rounded to f32.
            let mut reader = NpyRowReader::open(&path).unwrap();
            reader
                .pass(&mut |chunk| {
                    assert_eq!(
                        matches!(chunk, ActivationRows::F16(_)),
                        matches!(dtype, Dtype::F16)
                    );
                    Ok(())
                })
                .unwrap();
        }
    }
}

#[test]
fn reader_statistics_equal_the_in_memory_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (301, 12);
    let values = activations(m, n, 2);
    for dtype in DTYPES {
        for fortran in [false, true] {
            let path = npy_file(dir.path(), "a.npy", &values, (m, n), dtype, fortran);
            let a = read_matrix(&path).unwrap();
            let f32s = a.to_f32();
            let f16s: Vec<f16> = f32s.iter().map(|&x| f16::from_f32(x)).collect();
            let in_memory = match dtype {
                Dtype::F16 => ActivationRows::F16(&f16s),
                _ => ActivationRows::F32(&f32s),
            };
            for chunk_rows in [1, 64, 1000] {
                let stats = |source: &mut dyn RowSource| {
                    let mut s = LayerStats::new(&Backend::Cpu, n, StatsKind::Both).unwrap();
                    s.push_source(source, "statistics", &mut NoProgress)
                        .unwrap();
                    s.finish().unwrap()
                };
                let streamed = stats(
                    &mut NpyRowReader::open(&path)
                        .unwrap()
                        .with_chunk_rows(chunk_rows),
                );
                let held = stats(
                    &mut SliceRows::new(in_memory, n)
                        .unwrap()
                        .with_chunk_rows(chunk_rows),
                );
                let (g1, g2) = (streamed.gram.unwrap(), held.gram.unwrap());
                let (d1, d2) = (streamed.distances.unwrap(), held.distances.unwrap());
                assert_eq!(g1.samples, m);
                assert_eq!(g1.gram, g2.gram, "{dtype:?} fortran={fortran}");
                assert_eq!(g1.col_sums, g2.col_sums);
                assert_eq!(d1.squared, d2.squared);
                assert_eq!(d1.samples, d2.samples);
            }
        }
    }
}

fn format_message(e: Error, path: &Path) -> String {
    match e {
        Error::Format { path: p, message } => {
            assert_eq!(p, path);
            message
        }
        other => panic!(
            "expected a format error naming {}, got {other}",
            path.display()
        ),
    }
}

#[test]
fn a_file_whose_length_disagrees_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (10, 4);
    let values = activations(m, n, 3);
    for fortran in [false, true] {
        let path = npy_file(dir.path(), "a.npy", &values, (m, n), Dtype::F32, fortran);
        let bytes = std::fs::read(&path).unwrap();

        // Shorter than the header says: refused when opened, as read_matrix refuses it.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let msg = format_message(NpyRowReader::open(&path).err().unwrap(), &path);
        assert!(
            msg.contains("truncated data") && msg.contains("[10, 4]"),
            "{msg}"
        );
        let whole = format_message(read_matrix(&path).unwrap_err(), &path);
        assert_eq!(msg, whole);

        // Longer: the rows the header declares, as numpy reads it.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xAB; 13]);
        std::fs::write(&path, &longer).unwrap();
        let mut reader = NpyRowReader::open(&path).unwrap().with_chunk_rows(3);
        assert_eq!(
            all_rows(&mut reader).0,
            read_matrix(&path).unwrap().to_f32()
        );

        // Cut after it was opened: the pass says so, naming the file.
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = NpyRowReader::open(&path).unwrap().with_chunk_rows(3);
        std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
        let err = reader.pass(&mut |_| Ok(())).unwrap_err();
        let msg = format_message(err, &path);
        assert!(msg.contains("ends before"), "{msg}");
    }
}

#[test]
fn a_non_finite_value_is_named_by_row_and_column_in_any_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (17, 5);
    for dtype in DTYPES {
        for fortran in [false, true] {
            let mut values = activations(m, n, 4);
            // Two bad values: the error names the first in row order.
            values[11 * n + 3] = f64::NAN;
            values[13 * n + 1] = f64::INFINITY;
            let path = npy_file(dir.path(), "bad.npy", &values, (m, n), dtype, fortran);
            let whole = format_message(read_matrix(&path).unwrap_err(), &path);
            assert!(whole.contains("row 11, column 3"), "{whole}");
            for chunk_rows in [1, 4, 12, m] {
                let mut reader = NpyRowReader::open(&path)
                    .unwrap()
                    .with_chunk_rows(chunk_rows);
                let mut seen = 0;
                let err = reader
                    .pass(&mut |chunk| {
                        seen += chunk.len() / n;
                        Ok(())
                    })
                    .unwrap_err();
                assert_eq!(format_message(err, &path), whole);
                // Nothing from the bad chunk on was handed out.
                assert_eq!(seen, 11 / chunk_rows * chunk_rows);
            }
        }
    }
}

#[test]
fn the_header_is_checked_as_read_matrix_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage.npy", b"PK\x03\x04 not an array".to_vec()),
        ("empty.npy", Vec::new()),
        ("ints.npy", divnet::io::npy::npy_bytes(&[2, 2], &[1i64; 4])),
        ("flat.npy", divnet::io::npy::npy_bytes(&[4], &[1.0f32; 4])),
        ("rows0.npy", divnet::io::npy::npy_bytes::<f32>(&[0, 4], &[])),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let streamed = format_message(NpyRowReader::open(&path).err().unwrap(), &path);
        let whole = format_message(read_matrix(&path).unwrap_err(), &path);
        assert_eq!(streamed, whole, "{name}");
    }
    let missing = dir.path().join("missing.npy");
    assert!(matches!(
        NpyRowReader::open(&missing),
        Err(Error::Io { path, .. }) if path == missing
    ));
}

/// An f64 activation beyond f32's range is named with its own value, in C and Fortran order
/// and in any chunk (it arrived as an infinity in the rows, and was reported as a NaN or Inf).
#[test]
fn an_f64_beyond_f32_is_named_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (17, 5);
    for fortran in [false, true] {
        let mut values = activations(m, n, 5);
        values[9 * n + 2] = -1e300;
        let path = npy_file(dir.path(), "big.npy", &values, (m, n), Dtype::F64, fortran);
        for chunk_rows in [1, 4, m] {
            let mut reader = NpyRowReader::open(&path)
                .unwrap()
                .with_chunk_rows(chunk_rows);
            let err = format_message(reader.pass(&mut |_| Ok(())).unwrap_err(), &path);
            assert!(
                err.starts_with("value at row 9, column 2 is -1e300: activations must be at most"),
                "fortran {fortran}, chunks of {chunk_rows}: {err}"
            );
        }
    }
}
