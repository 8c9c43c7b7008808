// Fusion assembly: out = G~[rows, cols] * W~[:, cols]^T with the column gather done here.
//
// `g` holds a panel of rows of the augmented Gram matrix G~ = [[G, s], [s^T, m]] (row-major,
// leading dimension ld_g = n + 1), `w` a block of rows of W~ = [W, b] (row-major, leading
// dimension ld_w = n + 1), and `col_idx` the gathered columns (indices into 0..=n; n is the
// constant input). Both operands are read along their rows through the same gather, so one
// upload of G~ and W~ serves every column set (dropped neurons for R, kept ones for the
// energy of the kept part).
//
// Tiling: a 16 x 16 workgroup computes a 64 x 64 output tile, each invocation 4 x 4 outputs
// (rows ty + 16 r, columns tx + 16 c, so that neighbouring invocations read neighbouring
// workgroup-memory words). The inner dimension advances by 16 gathered columns per step,
// staged in workgroup memory: 2 x 64 x 16 f32 = 8 KiB.

struct Params {
    rows: u32,
    cols: u32,
    n_out: u32,
    ld_g: u32,
    ld_w: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> col_idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

// Stored [kk * TILE + i]: the inner loop reads a row of 64 consecutive words per kk.
var<workgroup> tile_g: array<f32, 1024>;
var<workgroup> tile_w: array<f32, 1024>;

@compute @workgroup_size(16, 16, 1)
fn gathered_product(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let out0 = wid.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < params.cols; k0 += TK) {
        // 1024 staged values per operand, 4 per invocation; consecutive invocations take
        // consecutive gathered columns of one row, so reads stay within a row.
        for (var t = 0u; t < 4u; t++) {
            let e = lindex + t * 256u;
            let kk = e % TK;
            let i = e / TK;
            let c = k0 + kk;
            var vg = 0.0;
            var vw = 0.0;
            if (c < params.cols) {
                let col = col_idx[c];
                let r = row0 + i;
                if (r < params.rows) {
                    vg = g[r * params.ld_g + col];
                }
                let o = out0 + i;
                if (o < params.n_out) {
                    vw = w[o * params.ld_w + col];
                }
            }
            tile_g[kk * TILE + i] = vg;
            tile_w[kk * TILE + i] = vw;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                a[r] = tile_g[kk * TILE + lid.y + 16u * r];
                b[r] = tile_w[kk * TILE + lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r * 4u + c] = fma(a[r], b[c], acc[r * 4u + c]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 4u; r++) {
        let row = row0 + lid.y + 16u * r;
        if (row < params.rows) {
            for (var c = 0u; c < 4u; c++) {
                let o = out0 + lid.x + 16u * c;
                if (o < params.n_out) {
                    out[row * params.n_out + o] = acc[r * 4u + c];
                }
            }
        }
    }
}
