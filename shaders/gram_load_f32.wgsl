// `load` for gram.wgsl over f32 rows: value (t, c) of the chunk, 0 outside it.
fn load(t: u32, c: u32) -> f32 {
    if t >= p.rows || c >= p.n {
        return 0.0;
    }
    return bitcast<f32>(a[p.base + t * p.stride + c]);
}
