//! Where `divnet demo` reads its data: the files of data/fashion-mnist, built into the
//! binary so that an installed `divnet` runs the demo from any directory, or a folder given
//! with `--data` that holds files of the same names.

use std::path::{Path, PathBuf};

use divnet::io::data::{inputs_from_bytes, labels_from_bytes, read_inputs, read_labels, Inputs};
use divnet::io::safetensors::{parse_safetensors, read_safetensors, TensorFile};

/// One of the shipped files: its name, and its contents as built into the binary.
pub struct DemoFile {
    /// The file name, in data/fashion-mnist and in a `--data` folder.
    pub name: &'static str,
    built_in: &'static [u8],
}

macro_rules! shipped {
    ($name:literal) => {
        DemoFile {
            name: $name,
            built_in: include_bytes!(concat!("../../../data/fashion-mnist/", $name)),
        }
    };
}

/// The reference MLP 784-1000-1000-10.
pub static MODEL: DemoFile = shipped!("mlp-784-1000-1000-10.safetensors");
/// The 10k Fashion-MNIST test images.
pub static TEST_IMAGES: DemoFile = shipped!("t10k-images-idx3-ubyte.gz");
/// Their labels.
pub static TEST_LABELS: DemoFile = shipped!("t10k-labels-idx1-ubyte.gz");
/// The first 5000 training images: the calibration set.
pub static CALIBRATION_IMAGES: DemoFile = shipped!("train-images-first5000-idx3-ubyte.gz");
/// Their labels.
pub static CALIBRATION_LABELS: DemoFile = shipped!("train-labels-first5000-idx1-ubyte.gz");

/// What messages call the built-in copy: no such folder exists on disk.
const BUILT_IN: &str = "data/fashion-mnist (built into divnet)";

/// The demo's data source.
pub enum DemoData {
    /// The copy of data/fashion-mnist inside the binary.
    BuiltIn,
    /// A folder with files of the same names (`--data`).
    Folder(PathBuf),
}

impl DemoData {
    /// `--data` if given, else the built-in copy.
    pub fn new(folder: Option<PathBuf>) -> Self {
        folder.map_or(DemoData::BuiltIn, DemoData::Folder)
    }

    /// The folder the files come from (for the built-in copy, a name that says so).
    pub fn location(&self) -> &Path {
        match self {
            DemoData::BuiltIn => Path::new(BUILT_IN),
            DemoData::Folder(dir) => dir,
        }
    }

    /// Where `file` comes from, for messages and errors.
    pub fn path(&self, file: &DemoFile) -> PathBuf {
        match self {
            DemoData::BuiltIn => PathBuf::from(format!(
                "data/fashion-mnist/{} (built into divnet)",
                file.name
            )),
            DemoData::Folder(dir) => dir.join(file.name),
        }
    }

    /// A safetensors model.
    pub fn model(&self, file: &DemoFile) -> divnet::Result<TensorFile> {
        match self {
            DemoData::BuiltIn => parse_safetensors(file.built_in)
                .map_err(|m| divnet::Error::format(self.path(file), m)),
            DemoData::Folder(_) => read_safetensors(&self.path(file)),
        }
    }

    /// Images as inputs (pixels / 255).
    pub fn inputs(&self, file: &DemoFile) -> divnet::Result<Inputs> {
        match self {
            DemoData::BuiltIn => inputs_from_bytes(&self.path(file), file.built_in.to_vec()),
            DemoData::Folder(_) => read_inputs(&self.path(file)),
        }
    }

    /// Class labels.
    pub fn labels(&self, file: &DemoFile) -> divnet::Result<Vec<u32>> {
        match self {
            DemoData::BuiltIn => labels_from_bytes(&self.path(file), file.built_in),
            DemoData::Folder(_) => read_labels(&self.path(file)),
        }
    }
}
