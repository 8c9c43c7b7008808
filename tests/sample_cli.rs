//! `divnet sample` driven as a user would: a small kernel written as npy, the binary run on it.

use std::path::Path;
use std::process::{Command, Output};

use divnet::io::npy::write_npy;

fn divnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divnet"))
        .arg("sample")
        .args(args)
        .output()
        .expect("running divnet")
}

/// An RBF kernel over n points on a line, plus 1e-6 I (f64, row-major).
fn write_kernel(path: &Path, n: usize) {
    let data: Vec<f64> = (0..n * n)
        .map(|t| {
            let (i, j) = (t / n, t % n);
            let x = (i as f64 - j as f64) / n as f64;
            (-20.0 * x * x).exp() + if i == j { 1e-6 } else { 0.0 }
        })
        .collect();
    write_npy(path, &[n, n], &data).unwrap();
}

fn lines(out: &Output) -> Vec<Vec<usize>> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("divnet: error: "), "{err}");
    assert!(last.contains(needle), "expected {needle:?} in {last:?}");
}

#[test]
fn k_dpp_dpp_and_greedy_lines() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("L.npy");
    write_kernel(&kernel, 20);
    let k = kernel.to_str().unwrap();

    let out = divnet(&["--kernel", k, "-k", "4", "--samples", "5", "--seed", "7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let draws = lines(&out);
    assert_eq!(draws.len(), 5);
    for y in &draws {
        assert_eq!(y.len(), 4);
        assert!(y.windows(2).all(|w| w[0] < w[1]) && y[3] < 20);
    }
    let again = divnet(&["--kernel", k, "-k", "4", "--samples", "5", "--seed", "7"]);
    assert_eq!(out.stdout, again.stdout, "same seed, same lines");

    let out = divnet(&["--kernel", k, "--dpp", "--samples", "3"]);
    assert!(out.status.success());
    assert_eq!(lines(&out).len(), 3);

    let out = divnet(&["--kernel", k, "--greedy", "3"]);
    assert!(out.status.success());
    let y = &lines(&out)[0];
    assert_eq!(y.len(), 3);
    assert!(y.windows(2).all(|w| w[0] < w[1]));

    let file = dir.path().join("out.jsonl");
    let out = divnet(&[
        "--kernel",
        k,
        "-k",
        "2",
        "--samples",
        "2",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("L.npy");
    write_kernel(&kernel, 6);
    let k = kernel.to_str().unwrap();
    assert_one_line_error(&divnet(&["--kernel", k, "-k", "7"]), "n = 6");
    assert_one_line_error(&divnet(&["--kernel", k, "-k", "0"]), "at least 1");

    let rect = dir.path().join("rect.npy");
    write_npy(&rect, &[2, 3], &[1.0f64; 6]).unwrap();
    assert_one_line_error(
        &divnet(&["--kernel", rect.to_str().unwrap(), "-k", "1"]),
        "square",
    );

    let asym = dir.path().join("asym.npy");
    write_npy(&asym, &[2, 2], &[1.0f64, 0.5, 0.0, 1.0]).unwrap();
    assert_one_line_error(
        &divnet(&["--kernel", asym.to_str().unwrap(), "--dpp"]),
        "not symmetric",
    );

    let missing = dir.path().join("missing.npy");
    assert_one_line_error(
        &divnet(&["--kernel", missing.to_str().unwrap(), "-k", "1"]),
        "missing.npy",
    );
}

#[test]
fn activations_give_the_same_draws_as_their_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (40usize, 12usize);
    let acts: Vec<f32> = (0..m * n)
        .map(|t| ((t * 7919 % 97) as f32 / 97.0 - 0.5) * (1.0 + (t % n) as f32 / 4.0))
        .collect();
    let a = dir.path().join("A.npy");
    write_npy(&a, &[m, n], &acts).unwrap();
    let l = dir.path().join("L.npy");
    let made = Command::new(env!("CARGO_BIN_EXE_divnet"))
        .args([
            "kernel",
            "--activations",
            a.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .args(["--beta", "median", "--out", l.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let common = ["-k", "4", "--samples", "3", "--seed", "5"];
    let from_acts = divnet(
        &[
            &[
                "--activations",
                a.to_str().unwrap(),
                "--beta",
                "median",
                "--backend",
                "cpu",
            ][..],
            &common[..],
        ]
        .concat(),
    );
    assert!(
        from_acts.status.success(),
        "{}",
        String::from_utf8_lossy(&from_acts.stderr)
    );
    let from_kernel = divnet(&[&["--kernel", l.to_str().unwrap()][..], &common[..]].concat());
    assert!(from_kernel.status.success());
    assert_eq!(lines(&from_acts).len(), 3);
    assert_eq!(from_acts.stdout, from_kernel.stdout);
}
