//! `divnet demo` on the shipped data, on a reduced grid: the whole main job end to end.

use std::path::Path;
use std::process::Command;

/// The repository's copy of the demo's data, for `--data`.
const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist");

/// Runs `command`, fails the test unless it succeeds, and returns its stdout and stderr.
fn run_ok(command: &mut Command) -> (String, String) {
    let result = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "demo failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn demo_runs_on_a_reduced_grid_and_writes_its_outputs() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_ok(
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args([
                "demo",
                "--sizes",
                "10,50",
                "--seeds",
                "2",
                "--calibration-rows",
                "500",
                "--no-one-layer",
                "--backend",
                "cpu",
                "--data",
                DATA_DIR,
                "--out",
            ])
            .arg(out.path()),
    );
    assert!(stderr.contains(DATA_DIR), "--data not used: {stderr}");
    for name in ["report.json", "table.txt", "accuracy.png", "diversity.png"] {
        let meta =
            std::fs::metadata(out.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(meta.len() > 100, "{name} is nearly empty");
    }
    assert!(
        stdout.contains("kdpp + fusion") && stdout.contains("random + fusion"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    let full = report["full_accuracy"].as_f64().unwrap();
    // The shipped network's accuracy, as recorded in data/fashion-mnist/README.md.
    assert!((full - 0.8883).abs() < 5e-4, "full accuracy {full}");
    assert_eq!(report["calibration_rows"].as_u64(), Some(500));
    assert_eq!(report["test_rows"].as_u64(), Some(10000));
    let curves = report["curves"].as_array().unwrap();
    assert_eq!(curves.len(), 16, "one scope, sixteen variants");
    for c in curves {
        for p in c["points"].as_array().unwrap() {
            let acc = p["mean"].as_f64().unwrap();
            assert!((0.0..=full + 0.02).contains(&acc), "{c}");
        }
    }
    // Fusion helps at 50 kept per layer: k-DPP + fusion beats k-DPP alone.
    let at = |label: &str| {
        curves
            .iter()
            .find(|c| c["label"] == label)
            .and_then(|c| {
                c["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["kept"] == 50)
            })
            .and_then(|p| p["mean"].as_f64())
            .unwrap()
    };
    assert!(at("kdpp + fusion") > at("kdpp"));
    // Agreement with the full network, per point: fusion makes the compressed network a
    // closer copy of the full one, and the table shows it for the fused rules.
    let agreement = |label: &str| {
        let c = curves.iter().find(|c| c["label"] == label).unwrap();
        let p = &c["points"].as_array().unwrap()[0];
        assert_eq!(
            p["agreements"].as_array().unwrap().len(),
            p["accuracies"].as_array().unwrap().len()
        );
        p["agreement"].as_f64().unwrap()
    };
    assert!(agreement("kdpp + fusion") > agreement("kdpp"));
    assert!((0.0..=1.0).contains(&agreement("fusion-greedy + fusion")));
    assert!((0.0..=1.0).contains(&agreement("fusion-swap + fusion")));
    assert!(
        stdout.contains("(e) agreement with the full network"),
        "{stdout}"
    );
    // Finding (e): the selection built for fusion against the paper's rules, all fine-tuned.
    let finetunes = report["finetune"].as_array().unwrap();
    let labels: Vec<&str> = finetunes
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "kdpp + fusion",
            "greedy + fusion",
            "importance + fusion",
            "fusion-greedy + fusion",
            "fusion-swap + fusion",
            "quality-kdpp + fusion",
            "quality-greedy + fusion"
        ]
    );
    for f in finetunes {
        assert!(f["after"].as_f64().unwrap() > 0.0, "{f}");
    }
    assert!(
        stdout.contains("(e) selection built for fusion"),
        "{stdout}"
    );
    for rule in ["fusion-greedy", "fusion-swap"] {
        assert!(
            stdout.contains(&format!("\n{rule} + fusion, all hidden layers (target")),
            "{stdout}"
        );
    }
}

/// The smallest demo that still draws every figure: one size, one seed, 200 images.
const TINY_DEMO: [&str; 10] = [
    "demo",
    "--sizes",
    "10",
    "--seeds",
    "1",
    "--calibration-rows",
    "200",
    "--no-finetune",
    "--backend",
    "cpu",
];

/// Decodes a PNG and checks that its caption was drawn: black pixels in the top band, where
/// only the caption's text is (a plot drawn without a font has none there).
fn assert_png_with_caption(path: &Path) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a valid PNG: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut pixels)
        .unwrap_or_else(|e| panic!("{}: not a valid PNG: {e}", path.display()));
    assert_eq!(frame.color_type, png::ColorType::Rgb, "{}", path.display());
    assert!(frame.width >= 400 && frame.height >= 400, "{frame:?}");
    let caption_band = &pixels[..30 * frame.line_size];
    let dark = caption_band
        .chunks_exact(3)
        .filter(|p| p.iter().all(|&c| c < 100))
        .count();
    assert!(dark > 50, "{}: no caption text drawn", path.display());
}

/// Issue 14: an installed binary, run from an empty folder on a machine whose fontconfig
/// finds no font, must find its data and draw every plot. The binary is copied out of the
/// build tree and run with HOME and the XDG folders in a temporary folder and a fontconfig
/// configuration that lists no font folder: the data and the font built into it must do.
#[test]
fn demo_runs_from_an_empty_folder_without_system_fonts() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin").join("divnet");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_divnet"), &bin).unwrap();
    // Nothing may point back at the build tree (the demo once defaulted to it).
    let exe = std::fs::read(&bin).unwrap();
    let repo_data = DATA_DIR.as_bytes();
    assert!(
        !exe.windows(repo_data.len()).any(|w| w == repo_data),
        "the binary still names {DATA_DIR}"
    );
    drop(exe);
    let work = root.path().join("work");
    let home = root.path().join("home");
    for d in [&work, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    let fonts_conf = root.path().join("fonts.conf");
    std::fs::write(
        &fonts_conf,
        "<?xml version=\"1.0\"?>\n<!DOCTYPE fontconfig SYSTEM \"fonts.dtd\">\n<fontconfig></fontconfig>\n",
    )
    .unwrap();

    let (stdout, stderr) = run_ok(
        Command::new(&bin)
            .args(TINY_DEMO)
            .current_dir(&work)
            .env_clear()
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_DIRS", &home)
            .env("XDG_CONFIG_DIRS", &home)
            .env("FONTCONFIG_FILE", &fonts_conf)
            .env("FONTCONFIG_PATH", root.path()),
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("built into divnet"), "{stderr}");
    assert!(
        stdout.contains("wrote report.json, table.txt, accuracy.png, one_layer.png, diversity.png"),
        "{stdout}"
    );

    let out = work.join("divnet-demo");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["calibration_rows"].as_u64(), Some(200));
    assert_eq!(report["test_rows"].as_u64(), Some(10000));
    let full = report["full_accuracy"].as_f64().unwrap();
    assert!((full - 0.8883).abs() < 5e-4, "full accuracy {full}");
    let table = std::fs::read_to_string(out.join("table.txt")).unwrap();
    assert!(
        table.contains("kdpp + fusion") && stdout.contains(&table),
        "table.txt is not the printed table:\n{table}"
    );
    for name in ["accuracy.png", "one_layer.png", "diversity.png"] {
        assert_png_with_caption(&out.join(name));
    }
}

/// A figure that cannot be written is a warning naming it: the tables, written first, and
/// the other figures stay, the exit code is 0, and no temporary file is left behind.
#[test]
fn a_plot_that_cannot_be_written_is_a_warning_not_a_lost_run() {
    let out = tempfile::tempdir().unwrap();
    // A folder where the plot should go: renaming the finished picture onto it fails.
    let blocked = out.path().join("accuracy.png");
    std::fs::create_dir(&blocked).unwrap();
    let (stdout, stderr) = run_ok(
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(TINY_DEMO)
            .args(["--no-one-layer", "--out"])
            .arg(out.path()),
    );
    let warning = format!("divnet: warning: {} not written", blocked.display());
    assert!(stderr.contains(&warning), "{stderr}");
    assert!(
        stdout.contains("wrote report.json, table.txt, diversity.png to"),
        "{stdout}"
    );
    for name in ["report.json", "table.txt"] {
        let meta = std::fs::metadata(out.path().join(name)).unwrap();
        assert!(meta.len() > 100, "{name} is nearly empty");
    }
    assert_png_with_caption(&out.path().join("diversity.png"));
    assert!(blocked.is_dir());
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["accuracy.png", "diversity.png", "report.json", "table.txt"]
    );
}

/// `--data` names a folder that lacks the files: one error line naming the file, exit 2.
#[test]
fn demo_with_a_data_folder_without_the_files_names_the_missing_file() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_divnet"))
        .args(TINY_DEMO)
        .arg("--data")
        .arg(empty.path())
        .arg("--out")
        .arg(out.path().join("demo"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    let missing = empty.path().join("mlp-784-1000-1000-10.safetensors");
    assert!(
        stderr.starts_with("divnet: error: ")
            && stderr.contains(&missing.display().to_string())
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.path().join("demo").exists());
}

/// A model that does not fit the demo's data, a `--seeds` of 0 or more calibration rows than
/// there are is refused before the output folder is made, naming what does not fit.
#[test]
fn demo_refuses_a_model_that_does_not_fit_its_data_before_making_the_folder() {
    use divnet::io::safetensors::write_safetensors;
    use divnet::model::{Activation, Mlp};
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            vec![20, 8, 10],
            "the model takes 20 inputs, but the demo's images have 784",
        ),
        (
            vec![784, 8, 5],
            "the model has 5 outputs, but the demo's labels go up to 9",
        ),
        (
            vec![784, 8, 10],
            "--sizes: cannot keep 10 neurons: the narrowest hidden layer",
        ),
    ];
    for (i, (dims, needle)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("m{i}.safetensors"));
        let mlp = Mlp::init(dims, Activation::Relu, 1);
        write_safetensors(&model, &mlp.to_tensors(&Default::default()).unwrap()).unwrap();
        let out = dir.path().join(format!("demo{i}"));
        let result = Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(TINY_DEMO)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.contains(needle), "{dims:?}: {last}");
        if i < 2 {
            assert!(last.contains(&model.display().to_string()), "{last}");
        }
        assert!(!out.exists(), "{dims:?}: the output folder was made");
    }
    for (args, needle) in [
        (&["--seeds", "0"][..], "at least one draw is needed"),
        (
            &["--calibration-rows", "99999"][..],
            "--calibration-rows 99999: the calibration set has 5000 images",
        ),
    ] {
        let result = Command::new(env!("CARGO_BIN_EXE_divnet"))
            .arg("demo")
            .args(args)
            .arg("--out")
            .arg(dir.path().join("never"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!dir.path().join("never").exists());
    }
}
