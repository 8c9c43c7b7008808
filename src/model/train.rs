//! Cross-entropy evaluation and mini-batch training (Adam or SGD with momentum).

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::mlp::Mlp;

/// Accuracy and mean cross-entropy of a model on labelled data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Fraction of samples whose largest logit is the label (ties: the first index).
    pub accuracy: f64,
    /// Mean cross-entropy (natural log) of the softmax of the logits.
    pub loss: f64,
    /// The number of samples.
    pub samples: usize,
}

/// Rows per forward pass in [`evaluate`]: bounds memory at any m.
const EVAL_BATCH: usize = 1024;

fn check_inputs(mlp: &Mlp, x: &[f32], m: usize) -> Result<()> {
    mlp.validate()?;
    if m == 0 {
        return Err(Error::invalid("no samples"));
    }
    if x.len() != m * mlp.input_dim() {
        return Err(Error::invalid(format!(
            "the inputs have {} values, expected {m} rows of {} (the model's input width)",
            x.len(),
            mlp.input_dim()
        )));
    }
    Ok(())
}

fn check_data(mlp: &Mlp, x: &[f32], m: usize, labels: &[u32]) -> Result<()> {
    check_inputs(mlp, x, m)?;
    if labels.len() != m {
        return Err(Error::invalid(format!(
            "{} labels for {m} samples",
            labels.len()
        )));
    }
    let classes = mlp.output_dim();
    if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(Error::invalid(format!(
            "the label at row {i} is {}, but the model has {classes} outputs",
            labels[i]
        )));
    }
    Ok(())
}

/// Adds the batch's cross-entropy and correct count to the totals; when `grad` is given,
/// stores d(mean loss)/d(logits) there (softmax - onehot, divided by `scale`).
fn softmax_xent(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    scale: f32,
    mut grad: Option<&mut [f32]>,
) -> (f64, usize) {
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    for (r, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let best = argmax(row);
        correct += usize::from(best == label as usize);
        let max = row[best] as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_z = max + sum.ln();
        loss += log_z - row[label as usize] as f64;
        if let Some(g) = grad.as_deref_mut() {
            let g = &mut g[r * classes..(r + 1) * classes];
            for (j, (gj, &v)) in g.iter_mut().zip(row).enumerate() {
                let p = (v as f64 - log_z).exp();
                let t = if j == label as usize { 1.0 } else { 0.0 };
                *gj = ((p - t) / scale as f64) as f32;
            }
        }
    }
    (loss, correct)
}

/// The class a row of logits points to: the first index of the largest logit (the one
/// [`evaluate`] counts as the prediction).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Accuracy and mean cross-entropy of `mlp` on m rows of x, in batches.
pub fn evaluate(mlp: &Mlp, x: &[f32], m: usize, labels: &[u32]) -> Result<Evaluation> {
    Ok(evaluate_batches(mlp, x, m, labels, None)?.0)
}

/// [`evaluate`], and the share of the rows on which `mlp` predicts what `reference` holds
/// (another model's predictions, from [`predict`]): how faithfully a compressed network
/// reproduces the original, which its accuracy alone does not say (a copy that errs
/// differently can score as well). From the same forward pass.
pub fn evaluate_against(
    mlp: &Mlp,
    x: &[f32],
    m: usize,
    labels: &[u32],
    reference: &[u32],
) -> Result<(Evaluation, f64)> {
    if reference.len() != m {
        return Err(Error::invalid(format!(
            "{} reference predictions for {m} samples",
            reference.len()
        )));
    }
    let (ev, agree) = evaluate_batches(mlp, x, m, labels, Some(reference))?;
    Ok((ev, agree as f64 / m as f64))
}

/// The predicted class of each of m rows of x: the first index of its largest logit.
pub fn predict(mlp: &Mlp, x: &[f32], m: usize) -> Result<Vec<u32>> {
    check_inputs(mlp, x, m)?;
    let d = mlp.input_dim();
    let classes = mlp.output_dim();
    let mut predictions = Vec::with_capacity(m);
    for start in (0..m).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(m);
        let logits = mlp.forward(&x[start * d..end * d], end - start);
        predictions.extend(logits.chunks_exact(classes).map(|row| argmax(row) as u32));
    }
    Ok(predictions)
}

/// The evaluation, and the number of rows predicted as `reference` says when given.
fn evaluate_batches(
    mlp: &Mlp,
    x: &[f32],
    m: usize,
    labels: &[u32],
    reference: Option<&[u32]>,
) -> Result<(Evaluation, usize)> {
    check_data(mlp, x, m, labels)?;
    let d = mlp.input_dim();
    let classes = mlp.output_dim();
    let (mut loss, mut correct, mut agree) = (0.0f64, 0usize, 0usize);
    for start in (0..m).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(m);
        let logits = mlp.forward(&x[start * d..end * d], end - start);
        let (l, c) = softmax_xent(&logits, &labels[start..end], classes, 1.0, None);
        loss += l;
        correct += c;
        if let Some(reference) = reference {
            agree += logits
                .chunks_exact(classes)
                .zip(&reference[start..end])
                .filter(|(row, &want)| argmax(row) == want as usize)
                .count();
        }
    }
    if !loss.is_finite() {
        return Err(Error::Numerical(
            "the loss is not finite: the model's outputs overflow".into(),
        ));
    }
    let ev = Evaluation {
        accuracy: correct as f64 / m as f64,
        loss: loss / m as f64,
        samples: m,
    };
    Ok((ev, agree))
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8, as PyTorch's defaults).
    Adam,
    /// SGD with (PyTorch-style) momentum: v = mu v + g, p -= lr v.
    Sgd {
        /// The momentum factor mu (0 for plain SGD).
        momentum: f32,
    },
}

/// Training hyper-parameters.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per gradient step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Step size.
    pub learning_rate: f32,
    /// The update rule.
    pub optimizer: Optimizer,
    /// Seeds the shuffling of every epoch.
    pub seed: u64,
}

/// What one epoch achieved on the training data.
#[derive(Clone, Debug)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch's batches (as they were seen).
    pub loss: f64,
    /// Training accuracy over the epoch's batches (as they were seen).
    pub accuracy: f64,
    /// Wall-clock seconds the epoch took.
    pub seconds: f64,
}

/// Per-parameter optimizer state for one layer.
struct Slots {
    m_w: Vec<f32>,
    v_w: Vec<f32>,
    m_b: Vec<f32>,
    v_b: Vec<f32>,
}

/// Mini-batch cross-entropy training, shuffled each epoch from the seed. `on_batch(done, total)`
/// for progress bars, `on_epoch` for per-epoch reports. Deterministic for a given seed.
pub fn train(
    mlp: &mut Mlp,
    x: &[f32],
    m: usize,
    labels: &[u32],
    cfg: &TrainConfig,
    on_batch: &mut dyn FnMut(usize, usize),
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    check_data(mlp, x, m, labels)?;
    if cfg.batch_size == 0 {
        return Err(Error::invalid("the batch size must be at least 1"));
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(Error::invalid(format!(
            "the learning rate must be a positive number, got {}",
            cfg.learning_rate
        )));
    }
    if let Optimizer::Sgd { momentum } = cfg.optimizer {
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::invalid(format!(
                "the momentum must be in [0, 1), got {momentum}"
            )));
        }
    }
    let d = mlp.input_dim();
    let classes = mlp.output_dim();
    let nl = mlp.layers.len();
    let mut slots: Vec<Slots> = mlp
        .layers
        .iter()
        .map(|l| Slots {
            m_w: vec![0.0; l.weight.len()],
            v_w: vec![0.0; l.weight.len()],
            m_b: vec![0.0; l.out_dim],
            v_b: vec![0.0; l.out_dim],
        })
        .collect();
    let mut grad_w: Vec<Vec<f32>> = mlp
        .layers
        .iter()
        .map(|l| vec![0.0; l.weight.len()])
        .collect();
    let mut grad_b: Vec<Vec<f32>> = mlp.layers.iter().map(|l| vec![0.0; l.out_dim]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..m).collect();
    let batches = m.div_ceil(cfg.batch_size);
    let total = batches.saturating_mul(cfg.epochs);
    let par = faer::get_global_parallelism();
    let mut step = 0i32;
    // Sized by the data, not by the settings: --batch-size or --epochs can be any number.
    let batch_rows = cfg.batch_size.min(m);
    let mut reports = Vec::with_capacity(cfg.epochs.min(1024));
    let mut xb: Vec<f32> = Vec::with_capacity(batch_rows * d);
    let mut yb: Vec<u32> = Vec::with_capacity(batch_rows);
    for epoch in 0..cfg.epochs {
        let start_time = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (bi, idx) in order.chunks(cfg.batch_size).enumerate() {
            let b = idx.len();
            xb.clear();
            yb.clear();
            for &i in idx {
                xb.extend_from_slice(&x[i * d..(i + 1) * d]);
                yb.push(labels[i]);
            }
            let (zs, acts) = mlp.forward_cached(&xb, b);
            let mut dz = vec![0.0f32; b * classes];
            let (l, c) = softmax_xent(&zs[nl - 1], &yb, classes, b as f32, Some(&mut dz));
            loss_sum += l;
            correct += c;
            // Backward: dW_i = dZ_i^T A_{i-1}, db_i = column sums of dZ_i,
            // dA_{i-1} = dZ_i W_i, dZ_{i-1} = dA_{i-1} * act'(Z_{i-1}).
            for i in (0..nl).rev() {
                let layer = &mlp.layers[i];
                let input: &[f32] = if i == 0 { &xb } else { &acts[i - 1] };
                let dzr = MatRef::from_row_major_slice(&dz, b, layer.out_dim);
                let inr = MatRef::from_row_major_slice(input, b, layer.in_dim);
                matmul(
                    MatMut::from_row_major_slice_mut(&mut grad_w[i], layer.out_dim, layer.in_dim),
                    Accum::Replace,
                    dzr.transpose(),
                    inr,
                    1.0f32,
                    par,
                );
                let gb = &mut grad_b[i];
                gb.iter_mut().for_each(|g| *g = 0.0);
                for row in dz.chunks_exact(layer.out_dim) {
                    for (g, &v) in gb.iter_mut().zip(row) {
                        *g += v;
                    }
                }
                if i > 0 {
                    let mut da = vec![0.0f32; b * layer.in_dim];
                    let w =
                        MatRef::from_row_major_slice(&layer.weight, layer.out_dim, layer.in_dim);
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut da, b, layer.in_dim),
                        Accum::Replace,
                        dzr,
                        w,
                        1.0f32,
                        par,
                    );
                    let act = mlp.activation;
                    for ((g, &z), &a) in da.iter_mut().zip(&zs[i - 1]).zip(&acts[i - 1]) {
                        *g *= act.derivative(z, a);
                    }
                    dz = da;
                }
            }
            step += 1;
            for (i, layer) in mlp.layers.iter_mut().enumerate() {
                let s = &mut slots[i];
                update(
                    cfg,
                    step,
                    &mut layer.weight,
                    &grad_w[i],
                    &mut s.m_w,
                    &mut s.v_w,
                );
                // A layer without a bias (a bias-free model given to fine-tune) stays
                // without one, so that the model keeps its tensors.
                if layer.stores_bias() {
                    update(
                        cfg,
                        step,
                        &mut layer.bias,
                        &grad_b[i],
                        &mut s.m_b,
                        &mut s.v_b,
                    );
                }
            }
            on_batch(epoch * batches + bi + 1, total);
        }
        if !loss_sum.is_finite() {
            return Err(Error::Numerical(format!(
                "training diverged in epoch {} (the loss is not finite): lower the learning rate",
                epoch + 1
            )));
        }
        let report = EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / m as f64,
            accuracy: correct as f64 / m as f64,
            seconds: start_time.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// One optimizer step on `p` with gradient `g`; `m1`/`m2` are the moment (or velocity) buffers.
fn update(cfg: &TrainConfig, step: i32, p: &mut [f32], g: &[f32], m1: &mut [f32], m2: &mut [f32]) {
    let lr = cfg.learning_rate;
    match cfg.optimizer {
        Optimizer::Adam => {
            const B1: f32 = 0.9;
            const B2: f32 = 0.999;
            const EPS: f32 = 1e-8;
            let c1 = 1.0 - B1.powi(step);
            let c2 = 1.0 - B2.powi(step);
            let step_size = lr / c1;
            let c2_sqrt = c2.sqrt();
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m1.iter_mut()).zip(m2.iter_mut()) {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *p -= step_size * *m / (v.sqrt() / c2_sqrt + EPS);
            }
        }
        Optimizer::Sgd { momentum } => {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(m1.iter_mut()) {
                *v = momentum * *v + g;
                *p -= lr * *v;
            }
        }
    }
}
