//! `divnet demo` on the shipped data, on a reduced grid: the whole main job end to end.

use std::process::Command;

#[test]
fn demo_runs_on_a_reduced_grid_and_writes_its_outputs() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_divnet"))
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
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "demo failed:\n{stdout}\n{stderr}");
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
    assert_eq!(curves.len(), 14, "one scope, fourteen variants");
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
}
