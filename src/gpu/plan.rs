//! How the n x n result of a statistics pass is cut for a device, decided from limits alone
//! (no device needed, so every limit shape is unit-tested below).
//!
//! The result is symmetric, so only the upper triangle of 64 x 64 output tiles exists on the
//! device, listed row by row. Consecutive tiles form blocks, each small enough for one
//! storage binding; consecutive blocks form groups, whose accumulators (one (hi, lo) f32
//! pair per output, per product) fit the device memory budget together. With one group the
//! activations are read once; with several, once per group.

use std::ops::Range;

use crate::error::{Error, Result};

/// Output tile edge of the kernels in `shaders/gram.wgsl`: one workgroup per 64 x 64 tile.
pub const TILE: usize = 64;
/// Bytes of one tile's accumulator: 64 x 64 (hi, lo) pairs of f32.
pub const TILE_BYTES: u64 = (TILE * TILE * 8) as u64;
/// A block holds 4096 tiles at most (128 MiB per product): blocks are the unit of
/// allocation, and smaller ones waste less of the budget on the last group.
const MAX_BLOCK_TILES: usize = 4096;

/// What bounds the plan, as the device and the caller set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Bytes one storage binding may hold (one block's accumulator of one product).
    pub max_binding_bytes: u64,
    /// `max_compute_workgroups_per_dimension`: a block is dispatched as a 2-D grid.
    pub max_workgroups_per_dimension: u32,
    /// Bytes the accumulators of one group may take together.
    pub memory_budget: u64,
}

/// The tiles, blocks and groups of one statistics pass (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    n: usize,
    products: usize,
    side: usize,
    tile_count: usize,
    block_tiles: usize,
    blocks: usize,
    group_blocks: usize,
    groups: usize,
}

impl BlockPlan {
    /// The plan for `n` neurons and `products` accumulated products (1: Gram or distances;
    /// 2: both). An error when one tile's accumulator does not fit a binding or when `n`
    /// needs more than 65536 tiles per side.
    pub fn new(n: usize, products: usize, limits: &PlanLimits) -> Result<Self> {
        if n == 0 || !(1..=2).contains(&products) {
            return Err(Error::invalid(format!(
                "a block plan needs n >= 1 and 1 or 2 products (n = {n}, {products} products)"
            )));
        }
        let side = n.div_ceil(TILE);
        if side > 1 << 16 {
            return Err(Error::invalid(format!(
                "{n} neurons need {side} tiles per side; the kernels address at most 65536"
            )));
        }
        let binding_tiles = (limits.max_binding_bytes / TILE_BYTES) as usize;
        if binding_tiles == 0 {
            return Err(Error::Gpu(format!(
                "the largest storage binding ({} bytes) cannot hold one 64 x 64 tile of \
                 accumulators ({TILE_BYTES} bytes)",
                limits.max_binding_bytes
            )));
        }
        let wg = limits.max_workgroups_per_dimension.max(1) as usize;
        let budget_tiles = (limits.memory_budget / (TILE_BYTES * products as u64)) as usize;
        let tile_count = side * (side + 1) / 2;
        let max_block = binding_tiles
            .min(MAX_BLOCK_TILES)
            .min(wg.saturating_mul(wg))
            .min(budget_tiles)
            .max(1);
        let blocks = tile_count.div_ceil(max_block);
        let block_tiles = tile_count.div_ceil(blocks);
        let max_group = (budget_tiles / block_tiles).max(1);
        let groups = blocks.div_ceil(max_group);
        let group_blocks = blocks.div_ceil(groups);
        Ok(Self {
            n,
            products,
            side,
            tile_count,
            block_tiles,
            blocks,
            group_blocks,
            groups: blocks.div_ceil(group_blocks),
        })
    }

    /// n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Tiles per side of the n x n result.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Tiles of the upper triangle: `side (side + 1) / 2`.
    pub fn tile_count(&self) -> usize {
        self.tile_count
    }

    /// Tiles per block (the last block may have fewer).
    pub fn block_tiles(&self) -> usize {
        self.block_tiles
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Blocks per group (the last group may have fewer).
    pub fn group_blocks(&self) -> usize {
        self.group_blocks
    }

    /// Number of groups: the passes over the activations.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The tiles of block `b`, as indices into the tile list.
    pub fn block(&self, b: usize) -> Range<usize> {
        let start = b * self.block_tiles;
        start..(start + self.block_tiles).min(self.tile_count)
    }

    /// The blocks of group `g`.
    pub fn group(&self, g: usize) -> Range<usize> {
        let start = g * self.group_blocks;
        start..(start + self.group_blocks).min(self.blocks)
    }

    /// Bytes of device memory one group's accumulators take (the largest group).
    pub fn group_bytes(&self) -> u64 {
        (self.group_blocks * self.block_tiles) as u64 * TILE_BYTES * self.products as u64
    }

    /// (tile row, tile column) of tile `index`: the upper triangle, row by row.
    pub fn tile(&self, index: usize) -> (usize, usize) {
        assert!(index < self.tile_count, "tile {index} out of range");
        // Row r starts at r side - r (r - 1) / 2; solve for r, then correct the rounding.
        let s = self.side as f64;
        let mut r = ((2.0 * s + 1.0 - ((2.0 * s + 1.0).powi(2) - 8.0 * index as f64).sqrt()) / 2.0)
            .floor()
            .max(0.0) as usize;
        let start = |r: usize| r * self.side - r * r.saturating_sub(1) / 2;
        while r > 0 && start(r) > index {
            r -= 1;
        }
        while r + 1 < self.side && start(r + 1) <= index {
            r += 1;
        }
        (r, r + index - start(r))
    }

    /// The tile list the kernels read: tile row in the high 16 bits, column in the low 16.
    pub fn tile_list(&self) -> Vec<u32> {
        (0..self.side)
            .flat_map(|r| (r..self.side).map(move |c| ((r as u32) << 16) | c as u32))
            .collect()
    }

    /// The 2-D grid of workgroups that covers `tiles` tiles (one workgroup per tile, the
    /// surplus of the last row exits at once).
    pub fn dispatch(&self, tiles: usize, max_workgroups_per_dimension: u32) -> (u32, u32) {
        let x = tiles.min(max_workgroups_per_dimension as usize).max(1);
        (x as u32, tiles.div_ceil(x).max(1) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn limits(binding: u64, budget: u64) -> PlanLimits {
        PlanLimits {
            max_binding_bytes: binding,
            max_workgroups_per_dimension: 65535,
            memory_budget: budget,
        }
    }

    /// Every tile in exactly one block, every block in exactly one group, the tile list in
    /// the order `tile` decodes, each block within the binding and each group within the
    /// budget (unless a single tile per product is already over it).
    fn check(plan: &BlockPlan, l: &PlanLimits) {
        let list = plan.tile_list();
        assert_eq!(list.len(), plan.tile_count());
        for (k, &t) in list.iter().enumerate() {
            let (r, c) = plan.tile(k);
            assert_eq!(
                ((t >> 16) as usize, (t & 0xffff) as usize),
                (r, c),
                "tile {k}"
            );
            assert!(r <= c && c < plan.side());
        }
        let mut next = 0;
        for b in 0..plan.blocks() {
            let range = plan.block(b);
            assert_eq!(range.start, next);
            assert!(!range.is_empty() && range.len() <= plan.block_tiles());
            assert!(range.len() as u64 * TILE_BYTES <= l.max_binding_bytes);
            next = range.end;
        }
        assert_eq!(next, plan.tile_count());
        let mut next = 0;
        for g in 0..plan.groups() {
            let range = plan.group(g);
            assert_eq!(range.start, next);
            assert!(!range.is_empty());
            next = range.end;
        }
        assert_eq!(next, plan.blocks());
        if TILE_BYTES * plan.products as u64 <= l.memory_budget {
            assert!(plan.group_bytes() <= l.memory_budget, "{plan:?}");
        }
        let (x, y) = plan.dispatch(plan.block_tiles(), l.max_workgroups_per_dimension);
        assert!(x <= l.max_workgroups_per_dimension && y <= l.max_workgroups_per_dimension);
        assert!(x as usize * y as usize >= plan.block_tiles());
    }

    #[test]
    fn one_tile_layer() {
        for n in [1, 5, 64] {
            let l = limits(128 << 20, GIB);
            let p = BlockPlan::new(n, 1, &l).unwrap();
            assert_eq!(
                (p.side(), p.tile_count(), p.blocks(), p.groups()),
                (1, 1, 1, 1)
            );
            check(&p, &l);
        }
    }

    #[test]
    fn partial_tiles_round_up() {
        let l = limits(128 << 20, GIB);
        let p = BlockPlan::new(65, 2, &l).unwrap();
        assert_eq!((p.side(), p.tile_count()), (2, 3));
        assert_eq!(p.tile(0), (0, 0));
        assert_eq!(p.tile(1), (0, 1));
        assert_eq!(p.tile(2), (1, 1));
        check(&p, &l);
    }

    #[test]
    fn h200_sized_layer_is_one_group() {
        // n = 8192, Gram and distances: 8256 tiles, 2 x 270 MB of accumulators.
        let l = limits(u32::MAX as u64 / 256 * 256, 4 * GIB);
        let p = BlockPlan::new(8192, 2, &l).unwrap();
        assert_eq!(p.tile_count(), 128 * 129 / 2);
        assert_eq!(p.groups(), 1);
        assert!(p.blocks() >= 3, "blocks of at most {MAX_BLOCK_TILES} tiles");
        check(&p, &l);
    }

    #[test]
    fn small_bindings_make_small_blocks() {
        // lavapipe's 128 MiB binding, a binding of exactly one tile, one of a tile and a bit.
        for binding in [128 << 20, TILE_BYTES, TILE_BYTES + 100, 3 * TILE_BYTES - 1] {
            let l = limits(binding, GIB);
            let p = BlockPlan::new(1000, 1, &l).unwrap();
            assert!(p.block_tiles() as u64 * TILE_BYTES <= binding);
            check(&p, &l);
        }
    }

    #[test]
    fn binding_below_one_tile_is_an_error() {
        let e = BlockPlan::new(100, 1, &limits(TILE_BYTES - 1, GIB)).unwrap_err();
        assert!(matches!(e, Error::Gpu(_)), "{e}");
        assert!(e.to_string().contains("one 64 x 64 tile"), "{e}");
    }

    #[test]
    fn budget_splits_into_groups() {
        // n = 32768 on an 8 GB card's default: the Gram alone needs 4.3 GB.
        let l = limits(2 * GIB, 4 * GIB);
        let p = BlockPlan::new(32768, 1, &l).unwrap();
        assert_eq!(p.groups(), 2);
        check(&p, &l);
        // A budget of a few tiles: groups of small blocks.
        let l = limits(128 << 20, 5 * TILE_BYTES);
        let p = BlockPlan::new(700, 2, &l).unwrap();
        assert!(p.block_tiles() <= 2 && p.groups() > 1, "{p:?}");
        check(&p, &l);
        // A budget below one tile per product: one tile at a time, still a plan.
        let l = limits(128 << 20, 100);
        let p = BlockPlan::new(200, 2, &l).unwrap();
        assert_eq!((p.block_tiles(), p.group_blocks()), (1, 1));
        assert_eq!(p.groups(), p.tile_count());
        check(&p, &l);
    }

    #[test]
    fn workgroup_limit_bounds_blocks() {
        let l = PlanLimits {
            max_binding_bytes: 2 * GIB,
            max_workgroups_per_dimension: 3,
            memory_budget: GIB,
        };
        let p = BlockPlan::new(2000, 1, &l).unwrap();
        assert!(p.block_tiles() <= 9);
        check(&p, &l);
    }

    #[test]
    fn tile_decoding_is_exact_at_large_sides() {
        let l = limits(2 * GIB, 64 * GIB);
        let p = BlockPlan::new(65536 * 64, 1, &l).unwrap();
        let side = p.side();
        for k in [
            0,
            1,
            side - 1,
            side,
            p.tile_count() / 2,
            p.tile_count() - 2,
            p.tile_count() - 1,
        ] {
            let (r, c) = p.tile(k);
            let start = r * side - r * r.saturating_sub(1) / 2;
            assert!(
                r <= c && c < side && start + c - r == k,
                "tile {k}: ({r}, {c})"
            );
        }
        assert!(BlockPlan::new(65537 * 64, 1, &l).is_err());
    }
}
