// Tiled products over one row chunk of a row-major activation matrix A (rows x n), added
// into the device-resident accumulators of the upper-triangle tiles of an n x n symmetric
// result:
//   gram_tiles: G_ij += sum_t (A_ti - c_i) (A_tj - c_j)
//   dist_tiles: D_ij += sum_t (A_ti - A_tj)^2   (directly, so near-duplicate columns do not
//                                                cancel as G_ii + G_jj - 2 G_ij would)
//   both_tiles: both, from one load of the chunk
//   col_sums:   s_c  += sum_t (A_tc - c_c)
// where c is a fixed shift per column (the column means of the first chunk, from shift.wgsl;
// 0 for the distances, which need none), which the host takes back out in f64:
// G = G' + c s'^T + s' c^T + m c c^T, s = s' + m c. Products of shifted values keep the
// statistics of a column whose mean dominates its spread: summed raw, a constant column's
// f32 products left up to 1.1e-4 of G_jj in its centred variance (lavapipe, chunks of 4096
// rows); shifted, 0 to rounding.
//
// Work: one workgroup per 64 x 64 output tile of the block bound at group 1; the tile's
// position comes from `tiles` (tile row in the high 16 bits, column in the low 16), so only
// the upper triangle is computed and stored. Each of the 16 x 16 threads computes a 4 x 4
// register tile; operands pass through workgroup memory in slabs of 16 rows.
//
// Precision: a chunk's sums are f32 over at most 4096 rows (about sqrt(rows) * 2^-24
// relative). Each output keeps a running (hi, lo) pair across chunks, updated with TwoSum,
// so the total does not drift with m: hi + lo carries the chunk sums to about 2^-48, as the
// host's f64 sum of chunk results did. Every step of TwoSum is multiplied by `opaque_one`,
// 1.0 read at run time: some drivers (lavapipe) reassociate float adds, which silently
// undoes TwoSum (see fusion.wgsl).
//
// The input is bound as words so one binding serves both formats: f32 bit patterns, or f16
// packed two per u32 (low half = even column), each row padded to a whole number of words.
// This file is not a module on its own: `load(t, c)` comes from gram_load_f32.wgsl or
// gram_load_f16.wgsl, appended by the host (src/gpu/gram.rs). Keeping unpack2x16float out
// of the f32 module lets the f32 kernels run on devices without f16-in-f32 support.

// One chunk of rows (group 0, shared by every block).
struct Chunk {
    rows: u32,    // rows in this chunk
    n: u32,       // columns of A
    base: u32,    // word offset of the chunk's first row within the binding
    stride: u32,  // words per row
}

// One block of tiles (group 1).
struct Block {
    first: u32,   // index in `tiles` of the block's first tile
    count: u32,   // tiles in the block
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> chunk: Chunk;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> tiles: array<u32>;
@group(0) @binding(3) var<storage, read> opaque_one: array<f32>;
// The shift c, one value per column (group 0: the same for every chunk and block).
@group(0) @binding(4) var<storage, read> shift: array<f32>;

@group(1) @binding(0) var<uniform> block: Block;
// (hi, lo) per output: tile k of the block at [k * 4096, (k + 1) * 4096), row-major 64 x 64.
// col_sums binds the column sums here instead, one pair per column.
@group(1) @binding(1) var<storage, read_write> acc: array<vec2<f32>>;
// both_tiles only: the distances, laid out as `acc`.
@group(1) @binding(2) var<storage, read_write> acc_dist: array<vec2<f32>>;

const TILE: u32 = 64u;
const SLAB: u32 = 16u;
const TILE_OUTPUTS: u32 = 4096u;

// Slab row k, column group g holds columns (g, g + 16, g + 32, g + 48) of the tile, so the
// thread at (x, y) reads its four operands with one vec4 load per row.
var<workgroup> ta: array<vec4<f32>, 256>;
var<workgroup> tb: array<vec4<f32>, 256>;
// both_tiles only: the same slabs shifted (ta, tb keep the raw values for the distances).
var<workgroup> sa: array<vec4<f32>, 256>;
var<workgroup> sb: array<vec4<f32>, 256>;

fn load4(t: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(load(t, c), load(t, c + 16u), load(t, c + 32u), load(t, c + 48u));
}

// Value (t, c) minus the column's shift, 0 outside the chunk (so that padding adds nothing).
fn shifted(t: u32, c: u32) -> f32 {
    if t >= chunk.rows || c >= chunk.n {
        return 0.0;
    }
    return load(t, c) - shift[c];
}

fn shifted4(t: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(shifted(t, c), shifted(t, c + 16u), shifted(t, c + 32u), shifted(t, c + 48u));
}

fn load_slabs(l: u32, t0: u32, ci: u32, cj: u32) {
    let t = t0 + l / 16u;
    let g = l % 16u;
    ta[l] = load4(t, ci + g);
    tb[l] = load4(t, cj + g);
}

fn load_shifted_slabs(l: u32, t0: u32, ci: u32, cj: u32) {
    let t = t0 + l / 16u;
    let g = l % 16u;
    ta[l] = shifted4(t, ci + g);
    tb[l] = shifted4(t, cj + g);
}

// The block-local index of this workgroup's tile (the grid is 2-D: blocks may hold more
// tiles than one dimension allows).
fn local_tile(wg: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wg.y * groups.x + wg.x;
}

// First output row and column of the block's tile `k`.
fn tile_origin(k: u32) -> vec2<u32> {
    let t = tiles[block.first + k];
    return vec2<u32>((t >> 16u) * TILE, (t & 0xffffu) * TILE);
}

// (hi, lo) + x with TwoSum: hi takes the rounded sum, lo collects every rounding error.
// lo is not folded back into hi: on lavapipe a version that did so with a second TwoSum
// came out as the plain f32 sum, lo lost altogether (measured with the running-sum test of
// tests/gpu_engine.rs; mathematically it was exact). A lo that only grows loses about 2^-24
// of itself per chunk: 2^-48 of the total each time.
fn two_sum(pair: vec2<f32>, x: f32, one: f32) -> vec2<f32> {
    let s = (pair.x + x) * one;
    let bp = (s - pair.x) * one;
    let ap = (s - bp) * one;
    let err = (pair.x - ap) * one + (x - bp) * one;
    return vec2<f32>(s, (pair.y + err) * one);
}

// Index in the accumulator of the thread's output (row y + 16 r, column x + 16 c) of the
// tile starting at `base`.
fn out_index(base: u32, x: u32, y: u32, r: u32, c: u32) -> u32 {
    return base + (y + 16u * r) * TILE + x + 16u * c;
}

// Adds the thread's 4 x 4 chunk sums into `acc` (tile k of the block).
fn add_to_acc(k: u32, lid: vec3<u32>, sums: array<vec4<f32>, 4>) {
    let one = opaque_one[0];
    for (var r = 0u; r < 4u; r++) {
        let v = sums[r];
        for (var c = 0u; c < 4u; c++) {
            let i = out_index(k * TILE_OUTPUTS, lid.x, lid.y, r, c);
            acc[i] = two_sum(acc[i], v[c], one);
        }
    }
}

// The same into `acc_dist` (both_tiles).
fn add_to_acc_dist(k: u32, lid: vec3<u32>, sums: array<vec4<f32>, 4>) {
    let one = opaque_one[0];
    for (var r = 0u; r < 4u; r++) {
        let v = sums[r];
        for (var c = 0u; c < 4u; c++) {
            let i = out_index(k * TILE_OUTPUTS, lid.x, lid.y, r, c);
            acc_dist[i] = two_sum(acc_dist[i], v[c], one);
        }
    }
}

@compute @workgroup_size(16, 16)
fn gram_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let k = local_tile(wg, groups);
    if k >= block.count {
        return;
    }
    let origin = tile_origin(k);
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < chunk.rows; t0 += SLAB) {
        load_shifted_slabs(l, t0, origin.x, origin.y);
        workgroupBarrier();
        for (var s = 0u; s < SLAB; s++) {
            let av = ta[s * 16u + lid.y];
            let bv = tb[s * 16u + lid.x];
            c0 += av.x * bv;
            c1 += av.y * bv;
            c2 += av.z * bv;
            c3 += av.w * bv;
        }
        workgroupBarrier();
    }
    add_to_acc(k, lid, array<vec4<f32>, 4>(c0, c1, c2, c3));
}

@compute @workgroup_size(16, 16)
fn dist_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let k = local_tile(wg, groups);
    if k >= block.count {
        return;
    }
    let origin = tile_origin(k);
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < chunk.rows; t0 += SLAB) {
        load_slabs(l, t0, origin.x, origin.y);
        workgroupBarrier();
        for (var s = 0u; s < SLAB; s++) {
            let av = ta[s * 16u + lid.y];
            let bv = tb[s * 16u + lid.x];
            let d0 = vec4<f32>(av.x) - bv;
            let d1 = vec4<f32>(av.y) - bv;
            let d2 = vec4<f32>(av.z) - bv;
            let d3 = vec4<f32>(av.w) - bv;
            c0 += d0 * d0;
            c1 += d1 * d1;
            c2 += d2 * d2;
            c3 += d3 * d3;
        }
        workgroupBarrier();
    }
    add_to_acc(k, lid, array<vec4<f32>, 4>(c0, c1, c2, c3));
}

@compute @workgroup_size(16, 16)
fn both_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let k = local_tile(wg, groups);
    if k >= block.count {
        return;
    }
    let origin = tile_origin(k);
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    var e0 = vec4<f32>(0.0);
    var e1 = vec4<f32>(0.0);
    var e2 = vec4<f32>(0.0);
    var e3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < chunk.rows; t0 += SLAB) {
        load_slabs(l, t0, origin.x, origin.y);
        let t = t0 + l / 16u;
        let g = l % 16u;
        sa[l] = shifted4(t, origin.x + g);
        sb[l] = shifted4(t, origin.y + g);
        workgroupBarrier();
        for (var s = 0u; s < SLAB; s++) {
            let av = ta[s * 16u + lid.y];
            let bv = tb[s * 16u + lid.x];
            let ac = sa[s * 16u + lid.y];
            let bc = sb[s * 16u + lid.x];
            g0 += ac.x * bc;
            g1 += ac.y * bc;
            g2 += ac.z * bc;
            g3 += ac.w * bc;
            let d0 = vec4<f32>(av.x) - bv;
            let d1 = vec4<f32>(av.y) - bv;
            let d2 = vec4<f32>(av.z) - bv;
            let d3 = vec4<f32>(av.w) - bv;
            e0 += d0 * d0;
            e1 += d1 * d1;
            e2 += d2 * d2;
            e3 += d3 * d3;
        }
        workgroupBarrier();
    }
    add_to_acc(k, lid, array<vec4<f32>, 4>(g0, g1, g2, g3));
    add_to_acc_dist(k, lid, array<vec4<f32>, 4>(e0, e1, e2, e3));
}

@compute @workgroup_size(256)
fn col_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= chunk.n {
        return;
    }
    var s = 0.0;
    for (var t = 0u; t < chunk.rows; t++) {
        s += shifted(t, c);
    }
    acc[c] = two_sum(acc[c], s, opaque_one[0]);
}
