//! DPP engine benchmarks on RBF kernels: eigendecomposition at n in {1000, 2000, 4000},
//! the first k-DPP sample (ESP ratios + selection + projection) and later samples
//! (ESP ratios reused) at k = n / 10, and greedy MAP at the same sizes; and a k-DPP draw
//! at k = n / 4 by either eigendecomposition: full (`eigendecomposition`, then
//! `k_dpp_full_sample_n4`) or partial (`partial_spectrum`: reduction and eigenvalues,
//! then `k_dpp_partial_draw_n4`: the draw's k eigenvectors and projection sampling).
//!
//! The kernels are also written to `target/dpp-bench/rbf_<n>.npy` so that
//! `scripts/bench_dpp.py` times numpy and DPPy on exactly the same matrices.
//! `DPP_BENCH_SIZES=1000,2000` restricts the sizes; `DPP_BENCH_SEQ=1` sets faer's global
//! parallelism to one thread (default: rayon over all cores), which the eigensolver's
//! thread team and matrix products follow. Sizes above [`CRITERION_MAX_N`] (n = 8192
//! takes a minute per full decomposition on two cores, criterion wants ten of them) are
//! timed once each instead, printed and written to `target/dpp-bench/once_<n>.json`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use divnet::dpp::{greedy_map, GreedyStop, KDppSampler, PartialSpectrum, Spectrum};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sizes above this are timed once rather than by criterion.
const CRITERION_MAX_N: usize = 4096;

/// exp(-beta ||x_i - x_j||^2) + 1e-3 I over n points uniform in [0, 1]^10, beta = 0.6
/// (about 1 / median squared distance), fixed seed.
fn rbf(n: usize) -> Mat<f64> {
    let dim = 10;
    let mut rng = ChaCha8Rng::seed_from_u64(2016);
    let x: Vec<f64> = (0..n * dim).map(|_| rng.random::<f64>()).collect();
    Mat::from_fn(n, n, |i, j| {
        let d2: f64 = (0..dim)
            .map(|t| (x[i * dim + t] - x[j * dim + t]).powi(2))
            .sum();
        (-0.6 * d2).exp() + if i == j { 1e-3 } else { 0.0 }
    })
}

fn sizes() -> Vec<usize> {
    std::env::var("DPP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 2000, 4000])
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dpp-bench");
    std::fs::create_dir_all(&dir).expect("creating target/dpp-bench");
    dir
}

fn save(n: usize, l: &Mat<f64>) {
    let data: Vec<f64> = (0..n * n).map(|t| l[(t / n, t % n)]).collect();
    divnet::io::npy::write_npy(&bench_dir().join(format!("rbf_{n}.npy")), &[n, n], &data)
        .expect("writing the kernel");
}

fn bench(c: &mut Criterion) {
    if std::env::var_os("DPP_BENCH_SEQ").is_some() {
        faer::set_global_parallelism(faer::Par::Seq);
    }
    for n in sizes() {
        let l = rbf(n);
        save(n, &l);
        if n > CRITERION_MAX_N {
            time_once(n, &l);
            continue;
        }
        let k = n / 10;
        let mut g = c.benchmark_group("dpp");
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::new("eigendecomposition", n), &n, |b, _| {
            b.iter(|| Spectrum::new(black_box(l.as_ref())).unwrap())
        });
        let spectrum = Spectrum::new(l.as_ref()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        g.bench_with_input(BenchmarkId::new("k_dpp_first_sample", n), &n, |b, _| {
            b.iter(|| KDppSampler::new(&spectrum, k).unwrap().sample(&mut rng))
        });
        let sampler = KDppSampler::new(&spectrum, k).unwrap();
        g.bench_with_input(BenchmarkId::new("k_dpp_later_sample", n), &n, |b, _| {
            b.iter(|| sampler.sample(&mut rng))
        });
        g.bench_with_input(BenchmarkId::new("greedy_map", n), &n, |b, _| {
            b.iter(|| greedy_map(black_box(l.as_ref()), GreedyStop::Count(k)).unwrap())
        });
        let k4 = n / 4;
        g.bench_with_input(BenchmarkId::new("k_dpp_full_sample_n4", n), &n, |b, _| {
            b.iter(|| KDppSampler::new(&spectrum, k4).unwrap().sample(&mut rng))
        });
        drop(spectrum);
        g.bench_with_input(BenchmarkId::new("partial_spectrum", n), &n, |b, _| {
            b.iter(|| PartialSpectrum::new(black_box(l.clone())).unwrap())
        });
        let partial = PartialSpectrum::new(l.clone()).unwrap();
        g.bench_with_input(BenchmarkId::new("k_dpp_partial_draw_n4", n), &n, |b, _| {
            b.iter(|| {
                KDppSampler::new(&partial, k4)
                    .unwrap()
                    .try_sample(&mut rng)
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// One timing of each stage of a k-DPP draw at k = n / 4, full and partial, and of a
/// second partial draw (reusing the reduction), in seconds.
fn time_once(n: usize, l: &Mat<f64>) {
    let k = n / 4;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let seconds = |start: Instant| start.elapsed().as_secs_f64();
    let start = Instant::now();
    let partial = PartialSpectrum::new(l.clone()).unwrap();
    let partial_spectrum = seconds(start);
    let sampler = KDppSampler::new(&partial, k).unwrap();
    let start = Instant::now();
    black_box(sampler.try_sample(&mut rng).unwrap());
    let partial_draw = seconds(start);
    let start = Instant::now();
    black_box(sampler.try_sample(&mut rng).unwrap());
    let partial_later_draw = seconds(start);
    drop(sampler);
    drop(partial);
    let start = Instant::now();
    let spectrum = Spectrum::new(l.as_ref()).unwrap();
    let eigendecomposition = seconds(start);
    let start = Instant::now();
    black_box(KDppSampler::new(&spectrum, k).unwrap().sample(&mut rng));
    let full_sample = seconds(start);
    let report = format!(
        "{{\"n\": {n}, \"k\": {k}, \"eigendecomposition\": {eigendecomposition:.3}, \
         \"full_sample\": {full_sample:.3}, \"partial_spectrum\": {partial_spectrum:.3}, \
         \"partial_draw\": {partial_draw:.3}, \"partial_later_draw\": {partial_later_draw:.3}}}"
    );
    println!("dpp/once/{n}: {report}");
    std::fs::write(bench_dir().join(format!("once_{n}.json")), report + "\n")
        .expect("writing the timings");
}

criterion_group!(benches, bench);
criterion_main!(benches);
