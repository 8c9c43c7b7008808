//! Device faults: no adapter, a refused allocation, limits too small for the kernels' tiles,
//! a destroyed (lost) device. The library must answer with an error (never a panic, never a
//! hang); the CLI must say what happened and continue on the CPU unless `--backend gpu` was
//! demanded.

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use divnet::fusion::{fuse_next_layer, FusionOptions, NextLayer};
use divnet::io::npy::write_npy;
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::{Backend, Error, GpuContext};

const BIN: &str = env!("CARGO_BIN_EXE_divnet");

fn acts(m: usize, n: usize) -> Vec<f32> {
    (0..m * n)
        .map(|i| ((i * 7919) % 101) as f32 / 101.0 - 0.3)
        .collect()
}

/// G = A^T A in f64 by naive loops: the independent reference.
fn naive_gram(a: &[f32], m: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0; n * n];
    for r in 0..m {
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] += a[r * n + i] as f64 * a[r * n + j] as f64;
            }
        }
    }
    g
}

/// Runs `f` on another thread and fails the test if it takes longer than `secs` (a hang)
/// or panics.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer in {secs} s (hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

// ------------------------------------------------------------------- no adapter, via the CLI

fn kernel_cli(backend: &str, dir: &std::path::Path) -> std::process::Output {
    let a = dir.join("a.npy");
    write_npy(&a, &[5, 3], &acts(5, 3)).unwrap();
    Command::new(BIN)
        // A backend that does not exist on Linux: wgpu finds no adapter at all.
        .env("WGPU_BACKEND", "metal")
        .args([
            "kernel",
            "--kind",
            "gram",
            "--backend",
            backend,
            "--activations",
        ])
        .arg(&a)
        .arg("--out")
        .arg(dir.join("g.npy"))
        .output()
        .unwrap()
}

#[test]
fn no_adapter_with_backend_gpu_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kernel_cli("gpu", tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("divnet: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(errors[0].contains("no GPU adapter"), "{stderr}");
    assert!(!tmp.path().join("g.npy").exists());
}

#[test]
fn no_adapter_with_backend_auto_falls_back_to_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kernel_cli("auto", tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("backend: CPU: no GPU available"),
        "does not say why it runs on the CPU: {stderr}"
    );
    let g = divnet::io::npy::read_npy(&tmp.path().join("g.npy"))
        .unwrap()
        .to_f64();
    let expected = naive_gram(&acts(5, 3), 5, 3);
    for (x, y) in g.iter().zip(&expected) {
        assert!((x - y).abs() < 1e-4, "{x} != {y}");
    }
}

// ------------------------------------------------------------------- the library on a device

#[test]
fn allocation_over_the_device_limit_is_a_gpu_error() {
    let Some(ctx) = divnet::gpu::test_context() else {
        return;
    };
    let too_big = ctx.limits().max_buffer_size + 4;
    match within(60, "oversized buffer", move || {
        ctx.storage_buffer("too big", too_big).map(|_| ())
    }) {
        Err(Error::Gpu(msg)) => assert!(msg.contains("too big"), "{msg}"),
        other => panic!("expected Error::Gpu, got {other:?}"),
    }
}

/// A device opened with limits far below the adapter's: tiny storage bindings and buffers.
/// The kernels must either tile within them (and then agree with the f64 reference) or say
/// that they cannot, as an error.
fn small_device(limits: impl FnOnce(&mut wgpu::Limits)) -> Option<GpuContext> {
    divnet::gpu::test_context()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .ok()?;
    let mut required = wgpu::Limits::downlevel_defaults();
    limits(&mut required);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("small limits"),
        required_limits: required,
        ..Default::default()
    }))
    .expect("a device with limits below the adapter's");
    Some(GpuContext::from_device(device, queue).with_adapter_info(adapter.get_info()))
}

fn gram_on(ctx: GpuContext, m: usize, n: usize) -> divnet::Result<Vec<f64>> {
    let a = acts(m, n);
    let backend = Backend::Gpu(std::sync::Arc::new(ctx));
    let stats = gram_stats(&backend, ActivationRows::F32(&a), n)?;
    Ok((0..n * n).map(|k| stats.gram[(k / n, k % n)]).collect())
}

fn check_gram_or_gpu_error(result: divnet::Result<Vec<f64>>, m: usize, n: usize) {
    match result {
        Ok(g) => {
            let expected = naive_gram(&acts(m, n), m, n);
            let scale = expected.iter().fold(0.0f64, |s, x| s.max(x.abs()));
            for (k, (x, y)) in g.iter().zip(&expected).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "G[{}, {}] = {x}, reference {y}",
                    k / n,
                    k % n
                );
            }
        }
        Err(Error::Gpu(msg)) | Err(Error::InvalidInput(msg)) => {
            eprintln!("refused, as allowed: {msg}");
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

#[test]
fn tiny_storage_limits_tile_or_fail_cleanly() {
    let Some(ctx) = small_device(|l| {
        l.max_storage_buffer_binding_size = 4096;
        l.max_buffer_size = 8192;
    }) else {
        return;
    };
    let (m, n) = (40, 70); // G is 70 x 70 f32 = 19.6 KB: several 4 KiB blocks.
    let result = within(120, "gram on tiny limits", move || gram_on(ctx, m, n));
    check_gram_or_gpu_error(result, m, n);
}

#[test]
fn workgroup_memory_too_small_for_the_tiles_is_a_gpu_error() {
    // The tiled Gram kernel keeps its tiles in workgroup memory; 256 bytes holds none.
    let Some(ctx) = small_device(|l| {
        l.max_compute_workgroup_storage_size = 256;
    }) else {
        return;
    };
    let (m, n) = (16, 20);
    let result = within(120, "gram with 256 B of workgroup memory", move || {
        gram_on(ctx, m, n)
    });
    match result {
        Err(Error::Gpu(msg)) => eprintln!("refused: {msg}"),
        // A kernel that needed less memory would be fine too, if it is right.
        other => check_gram_or_gpu_error(other, m, n),
    }
}

#[test]
fn tiny_block_cap_still_gives_the_right_kernel() {
    let Some(ctx) = divnet::gpu::test_context() else {
        return;
    };
    let ctx = ctx.with_max_block_bytes(1); // clamped to the smallest block the context allows
    let (m, n) = (9, 37);
    let a = acts(m, n);
    let a2 = a.clone();
    let gpu = within(120, "rbf with tiny blocks", move || {
        rbf_kernel(
            &Backend::Gpu(std::sync::Arc::new(ctx)),
            ActivationRows::F32(&a2),
            n,
            Beta::Value(0.5),
            1e-6,
        )
    });
    let gpu = match gpu {
        Ok(l) => l,
        Err(Error::Gpu(msg)) => return eprintln!("refused, as allowed: {msg}"),
        Err(e) => panic!("unexpected error: {e:?}"),
    };
    for i in 0..n {
        for j in 0..n {
            let d: f64 = (0..m)
                .map(|r| (a[r * n + i] as f64 - a[r * n + j] as f64).powi(2))
                .sum();
            let expected = (-0.5 * d).exp() + if i == j { 1e-6 } else { 0.0 };
            assert!(
                (gpu.matrix[(i, j)] - expected).abs() < 1e-5,
                "L[{i},{j}] = {} != {expected}",
                gpu.matrix[(i, j)]
            );
        }
    }
}

/// A destroyed device stands in for a lost one (lavapipe cannot lose a device otherwise):
/// every operation must come back with an error, not panic and not wait forever.
#[test]
fn destroyed_device_gives_errors_not_panics_or_hangs() {
    let Some(ctx) = divnet::gpu::test_context() else {
        return;
    };
    ctx.device().destroy();
    let ctx = std::sync::Arc::new(ctx);
    let c = ctx.clone();
    let gram = within(60, "gram on a destroyed device", move || {
        gram_on_arc(c, 8, 5)
    });
    assert!(
        matches!(gram, Err(Error::Gpu(_))),
        "gram on a destroyed device: {gram:?}"
    );
    let c = ctx.clone();
    let fused = within(60, "fusion on a destroyed device", move || {
        let (m, n, n_out) = (8usize, 5usize, 3usize);
        let a = acts(m, n);
        let stats = gram_stats(&Backend::Cpu, ActivationRows::F32(&a), n)?;
        let w = vec![0.25f32; n_out * n];
        let b = vec![0.0f32; n_out];
        fuse_next_layer(
            &Backend::Gpu(c),
            &stats,
            &[0, 2],
            NextLayer {
                weight: &w,
                bias: Some(&b),
                n_out,
                n_in: n,
            },
            &FusionOptions::default(),
        )
        .map(|_| ())
    });
    assert!(
        matches!(fused, Err(Error::Gpu(_))),
        "fusion on a destroyed device: {fused:?}"
    );
}

fn gram_on_arc(ctx: std::sync::Arc<GpuContext>, m: usize, n: usize) -> divnet::Result<()> {
    let a = acts(m, n);
    gram_stats(&Backend::Gpu(ctx), ActivationRows::F32(&a), n).map(|_| ())
}

/// A layer so wide that its n x n result cannot exist on the host (2^26 neurons: 32 PB, past
/// any address space) is refused up front on both backends, with an error, before any work.
#[test]
fn result_too_large_for_the_host_is_an_error_on_both_backends() {
    use divnet::kernel::{LayerStats, StatsKind};
    let mut backends = vec![Backend::Cpu];
    if let Some(ctx) = divnet::gpu::test_context() {
        backends.push(Backend::Gpu(std::sync::Arc::new(ctx)));
    }
    let n = 1usize << 26;
    for backend in backends {
        let gram = LayerStats::new(&backend, n, StatsKind::Gram).map(|_| ());
        let dist = LayerStats::new(&backend, n, StatsKind::Distances).map(|_| ());
        let both = LayerStats::new(&backend, n, StatsKind::Both).map(|_| ());
        for (what, r) in [("gram", gram), ("distances", dist), ("both", both)] {
            match r {
                Err(Error::InvalidInput(msg)) => {
                    assert!(msg.contains("67108864 neurons"), "{msg}")
                }
                other => panic!(
                    "{} {what}: expected an error, got {other:?}",
                    backend.name()
                ),
            }
        }
    }
}
