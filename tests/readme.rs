//! The README's library example is code that compiles and runs: its body is copied here
//! between the markers, run on a small layer, and compared with the README's block line for
//! line, so that neither can change without the other.

use rand::{Rng, SeedableRng};

/// The README's example, on `activations` (m x n) and a next layer (`w_next`, `b_next`).
/// Not formatted: the lines are the README's.
#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
fn readme_example(
    activations: Vec<f32>,
    n: usize,
    k: usize,
    seed: u64,
    w_next: Vec<f32>,
    b_next: Vec<f32>,
    n_out: usize,
) -> divnet::Result<(Vec<usize>, f64, f64)> {
    // README BEGIN
    use divnet::{Backend, BackendChoice};
    use divnet::kernel::{rbf_kernel, gram_stats, ActivationRows, Beta};
    use divnet::dpp::{sample_k_dpp, Spectrum};
    use divnet::fusion::{fuse_next_layer, FusionOptions, NextLayer};

    let backend = Backend::select(BackendChoice::Auto)?.backend;
    let rows = ActivationRows::F32(&activations);                 // m x n, row-major
    let kernel = rbf_kernel(&backend, rows, n, Beta::Paper, 1e-6)?; // L = exp(-beta D) + eps I
    let spectrum = Spectrum::new(kernel.matrix.as_ref())?;          // once, for any k and any draw
    let keep = sample_k_dpp(&spectrum, k, seed)?;                   // sorted neuron indices
    let stats = gram_stats(&backend, rows, n)?;                     // G = A^T A, s = A^T 1
    let next = NextLayer { weight: &w_next, bias: Some(&b_next), n_out, n_in: n };
    let fused = fuse_next_layer(&backend, &stats, &keep, next, &FusionOptions::default())?;

    // Or keep what the next layer needs: selection order and the error fusion will leave.
    let chosen = divnet::select::fusion_greedy(&stats, &[next], k)?;
    let predicted = chosen.relative_error(k);                       // = fused.relative_error
    // README END
    let greedy_keep = {
        let mut y = chosen.order[..k].to_vec();
        y.sort_unstable();
        y
    };
    let greedy_fused = fuse_next_layer(&backend, &stats, &greedy_keep, next, &FusionOptions::default())?;
    Ok((keep, fused.relative_error, predicted - greedy_fused.relative_error))
}

#[test]
fn the_readme_library_example_runs() {
    let (m, n, k, n_out) = (200, 24, 6, 5);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let activations: Vec<f32> = (0..m * n)
        .map(|_| rng.random_range(-0.5f32..1.0).max(0.0))
        .collect();
    let w: Vec<f32> = (0..n_out * n)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let b: Vec<f32> = (0..n_out).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let (keep, error, predicted_gap) = readme_example(activations, n, k, 9, w, b, n_out).unwrap();
    assert_eq!(keep.len(), k);
    assert!(keep.windows(2).all(|p| p[0] < p[1]), "{keep:?}");
    assert!(error.is_finite() && error > 0.0 && error < 1.0, "{error}");
    // fusion-greedy's prediction is the error of fusing its own set (README: "= fused.relative_error").
    assert!(predicted_gap.abs() < 1e-6, "{predicted_gap:e}");
}

#[test]
fn the_readme_shows_the_example_as_it_is_here() {
    let body = |text: &str, start: &str, end: &str| -> Vec<String> {
        let from = text.find(start).expect("start marker") + start.len();
        let to = from + text[from..].find(end).expect("end marker");
        text[from..to]
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && !l.starts_with("// README"))
            .collect()
    };
    let here = body(
        include_str!("readme.rs"),
        "// README BEGIN\n",
        "// README END",
    );
    let readme = body(include_str!("../README.md"), "```rust\n", "```");
    assert_eq!(
        readme, here,
        "README.md's library example and tests/readme.rs differ"
    );
}
