//! Neuron selection: which neurons of a layer to keep. Independent of fusion: any selection
//! can be followed by fusion or by plain pruning.
//!
//! The paper's rules look at the layer alone (its RBF kernel); [`fusion_greedy()`] and the
//! quality-diversity kernel ([`quality`]) also look at the next layer, which fusion has to
//! reproduce.

pub mod columns;
mod fusion_greedy;
mod fusion_swap;
pub mod quality;

pub use fusion_greedy::{
    fusion_greedy, fusion_greedy_with_progress, residual_floor, single_neuron_gains, FusionGreedy,
    CONSTANT_VARIANCE_TOL, RESIDUAL_VARIANCE_TOL, ZERO_GAIN_TOL,
};
pub use fusion_swap::{
    fusion_swap, fusion_swap_with_progress, improve_by_swaps, improve_by_swaps_with_progress,
    max_swaps, FusionSwap, SwapSearch, MAX_BATCH, MAX_REFUSED, REFRESH_SWAPS, RESOLVED_ERROR,
};

use crate::linalg::eigh::TWO_STAGE_MIN_N;
use std::cell::{Cell, OnceCell, RefCell};

use faer::{Mat, MatRef};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dpp::{greedy_map, DppSampler, GreedyStop, KDppSampler, PartialSpectrum, Spectrum};
use crate::error::{Error, Result};
use crate::fusion::NextLayer;
use crate::kernel::GramStats;
use crate::linalg::cholesky_lower_in_place;
use crate::memory::ensure_host_matrices;
use crate::progress::{NoProgress, Progress};
use quality::{quality_kernel, quality_scores, QualityScore};

/// How the kept neurons are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Greedy forward selection of the neurons that best explain the next layer's
    /// pre-activation after fusion ([`fusion_greedy()`]; deterministic).
    FusionGreedy,
    /// Fusion-greedy's selection, then swaps of one kept for one dropped neuron while one
    /// lowers the fused error ([`fusion_swap()`]; deterministic).
    FusionSwap,
    /// A k-DPP on the quality-diversity kernel `diag(q) L diag(q)`, `q_i` each neuron's
    /// [`QUALITY`] score ([`quality`]).
    QualityKDpp,
    /// Greedy MAP on the quality-diversity kernel (deterministic).
    QualityGreedy,
}

/// The score the quality-diversity methods weigh neurons by, chosen by the demo's
/// measurement (see [`quality`]).
pub const QUALITY: QualityScore = QualityScore::NextLayerEnergy;

impl SelectionMethod {
    /// All methods, in the order the CLI lists them.
    pub const ALL: [SelectionMethod; 9] = [
        SelectionMethod::KDpp,
        SelectionMethod::Dpp,
        SelectionMethod::Greedy,
        SelectionMethod::Random,
        SelectionMethod::Importance,
        SelectionMethod::FusionGreedy,
        SelectionMethod::FusionSwap,
        SelectionMethod::QualityKDpp,
        SelectionMethod::QualityGreedy,
    ];

    /// The names of [`SelectionMethod::ALL`], in order: what the command line accepts.
    pub fn names() -> [&'static str; 9] {
        Self::ALL.map(Self::name)
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SelectionMethod::KDpp => "kdpp",
            SelectionMethod::Dpp => "dpp",
            SelectionMethod::Greedy => "greedy",
            SelectionMethod::Random => "random",
            SelectionMethod::Importance => "importance",
            SelectionMethod::FusionGreedy => "fusion-greedy",
            SelectionMethod::FusionSwap => "fusion-swap",
            SelectionMethod::QualityKDpp => "quality-kdpp",
            SelectionMethod::QualityGreedy => "quality-greedy",
        }
    }

    /// Whether the method needs the RBF kernel over the layer's neurons.
    pub fn needs_kernel(self) -> bool {
        matches!(
            self,
            SelectionMethod::KDpp
                | SelectionMethod::Dpp
                | SelectionMethod::Greedy
                | SelectionMethod::QualityKDpp
                | SelectionMethod::QualityGreedy
        )
    }

    /// Whether the method chooses from the layer's Gram statistics (and the next layers'
    /// weights), so that G must be collected before selection.
    pub fn selects_from_gram(self) -> bool {
        matches!(
            self,
            SelectionMethod::Importance
                | SelectionMethod::FusionGreedy
                | SelectionMethod::FusionSwap
                | SelectionMethod::QualityKDpp
                | SelectionMethod::QualityGreedy
        )
    }

    /// Whether the method draws at random (and so takes a seed).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            SelectionMethod::KDpp
                | SelectionMethod::Dpp
                | SelectionMethod::Random
                | SelectionMethod::QualityKDpp
        )
    }
}

impl serde::Serialize for SelectionMethod {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
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
                    "unknown selection method {s:?}: expected one of {}",
                    SelectionMethod::names().join(", ")
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

/// The kernel a selector works on: borrowed from the caller, or handed over so that the
/// partial eigendecomposition can reduce it in place instead of copying it (one n x n matrix
/// for a wide layer, not two). Once reduced it is gone: later uses that need L itself (greedy
/// MAP, the quality kernel, diversity) are errors, which the pipeline avoids by drawing once.
enum KernelHold<'a> {
    None,
    Borrowed(&'a Mat<f64>),
    Owned(RefCell<Option<Mat<f64>>>),
}

/// Selects neurons of one layer. Holds what the methods need and computes the expensive parts
/// (the kernels' eigendecompositions, the fusion-greedy order) once, on first use, for any
/// number of draws.
pub struct LayerSelector<'a> {
    n: usize,
    kernel: KernelHold<'a>,
    importance: Option<&'a [f64]>,
    spectrum: OnceCell<Spectrum>,
    partial: OnceCell<PartialSpectrum>,
    target: Option<(&'a GramStats, Vec<NextLayer<'a>>)>,
    quality_kernel: OnceCell<Mat<f64>>,
    quality_spectrum: OnceCell<Spectrum>,
    quality_partial: OnceCell<PartialSpectrum>,
    /// The longest fusion-greedy selection made so far: any shorter one is a prefix of it.
    fusion_order: RefCell<Option<FusionGreedy>>,
    /// See [`LayerSelector::last_swap_search`].
    last_swaps: Cell<Option<SwapSearch>>,
    /// See [`LayerSelector::single_draw`].
    single_draw: bool,
}

impl<'a> LayerSelector<'a> {
    /// A selector over `n` neurons. `kernel` (n x n) is needed by kdpp, dpp and greedy;
    /// `importance` (length n) by importance; the methods that look at the next layer need
    /// [`LayerSelector::with_next_layers`] too.
    pub fn new(n: usize, kernel: Option<&'a Mat<f64>>, importance: Option<&'a [f64]>) -> Self {
        Self::holding(
            n,
            kernel.map_or(KernelHold::None, KernelHold::Borrowed),
            importance,
        )
    }

    /// A selector that owns the kernel `kernel` (n x n): a wide layer's kdpp or dpp draw
    /// reduces it in place (see [`PARTIAL_SPECTRUM_MIN_NEURONS`]) instead of copying it, after
    /// which the kernel is gone (see [`LayerSelector::with_kernel`]).
    pub fn owning(n: usize, kernel: Mat<f64>, importance: Option<&'a [f64]>) -> Self {
        Self::holding(n, KernelHold::Owned(RefCell::new(Some(kernel))), importance)
    }

    fn holding(n: usize, kernel: KernelHold<'a>, importance: Option<&'a [f64]>) -> Self {
        Self {
            n,
            kernel,
            importance,
            spectrum: OnceCell::new(),
            partial: OnceCell::new(),
            target: None,
            quality_kernel: OnceCell::new(),
            quality_spectrum: OnceCell::new(),
            quality_partial: OnceCell::new(),
            fusion_order: RefCell::new(None),
            last_swaps: Cell::new(None),
            single_draw: false,
        }
    }

    /// Declares that this selector makes one draw (as the compression pipeline does): a
    /// kdpp or dpp draw by the partial path then frees the partial eigendecomposition (the
    /// reflectors of L, n x n) as soon as the draw's k eigenvectors exist, before projection
    /// sampling allocates its 2k x n. The select stage's peak is then the larger of
    /// `L + n x k` and `3 n x k` instead of their sum (at n = 32768, k = 8192: 10.8 GB
    /// instead of 15.1 GB). Draws are the same as without it, seed for seed; a further
    /// kdpp or dpp draw from an owned kernel is then an error.
    pub fn single_draw(mut self) -> Self {
        self.single_draw = true;
        self
    }

    /// Gives the layer's Gram statistics and the layers that read it (one or more, `n_in` =
    /// n each), which fusion-greedy and the quality-diversity methods need.
    pub fn with_next_layers(mut self, stats: &'a GramStats, next: &[NextLayer<'a>]) -> Self {
        self.target = Some((stats, next.to_vec()));
        self
    }

    /// Runs `f` on the kernel L. Errors: no kernel was given, or an owned one has been
    /// reduced in place by the partial eigendecomposition.
    pub fn with_kernel<T>(&self, f: impl FnOnce(MatRef<'_, f64>) -> Result<T>) -> Result<T> {
        match &self.kernel {
            KernelHold::None => Err(Error::invalid(
                "this selection method needs the layer's kernel",
            )),
            KernelHold::Borrowed(l) => f(l.as_ref()),
            KernelHold::Owned(cell) => match cell.borrow().as_ref() {
                Some(l) => f(l.as_ref()),
                None => Err(Error::invalid(
                    "the layer's kernel was reduced in place by the partial eigendecomposition",
                )),
            },
        }
    }

    /// The kernel's eigendecomposition, computed on first call.
    pub fn spectrum(&self) -> Result<&Spectrum> {
        self.spectrum_with_progress(&mut NoProgress)
    }

    fn spectrum_with_progress(&self, progress: &mut dyn Progress) -> Result<&Spectrum> {
        if let Some(s) = self.spectrum.get() {
            return Ok(s);
        }
        let spectrum = self.with_kernel(|l| Spectrum::with_progress(l, progress))?;
        Ok(self.spectrum.get_or_init(|| spectrum))
    }

    /// The kernel's partial eigendecomposition (all eigenvalues; eigenvectors per draw),
    /// computed on first call: over the kernel itself when the selector owns it (which is
    /// then gone), else over a copy.
    pub fn partial_spectrum(&self) -> Result<&PartialSpectrum> {
        self.partial_spectrum_with_progress(&mut NoProgress)
    }

    fn partial_spectrum_with_progress(
        &self,
        progress: &mut dyn Progress,
    ) -> Result<&PartialSpectrum> {
        if let Some(s) = self.partial.get() {
            return Ok(s);
        }
        let spectrum = self.build_partial_spectrum(progress)?;
        Ok(self.partial.get_or_init(|| spectrum))
    }

    /// A partial eigendecomposition of the kernel: over the kernel itself when the selector
    /// owns it (which is then gone), else over a copy.
    fn build_partial_spectrum(&self, progress: &mut dyn Progress) -> Result<PartialSpectrum> {
        let l = match &self.kernel {
            KernelHold::Owned(cell) => cell.borrow_mut().take(),
            _ => None,
        };
        let l = match l {
            Some(l) => l,
            None => {
                ensure_host_matrices(self.n, 1)?;
                self.with_kernel(|l| Ok(l.to_owned()))?
            }
        };
        PartialSpectrum::with_progress(l, progress)
    }

    /// Whether a kdpp or dpp draw builds its partial spectrum for itself and drops it before
    /// projection sampling (see [`LayerSelector::single_draw`]).
    fn draws_once_from_partial(&self) -> bool {
        self.single_draw && self.draws_from_partial() && self.partial.get().is_none()
    }

    /// Whether kdpp and dpp draw from the partial eigendecomposition: layers of at least
    /// [`PARTIAL_SPECTRUM_MIN_NEURONS`], unless the full one has been computed already.
    fn draws_from_partial(&self) -> bool {
        self.n >= PARTIAL_SPECTRUM_MIN_NEURONS && self.spectrum.get().is_none()
    }

    /// Which eigendecomposition kdpp and dpp draw from for this layer, for reports:
    /// `"full eigendecomposition"` (about 9 n^3 flops, then each draw selects columns),
    /// `"partial: 4/3 n^3 + 2 n^2 k"` (the reduction and all eigenvalues, then each draw
    /// computes its k eigenvectors) or, from `TWO_STAGE_MIN_N` neurons,
    /// `"partial, two-stage reduction: 4/3 n^3 + 4 n^2 k"` (the reduction through a band,
    /// whose eigenvectors pay a second back-transformation).
    pub fn eigen_path(&self) -> &'static str {
        if !self.draws_from_partial() {
            "full eigendecomposition"
        } else if self.n >= TWO_STAGE_MIN_N {
            "partial, two-stage reduction: 4/3 n^3 + 4 n^2 k"
        } else {
            "partial: 4/3 n^3 + 2 n^2 k"
        }
    }

    /// How the last fusion-swap selection's search went (swaps, passes, whether the cap
    /// stopped it); `None` before one.
    pub fn last_swap_search(&self) -> Option<SwapSearch> {
        self.last_swaps.get()
    }

    fn target(&self, method: impl std::fmt::Display) -> Result<(&'a GramStats, &[NextLayer<'a>])> {
        self.target
            .as_ref()
            .map(|(stats, next)| (*stats, next.as_slice()))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{method} needs the layer's Gram statistics and the next layer's weights"
                ))
            })
    }

    /// The quality-diversity kernel `diag(q) L diag(q)` ([`quality`]), built on first call.
    pub fn quality_kernel(&self) -> Result<&Mat<f64>> {
        if let Some(l) = self.quality_kernel.get() {
            return Ok(l);
        }
        let l = self.build_quality_kernel()?;
        Ok(self.quality_kernel.get_or_init(|| l))
    }

    fn build_quality_kernel(&self) -> Result<Mat<f64>> {
        let (stats, next) = self.target("quality-kdpp or quality-greedy")?;
        let scores = quality_scores(stats, next, QUALITY)?;
        self.with_kernel(|l| quality_kernel(l, &scores))
    }

    fn quality_spectrum(&self, progress: &mut dyn Progress) -> Result<&Spectrum> {
        if let Some(s) = self.quality_spectrum.get() {
            return Ok(s);
        }
        let spectrum = Spectrum::with_progress(self.quality_kernel()?.as_ref(), progress)?;
        Ok(self.quality_spectrum.get_or_init(|| spectrum))
    }

    /// The quality kernel's partial eigendecomposition, over a fresh quality kernel that it
    /// reduces in place (the cached one, if greedy built it, is left alone).
    fn quality_partial(&self, progress: &mut dyn Progress) -> Result<&PartialSpectrum> {
        if let Some(s) = self.quality_partial.get() {
            return Ok(s);
        }
        ensure_host_matrices(self.n, 1)?;
        let spectrum = PartialSpectrum::with_progress(self.build_quality_kernel()?, progress)?;
        Ok(self.quality_partial.get_or_init(|| spectrum))
    }

    /// The fusion-greedy selection of `k` neurons ([`fusion_greedy()`]), reusing a longer
    /// one made before (the greedy order of a smaller k is its prefix).
    pub fn fusion_greedy(&self, k: usize) -> Result<FusionGreedy> {
        self.fusion_greedy_with_progress(k, &mut NoProgress)
    }

    fn fusion_greedy_with_progress(
        &self,
        k: usize,
        progress: &mut dyn Progress,
    ) -> Result<FusionGreedy> {
        if let Some(done) = self.fusion_order.borrow().as_ref() {
            if done.order.len() >= k {
                return Ok(FusionGreedy {
                    order: done.order[..k].to_vec(),
                    residual_energy: done.residual_energy[..k].to_vec(),
                    ..done.clone()
                });
            }
        }
        let (stats, next) = self.target(SelectionMethod::FusionGreedy)?;
        let selection = fusion_greedy_with_progress(stats, next, k, progress)?;
        *self.fusion_order.borrow_mut() = Some(selection.clone());
        Ok(selection)
    }

    /// The fusion-swap selection of `k` neurons ([`fusion_swap()`]), starting from the
    /// fusion-greedy selection made before when there is one.
    pub fn fusion_swap(&self, k: usize) -> Result<FusionSwap> {
        self.fusion_swap_with_progress(k, &mut NoProgress)
    }

    fn fusion_swap_with_progress(
        &self,
        k: usize,
        progress: &mut dyn Progress,
    ) -> Result<FusionSwap> {
        let (stats, next) = self.target(SelectionMethod::FusionSwap)?;
        let start = self
            .fusion_order
            .borrow()
            .as_ref()
            .filter(|done| done.order.len() >= k)
            .map(|done| done.order[..k].to_vec());
        let swapped = match start {
            Some(start) => improve_by_swaps_with_progress(stats, next, &start, progress)?,
            None => {
                let (greedy, swapped) = fusion_swap::greedy_then_swaps(stats, next, k, progress)?;
                *self.fusion_order.borrow_mut() = Some(greedy);
                swapped
            }
        };
        self.last_swaps.set(Some(swapped.search()));
        Ok(swapped)
    }

    /// Sorted, distinct indices of the neurons to keep. `seed` drives the random methods.
    pub fn select(
        &self,
        method: SelectionMethod,
        size: SelectionSize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        self.select_with_progress(method, size, seed, &mut NoProgress)
    }

    /// [`LayerSelector::select`], reporting the long steps (an eigendecomposition by panel,
    /// a partial draw's eigenvectors, fusion-greedy by step) to `progress`.
    pub fn select_with_progress(
        &self,
        method: SelectionMethod,
        size: SelectionSize,
        seed: u64,
        progress: &mut dyn Progress,
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
        let partial = self.draws_from_partial();
        let mut keep = match method {
            SelectionMethod::KDpp if self.draws_once_from_partial() => {
                let spectrum = self.build_partial_spectrum(progress)?;
                let cols = KDppSampler::new(&spectrum, k)?.eigenvector_indices(&mut rng);
                project_once(spectrum, &cols, &mut rng, progress)?
            }
            SelectionMethod::KDpp if partial => {
                let spectrum = self.partial_spectrum_with_progress(progress)?;
                KDppSampler::new(spectrum, k)?.try_sample_with_progress(&mut rng, progress)?
            }
            SelectionMethod::KDpp => {
                KDppSampler::new(self.spectrum_with_progress(progress)?, k)?.sample(&mut rng)
            }
            SelectionMethod::Dpp => {
                let drawn = if self.draws_once_from_partial() {
                    let spectrum = self.build_partial_spectrum(progress)?;
                    let cols = DppSampler::new(&spectrum).eigenvector_indices(&mut rng);
                    project_once(spectrum, &cols, &mut rng, progress)?
                } else if partial {
                    let spectrum = self.partial_spectrum_with_progress(progress)?;
                    DppSampler::new(spectrum).try_sample_with_progress(&mut rng, progress)?
                } else {
                    DppSampler::new(self.spectrum_with_progress(progress)?).sample(&mut rng)
                };
                // The empty set is a legitimate draw, of probability prod_i 1 / (1 + lambda_i):
                // one in two for a single neuron of eigenvalue 1. It compresses nothing.
                if drawn.is_empty() {
                    return Err(Error::invalid(
                        "the DPP drew the empty set, which it does with probability \
                         prod 1/(1 + lambda) over the kernel's eigenvalues (likely when they are \
                         few or small): try another seed, or keep a fixed number with kdpp",
                    ));
                }
                drawn
            }
            SelectionMethod::Greedy => self.with_kernel(|l| greedy_map(l, GreedyStop::Count(k)))?,
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
            SelectionMethod::FusionGreedy => self.fusion_greedy_with_progress(k, progress)?.order,
            SelectionMethod::FusionSwap => self.fusion_swap_with_progress(k, progress)?.kept,
            SelectionMethod::QualityKDpp if partial && self.quality_spectrum.get().is_none() => {
                let spectrum = self.quality_partial(progress)?;
                KDppSampler::new(spectrum, k)?.try_sample_with_progress(&mut rng, progress)?
            }
            SelectionMethod::QualityKDpp => {
                KDppSampler::new(self.quality_spectrum(progress)?, k)?.sample(&mut rng)
            }
            SelectionMethod::QualityGreedy => {
                greedy_map(self.quality_kernel()?.as_ref(), GreedyStop::Count(k))?
            }
        };
        keep.sort_unstable();
        Ok(keep)
    }
}

/// The second phase of a draw from a spectrum used once: the eigenvectors at `cols`, then
/// `spectrum` dropped (its n x n of reflectors), then projection sampling over them, so that
/// the sampler's 2k x n never shares memory with L. The same draw as
/// [`KDppSampler::try_sample`] and [`DppSampler::try_sample`] after their first phase.
fn project_once(
    spectrum: PartialSpectrum,
    cols: &[usize],
    rng: &mut ChaCha8Rng,
    progress: &mut dyn Progress,
) -> Result<Vec<usize>> {
    let eigenvectors = spectrum.eigenvectors_with_progress(cols, progress)?;
    drop(spectrum);
    let columns: Vec<usize> = (0..eigenvectors.ncols()).collect();
    Ok(crate::dpp::sample_projection(
        eigenvectors.as_ref(),
        &columns,
        rng,
    ))
}

/// How diverse a kept set is under a kernel: the paper's Figure 1 in numbers.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Diversity {
    /// log det L_Y (larger is more diverse); -inf when L_Y is singular.
    pub log_det: f64,
    /// Mean off-diagonal entry of L_Y (smaller is more diverse).
    pub mean_off_diagonal: f64,
}

/// [`Diversity`] of the neurons `keep` under `kernel`. Holds one k x k matrix, L_Y,
/// factored in place (0.5 GB at k = 8192).
pub fn diversity(kernel: MatRef<'_, f64>, keep: &[usize]) -> Diversity {
    let k = keep.len();
    let mut sub = Mat::from_fn(k, k, |i, j| kernel[(keep[i], keep[j])]);
    let off: f64 = (0..k)
        .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| sub[(i, j)])
        .sum();
    let log_det = if cholesky_lower_in_place(sub.as_mut(), faer::get_global_parallelism()) {
        (0..k).map(|i| 2.0 * sub[(i, i)].ln()).sum()
    } else {
        f64::NEG_INFINITY
    };
    let pairs = (k * k.saturating_sub(1)).max(1) as f64;
    Diversity {
        log_det,
        mean_off_diagonal: off / pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The in-place factorisation gives log det L_Y as the eigenvalues do, and a singular
    /// L_Y (a neuron kept with its duplicate) gives -inf.
    #[test]
    fn diversity_matches_the_kept_blocks_eigenvalues() {
        let (n, d) = (40, 60);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Mat::<f64>::from_fn(n, d, |_, _| rng.random_range(-1.0..1.0));
        let kernel = &x * x.transpose() * (1.0 / d as f64);
        let keep = [3, 17, 5, 29, 0, 11, 38];
        let got = diversity(kernel.as_ref(), &keep);
        let sub = Mat::<f64>::from_fn(keep.len(), keep.len(), |i, j| kernel[(keep[i], keep[j])]);
        let eigenvalues = sub.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
        let want: f64 = eigenvalues.iter().map(|v| v.ln()).sum();
        assert!(
            (got.log_det - want).abs() < 1e-10,
            "{} vs {want}",
            got.log_det
        );
        let off: f64 = (0..keep.len())
            .flat_map(|i| (0..keep.len()).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| sub[(i, j)])
            .sum();
        let mean = off / (keep.len() * (keep.len() - 1)) as f64;
        assert!((got.mean_off_diagonal - mean).abs() < 1e-15);
        // Neurons 1 and 2 duplicated: their 2 x 2 block is exactly singular.
        let dup = Mat::<f64>::from_fn(n, d, |i, j| x[(if i == 2 { 1 } else { i }, j)]);
        let duplicated = &dup * dup.transpose();
        assert_eq!(
            diversity(duplicated.as_ref(), &[1, 2]).log_det,
            f64::NEG_INFINITY
        );
    }
}
