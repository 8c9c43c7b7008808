//! Readers and writers: safetensors, IDX, keep lists, inputs and labels. Round trips, the
//! shipped data, and malformed files (each must be an error naming the file, never a panic).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use divnet::io::data::{inputs_from_bytes, labels_from_bytes, read_inputs, read_labels};
use divnet::io::idx::{idx_bytes, parse_idx, read_idx, write_idx};
use divnet::io::keep::read_keep_list;
use divnet::io::npy::{npy_bytes, write_npy};
use divnet::io::safetensors::{read_safetensors, write_safetensors, Tensor, TensorFile};
use divnet::Error;
use safetensors::Dtype;

mod python;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A Format error whose message names the file.
fn assert_format_err<T: std::fmt::Debug>(r: divnet::Result<T>, path: &Path, needle: &str) {
    match r {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "message does not name the file: {msg}"
            );
            assert!(
                msg.to_lowercase().contains(&needle.to_lowercase()),
                "message {msg:?} lacks {needle:?}"
            );
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
        }
        other => panic!("expected a format error containing {needle:?}, got {other:?}"),
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A deterministic spread of magnitudes and signs, including exact zeros.
    (0..n)
        .map(|i| {
            let k = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001;
            (k as f32 - 1000.0) / 317.0
        })
        .collect()
}

fn sample_file() -> TensorFile {
    let mut f = TensorFile::default();
    f.insert(
        "fc1.weight".into(),
        Tensor::from_f32(&values(12, 1), vec![3, 4], Dtype::F32).unwrap(),
    );
    f.insert(
        "fc1.bias".into(),
        Tensor::from_f32(&values(3, 2), vec![3], Dtype::F16).unwrap(),
    );
    f.insert(
        "fc2.weight".into(),
        Tensor::from_f32(&values(6, 3), vec![2, 3], Dtype::BF16).unwrap(),
    );
    f.insert(
        "fc2.bias".into(),
        Tensor::from_f32(&values(2, 4), vec![2], Dtype::F64).unwrap(),
    );
    let steps: Vec<u8> = [7i64, -3, i64::MAX]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    f.insert(
        "num_batches_tracked".into(),
        Tensor {
            dtype: Dtype::I64,
            shape: vec![3],
            bytes: steps,
        },
    );
    f.metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    f
}

#[test]
fn safetensors_round_trip_keeps_every_tensor_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let f = sample_file();
    write_safetensors(&path, &f).unwrap();
    let back = read_safetensors(&path).unwrap();
    assert_eq!(back.tensors.len(), f.tensors.len());
    for (name, t) in &f.tensors {
        assert_eq!(back.get(name), Some(t), "{name}");
    }
    assert_eq!(back.metadata, f.metadata);
    // The names come back in the order of their data in the file.
    let mut offsets_sorted = back.names().map(str::to_string).collect::<Vec<_>>();
    offsets_sorted.sort();
    assert_eq!(offsets_sorted.len(), 5);
}

#[test]
fn float_encodings_are_within_their_precision() {
    let v = values(64, 9);
    for (dtype, rel) in [
        (Dtype::F32, 0.0),
        (Dtype::F64, 0.0),
        (Dtype::F16, 2f32.powi(-11)),
        (Dtype::BF16, 2f32.powi(-8)),
    ] {
        let t = Tensor::from_f32(&v, vec![8, 8], dtype).unwrap();
        assert_eq!(t.bytes.len(), 64 * dtype.bitsize() / 8);
        let back = t.to_f32().unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * rel, "{dtype:?}: {a} -> {b}");
        }
    }
    assert!(Tensor::from_f32(&v, vec![8, 7], Dtype::F32).is_err());
    assert!(Tensor::from_f32(&v, vec![8, 8], Dtype::I64).is_err());
    let ints = Tensor {
        dtype: Dtype::I32,
        shape: vec![1],
        bytes: vec![0; 4],
    };
    assert!(ints.to_f32().unwrap_err().to_string().contains("I32"));
}

#[test]
fn insert_replaces_in_place() {
    let mut f = sample_file();
    let before: Vec<String> = f.names().map(str::to_string).collect();
    let t = Tensor::from_f32(&[1.0, 2.0], vec![2], Dtype::F32).unwrap();
    f.insert("fc1.bias".into(), t.clone());
    let after: Vec<String> = f.names().map(str::to_string).collect();
    assert_eq!(before, after);
    assert_eq!(f.get("fc1.bias"), Some(&t));
}

/// The Python reference package must load what we write. Skips without Python and the
/// `safetensors` package unless DIVNET_REQUIRE_PYTHON=1, where their absence fails the test.
#[test]
fn python_safetensors_loads_our_files() {
    let Some(python) = python::python_with_safetensors() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_safetensors.py");
    let dir = tempfile::tempdir().unwrap();
    let f = sample_file();
    // Without BF16 the numpy front end must load it too; with it, the raw reader.
    let mut no_bf16 = f.clone();
    no_bf16.remove("fc2.weight");
    for (name, file) in [("all", &f), ("no_bf16", &no_bf16)] {
        let path = dir.path().join(format!("{name}.safetensors"));
        write_safetensors(&path, file).unwrap();
        let mut tensors = serde_json::Map::new();
        for (tname, t) in &file.tensors {
            let vals: Vec<serde_json::Value> = match t.dtype {
                Dtype::I64 => t
                    .bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()).into())
                    .collect(),
                _ => {
                    // The f32 values that were encoded, not the decoded ones.
                    let src = match tname.as_str() {
                        "fc1.weight" => values(12, 1),
                        "fc1.bias" => values(3, 2),
                        "fc2.weight" => values(6, 3),
                        "fc2.bias" => values(2, 4),
                        _ => unreachable!(),
                    };
                    src.iter().map(|&v| (v as f64).into()).collect()
                }
            };
            tensors.insert(
                tname.clone(),
                serde_json::json!({
                    "dtype": format!("{:?}", t.dtype),
                    "shape": t.shape,
                    "values": vals,
                }),
            );
        }
        let expected = serde_json::json!({"tensors": tensors, "metadata": {"format": "pt"}});
        let exp_path = dir.path().join(format!("{name}.json"));
        std::fs::write(&exp_path, expected.to_string()).unwrap();
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&path)
            .arg(&exp_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn malformed_safetensors_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write_safetensors(&good, &sample_file()).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let p = write(dir.path(), &format!("cut{cut}.safetensors"), &bytes[..cut]);
        assert_format_err(read_safetensors(&p), &p, "safetensors");
    }
    // A header length far beyond the file.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = write(dir.path(), "lying_len.safetensors", &lying);
    assert_format_err(read_safetensors(&p), &p, "header");
    // Valid JSON, but a shape bigger than the data offsets.
    let header = br#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,8]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0; 8]);
    let p = write(dir.path(), "lying_shape.safetensors", &f);
    assert_format_err(read_safetensors(&p), &p, "safetensors");
    // Not JSON.
    let mut f = 5u64.to_le_bytes().to_vec();
    f.extend_from_slice(b"hello");
    let p = write(dir.path(), "not_json.safetensors", &f);
    assert_format_err(read_safetensors(&p), &p, "safetensors");
    // Unknown dtype.
    let header = br#"{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0; 2]);
    let p = write(dir.path(), "dtype.safetensors", &f);
    assert_format_err(read_safetensors(&p), &p, "safetensors");
    // Missing file: an I/O error that names it.
    let missing = dir.path().join("missing.safetensors");
    let e = read_safetensors(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("missing.safetensors"));
}

#[test]
fn idx_round_trip_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2 * 3 * 5).map(|i| (i * 37 % 256) as u8).collect();
    for gzip in [false, true] {
        let p = dir.path().join(format!("a{gzip}.idx"));
        write_idx(&p, &[2, 3, 5], &data, gzip).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw[..2] == [0x1f, 0x8b], gzip);
        let a = read_idx(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3, 5]);
        assert_eq!(a.data, data);
    }
    // The header as the IDX spec writes it, built by hand.
    let mut manual = vec![0u8, 0, 8, 1, 0, 0, 0, 4];
    manual.extend_from_slice(&[9, 8, 7, 6]);
    assert_eq!(idx_bytes(&[4], &[9, 8, 7, 6]).unwrap(), manual);
    assert_eq!(parse_idx(&gz(&manual)).unwrap().data, vec![9, 8, 7, 6]);
}

#[test]
fn shipped_fashion_mnist_files_read() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let test_images = root.join("t10k-images-idx3-ubyte.gz");
    let x = read_inputs(&test_images).unwrap();
    assert_eq!((x.rows, x.cols), (10000, 784));
    assert!(x.data.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let y = read_labels(&root.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(y.len(), 10000);
    let mut counts = [0usize; 10];
    y.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1000; 10], "Fashion-MNIST's test set is balanced");
    let cal = read_idx(&root.join("train-images-first5000-idx3-ubyte.gz")).unwrap();
    assert_eq!(cal.shape, vec![5000, 28, 28]);
    let cal_labels = read_labels(&root.join("train-labels-first5000-idx1-ubyte.gz")).unwrap();
    assert_eq!(cal_labels.len(), 5000);
    // Where the Debian package is installed, the slice is exactly the first 5000 samples.
    let full = Path::new("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
    if full.exists() {
        assert_eq!(read_labels(full).unwrap()[..5000], cal_labels[..]);
        let full_images = read_idx(Path::new(
            "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
        ))
        .unwrap();
        assert_eq!(full_images.data[..5000 * 784], cal.data[..]);
    }
}

/// The bytes entry points (the demo's built-in data) read exactly what the file readers read,
/// npy and IDX alike, and name the path they are given in errors without opening it.
#[test]
fn inputs_and_labels_from_bytes_match_the_file_readers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    for name in [
        "train-images-first5000-idx3-ubyte.gz",
        "train-labels-first5000-idx1-ubyte.gz",
    ] {
        let path = root.join(name);
        let bytes = std::fs::read(&path).unwrap();
        if name.contains("images") {
            assert_eq!(
                inputs_from_bytes(&path, bytes).unwrap(),
                read_inputs(&path).unwrap()
            );
        } else {
            assert_eq!(
                labels_from_bytes(&path, &bytes).unwrap(),
                read_labels(&path).unwrap()
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let x = npy_bytes(&[2, 3], &[0.5f32, -1.0, 2.0, 0.0, 1.5, 3.0]);
    let p = write(dir.path(), "x.npy", &x);
    assert_eq!(
        inputs_from_bytes(&p, x.clone()).unwrap(),
        read_inputs(&p).unwrap()
    );
    let y = npy_bytes(&[3], &[2i64, 0, 1]);
    let p = write(dir.path(), "y.npy", &y);
    assert_eq!(labels_from_bytes(&p, &y).unwrap(), vec![2, 0, 1]);

    let nowhere = Path::new("(built in)/calibration.npy");
    let nan = npy_bytes(&[1, 2], &[1.0f32, f32::NAN]);
    assert_format_err(inputs_from_bytes(nowhere, nan), nowhere, "non-finite");
    let images = idx_bytes(&[2, 2, 2], &[0; 8]).unwrap();
    assert_format_err(labels_from_bytes(nowhere, &images), nowhere, "1-D");
}

#[test]
fn malformed_idx_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = idx_bytes(&[4, 2, 2], &[1; 16]).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("magic", b"\x01\x02\x08\x01\0\0\0\x01x".to_vec(), "magic"),
        (
            "float",
            {
                let mut b = good.clone();
                b[2] = 0x0D;
                b
            },
            "float32",
        ),
        (
            "type",
            {
                let mut b = good.clone();
                b[2] = 0x42;
                b
            },
            "unknown data type",
        ),
        ("zero_dims", vec![0, 0, 8, 0], "0 dimensions"),
        ("zero_dim", idx_header(&[4, 0, 2]), "zero"),
        ("short_header", good[..9].to_vec(), "truncated IDX header"),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "truncated data",
        ),
        ("trailing", [good.clone(), vec![0]].concat(), "trailing"),
        (
            "lying",
            {
                let mut b = idx_header(&[60000, 28, 28]);
                b.extend_from_slice(&[0; 100]);
                b
            },
            "truncated data",
        ),
        ("overflow", idx_header(&[u32::MAX as usize; 3]), "overflow"),
        (
            "gz_truncated",
            gz(&good[..good.len() - 3]),
            "truncated data",
        ),
        (
            "gz_cut",
            {
                let z = gz(&good);
                z[..z.len() - 10].to_vec()
            },
            "gzip",
        ),
        (
            "gz_lying",
            gz(&[idx_header(&[60000, 28, 28]), vec![0; 10]].concat()),
            "gzip file",
        ),
        (
            "gz_trailing",
            gz(&[good.clone(), vec![0; 100_000]].concat()),
            "trailing",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = write(dir.path(), &format!("{name}.idx"), &bytes);
        assert_format_err(read_idx(&p), &p, needle);
    }
}

fn idx_header(shape: &[usize]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, shape.len() as u8];
    for &d in shape {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b
}

#[test]
fn keep_lists() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "k.json", b" [3, 0, 2] ");
    assert_eq!(read_keep_list(&p, 4).unwrap(), vec![3, 0, 2]);
    let cases = [
        ("notjson", "[1, 2", "json"),
        ("object", "{\"keep\": [1]}", "array"),
        ("empty", "[]", "empty"),
        ("dup", "[1, 2, 1]", "more than once"),
        ("range", "[0, 4]", "out of range"),
        ("negative", "[-1]", "non-negative integer"),
        ("float", "[1.5]", "non-negative integer"),
        ("string", "[\"1\"]", "non-negative integer"),
        ("huge", "[18446744073709551615]", "out of range"),
    ];
    for (name, text, needle) in cases {
        let p = write(dir.path(), &format!("{name}.json"), text.as_bytes());
        assert_format_err(read_keep_list(&p, 4), &p, needle);
    }
}

/// npy bytes with a hand-written header (for dtypes `npy_bytes` does not write).
fn npy_raw(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn inputs_from_npy_and_idx() {
    let dir = tempfile::tempdir().unwrap();
    let v: Vec<f64> = (0..6).map(|i| i as f64 / 4.0 - 0.5).collect();
    let p = dir.path().join("x64.npy");
    write_npy(&p, &[2, 3], &v).unwrap();
    let x = read_inputs(&p).unwrap();
    assert_eq!((x.rows, x.cols), (2, 3));
    assert_eq!(x.data, v.iter().map(|&a| a as f32).collect::<Vec<_>>());

    let halves: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0]
        .iter()
        .flat_map(|&f| half::f16::from_f32(f).to_le_bytes())
        .collect();
    let p = write(dir.path(), "x16.npy", &npy_raw("<f2", "(2, 2)", &halves));
    assert_eq!(read_inputs(&p).unwrap().data, vec![1.0, -2.0, 0.5, 3.0]);

    let pixels: Vec<u8> = vec![0, 255, 51, 102, 7, 9];
    let p = dir.path().join("img.idx.gz");
    write_idx(&p, &[3, 1, 2], &pixels, true).unwrap();
    let x = read_inputs(&p).unwrap();
    assert_eq!((x.rows, x.cols), (3, 2));
    for (a, &b) in x.data.iter().zip(&pixels) {
        assert!((a - b as f32 / 255.0).abs() < 1e-7);
    }

    let p = write(
        dir.path(),
        "nan.npy",
        &npy_bytes(&[2, 2], &[1.0f32, f32::NAN, 0.0, 1.0]),
    );
    assert_format_err(read_inputs(&p), &p, "non-finite");
    let p = write(
        dir.path(),
        "inf.npy",
        &npy_bytes(&[1, 2], &[1.0f64, f64::INFINITY]),
    );
    assert_format_err(read_inputs(&p), &p, "non-finite");
    let p = write(dir.path(), "1d.npy", &npy_bytes(&[4], &[1.0f32; 4]));
    assert_format_err(read_inputs(&p), &p, "2-D");
    let p = write(dir.path(), "int.npy", &npy_bytes(&[2, 2], &[1i64; 4]));
    assert_format_err(read_inputs(&p), &p, "dtype");
    let p = write(dir.path(), "empty.npy", &npy_bytes::<f32>(&[0, 3], &[]));
    assert_format_err(read_inputs(&p), &p, "empty");
    let p = dir.path().join("labels.idx");
    write_idx(&p, &[3], &[1, 2, 3], false).unwrap();
    assert_format_err(read_inputs(&p), &p, "not a set of samples");
}

#[test]
fn labels_from_npy_and_idx() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("y.npy");
    write_npy(&p, &[4], &[3i64, 0, 9, 1]).unwrap();
    assert_eq!(read_labels(&p).unwrap(), vec![3, 0, 9, 1]);
    let i32s: Vec<u8> = [5i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = write(dir.path(), "y32.npy", &npy_raw("<i4", "(2,)", &i32s));
    assert_eq!(read_labels(&p).unwrap(), vec![5, 2]);
    let p = write(dir.path(), "yu8.npy", &npy_raw("|u1", "(3,)", &[7, 0, 255]));
    assert_eq!(read_labels(&p).unwrap(), vec![7, 0, 255]);
    let p = dir.path().join("y.idx.gz");
    write_idx(&p, &[3], &[4, 5, 6], true).unwrap();
    assert_eq!(read_labels(&p).unwrap(), vec![4, 5, 6]);

    let p = write(dir.path(), "neg.npy", &npy_bytes(&[2], &[1i64, -1]));
    assert_format_err(read_labels(&p), &p, "label at row 1 is -1");
    let p = write(dir.path(), "big.npy", &npy_bytes(&[1], &[1i64 << 31]));
    assert_format_err(read_labels(&p), &p, "2^31");
    let p = write(dir.path(), "float.npy", &npy_bytes(&[2], &[1.0f32, 2.0]));
    assert_format_err(read_labels(&p), &p, "integers");
    let p = write(dir.path(), "2d.npy", &npy_bytes(&[2, 1], &[1i64, 2]));
    assert_format_err(read_labels(&p), &p, "1-D");
    let p = dir.path().join("images.idx");
    write_idx(&p, &[2, 2], &[1, 2, 3, 4], false).unwrap();
    assert_format_err(read_labels(&p), &p, "1-D");
}

/// Thousands of corrupted variants of valid files (flipped, truncated, spliced bytes) through
/// every parser: each must return Ok or Err, never panic, and never allocate wildly.
#[test]
fn mutated_files_never_panic() {
    use divnet::io::idx::parse_idx;
    use divnet::io::keep::parse_keep_list;
    use divnet::io::safetensors::{parse_safetensors, safetensors_bytes};
    use rand::{Rng, SeedableRng};
    let st = safetensors_bytes(&sample_file()).unwrap();
    let idx = idx_bytes(&[3, 4, 5], &[7; 60]).unwrap();
    let idx_gz = gz(&idx);
    let keep = b"[4, 0, 17, 3]".to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut mutate = |src: &[u8]| -> Vec<u8> {
        let mut b = src.to_vec();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..4) {
                0 if !b.is_empty() => {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                1 => b.truncate(rng.random_range(0..=b.len())),
                2 if !b.is_empty() => {
                    // Header fields are where lies hurt: hit the first bytes more often.
                    let i = rng.random_range(0..b.len().min(24));
                    b[i] = [0u8, 0xff, 0x7f, 0x80, 1][rng.random_range(0..5)];
                }
                _ => {
                    let i = rng.random_range(0..=b.len());
                    let extra: Vec<u8> =
                        (0..rng.random_range(1..9)).map(|_| rng.random()).collect();
                    b.splice(i..i, extra);
                }
            }
        }
        b
    };
    for _ in 0..3000 {
        let _ = parse_safetensors(&mutate(&st));
        let _ = parse_idx(&mutate(&idx));
        let _ = parse_idx(&mutate(&idx_gz));
        let _ = parse_keep_list(&mutate(&keep), 20);
    }
}

/// Encoding refuses what the dtype cannot hold instead of storing an infinity: F16 holds
/// 65504 but not 70000 (the entry is named as `[row, column]`), BF16 and F32 hold 1e38, no
/// dtype holds a NaN or an infinity.
#[test]
fn encoding_refuses_values_the_dtype_cannot_hold() {
    let ok = Tensor::from_f32(&[1.0, -65504.0], vec![2], Dtype::F16).unwrap();
    assert_eq!(ok.to_f32().unwrap(), vec![1.0, -65504.0]);
    let err = Tensor::from_f32(&[1.0, 2.0, 3.0, 70000.0], vec![2, 2], Dtype::F16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("70000 at [1, 1] (element 3) does not fit F16"),
        "{err}"
    );
    for dtype in [Dtype::BF16, Dtype::F32, Dtype::F64] {
        Tensor::from_f32(&[1e38], vec![1], dtype).unwrap();
        for bad in [f32::INFINITY, f32::NAN] {
            let err = Tensor::from_f32(&[0.0, bad], vec![2], dtype).unwrap_err();
            assert!(err.to_string().contains("at [1]"), "{dtype:?}: {err}");
        }
    }
    let err = Tensor::from_f32(&[3.4e38], vec![1], Dtype::BF16).unwrap_err();
    assert!(err.to_string().contains("does not fit BF16"), "{err}");
}

/// Inputs are read as f32: an f64 input beyond its range is named with its value (it was an
/// infinity, reported later as a diverged training or an overflowing loss).
#[test]
fn an_f64_input_beyond_f32_is_named_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = vec![0.5f64; 12];
    values[7] = 4e39;
    let path = dir.path().join("x.npy");
    write_npy(&path, &[3, 4], &values).unwrap();
    let err = read_inputs(&path).unwrap_err().to_string();
    assert!(
        err.contains("x.npy: value at row 1, column 3 is 4e39, beyond f32's range"),
        "{err}"
    );
}
