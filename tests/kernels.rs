//! Gram, distance and RBF kernels: GPU (WGSL, run on lavapipe in CI) and CPU (faer) against
//! naive f64 loops, on random and structured inputs, odd sizes, chunk and block boundaries.

use std::sync::Arc;

use divnet::gpu::gram::{gram_from_buffer, RowFormat};
use divnet::gpu::rbf::{distances_from_buffer, rbf_from_buffer};
use divnet::gpu::test_context;
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta, LayerStats, StatsKind};
use divnet::{Backend, GpuContext};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `m x n` row-major values `offset + scale * U(-1, 1)`.
fn random(m: usize, n: usize, offset: f32, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * n)
        .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
        .collect()
}

fn ref_gram(a: &[f32], m: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut g = vec![0.0; n * n];
    let mut s = vec![0.0; n];
    for t in 0..m {
        let row = &a[t * n..(t + 1) * n];
        for i in 0..n {
            s[i] += row[i] as f64;
            for j in 0..n {
                g[i * n + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    (g, s)
}

fn ref_dist(a: &[f32], m: usize, n: usize) -> Vec<f64> {
    let mut d = vec![0.0; n * n];
    for t in 0..m {
        let row = &a[t * n..(t + 1) * n];
        for i in 0..n {
            for j in 0..n {
                let x = row[i] as f64 - row[j] as f64;
                d[i * n + j] += x * x;
            }
        }
    }
    d
}

/// L from reference distances with the given beta (resolved independently of the crate).
fn ref_rbf(d: &[f64], n: usize, m: usize, beta: Beta, eps: f64) -> Vec<f64> {
    let beta = match beta {
        Beta::Paper => 10.0 / m as f64,
        Beta::Median => {
            let mut off: Vec<f64> = (0..n)
                .flat_map(|i| ((i + 1)..n).map(move |j| (i, j)))
                .map(|(i, j)| d[i * n + j])
                .collect();
            off.sort_by(f64::total_cmp);
            let k = off.len();
            let med = if k % 2 == 1 {
                off[k / 2]
            } else {
                0.5 * (off[k / 2 - 1] + off[k / 2])
            };
            1.0 / med
        }
        Beta::Value(v) => v,
    };
    (0..n * n)
        .map(|k| (-beta * d[k]).exp() + if k / n == k % n { eps } else { 0.0 })
        .collect()
}

fn max_abs_diff(got: &faer::Mat<f64>, want: &[f64]) -> f64 {
    let n = got.nrows();
    assert_eq!(got.ncols(), n);
    assert_eq!(want.len(), n * n);
    let mut worst: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            worst = worst.max((got[(i, j)] - want[i * n + j]).abs());
        }
    }
    worst
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, &x| a.max(x.abs()))
}

/// Asserts the Gram statistics of `a` (m x n) equal the f64 reference to f32 accuracy.
fn check_gram(stats: &divnet::kernel::GramStats, a: &[f32], m: usize, n: usize, what: &str) {
    let (g, s) = ref_gram(a, m, n);
    assert_eq!(stats.samples, m, "{what}: samples");
    let scale = max_abs(&g).max(1.0);
    let err = max_abs_diff(&stats.gram, &g) / scale;
    assert!(err <= 2e-6, "{what}: gram relative error {err:e}");
    // Relative to the sum of the magnitudes, the scale of a sum's rounding: a column of
    // mean 0 sums to little, and its sum can carry more than 2e-6 of itself.
    let magnitude = (0..n)
        .map(|j| (0..m).map(|t| a[t * n + j].abs() as f64).sum::<f64>())
        .fold(1.0, f64::max);
    let s_err = stats
        .col_sums
        .iter()
        .zip(&s)
        .fold(0.0f64, |w, (x, y)| w.max((x - y).abs()))
        / magnitude;
    assert!(
        s_err <= 2e-6,
        "{what}: column sums relative error {s_err:e}"
    );
}

fn backends(ctx: Option<GpuContext>) -> Vec<Backend> {
    let mut b = vec![Backend::Cpu];
    if let Some(ctx) = ctx {
        b.push(Backend::Gpu(Arc::new(ctx)));
    }
    b
}

/// Pushes `a` in chunks of the given row counts (cycled) into a Gram-only and a
/// distances-only statistics engine.
fn accumulate(
    backend: &Backend,
    a: &[f32],
    m: usize,
    n: usize,
    chunks: &[usize],
) -> (divnet::kernel::GramStats, divnet::kernel::Distances) {
    let mut g = LayerStats::new(backend, n, StatsKind::Gram).unwrap();
    let mut d = LayerStats::new(backend, n, StatsKind::Distances).unwrap();
    let mut t = 0;
    let mut k = 0;
    while t < m || k == 0 {
        let rows = chunks[k % chunks.len()].min(m - t);
        let part = ActivationRows::F32(&a[t * n..(t + rows) * n]);
        g.push(part).unwrap();
        d.push(part).unwrap();
        t += rows;
        k += 1;
        assert_eq!(g.samples(), t);
        assert_eq!(d.samples(), t);
    }
    let g = g.finish().unwrap();
    let d = d.finish().unwrap();
    assert!(g.distances.is_none() && d.gram.is_none());
    (g.into_gram().unwrap(), d.into_distances().unwrap())
}

fn check_dist(d: &divnet::kernel::Distances, a: &[f32], m: usize, n: usize, what: &str) {
    let want = ref_dist(a, m, n);
    assert_eq!(d.samples, m);
    let scale = max_abs(&want).max(1e-30);
    let err = max_abs_diff(&d.squared, &want) / scale;
    assert!(err <= 2e-6, "{what}: distance relative error {err:e}");
    for i in 0..n {
        assert_eq!(d.squared[(i, i)], 0.0, "{what}: diagonal");
    }
}

#[test]
fn odd_sizes_match_reference_on_every_backend() {
    for backend in backends(test_context()) {
        for &(m, n) in &[(1, 1), (1, 5), (70, 1), (3, 2), (333, 131), (129, 65)] {
            let a = random(m, n, 0.3, 1.0, (m * 1000 + n) as u64);
            let what = format!("{} m={m} n={n}", backend.name());
            let stats = gram_stats(&backend, ActivationRows::F32(&a), n).unwrap();
            check_gram(&stats, &a, m, n, &what);
            let (g, d) = accumulate(&backend, &a, m, n, &[0, 1, 7, 64, 200]);
            check_gram(&g, &a, m, n, &format!("{what} chunked"));
            check_dist(&d, &a, m, n, &format!("{what} chunked"));
        }
    }
}

#[test]
fn cpu_gram_over_threads_and_product_chunks() {
    // The CPU Gram's own structure: 9000 rows pass its 8192-row product chunk (two
    // products, the second added to the first, then the mirror), m >= 512 splits the rows
    // across threads, and n = 260 fills the first product's output from two threads.
    // Pushed whole (one-chunk fast path for the first 8192 rows), then in uneven pieces.
    let (m, n) = (9000, 260);
    let a = random(m, n, 0.1, 1.0, 99);
    let stats = gram_stats(&Backend::Cpu, ActivationRows::F32(&a), n).unwrap();
    check_gram(&stats, &a, m, n, "cpu whole");
    let single = gram_stats(&Backend::Cpu, ActivationRows::F32(&a[..600 * n]), n).unwrap();
    check_gram(&single, &a[..600 * n], 600, n, "cpu one chunk");
    let (g, d) = accumulate(&Backend::Cpu, &a, m, n, &[5000, 1, 2999]);
    check_gram(&g, &a, m, n, "cpu pieces");
    check_dist(&d, &a, m, n, "cpu pieces");
}

#[test]
fn layer_wider_than_one_block_and_chunk() {
    let Some(ctx) = test_context() else { return };
    // 40 x 40 blocks: not a multiple of the 64-wide tile, and chunks of ~20 rows whose
    // binding windows start at unaligned offsets.
    for (cap, m, n) in [(40 * 40 * 4, 150, 131), (64 * 64 * 4, 90, 200)] {
        let ctx = Arc::new(GpuContext::new().unwrap().with_max_block_bytes(cap));
        let backend = Backend::Gpu(ctx);
        let a = random(m, n, -0.2, 2.0, 7 + n as u64);
        let what = format!("cap {cap} m={m} n={n}");
        let (g, d) = accumulate(&backend, &a, m, n, &[13, 1, 50]);
        check_gram(&g, &a, m, n, &what);
        check_dist(&d, &a, m, n, &what);
    }
    drop(ctx);
}

#[test]
fn f16_rows_match_reference() {
    for backend in backends(test_context()) {
        for &(m, n) in &[(1, 1), (37, 77), (200, 64), (5, 3)] {
            let halves: Vec<f16> = random(m, n, 0.5, 3.0, n as u64)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let exact: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
            let what = format!("{} f16 m={m} n={n}", backend.name());
            let stats = gram_stats(&backend, ActivationRows::F16(&halves), n).unwrap();
            check_gram(&stats, &exact, m, n, &what);
            let mut d = LayerStats::new(&backend, n, StatsKind::Distances).unwrap();
            // Mixed formats in one accumulator: f16 then f32 rows.
            let split = m / 2;
            d.push(ActivationRows::F16(&halves[..split * n])).unwrap();
            d.push(ActivationRows::F32(&exact[split * n..])).unwrap();
            check_dist(
                &d.finish().unwrap().into_distances().unwrap(),
                &exact,
                m,
                n,
                &what,
            );
        }
    }
}

/// Pairs of neurons that differ by 1e-3 on top of a common offset of 5: `G_ii + G_jj - 2 G_ij`
/// in f32 would cancel to noise of the size of the distance itself.
fn near_duplicates(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut a = vec![0.0f32; m * n];
    for t in 0..m {
        for j in 0..n / 2 {
            let v = 5.0 + 0.3 * rng.random_range(-1.0f32..1.0);
            a[t * n + 2 * j] = v;
            a[t * n + 2 * j + 1] = v + 1e-3 * rng.random_range(-1.0f32..1.0);
        }
        if n % 2 == 1 {
            a[t * n + n - 1] = 5.0 + 0.3 * rng.random_range(-1.0f32..1.0);
        }
    }
    a
}

#[test]
fn rbf_accurate_on_near_duplicates() {
    let (m, n) = (1500, 41);
    let a = near_duplicates(m, n, 11);
    let d = ref_dist(&a, m, n);
    for backend in backends(test_context()) {
        for beta in [Beta::Paper, Beta::Median, Beta::Value(0.01)] {
            let eps = 1e-6;
            let l = rbf_kernel(&backend, ActivationRows::F32(&a), n, beta, eps).unwrap();
            let want = ref_rbf(&d, n, m, beta, eps);
            let err = max_abs_diff(&l.matrix, &want);
            assert!(
                err <= 1e-5,
                "{} {beta:?}: max |L - L_f64| = {err:e}",
                backend.name()
            );
            assert_eq!(l.eps, eps);
            // The pairs are near-duplicates: their kernel entries are close to but below 1.
            assert!(l.matrix[(0, 1)] < 1.0 && l.matrix[(0, 1)] > 0.99);
        }
    }
}

#[test]
fn centred_statistics_keep_near_duplicates_apart() {
    // Unit-variance activations far from zero (offset 5, drifting by 1 over the rows so
    // that the chunks' means differ), in near-duplicate pairs, over several chunks: f32
    // products of the uncentred rows are about 1e-4 off in L at the paper's beta; the
    // centred ones must stay within the kernel's 1e-5.
    let (m, n) = (32_768, 24);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut a = vec![0.0f32; m * n];
    for t in 0..m {
        let offset = 5.0 + t as f32 / m as f32;
        for j in 0..n / 2 {
            let v = offset + 3f32.sqrt() * rng.random_range(-1.0f32..1.0);
            a[t * n + 2 * j] = v;
            a[t * n + 2 * j + 1] = v + 1e-3 * rng.random_range(-1.0f32..1.0);
        }
    }
    let d = ref_dist(&a, m, n);
    for backend in backends(test_context()) {
        for beta in [Beta::Paper, Beta::Median] {
            let l = rbf_kernel(&backend, ActivationRows::F32(&a), n, beta, 0.0).unwrap();
            let err = max_abs_diff(&l.matrix, &ref_rbf(&d, n, m, beta, 0.0));
            assert!(
                err <= 1e-5,
                "{} {beta:?}: max |L - L_f64| = {err:e}",
                backend.name()
            );
        }
    }
}

#[test]
fn long_calibration_set_does_not_drift() {
    // m past 10^5 on a narrow layer; a common offset makes every sum large.
    let (m, n) = (120_000, 8);
    let a = random(m, n, 1.0, 1.0, 5);
    for backend in backends(test_context()) {
        let (g, d) = accumulate(&backend, &a, m, n, &[50_000, 3, 20_000]);
        check_gram(&g, &a, m, n, &format!("{} long", backend.name()));
        check_dist(&d, &a, m, n, &format!("{} long", backend.name()));
    }
}

#[test]
fn gpu_resident_buffers() {
    let Some(ctx) = test_context() else { return };
    let ctx = ctx.with_max_block_bytes(48 * 48 * 4);
    let (m, n) = (301, 37);
    let a = random(m, n, 0.0, 1.0, 3);
    let buf = ctx.storage_buffer_init("test rows", &a).unwrap();
    let g = gram_from_buffer(&ctx, &buf, RowFormat::F32, m, n).unwrap();
    check_gram(&g, &a, m, n, "buffer f32");
    let d = distances_from_buffer(&ctx, &buf, RowFormat::F32, m, n).unwrap();
    check_dist(&d, &a, m, n, "buffer f32");
    let l = rbf_from_buffer(&ctx, &buf, RowFormat::F32, m, n, Beta::Median, 0.0).unwrap();
    let want = ref_rbf(&ref_dist(&a, m, n), n, m, Beta::Median, 0.0);
    assert!(max_abs_diff(&l.matrix, &want) <= 1e-5);

    // f16, odd n: each row padded to a whole word.
    let halves: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
    let exact: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
    let words = RowFormat::F16.row_words(n);
    let mut packed = vec![0u32; m * words];
    for t in 0..m {
        for c in 0..n {
            packed[t * words + c / 2] |= (halves[t * n + c].to_bits() as u32) << (16 * (c % 2));
        }
    }
    let buf16 = ctx.storage_buffer_init("test rows f16", &packed).unwrap();
    let g = gram_from_buffer(&ctx, &buf16, RowFormat::F16, m, n).unwrap();
    check_gram(&g, &exact, m, n, "buffer f16");

    // A buffer too small for the claimed shape is an error, not a read past its end.
    assert!(gram_from_buffer(&ctx, &buf, RowFormat::F32, m + 1, n).is_err());
}

/// The adapter an application would open its own device on; `None` (the test skips) where
/// divnet finds no GPU either.
fn application_adapter() -> Option<wgpu::Adapter> {
    test_context()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    Some(
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap(),
    )
}

#[test]
fn application_owned_device() {
    let Some(adapter) = application_adapter() else {
        return;
    };
    // Default (downlevel-safe) limits, not the adapter's: divnet must read what it was given.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let (m, n) = (257, 70);
    let a = random(m, n, 0.1, 1.0, 17);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app rows"),
        size: (a.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&a));
    let ctx = GpuContext::from_device(device, queue);
    let g = gram_from_buffer(&ctx, &buffer, RowFormat::F32, m, n).unwrap();
    check_gram(&g, &a, m, n, "application device");
    let l = rbf_from_buffer(&ctx, &buffer, RowFormat::F32, m, n, Beta::Paper, 1e-6).unwrap();
    let want = ref_rbf(&ref_dist(&a, m, n), n, m, Beta::Paper, 1e-6);
    assert!(max_abs_diff(&l.matrix, &want) <= 1e-5);
}

/// divnet's kernels bind up to MIN_STORAGE_BUFFERS_PER_STAGE storage buffers: a device
/// opened with exactly that many runs every kernel, one opened with fewer (the downlevel
/// defaults' 4) gets an error naming the limit, not wgpu's validation text.
#[test]
fn an_application_device_needs_six_storage_buffers_per_stage() {
    use divnet::gpu::MIN_STORAGE_BUFFERS_PER_STAGE;
    let Some(adapter) = application_adapter() else {
        return;
    };
    let (m, n) = (50, 20);
    let a = random(m, n, 0.1, 1.0, 19);
    for (buffers, works) in [(MIN_STORAGE_BUFFERS_PER_STAGE, true), (4, false)] {
        let limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: buffers,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_limits: limits,
            ..Default::default()
        }))
        .unwrap();
        let backend = Backend::Gpu(std::sync::Arc::new(GpuContext::from_device(device, queue)));
        let stats = LayerStats::new(&backend, n, StatsKind::Both).and_then(|mut s| {
            s.push(ActivationRows::F32(&a))?;
            s.finish()
        });
        match (works, stats) {
            (true, Ok(s)) => {
                let g = s.gram.unwrap();
                let w = vec![0.5f32; 3 * n];
                let next = divnet::fusion::NextLayer {
                    weight: &w,
                    bias: None,
                    n_out: 3,
                    n_in: n,
                };
                let keep: Vec<usize> = (0..n / 2).collect();
                divnet::fusion::fuse_next_layer(&backend, &g, &keep, next, &Default::default())
                    .unwrap();
            }
            (false, Err(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("max_storage_buffers_per_shader_stage") && e.contains("allows 4"),
                    "{e}"
                );
            }
            (works, other) => panic!("{buffers} buffers (works: {works}): {:?}", other.err()),
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    for backend in backends(test_context()) {
        for kind in [StatsKind::Gram, StatsKind::Distances, StatsKind::Both] {
            assert!(LayerStats::new(&backend, 0, kind).is_err());
        }
        let mut g = LayerStats::new(&backend, 3, StatsKind::Gram).unwrap();
        assert!(g.push(ActivationRows::F32(&[1.0; 4])).is_err());
        assert!(g.push(ActivationRows::F32(&[1.0, f32::NAN, 0.0])).is_err());
        // Identical neurons: the median distance is 0.
        let same = vec![1.0f32; 30];
        assert!(rbf_kernel(&backend, ActivationRows::F32(&same), 3, Beta::Median, 0.0).is_err());
        // One neuron: no pair to take a median of; the paper's beta still works.
        let one = [1.0f32, 2.0];
        assert!(rbf_kernel(&backend, ActivationRows::F32(&one), 1, Beta::Median, 0.0).is_err());
        let l = rbf_kernel(&backend, ActivationRows::F32(&one), 1, Beta::Paper, 0.5).unwrap();
        assert_eq!(l.matrix[(0, 0)], 1.5);
        assert_eq!(l.beta, 5.0);
        assert!(rbf_kernel(&backend, ActivationRows::F32(&one), 1, Beta::Paper, -1.0).is_err());
    }
}

mod cli {
    use std::path::Path;
    use std::process::Command;

    use divnet::io::npy::{read_npy, write_npy};

    use super::*;

    fn divnet(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_divnet"))
            .args(args)
            .output()
            .expect("runs the binary")
    }

    fn run_kernel(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "kernel",
            "--activations",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        divnet(&args)
    }

    #[test]
    fn writes_rbf_and_gram() {
        let dir = tempfile::tempdir().unwrap();
        let (m, n) = (120, 9);
        let a = random(m, n, 0.0, 1.0, 21);
        let input = dir.path().join("acts.npy");
        write_npy(&input, &[m, n], &a).unwrap();
        let d = ref_dist(&a, m, n);
        let mut choices = vec!["cpu"];
        if test_context().is_some() {
            choices.push("gpu");
        }
        for backend in choices {
            let out = dir.path().join(format!("l_{backend}.npy"));
            let o = run_kernel(
                &input,
                &out,
                &["--beta", "median", "--eps", "0.001", "--backend", backend],
            );
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{backend}: {stderr}");
            assert!(stderr.contains("backend:"), "names the backend: {stderr}");
            assert!(stderr.contains("rbf kernel"), "times the stages: {stderr}");
            let got = read_npy(&out).unwrap();
            assert_eq!(got.shape, vec![n, n]);
            let got = got.to_f64();
            let want = ref_rbf(&d, n, m, Beta::Median, 1e-3);
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
            assert!(err <= 1e-5, "{backend}: max |L - L_f64| = {err:e}");

            let out = dir.path().join(format!("g_{backend}.npy"));
            let o = run_kernel(&input, &out, &["--kind", "gram", "--backend", backend]);
            assert!(o.status.success());
            let got = read_npy(&out).unwrap().to_f64();
            let (g, _) = ref_gram(&a, m, n);
            let err = got
                .iter()
                .zip(&g)
                .fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
            assert!(err <= 1e-6 * max_abs(&g), "{backend}: gram error {err:e}");
        }
    }

    #[test]
    fn bad_inputs_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("text.npy"), b"this is not an npy file").unwrap();
        write_npy(&p("vector.npy"), &[6], &[1.0f32; 6]).unwrap();
        write_npy(&p("nan.npy"), &[2, 2], &[1.0f32, f32::NAN, 0.0, 1.0]).unwrap();
        write_npy(&p("ints.npy"), &[2, 2], &[1i64, 2, 3, 4]).unwrap();
        write_npy::<f32>(&p("no_rows.npy"), &[0, 3], &[]).unwrap();
        write_npy::<f32>(&p("no_cols.npy"), &[3, 0], &[]).unwrap();
        write_npy(&p("same.npy"), &[4, 2], &[1.0f32; 8]).unwrap();
        let cases: [(&str, &[&str]); 8] = [
            ("missing.npy", &[]),
            ("text.npy", &[]),
            ("vector.npy", &[]),
            ("nan.npy", &[]),
            ("ints.npy", &[]),
            ("no_rows.npy", &[]),
            ("no_cols.npy", &[]),
            // Identical neurons: the median heuristic has no scale.
            ("same.npy", &["--beta", "median"]),
        ];
        for (name, extra) in cases {
            let out = p(&format!("out_{name}"));
            let mut args = extra.to_vec();
            args.extend(["--backend", "cpu"]);
            let o = run_kernel(&p(name), &out, &args);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{name}: {stderr}");
            let last = stderr.lines().last().unwrap_or("");
            assert!(
                last.starts_with("divnet: error:") && last.contains(name),
                "{name}: error line names the file: {stderr}"
            );
            assert!(!out.exists(), "{name}: no output left behind");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.starts_with("out_") || f.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// One pass collecting both statistics gives the same Gram statistics and distances as the
/// f64 references, near-duplicates included; so does a pass over a [`RowSource`].
#[test]
fn both_statistics_in_one_pass_match_references() {
    let (m, n) = (700, 37);
    let a = near_duplicates(m, n, 21);
    for backend in backends(test_context()) {
        let mut acc = LayerStats::new(&backend, n, StatsKind::Both).unwrap();
        for part in a.chunks(n * 150) {
            acc.push(ActivationRows::F32(part)).unwrap();
        }
        assert_eq!(acc.samples(), m);
        let both = acc.finish().unwrap();
        let (stats, dist) = (both.gram.unwrap(), both.distances.unwrap());
        let what = format!("{} one-pass", backend.name());
        check_gram(&stats, &a, m, n, &what);
        check_dist(&dist, &a, m, n, &what);

        let mut source = divnet::kernel::SliceRows::new(ActivationRows::F32(&a), n)
            .unwrap()
            .with_chunk_rows(97);
        let both = divnet::kernel::layer_statistics(
            &backend,
            &mut source,
            StatsKind::Both,
            &mut divnet::progress::NoProgress,
        )
        .unwrap();
        let (stats, dist) = (both.gram.unwrap(), both.distances.unwrap());
        let what = format!("{} source pass", backend.name());
        check_gram(&stats, &a, m, n, &what);
        check_dist(&dist, &a, m, n, &what);
    }
}
