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
// staged in workgroup memory: 2 x 64 x 16 x vec2<f32> = 16 KiB.
//
// Precision: the host passes G~ (f64) as g1 + g2, g1 holding its 12 leading significant
// bits and g2 = f32(G~ - g1), and W (f32) exactly as w1 + w2, 12 bits each. Then g1 * w1 is
// exact in f32 and is summed with TwoSum into (sum, correction); the small terms
// g1 * w2 + g2 * w (2^-12 of the leading one, exact or off by ~2^-36) go straight into the
// correction. Exact products make this immune to the compiler contracting a * b + c into an
// fma, and it does not rely on fma being fused. Each output leaves as (sum, correction).
// Every step of the compensation is multiplied by `opaque_one`: some drivers (lavapipe)
// reassociate float adds, which silently undoes TwoSum (measured: R within 6e-9 of f64
// instead of 4e-11).

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
@group(0) @binding(1) var<storage, read> g: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> col_idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec2<f32>>;
// [1.0], read at run time: multiplying by it is exact, and it hides from the compiler's
// algebraic simplifier and reassociation that TwoSum's error term is zero in real
// arithmetic. A storage buffer, not a uniform: drivers may inline uniform values.
@group(0) @binding(5) var<storage, read> opaque_one: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

// Stored [kk * TILE + i]: the inner loop reads a row of 64 consecutive words per kk.
var<workgroup> tile_g: array<vec2<f32>, 1024>;
var<workgroup> tile_w: array<vec2<f32>, 1024>;

@compute @workgroup_size(16, 16, 1)
fn gathered_product(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let one = opaque_one[0];
    let row0 = wid.y * TILE;
    let out0 = wid.x * TILE;
    var acc: array<f32, 16>;
    var corr: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
        corr[i] = 0.0;
    }

    for (var k0 = 0u; k0 < params.cols; k0 += TK) {
        // 1024 staged values per operand, 4 per invocation; consecutive invocations take
        // consecutive gathered columns of one row, so reads stay within a row.
        for (var t = 0u; t < 4u; t++) {
            let e = lindex + t * 256u;
            let kk = e % TK;
            let i = e / TK;
            let c = k0 + kk;
            var vg = vec2<f32>(0.0, 0.0);
            var vw = vec2<f32>(0.0, 0.0);
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
            var a: array<vec2<f32>, 4>;
            var b: array<vec2<f32>, 4>;
            for (var r = 0u; r < 4u; r++) {
                a[r] = tile_g[kk * TILE + lid.y + 16u * r];
                b[r] = tile_w[kk * TILE + lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    let i = r * 4u + c;
                    let p = a[r].x * b[c].x;
                    let s = acc[i];
                    let t = (s + p) * one;
                    let bp = (t - s) * one;
                    let ap = (t - bp) * one;
                    let sum_err = (s - ap) * one + (p - bp) * one;
                    acc[i] = t;
                    let small = a[r].x * b[c].y + a[r].y * (b[c].x + b[c].y);
                    corr[i] = corr[i] + (sum_err + small) * one;
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
                    out[row * params.n_out + o] = vec2<f32>(acc[r * 4u + c], corr[r * 4u + c]);
                }
            }
        }
    }
}
