//! The MLP layer: forward pass against naive f64 loops, hidden activations, layer-order
//! inference, state-dict round trips, evaluation against a hand count, and training
//! (gradients against finite differences, loss reduction, determinism).

use std::collections::HashMap;

use divnet::io::safetensors::{write_safetensors, Tensor, TensorFile};
use divnet::model::{
    evaluate, evaluate_against, predict, train, Activation, EpochReport, Linear, Mlp, Optimizer,
    TrainConfig,
};
use divnet::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;

const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Gelu,
];

/// The activations in f64, written independently of the library (gelu via a series erf).
fn act64(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + erf_series(x / 2f64.sqrt())),
    }
}

/// erf by its Taylor series (converges fast for the |x| < 4 used here).
fn erf_series(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..200 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Naive forward in f64: per-layer outputs (activated for hidden layers, logits last).
fn forward64(mlp: &Mlp, x: &[f32], m: usize) -> Vec<Vec<f64>> {
    let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut outs = Vec::new();
    for (li, l) in mlp.layers.iter().enumerate() {
        let mut out = vec![0.0; m * l.out_dim];
        for r in 0..m {
            for o in 0..l.out_dim {
                let mut s = l.bias[o] as f64;
                for i in 0..l.in_dim {
                    s += l.weight[o * l.in_dim + i] as f64 * cur[r * l.in_dim + i];
                }
                out[r * l.out_dim + o] = if li + 1 < mlp.layers.len() {
                    act64(mlp.activation, s)
                } else {
                    s
                };
            }
        }
        outs.push(out.clone());
        cur = out;
    }
    outs
}

fn random_x(m: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * d).map(|_| rng.random_range(-2.0..2.0)).collect()
}

fn assert_close(a: &[f32], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn forward_and_hidden_match_naive_loops() {
    for (k, act) in ACTS.into_iter().enumerate() {
        let mlp = Mlp::init(&[5, 7, 6, 3], act, 11 + k as u64);
        let m = 9;
        let x = random_x(m, 5, 3);
        let reference = forward64(&mlp, &x, m);
        assert_close(
            &mlp.forward(&x, m),
            &reference[2],
            1e-5,
            &format!("{act} logits"),
        );
        assert_close(
            &mlp.hidden(&x, m, 0),
            &reference[0],
            1e-5,
            &format!("{act} h0"),
        );
        assert_close(
            &mlp.hidden(&x, m, 1),
            &reference[1],
            1e-5,
            &format!("{act} h1"),
        );
    }
    // A wide layer goes through faer's blocked kernels, not its small-matrix path.
    let mlp = Mlp::init(&[300, 260, 10], Activation::Relu, 1);
    let x = random_x(70, 300, 2);
    assert_close(
        &mlp.forward(&x, 70),
        &forward64(&mlp, &x, 70)[1],
        1e-4,
        "wide",
    );
}

#[test]
fn hidden_of_the_last_hidden_layer_feeds_the_output_layer() {
    let mlp = Mlp::init(&[4, 8, 8, 2], Activation::Tanh, 5);
    let m = 6;
    let x = random_x(m, 4, 9);
    let h = mlp.hidden(&x, m, 1);
    let tail = Mlp {
        layers: vec![mlp.layers[2].clone()],
        activation: mlp.activation,
    };
    let a = tail.forward(&h, m);
    let b = mlp.forward(&x, m);
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() < 1e-6);
    }
}

#[test]
fn activation_values() {
    assert_eq!("GELU".parse::<Activation>().unwrap(), Activation::Gelu);
    assert!("swish".parse::<Activation>().is_err());
    for x in [-3.5f32, -1.0, -0.1, 0.0, 0.3, 2.0, 3.9] {
        for a in ACTS {
            let want = act64(a, x as f64);
            assert!((a.apply(x) as f64 - want).abs() < 2e-7, "{a}({x})");
        }
    }
}

#[test]
fn init_is_seeded_and_bounded() {
    let a = Mlp::init(&[16, 9, 4], Activation::Relu, 7);
    let b = Mlp::init(&[16, 9, 4], Activation::Relu, 7);
    let c = Mlp::init(&[16, 9, 4], Activation::Relu, 8);
    assert_eq!(a.layers[0].weight, b.layers[0].weight);
    assert_ne!(a.layers[0].weight, c.layers[0].weight);
    assert_eq!(a.layers[1].name, "fc2");
    assert_eq!(a.param_count(), 16 * 9 + 9 + 9 * 4 + 4);
    assert_eq!((a.input_dim(), a.output_dim()), (16, 4));
    for l in &a.layers {
        let bound = 1.0 / (l.in_dim as f32).sqrt();
        assert!(l.weight.iter().chain(&l.bias).all(|w| w.abs() <= bound));
        // Spread over the interval, not stuck near zero.
        assert!(l.weight.iter().any(|w| w.abs() > bound * 0.8));
    }
}

/// A state dict with `names[i]` holding layer i of `dims` (+ bias).
fn state_dict(names: &[&str], dims: &[usize], dtype: Dtype, seed: u64) -> TensorFile {
    let mlp = Mlp::init(dims, Activation::Relu, seed);
    let mut f = TensorFile::default();
    // Inserted in reverse, so that the file order is not the layer order.
    for (l, name) in mlp.layers.iter().zip(names).rev() {
        f.insert(
            format!("{name}.weight"),
            Tensor::from_f32(&l.weight, vec![l.out_dim, l.in_dim], dtype).unwrap(),
        );
        f.insert(
            format!("{name}.bias"),
            Tensor::from_f32(&l.bias, vec![l.out_dim], dtype).unwrap(),
        );
    }
    f
}

fn prefixes(mlp: &Mlp) -> Vec<&str> {
    mlp.layers.iter().map(|l| l.name.as_str()).collect()
}

#[test]
fn layer_order_is_inferred() {
    let f = state_dict(&["fc1", "fc2", "fc3"], &[6, 5, 4, 3], Dtype::F32, 1);
    let mlp = Mlp::from_tensors(&f, None, Activation::Relu).unwrap();
    assert_eq!(prefixes(&mlp), ["fc1", "fc2", "fc3"]);
    assert_eq!(mlp.dims(), vec![6, 5, 4, 3]);

    // nn.Sequential with square hidden layers: only the names' natural order decides.
    let f = state_dict(&["0", "2", "4", "10"], &[6, 5, 5, 5, 3], Dtype::F32, 2);
    let mlp = Mlp::from_tensors(&f, None, Activation::Relu).unwrap();
    assert_eq!(prefixes(&mlp), ["0", "2", "4", "10"]);

    // Names out of order but the shapes fit only one chain.
    let f = state_dict(&["stem", "body", "head"], &[8, 20, 50, 3], Dtype::F32, 3);
    let mlp = Mlp::from_tensors(&f, None, Activation::Relu).unwrap();
    assert_eq!(prefixes(&mlp), ["stem", "body", "head"]);

    // A bare nn.Linear state dict.
    let lin = Mlp::init(&[3, 2], Activation::Relu, 4);
    let mut f = TensorFile::default();
    f.insert(
        "weight".into(),
        Tensor::from_f32(&lin.layers[0].weight, vec![2, 3], Dtype::F32).unwrap(),
    );
    let mlp = Mlp::from_tensors(&f, None, Activation::Relu).unwrap();
    assert_eq!(mlp.dims(), vec![3, 2]);
    assert!(!mlp.layers[0].has_bias);
    assert_eq!(mlp.layers[0].bias, vec![0.0, 0.0]);
}

fn invalid_message(r: divnet::Result<Mlp>) -> String {
    match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn ambiguous_and_broken_chains_are_errors_naming_the_candidates() {
    // x -> {b, c} -> a: two orders fit the shapes and the names' order is not one of them.
    let f = state_dict(&["x", "b", "c", "a"], &[4, 3, 3, 3, 2], Dtype::F32, 1);
    let msg = invalid_message(Mlp::from_tensors(&f, None, Activation::Relu));
    assert!(msg.contains("ambiguous"), "{msg}");
    for name in ["x", "b", "c", "a", "--layers"] {
        assert!(msg.contains(name), "{msg}");
    }
    // The explicit order resolves it.
    let order: Vec<String> = ["x", "c", "b", "a"].map(String::from).to_vec();
    let mlp = Mlp::from_tensors(&f, Some(&order), Activation::Relu).unwrap();
    assert_eq!(prefixes(&mlp), ["x", "c", "b", "a"]);
    // Also with the ".weight" suffix.
    let order: Vec<String> = ["x.weight", "b.weight", "c.weight", "a.weight"]
        .map(String::from)
        .to_vec();
    assert!(Mlp::from_tensors(&f, Some(&order), Activation::Relu).is_ok());

    // Shapes that do not connect.
    let mut f = state_dict(&["fc1", "fc2"], &[4, 3, 2], Dtype::F32, 1);
    f.insert(
        "fc2.weight".into(),
        Tensor::from_f32(&[0.0; 10], vec![2, 5], Dtype::F32).unwrap(),
    );
    let msg = invalid_message(Mlp::from_tensors(&f, None, Activation::Relu));
    assert!(
        msg.contains("do not connect") && msg.contains("fc2 (5 -> 2)"),
        "{msg}"
    );
    let order: Vec<String> = vec!["fc1".into(), "fc2".into()];
    let msg = invalid_message(Mlp::from_tensors(&f, Some(&order), Activation::Relu));
    assert!(msg.contains("fc2 takes 5 inputs"), "{msg}");

    // Explicit names that are missing or repeated.
    let f = state_dict(&["fc1", "fc2"], &[4, 3, 2], Dtype::F32, 1);
    let order: Vec<String> = vec!["fc1".into(), "fc9".into()];
    let msg = invalid_message(Mlp::from_tensors(&f, Some(&order), Activation::Relu));
    assert!(
        msg.contains("fc9.weight") && (msg.contains("fc1, fc2") || msg.contains("fc2, fc1")),
        "{msg}"
    );
    let order: Vec<String> = vec!["fc1".into(), "fc1".into()];
    assert!(
        invalid_message(Mlp::from_tensors(&f, Some(&order), Activation::Relu)).contains("twice")
    );

    // No weights at all.
    let msg = invalid_message(Mlp::from_tensors(
        &TensorFile::default(),
        None,
        Activation::Relu,
    ));
    assert!(msg.contains("no 2-D"), "{msg}");
}

#[test]
fn bad_tensors_are_errors_naming_the_tensor() {
    let base = state_dict(&["fc1", "fc2"], &[4, 3, 2], Dtype::F32, 1);
    let mut f = base.clone();
    f.insert(
        "fc1.bias".into(),
        Tensor::from_f32(&[0.0; 4], vec![4], Dtype::F32).unwrap(),
    );
    assert!(
        invalid_message(Mlp::from_tensors(&f, None, Activation::Relu))
            .contains("fc1.bias has shape [4]")
    );
    let mut f = base.clone();
    let mut w = [0.5f32; 12];
    w[7] = f32::NAN;
    // Raw bytes: encoding refuses a NaN.
    f.insert(
        "fc1.weight".into(),
        Tensor {
            dtype: Dtype::F32,
            shape: vec![3, 4],
            bytes: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
    );
    let msg = invalid_message(Mlp::from_tensors(&f, None, Activation::Relu));
    assert!(
        msg.contains("fc1.weight") && msg.contains("element 7"),
        "{msg}"
    );
    let mut f = base.clone();
    f.insert(
        "fc2.weight".into(),
        Tensor {
            dtype: Dtype::I64,
            shape: vec![2, 3],
            bytes: vec![0; 48],
        },
    );
    let msg = invalid_message(Mlp::from_tensors(&f, None, Activation::Relu));
    assert!(msg.contains("fc2.weight") && msg.contains("I64"), "{msg}");

    // Through a file, every problem names the file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    write_safetensors(&p, &f).unwrap();
    let e = Mlp::load(&p, None, Activation::Relu).unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("bad.safetensors") && e.to_string().contains("fc2.weight"));
}

#[test]
fn to_tensors_keeps_dtypes_and_untouched_tensors() {
    let mut template = state_dict(&["fc1", "fc2"], &[6, 5, 3], Dtype::F16, 2);
    // fc2 without a bias, fc1's bias in bf16, an integer tensor and metadata to carry over.
    template.remove("fc2.bias");
    let b = template.get("fc1.bias").unwrap().to_f32().unwrap();
    template.insert(
        "fc1.bias".into(),
        Tensor::from_f32(&b, vec![5], Dtype::BF16).unwrap(),
    );
    let counter = Tensor {
        dtype: Dtype::I64,
        shape: vec![],
        bytes: 1234i64.to_le_bytes().to_vec(),
    };
    template.insert("bn.num_batches_tracked".into(), counter.clone());
    template.metadata = Some(HashMap::from([("format".into(), "pt".into())]));

    let mut mlp = Mlp::from_tensors(&template, None, Activation::Relu).unwrap();
    assert!(!mlp.layers[1].has_bias);
    // Shrink the hidden layer to 2 neurons (rows 0 and 3 of fc1, columns 0 and 3 of fc2).
    let keep = [0usize, 3];
    let l0 = &mlp.layers[0];
    let w0: Vec<f32> = keep
        .iter()
        .flat_map(|&r| l0.weight[r * 6..(r + 1) * 6].to_vec())
        .collect();
    let b0: Vec<f32> = keep.iter().map(|&r| l0.bias[r]).collect();
    let l1 = &mlp.layers[1];
    let w1: Vec<f32> = (0..3)
        .flat_map(|o| keep.iter().map(move |&c| (o, c)))
        .map(|(o, c)| l1.weight[o * 5 + c])
        .collect();
    mlp.layers[0] = Linear {
        weight: w0.clone(),
        bias: b0,
        out_dim: 2,
        ..mlp.layers[0].clone()
    };
    mlp.layers[1] = Linear {
        weight: w1,
        in_dim: 2,
        ..mlp.layers[1].clone()
    };
    let out = mlp.to_tensors(&template).unwrap();
    assert_eq!(out.get("bn.num_batches_tracked"), Some(&counter));
    assert_eq!(out.metadata, template.metadata);
    let w = out.get("fc1.weight").unwrap();
    assert_eq!((w.dtype, w.shape.clone()), (Dtype::F16, vec![2, 6]));
    assert_eq!(
        w.to_f32().unwrap(),
        w0,
        "f16 values survive an f16 round trip exactly"
    );
    assert_eq!(out.get("fc1.bias").unwrap().dtype, Dtype::BF16);
    assert_eq!(out.get("fc2.weight").unwrap().shape, vec![3, 2]);
    // A zero bias that the template did not have stays absent ...
    assert!(out.get("fc2.bias").is_none());
    // ... and a non-zero one (fusion folds constants into it) is added as f32.
    mlp.layers[1].bias[1] = 0.25;
    let out = mlp.to_tensors(&template).unwrap();
    let b = out.get("fc2.bias").unwrap();
    assert_eq!(
        (b.dtype, b.to_f32().unwrap()),
        (Dtype::F32, vec![0.0, 0.25, 0.0])
    );
    // The result reads back as the same network.
    let back = Mlp::from_tensors(&out, None, Activation::Relu).unwrap();
    assert_eq!(back.dims(), vec![6, 2, 3]);
    let x = random_x(4, 6, 1);
    assert_eq!(back.forward(&x, 4), mlp.forward(&x, 4));
}

#[test]
fn evaluate_matches_a_hand_count() {
    let mlp = Mlp::init(&[5, 8, 4], Activation::Sigmoid, 3);
    let m = 2500; // spans several evaluation batches
    let x = random_x(m, 5, 4);
    let labels: Vec<u32> = (0..m as u32).map(|i| (i * 7 + i / 3) % 4).collect();
    let logits = &forward64(&mlp, &x, m)[1];
    let (mut correct, mut loss) = (0usize, 0.0f64);
    for r in 0..m {
        let row = &logits[r * 4..(r + 1) * 4];
        let best = (0..4)
            .max_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap())
            .unwrap();
        correct += usize::from(best == labels[r] as usize);
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        loss += lse - row[labels[r] as usize];
    }
    let ev = evaluate(&mlp, &x, m, &labels).unwrap();
    assert_eq!(ev.samples, m);
    assert!((ev.accuracy - correct as f64 / m as f64).abs() < 1e-12);
    assert!(
        (ev.loss - loss / m as f64).abs() < 1e-5,
        "{} vs {}",
        ev.loss,
        loss / m as f64
    );

    assert!(evaluate(&mlp, &x, m, &labels[1..]).is_err());
    let mut bad = labels.clone();
    bad[17] = 4;
    let e = evaluate(&mlp, &x, m, &bad).unwrap_err().to_string();
    assert!(e.contains("label at row 17 is 4"), "{e}");
    assert!(evaluate(&mlp, &x[1..], m, &labels).is_err());
}

#[test]
fn predictions_and_agreement_match_a_hand_count() {
    let mlp = Mlp::init(&[5, 8, 4], Activation::Tanh, 3);
    let other = Mlp::init(&[5, 8, 4], Activation::Tanh, 4);
    let m = 2500; // spans several evaluation batches
    let x = random_x(m, 5, 4);
    let labels: Vec<u32> = (0..m as u32).map(|i| (i * 7 + i / 3) % 4).collect();
    let argmax = |logits: &[f64], r: usize| {
        let row = &logits[r * 4..(r + 1) * 4];
        (0..4)
            .max_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap().then(b.cmp(&a)))
            .unwrap() as u32
    };
    let mine = &forward64(&mlp, &x, m)[1];
    let theirs = &forward64(&other, &x, m)[1];
    let want: Vec<u32> = (0..m).map(|r| argmax(mine, r)).collect();
    let reference: Vec<u32> = (0..m).map(|r| argmax(theirs, r)).collect();
    assert_eq!(predict(&mlp, &x, m).unwrap(), want);
    assert_eq!(predict(&other, &x, m).unwrap(), reference);
    let same = want.iter().zip(&reference).filter(|(a, b)| a == b).count();
    assert!(
        0 < same && same < m,
        "the two models should differ somewhere: {same} of {m} agree"
    );

    let (ev, agreement) = evaluate_against(&mlp, &x, m, &labels, &reference).unwrap();
    assert_eq!(ev, evaluate(&mlp, &x, m, &labels).unwrap());
    assert!((agreement - same as f64 / m as f64).abs() < 1e-12);
    let (_, with_itself) = evaluate_against(&mlp, &x, m, &labels, &want).unwrap();
    assert_eq!(with_itself, 1.0);

    let e = evaluate_against(&mlp, &x, m, &labels, &reference[1..]).unwrap_err();
    assert!(
        e.to_string()
            .contains("2499 reference predictions for 2500"),
        "{e}"
    );
    assert!(predict(&mlp, &x[1..], m).is_err());
}

/// Mean cross-entropy in f64 (the finite-difference reference).
fn loss64(mlp: &Mlp, x: &[f32], m: usize, labels: &[u32]) -> f64 {
    let logits = forward64(mlp, x, m).pop().unwrap();
    let c = mlp.output_dim();
    (0..m)
        .map(|r| {
            let row = &logits[r * c..(r + 1) * c];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[labels[r] as usize]
        })
        .sum::<f64>()
        / m as f64
}

#[test]
fn one_full_batch_sgd_step_follows_the_finite_difference_gradient() {
    for act in ACTS {
        let m = 12;
        let mlp0 = Mlp::init(&[4, 6, 5, 3], act, 21);
        let x = random_x(m, 4, 22);
        let labels: Vec<u32> = (0..m as u32).map(|i| i % 3).collect();
        let mut mlp = mlp0.clone();
        let lr = 0.01f32;
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: m,
            learning_rate: lr,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            seed: 0,
        };
        train(&mut mlp, &x, m, &labels, &cfg, &mut |_, _| {}, &mut |_| {}).unwrap();
        let h = 1e-3f32;
        for li in 0..3 {
            let n_w = mlp0.layers[li].weight.len();
            // A few weights and every bias of the layer.
            let picks: Vec<(bool, usize)> = (0..n_w)
                .step_by(5)
                .map(|i| (true, i))
                .chain((0..mlp0.layers[li].out_dim).map(|i| (false, i)))
                .collect();
            for (is_w, i) in picks {
                let param = |n: &Mlp| {
                    if is_w {
                        n.layers[li].weight[i]
                    } else {
                        n.layers[li].bias[i]
                    }
                };
                let shifted = |d: f32| {
                    let mut n = mlp0.clone();
                    let p = if is_w {
                        &mut n.layers[li].weight[i]
                    } else {
                        &mut n.layers[li].bias[i]
                    };
                    *p += d;
                    loss64(&n, &x, m, &labels)
                };
                let fd = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
                let step = (param(&mlp0) - param(&mlp)) as f64 / lr as f64;
                assert!(
                    (step - fd).abs() <= 2e-3 * (1.0 + fd.abs()),
                    "{act} layer {li} {} {i}: step {step} vs finite difference {fd}",
                    if is_w { "weight" } else { "bias" }
                );
            }
        }
    }
}

/// Three well-separated Gaussian blobs in 6-D.
fn blobs(m: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centers = [
        [2.0f32, 0.0, -1.0, 0.5, 0.0, 1.0],
        [-2.0, 1.0, 1.0, 0.0, -1.0, 0.0],
        [0.0, -2.0, 0.0, -1.0, 1.5, -1.0],
    ];
    let mut x = Vec::with_capacity(m * 6);
    let mut y = Vec::with_capacity(m);
    for i in 0..m {
        let c = i % 3;
        y.push(c as u32);
        for &mu in &centers[c] {
            x.push(mu + rng.random_range(-0.6..0.6));
        }
    }
    (x, y)
}

#[test]
fn training_reduces_the_loss_and_is_deterministic() {
    let (x, y) = blobs(300, 5);
    for optimizer in [Optimizer::Adam, Optimizer::Sgd { momentum: 0.9 }] {
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 32,
            learning_rate: if optimizer == Optimizer::Adam {
                1e-2
            } else {
                5e-2
            },
            optimizer,
            seed: 3,
        };
        let start = Mlp::init(&[6, 16, 3], Activation::Relu, 9);
        let before = evaluate(&start, &x, 300, &y).unwrap();
        let mut a = start.clone();
        let mut batches = 0;
        let mut epochs: Vec<EpochReport> = Vec::new();
        let reports = train(
            &mut a,
            &x,
            300,
            &y,
            &cfg,
            &mut |done, total| {
                batches += 1;
                assert_eq!(total, 8 * 10);
                assert_eq!(done, batches);
            },
            &mut |r| epochs.push(r.clone()),
        )
        .unwrap();
        assert_eq!(batches, 80);
        assert_eq!(reports.len(), 8);
        assert_eq!(
            epochs.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        let after = evaluate(&a, &x, 300, &y).unwrap();
        assert!(
            after.loss < before.loss / 4.0,
            "{optimizer:?}: {} -> {}",
            before.loss,
            after.loss
        );
        assert!(
            after.accuracy > 0.97,
            "{optimizer:?}: accuracy {}",
            after.accuracy
        );
        assert!(reports[7].loss < reports[0].loss);

        let mut b = start.clone();
        train(&mut b, &x, 300, &y, &cfg, &mut |_, _| {}, &mut |_| {}).unwrap();
        assert_eq!(
            a.layers[0].weight, b.layers[0].weight,
            "same seed, same result"
        );
        let mut c = start.clone();
        let cfg2 = TrainConfig {
            seed: 4,
            ..cfg.clone()
        };
        train(&mut c, &x, 300, &y, &cfg2, &mut |_, _| {}, &mut |_| {}).unwrap();
        assert_ne!(
            a.layers[0].weight, c.layers[0].weight,
            "the seed drives the shuffling"
        );
    }
}

#[test]
fn training_rejects_bad_settings() {
    let (x, y) = blobs(30, 1);
    let mut mlp = Mlp::init(&[6, 4, 3], Activation::Relu, 1);
    let ok = TrainConfig {
        epochs: 1,
        batch_size: 8,
        learning_rate: 1e-3,
        optimizer: Optimizer::Adam,
        seed: 0,
    };
    for cfg in [
        TrainConfig {
            batch_size: 0,
            ..ok.clone()
        },
        TrainConfig {
            learning_rate: f32::NAN,
            ..ok.clone()
        },
        TrainConfig {
            learning_rate: -1.0,
            ..ok.clone()
        },
        TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 1.5 },
            ..ok.clone()
        },
    ] {
        assert!(train(&mut mlp, &x, 30, &y, &cfg, &mut |_, _| {}, &mut |_| {}).is_err());
    }
    let mut bad = y.clone();
    bad[0] = 3;
    assert!(train(&mut mlp, &x, 30, &bad, &ok, &mut |_, _| {}, &mut |_| {}).is_err());
    // A learning rate that blows up is a numerical error, not NaN weights written out.
    let wild = TrainConfig {
        learning_rate: 1e30,
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        epochs: 3,
        ..ok
    };
    let e = train(&mut mlp, &x, 30, &y, &wild, &mut |_, _| {}, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::Numerical(_)), "{e:?}");
}

/// The shipped reference network loads with inferred layer order and keeps the test accuracy
/// recorded in data/fashion-mnist/README.md (88.83%).
#[test]
fn shipped_reference_network_keeps_its_accuracy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let mlp = Mlp::load(
        &root.join("mlp-784-1000-1000-10.safetensors"),
        None,
        Activation::Relu,
    )
    .unwrap();
    assert_eq!(mlp.dims(), vec![784, 1000, 1000, 10]);
    assert_eq!(prefixes(&mlp), ["fc1", "fc2", "fc3"]);
    let x = divnet::io::data::read_inputs(&root.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let y = divnet::io::data::read_labels(&root.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let ev = evaluate(&mlp, &x.data, x.rows, &y).unwrap();
    assert!(
        (ev.accuracy - 0.8883).abs() < 5e-4,
        "accuracy {}",
        ev.accuracy
    );
}

/// The GPU forward pass (lavapipe in CI) against the CPU one, with odd sizes that leave
/// partial tiles everywhere, and with a small binding cap that forces several row chunks.
#[test]
fn gpu_forward_matches_cpu() {
    use divnet::gpu::forward::GpuMlp;
    let Some(ctx) = divnet::gpu::test_context() else {
        return;
    };
    for (k, act) in ACTS.into_iter().enumerate() {
        let mlp = Mlp::init(&[13, 20, 17, 5], act, 40 + k as u64);
        let m = 37;
        let x = random_x(m, 13, 41);
        let reference = forward64(&mlp, &x, m);
        let g = GpuMlp::upload(&ctx, &mlp).unwrap();
        assert_close(
            &g.hidden(&ctx, &x, m, 0).unwrap(),
            &reference[0],
            1e-5,
            "gpu h0",
        );
        assert_close(
            &g.hidden(&ctx, &x, m, 1).unwrap(),
            &reference[1],
            1e-5,
            "gpu h1",
        );
        assert_close(
            &g.forward(&ctx, &x, m).unwrap(),
            &reference[2],
            1e-5,
            "gpu logits",
        );
        assert!(
            g.hidden(&ctx, &x, m, 2).is_err(),
            "the output layer is not hidden"
        );
    }
    // Several k tiles, several column and row tiles.
    let mlp = Mlp::init(&[150, 130, 70, 10], Activation::Relu, 3);
    let x = random_x(150, 150, 4);
    let g = GpuMlp::upload(&ctx, &mlp).unwrap();
    let reference = forward64(&mlp, &x, 150);
    assert_close(
        &g.hidden(&ctx, &x, 150, 1).unwrap(),
        &reference[1],
        1e-4,
        "gpu big h1",
    );
    // 2048-byte bindings: 25 rows of 20 floats per chunk, so 37 rows take two chunks.
    let small = divnet::gpu::test_context()
        .unwrap()
        .with_max_block_bytes(2048);
    let mlp = Mlp::init(&[13, 20, 17, 5], Activation::Tanh, 5);
    let x = random_x(37, 13, 6);
    let g = GpuMlp::upload(&small, &mlp).unwrap();
    assert!(g.max_rows(&small, 1) < 37);
    assert_close(
        &g.hidden(&small, &x, 37, 1).unwrap(),
        &forward64(&mlp, &x, 37)[1],
        1e-5,
        "chunked",
    );
    // A weight matrix over the binding limit (40 x 40 f32 = 6400 bytes) runs in blocks of
    // output neurons, several per layer.
    let wide = Mlp::init(&[40, 40, 30, 2], Activation::Relu, 1);
    let x = random_x(23, 40, 7);
    let g = GpuMlp::upload(&small, &wide).unwrap();
    assert_close(
        &g.hidden(&small, &x, 23, 1).unwrap(),
        &forward64(&wide, &x, 23)[1],
        1e-5,
        "weights in blocks",
    );
    // One row of a weight matrix over the limit cannot be split: an error, not a panic.
    let too_wide = Mlp::init(&[600, 4, 2], Activation::Relu, 1);
    assert!(matches!(
        GpuMlp::upload(&small, &too_wide),
        Err(Error::Gpu(_))
    ));
}

/// `divnet train` and `divnet evaluate` end to end on a tiny npy problem, and their
/// failures: exit code 2, one line naming the file, no output written.
#[test]
fn train_and_evaluate_commands() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_divnet");
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = blobs(120, 8);
    let xp = dir.path().join("x.npy");
    let yp = dir.path().join("y.npy");
    divnet::io::npy::write_npy(&xp, &[120, 6], &x).unwrap();
    let y64: Vec<i64> = y.iter().map(|&v| v as i64).collect();
    divnet::io::npy::write_npy(&yp, &[120], &y64).unwrap();
    let out = dir.path().join("m.safetensors");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let o = run(&[
        "train",
        "--data",
        &s(&xp),
        "--labels",
        &s(&yp),
        "--hidden",
        "12",
        "--epochs",
        "15",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("epoch  15/15"), "{log}");
    let mlp = Mlp::load(&out, None, Activation::Relu).unwrap();
    assert_eq!(mlp.dims(), vec![6, 12, 3]);
    let want = evaluate(&mlp, &x, 120, &y).unwrap();
    assert!(want.accuracy > 0.95, "{}", want.accuracy);
    // `divnet evaluate` of the trained model, with extra arguments.
    let evaluate_cmd = |extra: &[&str]| {
        let (out, xp, yp) = (s(&out), s(&xp), s(&yp));
        let mut args = vec!["evaluate", "--model", &out, "--data", &xp, "--labels", &yp];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = evaluate_cmd(&[]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("accuracy {:.4}", want.accuracy)),
        "{text}"
    );
    // One epoch of `train` with extra arguments: the trained model's layer widths.
    let trained_dims = |extra: &[&str], name: &str| {
        let path = dir.path().join(name);
        let mut args = vec!["train", "--data", xp.to_str().unwrap()];
        args.extend(["--labels", yp.to_str().unwrap(), "--epochs", "1"]);
        args.extend(["--out", path.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Mlp::load(&path, None, Activation::Relu).unwrap().dims()
    };
    // Fine-tuning keeps the names and shapes.
    assert_eq!(
        trained_dims(&["--init", out.to_str().unwrap()], "tuned.safetensors"),
        vec![6, 12, 3]
    );
    // --classes gives a new model more outputs than the labels use (a class absent from
    // this training set).
    assert_eq!(
        trained_dims(&["--hidden", "4", "--classes", "5"], "wide.safetensors"),
        vec![6, 4, 5]
    );

    // --reference: the share of samples given the reference's class, from the same run.
    let tuned = dir.path().join("tuned.safetensors");
    let reference = Mlp::load(&tuned, None, Activation::Relu).unwrap();
    let (_, agreement) =
        evaluate_against(&mlp, &x, 120, &y, &predict(&reference, &x, 120).unwrap()).unwrap();
    for (path, share) in [(&tuned, agreement), (&out, 1.0)] {
        let o = evaluate_cmd(&["--reference", &s(path)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("agrees   {share:.4} (")), "{text}");
        assert!(
            text.contains(&format!("accuracy {:.4}", want.accuracy)),
            "{text}"
        );
    }
    let wide = dir.path().join("wide.safetensors");
    let o = evaluate_cmd(&["--reference", &s(&wide)]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&s(&wide)) && err.contains("to 5 outputs, the model 6 to 3"),
        "{err}"
    );

    // Failures: labels that do not match, a model that is not safetensors, a corrupt input.
    let before = std::fs::read(&out).unwrap();
    let short_y = dir.path().join("short.npy");
    divnet::io::npy::write_npy(&short_y, &[5], &[0i64; 5]).unwrap();
    let bad_x = dir.path().join("bad.npy");
    std::fs::write(&bad_x, b"\x93NUMPY garbage").unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "train".into(),
                "--data".into(),
                s(&xp),
                "--labels".into(),
                s(&short_y),
                "--out".into(),
                s(&out),
            ],
            s(&short_y),
        ),
        (
            vec![
                "train".into(),
                "--data".into(),
                s(&bad_x),
                "--labels".into(),
                s(&yp),
                "--out".into(),
                s(&out),
            ],
            s(&bad_x),
        ),
        (
            vec![
                "evaluate".into(),
                "--model".into(),
                s(&xp),
                "--data".into(),
                s(&xp),
                "--labels".into(),
                s(&yp),
            ],
            s(&xp),
        ),
    ];
    for (args, file) in cases {
        let o = Command::new(bin).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("divnet: error: ") && last.contains(&file),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "a failed run left the output untouched"
    );
}

/// A normalisation between the layers (one value per neuron of a hidden layer, not a
/// layer's own weight or bias) is refused by name: the MLP's forward pass would skip it.
/// Other tensors, of other widths, are left alone.
#[test]
fn per_neuron_tensors_between_the_layers_are_refused() {
    let base = state_dict(&["fc1", "fc2"], &[4, 3, 2], Dtype::F32, 1);
    let mut f = base.clone();
    f.insert(
        "bn1.running_var".into(),
        Tensor::from_f32(&[1.0; 3], vec![3], Dtype::F32).unwrap(),
    );
    let msg = invalid_message(Mlp::from_tensors(&f, None, Activation::Relu));
    assert!(
        msg.contains("bn1.running_var [3] has one value per neuron of layer fc1"),
        "{msg}"
    );
    let mut f = base.clone();
    f.insert(
        "temperature".into(),
        Tensor::from_f32(&[1.0; 5], vec![5], Dtype::F32).unwrap(),
    );
    Mlp::from_tensors(&f, None, Activation::Relu).unwrap();
    // A second head beside the layers --layers picks: its bias is a Linear layer's own.
    let mut f = base.clone();
    f.insert(
        "aux.weight".into(),
        Tensor::from_f32(&[0.5; 12], vec![3, 4], Dtype::F32).unwrap(),
    );
    f.insert(
        "aux.bias".into(),
        Tensor::from_f32(&[0.0; 3], vec![3], Dtype::F32).unwrap(),
    );
    let order = ["fc1".to_string(), "fc2".to_string()];
    Mlp::from_tensors(&f, Some(&order), Activation::Relu).unwrap();
}

/// Fine-tuning a bias-free model (`train --init`) trains its weights and keeps it bias-free:
/// the saved model has the tensors it came with, so it loads into the same module. Layers
/// with a bias train it.
#[test]
fn fine_tuning_keeps_a_bias_free_layer_without_a_bias() {
    let (x, y) = blobs(120, 8);
    let mut file = state_dict(&["fc1", "fc2"], &[6, 8, 3], Dtype::F32, 2);
    file.remove("fc1.bias");
    let mut mlp = Mlp::from_tensors(&file, None, Activation::Relu).unwrap();
    let before = mlp.clone();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        learning_rate: 1e-2,
        optimizer: Optimizer::Adam,
        seed: 1,
    };
    train(&mut mlp, &x, 120, &y, &cfg, &mut |_, _| {}, &mut |_| {}).unwrap();
    assert!(mlp.layers[0].bias.iter().all(|&b| b == 0.0));
    assert_ne!(mlp.layers[0].weight, before.layers[0].weight);
    assert_ne!(mlp.layers[1].bias, before.layers[1].bias);
    let out = mlp.to_tensors(&file).unwrap();
    let mut names: Vec<&str> = out.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["fc1.weight", "fc2.bias", "fc2.weight"]);
}

/// A label in the billions is not a class count to build a network for: `train` names the
/// labels file (it blamed `--hidden` for a network too big to train).
#[test]
fn train_names_the_labels_file_for_a_label_far_beyond_a_class_index() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = blobs(4, 1);
    let xp = dir.path().join("x.npy");
    let yp = dir.path().join("huge.npy");
    divnet::io::npy::write_npy(&xp, &[4, 6], &x).unwrap();
    divnet::io::npy::write_npy(&yp, &[4], &[0i64, 1, 2, i32::MAX as i64]).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_divnet"))
        .args(["train", "--hidden", "4", "--data"])
        .arg(&xp)
        .arg("--labels")
        .arg(&yp)
        .arg("--out")
        .arg(dir.path().join("never.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("huge.npy: the largest label is 2147483647"),
        "{err}"
    );
}
