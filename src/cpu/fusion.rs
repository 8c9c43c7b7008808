//! The fusion system on the CPU, in f64 with faer, two ways:
//! - [`assemble`], the CPU twin of [`crate::gpu::fusion::assemble`]: from the layer's Gram
//!   statistics (an n x n G);
//! - [`FusionPass`]: from the activations themselves, streamed once more after selection,
//!   without any n x n matrix (the route of layers whose G would not fit beside their
//!   kernel). The GPU backend runs this one on the CPU too, for now.
//!
//! Both produce the same [`FusionSystem`], which [`crate::fusion`] solves one way.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

use crate::cpu::gram::{centre, column_sums};
use crate::error::{Error, Result};
use crate::types::{
    unusable_activation, usable_activation, ActivationRows, FusionSystem, GramStats, NextLayer,
    RowGroup,
};

/// Assembles the normal equations of the fusion and the two energies of the reconstruction
/// error, in f64. `keep` (not empty) and `dropped` must partition the layer's neurons, and
/// the statistics and next layer be as [`crate::fusion::fuse_next_layer`] takes them: an
/// [`Error::InvalidInput`] otherwise.
pub fn assemble(
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
) -> Result<FusionSystem> {
    assemble_stacked(stats, keep, dropped, next, &[next.n_out])
}

/// [`assemble`] for several next layers stacked into `next` (`rows` rows each, in order):
/// the same system, with each layer's energies apart ([`FusionSystem::groups`]).
pub fn assemble_stacked(
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
    rows: &[usize],
) -> Result<FusionSystem> {
    crate::fusion::check_assembly(stats, keep, dropped, &next)?;
    crate::types::check_row_groups(rows, next.n_out)?;
    Ok(assemble_checked(stats, keep, dropped, next, rows))
}

/// [`assemble_stacked`] on inputs already checked ([`crate::fusion::fuse_next_layer`] checks
/// them as it derives `dropped`).
pub(crate) fn assemble_checked(
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
    rows: &[usize],
) -> FusionSystem {
    let k = keep.len();
    let n = stats.gram.nrows();
    let n_out = next.n_out;
    let g = &stats.gram;
    let s = &stats.col_sums;
    let par = faer::get_global_parallelism();

    // Index `n` stands for the constant input: G~[i, n] = s_i, G~[n, n] = m, W~[o, n] = b_o.
    let mut aug_keep = keep.to_vec();
    aug_keep.push(n);
    let g_aug = |i: usize, j: usize| match (i < n, j < n) {
        (true, true) => g[(i, j)],
        (true, false) => s[i],
        (false, true) => s[j],
        (false, false) => stats.samples as f64,
    };

    let wp_t = augmented_weight_t(next, dropped);
    let g_yp = Mat::<f64>::from_fn(k + 1, dropped.len(), |i, j| g_aug(aug_keep[i], dropped[j]));
    let mut rhs = Mat::<f64>::zeros(k + 1, n_out);
    matmul(rhs.as_mut(), Accum::Replace, &g_yp, &wp_t, 1.0, par);
    drop(g_yp);

    let lhs = stats.augmented_block(keep);
    let kept = kept_energies(&lhs, keep, next, rows, par);
    let dropped_energies =
        traces_by_group(wp_t.as_ref(), rows, |i, j| g[(dropped[i], dropped[j])], par);
    FusionSystem::from_groups(lhs, rhs, RowGroup::zip(rows, kept, dropped_energies))
}

/// `W~^T` gathered at the columns `cols` of `W~ = [W, b]` (index `n_in` is the bias), in
/// f64: `|cols| x n_out`, column o is row o of W~ (read contiguously).
fn augmented_weight_t(next: NextLayer<'_>, cols: &[usize]) -> Mat<f64> {
    let n = next.n_in;
    let mut m = Mat::<f64>::zeros(cols.len(), next.n_out);
    for o in 0..next.n_out {
        let row = &next.weight[o * n..(o + 1) * n];
        let b = next.bias.map_or(0.0, |b| b[o] as f64);
        for (j, &c) in cols.iter().enumerate() {
            m[(j, o)] = if c < n { row[c] as f64 } else { b };
        }
    }
    m
}

/// `tr(W~_Y G~_YY W~_Y^T)`, the energy of the kept part of the next layer's input, from the
/// left-hand side `G~_YY` (rows `keep, const`), for each group of `rows` rows of W.
fn kept_energies(
    lhs: &Mat<f64>,
    keep: &[usize],
    next: NextLayer<'_>,
    rows: &[usize],
    par: Par,
) -> Vec<f64> {
    let mut aug_keep = keep.to_vec();
    aug_keep.push(next.n_in);
    let wy_t = augmented_weight_t(next, &aug_keep);
    traces_by_group(wy_t.as_ref(), rows, |i, j| lhs[(i, j)], par)
}

/// [`quadratic_trace`] over each group of `rows` columns of `v` (a group of rows of W):
/// together the work of one trace over all of them.
fn traces_by_group(
    v: MatRef<'_, f64>,
    rows: &[usize],
    h: impl Fn(usize, usize) -> f64 + Copy,
    par: Par,
) -> Vec<f64> {
    let mut start = 0;
    rows.iter()
        .map(|&r| {
            start += r;
            quadratic_trace(v.subcols(start - r, r), h, par)
        })
        .collect()
}

/// Rows per product at most in [`FusionPass`]: bounds each f32 partial sum before it is
/// added in f64, as the CPU Gram does.
const PASS_ROWS: usize = 8192;
/// Values per product at most (64 MiB of f32 across the gathered rows and their image).
const PASS_VALUES: usize = 1 << 24;

/// The fusion system from a pass over the activations after selection, without the n x n
/// Gram: for each chunk of rows, with `U = [A_Y, 1]` (the kept activations and a
/// constant, in the order of `keep`) and `Z_P = A_P W_P^T` (the dropped neurons' share of
/// the next layer's input),
///
/// - `G~_YY += U^T U` (the left-hand side; k+1 square),
/// - `R += U^T Z_P` (the right-hand side, which is `[G_YP; s_P^T] W_P^T`; k+1 x n_out),
/// - `tr(W_P G_PP W_P^T) += ||Z_P||^2` (the dropped part's energy).
///
/// That is the least-squares problem `min ||Z_P - U X||` itself, so the energies and the
/// system are those of the same numbers and the reported error keeps no cancellation that
/// the Gram route does not have. Products run in f32, summed over blocks of at most 8192
/// rows, and the blocks are added in f64, as the CPU Gram does. They are taken about a shift
/// per neuron, the means of the first rows multiplied, which [`FusionPass::finish`] takes
/// back out in f64: f32 products of raw values lose the centred statistics of a neuron
/// whose mean dominates its spread (a constant one's came out at up to 2e-4 of its second
/// moment over 8192-row blocks), and the fusion solves the centred system. Memory: O(k^2 + n n_out)
/// and one chunk, no n x n or n x k matrix. Work: `m (n - k) n_out` for `Z_P`, `m k n_out` for `R` and
/// `m k^2 / 2` for `G~_YY`, against `m n^2 / 2` for a Gram.
pub struct FusionPass<'a> {
    next: NextLayer<'a>,
    keep: Vec<usize>,
    dropped: Vec<usize>,
    /// `W_P^T`, |P| x n_out, f32 as the weights are.
    wp_t: Mat<f32>,
    /// The lower triangle of `G~_YY` so far.
    lhs: Mat<f64>,
    rhs: Mat<f64>,
    /// `||Z_P||^2` per output row of the next layer.
    dropped_energy: Vec<f64>,
    /// Rows of each next layer stacked in `next` (one group unless given).
    row_groups: Vec<usize>,
    /// Rows multiplied into the sums.
    samples: usize,
    /// Rows per product.
    limit: usize,
    /// Rows gathered in `u` and `a_p`, not multiplied yet.
    staged: usize,
    /// Rows in the f32 partials `uu` and `uz` not yet added to `lhs` and `rhs`.
    block_rows: usize,
    /// The shift of the kept neurons (in the order of `keep`, then 0 for the constant column)
    /// and of the dropped ones, fixed by the first product (empty before).
    shift_keep: Vec<f32>,
    shift_dropped: Vec<f32>,
    /// The staged rows and the per-product buffers, kept between chunks.
    u: Vec<f32>,
    a_p: Vec<f32>,
    z: Mat<f32>,
    uu: Mat<f32>,
    uz: Mat<f32>,
}

impl<'a> FusionPass<'a> {
    /// An empty pass for the kept neurons `keep` (in the order of the system's rows) and
    /// the dropped ones `dropped`, which partition the `next.n_in` neurons (validated by
    /// the caller, [`crate::fusion::fuse_next_layer_from_rows`]).
    pub fn new(keep: &[usize], dropped: &[usize], next: NextLayer<'a>) -> Self {
        let (k, n_out, n) = (keep.len(), next.n_out, next.n_in);
        let wp_t =
            Mat::<f32>::from_fn(dropped.len(), n_out, |j, o| next.weight[o * n + dropped[j]]);
        Self {
            next,
            keep: keep.to_vec(),
            dropped: dropped.to_vec(),
            wp_t,
            lhs: Mat::zeros(k + 1, k + 1),
            rhs: Mat::zeros(k + 1, n_out),
            dropped_energy: vec![0.0; n_out],
            row_groups: vec![n_out],
            samples: 0,
            limit: PASS_ROWS.min((PASS_VALUES / (n + n_out)).max(1)),
            staged: 0,
            block_rows: 0,
            shift_keep: Vec::new(),
            shift_dropped: Vec::new(),
            u: Vec::new(),
            a_p: Vec::new(),
            z: Mat::zeros(0, 0),
            uu: Mat::zeros(0, 0),
            uz: Mat::zeros(0, 0),
        }
    }

    /// The pass for several next layers stacked in `next`, `rows` rows each in order: each
    /// gets its energies apart ([`FusionSystem::groups`]). An error when they do not add up
    /// to the stacked layer's rows.
    pub fn with_row_groups(mut self, rows: &[usize]) -> Result<Self> {
        crate::types::check_row_groups(rows, self.next.n_out)?;
        self.row_groups = rows.to_vec();
        Ok(self)
    }

    /// Adds a chunk of whole rows of the n neurons (any number, even 0, one or many: rows
    /// are gathered until a product is full, so that small chunks cost neither speed nor
    /// precision). A value that is not finite is an error naming its row (counted from the
    /// first row of the pass) and neuron.
    pub fn push(&mut self, rows: ActivationRows<'_>) -> Result<()> {
        let n = self.next.n_in;
        let count = rows.whole_rows(n)?;
        let mut first = 0;
        while first < count {
            let take = (self.limit - self.staged).min(count - first);
            let chunk = rows.slice(first * n..(first + take) * n);
            match chunk {
                ActivationRows::F32(v) => self.gather(v, take, |x| x),
                ActivationRows::F16(v) => self.gather(v, take, |x| x.to_f32()),
            }?;
            self.staged += take;
            first += take;
            if self.staged == self.limit {
                self.multiply_staged();
            }
        }
        Ok(())
    }

    /// Appends `rows` row-major rows of the n neurons to the staged `u` (`[A_Y, 1]`,
    /// row-major) and `a_p`, checking every value.
    fn gather<T: Copy>(&mut self, v: &[T], rows: usize, to_f32: impl Fn(T) -> f32) -> Result<()> {
        let n = self.next.n_in;
        let (k, p) = (self.keep.len(), self.dropped.len());
        let start = self.staged;
        self.u.resize(self.limit * (k + 1), 0.0);
        self.a_p.resize(self.limit * p, 0.0);
        let mut finite = true;
        for t in 0..rows {
            let row = &v[t * n..(t + 1) * n];
            let r = start + t;
            let u = &mut self.u[r * (k + 1)..(r + 1) * (k + 1)];
            for (dst, &i) in u.iter_mut().zip(&self.keep) {
                *dst = to_f32(row[i]);
                finite &= usable_activation(*dst);
            }
            u[k] = 1.0;
            for (dst, &i) in self.a_p[r * p..(r + 1) * p].iter_mut().zip(&self.dropped) {
                *dst = to_f32(row[i]);
                finite &= usable_activation(*dst);
            }
        }
        if finite {
            return Ok(());
        }
        let k = v[..rows * n]
            .iter()
            .position(|&x| !usable_activation(to_f32(x)))
            .expect("a value is not usable");
        Err(unusable_activation(
            self.samples() + k / n,
            k % n,
            to_f32(v[k]),
        ))
    }

    /// Multiplies the staged rows into the sums.
    fn multiply_staged(&mut self) {
        let rows = std::mem::take(&mut self.staged);
        if rows == 0 {
            return;
        }
        if self.block_rows + rows > PASS_ROWS {
            self.flush();
        }
        self.shift_staged(rows);
        self.product(rows);
        self.samples += rows;
    }

    /// Subtracts the shift from the `rows` staged rows, fixing it first (the columns' means
    /// over these rows) when this is the first product.
    fn shift_staged(&mut self, rows: usize) {
        let (k, p) = (self.keep.len(), self.dropped.len());
        let u = &mut self.u[..rows * (k + 1)];
        let a_p = &mut self.a_p[..rows * p];
        if self.shift_keep.is_empty() {
            let means = |v: &[f32], width: usize| -> Vec<f32> {
                let (sums, _) = column_sums(ActivationRows::F32(v), width);
                sums.iter().map(|s| (s / rows as f64) as f32).collect()
            };
            self.shift_keep = means(u, k + 1);
            // The constant column stays 1.
            self.shift_keep[k] = 0.0;
            if p > 0 {
                self.shift_dropped = means(a_p, p);
            }
        }
        centre(u, &self.shift_keep);
        if p > 0 {
            centre(a_p, &self.shift_dropped);
        }
    }

    /// The products of the gathered `rows` rows, added to the sums.
    fn product(&mut self, rows: usize) {
        let (k, p, n_out) = (self.keep.len(), self.dropped.len(), self.next.n_out);
        let par = Par::rayon(0);
        let u = MatRef::from_row_major_slice(&self.u[..rows * (k + 1)], rows, k + 1);
        let a_p = MatRef::from_row_major_slice(&self.a_p[..rows * p], rows, p);
        self.z.resize_with(rows, n_out, |_, _| 0.0);
        matmul(self.z.as_mut(), Accum::Replace, a_p, &self.wp_t, 1.0, par);
        // The f32 partials sum over a block of up to PASS_ROWS rows before they are added
        // in f64: at k = 8192 a product covers a few hundred rows, and adding the 0.8 GB of
        // partials after each would cost as much memory traffic as the products themselves.
        let accum = if self.block_rows == 0 {
            Accum::Replace
        } else {
            Accum::Add
        };
        self.uz.resize_with(k + 1, n_out, |_, _| 0.0);
        matmul(self.uz.as_mut(), accum, u.transpose(), &self.z, 1.0, par);
        self.uu.resize_with(k + 1, k + 1, |_, _| 0.0);
        triangular::matmul(
            self.uu.as_mut(),
            BlockStructure::TriangularLower,
            accum,
            u.transpose(),
            BlockStructure::Rectangular,
            u,
            BlockStructure::Rectangular,
            1.0,
            par,
        );
        self.block_rows += rows;
        for (o, energy) in self.dropped_energy.iter_mut().enumerate() {
            let col = crate::cpu::contiguous(self.z.col(o));
            *energy += col.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        }
    }

    /// Adds the f32 partials of the current block to the f64 sums.
    fn flush(&mut self) {
        if std::mem::take(&mut self.block_rows) == 0 {
            return;
        }
        let k = self.keep.len();
        for j in 0..=k {
            let src = &crate::cpu::contiguous(self.uu.col(j))[j..];
            let dst = &mut crate::cpu::contiguous_mut(self.lhs.col_mut(j))[j..];
            for (d, &x) in dst.iter_mut().zip(src) {
                *d += x as f64;
            }
        }
        for o in 0..self.next.n_out {
            let src = crate::cpu::contiguous(self.uz.col(o));
            let dst = crate::cpu::contiguous_mut(self.rhs.col_mut(o));
            for (d, &x) in dst.iter_mut().zip(src) {
                *d += x as f64;
            }
        }
    }

    /// Rows pushed so far.
    pub fn samples(&self) -> usize {
        self.samples + self.staged
    }

    /// The fusion system; an error when no row was pushed.
    pub fn finish(mut self) -> Result<FusionSystem> {
        self.multiply_staged();
        if self.samples == 0 {
            return Err(Error::invalid("fusion: the activations have no rows"));
        }
        self.flush();
        let k = self.keep.len();
        for j in 0..=k {
            for i in j + 1..=k {
                self.lhs[(j, i)] = self.lhs[(i, j)];
            }
        }
        self.take_out_shift();
        let kept = kept_energies(
            &self.lhs,
            &self.keep,
            self.next,
            &self.row_groups,
            faer::get_global_parallelism(),
        );
        let dropped = RowGroup::sums(&self.row_groups, &self.dropped_energy);
        let groups = RowGroup::zip(&self.row_groups, kept, dropped);
        Ok(FusionSystem::from_groups(self.lhs, self.rhs, groups))
    }
}

impl FusionPass<'_> {
    /// Turns the sums about the shift back into those of the activations, in f64. With
    /// `x = a_Y - c` (kept), `Z'_P = (A_P - 1 c_P^T) W_P^T` and `z = W_P c_P`, the sums are
    /// `G' = x^T x`, `s' = x^T 1`, `R'_Y = x^T Z'_P`, `r' = 1^T Z'_P` and `||Z'_P||^2`; then
    /// `G = G' + c s'^T + s' c^T + m c c^T`, `s = s' + m c`, `r = r' + m z`,
    /// `R_Y = R'_Y + s' z^T + c r^T` and `||Z_P||^2 = ||Z'_P||^2 + 2 z . r' + m ||z||^2`.
    fn take_out_shift(&mut self) {
        let (k, n_out, n) = (self.keep.len(), self.next.n_out, self.next.n_in);
        let m = self.samples as f64;
        let c: Vec<f64> = self.shift_keep[..k].iter().map(|&x| x as f64).collect();
        let mut z = vec![0.0f64; n_out];
        for (o, zo) in z.iter_mut().enumerate() {
            let row = &self.next.weight[o * n..(o + 1) * n];
            *zo = self
                .dropped
                .iter()
                .zip(&self.shift_dropped)
                .map(|(&j, &cj)| row[j] as f64 * cj as f64)
                .sum();
        }
        let s_shifted: Vec<f64> = (0..k).map(|i| self.lhs[(k, i)]).collect();
        for j in 0..k {
            for i in 0..k {
                self.lhs[(i, j)] += c[i] * s_shifted[j] + s_shifted[i] * c[j] + m * c[i] * c[j];
            }
        }
        for i in 0..k {
            let s = s_shifted[i] + m * c[i];
            self.lhs[(i, k)] = s;
            self.lhs[(k, i)] = s;
        }
        let r_shifted: Vec<f64> = (0..n_out).map(|o| self.rhs[(k, o)]).collect();
        for (o, energy) in self.dropped_energy.iter_mut().enumerate() {
            *energy += 2.0 * z[o] * r_shifted[o] + m * z[o] * z[o];
        }
        for o in 0..n_out {
            let r = r_shifted[o] + m * z[o];
            self.rhs[(k, o)] = r;
            for i in 0..k {
                self.rhs[(i, o)] += s_shifted[i] * z[o] + c[i] * r;
            }
        }
    }
}

/// Rows of `V V^T` formed at a time in [`quadratic_trace`]: bounds the memory to
/// `PANEL x d` values whatever the layer's width.
const PANEL: usize = 512;

/// `tr(V^T H V)` for symmetric H given entry-wise, as `<H, V V^T>` with only the lower
/// triangle of `V V^T` formed, one panel of rows at a time (half the work of `H V`, and no
/// gathered copy of H).
fn quadratic_trace(v: MatRef<'_, f64>, h: impl Fn(usize, usize) -> f64, par: Par) -> f64 {
    let d = v.nrows();
    let mut total = 0.0;
    let mut block = Mat::<f64>::zeros(0, 0);
    let mut i0 = 0;
    while i0 < d {
        let rows = PANEL.min(d - i0);
        let i1 = i0 + rows;
        // Rows i0..i1 of V V^T up to column i1: the part left of the diagonal block in
        // full, the diagonal block too (its upper half is the only waste, rows/d of it).
        block.resize_with(rows, i1, |_, _| 0.0);
        matmul(
            block.as_mut(),
            Accum::Replace,
            v.subrows(i0, rows),
            v.subrows(0, i1).transpose(),
            1.0,
            par,
        );
        for j in 0..i1 {
            let mut col = 0.0;
            for r in 0..rows {
                let i = i0 + r;
                if j < i {
                    col += 2.0 * h(i, j) * block[(r, j)];
                } else if j == i {
                    col += h(i, j) * block[(r, j)];
                }
            }
            total += col;
        }
        i0 = i1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadratic_trace_over_several_panels_matches_naive_loops() {
        let (d, c) = (2 * PANEL + 37, 3);
        let v = Mat::<f64>::from_fn(d, c, |i, j| ((i * 7 + j * 13) % 17) as f64 - 8.0);
        let h = |i: usize, j: usize| 1.0 / (1.0 + (i as f64 - j as f64).abs());
        let mut naive = 0.0;
        for col in 0..c {
            for i in 0..d {
                for j in 0..d {
                    naive += v[(i, col)] * h(i, j) * v[(j, col)];
                }
            }
        }
        let got = quadratic_trace(v.as_ref(), h, Par::Seq);
        assert!(
            (got - naive).abs() < 1e-10 * naive.abs(),
            "{got} vs {naive}"
        );
    }
}
