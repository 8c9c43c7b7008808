// `load` for gram.wgsl over f32 rows: value (t, c) of the chunk, 0 outside it.
fn load(t: u32, c: u32) -> f32 {
    if t >= chunk.rows || c >= chunk.n {
        return 0.0;
    }
    return bitcast<f32>(a[chunk.base + t * chunk.stride + c]);
}
