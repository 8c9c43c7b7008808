//! Elementary symmetric polynomials for the k-DPP eigenvector selection, kept as ratios so
//! that nothing overflows or underflows.
//!
//! With `e_l^j = e_l(lambda_1, ..., lambda_j)`, the selection step (Kulesza & Taskar 2012,
//! Alg. 8) keeps eigenvalue j, with l still to choose, with probability
//! `lambda_j e_{l-1}^{j-1} / e_l^j = lambda_j / (q_l^{j-1} + lambda_j)` where
//! `q_l^j = e_l^j / e_{l-1}^j`. Dividing the recursion `e_l^j = e_l^{j-1} + lambda_j e_{l-1}^{j-1}`
//! through by `e_{l-1}^{j-1}` gives one for the ratios alone:
//!
//! `q_l^j = (q_l^{j-1} + lambda_j) / (1 + lambda_j / q_{l-1}^{j-1})`, with `1 / q_0 = 0`
//! and `q_l^{j-1} = 0` for `l > j - 1`.
//!
//! Every term is positive (no cancellation) and a ratio of consecutive polynomials stays
//! within about `[lambda_min / n, n lambda_max]` (Newton's inequalities), where the
//! polynomials themselves span thousands of orders of magnitude (e_2000 of 4000 eigenvalues
//! near 1 is about 10^1200).
//!
//! Memory: the full table has one column of up to k ratios per eigenvalue, m k values for m
//! positive eigenvalues (1.6 GB at m = 20000, k = 10000). Columns are kept only every
//! `stride` steps (checkpoints) and each block between two checkpoints is recomputed while a
//! sample walks backwards through it: with `stride = ceil(sqrt(m))` that is
//! about `2 sqrt(m) k` values (23 MB at m = 20000, k = 10000) for one extra O(m k) pass per
//! sample, small next to the O(n k^2) projection phase. Tables up to [`FULL_TABLE_VALUES`]
//! values keep every column (stride 1).

use rand::Rng;

/// Tables up to this many f64 (64 MiB) keep every column.
const FULL_TABLE_VALUES: usize = 1 << 23;

/// The ratio table `q_l^j` for `l = 1..=min(j, k)`, columns `j = 0..m` (column j uses the
/// first j eigenvalues), stored at checkpoints.
#[derive(Clone, Debug)]
pub(crate) struct EspRatios {
    lambdas: Vec<f64>,
    k: usize,
    stride: usize,
    /// Column `c * stride` at `checkpoints[c * k..(c + 1) * k]`; entry `l - 1` holds
    /// `q_l`, 0 where `l > j`.
    checkpoints: Vec<f64>,
}

impl EspRatios {
    /// Builds the table for positive `lambdas` and `1 <= k <= lambdas.len()`.
    pub(crate) fn new(lambdas: Vec<f64>, k: usize) -> Self {
        let m = lambdas.len();
        let stride = if m.saturating_mul(k) <= FULL_TABLE_VALUES {
            1
        } else {
            (m as f64).sqrt().ceil() as usize
        };
        Self::with_stride(lambdas, k, stride)
    }

    /// As [`EspRatios::new`] with a given checkpoint stride (tests force small ones).
    pub(crate) fn with_stride(lambdas: Vec<f64>, k: usize, stride: usize) -> Self {
        let m = lambdas.len();
        debug_assert!(k >= 1 && k <= m && stride >= 1);
        debug_assert!(lambdas.iter().all(|&v| v > 0.0 && v.is_finite()));
        // Columns 0..m are needed (the step for eigenvalue j reads column j - 1).
        let n_checkpoints = (m - 1) / stride + 1;
        let mut checkpoints = Vec::with_capacity(n_checkpoints * k);
        let mut col = vec![0.0; k];
        let mut next = vec![0.0; k];
        for (j, &lambda) in lambdas.iter().enumerate() {
            if j % stride == 0 {
                checkpoints.extend_from_slice(&col);
            }
            advance_from(&col, &mut next, j, lambda);
            std::mem::swap(&mut col, &mut next);
        }
        EspRatios {
            lambdas,
            k,
            stride,
            checkpoints,
        }
    }

    /// k, the number of eigenvalues each selection keeps.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// The ratios of column `j` (tests).
    #[cfg(test)]
    pub(crate) fn column(&self, j: usize) -> Vec<f64> {
        let c = j / self.stride;
        let mut col = self.checkpoints[c * self.k..(c + 1) * self.k].to_vec();
        for jj in c * self.stride..j {
            advance(&mut col, jj, self.lambdas[jj]);
        }
        col
    }

    /// Alg. 8's selection: exactly k positions into `lambdas`, in decreasing order, each
    /// kept with probability `lambda_j / (q_l^{j-1} + lambda_j)`.
    pub(crate) fn select<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        let m = self.lambdas.len();
        let mut chosen = Vec::with_capacity(self.k);
        let mut l = self.k;
        let mut block = Vec::new();
        // Walk the blocks of columns backwards: block c covers columns
        // c*stride .. min((c+1)*stride, m), i.e. the steps for eigenvalues one above those.
        let n_blocks = (m - 1) / self.stride + 1;
        'blocks: for c in (0..n_blocks).rev() {
            let first = c * self.stride;
            let last = ((c + 1) * self.stride).min(m);
            // With stride 1 every column is a checkpoint: read them in place.
            let cols: &[f64] = if self.stride == 1 {
                &self.checkpoints[c * self.k..(c + 1) * self.k]
            } else {
                block.clear();
                block.extend_from_slice(&self.checkpoints[c * self.k..(c + 1) * self.k]);
                for j in first + 1..last {
                    let start = block.len() - self.k;
                    block.resize(start + 2 * self.k, 0.0);
                    let (prev, next) = block[start..].split_at_mut(self.k);
                    advance_from(prev, next, j - 1, self.lambdas[j - 1]);
                }
                &block
            };
            for col in (first..last).rev() {
                // The step for eigenvalue index `col` (0-based) reads column `col`.
                let q = if l > col {
                    0.0
                } else {
                    cols[(col - first) * self.k + l - 1]
                };
                let lambda = self.lambdas[col];
                let p = lambda / (q + lambda);
                if rng.random::<f64>() < p {
                    chosen.push(col);
                    l -= 1;
                    if l == 0 {
                        break 'blocks;
                    }
                }
            }
        }
        debug_assert_eq!(chosen.len(), self.k);
        chosen
    }
}

/// Turns column `j` (ratios over the first j eigenvalues) into column `j + 1` by adding
/// `lambda`, in place.
#[cfg(test)]
fn advance(col: &mut [f64], j: usize, lambda: f64) {
    let prev = col.to_vec();
    advance_from(&prev, col, j, lambda);
}

/// Writes column `j + 1` into `next` from column `j` in `prev`, adding `lambda`.
///
/// `(q_l + lambda) / (1 + lambda / q_{l-1})` is evaluated as
/// `(q_l + lambda) * (q_{l-1} / (q_{l-1} + lambda))`: one division, and the second factor is
/// in (0, 1], so no intermediate can overflow or underflow where the result does not. The
/// entries for `l > j` are stored as 0, which is the `q_l = 0` the recursion wants there.
/// Every entry depends on `prev` only, so the loop runs on vectors (AVX2 when the CPU has
/// it: the divisions dominate the selection table's build).
fn advance_from(prev: &[f64], next: &mut [f64], j: usize, lambda: f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only requirement of `advance_from_avx2`.
        return unsafe { advance_from_avx2(prev, next, j, lambda) };
    }
    advance_from_portable(prev, next, j, lambda)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn advance_from_avx2(prev: &[f64], next: &mut [f64], j: usize, lambda: f64) {
    advance_from_portable(prev, next, j, lambda)
}

#[inline(always)]
fn advance_from_portable(prev: &[f64], next: &mut [f64], j: usize, lambda: f64) {
    let k = prev.len();
    let top = (j + 1).min(k);
    next[0] = prev[0] + lambda;
    for ((out, &q), &q_prev) in next[1..top]
        .iter_mut()
        .zip(&prev[1..top])
        .zip(&prev[..top - 1])
    {
        *out = (q + lambda) * (q_prev / (q_prev + lambda));
    }
    next[top..].copy_from_slice(&prev[top..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// log e_l(lambda_1..lambda_j) for l = 0..=k by the log-sum-exp recursion: an
    /// independent reference that cannot overflow either.
    fn log_esp(lambdas: &[f64], k: usize) -> Vec<f64> {
        let mut e = vec![f64::NEG_INFINITY; k + 1];
        e[0] = 0.0;
        for &lam in lambdas {
            for l in (1..=k).rev() {
                let a = e[l];
                let b = e[l - 1] + lam.ln();
                let hi = a.max(b);
                if hi > f64::NEG_INFINITY {
                    e[l] = hi + ((a - hi).exp() + (b - hi).exp()).ln();
                }
            }
        }
        e
    }

    /// Plain e_l by the textbook recursion (small cases only).
    fn plain_esp(lambdas: &[f64], k: usize) -> Vec<f64> {
        let mut e = vec![0.0; k + 1];
        e[0] = 1.0;
        for &lam in lambdas {
            for l in (1..=k).rev() {
                e[l] += lam * e[l - 1];
            }
        }
        e
    }

    #[test]
    fn ratios_match_plain_recursion_on_small_inputs() {
        let lambdas = [0.3, 2.0, 1e-3, 5.0, 0.7, 1.1];
        let k = 4;
        let t = EspRatios::with_stride(lambdas.to_vec(), k, 1);
        for j in 0..lambdas.len() {
            let e = plain_esp(&lambdas[..j], k);
            let col = t.column(j);
            for l in 1..=k {
                let want = if e[l - 1] > 0.0 { e[l] / e[l - 1] } else { 0.0 };
                assert!(
                    (col[l - 1] - want).abs() <= 1e-13 * want.abs().max(1e-300),
                    "j={j} l={l}: {} vs {want}",
                    col[l - 1]
                );
            }
        }
    }

    #[test]
    fn checkpointed_columns_equal_full_columns() {
        let lambdas: Vec<f64> = (0..37)
            .map(|i| 0.1 + (i as f64 * 0.77).sin().abs())
            .collect();
        let full = EspRatios::with_stride(lambdas.clone(), 9, 1);
        for stride in [2, 5, 7, 36, 37] {
            let t = EspRatios::with_stride(lambdas.clone(), 9, stride);
            for j in 0..lambdas.len() {
                assert_eq!(t.column(j), full.column(j), "stride {stride} column {j}");
            }
        }
    }

    #[test]
    fn selection_is_identical_with_checkpoints() {
        use rand::SeedableRng;
        let lambdas: Vec<f64> = (0..50)
            .map(|i| 0.05 + (i as f64 * 0.3).cos().abs())
            .collect();
        let full = EspRatios::with_stride(lambdas.clone(), 12, 1);
        let ckpt = EspRatios::with_stride(lambdas, 12, 7);
        for seed in 0..20 {
            let a = full.select(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let b = ckpt.select(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(a, b);
            assert_eq!(a.len(), 12);
        }
    }

    /// n = 4000, k = 400 on an RBF-like decaying spectrum, where the plain recursion
    /// overflows: the ratios agree with the log-space reference.
    #[test]
    fn no_overflow_where_plain_recursion_overflows() {
        let m = 4000;
        let k = 400;
        let lambdas: Vec<f64> = (0..m)
            .map(|i| 1e-3 + 50.0 * (-(i as f64) / 300.0).exp())
            .collect();
        let plain = plain_esp(&lambdas, k);
        assert!(
            plain.iter().any(|v| !v.is_finite()),
            "this case is meant to overflow the plain recursion"
        );
        let t = EspRatios::new(lambdas.clone(), k);
        let last = t.column(m - 1);
        let reference = log_esp(&lambdas[..m - 1], k);
        for l in 1..=k {
            let want = (reference[l] - reference[l - 1]).exp();
            let got = last[l - 1];
            assert!(got.is_finite() && got > 0.0);
            assert!((got - want).abs() <= 1e-9 * want, "l={l}: {got} vs {want}");
        }
    }

    /// The largest size the spec names: m = 20000, k = 10000, every ratio finite and
    /// positive, and the checkpointed table small.
    #[test]
    fn largest_size_stays_finite_and_small() {
        let m = 20000;
        let k = 10000;
        let lambdas: Vec<f64> = (0..m)
            .map(|i| 1e-6 + 100.0 * (-(i as f64) / 2000.0).exp())
            .collect();
        let t = EspRatios::new(lambdas, k);
        assert!(t.stride > 1);
        assert!(t.checkpoints.len() <= 200 * k);
        assert!(t.checkpoints.iter().all(|v| v.is_finite() && *v >= 0.0));
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        let sel = t.select(&mut rng);
        assert_eq!(sel.len(), k);
        assert!(sel.windows(2).all(|w| w[0] > w[1]));
    }
}
