//! `divnet bench` end to end on tiny sizes: one table per operation, the machine named, the
//! JSON report holding the same figures (one readback per GPU product), software-adapter
//! skips said, and bad arguments refused with one error line.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_divnet");

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("bench").args(args).output().unwrap()
}

#[test]
fn prints_tables_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = bench(&[
        "--rows",
        "300",
        "--sizes",
        "70,130",
        "--f16",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CPU: ") && stderr.contains("threads"),
        "{stderr}"
    );
    for op in ["gram (", "rbf (", "fusion ("] {
        assert!(stdout.contains(op), "no {op} table: {stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["dtype"], "f16");
    let rows = report["measurements"].as_array().unwrap();
    let gpu = divnet::gpu::test_context().is_some();
    // CPU: 3 operations x 2 sizes; GPU: gram and rbf from host and device, fusion from host.
    let expected = if gpu { 6 + 10 } else { 6 };
    assert_eq!(rows.len(), expected, "{report:#}");
    for r in rows {
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        let m = r["m"].as_u64().unwrap() as f64;
        let n = r["n"].as_u64().unwrap() as f64;
        if r["operation"] != "fusion" {
            assert_eq!(r["flops"].as_f64().unwrap(), 2.0 * m * n * n);
        }
        if r["backend"] == "gpu" && r["operation"] != "fusion" {
            assert_eq!(r["gpu"]["readbacks"], 1, "{r:#}");
        }
    }
    if gpu {
        assert!(
            report["environment"]["adapter"].as_str().is_some(),
            "{report:#}"
        );
        assert!(stdout.contains("GPU/CPU"), "{stdout}");
    }
}

#[test]
fn software_adapter_runs_over_the_limit_are_skipped_with_a_reason() {
    if !divnet::gpu::test_context().is_some_and(|c| c.is_software()) {
        return;
    }
    let out = bench(&[
        "--rows",
        "200",
        "--sizes",
        "64",
        "--ops",
        "gram",
        "--software-gflop-limit",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("skipped: gram on gpu") && stdout.contains("software adapter"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_one_error_line() {
    for args in [
        &["--ops", "gram,nope"][..],
        &["--sizes", "0x"][..],
        &["--activations", "/nonexistent/a.npy"][..],
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("divnet: error:"), "{args:?}: {stderr}");
    }
    // A wrong operation lists the right ones; --no-cpu --no-gpu says what it left out.
    let out = bench(&["--ops", "gemm"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[possible values: gram, rbf, fusion]"),
        "{stderr}"
    );
    let out = bench(&["--no-cpu", "--no-gpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--no-cpu and --no-gpu leave out both"),
        "{stderr}"
    );
}

/// The help shows the default widths as the option takes them (commas), and they are the
/// library's.
#[test]
fn help_shows_the_library_default_sizes() {
    let out = bench(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let sizes: Vec<String> = divnet::bench::DEFAULT_SIZES
        .iter()
        .map(|n| n.to_string())
        .collect();
    let shown = format!("[default: {}]", sizes.join(","));
    assert!(help.contains(&shown), "{shown} missing: {help}");
}
