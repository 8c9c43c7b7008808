//! `divnet compress-layer` driven as a binary: a gated FFN (gate and up produce the
//! activations, down reads them) plus tensors the command must not touch, in mixed dtypes.
//! The fused weights are checked against least squares by QR of the activations, the
//! report's error against ||Z - Z'|| computed from the activations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use divnet::fusion::NextLayer;
use divnet::io::npy::write_npy;
use divnet::io::safetensors::{read_safetensors, write_safetensors, Tensor, TensorFile};
use divnet::kernel::{gram_stats, ActivationRows};
use divnet::select::{fusion_greedy, fusion_swap};
use divnet::Backend;
use faer::linalg::solvers::SolveLstsq;
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;

mod python;

const M: usize = 60;
const N: usize = 16;
const D: usize = 5;
const N_OUT: usize = 7;

struct Fixture {
    dir: tempfile::TempDir,
    acts: Vec<f32>,
    model: TensorFile,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vals =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let acts: Vec<f32> = vals(M * N).into_iter().map(|v| v.max(-0.2)).collect();
        let t = |v: Vec<f32>, shape: Vec<usize>, dtype| Tensor::from_f32(&v, shape, dtype).unwrap();
        let mut model = TensorFile::default();
        model.insert(
            "embed.weight".into(),
            t(vals(3 * D), vec![3, D], Dtype::F16),
        );
        model.insert(
            "gate.weight".into(),
            t(vals(N * D), vec![N, D], Dtype::BF16),
        );
        model.insert("up.weight".into(), t(vals(N * D), vec![N, D], Dtype::F16));
        model.insert("up.bias".into(), t(vals(N), vec![N], Dtype::F32));
        model.insert(
            "down.weight".into(),
            t(vals(N_OUT * N), vec![N_OUT, N], Dtype::F32),
        );
        model.insert("down.bias".into(), t(vals(N_OUT), vec![N_OUT], Dtype::F32));
        model.insert(
            "norm.weight".into(),
            t(vals(N_OUT), vec![N_OUT], Dtype::BF16),
        );
        let dir = tempfile::tempdir().unwrap();
        write_npy(&dir.path().join("acts.npy"), &[M, N], &acts).unwrap();
        write_safetensors(&dir.path().join("model.safetensors"), &model).unwrap();
        Self { dir, acts, model }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.run_on("acts.npy", extra, &[])
    }

    /// `compress-layer` on the activations in `acts` (a file of the fixture), with `env`
    /// set for the child.
    fn run_on(&self, acts: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args: Vec<String> = vec![
            "compress-layer".into(),
            "--activations".into(),
            self.path(acts).display().to_string(),
            "--weights".into(),
            self.path("model.safetensors").display().to_string(),
            "--backend".into(),
            "cpu".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// The activations as f16 in an npy file, C or Fortran order.
    fn write_f16(&self, name: &str, fortran: bool) {
        let order = if fortran { "True" } else { "False" };
        let header =
            format!("{{'descr': '<f2', 'fortran_order': {order}, 'shape': ({M}, {N}), }}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for k in 0..M * N {
            let (t, i) = if fortran {
                (k % M, k / M)
            } else {
                (k / N, k % N)
            };
            let v = half::f16::from_f32(self.acts[t * N + i]);
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(self.path(name), bytes).unwrap();
    }

    fn a(&self, t: usize, i: usize) -> f64 {
        self.acts[t * N + i] as f64
    }

    fn w(&self) -> Vec<f32> {
        self.model.get("down.weight").unwrap().to_f32().unwrap()
    }

    fn b(&self) -> Vec<f32> {
        self.model.get("down.bias").unwrap().to_f32().unwrap()
    }

    /// Least squares of A_P on [A_Y, 1] by QR, folded into W and b.
    fn reference(&self, keep: &[usize]) -> (Vec<f64>, Vec<f64>) {
        let k = keep.len();
        let dropped: Vec<usize> = (0..N).filter(|i| !keep.contains(i)).collect();
        let x = Mat::from_fn(
            M,
            k + 1,
            |t, j| if j < k { self.a(t, keep[j]) } else { 1.0 },
        );
        let ap = Mat::from_fn(M, dropped.len(), |t, j| self.a(t, dropped[j]));
        let c = x.qr().solve_lstsq(&ap);
        let (w, b) = (self.w(), self.b());
        let mut wy = vec![0.0; N_OUT * k];
        let mut by = vec![0.0; N_OUT];
        for o in 0..N_OUT {
            for i in 0..=k {
                let fused: f64 = dropped
                    .iter()
                    .enumerate()
                    .map(|(j, &p)| w[o * N + p] as f64 * c[(i, j)])
                    .sum();
                if i < k {
                    wy[o * k + i] = w[o * N + keep[i]] as f64 + fused;
                } else {
                    by[o] = b[o] as f64 + fused;
                }
            }
        }
        (wy, by)
    }

    /// ||Z - Z'||_F / ||Z||_F for `down`: see [`Fixture::explicit_energies`].
    fn explicit_error(&self, keep: &[usize], w2: &[f32], b2: &[f32]) -> f64 {
        let (num, den) = self.explicit_energies((&self.w(), &self.b()), keep, (w2, b2));
        (num / den).sqrt()
    }

    /// `(||Z - Z'||_F^2, ||Z||_F^2)` with `Z = A W^T + b` and `Z' = A_Y W'^T + b'` for a
    /// next layer `(W, b)` and its fused `(W', b')`.
    fn explicit_energies(
        &self,
        (w, b): (&[f32], &[f32]),
        keep: &[usize],
        (w2, b2): (&[f32], &[f32]),
    ) -> (f64, f64) {
        let k = keep.len();
        let (mut num, mut den) = (0.0, 0.0);
        for t in 0..M {
            for o in 0..b.len() {
                let z = b[o] as f64
                    + (0..N)
                        .map(|i| self.a(t, i) * w[o * N + i] as f64)
                        .sum::<f64>();
                let z2 = b2[o] as f64
                    + (0..k)
                        .map(|i| self.a(t, keep[i]) * w2[o * k + i] as f64)
                        .sum::<f64>();
                num += (z - z2).powi(2);
                den += z * z;
            }
        }
        (num, den)
    }
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "divnet failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts that the command was refused (exit 2) with one last line `divnet: error: ...`
/// containing every one of `needles` (`what` says which case, for messages); returns the
/// whole stderr.
fn refused(out: &Output, needles: &[&str], what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("divnet: error: "), "{what}: {last:?}");
    for needle in needles {
        assert!(last.contains(needle), "{what}: {last:?} lacks {needle:?}");
    }
    err
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn given_keep_list_fuses_down_and_slices_gate_and_up() {
    let f = Fixture::new(1);
    let keep = vec![0, 2, 3, 5, 8, 9, 12, 15];
    std::fs::write(f.path("keep.json"), "[15, 0, 2, 3, 5, 8, 9, 12]").unwrap();
    let (out_path, rep_path) = (f.path("out.safetensors"), f.path("r.json"));
    ok(&f.run(&[
        "--next",
        "down",
        "--prev",
        "gate,up",
        "--keep",
        f.path("keep.json").to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--report",
        rep_path.to_str().unwrap(),
    ]));
    let out = read_safetensors(&out_path).unwrap();
    let k = keep.len();
    // A keep list skips selection: a --select beside it is refused, not ignored.
    let both = f.run(&[
        "--next",
        "down",
        "--keep",
        f.path("keep.json").to_str().unwrap(),
        "--select",
        "fusion-swap",
        "--out",
        f.path("never.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    // A stray comma in a list of names is named as such, and so are spaces after a comma,
    // which no tensor name has.
    for (names, message) in [
        (["--next", "down,"].as_slice(), "a layer's name is empty"),
        (
            ["--next", "down", "--prev", "gate, up"].as_slice(),
            "layer name \" up\" has spaces around it",
        ),
    ] {
        let never = f.path("never.safetensors");
        let args = [names, &["-k", "4", "--out", never.to_str().unwrap()]].concat();
        let refused = f.run(&args);
        assert_ne!(refused.status.code(), Some(0), "{names:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(message),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }

    // Same names, same dtypes; untouched tensors bit for bit.
    let mut names_in: Vec<&str> = f.model.names().collect();
    let mut names_out: Vec<&str> = out.names().collect();
    names_in.sort_unstable();
    names_out.sort_unstable();
    assert_eq!(names_in, names_out);
    for (name, t) in &f.model.tensors {
        let o = out.get(name).unwrap();
        assert_eq!(o.dtype, t.dtype, "{name}");
        if ["embed.weight", "norm.weight"].contains(&name.as_str()) {
            assert_eq!(o, t, "{name} must be copied unchanged");
        }
    }
    // Producing layers: rows of the kept neurons, as stored.
    for name in ["gate.weight", "up.weight", "up.bias"] {
        let t = f.model.get(name).unwrap();
        let o = out.get(name).unwrap();
        let row = t.bytes.len() / N;
        assert_eq!(o.shape[0], k, "{name}");
        assert_eq!(&o.shape[1..], &t.shape[1..], "{name}");
        for (r, &i) in keep.iter().enumerate() {
            assert_eq!(
                o.bytes[r * row..(r + 1) * row],
                t.bytes[i * row..(i + 1) * row],
                "{name} row {i}"
            );
        }
    }
    // Next layer: least squares by QR of [A_Y, 1].
    let (wy, by) = f.reference(&keep);
    let w2 = out.get("down.weight").unwrap();
    assert_eq!(w2.shape, vec![N_OUT, k]);
    let w2 = w2.to_f32().unwrap();
    let b2 = out.get("down.bias").unwrap().to_f32().unwrap();
    let scale = wy.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    for i in 0..N_OUT * k {
        assert!((w2[i] as f64 - wy[i]).abs() < 1e-4 * scale, "weight {i}");
    }
    for o in 0..N_OUT {
        assert!((b2[o] as f64 - by[o]).abs() < 1e-4 * scale, "bias {o}");
    }
    // Report: kept indices (sorted), ridge, the error as computed from the activations.
    let r = report(&rep_path);
    let kept: Vec<usize> = serde_json::from_value(r["kept"].clone()).unwrap();
    assert_eq!(kept, keep);
    assert_eq!(r["method"], "given");
    assert_eq!(r["fusion"], "fuse");
    assert!(r["ridge"].as_f64().unwrap() > 0.0);
    let explicit = f.explicit_error(&keep, &w2, &b2);
    let reported = r["relative_error"].as_f64().unwrap();
    assert!(
        (reported - explicit).abs() < 1e-3 * explicit,
        "reported {reported} vs explicit {explicit}"
    );
    let stages: Vec<String> = r["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap().to_string())
        .collect();
    assert!(stages.contains(&"fuse".to_string()), "{stages:?}");

    python_loads(&out_path, &out);
}

#[test]
fn no_fusion_slices_columns_and_selection_methods_keep_k() {
    let f = Fixture::new(2);
    let out_path = f.path("pruned.safetensors");
    let rep_path = f.path("r.json");
    ok(&f.run(&[
        "--next",
        "down",
        "-k",
        "6",
        "--select",
        "importance",
        "--no-fusion",
        "--out",
        out_path.to_str().unwrap(),
        "--report",
        rep_path.to_str().unwrap(),
    ]));
    // importance = ||W[:, i]|| * RMS(a_i), computed here independently.
    let w = f.w();
    let mut scores: Vec<(f64, usize)> = (0..N)
        .map(|i| {
            let col: f64 = (0..N_OUT).map(|o| (w[o * N + i] as f64).powi(2)).sum();
            let ms: f64 = (0..M).map(|t| f.a(t, i).powi(2)).sum::<f64>() / M as f64;
            (col.sqrt() * ms.sqrt(), i)
        })
        .collect();
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut want: Vec<usize> = scores[..6].iter().map(|s| s.1).collect();
    want.sort_unstable();
    let r = report(&rep_path);
    let kept: Vec<usize> = serde_json::from_value(r["kept"].clone()).unwrap();
    assert_eq!(kept, want);
    assert_eq!(r["fusion"], "prune");
    let out = read_safetensors(&out_path).unwrap();
    let w2 = out.get("down.weight").unwrap().to_f32().unwrap();
    for o in 0..N_OUT {
        for (c, &i) in kept.iter().enumerate() {
            assert_eq!(w2[o * 6 + c], w[o * N + i]);
        }
    }
    assert_eq!(out.get("down.bias"), f.model.get("down.bias"));
    // Without --prev the producing layers are untouched.
    assert_eq!(out.get("gate.weight"), f.model.get("gate.weight"));

    for method in [
        "kdpp",
        "greedy",
        "random",
        "fusion-greedy",
        "quality-kdpp",
        "quality-greedy",
    ] {
        let p = f.path(&format!("{method}.safetensors"));
        ok(&f.run(&[
            "--next",
            "down",
            "--prev",
            "up",
            "--keep-ratio",
            "0.5",
            "--select",
            method,
            "--seed",
            "3",
            "--out",
            p.to_str().unwrap(),
        ]));
        let out = read_safetensors(&p).unwrap();
        assert_eq!(
            out.get("down.weight").unwrap().shape,
            vec![N_OUT, 8],
            "{method}"
        );
        assert_eq!(out.get("up.weight").unwrap().shape, vec![8, D], "{method}");
    }
}

/// Two layers read the activations (down and a second projection "skip"): fusion-greedy
/// selects for both together, both are fused, and the report's error is theirs together,
/// as computed from the activations, and what the selection predicted.
#[test]
fn fusion_greedy_selects_for_every_next_layer_and_fuses_each() {
    let mut f = Fixture::new(5);
    let mut rng = ChaCha8Rng::seed_from_u64(55);
    let skip_w: Vec<f32> = (0..3 * N).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let skip_b: Vec<f32> = (0..3).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    f.model.insert(
        "skip.weight".into(),
        Tensor::from_f32(&skip_w, vec![3, N], Dtype::F16).unwrap(),
    );
    f.model.insert(
        "skip.bias".into(),
        Tensor::from_f32(&skip_b, vec![3], Dtype::F16).unwrap(),
    );
    write_safetensors(&f.path("model.safetensors"), &f.model).unwrap();
    // Six neurons for both layers by `rule`, with its model and report.
    let run_rule = |rule: &str, out: &Path, rep: &Path| {
        f.run(&[
            "--next",
            "down,skip",
            "--prev",
            "gate,up",
            "-k",
            "6",
            "--select",
            rule,
            "--out",
            out.to_str().unwrap(),
            "--report",
            rep.to_str().unwrap(),
        ])
    };
    let (out_path, rep_path) = (f.path("out.safetensors"), f.path("r.json"));
    ok(&run_rule("fusion-greedy", &out_path, &rep_path));
    let r = report(&rep_path);
    assert_eq!(r["method"], "fusion-greedy");
    let kept: Vec<usize> = serde_json::from_value(r["kept"].clone()).unwrap();

    // The library's selection over both layers, on the statistics the command accumulates.
    let stats = gram_stats(&Backend::Cpu, ActivationRows::F32(&f.acts), N).unwrap();
    let read = |name: &str| f.model.get(name).unwrap().to_f32().unwrap();
    let (down_w, down_b, skip_w16, skip_b16) = (
        read("down.weight"),
        read("down.bias"),
        read("skip.weight"),
        read("skip.bias"),
    );
    let layers = [
        NextLayer {
            weight: &down_w,
            bias: Some(&down_b),
            n_out: N_OUT,
            n_in: N,
        },
        NextLayer {
            weight: &skip_w16,
            bias: Some(&skip_b16),
            n_out: 3,
            n_in: N,
        },
    ];
    let selection = fusion_greedy(&stats, &layers, 6).unwrap();
    let mut want = selection.order.clone();
    want.sort_unstable();
    assert_eq!(kept, want);
    assert!(r["swap_search"].is_null());

    // Fusion-swap from there: the report and the summary say how its search went.
    let swap_rep = f.path("swap.json");
    let swap_run = run_rule("fusion-swap", &f.path("swap.safetensors"), &swap_rep);
    ok(&swap_run);
    let swapped = fusion_swap(&stats, &layers, 6).unwrap();
    let r = report(&swap_rep);
    assert_eq!(
        serde_json::from_value::<Vec<usize>>(r["kept"].clone()).unwrap(),
        swapped.kept
    );
    assert_eq!(r["swap_search"]["swaps"], swapped.swaps);
    assert_eq!(r["swap_search"]["passes"], swapped.passes);
    assert_eq!(r["swap_search"]["capped"], swapped.capped);
    let stderr = String::from_utf8_lossy(&swap_run.stderr);
    assert!(
        stderr.contains(&format!(
            "fusion-swap: {} swaps in {} passes over the rows",
            swapped.swaps, swapped.passes
        )),
        "{stderr}"
    );

    // Both layers fused, each one's error and the combined one as the activations give them.
    let out = read_safetensors(&out_path).unwrap();
    let mut num = 0.0;
    let mut den = 0.0;
    for (l, (name, n_out)) in [("down", N_OUT), ("skip", 3)].into_iter().enumerate() {
        let w = out.get(&format!("{name}.weight")).unwrap();
        assert_eq!(w.shape, vec![n_out, 6], "{name}");
        let w2 = w.to_f32().unwrap();
        let b2 = out.get(&format!("{name}.bias")).unwrap().to_f32().unwrap();
        let (e, z2) = f.explicit_energies(
            (layers[l].weight, layers[l].bias.unwrap()),
            &kept,
            (&w2, &b2),
        );
        num += e;
        den += z2;
    }
    let combined = (num / den).sqrt();
    let reported = r["relative_error"].as_f64().unwrap();
    assert!(
        (reported - combined).abs() < 1e-3 * combined,
        "combined: reported {reported} vs {combined}"
    );
    // ... which is what the selection predicted.
    assert!(
        (selection.relative_error(6) - reported).abs() < 1e-3 * reported,
        "predicted {} vs reported {reported}",
        selection.relative_error(6)
    );
    assert_eq!(out.get("up.weight").unwrap().shape, vec![6, D]);
}

#[test]
fn missing_bias_is_created_for_the_constant_term() {
    let mut f = Fixture::new(3);
    f.model.remove("down.bias");
    write_safetensors(&f.path("model.safetensors"), &f.model).unwrap();
    let out_path = f.path("out.safetensors");
    ok(&f.run(&[
        "--next",
        "down",
        "-k",
        "10",
        "--select",
        "greedy",
        "--out",
        out_path.to_str().unwrap(),
    ]));
    let out = read_safetensors(&out_path).unwrap();
    let b = out
        .get("down.bias")
        .expect("fusion with a constant needs a bias");
    assert_eq!(b.dtype, Dtype::F32);
    assert_eq!(b.shape, vec![N_OUT]);
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_output() {
    let mut f = Fixture::new(4);
    // A square n x n layer, which could both produce and read the activations by its shape.
    f.model.insert(
        "mix.weight".into(),
        Tensor::from_f32(&vec![0.5; N * N], vec![N, N], Dtype::F32).unwrap(),
    );
    f.model.insert(
        "empty.weight".into(),
        Tensor::from_f32(&[], vec![0, N], Dtype::F32).unwrap(),
    );
    write_safetensors(&f.path("model.safetensors"), &f.model).unwrap();
    let out_path = f.path("never.safetensors");
    let out = out_path.to_str().unwrap();
    std::fs::write(f.path("bad_keep.json"), "[1, 99]").unwrap();
    let bad_keep = f.path("bad_keep.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--next", "nope", "-k", "4"], "no tensor nope.weight"),
        (
            vec!["--next", "down", "--prev", "embed", "-k", "4"],
            "embed.weight",
        ),
        (vec!["--next", "up", "-k", "4"], "up.weight"),
        (vec!["--next", "down", "-k", "40"], "40"),
        (
            vec!["--next", "down", "--keep", bad_keep.to_str().unwrap()],
            "bad_keep.json",
        ),
        (vec!["--next", "down"], "-k"),
        (
            vec!["--next", "down,down", "-k", "4"],
            "next layer down is given twice",
        ),
        (
            vec!["--next", "mix", "--prev", "up,mix", "-k", "4"],
            "mix is given both",
        ),
        (
            vec!["--next", "down", "--prev", "up,up", "-k", "4"],
            "producing layer up is given twice",
        ),
        (
            vec!["--next", "down", "-k", "4", "--select", "recon"],
            "recon",
        ),
        (
            vec!["--next", "empty", "-k", "4"],
            "model.safetensors: empty.weight has shape [0, 16]: a layer with no outputs",
        ),
    ];
    for (args, needle) in cases {
        let mut all = args.clone();
        all.extend(["--out", out]);
        refused(&f.run(&all), &[needle], &format!("{args:?}"));
        assert!(!out_path.exists(), "{args:?} left an output file");
    }
}

/// k above the rank of the kernel over the neurons is a fact about the activations: the
/// message names their file, whichever sampler meets it. (The columns route computes its
/// distances from f32 co-moments against an exact diagonal, so it sees duplicates as
/// rounding-level apart; with `--eps 0` it keeps them where the whole kernel refuses.)
#[test]
fn a_rank_refusal_names_the_activations() {
    let f = Fixture::new(11);
    // Neurons 8..16 repeat neurons 0..8: with no diagonal added, the kernel has rank 8.
    let dup: Vec<f32> = (0..M * N)
        .map(|k| f.acts[(k / N) * N + (k % N) % 8])
        .collect();
    write_npy(&f.path("dup.npy"), &[M, N], &dup).unwrap();
    let out_path = f.path("never.safetensors");
    let out = out_path.to_str().unwrap();
    for method in ["kdpp", "greedy"] {
        let args = [
            "--next", "down", "-k", "10", "--eps", "0", "--select", method, "--out", out,
        ];
        refused(
            &f.run_on("dup.npy", &args, &[]),
            &["dup.npy: k = 10 exceeds the numerical rank"],
            method,
        );
        assert!(!out_path.exists(), "{method} left an output file");
    }
}

/// Fusion into k kept neurons fits k + 1 unknowns per output: with fewer than 10 calibration
/// rows per unknown the report says that its error understates the error on new inputs;
/// plain pruning fits nothing and says nothing.
#[test]
fn too_few_calibration_rows_for_the_fusion_are_noted() {
    let f = Fixture::new(12);
    let notes = |extra: &[&str]| -> Vec<String> {
        let (out, rep) = (f.path("o.safetensors"), f.path("r.json"));
        let mut args = vec![
            "--next",
            "down",
            "--select",
            "importance",
            "--out",
            out.to_str().unwrap(),
            "--report",
            rep.to_str().unwrap(),
        ];
        args.extend(extra);
        ok(&f.run(&args));
        report(&rep)["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .filter(|n| n.contains("calibration rows"))
            .collect()
    };
    // M = 60 rows: enough for 4 kept neurons and the constant (50), not for 8 (90).
    assert!(notes(&["-k", "4"]).is_empty());
    let few = notes(&["-k", "8"]);
    assert_eq!(few.len(), 1, "{few:?}");
    assert!(
        few[0].contains("60 calibration rows for 9 unknowns") && few[0].contains("at least 90"),
        "{few:?}"
    );
    assert!(notes(&["-k", "8", "--no-fusion"]).is_empty());
    // Every neuron kept: nothing is fitted, the layer is exact on any input.
    assert!(notes(&["--keep-ratio", "1"]).is_empty());
    let without_constant = notes(&["-k", "8", "--no-bias"]);
    assert!(
        without_constant[0].contains("8 unknowns"),
        "{without_constant:?}"
    );
}

/// A gated FFN (in a module, as transformers name theirs) compressed with only one of its
/// two producing projections: the other keeps its rows and no longer fits, and the report
/// says so, naming it (its shape could match by chance, so it is a note, not a refusal);
/// with both given, no such note. Top-level names (an MLP's fc1, fc2, fc3, whose widths
/// repeat by design) get no such notes.
#[test]
fn a_producing_layer_left_out_is_noted() {
    let f = Fixture::new(13);
    let mut nested = TensorFile::default();
    for name in f.model.names() {
        nested.insert(format!("mlp.{name}"), f.model.get(name).unwrap().clone());
    }
    write_safetensors(&f.path("nested.safetensors"), &nested).unwrap();
    let notes = |weights: &str, next: &str, prev: &str| -> Vec<String> {
        let (out, rep) = (f.path("o.safetensors"), f.path("r.json"));
        let run = Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(["compress-layer", "--backend", "cpu", "--activations"])
            .arg(f.path("acts.npy"))
            .arg("--weights")
            .arg(f.path(weights))
            .args(["--next", next, "--prev", prev, "-k", "4", "--out"])
            .arg(&out)
            .arg("--report")
            .arg(&rep)
            .output()
            .unwrap();
        ok(&run);
        report(&rep)["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .filter(|n| n.contains("beside the layers given"))
            .collect()
    };
    let left_out = notes("nested.safetensors", "mlp.down", "mlp.up");
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    assert!(
        left_out[0].starts_with(&format!("mlp.gate.weight [{N}, {D}]"))
            && left_out[0].contains("producing layers (prev)"),
        "{left_out:?}"
    );
    assert!(notes("nested.safetensors", "mlp.down", "mlp.gate,mlp.up").is_empty());
    assert!(notes("model.safetensors", "down", "up").is_empty());
}

/// The report says what reproduces the run: divnet's version, the files read, the layers
/// read and fused, the seed.
#[test]
fn the_report_records_version_layers_and_seed() {
    let f = Fixture::new(15);
    let (out, rep) = (f.path("o.safetensors"), f.path("r.json"));
    ok(&f.run(&[
        "--next",
        "down",
        "--prev",
        "gate,up",
        "-k",
        "4",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]));
    let r = report(&rep);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["name"], "gate,up");
    assert_eq!(r["next"], serde_json::json!(["down"]));
    assert_eq!(r["seed"], 7);
    let input = |key: &str| r["inputs"][key].as_str().unwrap().to_string();
    assert_eq!(
        input("activations"),
        f.path("acts.npy").display().to_string()
    );
    assert_eq!(
        input("weights"),
        f.path("model.safetensors").display().to_string()
    );
    assert!(r["inputs"]["keep"].is_null());
}

/// The output loads with Python's safetensors (scripts/check_safetensors.py): skips without
/// Python + safetensors + numpy unless DIVNET_REQUIRE_PYTHON=1 (as in CI).
fn python_loads(path: &Path, file: &TensorFile) {
    let Some(python) = python::python_with_safetensors() else {
        return;
    };
    let mut tensors = serde_json::Map::new();
    for (name, t) in &file.tensors {
        let values: Vec<f64> = t.to_f32().unwrap().iter().map(|&v| v as f64).collect();
        tensors.insert(
            name.clone(),
            serde_json::json!({"dtype": format!("{:?}", t.dtype), "shape": t.shape, "values": values}),
        );
    }
    let expected = path.with_extension("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({"tensors": tensors, "metadata": file.metadata}).to_string(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_safetensors.py");
    let o = Command::new(&python)
        .arg(script)
        .arg(path)
        .arg(&expected)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two layers read the activations (`--next down,skip`): both are fused with the same kept
/// set, `skip` (no bias) gets one created for the fused constant, and `down` comes out as it
/// does when fused alone.
#[test]
fn several_next_layers_are_fused_together() {
    let f = Fixture::new(11);
    let mut model = f.model.clone();
    let skip: Vec<f32> = (0..3 * N)
        .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
        .collect();
    model.insert(
        "skip.weight".into(),
        Tensor::from_f32(&skip, vec![3, N], Dtype::F16).unwrap(),
    );
    write_safetensors(&f.path("model.safetensors"), &model).unwrap();
    std::fs::write(f.path("keep.json"), "[0, 3, 4, 9, 12, 15]").unwrap();
    let keep = f.path("keep.json");
    let run_on = |next: &str, out: &str, route: &str| {
        let (out, rep) = (f.path(out), f.path(&format!("{next}-{route}.json")));
        let o = f.run(&[
            "--next",
            next,
            "--prev",
            "gate,up",
            "--keep",
            keep.to_str().unwrap(),
            "--route",
            route,
            "--out",
            out.to_str().unwrap(),
            "--report",
            rep.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{next}: {err}");
        (read_safetensors(&out).unwrap(), err, report(&rep))
    };
    let run = |next: &str, out: &str| run_on(next, out, "one-pass");
    let (both, err, _) = run("down,skip", "both.safetensors");
    let (alone, _, _) = run("down", "alone.safetensors");
    // Each next layer's own error: what it has fused alone with the same kept neurons (the
    // fusion is one least-squares problem per output row), on both routes.
    for route in ["one-pass", "two-pass"] {
        let (_, err, r) = run_on("down,skip", "both.safetensors", route);
        let errors: Vec<f64> = serde_json::from_value(r["next_errors"].clone()).unwrap();
        assert_eq!(errors.len(), 2, "{r}");
        for (i, name) in ["down", "skip"].iter().enumerate() {
            let (_, _, single) = run_on(name, "single.safetensors", route);
            let want = single["relative_error"].as_f64().unwrap();
            assert!(
                (errors[i] - want).abs() <= 1e-9 * want,
                "{route} {name}: {} vs {want}",
                errors[i]
            );
            assert!(
                err.contains(&format!("  {name}: next-layer error")),
                "{err}"
            );
        }
        let combined = r["relative_error"].as_f64().unwrap();
        let lo = errors.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = errors.iter().copied().fold(0.0, f64::max);
        assert!(
            lo <= combined && combined <= hi,
            "{combined} outside {errors:?}"
        );
    }
    assert!(err.contains("skip.bias: created"), "{err}");
    let skip_w = both.get("skip.weight").unwrap();
    assert_eq!(
        (skip_w.dtype, skip_w.shape.clone()),
        (Dtype::F16, vec![3, 6])
    );
    assert_eq!(both.get("skip.bias").unwrap().shape, vec![3]);
    let w_both = both.get("down.weight").unwrap().to_f32().unwrap();
    let w_alone = alone.get("down.weight").unwrap().to_f32().unwrap();
    assert_eq!(w_both.len(), N_OUT * 6);
    for (a, b) in w_both.iter().zip(&w_alone) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert_eq!(both.get("gate.weight").unwrap().shape, vec![6, D]);
}

/// f16 activations in Fortran order stream through `compress-layer` as C-order ones do (the
/// same output, byte for byte), and the two-pass route keeps the same neurons with the same
/// fused layer; the report says which route ran, with the plan and the peak memory.
#[test]
fn fortran_f16_activations_and_the_two_pass_route() {
    let f = Fixture::new(21);
    f.write_f16("c.npy", false);
    f.write_f16("f.npy", true);
    let run = |acts: &str, route: &str, out: &str| {
        let (out, rep) = (f.path(out), f.path(&format!("{out}.json")));
        let o = f.run_on(
            acts,
            &[
                "--next",
                "down",
                "--prev",
                "gate,up",
                "--select",
                "greedy",
                "-k",
                "6",
                "--route",
                route,
                "--out",
                out.to_str().unwrap(),
                "--report",
                rep.to_str().unwrap(),
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&ok(&o).stderr).to_string();
        (std::fs::read(&out).unwrap(), report(&rep), stderr)
    };
    let (c_one, r_c_one, _) = run("c.npy", "one-pass", "c1.safetensors");
    let (f_one, _, stderr) = run("f.npy", "one-pass", "f1.safetensors");
    assert!(stderr.contains("Fortran order"), "{stderr}");
    assert_eq!(c_one, f_one, "Fortran and C order give the same output");
    let (f_two, r_two, stderr) = run("f.npy", "two-pass", "f2.safetensors");
    assert!(stderr.contains("route: two-pass"), "{stderr}");
    assert_eq!(r_two["route"], "two-pass");
    assert_eq!(r_c_one["route"], "one-pass");
    assert_eq!(r_two["kept"], r_c_one["kept"]);
    let tensors = |bytes: &[u8]| {
        let path = f.path("tmp.safetensors");
        std::fs::write(&path, bytes).unwrap();
        read_safetensors(&path).unwrap()
    };
    let (one, two) = (tensors(&c_one), tensors(&f_two));
    let (w1, w2) = (
        one.get("down.weight").unwrap().to_f32().unwrap(),
        two.get("down.weight").unwrap().to_f32().unwrap(),
    );
    for (a, b) in w1.iter().zip(&w2) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }
    let (e1, e2) = (
        r_c_one["relative_error"].as_f64().unwrap(),
        r_two["relative_error"].as_f64().unwrap(),
    );
    assert!((e1 - e2).abs() <= 1e-5 * e1, "{e1} vs {e2}");
    assert_eq!(r_two["plan"]["route"], "two-pass");
    assert!(r_two["plan"]["memory"]["stages"].as_array().unwrap().len() >= 4);
    let memory = &r_two["memory"];
    assert!(memory["planned_peak_bytes"].as_u64().unwrap() > 0);
    let stages: Vec<&str> = memory["peak_rss_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "statistics",
            "kernel",
            "select",
            "fusion statistics",
            "fuse"
        ]
    );
}

/// A wide layer's files for the memory-plan tests: `acts` (m x n) as `wide.npy`, and a
/// next layer `down` (n_out x n) in `m.safetensors`.
fn write_wide_layer(
    dir: &Path,
    m: usize,
    n: usize,
    n_out: usize,
    acts: &[f32],
) -> (PathBuf, PathBuf) {
    let acts_path = dir.join("wide.npy");
    write_npy(&acts_path, &[m, n], acts).unwrap();
    let mut model = TensorFile::default();
    let w: Vec<f32> = (0..n_out * n)
        .map(|i| ((i * 13) % 7) as f32 - 3.0)
        .collect();
    model.insert(
        "down.weight".into(),
        Tensor::from_f32(&w, vec![n_out, n], Dtype::F32).unwrap(),
    );
    let model_path = dir.join("m.safetensors");
    write_safetensors(&model_path, &model).unwrap();
    (acts_path, model_path)
}

/// What the library's plan for `route` needs, with the margin, to keep `k` of the n
/// neurons of an (m, n, n_out) layer by `method` on the CPU.
fn planned_need(
    method: divnet::select::SelectionMethod,
    k: usize,
    (m, n, n_out): (usize, usize, usize),
    route: divnet::compress::Route,
) -> u64 {
    use divnet::compress::{plan_layer, KeepSpec, LayerOptions};
    let mut opts = LayerOptions::new(KeepSpec::Count(k));
    opts.method = method;
    opts.route = Some(route);
    plan_layer(&divnet::Backend::Cpu, n, m, &[n_out], &opts)
        .unwrap()
        .memory
        .need_with_margin()
}

/// A layer of 1500 neurons with random selection: the plan of each route, as the library
/// makes it, decides what `DIVNET_MEMORY_AVAILABLE` must pretend for the command to take
/// one pass (when that takes at most `ONE_PASS_SHARE` of the free memory), two passes
/// (when one pass would take more, even though it fits), or to refuse the layer with a
/// message that says what it needs and what is free, exit code 2 and no output.
/// `--dry-run` prints the plan and writes nothing.
#[test]
fn the_memory_check_chooses_the_route_or_refuses_the_layer() {
    use divnet::compress::{Route, ONE_PASS_SHARE};
    use divnet::select::SelectionMethod;

    let (m, n, n_out) = (40, 1500, 4);
    let dir = tempfile::tempdir().unwrap();
    let acts: Vec<f32> = (0..m * n)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let (acts_path, model_path) = write_wide_layer(dir.path(), m, n, n_out, &acts);

    let need = |route| planned_need(SelectionMethod::Random, 100, (m, n, n_out), route);
    let (one, two) = (need(Route::OnePass), need(Route::TwoPass));
    assert!(two < one, "the two-pass route needs less: {two} vs {one}");

    let out = dir.path().join("out.safetensors");
    let rep = dir.path().join("r.json");
    let run = |available: u64, extra: &[&str]| {
        let mut args = vec![
            "compress-layer".to_string(),
            "--activations".into(),
            acts_path.display().to_string(),
            "--weights".into(),
            model_path.display().to_string(),
            "--next".into(),
            "down".into(),
            "--select".into(),
            "random".into(),
            "-k".into(),
            "100".into(),
            "--backend".into(),
            "cpu".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(&args)
            .env("DIVNET_MEMORY_AVAILABLE", available.to_string())
            .output()
            .unwrap()
    };
    let to_file = [
        "--out",
        out.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ];
    let share = ONE_PASS_SHARE;
    for (available, route) in [
        (one * share, "one-pass"),
        (one * share - 1, "two-pass"),
        (one, "two-pass"),
        ((one + two) / 2, "two-pass"),
    ] {
        ok(&run(available, &to_file));
        let r = report(&rep);
        assert_eq!(r["route"], route, "{available} bytes free");
        assert_eq!(r["memory"]["available_bytes"].as_u64(), Some(available));
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&rep).unwrap();
    }

    let refused = run(two - 1, &to_file);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("divnet: error: a layer of 1500 neurons")
            && last.contains("needs")
            && last.contains("is available (DIVNET_MEMORY_AVAILABLE)"),
        "{stderr}"
    );
    assert!(!out.exists() && !rep.exists(), "nothing is written");

    let bad = Command::new(env!("CARGO_BIN_EXE_divnet"))
        .args(["compress-layer", "--activations"])
        .arg(&acts_path)
        .args(["--weights"])
        .arg(&model_path)
        .args(["--next", "down", "-k", "3", "--dry-run"])
        .env("DIVNET_MEMORY_AVAILABLE", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("DIVNET_MEMORY_AVAILABLE=\"lots\" is not a size"),
        "{stderr}"
    );

    let dry = run(one * share, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&ok(&dry).stdout).to_string();
    assert!(
        stdout.starts_with("route: one-pass")
            && stdout.contains(&format!("at most 1/{share} of the free memory"))
            && stdout.contains("at its peak"),
        "{stdout}"
    );
    assert!(
        stdout.contains("is available (DIVNET_MEMORY_AVAILABLE)"),
        "{stdout}"
    );
    assert!(!out.exists());
}

/// Greedy MAP on a layer whose kernel does not fit: `auto` takes the columns route (kernel
/// columns computed from the activations, no n x n matrix) when two passes do not fit,
/// says so, and keeps what the two-pass route keeps; with the median beta, which needs every
/// distance, the columns route is refused before any pass.
#[test]
fn greedy_takes_the_columns_route_when_the_kernel_does_not_fit() {
    use divnet::compress::Route;
    use divnet::select::SelectionMethod;

    let (m, n, n_out) = (60, 1200, 4);
    let dir = tempfile::tempdir().unwrap();
    let acts: Vec<f32> = (0..m * n)
        .map(|i| ((i * 37 + i / n * 11) % 101) as f32 / 101.0)
        .collect();
    let (acts_path, model_path) = write_wide_layer(dir.path(), m, n, n_out, &acts);

    let need = |route| planned_need(SelectionMethod::Greedy, 20, (m, n, n_out), route);
    let (one, two, columns) = (
        need(Route::OnePass),
        need(Route::TwoPass),
        need(Route::Columns),
    );
    // Neither pass route fits here; the columns route does.
    let between = (one.min(two) + columns) / 2;
    assert!(columns < between, "columns {columns}, two {two}, one {one}");

    let run = |available: u64, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(["compress-layer", "--activations"])
            .arg(&acts_path)
            .args(["--weights"])
            .arg(&model_path)
            .args(["--next", "down", "--select", "greedy", "-k", "20"])
            .args(["--backend", "cpu"])
            .args(extra)
            .env("DIVNET_MEMORY_AVAILABLE", available.to_string())
            .output()
            .unwrap()
    };
    let mut kept = Vec::new();
    for (available, asked, route) in [
        (one.max(two), "two-pass", "two-pass"),
        (between, "auto", "columns"),
    ] {
        let rep = dir.path().join(format!("{route}.json"));
        let out = dir.path().join(format!("{route}.safetensors"));
        let (out, rep_arg) = (out.to_str().unwrap(), rep.to_str().unwrap());
        ok(&run(
            available,
            &["--route", asked, "--out", out, "--report", rep_arg],
        ));
        let r = report(&rep);
        assert_eq!(r["route"], route, "{available} bytes free");
        kept.push(r["kept"].clone());
    }
    assert_eq!(kept[0], kept[1]);

    let refused = run(between, &["--beta", "median", "--dry-run"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("needs"), "{stderr}");
    let refused = run(
        two,
        &["--beta", "median", "--route", "columns", "--dry-run"],
    );
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("median heuristic"), "{stderr}");
}

/// The output paths are checked before any work, and the model and its report are written
/// together or not at all: a report that cannot be written leaves no new model (and the
/// previous one as it was), and `--out` and `--report` may not name the same file.
#[test]
fn outputs_are_checked_first_and_written_together() {
    let f = Fixture::new(6);
    let model = f.path("small.safetensors");
    std::fs::write(&model, b"the previous model").unwrap();
    std::fs::create_dir(f.path("folder")).unwrap();
    let missing = f.path("missing").join("r.json");
    let model_s = model.to_str().unwrap();
    let folder = f.path("folder");
    let weights = f.path("model.safetensors");
    let weights_s = weights.to_str().unwrap();
    let weights_bytes = std::fs::read(&weights).unwrap();
    let dotted = format!("{}/./model.safetensors", f.dir.path().display());
    let linked = f.path("linked.safetensors");
    std::fs::hard_link(&weights, &linked).unwrap();
    let linked_s = linked.to_str().unwrap();
    let acts = f.path("acts.npy");
    let acts_s = acts.to_str().unwrap();
    let acts_bytes = std::fs::read(&acts).unwrap();
    let keep = f.path("keep.json");
    std::fs::write(&keep, "[0, 1, 2, 3]").unwrap();
    let keep_s = keep.to_str().unwrap();
    let read_only = f.path("read_only.safetensors");
    std::fs::write(&read_only, b"kept").unwrap();
    let mut perms = std::fs::metadata(&read_only).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&read_only, perms).unwrap();
    let read_only_s = read_only.to_str().unwrap();
    let fifo = f.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo_s = fifo.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--out", model_s, "--report", missing.to_str().unwrap()],
            "--report",
        ),
        (vec!["--out", folder.to_str().unwrap()], "--out"),
        (vec!["--out", model_s, "--report", model_s], "same file"),
        // An output that is an input: the activations, the network (also through another
        // spelling of its path, or a hard link), or the keep list.
        (vec!["--out", model_s, "--report", acts_s], "--report"),
        (vec!["--out", weights_s], "is the input --weights"),
        (vec!["--out", &dotted], "is the input --weights"),
        (vec!["--out", linked_s], "is the input --weights"),
        (
            vec!["--keep", keep_s, "--out", model_s, "--report", keep_s],
            "is the input --keep",
        ),
        (
            vec!["--out", weights_s, "--dry-run"],
            "is the input --weights",
        ),
        (vec!["--out", read_only_s], "read-only"),
        (vec!["--out", "-"], "not standard output"),
        // A pipe (as /dev/null or /dev/stdout would be) is not replaced by a regular file.
        (
            vec!["--out", model_s, "--report", fifo_s],
            "not a regular file",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--next", "down"];
        if !args.contains(&"--keep") {
            all.extend(["-k", "4"]);
        }
        all.extend(args.iter().copied());
        let err = refused(&f.run(&all), &[needle], &format!("{args:?}"));
        // Refused before the work, whose summary starts with the route it took.
        assert!(!err.contains("route:"), "{args:?}: {err}");
        assert_eq!(std::fs::read(&model).unwrap(), b"the previous model");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), weights_bytes);
    assert_eq!(std::fs::read(f.path("acts.npy")).unwrap(), acts_bytes);
    let names: Vec<String> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "temporary file left: {names:?}"
    );
}

/// Fusion folds a dropped neuron that is 1000 times a kept one into that neuron's weights:
/// 70 x 1000 is more than F16 holds (65504). The command refuses, naming the file, the
/// tensor and the entry, and writes nothing, instead of storing an infinity.
#[test]
fn fused_weights_beyond_the_dtype_are_refused() {
    let f = Fixture::new(7);
    let mut acts = f.acts.clone();
    for t in 0..M {
        acts[t * N + 11] = 1000.0 * acts[t * N + 4];
    }
    write_npy(&f.path("scaled.npy"), &[M, N], &acts).unwrap();
    let mut model = f.model.clone();
    let mut w = f.w();
    for o in 0..N_OUT {
        w[o * N + 11] = 70.0;
    }
    model.insert(
        "down.weight".into(),
        Tensor::from_f32(&w, vec![N_OUT, N], Dtype::F16).unwrap(),
    );
    write_safetensors(&f.path("model.safetensors"), &model).unwrap();
    let keep: Vec<usize> = (0..N).filter(|&i| i != 11).collect();
    std::fs::write(f.path("keep.json"), serde_json::to_string(&keep).unwrap()).unwrap();
    let out = f.path("never.safetensors");
    let o = f.run_on(
        "scaled.npy",
        &[
            "--next",
            "down",
            "--keep",
            f.path("keep.json").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    refused(
        &o,
        &["model.safetensors", "down.weight", "does not fit F16"],
        "fused weight past F16",
    );
    assert!(!out.exists());
}

/// `--dry-run` checks what the run checks before its work: a weight that is not finite and a
/// ridge factor out of range are the same errors there (a dry run printed the plan for
/// both), and the run refuses the ridge factor before the statistics, not at the fusion.
#[test]
fn a_dry_run_refuses_what_the_run_refuses() {
    let f = Fixture::new(8);
    let mut model = f.model.clone();
    let mut w = f.w();
    w[2 * N + 3] = f32::NAN;
    // Raw bytes: encoding refuses a NaN.
    model.insert(
        "down.weight".into(),
        Tensor {
            dtype: Dtype::F32,
            shape: vec![N_OUT, N],
            bytes: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
    );
    write_safetensors(&f.path("nan.safetensors"), &model).unwrap();
    let nan = f.path("nan.safetensors");
    let out = f.path("never.safetensors");
    for (weights, extra, needle) in [
        (nan.as_path(), vec!["--dry-run"], "down.weight[2, 3]"),
        (
            f.path("model.safetensors").as_path(),
            vec!["--dry-run", "--ridge-factor=-1"],
            "ridge factor -1",
        ),
        (
            f.path("model.safetensors").as_path(),
            vec!["--ridge-factor=nan", "--out", out.to_str().unwrap()],
            "ridge factor NaN",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args([
                "compress-layer",
                "--next",
                "down",
                "-k",
                "4",
                "--backend",
                "cpu",
            ])
            .arg("--activations")
            .arg(f.path("acts.npy"))
            .arg("--weights")
            .arg(weights)
            .args(&extra)
            .output()
            .unwrap();
        let err = refused(&o, &[needle], &format!("{extra:?}"));
        assert!(!err.contains("route:"), "{extra:?}: the work ran: {err}");
    }
    assert!(!out.exists());
}

/// F64 next layers keep their precision where the compression leaves an entry alone: plain
/// pruning copies the kept columns and the bias bit for bit, and so does fusion when every
/// neuron is kept (divnet computes in f32; entries it changes carry the change at that
/// precision).
#[test]
fn f64_next_layers_keep_their_values_where_nothing_changes() {
    let f = Fixture::new(9);
    let mut model = f.model.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let w: Vec<f64> = (0..N_OUT * N)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let b: Vec<f64> = (0..N_OUT).map(|_| rng.random_range(-1.0..1.0)).collect();
    let f64_tensor = |v: &[f64], shape: Vec<usize>| Tensor {
        dtype: Dtype::F64,
        shape,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    model.insert("down.weight".into(), f64_tensor(&w, vec![N_OUT, N]));
    model.insert("down.bias".into(), f64_tensor(&b, vec![N_OUT]));
    write_safetensors(&f.path("model.safetensors"), &model).unwrap();
    let f64_values = |t: &Tensor| -> Vec<f64> {
        t.bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let keep = [1usize, 4, 6, 9, 12];
    std::fs::write(f.path("keep.json"), serde_json::to_string(&keep).unwrap()).unwrap();
    let all: Vec<usize> = (0..N).collect();
    std::fs::write(f.path("all.json"), serde_json::to_string(&all).unwrap()).unwrap();
    for (list, extra, kept) in [
        ("keep.json", vec!["--no-fusion"], &keep[..]),
        ("all.json", vec![], &all[..]),
    ] {
        let out = f.path("out.safetensors");
        let (list_path, out_path) = (f.path(list), out.to_str().unwrap().to_string());
        let mut args = vec![
            "--next",
            "down",
            "--keep",
            list_path.to_str().unwrap(),
            "--out",
            &out_path,
        ];
        args.extend(extra);
        ok(&f.run(&args));
        let file = read_safetensors(&out).unwrap();
        let got = f64_values(file.get("down.weight").unwrap());
        let k = kept.len();
        for o in 0..N_OUT {
            for (i, &y) in kept.iter().enumerate() {
                assert_eq!(got[o * k + i], w[o * N + y], "{list}: [{o}, {i}]");
            }
        }
        assert_eq!(f64_values(file.get("down.bias").unwrap()), b, "{list}");
    }
}
