//! Fusion of an FFN-sized layer: n = 4096 neurons, k = 1024 kept, n_out = 4096, assembly and
//! solve included. CPU backend always; the GPU backend too when a hardware adapter exists
//! (on a software adapter such as lavapipe only a small size, to exercise the path).

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use divnet::fusion::{fuse_next_layer, FusionOptions, NextLayer};
use divnet::kernel::GramStats;
use divnet::{Backend, GpuContext};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Problem {
    stats: GramStats,
    keep: Vec<usize>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    n_out: usize,
}

/// G = A^T A + I from m random non-negative samples (the identity keeps it full rank
/// although m < n, as a larger calibration set would), s = A^T 1.
fn problem(n: usize, k: usize, n_out: usize, m: usize) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let a = Mat::<f64>::from_fn(m, n, |_, _| rng.random::<f64>().max(0.3) - 0.3);
    let mut gram = Mat::<f64>::zeros(n, n);
    matmul(
        gram.as_mut(),
        Accum::Replace,
        a.transpose(),
        &a,
        1.0,
        faer::get_global_parallelism(),
    );
    for i in 0..n {
        gram[(i, i)] += 1.0;
    }
    let col_sums = (0..n).map(|j| a.col(j).iter().sum()).collect();
    let mut keep: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = rng.random_range(i..n);
        keep.swap(i, j);
    }
    keep.truncate(k);
    let scale = 1.0 / (n as f32).sqrt();
    Problem {
        stats: GramStats {
            gram,
            col_sums,
            samples: m,
        },
        keep,
        weight: (0..n_out * n)
            .map(|_| rng.random_range(-scale..scale))
            .collect(),
        bias: (0..n_out).map(|_| rng.random_range(-0.1f32..0.1)).collect(),
        n_out,
    }
}

fn run(c: &mut Criterion, name: &str, backend: &Backend, p: &Problem) {
    let n = p.stats.gram.nrows();
    let next = NextLayer {
        weight: &p.weight,
        bias: Some(&p.bias),
        n_out: p.n_out,
        n_in: n,
    };
    let opts = FusionOptions::default();
    let mut group = c.benchmark_group("fusion");
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter(|| fuse_next_layer(backend, &p.stats, &p.keep, next, &opts).unwrap())
    });
    group.finish();
}

/// One timed run split into its parts, and the f64 matmul rate of this machine right now
/// (the machine is shared: the rate says how much of it the run got).
fn breakdown(p: &Problem) {
    let n = p.stats.gram.nrows();
    let k = p.keep.len();
    let next = NextLayer {
        weight: &p.weight,
        bias: Some(&p.bias),
        n_out: p.n_out,
        n_in: n,
    };
    let dropped: Vec<usize> = (0..n).filter(|i| !p.keep.contains(i)).collect();
    let t = Instant::now();
    let system = divnet::cpu::fusion::assemble(&p.stats, &p.keep, &dropped, next).unwrap();
    let assemble = t.elapsed().as_secs_f64();
    drop(system);
    let t = Instant::now();
    fuse_next_layer(
        &Backend::Cpu,
        &p.stats,
        &p.keep,
        next,
        &FusionOptions::default(),
    )
    .unwrap();
    let total = t.elapsed().as_secs_f64();
    let a = Mat::<f64>::from_fn(k + 1, dropped.len(), |i, j| (i + j) as f64);
    let b = Mat::<f64>::from_fn(dropped.len(), p.n_out, |i, j| (i * j % 7) as f64);
    let mut out = Mat::<f64>::zeros(k + 1, p.n_out);
    let t = Instant::now();
    matmul(
        out.as_mut(),
        Accum::Replace,
        &a,
        &b,
        1.0,
        faer::get_global_parallelism(),
    );
    let mm = t.elapsed().as_secs_f64();
    let gflop = 2.0 * (k + 1) as f64 * dropped.len() as f64 * p.n_out as f64 / 1e9;
    eprintln!(
        "fusion n={n} k={k} n_out={}: assemble {assemble:.3} s (R + energies), \
         total {total:.3} s; R alone {mm:.3} s = {:.1} GFLOP/s f64",
        p.n_out,
        gflop / mm
    );
}

fn bench(c: &mut Criterion) {
    let big = problem(4096, 1024, 4096, 512);
    breakdown(&big);
    run(c, "cpu n4096 k1024 out4096", &Backend::Cpu, &big);
    match GpuContext::new() {
        Ok(ctx) if !ctx.is_software() => {
            let backend = Backend::Gpu(Arc::new(ctx));
            run(c, "gpu n4096 k1024 out4096", &backend, &big);
        }
        Ok(ctx) => {
            let small = problem(512, 128, 512, 256);
            let backend = Backend::Gpu(Arc::new(ctx));
            run(c, "gpu(software) n512 k128 out512", &backend, &small);
            run(c, "cpu n512 k128 out512", &Backend::Cpu, &small);
        }
        Err(e) => eprintln!("no GPU adapter, GPU fusion not benchmarked: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
