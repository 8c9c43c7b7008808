//! The quality-diversity kernel (Kulesza & Taskar 2012, section 3.1) that lets a DPP weigh
//! what a neuron is worth to the next layer besides how different it is from the others:
//!
//! `L_q = diag(q) L diag(q)`, so `det(L_q,Y) = det(L_Y) * prod_{i in Y} q_i^2`.
//!
//! With `q_i` proportional to a neuron's score, a k-DPP on `L_q` draws a set with
//! probability proportional to its diversity under the RBF kernel `L` times the product of
//! its members' squared scores; greedy MAP on `L_q` trades the two the same way.
//!
//! Which score, measured by the demo (all hidden layers compressed, + fusion, test accuracy
//! at 10 / 25 / 50 / 100 / 200 kept of 1000; before the kernel had [`QUALITY_DIAGONAL`] and
//! fusion its free constant, which moved these by up to 0.3): the next-layer energy with `q_i` proportional
//! to it gave 47.3 / 71.8 / 81.4 / 86.2 / 88.5 for the k-DPP (mean of 3 seeds) and
//! 52.1 / 70.2 / 81.4 / 85.7 / 88.2 for greedy MAP; `q_i` proportional to its square root
//! 40.2 / 68.4 / 80.6 / 86.2 / 88.4 and 49.0 / 70.2 / 81.5 / 85.9 / 88.3; the fusion gain
//! 40.9 / 66.1 / 78.9 / 84.6 / 87.5 and 36.0 / 52.7 / 72.4 / 83.1 / 86.8 (square root),
//! 36.0 / 60.7 / 77.9 / 84.3 / 87.8 and 35.7 / 50.0 / 67.7 / 82.4 / 86.4 (linear). The
//! neurons that explain most of the next layer on their own explain much the same part of
//! it, and the RBF kernel, which measures distances rather than correlation, does not see
//! that redundancy; the energy a neuron sends is spread more evenly.

use faer::{Mat, MatRef};

use super::fusion_greedy::single_neuron_gains;
use crate::error::{Error, Result};
use crate::fusion::NextLayer;
use crate::kernel::GramStats;

/// What a neuron is worth to the next layer, as the quality of the quality-diversity kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityScore {
    /// The energy of the next layer's centred pre-activation the neuron explains on its own,
    /// `||a_c,i^T Z_c||^2 / ||a_c,i||^2` (the first gain of [`super::fusion_greedy()`]).
    FusionGain,
    /// The energy the neuron sends into the next layer, `||W[:, i]||^2 * var(a_i) * m`
    /// (the square of the importance score, centred).
    NextLayerEnergy,
}

/// Each neuron's score, length n. Errors as [`super::fusion_greedy()`].
pub fn quality_scores(
    stats: &GramStats,
    next: &[NextLayer<'_>],
    score: QualityScore,
) -> Result<Vec<f64>> {
    match score {
        QualityScore::FusionGain => single_neuron_gains(stats, next),
        QualityScore::NextLayerEnergy => {
            // Validated by the same checks as the gains (shapes, finite values).
            let n = crate::fusion::check_stats(stats, "quality scores")?;
            if next.is_empty() {
                return Err(Error::invalid(
                    "quality scores need the next layer's weights (no next layer given)",
                ));
            }
            let mut col_norm2 = vec![0.0f64; n];
            for layer in next {
                crate::fusion::check_next_layer(layer, n, "quality scores")?;
                for row in layer.weight.chunks_exact(n) {
                    for (acc, &w) in col_norm2.iter_mut().zip(row) {
                        *acc += (w as f64) * (w as f64);
                    }
                }
            }
            let (g, s, m) = (&stats.gram, &stats.col_sums, stats.samples as f64);
            Ok((0..n)
                .map(|i| col_norm2[i] * (g[(i, i)] - s[i] * s[i] / m).max(0.0))
                .collect())
        }
    }
}

/// Added to the quality kernel's diagonal, relative to its largest diagonal entry.
///
/// A neuron that scores 0 (dead, constant, or not read by the next layer) has a zero row in
/// `diag(q) L diag(q)`, so the kernel's rank is the number of neurons that score; a k-DPP or
/// greedy MAP asked for more (k = n on a ReLU layer with dead neurons) had no subset of
/// positive determinant and failed, where every other method keeps k. With this diagonal a
/// zero-score neuron is an item of its own with a tiny weight: drawn only when the
/// neurons that score are exhausted (greedy MAP: after every one whose conditional variance
/// stays above that diagonal, which leaves out near-duplicates). 1e-6 of the largest
/// diagonal entry stays above the samplers' rank tolerance (n eps times the largest
/// eigenvalue, at most n^2 eps times the largest diagonal entry) up to n of about 67000,
/// and changes the determinants of the neurons that score by about 1e-6 relative.
pub const QUALITY_DIAGONAL: f64 = 1e-6;

/// `diag(q) L diag(q) + delta I` with `q_i = score_i / mean score` (scores scaled to mean 1,
/// so the kernel keeps about L's scale) and `delta` = [`QUALITY_DIAGONAL`] times the largest
/// diagonal entry of `diag(q) L diag(q)`. When every neuron scores 0, no neuron is worth more
/// than another: `q = 1`, the kernel is L (plus `delta`).
///
/// Errors (Error::InvalidInput): `scores` not of length n, negative or not finite.
pub fn quality_kernel(kernel: MatRef<'_, f64>, scores: &[f64]) -> Result<Mat<f64>> {
    let n = kernel.nrows();
    if kernel.ncols() != n || scores.len() != n {
        return Err(Error::invalid(format!(
            "quality kernel: {} scores for a {} x {} kernel",
            scores.len(),
            n,
            kernel.ncols()
        )));
    }
    if let Some(i) = scores.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(Error::invalid(format!(
            "quality kernel: score {i} is {}, expected a finite value >= 0",
            scores[i]
        )));
    }
    let mean = scores.iter().sum::<f64>() / n.max(1) as f64;
    let q: Vec<f64> = if mean > 0.0 {
        scores.iter().map(|s| s / mean).collect()
    } else {
        vec![1.0; n]
    };
    let largest = (0..n)
        .map(|i| q[i] * q[i] * kernel[(i, i)])
        .fold(0.0, f64::max);
    let delta = QUALITY_DIAGONAL * largest;
    Ok(Mat::from_fn(n, n, |i, j| {
        q[i] * kernel[(i, j)] * q[j] + if i == j { delta } else { 0.0 }
    }))
}
