// The columns' shift c of gram.wgsl: the column means of the first chunk. col_sums has just
// summed that chunk, unshifted (c was 0), into the column-sum accumulator; this kernel turns
// those sums into means, stores them as the shift, and clears the accumulator, so that
// col_sums sums the chunk again, shifted, before its tiles. Run once, on the first chunk.

struct Params {
    rows: u32,    // rows in the first chunk
    n: u32,       // columns
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The column-sum accumulator, (hi, lo) per column.
@group(0) @binding(1) var<storage, read_write> sums: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> shift: array<f32>;

@compute @workgroup_size(256)
fn mean_shift(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= params.n {
        return;
    }
    let s = sums[c];
    shift[c] = (s.x + s.y) / f32(params.rows);
    sums[c] = vec2<f32>(0.0, 0.0);
}
