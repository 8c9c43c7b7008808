//! Neuron selection: which neurons of a layer to keep. Independent of fusion: any selection
//! can be followed by fusion or by plain pruning.

use std::cell::OnceCell;

use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dpp::{greedy_map, DppSampler, GreedyStop, KDppSampler, PartialSpectrum, Spectrum};
use crate::error::{Error, Result};
use crate::kernel::GramStats;
use crate::memory::ensure_host_matrix;

/// How the kept neurons are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectionMethod {
    /// Exactly k neurons drawn from the k-DPP with the layer's RBF kernel (the paper's method).
    KDpp,
    /// A draw from the DPP itself: the kernel chooses the size.
    Dpp,
    /// Greedy MAP: repeatedly add the neuron that most increases log det L_Y (deterministic).
    Greedy,
    /// k neurons uniformly at random (the baseline).
    Random,
    /// The k neurons with the largest ||W_next[:, i]||_2 * RMS(a_i).
    Importance,
}

impl SelectionMethod {
    /// All methods, in the order the CLI lists them.
    pub const ALL: [SelectionMethod; 5] = [
        SelectionMethod::KDpp,
        SelectionMethod::Dpp,
        SelectionMethod::Greedy,
        SelectionMethod::Random,
        SelectionMethod::Importance,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SelectionMethod::KDpp => "kdpp",
            SelectionMethod::Dpp => "dpp",
            SelectionMethod::Greedy => "greedy",
            SelectionMethod::Random => "random",
            SelectionMethod::Importance => "importance",
        }
    }

    /// Whether the method needs the RBF kernel over the layer's neurons.
    pub fn needs_kernel(self) -> bool {
        matches!(
            self,
            SelectionMethod::KDpp | SelectionMethod::Dpp | SelectionMethod::Greedy
        )
    }

    /// Whether the method draws at random (and so takes a seed).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            SelectionMethod::KDpp | SelectionMethod::Dpp | SelectionMethod::Random
        )
    }
}

impl std::str::FromStr for SelectionMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SelectionMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown selection method {s:?}: expected kdpp, dpp, greedy, random or importance"
                ))
            })
    }
}

impl std::fmt::Display for SelectionMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How many neurons to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SelectionSize {
    /// Exactly this many (every method but `Dpp`).
    Exactly(usize),
    /// As many as a DPP draw yields (only with [`SelectionMethod::Dpp`]).
    Drawn,
}

/// Per-neuron importance `||W_next[:, i]||_2 * RMS(a_i)`, with `RMS(a_i) = sqrt(G_ii / m)`
/// taken from the layer's Gram statistics. `next_weight` is n_out x n, row-major.
pub fn importance_scores(stats: &GramStats, next_weight: &[f32], n_out: usize) -> Result<Vec<f64>> {
    let n = stats.col_sums.len();
    if next_weight.len() != n_out * n {
        return Err(Error::invalid(format!(
            "next layer weight has {} elements, expected {n_out} x {n}",
            next_weight.len()
        )));
    }
    let m = stats.samples.max(1) as f64;
    let mut col_norm2 = vec![0.0f64; n];
    for row in next_weight.chunks_exact(n) {
        for (acc, &w) in col_norm2.iter_mut().zip(row) {
            *acc += (w as f64) * (w as f64);
        }
    }
    Ok((0..n)
        .map(|i| col_norm2[i].sqrt() * (stats.gram[(i, i)].max(0.0) / m).sqrt())
        .collect())
}

/// Layers of at least this many neurons draw k-DPP and DPP samples from a
/// [`PartialSpectrum`] (all eigenvalues, then only the eigenvectors a draw selects);
/// smaller ones from the full [`Spectrum`].
///
/// Measured on RBF kernels at k = n / 4 (README, Benchmarks): a first draw costs about
/// 0.65 times as much by the partial path from n = 2000 up (0.8 s against 1.2 s of CPU at
/// n = 2000), but every further draw recomputes its eigenvectors (0.24 s there, against
/// 0.04 s from the full spectrum), so after three draws the full decomposition has paid
/// for itself. Below this size it costs little in any case, and it serves the demo's
/// dozens of draws per layer of 1000 neurons; from here on a layer costs seconds to
/// minutes, and the compression pipeline draws once per layer.
pub const PARTIAL_SPECTRUM_MIN_NEURONS: usize = 2048;

/// Selects neurons of one layer. Holds what the methods need and computes the expensive part
/// (the kernel's eigendecomposition) once, on first use, for any number of draws.
pub struct LayerSelector<'a> {
    n: usize,
    kernel: Option<&'a Mat<f64>>,
    importance: Option<&'a [f64]>,
    spectrum: OnceCell<Spectrum>,
    partial: OnceCell<PartialSpectrum>,
}

impl<'a> LayerSelector<'a> {
    /// A selector over `n` neurons. `kernel` (n x n) is needed by kdpp, dpp and greedy;
    /// `importance` (length n) by importance.
    pub fn new(n: usize, kernel: Option<&'a Mat<f64>>, importance: Option<&'a [f64]>) -> Self {
        Self {
            n,
            kernel,
            importance,
            spectrum: OnceCell::new(),
            partial: OnceCell::new(),
        }
    }

    /// The kernel's eigendecomposition, computed on first call.
    pub fn spectrum(&self) -> Result<&Spectrum> {
        if let Some(s) = self.spectrum.get() {
            return Ok(s);
        }
        let spectrum = Spectrum::new(self.kernel()?.as_ref())?;
        Ok(self.spectrum.get_or_init(|| spectrum))
    }

    /// The kernel's partial eigendecomposition (all eigenvalues; eigenvectors per draw),
    /// computed on first call from a copy of the kernel, which it reduces in place.
    pub fn partial_spectrum(&self) -> Result<&PartialSpectrum> {
        if let Some(s) = self.partial.get() {
            return Ok(s);
        }
        ensure_host_matrix(self.n)?;
        let spectrum = PartialSpectrum::new(self.kernel()?.to_owned())?;
        Ok(self.partial.get_or_init(|| spectrum))
    }

    /// Whether kdpp and dpp draw from the partial eigendecomposition: layers of at least
    /// [`PARTIAL_SPECTRUM_MIN_NEURONS`], unless the full one has been computed already.
    fn draws_from_partial(&self) -> bool {
        self.n >= PARTIAL_SPECTRUM_MIN_NEURONS && self.spectrum.get().is_none()
    }

    /// Which eigendecomposition kdpp and dpp draw from for this layer, for reports:
    /// `"full eigendecomposition"` (about 9 n^3 flops, then each draw selects columns) or
    /// `"partial: 4/3 n^3 + 2 n^2 k"` (the reduction and all eigenvalues, then each draw
    /// computes its k eigenvectors).
    pub fn eigen_path(&self) -> &'static str {
        if self.draws_from_partial() {
            "partial: 4/3 n^3 + 2 n^2 k"
        } else {
            "full eigendecomposition"
        }
    }

    fn kernel(&self) -> Result<&'a Mat<f64>> {
        self.kernel
            .ok_or_else(|| Error::invalid("this selection method needs the layer's kernel"))
    }

    /// Sorted, distinct indices of the neurons to keep. `seed` drives the random methods.
    pub fn select(
        &self,
        method: SelectionMethod,
        size: SelectionSize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = match (method, size) {
            (SelectionMethod::Dpp, SelectionSize::Drawn) => 0,
            (SelectionMethod::Dpp, SelectionSize::Exactly(_)) => {
                return Err(Error::invalid(
                    "a DPP chooses its own size: use kdpp for an exact number of neurons",
                ))
            }
            (_, SelectionSize::Drawn) => {
                return Err(Error::invalid(format!(
                    "{method} needs a number of neurons to keep"
                )))
            }
            (_, SelectionSize::Exactly(k)) => k,
        };
        if method != SelectionMethod::Dpp && (k == 0 || k > self.n) {
            return Err(Error::invalid(format!(
                "cannot keep {k} of {} neurons: k must be between 1 and {}",
                self.n, self.n
            )));
        }
        let mut keep = match method {
            SelectionMethod::KDpp if self.draws_from_partial() => {
                KDppSampler::new(self.partial_spectrum()?, k)?.try_sample(&mut rng)?
            }
            SelectionMethod::KDpp => KDppSampler::new(self.spectrum()?, k)?.sample(&mut rng),
            SelectionMethod::Dpp => {
                let drawn = if self.draws_from_partial() {
                    DppSampler::new(self.partial_spectrum()?).try_sample(&mut rng)?
                } else {
                    DppSampler::new(self.spectrum()?).sample(&mut rng)
                };
                if drawn.is_empty() {
                    return Err(Error::Numerical(
                        "the DPP drew an empty set (the kernel's eigenvalues are tiny): use kdpp"
                            .into(),
                    ));
                }
                drawn
            }
            SelectionMethod::Greedy => greedy_map(self.kernel()?.as_ref(), GreedyStop::Count(k))?,
            SelectionMethod::Random => rand::seq::index::sample(&mut rng, self.n, k).into_vec(),
            SelectionMethod::Importance => {
                let scores = self.importance.ok_or_else(|| {
                    Error::invalid("importance selection needs the next layer's weights")
                })?;
                let mut order: Vec<usize> = (0..self.n).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                order.truncate(k);
                order
            }
        };
        keep.sort_unstable();
        Ok(keep)
    }
}

/// How diverse a kept set is under a kernel: the paper's Figure 1 in numbers.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Diversity {
    /// log det L_Y (larger is more diverse); -inf when L_Y is singular.
    pub log_det: f64,
    /// Mean off-diagonal entry of L_Y (smaller is more diverse).
    pub mean_off_diagonal: f64,
}

/// [`Diversity`] of the neurons `keep` under `kernel`.
pub fn diversity(kernel: &Mat<f64>, keep: &[usize]) -> Diversity {
    let k = keep.len();
    let sub = Mat::from_fn(k, k, |i, j| kernel[(keep[i], keep[j])]);
    let log_det = match sub.as_ref().llt(faer::Side::Lower) {
        Ok(llt) => {
            let l = llt.L();
            (0..k).map(|i| 2.0 * l[(i, i)].ln()).sum()
        }
        Err(_) => f64::NEG_INFINITY,
    };
    let off: f64 = (0..k)
        .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| sub[(i, j)])
        .sum();
    let pairs = (k * k.saturating_sub(1)).max(1) as f64;
    Diversity {
        log_det,
        mean_off_diagonal: off / pairs,
    }
}
