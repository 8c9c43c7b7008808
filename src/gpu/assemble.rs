//! The host side of the final readback: each read-back 64 x 64 tile of the upper triangle
//! is added, as hi + lo in f64, at (i, j) and (j, i) of the column-major matrix the caller
//! gets, tiles spread over all threads. No n x n staging copy exists beside the result: the
//! tiles are read from the mapped readback memory directly.

use faer::Mat;
use rayon::prelude::*;

use super::accumulator::{Held, Product, Products};
use super::plan::{BlockPlan, TILE};
use crate::cpu::symmetric::{zeros, SharedMatrix};

/// The results of a statistics pass on the host, filled from read-back tiles.
pub(crate) struct HostResult {
    gram: Option<Mat<f64>>,
    distances: Option<Mat<f64>>,
    /// The column sums of the shifted values until [`HostResult::finish`].
    sums: Vec<f64>,
    /// The shift the Gram and the column sums were taken about (0 until read back).
    shift: Vec<f64>,
}

impl HostResult {
    /// Zero matrices for the products kept (n x n each) and zero column sums.
    pub(crate) fn new(n: usize, products: Products) -> Self {
        Self {
            gram: products.gram.then(|| zeros(n)),
            distances: products.distances.then(|| zeros(n)),
            sums: vec![0.0; n],
            shift: vec![0.0; n],
        }
    }

    /// Adds one read-back piece: `bytes` of the region that holds `held`, starting `offset`
    /// bytes into it (whole tiles, or whole column-sum pairs).
    pub(crate) fn add(&mut self, plan: &BlockPlan, held: Held, offset: u64, bytes: &[u8]) {
        match held {
            Held::ColumnSums => {
                let pairs: &[[f32; 2]] = bytemuck::cast_slice(bytes);
                let first = (offset / 8) as usize;
                for (s, p) in self.sums[first..].iter_mut().zip(pairs) {
                    *s += p[0] as f64 + p[1] as f64;
                }
            }
            Held::Shift => {
                let values: &[f32] = bytemuck::cast_slice(bytes);
                let first = (offset / 4) as usize;
                for (c, &v) in self.shift[first..].iter_mut().zip(values) {
                    *c = v as f64;
                }
            }
            Held::Tiles { product, first } => {
                let pairs: &[[f32; 2]] = bytemuck::cast_slice(bytes);
                let matrix = match product {
                    Product::Gram => self.gram.as_mut(),
                    Product::Distances => self.distances.as_mut(),
                }
                .expect("a product the result keeps");
                let first = first + (offset as usize) / (TILE * TILE * 8);
                add_tiles(matrix, plan, first, pairs);
            }
        }
    }

    /// The Gram matrix, the distances (zero diagonal) and the column sums of `m` rows, the
    /// shift taken back out of the first and the last in f64:
    /// `G = G' + c s'^T + s' c^T + m c c^T`, `s = s' + m c`.
    pub(crate) fn finish(mut self, m: usize) -> (Option<Mat<f64>>, Option<Mat<f64>>, Vec<f64>) {
        let m = m as f64;
        let (c, s) = (&self.shift, &self.sums);
        if let Some(g) = self.gram.as_mut() {
            g.par_col_iter_mut().enumerate().for_each(|(j, col)| {
                let (cj, sj) = (c[j], s[j]);
                for (i, v) in col.iter_mut().enumerate() {
                    *v += c[i] * sj + s[i] * cj + m * c[i] * cj;
                }
            });
        }
        for (s, c) in self.sums.iter_mut().zip(&self.shift) {
            *s += m * c;
        }
        let mut distances = self.distances;
        if let Some(d) = distances.as_mut() {
            // (a - a)^2 sums to exactly 0 already; said here so that no rounding can leak.
            for i in 0..d.nrows() {
                d[(i, i)] = 0.0;
            }
        }
        (self.gram, distances, self.sums)
    }
}

/// Adds tiles `first, first + 1, ...` of `plan` (64 x 64 (hi, lo) pairs each, row-major)
/// into both triangles of `matrix`, tiles on all threads.
fn add_tiles(matrix: &mut Mat<f64>, plan: &BlockPlan, first: usize, pairs: &[[f32; 2]]) {
    let n = matrix.nrows();
    let shared = SharedMatrix::new(matrix);
    pairs
        .par_chunks(TILE * TILE)
        .enumerate()
        .for_each(|(k, tile)| {
            let (tr, tc) = plan.tile(first + k);
            let (i0, j0) = (tr * TILE, tc * TILE);
            let rows = TILE.min(n - i0);
            let cols = TILE.min(n - j0);
            let diagonal = tr == tc;
            let value = |r: usize, c: usize| {
                let p = tile[r * TILE + c];
                p[0] as f64 + p[1] as f64
            };
            // (j, i): column i of the matrix, contiguous over the tile's columns j.
            for r in 0..rows {
                let from = if diagonal { r } else { 0 };
                if from >= cols {
                    continue;
                }
                // SAFETY: the tile (tr, tc) of the upper triangle is the only one that writes
                // rows j0.. of column i (and, below, rows i0.. of column j): tiles are
                // distinct, and a diagonal tile writes its own square only.
                let dst = unsafe { shared.column(i0 + r, j0 + from..j0 + cols) };
                for (d, c) in dst.iter_mut().zip(from..cols) {
                    *d += value(r, c);
                }
            }
            // (i, j): column j, contiguous over the tile's rows i; strictly above the
            // diagonal on a diagonal tile (the diagonal itself was written above).
            for c in 0..cols {
                let to = if diagonal { c.min(rows) } else { rows };
                if to == 0 {
                    continue;
                }
                // SAFETY: as above.
                let dst = unsafe { shared.column(j0 + c, i0..i0 + to) };
                for (d, r) in dst.iter_mut().zip(0..to) {
                    *d += value(r, c);
                }
            }
        });
}
