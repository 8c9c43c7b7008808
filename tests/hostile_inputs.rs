//! Hostile inputs through the `divnet` binary: every case builds a bad input in a temporary
//! folder (starting from a valid file written by the library, then corrupted) and checks the
//! command's contract for failures:
//!
//! - exit code 2;
//! - exactly one stderr line starts with `divnet: error:`, it is the last line, and it names
//!   the offending file (when a file is at fault) and the problem. When a file is at fault
//!   it is the only line; otherwise (k too large, ...) the backend and stage reports that
//!   the command printed while it worked may precede it;
//! - no output file (nor a temporary one) is created;
//! - an output path that already holds a file keeps it byte for byte.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use divnet::io::idx::idx_bytes;
use divnet::io::npy::npy_bytes;
use divnet::io::safetensors::{safetensors_bytes, Tensor, TensorFile};
use divnet::model::{Activation, Mlp};
use safetensors::Dtype;

const BIN: &str = env!("CARGO_BIN_EXE_divnet");

/// What a case writes into its folder before running.
enum Input {
    Bytes(Vec<u8>),
    Dir,
}

struct Case {
    name: &'static str,
    files: Vec<(&'static str, Input)>,
    /// Arguments; `@NAME` becomes the path of `NAME` in the case's folder, `@OUT` and
    /// `@REPORT` the output paths (in a separate `out/` folder).
    args: Vec<&'static str>,
    /// The file that the error line must name (`@NAME` form as in args), if a file is at fault.
    blame: Option<&'static str>,
    /// Words the error line must contain (case-insensitive), saying what is wrong.
    expect: &'static [&'static str],
    /// The error comes after the command has started reporting its work (it is about the
    /// data's contents, not about reading a file), so other lines may precede it.
    late: bool,
}

fn case(
    name: &'static str,
    files: Vec<(&'static str, Input)>,
    args: &[&'static str],
    blame: Option<&'static str>,
    expect: &'static [&'static str],
) -> Case {
    Case {
        name,
        files,
        args: args.to_vec(),
        blame,
        expect,
        late: false,
    }
}

// ---------------------------------------------------------------- valid inputs, then broken

fn activations() -> Vec<f32> {
    (0..24)
        .map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0)
        .collect()
}

/// A valid 6 x 4 f32 npy.
fn good_npy() -> Vec<u8> {
    npy_bytes(&[6, 4], &activations())
}

/// Replaces `from` by `to` in an npy (v1) header and fixes the header length, so that only
/// the edited field lies.
fn edit_header(mut bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8(bytes[10..10 + hl].to_vec()).unwrap();
    assert!(header.contains(from), "{from:?} not in {header:?}");
    let new = header.replacen(from, to, 1);
    bytes.splice(10..10 + hl, new.bytes());
    bytes[8..10].copy_from_slice(&(new.len() as u16).to_le_bytes());
    bytes
}

fn npy_with_value(v: f32) -> Vec<u8> {
    let mut a = activations();
    a[9] = v;
    npy_bytes(&[6, 4], &a)
}

/// The 4-6-5-3 MLP used by every model case, as a tensor file.
fn model_file() -> TensorFile {
    Mlp::init(&[4, 6, 5, 3], Activation::Relu, 7)
        .to_tensors(&TensorFile::default())
        .unwrap()
}

fn st(file: &TensorFile) -> Vec<u8> {
    safetensors_bytes(file).unwrap()
}

fn good_model() -> Vec<u8> {
    st(&model_file())
}

fn model_with(name: &str, tensor: Tensor) -> Vec<u8> {
    let mut f = model_file();
    f.insert(name.to_string(), tensor);
    st(&f)
}

/// Rewrites the JSON header of a safetensors file with `edit`, fixing the length prefix.
fn edit_st_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn calibration(cols: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..8 * cols)
        .map(|i| ((i * 5) % 13) as f32 / 13.0)
        .collect();
    npy_bytes(&[8, cols], &data)
}

fn images_idx() -> Vec<u8> {
    let data: Vec<u8> = (0..8 * 2 * 2).map(|i| (i * 37 % 256) as u8).collect();
    idx_bytes(&[8, 2, 2], &data).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn labels_npy(values: &[i64]) -> Vec<u8> {
    npy_bytes(&[values.len()], values)
}

fn good_labels() -> Vec<u8> {
    labels_npy(&[0, 1, 2, 0, 1, 2, 0, 1])
}

fn b(bytes: Vec<u8>) -> Input {
    Input::Bytes(bytes)
}

// ------------------------------------------------------------------------------ the table

fn kernel_cases() -> Vec<Case> {
    let k = |name, bytes: Vec<u8>, expect| {
        case(
            name,
            vec![("a.npy", b(bytes))],
            &[
                "kernel",
                "--activations",
                "@a.npy",
                "--backend",
                "cpu",
                "--out",
                "@OUT",
            ],
            Some("@a.npy"),
            expect,
        )
    };
    let good = good_npy();
    let mut f16_nan = edit_header(edit_header(good_npy(), "<f4", "<f2"), "(6, 4)", "(6, 8)");
    let data_start = f16_nan.len() - 96;
    f16_nan[data_start + 10..data_start + 12].copy_from_slice(&0x7E00u16.to_le_bytes());
    vec![
        k(
            "activations are an npz archive",
            b"PK\x03\x04 a zip archive".to_vec(),
            &["not an npy file", "npz", "numpy.save"],
        ),
        k(
            "3-D activations (batch x tokens x features)",
            npy_bytes(&[2, 3, 4], &activations()),
            &["2-d array", "[2, 3, 4]", "reshape(-1, a.shape[-1])"],
        ),
        k(
            "npy truncated data",
            good[..good.len() - 3].to_vec(),
            &["truncated data"],
        ),
        k(
            "npy truncated header",
            good[..30].to_vec(),
            &["truncated npy header"],
        ),
        k(
            "npy header shape larger than the data",
            edit_header(good_npy(), "(6, 4)", "(1000000, 1000000)"),
            &["truncated data", "[1000000, 1000000]"],
        ),
        k(
            "npy shape overflowing usize",
            edit_header(good_npy(), "(6, 4)", "(4294967296, 4294967296)"),
            &["overflows"],
        ),
        k(
            "npy complex dtype",
            edit_header(good_npy(), "<f4", "<c8"),
            &["unsupported dtype", "<c8"],
        ),
        k(
            "npy big-endian dtype",
            edit_header(good_npy(), "<f4", ">f4"),
            &["unsupported dtype", ">f4"],
        ),
        k(
            "npy integer activations",
            npy_bytes(&[6, 4], &[1i64; 24]),
            &["dtype", "float"],
        ),
        k(
            "npy 1-D",
            npy_bytes(&[24], &activations()),
            &["2-D", "[24]"],
        ),
        k(
            "npy 3-D",
            npy_bytes(&[2, 3, 4], &activations()),
            &["2-D", "[2, 3, 4]"],
        ),
        k(
            "npy zero rows",
            npy_bytes::<f32>(&[0, 4], &[]),
            &["empty", "[0, 4]"],
        ),
        k(
            "npy zero columns",
            npy_bytes::<f32>(&[6, 0], &[]),
            &["empty", "[6, 0]"],
        ),
        // The activations are streamed, never whole in memory: a NaN is found by the pass
        // that reads it, after the command has started reporting its work.
        k(
            "npy NaN",
            npy_with_value(f32::NAN),
            &["non-finite", "row 2, column 1"],
        )
        .late(),
        k(
            "npy Inf",
            npy_with_value(f32::NEG_INFINITY),
            &["non-finite", "row 2, column 1"],
        )
        .late(),
        k("npy f16 NaN", f16_nan, &["non-finite", "row 0, column 5"]).late(),
        k(
            "not npy (garbage)",
            b"PK\x03\x04 this is a zip, not an array".to_vec(),
            &["not an npy file"],
        ),
        k("npy empty file", Vec::new(), &["not an npy file"]),
        k(
            "npy unknown format version",
            {
                let mut v = good_npy();
                v[6] = 7;
                v
            },
            &["version 7"],
        ),
        k(
            "npy header length past the end",
            {
                let mut v = good_npy();
                v[8..10].copy_from_slice(&60000u16.to_le_bytes());
                v
            },
            &["truncated npy header"],
        ),
        k(
            "npy header without shape",
            edit_header(good_npy(), "'shape'", "'shapf'"),
            &["no 'shape'"],
        ),
        k(
            "npy invalid fortran_order",
            edit_header(good_npy(), "'fortran_order': False", "'fortran_order': 0"),
            &["fortran_order"],
        ),
        k(
            "npy negative dimension",
            edit_header(good_npy(), "(6, 4)", "(-6, 4)"),
            &["invalid dimension", "-6"],
        ),
        k(
            "median beta with identical neurons",
            npy_bytes(&[3, 2], &[1.0f32, 1.0, 2.0, 2.0, 0.5, 0.5]),
            &["median"],
        )
        .with_args(|a| a.extend(["--beta", "median"]))
        .late(),
        case(
            "activations file missing",
            vec![],
            &[
                "kernel",
                "--activations",
                "@missing.npy",
                "--backend",
                "cpu",
                "--out",
                "@OUT",
            ],
            Some("@missing.npy"),
            &["no such file"],
        ),
        case(
            "activations path is a directory",
            vec![("dir.npy", Input::Dir)],
            &[
                "kernel",
                "--activations",
                "@dir.npy",
                "--backend",
                "cpu",
                "--out",
                "@OUT",
            ],
            Some("@dir.npy"),
            &["directory"],
        ),
        case(
            "kernel unknown --beta",
            vec![("a.npy", b(good_npy()))],
            &[
                "kernel",
                "--activations",
                "@a.npy",
                "--beta",
                "wide",
                "--backend",
                "cpu",
                "--out",
                "@OUT",
            ],
            None,
            &["--beta", "wide"],
        ),
        case(
            "kernel --beta 0",
            vec![("a.npy", b(good_npy()))],
            &[
                "kernel",
                "--activations",
                "@a.npy",
                "--beta=0",
                "--backend",
                "cpu",
                "--out",
                "@OUT",
            ],
            None,
            &["--beta", "positive"],
        ),
        case(
            "kernel unknown --backend",
            vec![("a.npy", b(good_npy()))],
            &[
                "kernel",
                "--activations",
                "@a.npy",
                "--backend",
                "tpu",
                "--out",
                "@OUT",
            ],
            None,
            &["--backend", "tpu"],
        ),
    ]
}

/// `divnet compress` with a model and a calibration set, either of which may be broken.
fn compress(name: &'static str, model: Vec<u8>, calib: (&'static str, Vec<u8>)) -> Case {
    compress_args(name, model, calib, &[])
}

fn compress_args(
    name: &'static str,
    model: Vec<u8>,
    calib: (&'static str, Vec<u8>),
    extra: &[&'static str],
) -> Case {
    let calib_arg: &'static str = match calib.0 {
        "c.npy" => "@c.npy",
        "c.idx" => "@c.idx",
        "c.idx.gz" => "@c.idx.gz",
        other => panic!("unknown calibration name {other}"),
    };
    let mut args = vec![
        "compress",
        "--model",
        "@m.safetensors",
        "--calibration",
        calib_arg,
        "--backend",
        "cpu",
        "--out",
        "@OUT",
        "--report",
        "@REPORT",
    ];
    if !extra
        .iter()
        .any(|a| a.starts_with("-k") || a.starts_with("--keep"))
    {
        args.extend(["-k", "2"]);
    }
    args.extend_from_slice(extra);
    Case {
        name,
        files: vec![("m.safetensors", b(model)), (calib.0, b(calib.1))],
        args,
        blame: None,
        expect: &[],
        late: false,
    }
}

fn blame(mut c: Case, file: &'static str, expect: &'static [&'static str]) -> Case {
    c.blame = Some(file);
    c.expect = expect;
    c
}

fn no_file(mut c: Case, expect: &'static [&'static str]) -> Case {
    c.blame = None;
    c.expect = expect;
    c
}

fn compress_cases() -> Vec<Case> {
    let m = "@m.safetensors";
    let c = "@c.npy";
    let good = good_model();
    let calib = || ("c.npy", calibration(4));
    let bad_offsets = edit_st_header(&good, |h| {
        let end = h["fc1.weight"]["data_offsets"][1].as_u64().unwrap();
        h["fc1.weight"]["data_offsets"][1] = (end + 4000).into();
    });
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut nan_weight = model_file();
    let mut w = nan_weight.get("fc2.weight").unwrap().to_f32().unwrap();
    w[3] = f32::NAN;
    nan_weight.insert("fc2.weight".into(), raw_f32(&w, vec![5, 6]));
    // fc1 4 -> 6 followed by a layer that takes 7: no chain through all three layers.
    let mut broken_chain = TensorFile::default();
    for (name, tensor) in model_file().tensors {
        if !name.starts_with("fc2") {
            broken_chain.insert(name, tensor);
        }
    }
    broken_chain.insert(
        "fc2.weight".into(),
        Tensor::from_f32(&[0.1; 35], vec![5, 7], Dtype::F32).unwrap(),
    );
    let idx = images_idx();
    let mut idx_float = idx.clone();
    idx_float[2] = 0x0D;
    let mut idx_magic = idx.clone();
    idx_magic[0] = 0x50;
    let mut idx_lying = idx.clone();
    idx_lying[4..8].copy_from_slice(&4_000_000u32.to_be_bytes());
    let gz = gzip(&idx);
    let mut gz_lying = idx.clone();
    gz_lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    // Deflate data that decodes to something, but not to an IDX header.
    let mut garbled_gz = gz.clone();
    for byte in &mut garbled_gz[10..] {
        *byte ^= 0x5A;
    }
    // A valid gzip header followed by a reserved deflate block type.
    let mut bad_deflate = gz[..10].to_vec();
    bad_deflate.extend_from_slice(&[0xFF; 40]);
    vec![
        blame(
            compress(
                "safetensors truncated",
                good[..good.len() / 2].to_vec(),
                calib(),
            ),
            m,
            &["safetensors"],
        ),
        blame(
            compress(
                "safetensors garbage",
                b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!".to_vec(),
                calib(),
            ),
            m,
            &["safetensors"],
        ),
        blame(
            compress("safetensors empty file", Vec::new(), calib()),
            m,
            &["safetensors"],
        ),
        blame(
            compress("safetensors header length u64::MAX", huge_header, calib()),
            m,
            &["safetensors"],
        ),
        blame(
            compress("safetensors lying data offsets", bad_offsets, calib()),
            m,
            &["safetensors"],
        ),
        blame(
            compress_args(
                "missing tensor name",
                good.clone(),
                calib(),
                &["--layers", "fc1,fc2,head"],
            ),
            m,
            &["head.weight"],
        ),
        blame(
            compress_args(
                "explicit layers do not connect",
                good.clone(),
                calib(),
                &["--layers", "fc1,fc3"],
            ),
            m,
            &["do not connect", "fc3"],
        ),
        blame(
            compress("inferred shape chain broken", st(&broken_chain), calib()),
            m,
            &["fc2"],
        ),
        blame(
            compress(
                "integer weight tensor",
                model_with(
                    "fc1.weight",
                    Tensor {
                        dtype: Dtype::I64,
                        shape: vec![6, 4],
                        bytes: vec![0; 6 * 4 * 8],
                    },
                ),
                calib(),
            ),
            m,
            &["fc1.weight", "I64"],
        ),
        blame(
            compress("NaN in a weight", st(&nan_weight), calib()),
            m,
            &["fc2.weight"],
        ),
        blame(
            compress(
                "bias of the wrong length",
                model_with(
                    "fc1.bias",
                    Tensor::from_f32(&[0.0; 5], vec![5], Dtype::F32).unwrap(),
                ),
                calib(),
            ),
            m,
            &["fc1.bias", "[6]"],
        ),
        blame(
            compress("model file missing", good.clone(), calib()).with_args(|a| {
                a[2] = "@nothere.safetensors";
            }),
            "@nothere.safetensors",
            &["no such file"],
        ),
        blame(
            compress(
                "calibration width differs from the model input",
                good.clone(),
                ("c.npy", calibration(5)),
            ),
            c,
            &["5 features", "4"],
        ),
        blame(
            compress(
                "calibration NaN",
                good.clone(),
                ("c.npy", {
                    let mut v: Vec<f32> = (0..32).map(|i| i as f32).collect();
                    v[13] = f32::NAN;
                    npy_bytes(&[8, 4], &v)
                }),
            ),
            c,
            &["non-finite", "row 3, column 1"],
        ),
        blame(
            compress(
                "IDX truncated",
                good.clone(),
                ("c.idx", idx[..idx.len() - 5].to_vec()),
            ),
            "@c.idx",
            &["truncated data"],
        ),
        blame(
            compress(
                "IDX truncated header",
                good.clone(),
                ("c.idx", idx[..9].to_vec()),
            ),
            "@c.idx",
            &["truncated idx header"],
        ),
        blame(
            compress("IDX bad magic", good.clone(), ("c.idx", idx_magic)),
            "@c.idx",
            &["not an npy or idx file", "magic"],
        ),
        blame(
            compress("IDX float data type", good.clone(), ("c.idx", idx_float)),
            "@c.idx",
            &["float32", "not supported"],
        ),
        blame(
            compress(
                "IDX dimensions larger than the data",
                good.clone(),
                ("c.idx", idx_lying),
            ),
            "@c.idx",
            &["truncated data", "4000000"],
        ),
        blame(
            compress(
                "gzip IDX dimensions larger than a gzip can hold",
                good.clone(),
                ("c.idx.gz", gzip(&gz_lying)),
            ),
            "@c.idx.gz",
            &["more than a gzip file"],
        ),
        blame(
            compress("gzip garbled", good.clone(), ("c.idx.gz", garbled_gz)),
            "@c.idx.gz",
            &["not an npy or idx file"],
        ),
        blame(
            compress(
                "gzip invalid deflate block",
                good.clone(),
                ("c.idx.gz", bad_deflate),
            ),
            "@c.idx.gz",
            &["corrupt gzip", "deflate"],
        ),
        blame(
            compress(
                "gzip truncated",
                good.clone(),
                ("c.idx.gz", gz[..gz.len() * 2 / 3].to_vec()),
            ),
            "@c.idx.gz",
            &["idx"],
        ),
        blame(
            compress(
                "IDX labels given as calibration",
                good.clone(),
                ("c.idx", idx_bytes(&[8], &[1; 8]).unwrap()),
            ),
            "@c.idx",
            &["[8]", "samples"],
        ),
        no_file(
            compress_args(
                "k larger than the layer",
                good.clone(),
                calib(),
                &["-k", "50"],
            ),
            &["50", "6"],
        ),
        no_file(
            compress_args("k = 0", good.clone(), calib(), &["-k", "0"]),
            &["-k", "\"0\""],
        ),
        no_file(
            compress_args("k not a number", good.clone(), calib(), &["-k", "ten"]),
            &["-k", "ten"],
        ),
        no_file(
            compress_args(
                "k list longer than the hidden layers",
                good.clone(),
                calib(),
                &["-k", "2,2,2"],
            ),
            &["3", "2 hidden"],
        ),
        no_file(
            compress_args(
                "keep ratio above 1",
                good.clone(),
                calib(),
                &["--keep-ratio", "1.5"],
            ),
            &["--keep-ratio", "1.5"],
        ),
        no_file(
            compress_args("unknown --beta", good.clone(), calib(), &["--beta", "wide"]),
            &["beta", "wide"],
        ),
        no_file(
            compress_args("negative --beta", good.clone(), calib(), &["--beta=-2"]),
            &["beta", "-2"],
        ),
        no_file(
            compress_args(
                "unknown --select",
                good.clone(),
                calib(),
                &["--select", "best"],
            ),
            &["--select", "best"],
        ),
        no_file(
            compress_args(
                "unknown --activation",
                good.clone(),
                calib(),
                &["--activation", "swish"],
            ),
            &["--activation", "swish"],
        ),
    ]
}

impl Case {
    fn with_args(mut self, f: impl FnOnce(&mut Vec<&'static str>)) -> Case {
        f(&mut self.args);
        self
    }

    fn late(mut self) -> Case {
        self.late = true;
        self
    }
}

/// Removes the `--hidden 3` every train case starts with.
fn drop_hidden(a: &mut Vec<&'static str>) {
    let pos = a.iter().position(|&x| x == "--hidden").unwrap();
    a.drain(pos..pos + 2);
}

fn train_cases() -> Vec<Case> {
    let t = |name, files: Vec<(&'static str, Input)>, extra: &[&'static str]| {
        let mut args = vec![
            "train", "--data", "@x.npy", "--labels", "@y.npy", "--hidden", "3", "--epochs", "1",
            "--out", "@OUT",
        ];
        args.extend_from_slice(extra);
        let mut all = vec![("x.npy", b(calibration(4)))];
        all.extend(files);
        case(name, all, &args, None, &[])
    };
    vec![
        blame(
            t(
                "fewer labels than samples",
                vec![("y.npy", b(labels_npy(&[0, 1, 2, 0, 1, 2, 0])))],
                &[],
            ),
            "@y.npy",
            &["7 labels", "8 samples"],
        ),
        blame(
            t(
                "float labels",
                vec![("y.npy", b(npy_bytes(&[8], &[0.0f32; 8])))],
                &[],
            ),
            "@y.npy",
            &["integers"],
        ),
        blame(
            t(
                "2-D labels",
                vec![("y.npy", b(npy_bytes(&[8, 1], &[0i64; 8])))],
                &[],
            ),
            "@y.npy",
            &["1-D"],
        ),
        blame(
            t(
                "negative label",
                vec![("y.npy", b(labels_npy(&[0, 1, 2, -1, 1, 2, 0, 1])))],
                &[],
            ),
            "@y.npy",
            &["label at row 3", "-1"],
        ),
        blame(
            t(
                "IDX images given as labels",
                vec![("y.npy", b(images_idx()))],
                &[],
            ),
            "@y.npy",
            &["1-D"],
        ),
        blame(
            t(
                "label beyond the model's outputs",
                vec![
                    ("y.npy", b(labels_npy(&[0, 1, 2, 0, 9, 2, 0, 1]))),
                    ("m.safetensors", b(good_model())),
                ],
                &["--init", "@m.safetensors"],
            )
            .with_args(drop_hidden),
            "@y.npy",
            &["label at row 4", "3 outputs"],
        ),
        no_file(
            t(
                "--hidden with --init, whose model has its own widths",
                vec![
                    ("y.npy", b(good_labels())),
                    ("m.safetensors", b(good_model())),
                ],
                &["--init", "@m.safetensors"],
            ),
            &["--hidden", "--init"],
        ),
        blame(
            t(
                "--classes below the largest label",
                vec![("y.npy", b(labels_npy(&[0, 1, 2, 0, 4, 2, 0, 1])))],
                &["--classes", "3"],
            ),
            "@y.npy",
            &["--classes 3", "label 4"],
        ),
        no_file(
            t(
                "zero-width hidden layer",
                vec![("y.npy", b(good_labels()))],
                &["--hidden", "0"],
            )
            .with_args(|a| {
                // Replace the default --hidden 3 by the extra --hidden 0.
                let pos = a.iter().position(|&x| x == "--hidden").unwrap();
                a.drain(pos..pos + 2);
            }),
            &["--hidden"],
        ),
        no_file(
            t(
                "batch size 0",
                vec![("y.npy", b(good_labels()))],
                &["--batch-size", "0"],
            ),
            &["batch"],
        ),
    ]
}

/// `divnet compress-layer` on hidden layer fc1 (6 neurons) of the test model, fused into fc2.
fn layer(name: &'static str, keep: Option<&[u8]>, extra: &[&'static str]) -> Case {
    layer_with(name, layer_activations(), good_model(), keep, extra)
}

/// The 8 x 6 activations of fc1 that [`layer`] compresses.
fn layer_activations() -> Vec<f32> {
    (0..8 * 6).map(|i| ((i * 5) % 11) as f32 / 11.0).collect()
}

/// [`layer`] with these activations and this model.
fn layer_with(
    name: &'static str,
    acts: Vec<f32>,
    model: Vec<u8>,
    keep: Option<&[u8]>,
    extra: &[&'static str],
) -> Case {
    let mut files = vec![
        ("a.npy", b(npy_bytes(&[8, 6], &acts))),
        ("m.safetensors", b(model)),
    ];
    let mut args = vec![
        "compress-layer",
        "--activations",
        "@a.npy",
        "--weights",
        "@m.safetensors",
        "--next",
        "fc2",
        "--prev",
        "fc1",
        "--backend",
        "cpu",
        "--out",
        "@OUT",
        "--report",
        "@REPORT",
    ];
    if let Some(k) = keep {
        files.push(("keep.json", b(k.to_vec())));
        args.extend(["--keep", "@keep.json"]);
    }
    args.extend_from_slice(extra);
    // compress-layer reports its read stage once the activations are in, before it checks
    // the weights and the keep list: that line may precede the error.
    case(name, files, &args, None, &[]).late()
}

fn compress_layer_cases() -> Vec<Case> {
    let k = "@keep.json";
    let m = "@m.safetensors";
    vec![
        blame(
            layer("keep list with a duplicate", Some(b"[0, 2, 2]"), &[]),
            k,
            &["entry 2", "more than once"],
        ),
        blame(
            layer("keep index out of range", Some(b"[0, 6]"), &[]),
            k,
            &["index 6", "out of range", "6 neurons"],
        ),
        blame(
            layer("negative keep index", Some(b"[1, -1]"), &[]),
            k,
            &["entry 1", "-1", "non-negative integer"],
        ),
        blame(
            layer("non-integer keep index", Some(b"[1.5]"), &[]),
            k,
            &["1.5", "non-negative integer"],
        ),
        blame(
            layer("keep list not JSON", Some(b"[0, 1"), &[]),
            k,
            &["not valid json"],
        ),
        blame(
            layer("keep list is an object", Some(b"{\"keep\": [1]}"), &[]),
            k,
            &["json array", "an object"],
        ),
        blame(layer("empty keep list", Some(b"[]"), &[]), k, &["empty"]),
        blame(
            layer(
                "keep list is a report",
                Some(b"{\"kept\": [1], \"method\": \"kdpp\"}"),
                &[],
            ),
            k,
            &["an object", "under \"kept\""],
        ),
        no_file(
            layer("keep given a count", None, &["--keep", "4"]),
            &["--keep takes a json file", "-k 4"],
        ),
        blame(
            layer("next layer given with its .weight", None, &["-k", "3"])
                .with_args(|a| a[6] = "fc2.weight"),
            m,
            &[
                "no tensor fc2.weight.weight",
                "given by prefix, fc2 for fc2.weight",
            ],
        ),
        blame(
            layer_with(
                "weights are a zip (a torch checkpoint)",
                layer_activations(),
                b"PK\x03\x04 a zip archive".to_vec(),
                None,
                &["-k", "3"],
            ),
            m,
            &["not a valid safetensors", "zip archive", "save_file"],
        ),
        blame(
            layer_with(
                "weights are a sharded checkpoint's index",
                layer_activations(),
                b"{\"metadata\": {}, \"weight_map\": {}}".to_vec(),
                None,
                &["-k", "3"],
            ),
            m,
            &["not a valid safetensors", "index", "merge"],
        ),
        blame(
            layer("keep file missing", None, &["--keep", "@nokeep.json"]),
            "@nokeep.json",
            &["no such file"],
        ),
        blame(
            layer("next layer missing", Some(b"[0, 1]"), &[]).with_args(|a| a[6] = "head"),
            m,
            &["head.weight"],
        ),
        blame(
            layer("prev layer of the wrong width", Some(b"[0, 1]"), &[])
                .with_args(|a| a[8] = "fc2"),
            m,
            &["fc2.weight", "6 rows"],
        ),
        no_file(
            layer(
                "k larger than the layer (compress-layer)",
                None,
                &["-k", "7"],
            ),
            &["7", "6"],
        ),
        no_file(layer("k = 0 (compress-layer)", None, &["-k", "0"]), &["0"]),
        blame(
            layer_with(
                "NaN in the next layer's weights (compress-layer)",
                layer_activations(),
                {
                    let mut w = vec![0.5f32; 5 * 6];
                    w[8] = f32::NAN;
                    model_with("fc2.weight", raw_f32(&w, vec![5, 6]))
                },
                None,
                &["-k", "3", "--select", "fusion-greedy"],
            ),
            m,
            &["fc2.weight[1, 2]", "NaN", "finite"],
        ),
        blame(
            layer_with(
                "activation too large for the statistics",
                {
                    let mut a = layer_activations();
                    a[13] = 3e19;
                    a
                },
                good_model(),
                None,
                &["-k", "3"],
            ),
            "@a.npy",
            &["row 2, column 1", "3e19", "at most 1e15"],
        ),
    ]
}

// ------------------------------------------------------------------------------ the runner

struct Run {
    code: Option<i32>,
    stderr: String,
}

fn resolve(arg: &str, dir: &Path, out: &Path, report: &Path) -> PathBuf {
    match arg {
        "@OUT" => out.to_path_buf(),
        "@REPORT" => report.to_path_buf(),
        a => dir.join(&a[1..]),
    }
}

fn run(c: &Case, dir: &Path, out: &Path, report: &Path) -> Run {
    let args: Vec<std::ffi::OsString> = c
        .args
        .iter()
        .map(|a| {
            if a.starts_with('@') {
                resolve(a, dir, out, report).into_os_string()
            } else {
                a.into()
            }
        })
        .collect();
    let output = Command::new(BIN)
        .args(&args)
        .output()
        .expect("run the divnet binary");
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Problems with one run, as sentences (empty when the run kept the contract).
fn check_run(c: &Case, r: &Run, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if r.code != Some(2) {
        problems.push(format!("exit code {:?}, expected 2", r.code));
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("divnet: error:"))
        .collect();
    if errors.len() != 1
        || !lines
            .last()
            .is_some_and(|l| l.starts_with("divnet: error:"))
    {
        problems.push(format!(
            "expected exactly one `divnet: error:` line, last on stderr; stderr was:\n{}",
            r.stderr
        ));
        return problems;
    }
    // A file that cannot be read, or holds the wrong thing, is found before any work starts:
    // then the error line is all there is on stderr.
    if c.blame.is_some() && !c.late && lines.len() != 1 {
        problems.push(format!(
            "a file error should be the only line on stderr; stderr was:\n{}",
            r.stderr
        ));
    }
    let line = errors[0];
    let lower = line.to_lowercase();
    for word in c.expect {
        if !lower.contains(&word.to_lowercase()) {
            problems.push(format!("error line does not say {word:?}: {line}"));
        }
    }
    if let Some(file) = c.blame {
        let path = dir.join(&file[1..]);
        if !line.contains(&path.display().to_string()) {
            problems.push(format!(
                "error line does not name {}: {line}",
                path.display()
            ));
        }
    }
    problems
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn check_case(c: &Case) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(&out_dir).unwrap();
    for (name, input) in &c.files {
        match input {
            Input::Bytes(bytes) => std::fs::write(dir.join(name), bytes).unwrap(),
            Input::Dir => std::fs::create_dir(dir.join(name)).unwrap(),
        }
    }
    let out = out_dir.join("result.out");
    let report = out_dir.join("report.json");
    let mut problems = Vec::new();

    // First run: nothing at the output paths; nothing may appear there.
    let r = run(c, &dir, &out, &report);
    problems.extend(check_run(c, &r, &dir));
    let left = listing(&out_dir);
    if !left.is_empty() {
        problems.push(format!("files created in the output folder: {left:?}"));
    }

    // Second run: earlier outputs at both paths must survive byte for byte.
    let old_out = b"previous output: must survive".to_vec();
    let old_report = b"{\"previous\": \"report\"}".to_vec();
    std::fs::write(&out, &old_out).unwrap();
    std::fs::write(&report, &old_report).unwrap();
    let r2 = run(c, &dir, &out, &report);
    problems.extend(
        check_run(c, &r2, &dir)
            .into_iter()
            .map(|p| format!("(2nd run) {p}")),
    );
    if std::fs::read(&out).unwrap() != old_out || std::fs::read(&report).unwrap() != old_report {
        problems.push("an existing output file was changed".into());
    }
    let left = listing(&out_dir);
    if left != ["report.json", "result.out"] {
        problems.push(format!("output folder holds {left:?} after the 2nd run"));
    }
    problems
}

fn run_table(cases: Vec<Case>) {
    let mut failures = Vec::new();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "case name {:?} twice", c.name);
        let problems = check_case(c);
        if !problems.is_empty() {
            failures.push(format!("case {:?}:\n  {}", c.name, problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases broke the error contract:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn table_has_at_least_thirty_cases() {
    let n = kernel_cases().len()
        + compress_cases().len()
        + compress_layer_cases().len()
        + train_cases().len();
    assert!(n >= 30, "only {n} cases");
}

#[test]
fn hostile_npy_inputs_to_kernel() {
    run_table(kernel_cases());
}

#[test]
fn hostile_models_and_calibration_sets_to_compress() {
    run_table(compress_cases());
}

#[test]
fn hostile_keep_lists_and_layers_to_compress_layer() {
    run_table(compress_layer_cases());
}

#[test]
fn hostile_data_and_labels_to_train() {
    run_table(train_cases());
}

/// A Fortran-order npy is read as the same matrix: its Gram matrix equals the one computed
/// from the C-order file (compared against an f64 naive loop).
#[test]
fn fortran_order_npy_is_read_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, n) = (5usize, 3usize);
    let a: Vec<f64> = (0..m * n).map(|i| ((i * 7) % 5) as f64 - 1.5).collect();
    // Column-major copy of the same matrix.
    let mut cols = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            cols[j * m + i] = a[i * n + j];
        }
    }
    let fortran = edit_header(
        npy_bytes(&[m, n], &cols),
        "'fortran_order': False",
        "'fortran_order': True",
    );
    let path = tmp.path().join("f.npy");
    std::fs::write(&path, fortran).unwrap();
    let out = tmp.path().join("g.npy");
    let status = Command::new(BIN)
        .args([
            "kernel",
            "--kind",
            "gram",
            "--backend",
            "cpu",
            "--activations",
        ])
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let g = divnet::io::npy::read_npy(&out).unwrap().to_f64();
    for p in 0..n {
        for q in 0..n {
            let expected: f64 = (0..m).map(|i| a[i * n + p] * a[i * n + q]).sum();
            assert!(
                (g[p * n + q] - expected).abs() < 1e-4,
                "G[{p},{q}] = {} != {expected}",
                g[p * n + q]
            );
        }
    }
}

/// Every input in the fuzz corpus (`fuzz/corpus/<reader>/`: seeds plus what the fuzzer kept
/// for new coverage), and every truncation and single-bit flip of the seeds, through the
/// readers with the fuzz targets' checks: a result or an error, never a panic. This replays
/// the fuzzing on stable Rust in every test run.
#[test]
fn fuzz_corpus_and_mutated_seeds_never_panic() {
    use divnet::io::idx::parse_idx;
    use divnet::io::npy::parse_npy;
    use divnet::io::safetensors::parse_safetensors;

    fn check(reader: &str, bytes: &[u8]) {
        match reader {
            "npy" => {
                if let Ok(a) = parse_npy(bytes) {
                    assert_eq!(a.to_f64().len(), a.shape.iter().product::<usize>());
                }
            }
            "safetensors" => {
                if let Ok(file) = parse_safetensors(bytes) {
                    for (_, t) in &file.tensors {
                        assert_eq!(t.bytes.len(), (t.len() * t.dtype.bitsize()).div_ceil(8));
                    }
                    let again = parse_safetensors(&safetensors_bytes(&file).unwrap()).unwrap();
                    assert_eq!(again.tensors.len(), file.tensors.len());
                }
            }
            "idx" => {
                if let Ok(a) = parse_idx(bytes) {
                    assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
                }
            }
            _ => unreachable!(),
        }
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut inputs = 0usize;
    for reader in ["npy", "safetensors", "idx"] {
        let dir = root.join(reader);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus {}", dir.display());
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut variants = vec![bytes.clone()];
            // Seeds have readable names; the fuzzer's finds are named by their hash.
            let is_seed = !(name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_seed {
                variants.extend((0..bytes.len()).map(|cut| bytes[..cut].to_vec()));
                for pos in 0..bytes.len().min(128) {
                    for bit in 0..8 {
                        let mut v = bytes.clone();
                        v[pos] ^= 1 << bit;
                        variants.push(v);
                    }
                }
            }
            for (i, v) in variants.iter().enumerate() {
                let outcome = std::panic::catch_unwind(|| check(reader, v));
                assert!(
                    outcome.is_ok(),
                    "{reader} reader panicked on {} (variant {i})",
                    path.display()
                );
            }
            inputs += variants.len();
        }
    }
    eprintln!("{inputs} inputs replayed");
}

/// One sample over 100000 neurons is a 200 KB file whose kernel needs an 80 GB matrix: the
/// command must refuse it with the one-line error, not panic in the allocator. The child
/// runs under `ulimit -v` (4 GB of address space) so that the refusal does not depend on
/// this machine's memory or overcommit policy.
#[test]
fn layer_too_wide_for_memory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = tmp.path().join("wide.npy");
    let row: Vec<f32> = (0..100_000).map(|i| (i % 7) as f32).collect();
    divnet::io::npy::write_npy(&acts, &[1, 100_000], &row).unwrap();
    let out = tmp.path().join("k.npy");
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$0\" kernel --backend cpu --activations \"$1\" --out \"$2\"")
        .arg(BIN)
        .arg(&acts)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("divnet: error:")
            && last.contains(&acts.display().to_string())
            && last.contains("100000 neurons"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// `--hidden 2000000000` asks for a network of 16e9 parameters from a few characters: an
/// error naming the option, not an allocator abort (child under `ulimit -v`, as above).
#[test]
fn network_too_large_for_memory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    let y = tmp.path().join("y.npy");
    std::fs::write(&x, calibration(4)).unwrap();
    std::fs::write(&y, good_labels()).unwrap();
    let out = tmp.path().join("m.safetensors");
    let output = Command::new("sh")
        .arg("-c")
        .arg(
            "ulimit -v 4000000 && exec \"$0\" train --hidden 2000000000 --epochs 1 \
             --data \"$1\" --labels \"$2\" --out \"$3\"",
        )
        .arg(BIN)
        .arg(&x)
        .arg(&y)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("divnet: error: --hidden") && last.contains("parameters"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// A batch size far beyond the data (10^11) is one batch per epoch, not a request for
/// 10^11 rows of buffer (that aborted the process).
#[test]
fn huge_batch_size_trains_on_the_data_there_is() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    let y = tmp.path().join("y.npy");
    std::fs::write(&x, calibration(4)).unwrap();
    std::fs::write(&y, good_labels()).unwrap();
    let out = tmp.path().join("m.safetensors");
    let output = Command::new("sh")
        .arg("-c")
        .arg(
            "ulimit -v 4000000 && exec \"$0\" train --hidden 3 --epochs 2 \
             --batch-size 100000000000 --data \"$1\" --labels \"$2\" --out \"$3\"",
        )
        .arg(BIN)
        .arg(&x)
        .arg(&y)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mlp = Mlp::load(&out, None, Activation::Relu).unwrap();
    assert_eq!(mlp.dims(), vec![4, 3, 3]);
}

/// `--chunk-rows` beyond the data (up to u64::MAX) means one chunk, not an overflow panic.
#[test]
fn absurd_chunk_rows_compress_in_one_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.safetensors");
    let calib = tmp.path().join("c.npy");
    std::fs::write(&model, good_model()).unwrap();
    std::fs::write(&calib, calibration(4)).unwrap();
    for rows in ["100000000000", "18446744073709551615"] {
        let out = tmp.path().join(format!("out{}.safetensors", rows.len()));
        let output = Command::new(BIN)
            .args([
                "compress",
                "--backend",
                "cpu",
                "-k",
                "2",
                "--chunk-rows",
                rows,
            ])
            .arg("--model")
            .arg(&model)
            .arg("--calibration")
            .arg(&calib)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "--chunk-rows {rows}: {stderr}");
        let mlp = Mlp::load(&out, None, Activation::Relu).unwrap();
        assert_eq!(mlp.dims(), vec![4, 2, 2, 3]);
    }
}

/// An F32 tensor of `values` as raw bytes: [`Tensor::from_f32`] refuses NaN and infinities,
/// which these tests plant on purpose.
fn raw_f32(values: &[f32], shape: Vec<usize>) -> Tensor {
    Tensor {
        dtype: Dtype::F32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}
