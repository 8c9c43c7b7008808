//! The GPU statistics engine's host side, on lavapipe in CI: results come back once per
//! product whatever m is, the embedding path moves nothing but the result, layers whose
//! accumulators do not fit the device's budget at once are computed in groups (one pass
//! per group) and still agree with the f64 reference, and the GPU forward pass feeds the
//! statistics without a readback.

use std::sync::Arc;

use divnet::gpu::gram::{gram_from_buffer, RowFormat};
use divnet::gpu::plan::TILE_BYTES;
use divnet::gpu::rbf::distances_from_buffer;
use divnet::gpu::test_context;
use divnet::gpu::GpuCounters;
use divnet::kernel::RowSource;
use divnet::kernel::{ActivationRows, LayerStats, SliceRows, StatsKind};
use divnet::progress::NoProgress;
use divnet::{Backend, GpuContext};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(m: usize, n: usize, offset: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * n)
        .map(|_| offset + rng.random_range(-1.0f32..1.0))
        .collect()
}

/// G, s and D of `a` (m x n) in f64 by naive loops.
fn reference(a: &[f32], m: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut g = vec![0.0; n * n];
    let mut d = vec![0.0; n * n];
    let mut s = vec![0.0; n];
    for row in a.chunks_exact(n).take(m) {
        for i in 0..n {
            s[i] += row[i] as f64;
            for j in 0..n {
                g[i * n + j] += row[i] as f64 * row[j] as f64;
                let x = row[i] as f64 - row[j] as f64;
                d[i * n + j] += x * x;
            }
        }
    }
    (g, s, d)
}

fn max_rel(got: &faer::Mat<f64>, want: &[f64]) -> f64 {
    let n = got.nrows();
    let scale = want.iter().fold(1e-30f64, |s, x| s.max(x.abs()));
    let mut worst: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            worst = worst.max((got[(i, j)] - want[i * n + j]).abs());
        }
    }
    worst / scale
}

/// Asserts Gram, column sums and distances against the reference of `a`.
fn check(stats: divnet::kernel::LayerStatistics, a: &[f32], m: usize, n: usize, what: &str) {
    let (g, s, d) = reference(a, m, n);
    if let Some(gram) = stats.gram {
        assert_eq!(gram.samples, m, "{what}: samples");
        let err = max_rel(&gram.gram, &g);
        assert!(err <= 2e-6, "{what}: Gram relative error {err:e}");
        let s_scale = s.iter().fold(1.0f64, |w, x| w.max(x.abs()));
        for (j, (x, y)) in gram.col_sums.iter().zip(&s).enumerate() {
            assert!(
                (x - y).abs() <= 2e-6 * s_scale,
                "{what}: sum {j}: {x} vs {y}"
            );
        }
    }
    if let Some(dist) = stats.distances {
        assert_eq!(dist.samples, m, "{what}: samples");
        let err = max_rel(&dist.squared, &d);
        assert!(err <= 2e-6, "{what}: distance relative error {err:e}");
    }
}

fn counters(ctx: &GpuContext) -> GpuCounters {
    ctx.counters().unwrap()
}

/// One Gram (or Gram and distances) of `a` through host pushes of `piece` rows, and what it
/// cost on the context.
fn run(
    ctx: &Arc<GpuContext>,
    a: &[f32],
    n: usize,
    kind: StatsKind,
    piece: usize,
) -> (divnet::kernel::LayerStatistics, GpuCounters) {
    let backend = Backend::Gpu(ctx.clone());
    let before = counters(ctx);
    let mut stats = LayerStats::new(&backend, n, kind).unwrap();
    for part in a.chunks(piece * n) {
        stats.push(ActivationRows::F32(part)).unwrap();
    }
    let result = stats.finish().unwrap();
    (result, counters(ctx).since(&before))
}

#[test]
fn one_readback_per_product_whatever_m() {
    let Some(ctx) = test_context() else { return };
    // Chunks of 110 rows (a 16 KiB cap), so m = 20000 is ~180 chunks against 1.
    let ctx = Arc::new(ctx.with_max_block_bytes(16 << 10));
    let n = 37;
    for kind in [StatsKind::Gram, StatsKind::Distances, StatsKind::Both] {
        let mut seen = Vec::new();
        for m in [100, 20000] {
            let a = random(m, n, 0.2, m as u64);
            let (result, cost) = run(&ctx, &a, n, kind, 997);
            check(result, &a, m, n, &format!("{kind:?} m = {m}"));
            seen.push(cost);
        }
        let (short, long) = (seen[0], seen[1]);
        assert_eq!(short.readbacks, 1, "{kind:?}: {short:?}");
        assert_eq!(long.readbacks, 1, "{kind:?}: {long:?}");
        assert_eq!(short.readback_bytes, long.readback_bytes, "{kind:?}");
        // Buffers are made once per product, whatever the number of chunks.
        assert_eq!(short.buffers, long.buffers, "{kind:?}");
        assert_eq!(short.buffer_bytes, long.buffer_bytes, "{kind:?}");
        // One submit per chunk (plus a fixed few), not one per block and chunk.
        let chunks = 20000usize.div_ceil(110) as u64;
        assert!(
            long.submits >= chunks && long.submits <= chunks + 4,
            "{kind:?}: {} submits for {chunks} chunks",
            long.submits
        );
        // One tile per product, the column sums (f32 pairs) and their shift (f32) with the
        // Gram.
        let products = if kind == StatsKind::Both { 2 } else { 1 };
        let sums = if kind.has_gram() {
            n as u64 * 8 + (n as u64 * 4).next_multiple_of(8)
        } else {
            0
        };
        assert_eq!(
            long.readback_bytes,
            products * TILE_BYTES + sums,
            "{kind:?}"
        );
    }
}

#[test]
fn embedding_path_reads_back_only_the_result() {
    let Some(ctx) = test_context() else { return };
    let ctx = ctx.with_max_block_bytes(64 << 10);
    let (m, n) = (3000, 70);
    let a = random(m, n, 0.1, 5);
    let buffer = ctx.storage_buffer_init("test rows", &a).unwrap();
    let tiles = 3; // 70 neurons: 2 x 2 tiles, 3 in the upper triangle
    let before = counters(&ctx);
    let g = gram_from_buffer(&ctx, &buffer, RowFormat::F32, m, n).unwrap();
    let cost = counters(&ctx).since(&before);
    assert_eq!(cost.readbacks, 1, "{cost:?}");
    assert_eq!(
        cost.readback_bytes,
        tiles * TILE_BYTES + n as u64 * 8 + (n as u64 * 4).next_multiple_of(8)
    );
    // The rows are read where they are: what goes up is parameters and the tile list.
    assert!(
        cost.upload_bytes < 1024,
        "{} bytes uploaded",
        cost.upload_bytes
    );
    let (rg, rs, rd) = reference(&a, m, n);
    assert!(max_rel(&g.gram, &rg) <= 2e-6);
    assert!((g.col_sums[3] - rs[3]).abs() <= 1e-6 * rs[3].abs().max(1.0));

    let before = counters(&ctx);
    let d = distances_from_buffer(&ctx, &buffer, RowFormat::F32, m, n).unwrap();
    let cost = counters(&ctx).since(&before);
    assert_eq!(cost.readbacks, 1);
    assert_eq!(cost.readback_bytes, tiles * TILE_BYTES);
    assert!(max_rel(&d.squared, &rd) <= 2e-6);
}

#[test]
fn grouped_blocks_give_the_same_statistics() {
    let Some(ctx) = test_context() else { return };
    // Accumulators for 3 tiles at a time: n = 200 has 4 x 4 tiles, 10 in the upper
    // triangle, so several groups, each a pass over the rows.
    let ctx = Arc::new(ctx.with_memory_budget(3 * TILE_BYTES));
    let backend = Backend::Gpu(ctx.clone());
    let (m, n) = (300, 200);
    let a = random(m, n, 0.3, 9);
    let halves: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
    let exact: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
    for kind in [StatsKind::Gram, StatsKind::Both] {
        // Host rows, f16 then f32, kept and replayed once per group.
        let mut stats = LayerStats::new(&backend, n, kind).unwrap();
        let passes = stats.source_passes();
        assert!(passes > 1, "the budget forces groups");
        let half = 120 * n;
        stats.push(ActivationRows::F16(&halves[..half])).unwrap();
        stats.push(ActivationRows::F32(&exact[half..])).unwrap();
        let before = counters(&ctx);
        check(
            stats.finish().unwrap(),
            &exact,
            m,
            n,
            &format!("{kind:?} pushed"),
        );
        let cost = counters(&ctx).since(&before);
        assert!(
            cost.readbacks as usize >= passes,
            "one readback per group at least"
        );

        // A source is read once per group.
        struct Counted<'a>(SliceRows<'a>, usize);
        impl RowSource for Counted<'_> {
            fn width(&self) -> usize {
                self.0.width()
            }
            fn rows(&self) -> usize {
                self.0.rows()
            }
            fn pass(
                &mut self,
                visit: &mut dyn FnMut(ActivationRows<'_>) -> divnet::Result<()>,
            ) -> divnet::Result<()> {
                self.1 += 1;
                self.0.pass(visit)
            }
        }
        let mut source = Counted(
            SliceRows::new(ActivationRows::F32(&a), n)
                .unwrap()
                .with_chunk_rows(77),
            0,
        );
        let mut stats = LayerStats::new(&backend, n, kind).unwrap();
        stats
            .push_source(&mut source, "test", &mut NoProgress)
            .unwrap();
        assert_eq!(source.1, passes);
        check(
            stats.finish().unwrap(),
            &a,
            m,
            n,
            &format!("{kind:?} source"),
        );

        // Rows already on the device: the buffer is read again per group, so it must keep
        // them until finish. push_buffer, whose caller may rewrite it (a review measured
        // statistics 8% off, returned as Ok), refuses and says so.
        let buffer = ctx.storage_buffer_init("test rows", &a).unwrap();
        let mut stats = LayerStats::new(&backend, n, kind).unwrap();
        let err = stats
            .push_buffer(&buffer, 0, 100, RowFormat::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("push_kept_buffer"), "{err}");
        stats
            .push_kept_buffer(&buffer, 0, 100, RowFormat::F32)
            .unwrap();
        stats
            .push_kept_buffer(&buffer, (100 * n * 4) as u64, m - 100, RowFormat::F32)
            .unwrap();
        check(
            stats.finish().unwrap(),
            &a,
            m,
            n,
            &format!("{kind:?} buffer"),
        );
    }
}

#[test]
fn several_blocks_in_one_group() {
    let Some(ctx) = test_context() else { return };
    // Blocks of one tile (the smallest cap), all resident: 6 blocks read back at once.
    let ctx = Arc::new(ctx.with_max_block_bytes(1));
    let (m, n) = (150, 130);
    let a = random(m, n, -0.4, 13);
    let (result, cost) = run(&ctx, &a, n, StatsKind::Both, 64);
    check(result, &a, m, n, "one-tile blocks");
    assert_eq!(
        cost.readback_bytes,
        2 * 6 * TILE_BYTES + n as u64 * 8 + (n as u64 * 4).next_multiple_of(8)
    );
}

#[test]
fn gpu_forward_feeds_the_statistics_without_a_readback() {
    use divnet::compress::observe_hidden_layer;
    use divnet::model::{Activation, Mlp};
    let Some(ctx) = test_context() else { return };
    let ctx = Arc::new(ctx);
    let mlp = Mlp::init(&[20, 90, 7], Activation::Relu, 3);
    let m = 500;
    let x = random(m, 20, 0.0, 4);
    let before = counters(&ctx);
    let obs = observe_hidden_layer(
        &Backend::Gpu(ctx.clone()),
        &mlp,
        &x,
        m,
        0,
        128,
        true,
        &mut NoProgress,
    )
    .unwrap();
    let cost = counters(&ctx).since(&before);
    // The hidden activations never come back: one readback, of the result.
    assert_eq!(cost.readbacks, 1, "{cost:?}");
    let h = mlp.hidden(&x, m, 0);
    check(
        divnet::kernel::LayerStatistics {
            gram: Some(obs.stats),
            distances: obs.distances,
        },
        &h,
        m,
        90,
        "observed on the GPU",
    );
}

#[test]
fn timing_reports_device_time_where_the_adapter_has_timestamps() {
    let Some(ctx) = test_context() else { return };
    let ctx = Arc::new(ctx);
    if !ctx.enable_timing() {
        eprintln!("no TIMESTAMP_QUERY on this adapter: nothing to check");
        return;
    }
    let a = random(2000, 100, 0.0, 1);
    let (_, cost) = run(&ctx, &a, 100, StatsKind::Gram, 2000);
    assert!(cost.timed_passes >= 1, "{cost:?}");
    assert!(cost.gpu_seconds > 0.0, "{cost:?}");
}

#[test]
fn running_sums_keep_what_f32_would_drop() {
    let Some(ctx) = test_context() else { return };
    // 64-row chunks (256-byte cap, one neuron). The first chunk makes G = 2^27, where f32's
    // spacing is 16: each later chunk adds 64 x 0.1^2 = 0.64, which a plain f32 running sum
    // would drop every time (an error of 640 after 1000 chunks). The (hi, lo) pair keeps it,
    // up to lo's own roundings (lo reaches 640, where f32's spacing is 6e-5). The first
    // chunk's mean is 0, so the shift the products are taken about (its column means) is 0
    // and the later chunks' products stay 0.1^2.
    let ctx = Arc::new(ctx.with_max_block_bytes(256));
    let backend = Backend::Gpu(ctx);
    let small = 0.1f32;
    let chunks = 1000;
    let mut stats = LayerStats::new(&backend, 1, StatsKind::Both).unwrap();
    // The large value fills a chunk of its own: within one chunk the sum is plain f32.
    let mut first = [0.0f32; 64];
    first[0] = 8192.0;
    first[1] = -8192.0;
    stats.push(ActivationRows::F32(&first)).unwrap();
    for _ in 0..chunks {
        stats.push(ActivationRows::F32(&[small; 64])).unwrap();
    }
    let gram = stats.finish().unwrap().into_gram().unwrap();
    let want = 2.0 * 8192.0f64 * 8192.0 + (chunks * 64) as f64 * (small as f64).powi(2);
    let got = gram.gram[(0, 0)];
    assert!(
        (got - want).abs() < 0.05,
        "G = {got}, exact {want}: the compensation was lost ({})",
        got - want
    );
    let s_want = (chunks * 64) as f64 * small as f64;
    assert!((gram.col_sums[0] - s_want).abs() < 1e-6 * s_want);
}

/// Columns whose mean dominates their spread keep their centred statistics: the products
/// are taken about the first chunk's column means, so a constant column's centred variance
/// is 0 to rounding, not the 1.1e-4 of `G_jj` that raw f32 products over 4096-row chunks
/// left (lavapipe, m = 20000), and an offset column's variance stays within 1e-5 of itself.
/// Both engines, chunks of 1 to 5000 rows.
#[test]
fn columns_with_a_large_mean_keep_their_centred_variance() {
    let mut backends = vec![Backend::Cpu];
    if let Some(ctx) = test_context() {
        backends.push(Backend::Gpu(Arc::new(ctx)));
    }
    let constants = [1e-3f32, 0.1, 7.77, 1234.567, 3.3e4];
    let n = constants.len() + 1;
    let m = 20000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut a = Vec::with_capacity(m * n);
    for _ in 0..m {
        a.extend_from_slice(&constants);
        a.push(100.0 + rng.random_range(-1.0f32..1.0));
    }
    // The offset column's centred variance, in f64 from the same f32 values.
    let offset: Vec<f64> = a.iter().skip(n - 1).step_by(n).map(|&x| x as f64).collect();
    let mean = offset.iter().sum::<f64>() / m as f64;
    let want = offset.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    for backend in &backends {
        for chunk in [1usize, 37, 5000] {
            let mut stats = LayerStats::new(backend, n, StatsKind::Gram).unwrap();
            for rows in a.chunks(chunk * n) {
                stats.push(ActivationRows::F32(rows)).unwrap();
            }
            let g = stats.finish().unwrap().into_gram().unwrap();
            let centred = |j: usize| g.gram[(j, j)] - g.col_sums[j].powi(2) / m as f64;
            for (j, c) in constants.iter().enumerate() {
                assert!(
                    centred(j).abs() <= 1e-9 * g.gram[(j, j)],
                    "{backend:?}, chunks of {chunk}: constant {c} has centred variance {:e} of G_jj",
                    centred(j) / g.gram[(j, j)]
                );
            }
            let got = centred(n - 1);
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "{backend:?}, chunks of {chunk}: offset column's variance {got} vs {want}"
            );
        }
    }
}

/// Rows in a GPU buffer are not checked on the way in (they never reach the host): a NaN or
/// an overflowing value there makes finish an error instead of statistics with NaN in them.
#[test]
fn non_finite_rows_in_a_buffer_are_an_error_at_finish() {
    let Some(ctx) = test_context() else { return };
    let ctx = Arc::new(ctx);
    let backend = Backend::Gpu(ctx.clone());
    let (m, n) = (40, 12);
    for bad in [f32::NAN, 1e30] {
        let mut a = random(m, n, 0.0, 11);
        a[3 * n + 7] = bad;
        let buffer = ctx.storage_buffer_init("test rows", &a).unwrap();
        for kind in [StatsKind::Gram, StatsKind::Distances, StatsKind::Both] {
            let mut stats = LayerStats::new(&backend, n, kind).unwrap();
            stats.push_buffer(&buffer, 0, m, RowFormat::F32).unwrap();
            let err = match stats.finish() {
                Ok(_) => panic!("{bad} {kind:?}: statistics of non-finite rows"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("GPU buffers"), "{bad} {kind:?}: {err}");
        }
    }
}
