// Tiled products over one row chunk of a row-major activation matrix A (rows x n), for one
// output block [i0, i0 + bi) x [j0, j0 + bj) of an n x n symmetric result:
//   gram_block: C_ij = sum_t A_ti A_tj
//   dist_block: D_ij = sum_t (A_ti - A_tj)^2   (directly, so near-duplicate columns do not
//                                               cancel as G_ii + G_jj - 2 G_ij would)
//   col_sums:   s_c  = sum_t A_tc
// Each workgroup owns a 64 x 64 output tile; each of its 16 x 16 threads a 4 x 4 register
// tile. Operands pass through workgroup memory in slabs of 16 rows. Tiles strictly below the
// diagonal are skipped: the host mirrors the upper triangle. Sums are f32 over one chunk;
// the host adds chunks in f64 so precision does not drift with m.
//
// The input is bound as words so one binding serves both formats: f32 bit patterns, or f16
// packed two per u32 (low half = even column), each row padded to a whole number of words.
// This file is not a module on its own: `load(t, c)` comes from gram_load_f32.wgsl or
// gram_load_f16.wgsl, appended by the host (src/gpu/gram.rs). Keeping unpack2x16float out
// of the f32 module lets the f32 kernels run on devices without f16-in-f32 support.

struct Params {
    rows: u32,    // rows in this chunk
    n: u32,       // columns of A
    i0: u32,      // first output row of the block
    bi: u32,      // output rows in the block
    j0: u32,      // first output column of the block
    bj: u32,      // output columns in the block
    base: u32,    // word offset of the chunk's first row within the binding
    stride: u32,  // words per row
    _pad0: u32,
    _pad3: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const SLAB: u32 = 16u;

// Slab row k, column group g holds columns (g, g + 16, g + 32, g + 48) of the tile, so the
// thread at (x, y) reads its four operands with one vec4 load per row.
var<workgroup> ta: array<vec4<f32>, 256>;
var<workgroup> tb: array<vec4<f32>, 256>;

fn load4(t: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(load(t, c), load(t, c + 16u), load(t, c + 32u), load(t, c + 48u));
}

fn load_slabs(l: u32, t0: u32, ci: u32, cj: u32) {
    let t = t0 + l / 16u;
    let g = l % 16u;
    ta[l] = load4(t, ci + g);
    tb[l] = load4(t, cj + g);
}

fn store(i: u32, j: u32, v: f32) {
    if i < p.i0 + p.bi && j < p.j0 + p.bj {
        out[(i - p.i0) * p.bj + (j - p.j0)] = v;
    }
}

fn store_tile(ci: u32, cj: u32, x: u32, y: u32, r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>) {
    let rows = array<vec4<f32>, 4>(r0, r1, r2, r3);
    for (var r = 0u; r < 4u; r++) {
        let i = ci + y + 16u * r;
        let v = rows[r];
        store(i, cj + x, v.x);
        store(i, cj + x + 16u, v.y);
        store(i, cj + x + 32u, v.z);
        store(i, cj + x + 48u, v.w);
    }
}

@compute @workgroup_size(16, 16)
fn gram_block(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let ci = p.i0 + wg.y * TILE;
    let cj = p.j0 + wg.x * TILE;
    if ci >= cj + TILE {
        return;
    }
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < p.rows; t0 += SLAB) {
        load_slabs(l, t0, ci, cj);
        workgroupBarrier();
        for (var k = 0u; k < SLAB; k++) {
            let av = ta[k * 16u + lid.y];
            let bv = tb[k * 16u + lid.x];
            c0 += av.x * bv;
            c1 += av.y * bv;
            c2 += av.z * bv;
            c3 += av.w * bv;
        }
        workgroupBarrier();
    }
    store_tile(ci, cj, lid.x, lid.y, c0, c1, c2, c3);
}

@compute @workgroup_size(16, 16)
fn dist_block(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let ci = p.i0 + wg.y * TILE;
    let cj = p.j0 + wg.x * TILE;
    if ci >= cj + TILE {
        return;
    }
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < p.rows; t0 += SLAB) {
        load_slabs(l, t0, ci, cj);
        workgroupBarrier();
        for (var k = 0u; k < SLAB; k++) {
            let av = ta[k * 16u + lid.y];
            let bv = tb[k * 16u + lid.x];
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
    store_tile(ci, cj, lid.x, lid.y, c0, c1, c2, c3);
}

@compute @workgroup_size(256)
fn col_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.n {
        return;
    }
    var s = 0.0;
    for (var t = 0u; t < p.rows; t++) {
        s += load(t, c);
    }
    out[c] = s;
}
