//! The paper's experiment on a trained MLP (Mariet & Sra 2016, section 5): how diverse the
//! neurons a k-DPP keeps are, and test accuracy against the number of neurons kept per hidden
//! layer for k-DPP, random, importance and greedy MAP selection, each with and without fusion,
//! with all hidden layers compressed or one at a time (and how often each compressed network
//! predicts what the full one does); and the selection built for the fusion
//! (fusion-greedy, fusion-swap, and the k-DPP and greedy MAP on the quality-diversity kernel)
//! against them, before and after a one-epoch fine-tune.
//!
//! Observations of the original network's layers, and their selectors (so the kernels'
//! eigendecompositions), are computed once and shared by every size, seed and configuration
//! that sees them; a layer behind an already compressed one is observed afresh.

use std::cell::OnceCell;
use std::time::Instant;

use faer::Mat;

use crate::backend::Backend;
use crate::compress::{apply_selection, observe_hidden_layer, Progress};
use crate::error::{Error, Result};
use crate::fusion::{FusionMode, FusionOptions, NextLayer};
use crate::kernel::{rbf_from_distances, Beta, GramStats, RbfKernel};
use crate::model::{evaluate_against, predict, train, Mlp, Optimizer, TrainConfig};
use crate::select::{
    diversity, importance_scores, Diversity, LayerSelector, SelectionMethod, SelectionSize,
};

/// The data the experiment runs on.
pub struct ExperimentData<'a> {
    /// The trained network.
    pub model: &'a Mlp,
    /// Calibration inputs (rows x input_dim, row-major), drawn from the training set.
    pub calibration: &'a [f32],
    /// Labels of the calibration inputs (used only by the optional fine-tune).
    pub calibration_labels: &'a [u32],
    /// Test inputs (rows x input_dim).
    pub test: &'a [f32],
    /// Test labels.
    pub test_labels: &'a [u32],
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    /// Neurons kept per hidden layer, e.g. 10, 25, 50, 100, 200, 400.
    pub sizes: Vec<usize>,
    /// Draws per random method (k-DPP, random), for mean and spread.
    pub seeds: u64,
    /// RBF bandwidth.
    pub beta: Beta,
    /// Added to the kernel's diagonal.
    pub eps: f64,
    /// Calibration rows per chunk.
    pub chunk_rows: usize,
    /// The size at which the diversity heatmaps are drawn (must be one of `sizes`).
    pub heatmap_size: usize,
    /// Run the one-layer-at-a-time curves (finding c).
    pub one_layer_at_a_time: bool,
    /// Fine-tune each network of [`FINETUNE_VARIANTS`] at this size for one epoch on the
    /// calibration set (finding e).
    pub finetune_size: Option<usize>,
}

/// A selection method followed by fusion or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Variant {
    /// How neurons are chosen.
    pub method: SelectionMethod,
    /// Fuse (with bias) or prune.
    pub fused: bool,
}

impl Variant {
    /// "kdpp + fusion", "random", ...
    pub fn label(&self) -> String {
        if self.fused {
            format!("{} + fusion", self.method)
        } else {
            self.method.to_string()
        }
    }
}

/// Accuracy at one size, over the seeds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    /// Neurons kept in each compressed layer.
    pub kept: usize,
    /// Test accuracy per seed.
    pub accuracies: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation (0 for one seed).
    pub std: f64,
    /// Mean test loss.
    pub loss: f64,
    /// Per seed, the share of test images on which the compressed network predicts the class
    /// the full network predicts: its fidelity, which accuracy alone does not show (a network
    /// that errs on other images than the full one can score as well, or better).
    pub agreements: Vec<f64>,
    /// Their mean.
    pub agreement: f64,
}

/// Accuracy against size for one variant and one scope.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Curve {
    /// "all hidden layers" or the name of the one compressed layer.
    pub scope: String,
    /// The variant.
    pub variant: Variant,
    /// "kdpp + fusion", ...
    pub label: String,
    /// One point per size.
    pub points: Vec<Point>,
}

/// Diversity of kept sets in the first hidden layer at one size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiversityPoint {
    /// Neurons kept.
    pub kept: usize,
    /// k-DPP draws.
    pub kdpp: Vec<Diversity>,
    /// Random draws.
    pub random: Vec<Diversity>,
}

/// The kernel restricted to a kept set (row-major k x k), for the heatmaps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Heatmap {
    /// "kdpp" or "random".
    pub method: String,
    /// Side length.
    pub size: usize,
    /// L_Y, row-major.
    pub values: Vec<f64>,
}

/// One variant's fine-tune (finding e): every hidden layer compressed to the same size, then
/// one epoch on the calibration set with the same settings for every variant.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finetune {
    /// The variant.
    pub variant: Variant,
    /// "kdpp + fusion", ...
    pub label: String,
    /// Neurons kept per hidden layer.
    pub kept: usize,
    /// Test accuracy before, per seed (one for the deterministic methods).
    pub before_draws: Vec<f64>,
    /// Test accuracy after one epoch on the calibration set, per seed.
    pub after_draws: Vec<f64>,
    /// Mean test accuracy before.
    pub before: f64,
    /// Mean test accuracy after.
    pub after: f64,
    /// (after - before) / (full - before), of the means.
    pub gap_closed: f64,
}

/// Everything the experiment measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExperimentReport {
    /// Widths of the network.
    pub widths: Vec<usize>,
    /// Test accuracy of the full network.
    pub full_accuracy: f64,
    /// Test loss of the full network.
    pub full_loss: f64,
    /// Calibration rows.
    pub calibration_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// beta of the first hidden layer's kernel.
    pub beta_first_layer: f64,
    /// Finding (a): diversity of k-DPP vs random kept sets in the first hidden layer.
    pub diversity: Vec<DiversityPoint>,
    /// The heatmaps of finding (a).
    pub heatmaps: Vec<Heatmap>,
    /// Findings (b), (c), (d) and the selections built for fusion (e).
    pub curves: Vec<Curve>,
    /// Finding (e): the fine-tunes, one per variant of [`FINETUNE_VARIANTS`] (none when not
    /// asked for).
    pub finetune: Vec<Finetune>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The variants of findings (b) and (d), greedy MAP, and the selections built for fusion.
pub const VARIANTS: [Variant; 16] = [
    Variant {
        method: SelectionMethod::KDpp,
        fused: true,
    },
    Variant {
        method: SelectionMethod::KDpp,
        fused: false,
    },
    Variant {
        method: SelectionMethod::Random,
        fused: true,
    },
    Variant {
        method: SelectionMethod::Random,
        fused: false,
    },
    Variant {
        method: SelectionMethod::Importance,
        fused: true,
    },
    Variant {
        method: SelectionMethod::Importance,
        fused: false,
    },
    Variant {
        method: SelectionMethod::Greedy,
        fused: true,
    },
    Variant {
        method: SelectionMethod::Greedy,
        fused: false,
    },
    Variant {
        method: SelectionMethod::FusionGreedy,
        fused: true,
    },
    Variant {
        method: SelectionMethod::FusionGreedy,
        fused: false,
    },
    Variant {
        method: SelectionMethod::FusionSwap,
        fused: true,
    },
    Variant {
        method: SelectionMethod::FusionSwap,
        fused: false,
    },
    Variant {
        method: SelectionMethod::QualityKDpp,
        fused: true,
    },
    Variant {
        method: SelectionMethod::QualityKDpp,
        fused: false,
    },
    Variant {
        method: SelectionMethod::QualityGreedy,
        fused: true,
    },
    Variant {
        method: SelectionMethod::QualityGreedy,
        fused: false,
    },
];

/// Finding (e): the selection built for fusion against the paper's rules and importance,
/// each followed by fusion, fine-tuned alike.
pub const FINETUNE_VARIANTS: [Variant; 7] = [
    Variant {
        method: SelectionMethod::KDpp,
        fused: true,
    },
    Variant {
        method: SelectionMethod::Greedy,
        fused: true,
    },
    Variant {
        method: SelectionMethod::Importance,
        fused: true,
    },
    Variant {
        method: SelectionMethod::FusionGreedy,
        fused: true,
    },
    Variant {
        method: SelectionMethod::FusionSwap,
        fused: true,
    },
    Variant {
        method: SelectionMethod::QualityKDpp,
        fused: true,
    },
    Variant {
        method: SelectionMethod::QualityGreedy,
        fused: true,
    },
];

/// A hidden layer as seen by selection: its statistics, kernel (when a method needs it),
/// importance scores and the layer that reads it.
struct Observed<'n> {
    stats: GramStats,
    kernel: Option<RbfKernel>,
    importance: Vec<f64>,
    next: NextLayer<'n>,
}

impl Observed<'_> {
    fn selector(&self) -> LayerSelector<'_> {
        LayerSelector::new(
            self.stats.col_sums.len(),
            self.kernel.as_ref().map(|k| &k.matrix),
            Some(&self.importance),
        )
        .with_next_layers(&self.stats, &[self.next])
    }
}

struct Runner<'a> {
    backend: &'a Backend,
    data: &'a ExperimentData<'a>,
    cfg: &'a ExperimentConfig,
    m: usize,
    /// Observations of the original network's hidden layers, made on first use.
    original: &'a [OnceCell<Observed<'a>>],
    /// Their selectors, which keep the kernels' eigendecompositions for every draw.
    selectors: Vec<OnceCell<LayerSelector<'a>>>,
    /// The full network's predicted class of each test image.
    full_predictions: Vec<u32>,
}

/// One network on the test set.
struct Evaluated {
    accuracy: f64,
    loss: f64,
    agreement: f64,
}

impl<'a> Runner<'a> {
    fn observe<'n>(&self, net: &'n Mlp, layer: usize, with_kernel: bool) -> Result<Observed<'n>> {
        let obs = observe_hidden_layer(
            self.backend,
            net,
            self.data.calibration,
            self.m,
            layer,
            self.cfg.chunk_rows,
            with_kernel,
            &mut crate::compress::NoProgress,
        )?;
        let kernel = obs
            .distances
            .map(|d| rbf_from_distances(d, self.cfg.beta, self.cfg.eps))
            .transpose()?;
        let next = &net.layers[layer + 1];
        let importance = importance_scores(&obs.stats, &next.weight, next.out_dim)?;
        Ok(Observed {
            stats: obs.stats,
            kernel,
            importance,
            next: NextLayer {
                weight: &next.weight,
                bias: next.has_bias.then_some(next.bias.as_slice()),
                n_out: next.out_dim,
                n_in: next.in_dim,
            },
        })
    }

    fn original(&self, layer: usize) -> Result<&'a Observed<'a>> {
        let cell = &self.original[layer];
        if cell.get().is_none() {
            let _ = cell.set(self.observe(self.data.model, layer, true)?);
        }
        Ok(cell.get().expect("just filled"))
    }

    fn original_selector(&self, layer: usize) -> Result<&LayerSelector<'a>> {
        let cell = &self.selectors[layer];
        if cell.get().is_none() {
            let _ = cell.set(self.original(layer)?.selector());
        }
        Ok(cell.get().expect("just filled"))
    }

    /// Compresses the layers with `Some(k)` in `sizes` by `variant` and returns the network.
    fn compress(&self, variant: Variant, sizes: &[Option<usize>], seed: u64) -> Result<Mlp> {
        let backend = self.backend;
        let mut net = self.data.model.clone();
        let fusion = FusionOptions {
            mode: if variant.fused {
                FusionMode::Fuse
            } else {
                FusionMode::Prune
            },
            ..FusionOptions::default()
        };
        let mut touched = false;
        for (layer, size) in sizes.iter().enumerate() {
            let Some(k) = *size else { continue };
            let size = SelectionSize::Exactly(k);
            let seed = seed.wrapping_mul(1000).wrapping_add(layer as u64);
            let fresh_stats;
            let (keep, stats) = if touched {
                // Behind a compressed layer: observed afresh, its selector used once.
                let fresh = self.observe(&net, layer, variant.method.needs_kernel())?;
                let keep = fresh.selector().select(variant.method, size, seed)?;
                fresh_stats = fresh.stats;
                (keep, &fresh_stats)
            } else {
                let keep = self
                    .original_selector(layer)?
                    .select(variant.method, size, seed)?;
                (keep, &self.original(layer)?.stats)
            };
            apply_selection(backend, &mut net, layer, &keep, stats, &fusion)?;
            touched = true;
        }
        Ok(net)
    }

    /// Test accuracy, loss, and agreement with the full network's predictions.
    fn evaluate(&self, net: &Mlp) -> Result<Evaluated> {
        let rows = self.data.test_labels.len();
        let (e, agreement) = evaluate_against(
            net,
            self.data.test,
            rows,
            self.data.test_labels,
            &self.full_predictions,
        )?;
        Ok(Evaluated {
            accuracy: e.accuracy,
            loss: e.loss,
            agreement,
        })
    }

    fn curve(
        &self,
        scope: String,
        variant: Variant,
        layers: &[bool],
        progress: &mut dyn Progress,
    ) -> Result<Curve> {
        let seeds = if variant.method.is_random() {
            self.cfg.seeds.max(1)
        } else {
            1
        };
        let mut points = Vec::new();
        for &k in &self.cfg.sizes.clone() {
            let sizes: Vec<Option<usize>> = layers.iter().map(|&on| on.then_some(k)).collect();
            let mut accuracies = Vec::new();
            let mut agreements = Vec::new();
            let mut loss = 0.0;
            for seed in 0..seeds {
                let net = self.compress(variant, &sizes, seed)?;
                let e = self.evaluate(&net)?;
                accuracies.push(e.accuracy);
                agreements.push(e.agreement);
                loss += e.loss / seeds as f64;
                progress.advance(1);
            }
            let (mean, std) = mean_std(&accuracies);
            points.push(Point {
                kept: k,
                accuracies,
                mean,
                std,
                loss,
                agreement: mean_std(&agreements).0,
                agreements,
            });
        }
        Ok(Curve {
            scope,
            label: variant.label(),
            variant,
            points,
        })
    }
}

/// Mean and (population) standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Runs the experiment. `progress` sees one unit per compressed-and-evaluated network.
pub fn run_experiment(
    backend: &Backend,
    data: &ExperimentData<'_>,
    cfg: &ExperimentConfig,
    progress: &mut dyn Progress,
) -> Result<ExperimentReport> {
    let start = Instant::now();
    let model = data.model;
    let hidden = model.layers.len().saturating_sub(1);
    if hidden == 0 {
        return Err(Error::invalid("the model has no hidden layer"));
    }
    let d = model.input_dim();
    if data.calibration.is_empty() || !data.calibration.len().is_multiple_of(d) {
        return Err(Error::invalid(format!(
            "calibration data is not a whole number of rows of {d} inputs"
        )));
    }
    let m = data.calibration.len() / d;
    if data.test.len() != data.test_labels.len() * d {
        return Err(Error::invalid("test inputs and labels disagree in length"));
    }
    let narrowest = model.layers[..hidden]
        .iter()
        .map(|l| l.out_dim)
        .min()
        .unwrap_or(0);
    if let Some(&k) = cfg.sizes.iter().find(|&&k| k == 0 || k > narrowest) {
        return Err(Error::invalid(format!(
            "cannot keep {k} neurons: the narrowest hidden layer has {narrowest}"
        )));
    }
    if cfg.finetune_size.is_some() && data.calibration_labels.len() != m {
        return Err(Error::invalid(
            "calibration inputs and labels disagree in length",
        ));
    }
    let original: Vec<OnceCell<Observed>> = (0..hidden).map(|_| OnceCell::new()).collect();
    let runner = Runner {
        backend,
        data,
        cfg,
        m,
        original: &original,
        selectors: (0..hidden).map(|_| OnceCell::new()).collect(),
        full_predictions: predict(model, data.test, data.test_labels.len())?,
    };
    let full = runner.evaluate(model)?;
    let (full_accuracy, full_loss) = (full.accuracy, full.loss);

    // Finding (a): diversity in the first hidden layer.
    progress.start("observe fc1", 1);
    let first = runner.original(0)?;
    progress.finish();
    let first_kernel = first
        .kernel
        .as_ref()
        .expect("original layers have their kernel");
    let beta_first_layer = first_kernel.beta;
    let selector = runner.original_selector(0)?;
    let mut diversity_points = Vec::new();
    let mut heatmaps = Vec::new();
    for &k in &cfg.sizes {
        let mut point = DiversityPoint {
            kept: k,
            kdpp: Vec::new(),
            random: Vec::new(),
        };
        for seed in 0..cfg.seeds.max(1) {
            for (method, into) in [
                (SelectionMethod::KDpp, &mut point.kdpp),
                (SelectionMethod::Random, &mut point.random),
            ] {
                let keep = selector.select(method, SelectionSize::Exactly(k), seed)?;
                into.push(diversity(first_kernel.matrix.as_ref(), &keep));
                if k == cfg.heatmap_size && seed == 0 {
                    heatmaps.push(Heatmap {
                        method: method.name().into(),
                        size: k,
                        values: submatrix(&first_kernel.matrix, &keep),
                    });
                }
            }
        }
        diversity_points.push(point);
    }

    // Findings (b), (c), (d).
    let mut scopes: Vec<(String, Vec<bool>)> =
        vec![("all hidden layers".into(), vec![true; hidden])];
    if cfg.one_layer_at_a_time && hidden > 1 {
        for l in 0..hidden {
            scopes.push((
                model.layers[l].name.clone(),
                (0..hidden).map(|i| i == l).collect(),
            ));
        }
    }
    let per_variant = |v: &Variant| {
        if v.method.is_random() {
            cfg.seeds.max(1)
        } else {
            1
        }
    };
    let total: u64 = scopes.len() as u64
        * VARIANTS.iter().map(per_variant).sum::<u64>()
        * cfg.sizes.len() as u64;
    progress.start("compress+eval", total);
    let mut curves = Vec::new();
    for (scope, layers) in &scopes {
        for variant in VARIANTS {
            curves.push(runner.curve(scope.clone(), variant, layers, progress)?);
        }
    }
    progress.finish();

    // Finding (e): every variant compressed to the same size and fine-tuned alike.
    let mut finetune = Vec::new();
    if let Some(k) = cfg.finetune_size {
        let tc = TrainConfig {
            epochs: 1,
            batch_size: 64,
            learning_rate: 3e-4,
            optimizer: Optimizer::Adam,
            seed: 0,
        };
        let total: u64 = FINETUNE_VARIANTS.iter().map(per_variant).sum();
        progress.start("fine-tune", total);
        for variant in FINETUNE_VARIANTS {
            let mut before_draws = Vec::new();
            let mut after_draws = Vec::new();
            for seed in 0..per_variant(&variant) {
                let mut net = runner.compress(variant, &vec![Some(k); hidden], seed)?;
                before_draws.push(runner.evaluate(&net)?.accuracy);
                train(
                    &mut net,
                    data.calibration,
                    m,
                    data.calibration_labels,
                    &tc,
                    &mut |_, _| {},
                    &mut |_| {},
                )?;
                after_draws.push(runner.evaluate(&net)?.accuracy);
                progress.advance(1);
            }
            let before = mean_std(&before_draws).0;
            let after = mean_std(&after_draws).0;
            finetune.push(Finetune {
                variant,
                label: variant.label(),
                kept: k,
                before_draws,
                after_draws,
                before,
                after,
                gap_closed: (after - before) / (full_accuracy - before),
            });
        }
        progress.finish();
    }

    Ok(ExperimentReport {
        widths: std::iter::once(model.input_dim())
            .chain(model.layers.iter().map(|l| l.out_dim))
            .collect(),
        full_accuracy,
        full_loss,
        calibration_rows: m,
        test_rows: data.test_labels.len(),
        beta_first_layer,
        diversity: diversity_points,
        heatmaps,
        curves,
        finetune,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn submatrix(l: &Mat<f64>, keep: &[usize]) -> Vec<f64> {
    keep.iter()
        .flat_map(|&i| keep.iter().map(move |&j| l[(i, j)]))
        .collect()
}
