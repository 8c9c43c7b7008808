// One fully connected layer on a block of rows, for one block of its output neurons:
// y[:, col0 .. col0 + n] = act(x W^T + b).
//
// x: m x k (row-major), w: n x k (the block's rows of the PyTorch-layout weight), b: n (the
// block's bias), y: m x ld_y (row-major; the block writes columns col0 .. col0 + n). A
// weight matrix wider than one storage binding is split into such row blocks by the host.
// Each workgroup computes a 64 x 64 tile of y; each of its 16 x 16 threads computes
// 4 x 4 outputs, strided by 16 so that neighbouring threads read neighbouring tile entries.
// The k dimension is walked in steps of 16 through workgroup-memory tiles of x and w.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    // 0 none (logits), 1 relu, 2 tanh, 3 sigmoid, 4 gelu (erf form)
    act: u32,
    col0: u32,  // first output column of this block in y
    ld_y: u32,  // y's row stride: all the layer's outputs
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// xs[r * TK + kk] = x[row0 + r, t + kk]; ws[c * TK + kk] = w[col0 + c, t + kk]
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

// erf with absolute error below 1.2e-7 (Numerical Recipes' erfc), as on the CPU.
fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(poly);
    return select(r - 1.0, 1.0 - r, v >= 0.0);
}

fn activate(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return max(v, 0.0); }
        // Clamped: some drivers compute tanh through exp and overflow to NaN.
        case 2u: { return tanh(clamp(v, -20.0, 20.0)); }
        case 3u: { return 1.0 / (1.0 + exp(-clamp(v, -80.0, 80.0))); }
        case 4u: { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        default: { return v; }
    }
}

@compute @workgroup_size(16, 16)
fn linear(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var t = 0u; t < p.k; t = t + TK) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = tid + e * 256u;
            let r = idx / TK;
            let kk = idx % TK;
            let gk = t + kk;
            let gr = row0 + r;
            var xv = 0.0;
            if (gr < p.m && gk < p.k) {
                xv = x[gr * p.k + gk];
            }
            xs[idx] = xv;
            let gc = col0 + r;
            var wv = 0.0;
            if (gc < p.n && gk < p.k) {
                wv = w[gc * p.k + gk];
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            var xr: array<f32, 4>;
            var wc: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                xr[i] = xs[(lid.y + 16u * i) * TK + kk];
                wc[i] = ws[(lid.x + 16u * i) * TK + kk];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = fma(xr[i], wc[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let c = col0 + lid.x + 16u * j;
            if (r < p.m && c < p.n) {
                y[r * p.ld_y + p.col0 + c] = activate(acc[i * 4u + j] + b[c], p.act);
            }
        }
    }
}
