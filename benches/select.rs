//! Selection time on one synthetic layer: fusion-greedy (from the Gram statistics and the
//! next layer) and fusion-swap (fusion-greedy, then swaps) against the paper's k-DPP (eigendecomposition of the RBF kernel, partial from
//! n = 2048 on as in `compress-layer`, + one draw)
//! and greedy MAP on the same kernel.
//!
//! The layer: n neurons at points uniform in [0, 1]^10; its Gram matrix is
//! `m (exp(-0.6 ||x_i - x_j||^2) + 0.05 I)` over m = 10000 centred samples (every neuron keeps
//! 5% of variance of its own, so all n stay candidates through all k steps: the worst case
//! for fusion-greedy), its RBF kernel `exp(-0.6 ||x_i - x_j||^2) + 1e-3 I`, and the next
//! layer n_out x n uniform in [-1, 1].
//!
//! `cargo bench --bench select` runs criterion at n = 2048, k = 512, n_out = 512
//! (`SELECT_BENCH_SIZES=n:k:n_out,...` to change). One selection at the size takes
//! minutes for the k-DPP, too long for criterion's ten samples: `cargo bench --bench select
//! -- --once 8192:2048:1024 [rounds]` times each method once per round, in alternation, and
//! prints the times (`SELECT_BENCH_ONLY=fusion-greedy`, `fusion-swap` or `k-dpp` times only
//! that rule, for profiling).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, BenchmarkId, Criterion};
use divnet::dpp::{greedy_map, GreedyStop};
use divnet::fusion::NextLayer;
use divnet::kernel::GramStats;
use divnet::select::{
    fusion_greedy, fusion_swap, FusionSwap, LayerSelector, SelectionMethod, SelectionSize,
};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SAMPLES: usize = 10_000;

struct Layer {
    stats: GramStats,
    kernel: Mat<f64>,
    weight: Vec<f32>,
    n_out: usize,
}

impl Layer {
    fn new(n: usize, n_out: usize) -> Self {
        let dim = 10;
        let mut rng = ChaCha8Rng::seed_from_u64(2016);
        let x: Vec<f64> = (0..n * dim).map(|_| rng.random::<f64>()).collect();
        let rbf = Mat::from_fn(n, n, |i, j| {
            let d2: f64 = (0..dim)
                .map(|t| (x[i * dim + t] - x[j * dim + t]).powi(2))
                .sum();
            (-0.6 * d2).exp()
        });
        let m = SAMPLES as f64;
        let gram = Mat::from_fn(n, n, |i, j| {
            m * (rbf[(i, j)] + if i == j { 0.05 } else { 0.0 })
        });
        let kernel = Mat::from_fn(n, n, |i, j| rbf[(i, j)] + if i == j { 1e-3 } else { 0.0 });
        let weight = (0..n_out * n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Layer {
            stats: GramStats {
                gram,
                col_sums: vec![0.0; n],
                samples: SAMPLES,
            },
            kernel,
            weight,
            n_out,
        }
    }

    fn next(&self) -> NextLayer<'_> {
        NextLayer {
            weight: &self.weight,
            bias: None,
            n_out: self.n_out,
            n_in: self.stats.col_sums.len(),
        }
    }

    fn fusion_greedy(&self, k: usize) -> Vec<usize> {
        fusion_greedy(&self.stats, &[self.next()], k).unwrap().order
    }

    fn fusion_swap(&self, k: usize) -> FusionSwap {
        fusion_swap(&self.stats, &[self.next()], k).unwrap()
    }

    /// One k-DPP draw as `compress-layer` makes it: the selector takes a copy of the kernel
    /// (the pipeline hands over its own) and picks the full or partial eigendecomposition by
    /// size.
    fn k_dpp(&self, k: usize, seed: u64) -> Vec<usize> {
        let n = self.kernel.nrows();
        LayerSelector::owning(n, self.kernel.clone(), None)
            .single_draw()
            .select(SelectionMethod::KDpp, SelectionSize::Exactly(k), seed)
            .unwrap()
    }

    fn greedy_map(&self, k: usize) -> Vec<usize> {
        greedy_map(self.kernel.as_ref(), GreedyStop::Count(k)).unwrap()
    }
}

fn parse_sizes(text: &str) -> Vec<(usize, usize, usize)> {
    text.split(',')
        .map(|t| {
            let v: Vec<usize> = t
                .split(':')
                .map(|x| x.trim().parse().expect("sizes are n:k:n_out"))
                .collect();
            assert_eq!(v.len(), 3, "sizes are n:k:n_out, got {t:?}");
            (v[0], v[1], v[2])
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let sizes =
        parse_sizes(&std::env::var("SELECT_BENCH_SIZES").unwrap_or_else(|_| "2048:512:512".into()));
    for (n, k, n_out) in sizes {
        let layer = Layer::new(n, n_out);
        let mut g = c.benchmark_group("select");
        g.sample_size(10);
        let id = format!("n{n}-k{k}-out{n_out}");
        g.bench_with_input(BenchmarkId::new("fusion-greedy", &id), &k, |b, &k| {
            b.iter(|| black_box(layer.fusion_greedy(k)))
        });
        g.bench_with_input(BenchmarkId::new("fusion-swap", &id), &k, |b, &k| {
            b.iter(|| black_box(layer.fusion_swap(k)))
        });
        g.bench_with_input(BenchmarkId::new("kdpp-with-eigen", &id), &k, |b, &k| {
            b.iter(|| black_box(layer.k_dpp(k, 0)))
        });
        g.bench_with_input(BenchmarkId::new("greedy-map", &id), &k, |b, &k| {
            b.iter(|| black_box(layer.greedy_map(k)))
        });
        g.finish();
    }
}

/// `--once n:k:n_out [rounds]`: each method timed once per round, methods alternating.
fn once(spec: &str, rounds: usize) {
    for (n, k, n_out) in parse_sizes(spec) {
        let start = Instant::now();
        let layer = Layer::new(n, n_out);
        println!(
            "n = {n}, k = {k}, n_out = {n_out}: synthetic layer built in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let only = std::env::var("SELECT_BENCH_ONLY").ok();
        let runs = |rule: &str| only.as_deref().is_none_or(|o| o == rule);
        for round in 0..rounds {
            let mut times = Vec::new();
            if runs("fusion-greedy") {
                let t = Instant::now();
                let keep = layer.fusion_greedy(k);
                assert_eq!(keep.len(), k);
                times.push(format!("fusion-greedy {:.2} s", t.elapsed().as_secs_f64()));
            }
            if runs("fusion-swap") {
                let t = Instant::now();
                let swapped = layer.fusion_swap(k);
                assert_eq!(swapped.kept.len(), k);
                times.push(format!(
                    "fusion-swap {:.2} s ({} swaps in {} passes, predicted error {:.4} -> {:.4})",
                    t.elapsed().as_secs_f64(),
                    swapped.swaps,
                    swapped.passes,
                    swapped.start_relative_error(),
                    swapped.relative_error()
                ));
            }
            if runs("k-dpp") {
                let t = Instant::now();
                let keep = layer.k_dpp(k, round as u64);
                assert_eq!(keep.len(), k);
                times.push(format!(
                    "k-DPP (eigendecomposition + draw) {:.2} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            println!("round {round}: {}", times.join(", "));
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--once") {
        let spec = args.get(i + 1).map_or("8192:2048:1024", String::as_str);
        let rounds = args.get(i + 2).and_then(|r| r.parse().ok()).unwrap_or(1);
        once(spec, rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
