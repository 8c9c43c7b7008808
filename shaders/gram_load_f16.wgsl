// `load` for gram.wgsl over f16 rows packed two per word (the even column in the low half):
// value (t, c) of the chunk as f32, 0 outside it.
fn load(t: u32, c: u32) -> f32 {
    if t >= chunk.rows || c >= chunk.n {
        return 0.0;
    }
    let h = unpack2x16float(a[chunk.base + t * chunk.stride + c / 2u]);
    return select(h.x, h.y, (c & 1u) == 1u);
}
