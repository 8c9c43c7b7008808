//! Gram and RBF kernels on the CPU (faer) and on the GPU backend (WGSL), n in {512, 2048},
//! m = 8192. Throughput is counted in flops (2 m n^2 per product, the "effective" count
//! that BLAS comparisons use even though only one triangle is computed), so criterion's
//! "elem/s" reads as flop/s.
//!
//! `cargo bench --bench kernels`. GPU benches run only when an adapter exists; on a software
//! adapter (lavapipe, ~1 GFLOP/s) n = 2048 is skipped with a note.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::{Backend, GpuContext};
use rand::{Rng, SeedableRng};

const M: usize = 8192;
const SIZES: [usize; 2] = [512, 2048];

fn activations(m: usize, n: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    (0..m * n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn backends() -> Vec<(Backend, bool)> {
    let mut out = vec![(Backend::Cpu, false)];
    match GpuContext::new() {
        Ok(ctx) => {
            eprintln!("GPU adapter: {}", ctx.adapter_description());
            let software = ctx.is_software();
            out.push((Backend::Gpu(Arc::new(ctx)), software));
        }
        Err(e) => eprintln!("no GPU adapter, GPU benches skipped: {e}"),
    }
    out
}

fn kernels(c: &mut Criterion) {
    let backends = backends();
    for kind in ["gram", "rbf"] {
        let mut group = c.benchmark_group(kind);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for n in SIZES {
            let a = activations(M, n);
            group.throughput(Throughput::Elements((2 * M * n * n) as u64));
            for (backend, software) in &backends {
                if *software && n > 512 {
                    eprintln!(
                        "{kind}/{}/{n}: skipped on a software adapter (minutes per iteration)",
                        backend.name()
                    );
                    continue;
                }
                let rows = ActivationRows::F32(&a);
                group.bench_with_input(BenchmarkId::new(backend.name(), n), &n, |b, &n| {
                    b.iter(|| match kind {
                        "gram" => {
                            black_box(gram_stats(backend, rows, n).unwrap());
                        }
                        _ => {
                            black_box(rbf_kernel(backend, rows, n, Beta::Paper, 1e-6).unwrap());
                        }
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
