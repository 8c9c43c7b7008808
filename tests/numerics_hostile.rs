//! Numerically hostile layers through the library (kernel -> selection -> fusion, and the
//! whole `compress_mlp` pipeline): constant neurons, exact duplicates, an all-zero layer,
//! beta so large that L ~ I and so small that L ~ all ones, k equal to the rank. Each must
//! give a sensible result or a clear error, never a NaN or an infinity in any output.
//!
//! "Sensible" is checked against an independent reference: the next layer's pre-activation
//! recomputed by naive f64 loops from the fused weights, which must reproduce the original
//! wherever the dropped neurons are (affine) copies of kept ones.

use divnet::compress::{compress_mlp, CompressOptions, KeepSpec, NoProgress};
use divnet::fusion::{fuse_next_layer, FusionOptions, NextLayer};
use divnet::io::safetensors::{parse_safetensors, safetensors_bytes, TensorFile};
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::model::{Activation, Mlp};
use divnet::select::{LayerSelector, SelectionMethod, SelectionSize};
use divnet::{Backend, Error};

const M: usize = 24;
const N: usize = 8;
const N_OUT: usize = 5;

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Cpu];
    if let Some(ctx) = divnet::gpu::test_context() {
        v.push(Backend::Gpu(std::sync::Arc::new(ctx)));
    }
    v
}

fn wave(i: usize, j: usize) -> f32 {
    (((i * 31 + j * 17) % 23) as f32 / 23.0 - 0.4).max(0.0)
}

/// A hostile layer: its m x n activations and `distinct`, a number of neurons such that
/// greedy MAP (which never keeps two copies while a distinct neuron is left) keeps a set
/// whose affine span holds every neuron, making fusion exact.
struct Layer {
    name: &'static str,
    acts: Vec<f32>,
    distinct: usize,
}

fn layers() -> Vec<Layer> {
    let constant: Vec<f32> = (0..M * N).map(|k| 0.5 + (k % N) as f32).collect();
    let duplicates: Vec<f32> = (0..M * N).map(|k| wave(k / N, (k % N) % 3)).collect();
    let mixed: Vec<f32> = (0..M * N)
        .map(|k| match k % N {
            0 | 1 => 2.0,            // two equal constant neurons
            2 | 3 => 0.0,            // two dead neurons
            j => wave(k / N, j % 2), // two distinct live neurons, each twice
        })
        .collect();
    vec![
        Layer {
            name: "constant neurons",
            acts: constant,
            distinct: 1, // every constant is an affine copy of every other
        },
        Layer {
            name: "exact duplicates",
            acts: duplicates,
            distinct: 3,
        },
        Layer {
            name: "all zero",
            acts: vec![0.0; M * N],
            distinct: 1,
        },
        Layer {
            name: "constants, dead and duplicated neurons",
            acts: mixed,
            // Constant 2, zero and two live neurons: four points in the kernel's eyes.
            distinct: 4,
        },
    ]
}

fn betas() -> [(&'static str, Beta); 4] {
    [
        ("paper", Beta::Paper),
        ("median", Beta::Median),
        ("huge (L ~ I)", Beta::Value(1e12)),
        ("tiny (L ~ ones)", Beta::Value(1e-12)),
    ]
}

fn next_weight() -> (Vec<f32>, Vec<f32>) {
    let w = (0..N_OUT * N)
        .map(|k| ((k * 13) % 7) as f32 / 7.0 - 0.5)
        .collect();
    let b = (0..N_OUT).map(|i| 0.1 * i as f32 - 0.2).collect();
    (w, b)
}

/// ||Z - Z'||_F / max(||Z||_F, tiny) by naive loops, Z = A W^T + b, Z' = A_Y W'^T + b'.
fn reconstruction_error(a: &[f32], keep: &[usize], w2: &[f32], b2: &[f32]) -> f64 {
    let (w, b) = next_weight();
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for r in 0..M {
        for o in 0..N_OUT {
            let z: f64 = b[o] as f64
                + (0..N)
                    .map(|i| w[o * N + i] as f64 * a[r * N + i] as f64)
                    .sum::<f64>();
            let z2: f64 = b2[o] as f64
                + keep
                    .iter()
                    .enumerate()
                    .map(|(c, &i)| w2[o * keep.len() + c] as f64 * a[r * N + i] as f64)
                    .sum::<f64>();
            diff += (z - z2).powi(2);
            norm += z * z;
        }
    }
    diff.sqrt() / norm.sqrt().max(1e-30)
}

fn all_finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// An error is acceptable only if it says something (no empty or NaN-laden message).
fn clear(e: &Error) -> bool {
    let s = e.to_string();
    s.len() > 10 && !s.contains("NaN")
}

#[test]
fn kernel_selection_and_fusion_on_hostile_layers() {
    let (w, b) = next_weight();
    let mut report = Vec::new();
    for backend in backends() {
        for layer in layers() {
            let rows = ActivationRows::F32(&layer.acts);
            let stats = gram_stats(&backend, rows, N).unwrap();
            for (bname, beta) in betas() {
                let what = format!("{} / {} / beta {bname}", backend.name(), layer.name);
                let kernel = match rbf_kernel(&backend, rows, N, beta, 1e-6) {
                    Ok(k) => k,
                    Err(e) => {
                        // Only the median heuristic may refuse (all distances zero).
                        assert!(
                            matches!(beta, Beta::Median) && clear(&e),
                            "{what}: kernel failed: {e}"
                        );
                        report.push(format!("{what}: kernel refused: {e}"));
                        continue;
                    }
                };
                assert!(kernel.beta.is_finite() && kernel.beta > 0.0, "{what}");
                for i in 0..N {
                    for j in 0..N {
                        let v = kernel.matrix[(i, j)];
                        assert!(
                            v.is_finite() && (0.0..=1.0 + 1e-5).contains(&v),
                            "{what}: L[{i},{j}] = {v}"
                        );
                    }
                }
                let selector = LayerSelector::new(N, Some(&kernel.matrix), None);
                let sizes = [1, layer.distinct, N];
                for method in [
                    SelectionMethod::KDpp,
                    SelectionMethod::Greedy,
                    SelectionMethod::Dpp,
                    SelectionMethod::Random,
                ] {
                    for &k in &sizes {
                        let size = if method == SelectionMethod::Dpp {
                            SelectionSize::Drawn
                        } else {
                            SelectionSize::Exactly(k)
                        };
                        let keep = match selector.select(method, size, 3) {
                            Ok(keep) => keep,
                            Err(e) => {
                                assert!(clear(&e), "{what}: {method} k={k}: unclear error {e}");
                                report.push(format!("{what}: {method} k={k} refused: {e}"));
                                continue;
                            }
                        };
                        let mut sorted = keep.clone();
                        sorted.dedup();
                        assert!(
                            !keep.is_empty()
                                && sorted.len() == keep.len()
                                && keep.iter().all(|&i| i < N),
                            "{what}: {method} k={k}: bad kept set {keep:?}"
                        );
                        if method != SelectionMethod::Dpp {
                            assert_eq!(keep.len(), k, "{what}: {method}");
                        }
                        let next = NextLayer {
                            weight: &w,
                            bias: Some(&b),
                            n_out: N_OUT,
                            n_in: N,
                        };
                        let fused = fuse_next_layer(
                            &backend,
                            &stats,
                            &keep,
                            next,
                            &FusionOptions::default(),
                        )
                        .unwrap_or_else(|e| panic!("{what}: {method} k={k}: fusion failed: {e}"));
                        assert!(
                            all_finite(&fused.weight)
                                && all_finite(&fused.bias)
                                && fused.ridge.is_finite()
                                && fused.relative_error.is_finite(),
                            "{what}: {method} k={k}: non-finite fusion output"
                        );
                        let err =
                            reconstruction_error(&layer.acts, &keep, &fused.weight, &fused.bias);
                        assert!(err.is_finite(), "{what}");
                        // Greedy MAP never keeps two copies while a distinct neuron is left, so
                        // with k = the number of distinct neurons the next layer is exact.
                        // (Not when L ~ all ones: there the kernel sees no difference at all.)
                        if method == SelectionMethod::Greedy
                            && k >= layer.distinct
                            && !bname.starts_with("tiny")
                        {
                            assert!(
                                err < 1e-3,
                                "{what}: greedy k={k} keep {keep:?}: error {err:e}, expected exact"
                            );
                        }
                        // The reported error is the same quantity, computed from G.
                        assert!(
                            (fused.relative_error - err).abs() < 1e-3 + 1e-2 * err,
                            "{what}: {method} k={k}: reported error {} but naive {err}",
                            fused.relative_error
                        );
                    }
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// A 6-8-4-3 MLP whose first hidden layer is `kind` on any input.
fn hostile_mlp(kind: &str) -> Mlp {
    let mut mlp = Mlp::init(&[6, N, 4, 3], Activation::Relu, 11);
    let l = &mut mlp.layers[0];
    for o in 0..N {
        let row = &mut l.weight[o * 6..(o + 1) * 6];
        match kind {
            "constant" => {
                row.fill(0.0);
                l.bias[o] = 0.25 * (o + 1) as f32;
            }
            "dead" => {
                row.fill(0.0);
                l.bias[o] = -1.0;
            }
            "duplicates" => {
                let src = o % 2;
                let copy: Vec<f32> = (0..6)
                    .map(|i| 0.3 * (i as f32 - 2.0) * (src as f32 + 1.0))
                    .collect();
                row.copy_from_slice(&copy);
                l.bias[o] = 0.1;
            }
            _ => unreachable!(),
        }
    }
    mlp
}

#[test]
fn compress_mlp_on_hostile_layers_writes_no_nan() {
    let m = 32;
    let x: Vec<f32> = (0..m * 6).map(|k| ((k * 7) % 19) as f32 / 19.0).collect();
    for backend in backends() {
        for kind in ["constant", "dead", "duplicates"] {
            let mlp = hostile_mlp(kind);
            let logits = mlp.forward(&x, m);
            for (bname, beta) in betas() {
                for method in [
                    SelectionMethod::KDpp,
                    SelectionMethod::Greedy,
                    SelectionMethod::Importance,
                ] {
                    for k in [1usize, 2, N] {
                        let what = format!(
                            "{} / {kind} / beta {bname} / {method} / k={k}",
                            backend.name()
                        );
                        let mut opts =
                            CompressOptions::new(vec![KeepSpec::Count(k), KeepSpec::All]);
                        opts.method = method;
                        opts.beta = beta;
                        let (small, report) =
                            match compress_mlp(&backend, &mlp, &x, m, &opts, &mut NoProgress) {
                                Ok(r) => r,
                                Err(e) => {
                                    assert!(
                                        matches!(beta, Beta::Median) && clear(&e),
                                        "{what}: failed: {e}"
                                    );
                                    continue;
                                }
                            };
                        for l in &small.layers {
                            assert!(
                                all_finite(&l.weight) && all_finite(&l.bias),
                                "{what}: {}",
                                l.name
                            );
                        }
                        for l in &report.layers {
                            assert!(
                                l.ridge.is_finite() && l.relative_error.is_finite(),
                                "{what}"
                            );
                            assert!(l.beta.is_none_or(f64::is_finite), "{what}");
                        }
                        for l in &report.layers {
                            if let Some(d) = l.diversity {
                                assert!(
                                    d.log_det.is_finite() && d.mean_off_diagonal.is_finite(),
                                    "{what}: diversity {d:?} would be written to report.json as null"
                                );
                            }
                        }
                        // The written file holds no NaN either.
                        let file = small.to_tensors(&TensorFile::default()).unwrap();
                        let back = parse_safetensors(&safetensors_bytes(&file).unwrap()).unwrap();
                        for (name, t) in &back.tensors {
                            assert!(all_finite(&t.to_f32().unwrap()), "{what}: {name}");
                        }
                        // Constant and dead layers carry nothing the bias cannot: fusion makes
                        // the compressed network exact (to f32 rounding).
                        let out = small.forward(&x, m);
                        assert!(all_finite(&out), "{what}");
                        let enough = match kind {
                            "duplicates" => k >= 2 && method == SelectionMethod::Greedy,
                            _ => true,
                        };
                        if enough {
                            let worst = logits
                                .iter()
                                .zip(&out)
                                .map(|(a, b)| (a - b).abs())
                                .fold(0.0f32, f32::max);
                            assert!(worst < 1e-3, "{what}: logits differ by {worst}");
                        }
                    }
                }
            }
        }
    }
}
