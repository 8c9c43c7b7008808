//! The layer-by-layer pipeline and the experiment, end to end on tiny MLPs.

use divnet::compress::{compress_mlp, CompressOptions, KeepSpec, NoProgress};
use divnet::experiment::{
    run_experiment, ExperimentConfig, ExperimentData, FINETUNE_VARIANTS, VARIANTS,
};
use divnet::fusion::{FusionMode, FusionOptions};
use divnet::io::safetensors::{read_safetensors, write_safetensors};
use divnet::kernel::Beta;
use divnet::model::{Activation, Mlp};
use divnet::select::SelectionMethod;
use divnet::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_inputs(m: usize, d: usize, seed: u64) -> Vec<f32> {
    uniform_values(&mut ChaCha8Rng::seed_from_u64(seed), m * d)
}

/// `len` values `U(-1, 1)`.
fn uniform_values(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `len` ReLU activations, `max(U(-0.3, 1), 0)`: about a quarter of them zero.
fn relu_values(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-0.3f32..1.0).max(0.0))
        .collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = a
        .iter()
        .map(|x| x.abs() as f64)
        .fold(0.0, f64::max)
        .max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn every_method_gives_consistent_shapes_and_names() {
    let mlp = Mlp::init(&[6, 12, 9, 3], Activation::Relu, 1);
    let x = random_inputs(200, 6, 2);
    for method in SelectionMethod::ALL
        .into_iter()
        .filter(|&m| m != SelectionMethod::Dpp)
    {
        let mut opts = CompressOptions::new(vec![KeepSpec::Count(5), KeepSpec::Count(4)]);
        opts.method = method;
        let (out, report) =
            compress_mlp(&Backend::Cpu, &mlp, &x, 200, &opts, &mut NoProgress).unwrap();
        let dims: Vec<(usize, usize)> = out.layers.iter().map(|l| (l.out_dim, l.in_dim)).collect();
        assert_eq!(dims, vec![(5, 6), (4, 5), (3, 4)], "{method}");
        for l in &out.layers {
            assert_eq!(l.weight.len(), l.out_dim * l.in_dim);
            assert_eq!(l.bias.len(), l.out_dim);
            assert!(
                l.weight.iter().chain(&l.bias).all(|v| v.is_finite()),
                "{method}"
            );
        }
        assert_eq!(report.layers.len(), 2);
        assert_eq!(report.layers[0].kept.len(), 5);
        assert_eq!(report.layers[0].method, method.name());
        assert!(report.params_after < report.params_before);
        let y = out.forward(&x[..6 * 10], 10);
        assert_eq!(y.len(), 30);
    }
}

/// A hidden layer whose second half are positive multiples of the first half (and so, after
/// relu, exact multiples of them): keeping the first half and fusing the rest must reproduce
/// the network's output on every input, not only on the calibration set.
#[test]
fn fusion_is_exact_for_a_reconstructible_layer_network_wide() {
    let mut mlp = Mlp::init(&[5, 8, 4], Activation::Relu, 3);
    {
        let l0 = &mut mlp.layers[0];
        for i in 4..8 {
            let scale = 1.0 + i as f32 * 0.25;
            for j in 0..5 {
                l0.weight[i * 5 + j] = scale * l0.weight[(i - 4) * 5 + j];
            }
            l0.bias[i] = scale * l0.bias[i - 4];
        }
    }
    let x = random_inputs(300, 5, 4);
    let opts = CompressOptions::new(vec![KeepSpec::Indices(vec![0, 1, 2, 3])]);
    let (out, report) = compress_mlp(&Backend::Cpu, &mlp, &x, 300, &opts, &mut NoProgress).unwrap();
    assert_eq!(out.layers[0].out_dim, 4);
    // The reported error comes from G (accumulated from f32 activations), so its floor is
    // about the square root of f32 rounding; the network-level check below is the strict one.
    assert!(
        report.layers[0].relative_error < 1e-3,
        "{}",
        report.layers[0].relative_error
    );
    let fresh = random_inputs(50, 5, 99);
    let diff = max_rel_diff(&mlp.forward(&fresh, 50), &out.forward(&fresh, 50));
    assert!(diff < 1e-4, "outputs differ by {diff}");

    // Pruning the same neurons instead loses what they carried.
    let mut prune = opts.clone();
    prune.fusion = FusionOptions {
        mode: FusionMode::Prune,
        ..FusionOptions::default()
    };
    let (pruned, _) = compress_mlp(&Backend::Cpu, &mlp, &x, 300, &prune, &mut NoProgress).unwrap();
    assert!(max_rel_diff(&mlp.forward(&fresh, 50), &pruned.forward(&fresh, 50)) > 1e-2);
}

#[test]
fn compressed_model_round_trips_through_safetensors_with_pytorch_names() {
    let mlp = Mlp::init(&[4, 10, 6, 2], Activation::Tanh, 5);
    let template = mlp.to_tensors(&Default::default()).unwrap();
    let x = random_inputs(100, 4, 6);
    let mut opts = CompressOptions::new(vec![KeepSpec::Ratio(0.5)]);
    opts.beta = Beta::Median;
    let (out, _) = compress_mlp(&Backend::Cpu, &mlp, &x, 100, &opts, &mut NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    write_safetensors(&path, &out.to_tensors(&template).unwrap()).unwrap();
    let back = read_safetensors(&path).unwrap();
    // safetensors stores tensors sorted, so compare the sets of names.
    let mut names: Vec<&str> = back.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut template_names: Vec<&str> = template.tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    template_names.sort_unstable();
    assert_eq!(names, template_names);
    let reread = Mlp::from_tensors(&back, None, Activation::Tanh).unwrap();
    let dims: Vec<usize> = reread.layers.iter().map(|l| l.out_dim).collect();
    assert_eq!(dims, vec![5, 3, 2]);
    let diff = max_rel_diff(&out.forward(&x, 100), &reread.forward(&x, 100));
    assert!(diff < 1e-6);
}

#[test]
fn bad_keep_requests_are_errors() {
    let mlp = Mlp::init(&[3, 6, 2], Activation::Relu, 7);
    let x = random_inputs(40, 3, 8);
    for keep in [
        KeepSpec::Count(7),
        KeepSpec::Count(0),
        KeepSpec::Ratio(1.5),
        KeepSpec::Indices(vec![1, 1]),
        KeepSpec::Indices(vec![6]),
        KeepSpec::Indices(vec![]),
    ] {
        let opts = CompressOptions::new(vec![keep.clone()]);
        assert!(
            compress_mlp(&Backend::Cpu, &mlp, &x, 40, &opts, &mut NoProgress).is_err(),
            "{keep:?} accepted"
        );
    }
    let opts = CompressOptions::new(vec![KeepSpec::Count(2), KeepSpec::Count(2)]);
    assert!(compress_mlp(&Backend::Cpu, &mlp, &x, 40, &opts, &mut NoProgress).is_err());

    // Every layer's size is checked before any work, and the error names the layer: the
    // progress sees no stage start.
    struct Stages(Vec<String>);
    impl divnet::progress::Progress for Stages {
        fn start(&mut self, stage: &str, _total: u64) {
            self.0.push(stage.into());
        }
        fn advance(&mut self, _n: u64) {}
        fn finish(&mut self) {}
    }
    let deep = Mlp::init(&[3, 6, 4, 2], Activation::Relu, 7);
    let opts = CompressOptions::new(vec![KeepSpec::Count(3), KeepSpec::Count(5)]);
    let mut stages = Stages(Vec::new());
    let err = compress_mlp(&Backend::Cpu, &deep, &x, 40, &opts, &mut stages).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("fc2: cannot keep 5 of 4 neurons"),
        "{err}"
    );
    assert!(stages.0.is_empty(), "work started: {:?}", stages.0);
}

#[test]
fn experiment_runs_on_a_reduced_grid() {
    // A separable toy problem so that accuracies mean something.
    let (d, m) = (8, 400);
    let x = random_inputs(m, d, 11);
    let labels: Vec<u32> = x.chunks(d).map(|r| (r[0] + r[1] > 0.0) as u32).collect();
    let mut mlp = Mlp::init(&[d, 16, 12, 2], Activation::Relu, 12);
    let cfg = divnet::model::TrainConfig {
        epochs: 30,
        batch_size: 32,
        learning_rate: 1e-2,
        optimizer: divnet::model::Optimizer::Adam,
        seed: 0,
    };
    divnet::model::train(&mut mlp, &x, m, &labels, &cfg, &mut |_, _| {}, &mut |_| {}).unwrap();
    let data = ExperimentData {
        model: &mlp,
        calibration: &x[..200 * d],
        calibration_labels: &labels[..200],
        test: &x[200 * d..],
        test_labels: &labels[200..],
    };
    let cfg = ExperimentConfig {
        sizes: vec![3, 6],
        seeds: 2,
        beta: Beta::Paper,
        eps: 1e-6,
        chunk_rows: 64,
        heatmap_size: 6,
        one_layer_at_a_time: true,
        finetune_size: Some(6),
    };
    let r = run_experiment(&Backend::Cpu, &data, &cfg, &mut NoProgress).unwrap();
    assert!(
        r.full_accuracy > 0.8,
        "toy network failed to train: {}",
        r.full_accuracy
    );
    assert_eq!(r.curves.len(), 3 * VARIANTS.len());
    for c in &r.curves {
        assert_eq!(c.points.len(), 2);
        for p in &c.points {
            let draws = if c.variant.method.is_random() { 2 } else { 1 };
            assert_eq!(p.accuracies.len(), draws, "{}", c.label);
            assert!(p.accuracies.iter().all(|a| (0.0..=1.0).contains(a)));
            // Where a network predicts what the full one does, it is right or wrong with
            // it, so accuracies can differ only by the share of images where they disagree.
            assert_eq!(p.agreements.len(), draws, "{}", c.label);
            for (&acc, &agree) in p.accuracies.iter().zip(&p.agreements) {
                assert!((0.0..=1.0).contains(&agree), "{}", c.label);
                assert!(
                    (acc - r.full_accuracy).abs() <= 1.0 - agree + 1e-12,
                    "{}: accuracy {acc} vs full {} with agreement {agree}",
                    c.label,
                    r.full_accuracy
                );
            }
        }
    }
    assert_eq!(r.heatmaps.len(), 2);
    assert_eq!(r.heatmaps[0].values.len(), 36);
    assert_eq!(r.diversity.len(), 2);
    assert_eq!(
        r.finetune.len(),
        FINETUNE_VARIANTS.len(),
        "fine-tune requested"
    );
    for ft in &r.finetune {
        let draws = if ft.variant.method.is_random() { 2 } else { 1 };
        assert_eq!(ft.before_draws.len(), draws, "{}", ft.label);
        assert_eq!(ft.after_draws.len(), draws, "{}", ft.label);
        assert!((0.0..=1.0).contains(&ft.after), "{}", ft.label);
        assert_eq!(ft.kept, 6);
    }
}

/// Fusion-greedy and fusion-swap through the pipeline on a tiny MLP: the first layer's
/// selection and error are what the library's selection predicts from the first layer's
/// statistics, and the error is that of the compressed network's next pre-activation on the
/// calibration inputs; the swaps' error is at most greedy's.
#[test]
fn fusion_greedy_and_swap_through_compress_mlp_predict_the_next_layers_error() {
    let greedy = rule_through_compress_mlp(SelectionMethod::FusionGreedy);
    let swapped = rule_through_compress_mlp(SelectionMethod::FusionSwap);
    assert!(swapped <= greedy * (1.0 + 1e-9), "{swapped} vs {greedy}");
}

/// The first layer's reported error after compressing it by `method` (checks in the caller).
fn rule_through_compress_mlp(method: SelectionMethod) -> f64 {
    use divnet::compress::observe_hidden_layer;
    use divnet::fusion::NextLayer;
    use divnet::select::{fusion_greedy, fusion_swap};

    let mlp = Mlp::init(&[6, 14, 9, 3], Activation::Relu, 21);
    let (m, d) = (300, 6);
    let x = random_inputs(m, d, 22);
    let mut opts = CompressOptions::new(vec![KeepSpec::Count(5), KeepSpec::All]);
    opts.method = method;
    let (out, report) = compress_mlp(&Backend::Cpu, &mlp, &x, m, &opts, &mut NoProgress).unwrap();
    assert_eq!(report.layers.len(), 1);
    let layer = &report.layers[0];
    assert_eq!(layer.method, method.name());

    let obs =
        observe_hidden_layer(&Backend::Cpu, &mlp, &x, m, 0, 64, false, &mut NoProgress).unwrap();
    let fc2 = &mlp.layers[1];
    let next = NextLayer {
        weight: &fc2.weight,
        bias: Some(&fc2.bias),
        n_out: fc2.out_dim,
        n_in: fc2.in_dim,
    };
    let (want, predicted) = if method == SelectionMethod::FusionSwap {
        let selection = fusion_swap(&obs.stats, &[next], 5).unwrap();
        // The report says how the search went.
        assert_eq!(layer.swap_search, Some(selection.search()));
        (selection.kept.clone(), selection.relative_error())
    } else {
        assert_eq!(layer.swap_search, None);
        let selection = fusion_greedy(&obs.stats, &[next], 5).unwrap();
        let mut order = selection.order.clone();
        order.sort_unstable();
        (order, selection.relative_error(5))
    };
    assert_eq!(layer.kept, want);
    assert!(
        (layer.relative_error - predicted).abs() < 1e-5 * predicted.max(1e-3),
        "reported {} vs predicted {predicted}",
        layer.relative_error
    );

    // fc2's pre-activation on the calibration inputs, original against compressed.
    let pre = |net: &Mlp| -> Vec<f64> {
        let h = net.hidden(&x, m, 0);
        let l = &net.layers[1];
        (0..m)
            .flat_map(|t| (0..l.out_dim).map(move |o| (t, o)))
            .map(|(t, o)| {
                l.bias[o] as f64
                    + (0..l.in_dim)
                        .map(|i| h[t * l.in_dim + i] as f64 * l.weight[o * l.in_dim + i] as f64)
                        .sum::<f64>()
            })
            .collect()
    };
    let (z, z2) = (pre(&mlp), pre(&out));
    let err: f64 = z.iter().zip(&z2).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = z.iter().map(|a| a * a).sum();
    let direct = (err / norm).sqrt();
    assert!(
        (direct - predicted).abs() < 1e-3 * predicted,
        "on the data {direct} vs predicted {predicted}"
    );
    layer.relative_error
}

/// `divnet compress --backend cpu` on `model` and `calib`, for the caller's other options.
fn compress_command(model: &std::path::Path, calib: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_divnet"));
    c.args(["compress", "--backend", "cpu", "--model"])
        .arg(model)
        .arg("--calibration")
        .arg(calib);
    c
}

/// `divnet compress --select fusion-greedy` (and fusion-swap) as a user runs it: the report
/// names the method and gives each layer's error, the model shrinks as asked.
#[test]
fn compress_cli_runs_fusion_greedy() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = Mlp::init(&[5, 12, 8, 3], Activation::Relu, 31);
    let model = dir.path().join("m.safetensors");
    write_safetensors(&model, &mlp.to_tensors(&Default::default()).unwrap()).unwrap();
    let calib = dir.path().join("c.npy");
    divnet::io::npy::write_npy(&calib, &[120, 5], &random_inputs(120, 5, 32)).unwrap();
    let (out, rep) = (dir.path().join("o.safetensors"), dir.path().join("r.json"));
    for rule in ["fusion-greedy", "fusion-swap"] {
        let run = compress_command(&model, &calib)
            .args(["--select", rule, "-k", "6,4", "--out"])
            .arg(&out)
            .arg("--report")
            .arg(&rep)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        assert_eq!(report["activation"], "relu");
        assert_eq!(report["inputs"]["model"], model.display().to_string());
        assert_eq!(report["inputs"]["calibration"], calib.display().to_string());
        let layers = report["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (l, k) in layers.iter().zip([6, 4]) {
            assert_eq!(l["method"], rule);
            assert_eq!(l["kept"].as_array().unwrap().len(), k);
            let e = l["relative_error"].as_f64().unwrap();
            assert!(e.is_finite() && (0.0..1.0).contains(&e), "{l}");
        }
        let small = Mlp::load(&out, None, Activation::Relu).unwrap();
        let dims: Vec<usize> = small.layers.iter().map(|l| l.out_dim).collect();
        assert_eq!(dims, vec![6, 4, 3]);
    }

    // --dpp is --select dpp: another method beside it is refused, not overridden.
    let conflict = compress_command(&model, &calib)
        .args(["--select", "fusion-greedy", "--dpp", "--out"])
        .arg(dir.path().join("never.safetensors"))
        .output()
        .unwrap();
    assert_eq!(conflict.status.code(), Some(2));
    let err = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        err.contains("'--select <SELECT>' cannot be used with '--dpp'"),
        "{err}"
    );
    assert!(!dir.path().join("never.safetensors").exists());
}

/// `compress_layer` with two next layers fuses both as one problem: the same kept set as
/// a single next layer holding both layers' rows, the same fused rows, each next layer's
/// own bias (one of them missing) kept or created; and it matches `compress_mlp` on the
/// same layer.
#[test]
fn compress_layer_fuses_several_next_layers_as_one_stack() {
    use divnet::compress::{compress_layer, LayerOptions};
    use divnet::fusion::NextLayer;
    use divnet::kernel::{ActivationRows, SliceRows};

    let (m, n) = (300, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let acts = relu_values(&mut rng, m * n);
    let w1 = uniform_values(&mut rng, 4 * n);
    let b1 = uniform_values(&mut rng, 4);
    let w2 = uniform_values(&mut rng, 3 * n);
    let stacked_w: Vec<f32> = w1.iter().chain(&w2).copied().collect();
    let stacked_b: Vec<f32> = b1.iter().copied().chain([0.0; 3]).collect();

    for method in [SelectionMethod::Importance, SelectionMethod::Greedy] {
        let mut opts = LayerOptions::new(KeepSpec::Count(6));
        opts.method = method;
        let run = |next: &[NextLayer]| {
            let mut source = SliceRows::new(ActivationRows::F32(&acts), n)
                .unwrap()
                .with_chunk_rows(64);
            compress_layer(&Backend::Cpu, &mut source, next, &opts, &mut NoProgress).unwrap()
        };
        let two = run(&[
            NextLayer {
                weight: &w1,
                bias: Some(&b1),
                n_out: 4,
                n_in: n,
            },
            NextLayer {
                weight: &w2,
                bias: None,
                n_out: 3,
                n_in: n,
            },
        ]);
        let one = run(&[NextLayer {
            weight: &stacked_w,
            bias: Some(&stacked_b),
            n_out: 7,
            n_in: n,
        }]);
        assert_eq!(two.kept, one.kept, "{method}");
        assert_eq!(two.kept.len(), 6);
        assert_eq!(two.next.len(), 2);
        let joined: Vec<f32> = two.next[0]
            .weight
            .iter()
            .chain(&two.next[1].weight)
            .copied()
            .collect();
        assert_eq!(joined, one.next[0].weight, "{method}");
        assert_eq!(two.next[0].bias, one.next[0].bias[..4], "{method}");
        assert_eq!(two.next[1].bias, one.next[0].bias[4..], "{method}");
        // The same error, up to the order of the sums (two groups' energies, then their sum).
        let (e2, e1) = (two.report.relative_error, one.report.relative_error);
        assert!((e2 - e1).abs() <= 1e-12 * e1, "{e2} vs {e1}");
        assert_eq!(two.report.samples, m);
        let stages: Vec<&str> = two.report.seconds.iter().map(|(s, _)| s.as_str()).collect();
        let want: &[&str] = if method.needs_kernel() {
            &[
                "statistics",
                "kernel",
                "select",
                "fuse (widening G)",
                "fuse",
            ]
        } else {
            &["statistics", "select", "fuse"]
        };
        assert_eq!(stages, want, "{method}");
    }
}

/// The one-pass route of a kernel method keeps G rounded to f32 until the fusion on the CPU
/// (the GPU engine hands G and D back together, so it keeps G in f64): the fused layer is
/// the one an f64 Gram gives, to within that rounding, and the plan and report say so.
#[test]
fn one_pass_fusion_from_the_rounded_gram_matches_an_f64_gram() {
    use divnet::compress::{compress_layer, LayerOptions, Route};
    use divnet::fusion::{fuse_next_layer, NextLayer};
    use divnet::kernel::{ActivationRows, GramStats, SliceRows};

    let (m, n, n_out) = (500, 24, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let acts = relu_values(&mut rng, m * n);
    let w = uniform_values(&mut rng, n_out * n);
    let b = uniform_values(&mut rng, n_out);
    let next = NextLayer {
        weight: &w,
        bias: Some(&b),
        n_out,
        n_in: n,
    };
    // The f64 reference statistics, by plain loops.
    let mut gram = faer::Mat::<f64>::zeros(n, n);
    let mut col_sums = vec![0.0; n];
    for row in acts.chunks_exact(n) {
        for i in 0..n {
            col_sums[i] += row[i] as f64;
            for j in 0..n {
                gram[(i, j)] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    let exact = GramStats {
        gram,
        col_sums,
        samples: m,
    };
    let mut backends = vec![Backend::Cpu];
    if let Some(ctx) = divnet::gpu::test_context() {
        backends.push(Backend::Gpu(std::sync::Arc::new(ctx)));
    }
    for backend in &backends {
        for method in [SelectionMethod::KDpp, SelectionMethod::Greedy] {
            let mut opts = LayerOptions::new(KeepSpec::Count(9));
            opts.method = method;
            opts.route = Some(Route::OnePass);
            let mut source = SliceRows::new(ActivationRows::F32(&acts), n)
                .unwrap()
                .with_chunk_rows(128);
            let out =
                compress_layer(backend, &mut source, &[next], &opts, &mut NoProgress).unwrap();
            let what = format!("{} {method}", backend.name());
            let want =
                fuse_next_layer(&Backend::Cpu, &exact, &out.kept, next, &opts.fusion).unwrap();
            let got = &out.next[0];
            let (dw, db) = (
                max_rel_diff(&got.weight, &want.weight),
                max_rel_diff(&got.bias, &want.bias),
            );
            assert!(dw < 1e-5 && db < 1e-5, "{what}: {dw:e} {db:e}");
            let (e, e_want) = (out.report.relative_error, want.relative_error);
            assert!(
                (e - e_want).abs() < 1e-5 * e_want,
                "{what}: {e} vs {e_want}"
            );
            let stages: Vec<&str> = out.report.seconds.iter().map(|(s, _)| s.as_str()).collect();
            let rounds = backend.gpu().is_none();
            assert_eq!(
                stages.contains(&"fuse (widening G)"),
                rounds,
                "{what}: {stages:?}"
            );
            let held: Vec<&str> = out
                .plan
                .memory
                .stages
                .iter()
                .find(|s| s.stage == "select")
                .unwrap()
                .holds
                .iter()
                .map(|a| a.what.as_str())
                .collect();
            assert_eq!(
                held.iter()
                    .any(|a| a.starts_with("the Gram matrix G in f32")),
                rounds,
                "{what}: {held:?}"
            );
        }
    }
}

/// The two routes of `compress_layer` (G beside the kernel in one pass, or the fusion's
/// statistics from a second pass after selection) keep the same neurons and fuse them into
/// the same next layers, several at once; the report says which route ran, its stages, the
/// plan and the peak memory after each stage. Importance selection needs G: the two-pass
/// route refuses it.
#[test]
fn both_routes_of_compress_layer_give_the_same_layer() {
    use divnet::compress::{compress_layer, LayerOptions, Route};
    use divnet::fusion::NextLayer;
    use divnet::kernel::{ActivationRows, SliceRows};

    let (m, n) = (400, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let acts = relu_values(&mut rng, m * n);
    let w1 = uniform_values(&mut rng, 5 * n);
    let b1 = uniform_values(&mut rng, 5);
    let w2 = uniform_values(&mut rng, 60 * n);
    let next = [
        NextLayer {
            weight: &w1,
            bias: Some(&b1),
            n_out: 5,
            n_in: n,
        },
        NextLayer {
            weight: &w2,
            bias: None,
            n_out: 60,
            n_in: n,
        },
    ];
    let run = |method, route| {
        let mut opts = LayerOptions::new(KeepSpec::Count(12));
        opts.method = method;
        opts.route = Some(route);
        let mut source = SliceRows::new(ActivationRows::F32(&acts), n)
            .unwrap()
            .with_chunk_rows(33);
        compress_layer(&Backend::Cpu, &mut source, &next, &opts, &mut NoProgress)
    };
    for method in [
        SelectionMethod::KDpp,
        SelectionMethod::Greedy,
        SelectionMethod::Random,
    ] {
        let one = run(method, Route::OnePass).unwrap();
        let two = run(method, Route::TwoPass).unwrap();
        assert_eq!(one.kept, two.kept, "{method}");
        // One pass builds G from the centred co-moments (f32 products per chunk, added in
        // f64) and, for the kernel methods, keeps them rounded to f32 until the fusion; the
        // second pass multiplies the kept rows in f32 over blocks of rows.
        for (a, b) in one.next.iter().zip(&two.next) {
            let dw = max_rel_diff(&a.weight, &b.weight);
            let db = max_rel_diff(&a.bias, &b.bias);
            assert!(dw < 5e-5 && db < 5e-5, "{method}: {dw:e} {db:e}");
        }
        let (e1, e2) = (one.report.relative_error, two.report.relative_error);
        assert!((e1 - e2).abs() < 1e-6 * e1, "{method}: {e1} vs {e2}");
        assert_eq!(one.report.diversity.is_some(), method.needs_kernel());
        if let (Some(d1), Some(d2)) = (one.report.diversity, two.report.diversity) {
            assert_eq!(d1.log_det, d2.log_det);
        }
        assert_eq!(
            (one.report.route.as_str(), two.report.route.as_str()),
            ("one-pass", "two-pass")
        );
        assert_eq!(
            (one.plan.route, two.plan.route),
            (Route::OnePass, Route::TwoPass)
        );
        let stages = |r: &divnet::compress::LayerOutcome| -> Vec<String> {
            r.report.seconds.iter().map(|(s, _)| s.clone()).collect()
        };
        let (s1, s2) = (stages(&one), stages(&two));
        if method.needs_kernel() {
            // G waits for the fusion in f32 beside the kernel, and is widened after it.
            assert_eq!(
                s1,
                [
                    "statistics",
                    "kernel",
                    "select",
                    "fuse (widening G)",
                    "fuse"
                ]
            );
            assert_eq!(
                s2,
                [
                    "statistics",
                    "kernel",
                    "select",
                    "fusion statistics",
                    "fuse"
                ]
            );
        } else {
            assert_eq!(s1, ["statistics", "select", "fuse"]);
            assert_eq!(
                s2,
                ["select", "fusion statistics", "fuse"],
                "no pass before selection"
            );
        }
        for outcome in [&one, &two] {
            let memory = &outcome.report.memory;
            assert_eq!(memory.peak_rss_after.len(), outcome.report.seconds.len());
            assert_eq!(memory.planned_peak_bytes, Some(outcome.plan.memory.peak()));
            if cfg!(target_os = "linux") {
                // VmHWM, read after each stage (the kernel syncs its counters lazily, so
                // successive reads are not strictly ordered: only their presence is checked).
                assert!(memory.peak_rss_after.iter().all(|p| p.1.is_some()));
                assert!(memory.peak_rss_bytes.is_some());
            }
        }
    }
    let mut opts = LayerOptions::new(KeepSpec::Count(12));
    opts.method = SelectionMethod::Importance;
    opts.route = Some(Route::TwoPass);
    let mut source = SliceRows::new(ActivationRows::F32(&acts), n).unwrap();
    let err = compress_layer(&Backend::Cpu, &mut source, &next, &opts, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("importance") && err.contains("one-pass"),
        "{err}"
    );
}

/// Greedy MAP on the columns route (kernel columns computed from the activations a batch
/// per pass, no n x n matrix) keeps the neurons it keeps on the two-pass route, with the
/// same fusion; the report says how many passes it took. Other methods are refused.
#[test]
fn greedy_from_kernel_columns_keeps_what_the_whole_kernel_keeps() {
    use divnet::compress::{compress_layer, LayerOptions, Route};
    use divnet::fusion::NextLayer;
    use divnet::kernel::{ActivationRows, SliceRows};

    let (m, n, n_out) = (300, 50, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let acts = relu_values(&mut rng, m * n);
    let w = uniform_values(&mut rng, n_out * n);
    let next = [NextLayer {
        weight: &w,
        bias: None,
        n_out,
        n_in: n,
    }];
    let run = |method, route| {
        let mut opts = LayerOptions::new(KeepSpec::Count(15));
        opts.method = method;
        opts.route = Some(route);
        let mut source = SliceRows::new(ActivationRows::F32(&acts), n)
            .unwrap()
            .with_chunk_rows(41);
        compress_layer(&Backend::Cpu, &mut source, &next, &opts, &mut NoProgress)
    };
    let two = run(SelectionMethod::Greedy, Route::TwoPass).unwrap();
    let columns = run(SelectionMethod::Greedy, Route::Columns).unwrap();
    assert_eq!(columns.kept, two.kept);
    let dw = max_rel_diff(&columns.next[0].weight, &two.next[0].weight);
    assert!(dw < 1e-6, "{dw:e}");
    assert_eq!(columns.report.route, "columns");
    let stages: Vec<&str> = columns
        .report
        .seconds
        .iter()
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(
        stages,
        ["statistics", "select", "fusion statistics", "fuse"]
    );
    assert!(
        columns
            .report
            .notes
            .iter()
            .any(|s| s.contains("passes over the activations")),
        "{:?}",
        columns.report.notes
    );
    let (d1, d2) = (
        columns.report.diversity.unwrap(),
        two.report.diversity.unwrap(),
    );
    assert!((d1.log_det - d2.log_det).abs() < 1e-5 * (1.0 + d2.log_det.abs()));
    // The plan holds no n x n matrix.
    let square = format!("({n} x {n} ");
    for stage in &columns.plan.memory.stages {
        for a in &stage.holds {
            assert!(!a.what.contains(&square), "{}: {}", stage.stage, a.what);
        }
    }
    let err = run(SelectionMethod::KDpp, Route::Columns)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("greedy MAP only"), "{err}");
}

/// A wide layer's kdpp draw holds L with the draw's eigenvectors, then, with L freed,
/// the eigenvectors with the projection sampler's basis: the plan has the two as separate
/// stages, and its peak is the larger, not their sum (n = 32768, k = 8192: 10.8 GB, where
/// the sum would be 15.1 GB). Nothing is allocated: the plan is arithmetic.
#[test]
fn a_wide_kdpp_plan_frees_the_kernel_before_sampling() {
    use divnet::compress::{plan_layer, KeepSpec, LayerOptions, Route};
    let (n, m, k, n_out) = (32768usize, 65536, 8192, 8192);
    let mut opts = LayerOptions::new(KeepSpec::Count(k));
    opts.route = Some(Route::TwoPass);
    let plan = plan_layer(&divnet::Backend::Cpu, n, m, &[n_out], &opts)
        .unwrap()
        .memory;
    let stage = |name: &str| {
        plan.stages
            .iter()
            .find(|s| s.stage == name)
            .unwrap_or_else(|| panic!("no stage {name} in {plan:?}"))
    };
    let holds_kernel = |name: &str| {
        stage(name)
            .holds
            .iter()
            .any(|a| a.what.starts_with("the kernel L"))
    };
    assert!(holds_kernel("select"));
    assert!(!holds_kernel("select (sampling)"));
    let nn = (n * n * 8) as u64;
    let (select, sampling) = (stage("select").bytes(), stage("select (sampling)").bytes());
    assert!(
        select > nn && select < nn + (n * (k + 1024) * 8) as u64,
        "{select}"
    );
    assert_eq!(sampling, (3 * n * k * 8) as u64);
    assert_eq!(plan.peak(), select.max(sampling));
    assert!(plan.peak() < 12 << 30, "{} bytes", plan.peak());
}

/// compress_layer_tensors reads the next layers' weights as f32 and releases their stored
/// bytes while it works: a layer that compresses gets its fused weights (f16 as stored, bf16
/// too), and one that fails (a NaN in the activations, found by the statistics pass) leaves
/// every tensor as it was, bytes included.
#[test]
fn next_weights_are_released_while_a_layer_compresses_and_restored_on_failure() {
    use divnet::compress::{compress_layer_tensors, LayerOptions, LayerTensors};
    use divnet::io::safetensors::{Tensor, TensorFile};
    use divnet::kernel::{ActivationRows, SliceRows};
    use safetensors::Dtype;

    let (m, n, n_out, k) = (60, 12, 5, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut values =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let mut file = TensorFile::default();
    let tensor = |v: &[f32], shape: Vec<usize>, dtype| Tensor::from_f32(v, shape, dtype).unwrap();
    file.insert(
        "up.weight".into(),
        tensor(&values(n * 3), vec![n, 3], Dtype::F32),
    );
    file.insert(
        "down.weight".into(),
        tensor(&values(n_out * n), vec![n_out, n], Dtype::F16),
    );
    file.insert(
        "down.bias".into(),
        tensor(&values(n_out), vec![n_out], Dtype::F32),
    );
    file.insert(
        "head.weight".into(),
        tensor(&values(2 * n), vec![2, n], Dtype::BF16),
    );
    let original = file.clone();
    let acts: Vec<f32> = values(m * n).iter().map(|v| v.max(0.0) + 0.01).collect();
    let (next, prev) = (["down".to_string(), "head".to_string()], ["up".to_string()]);
    let opts = LayerOptions::new(KeepSpec::Count(k));
    let run = |file: &mut TensorFile, acts: &[f32]| {
        let mut source = SliceRows::new(ActivationRows::F32(acts), n).unwrap();
        compress_layer_tensors(
            &Backend::Cpu,
            &mut source,
            LayerTensors {
                file,
                source: std::path::Path::new("weights"),
                activations: std::path::Path::new("acts"),
                next: &next,
                prev: &prev,
            },
            &opts,
            &mut NoProgress,
        )
    };

    let mut poisoned = acts.clone();
    poisoned[7 * n + 3] = f32::NAN;
    let mut failed = original.clone();
    assert!(run(&mut failed, &poisoned).is_err());
    assert_eq!(
        failed.tensors, original.tensors,
        "a failed compression changed the tensors"
    );

    let outcome = run(&mut file, &acts).unwrap();
    assert_eq!(outcome.kept.len(), k);
    for (name, rows, dtype) in [
        ("down.weight", n_out, Dtype::F16),
        ("head.weight", 2, Dtype::BF16),
    ] {
        let t = file.get(name).unwrap();
        assert_eq!((t.shape.clone(), t.dtype), (vec![rows, k], dtype), "{name}");
        assert_eq!(t.bytes.len(), rows * k * 2, "{name}");
    }
    assert_eq!(file.get("up.weight").unwrap().shape, vec![k, 3]);
}

/// `divnet compress` on an F16 model whose fused weights grow past 65504 (two identical
/// neurons read with weights 40000: fusion folds one into the other, 80000) refuses, naming
/// the model file and the tensor, and writes neither the model nor the report; the same
/// output paths are checked before any work (`--out` and `--report` naming one file).
#[test]
fn compress_cli_refuses_fused_weights_the_dtype_cannot_hold() {
    use divnet::io::safetensors::{Tensor, TensorFile};
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut w1 = uniform_values(&mut rng, 4 * 6);
    let first: Vec<f32> = w1[..6].to_vec();
    w1[6..12].copy_from_slice(&first);
    let w2: Vec<f32> = (0..8)
        .map(|i| if i < 4 { 40000.0 } else { -40000.0 })
        .collect();
    let mut file = TensorFile::default();
    let f16 = |v: &[f32], shape: Vec<usize>| Tensor::from_f32(v, shape, Dtype::F16).unwrap();
    file.insert("fc1.weight".into(), f16(&w1, vec![4, 6]));
    file.insert("fc1.bias".into(), f16(&[0.0; 4], vec![4]));
    file.insert("fc2.weight".into(), f16(&w2, vec![2, 4]));
    file.insert("fc2.bias".into(), f16(&[0.0; 2], vec![2]));
    let model = dir.path().join("m.safetensors");
    write_safetensors(&model, &file).unwrap();
    let calib = dir.path().join("c.npy");
    divnet::io::npy::write_npy(&calib, &[200, 6], &random_inputs(200, 6, 4)).unwrap();
    let (out, rep) = (dir.path().join("o.safetensors"), dir.path().join("r.json"));
    let run = |report: &std::path::Path| {
        compress_command(&model, &calib)
            .args(["--select", "fusion-greedy", "-k", "3", "--out"])
            .arg(&out)
            .arg("--report")
            .arg(report)
            .output()
            .unwrap()
    };
    let o = run(&rep);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or("");
    for needle in ["m.safetensors", "fc2.weight", "does not fit F16"] {
        assert!(last.contains(needle), "{last:?} lacks {needle:?}");
    }
    assert!(!out.exists() && !rep.exists());

    let o = run(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--out and --report name the same file"),
        "{err}"
    );
    assert!(
        !err.contains("next-layer error"),
        "the work ran first: {err}"
    );
}

/// A bias-free next layer gets a bias to hold the fused constant: `compress` says so (on
/// stderr and in the layer's notes), and `--no-bias` keeps the model bias-free.
#[test]
fn compress_cli_says_when_it_creates_a_bias() {
    let dir = tempfile::tempdir().unwrap();
    let mut mlp = Mlp::init(&[5, 12, 8, 3], Activation::Relu, 33);
    for l in &mut mlp.layers[1..] {
        l.has_bias = false;
        l.bias.fill(0.0);
    }
    let model = dir.path().join("m.safetensors");
    let file = mlp.to_tensors(&Default::default()).unwrap();
    assert!(file.get(&format!("{}.bias", mlp.layers[1].name)).is_none());
    write_safetensors(&model, &file).unwrap();
    let calib = dir.path().join("c.npy");
    divnet::io::npy::write_npy(&calib, &[200, 5], &random_inputs(200, 5, 34)).unwrap();
    let (out, rep) = (dir.path().join("o.safetensors"), dir.path().join("r.json"));
    for no_bias in [false, true] {
        let mut command = compress_command(&model, &calib);
        command.args(["--select", "importance", "-k", "6,4", "--out"]);
        command.arg(&out).arg("--report").arg(&rep);
        if no_bias {
            command.arg("--no-bias");
        }
        let run = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        let written = divnet::io::safetensors::read_safetensors(&out).unwrap();
        for (layer, next) in report["layers"].as_array().unwrap().iter().zip(1..) {
            let name = format!("{}.bias", mlp.layers[next].name);
            let noted = layer["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().starts_with(&format!("{name}: created")));
            assert_eq!(noted, !no_bias, "--no-bias {no_bias}: {layer}");
            assert_eq!(stderr.contains(&format!("{name}: created")), !no_bias);
            assert_eq!(written.get(&name).is_some(), !no_bias, "{name}");
        }
    }
}

/// A second head reading a hidden layer (`aux.weight [2, 8]` on fc2's 8 neurons) is not a
/// layer of the MLP that `--layers` picks: compressing fc2 would leave it at the old width
/// and the model would not load. Refused, naming it, with nothing written.
#[test]
fn compress_cli_refuses_to_leave_a_second_reader_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = Mlp::init(&[5, 12, 8, 3], Activation::Relu, 35);
    let mut file = mlp.to_tensors(&Default::default()).unwrap();
    let aux =
        divnet::io::safetensors::Tensor::from_f32(&[0.5; 16], vec![2, 8], safetensors::Dtype::F32)
            .unwrap();
    file.insert("aux.weight".into(), aux);
    let model = dir.path().join("m.safetensors");
    write_safetensors(&model, &file).unwrap();
    let calib = dir.path().join("c.npy");
    divnet::io::npy::write_npy(&calib, &[100, 5], &random_inputs(100, 5, 36)).unwrap();
    let out = dir.path().join("o.safetensors");
    let run = |keep: &str| {
        compress_command(&model, &calib)
            .args([
                "--layers",
                "fc1,fc2,fc3",
                "--select",
                "importance",
                "-k",
                keep,
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let refused = run("6,4");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("aux.weight [2, 8] reads the 8 neurons of fc2 (now 4)"),
        "{err}"
    );
    // Before the work: no layer was compressed.
    assert!(!err.contains("next-layer error"), "{err}");
    assert!(!out.exists());
    // fc2 kept whole: aux still fits.
    let kept = run("6,8");
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    // A layer of fc2's width in another module (a decoder's own) is no reader of fc2.
    let aux = file.remove("aux.weight").unwrap();
    file.insert("decoder.out.weight".into(), aux);
    write_safetensors(&model, &file).unwrap();
    let other = run("6,4");
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

/// Off a terminal, each stage of `compress` says which layer it belongs to (the
/// eigendecomposition of fc1 and that of fc2 had the same lines).
#[test]
fn compress_cli_progress_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = Mlp::init(&[5, 12, 8, 3], Activation::Relu, 37);
    let model = dir.path().join("m.safetensors");
    write_safetensors(&model, &mlp.to_tensors(&Default::default()).unwrap()).unwrap();
    let calib = dir.path().join("c.npy");
    divnet::io::npy::write_npy(&calib, &[200, 5], &random_inputs(200, 5, 38)).unwrap();
    let run = compress_command(&model, &calib)
        .args(["-k", "6,4", "--out"])
        .arg(dir.path().join("o.safetensors"))
        .env("DIVNET_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for layer in ["fc1", "fc2"] {
        assert!(
            stderr.contains(&format!("{layer}: fuse: done, 100%")),
            "{layer}: {stderr}"
        );
    }
}
