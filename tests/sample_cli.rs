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

    // The kernel options build a kernel from activations: given with a kernel, they would
    // be ignored, so they are refused.
    for option in [["--beta", "median"], ["--eps", "5"], ["--backend", "gpu"]] {
        let mut args = vec!["--kernel", k, "-k", "2"];
        args.extend(option);
        assert_one_line_error(&divnet(&args), "cannot be used with");
    }
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

/// Activations and a next layer that reads them, written as a user would have them.
fn write_layer(dir: &Path, m: usize, n: usize, n_out: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use divnet::io::safetensors::{write_safetensors, Tensor, TensorFile};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let acts: Vec<f32> = (0..m * n)
        .map(|_| rng.random_range(-0.3f32..1.0).max(0.0))
        .collect();
    let w: Vec<f32> = (0..n_out * n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let b: Vec<f32> = (0..n_out).map(|_| rng.random_range(-1.0..1.0)).collect();
    write_npy(&dir.join("A.npy"), &[m, n], &acts).unwrap();
    let mut file = TensorFile::default();
    file.insert(
        "down.weight".into(),
        Tensor::from_f32(&w, vec![n_out, n], safetensors::Dtype::F32).unwrap(),
    );
    file.insert(
        "down.bias".into(),
        Tensor::from_f32(&b, vec![n_out], safetensors::Dtype::F32).unwrap(),
    );
    write_safetensors(&dir.join("M.safetensors"), &file).unwrap();
    (acts, w, b)
}

#[test]
fn fusion_greedy_fusion_swap_and_the_quality_kernel_from_activations_and_the_next_layer() {
    use divnet::dpp::{greedy_map, GreedyStop};
    use divnet::fusion::NextLayer;
    use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
    use divnet::select::quality::{quality_kernel, quality_scores};
    use divnet::select::{fusion_greedy, fusion_swap, QUALITY};
    use divnet::Backend;

    let dir = tempfile::tempdir().unwrap();
    let (m, n, n_out) = (50, 14, 6);
    let (acts, w, b) = write_layer(dir.path(), m, n, n_out);
    let a = dir.path().join("A.npy");
    let model = dir.path().join("M.safetensors");
    let layer = [
        "--activations",
        a.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
        "--next",
        "down",
        "--backend",
        "cpu",
    ];
    let run = |extra: &[&str]| divnet(&[&layer[..], extra].concat());

    // The library's answers on the statistics and kernel the command builds.
    let rows = ActivationRows::F32(&acts);
    let stats = gram_stats(&Backend::Cpu, rows, n).unwrap();
    let next = [NextLayer {
        weight: &w,
        bias: Some(&b),
        n_out,
        n_in: n,
    }];
    let mut want = fusion_greedy(&stats, &next, 5).unwrap().order;
    want.sort_unstable();
    let out = run(&["--fusion-greedy", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out), vec![want]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("predicted next-layer error"));

    let swapped = fusion_swap(&stats, &next, 5).unwrap();
    let out = run(&["--fusion-swap", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out), vec![swapped.kept.clone()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} swaps in {} passes over the rows after fusion-greedy",
            swapped.swaps, swapped.passes
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "predicted next-layer error after fusion {:.6}",
            swapped.relative_error()
        )),
        "{stderr}"
    );

    let l = rbf_kernel(&Backend::Cpu, rows, n, Beta::Paper, 1e-6).unwrap();
    let scores = quality_scores(&stats, &next, QUALITY).unwrap();
    let lq = quality_kernel(l.matrix.as_ref(), &scores).unwrap();
    let mut want = greedy_map(lq.as_ref(), GreedyStop::Count(4)).unwrap();
    want.sort_unstable();
    let out = run(&["--quality", "--greedy", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out), vec![want]);

    let draws = run(&["--quality", "-k", "4", "--samples", "3", "--seed", "2"]);
    assert!(draws.status.success());
    assert_eq!(lines(&draws).len(), 3);
    assert_eq!(
        draws.stdout,
        run(&["--quality", "-k", "4", "--samples", "3", "--seed", "2"]).stdout
    );

    // What fusion-greedy and the quality kernel cannot do without.
    let kernel = dir.path().join("L.npy");
    write_kernel(&kernel, n);
    let k = kernel.to_str().unwrap();
    assert_one_line_error(
        &divnet(&["--kernel", k, "--fusion-greedy", "3"]),
        "a kernel alone does not say what the next layer reads",
    );
    assert_one_line_error(
        &divnet(&["--activations", a.to_str().unwrap(), "--quality", "-k", "3"]),
        "--quality needs the layer's activations and the layers that read them",
    );
    assert_one_line_error(
        &run(&["-k", "3"]),
        "only used by --fusion-greedy, --fusion-swap and --quality",
    );
    assert_one_line_error(
        &run(&["--fusion-greedy", "3", "--samples", "2"]),
        "deterministic",
    );
    assert_one_line_error(&run(&["--fusion-greedy", "15"]), "between 1 and 14");
    assert_one_line_error(&run(&["--fusion-swap", "15"]), "between 1 and 14");
    assert_one_line_error(
        &divnet(&[&layer[..4], &["--next", "down,down", "--fusion-swap", "3"]].concat()),
        "next layer down is given twice",
    );
    assert_one_line_error(
        &divnet(&[&layer[..4], &["--next", "down,", "--fusion-swap", "3"]].concat()),
        "a layer's name is empty",
    );
    assert_one_line_error(
        &divnet(&[&layer[..4], &["--next", " down", "--fusion-swap", "3"]].concat()),
        "layer name \" down\" has spaces around it",
    );
    assert_one_line_error(
        &run(&["--fusion-swap", "3", "--samples", "2"]),
        "deterministic",
    );
    assert_one_line_error(
        &divnet(&["--kernel", k, "--fusion-swap", "3"]),
        "--fusion-swap needs the layer's activations",
    );
    assert_one_line_error(
        &run(&["--fusion-greedy", "3", "--quality"]),
        "'--fusion-greedy <K>' cannot be used with '--quality'",
    );
}
