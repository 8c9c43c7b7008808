//! Vector kernels of the samplers' and the eigensolver's inner loops.
//!
//! `x . y` and `y -= a x` (the samplers') run in one fixed order of operations that the
//! compiler maps onto the widest vectors the CPU has. The crate is built for baseline
//! x86-64 (SSE2: two f64 per instruction). These loops run hundreds of thousands of times
//! per sample on vectors of a few hundred values, so on x86-64 a copy compiled for AVX2 is
//! chosen at run time when the CPU has it. Both copies perform the same operations in the
//! same order (eight independent partial sums, added pairwise), so they give bit-identical
//! results.
//!
//! The symmetric matrix-vector kernels of the eigensolver's reduction
//! (`dot_add_scaled`, `dot_add_scaled4`) have portable, AVX2 and AVX-512 builds that
//! round differently (fused multiply-adds, reduction order). So the eigendecomposition,
//! and hence a k-DPP sample drawn from it, is reproducible for a given seed on one machine
//! (with any thread count: see `linalg/mod.rs`), not bit for bit across CPUs (faer's own
//! SIMD dispatch is not either).

/// Partial sums per dot product: one AVX2 register pair, or four SSE2 registers.
const LANES: usize = 8;

/// `dot` as it is built for the caller's target features, for kernels that have their own
/// dispatch (same operations in the same order in every build).
#[inline(always)]
pub(crate) fn dot_portable(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f64; LANES];
    let mut cx = x.chunks_exact(LANES);
    let mut cy = y.chunks_exact(LANES);
    for (a, b) in (&mut cx).zip(&mut cy) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    // Opaque to the optimiser, so that it keeps the loop's lanes in order in the vectors
    // instead of shuffling them for the pairwise sum below (same operations either way).
    let acc = std::hint::black_box(acc);
    let tail: f64 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail
}

#[inline(always)]
fn sub_scaled_portable(y: &mut [f64], a: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi -= a * xi;
    }
}

/// `y_r,i -= a_t,r x_t,i` for each term `(a_t, x_t)` in order, for each of the rows `ys`,
/// each as one fused multiply-add (one rounding, `f64::mul_add`, so that every build, with
/// or without FMA instructions, gives the same bits), in one sweep that reads each term's
/// vector once for all the rows (the vectors at least as long as the rows, the rows of one
/// length). Without FMA instructions (x86-64 before AVX2) `mul_add` is a library call: the
/// result is the same, much slower.
#[inline(always)]
pub(crate) fn sub_scaled_terms_rows<const R: usize>(
    mut ys: [&mut [f64]; R],
    terms: &[([f64; R], &[f64])],
) {
    let n = ys.first().map_or(0, |y| y.len());
    assert!(ys.iter().all(|y| y.len() == n));
    assert!(terms.iter().all(|(_, x)| x.len() >= n));
    let body = n - n % LANES;
    let mut start = 0;
    while start < body {
        let mut acc = [[0.0f64; LANES]; R];
        for (acc, y) in acc.iter_mut().zip(&ys) {
            acc.copy_from_slice(&y[start..start + LANES]);
        }
        for &(a, x) in terms {
            let x: &[f64; LANES] = x[start..start + LANES].try_into().unwrap();
            for (acc, &a) in acc.iter_mut().zip(&a) {
                for l in 0..LANES {
                    acc[l] = (-a).mul_add(x[l], acc[l]);
                }
            }
        }
        for (acc, y) in acc.iter().zip(ys.iter_mut()) {
            y[start..start + LANES].copy_from_slice(acc);
        }
        start += LANES;
    }
    for (r, y) in ys.into_iter().enumerate() {
        for (i, yi) in y.iter_mut().enumerate().skip(body) {
            for (a, x) in terms {
                *yi = (-a[r]).mul_add(x[i], *yi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(x: &[f64], y: &[f64]) -> f64 {
    dot_portable(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sub_scaled_avx2(y: &mut [f64], a: f64, x: &[f64]) {
    sub_scaled_portable(y, a, x)
}

/// `sum x_i y_i` over the common length.
#[inline]
pub(crate) fn dot(x: &[f64], y: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only requirement of `dot_avx2`.
        return unsafe { dot_avx2(x, y) };
    }
    dot_portable(x, y)
}

/// `y_i -= a x_i` over the common length.
#[inline]
pub(crate) fn sub_scaled(y: &mut [f64], a: f64, x: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only requirement of `sub_scaled_avx2`.
        return unsafe { sub_scaled_avx2(y, a, x) };
    }
    sub_scaled_portable(y, a, x)
}

#[inline(always)]
fn dot_add_scaled_portable(col: &[f64], v: &[f64], y: &mut [f64], a: f64) -> f64 {
    let n = col.len().min(v.len()).min(y.len());
    let (col, v, y) = (&col[..n], &v[..n], &mut y[..n]);
    let mut acc = [0.0f64; LANES];
    let mut cc = col.chunks_exact(LANES);
    let mut cv = v.chunks_exact(LANES);
    let mut cy = y.chunks_exact_mut(LANES);
    for ((c, x), out) in (&mut cc).zip(&mut cv).zip(&mut cy) {
        for l in 0..LANES {
            acc[l] += c[l] * x[l];
            out[l] += a * c[l];
        }
    }
    let mut tail = 0.0;
    for ((c, x), out) in cc
        .remainder()
        .iter()
        .zip(cv.remainder())
        .zip(cy.into_remainder())
    {
        tail += c * x;
        *out += a * c;
    }
    (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_add_scaled_avx2(col: &[f64], v: &[f64], y: &mut [f64], a: f64) -> f64 {
    use std::arch::x86_64::*;
    let n = col.len().min(v.len()).min(y.len());
    let (pc, pv, py) = (col.as_ptr(), v.as_ptr(), y.as_mut_ptr());
    let va = _mm256_set1_pd(a);
    let mut acc0 = _mm256_setzero_pd();
    let mut acc1 = _mm256_setzero_pd();
    let mut i = 0;
    // SAFETY: every offset below is < n, the length of all three slices.
    while i + 8 <= n {
        let c0 = _mm256_loadu_pd(pc.add(i));
        let c1 = _mm256_loadu_pd(pc.add(i + 4));
        acc0 = _mm256_fmadd_pd(c0, _mm256_loadu_pd(pv.add(i)), acc0);
        acc1 = _mm256_fmadd_pd(c1, _mm256_loadu_pd(pv.add(i + 4)), acc1);
        _mm256_storeu_pd(
            py.add(i),
            _mm256_fmadd_pd(va, c0, _mm256_loadu_pd(py.add(i))),
        );
        _mm256_storeu_pd(
            py.add(i + 4),
            _mm256_fmadd_pd(va, c1, _mm256_loadu_pd(py.add(i + 4))),
        );
        i += 8;
    }
    let mut lanes = [0.0f64; 4];
    _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(acc0, acc1));
    let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    while i < n {
        sum += *pc.add(i) * *pv.add(i);
        *py.add(i) += a * *pc.add(i);
        i += 1;
    }
    sum
}

/// `y_i += a col_i` and `sum col_i v_i` in one pass over `col`: one column's share of a
/// symmetric matrix-vector product stored as a lower triangle.
#[inline]
pub(crate) fn dot_add_scaled(col: &[f64], v: &[f64], y: &mut [f64], a: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, the requirements of `dot_add_scaled_avx2`.
        return unsafe { dot_add_scaled_avx2(col, v, y, a) };
    }
    dot_add_scaled_portable(col, v, y, a)
}

/// Four columns' share of a symmetric matrix-vector product over rows they all have:
/// `y_i += sum_c a_c cols_c[i]` and, per column, `sum_i cols_c[i] v_i`. Reading y once
/// for four columns keeps the product bound by the columns' memory traffic alone.
#[inline]
pub(crate) fn dot_add_scaled4(
    cols: [&[f64]; 4],
    v: &[f64],
    y: &mut [f64],
    a: [f64; 4],
) -> [f64; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { dot_add_scaled4_avx512(cols, v, y, a) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, the requirements of `dot_add_scaled4_avx2`.
        return unsafe { dot_add_scaled4_avx2(cols, v, y, a) };
    }
    dot_add_scaled4_portable(cols, v, y, a)
}

fn dot_add_scaled4_portable(cols: [&[f64]; 4], v: &[f64], y: &mut [f64], a: [f64; 4]) -> [f64; 4] {
    let mut dots = [0.0; 4];
    for (i, (yi, &vi)) in y.iter_mut().zip(v).enumerate() {
        let c = [cols[0][i], cols[1][i], cols[2][i], cols[3][i]];
        *yi += (a[0] * c[0] + a[1] * c[1]) + (a[2] * c[2] + a[3] * c[3]);
        for t in 0..4 {
            dots[t] += c[t] * vi;
        }
    }
    dots
}

/// Rows `range` of [`dot_add_scaled4`] one at a time: the vector builds' lead-in (up to
/// an aligned row) and tail.
///
/// # Safety
/// `range.end` is at most the length of the four columns, `v` and `y`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_add_scaled4_rows(
    p: [*const f64; 4],
    (pv, py): (*const f64, *mut f64),
    a: [f64; 4],
    range: std::ops::Range<usize>,
    dots: &mut [f64; 4],
) {
    for i in range {
        let vi = *pv.add(i);
        let mut yi = *py.add(i);
        for t in 0..4 {
            let c = *p[t].add(i);
            dots[t] += c * vi;
            yi += a[t] * c;
        }
        *py.add(i) = yi;
    }
}

/// The rows the vector builds run on, `n` (checked against every slice), and the
/// columns' pointers; the vector loop starts once column 0 is at an `align`-byte boundary,
/// because an unaligned load of a whole vector straddles two cache lines at that width.
#[cfg(target_arch = "x86_64")]
fn dot_add_scaled4_layout(
    cols: &[&[f64]; 4],
    v: &[f64],
    y: &[f64],
    align: usize,
) -> (usize, usize, [*const f64; 4]) {
    let n = y.len().min(v.len());
    assert!(cols.iter().all(|c| c.len() >= n));
    let p = cols.map(|c| c.as_ptr());
    let lead = ((align - p[0] as usize % align) % align / 8).min(n);
    (n, lead, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_add_scaled4_avx2(
    cols: [&[f64]; 4],
    v: &[f64],
    y: &mut [f64],
    a: [f64; 4],
) -> [f64; 4] {
    use std::arch::x86_64::*;
    let (n, lead, p) = dot_add_scaled4_layout(&cols, v, y, 32);
    let ptrs = (v.as_ptr(), y.as_mut_ptr());
    let mut dots = [0.0; 4];
    // SAFETY (every access below): offsets are < n, within all six slices.
    dot_add_scaled4_rows(p, ptrs, a, 0..lead, &mut dots);
    let va = [
        _mm256_set1_pd(a[0]),
        _mm256_set1_pd(a[1]),
        _mm256_set1_pd(a[2]),
        _mm256_set1_pd(a[3]),
    ];
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = lead;
    while i + 4 <= n {
        let x = _mm256_loadu_pd(ptrs.0.add(i));
        let mut out = _mm256_loadu_pd(ptrs.1.add(i));
        for t in 0..4 {
            let c = _mm256_loadu_pd(p[t].add(i));
            acc[t] = _mm256_fmadd_pd(c, x, acc[t]);
            out = _mm256_fmadd_pd(va[t], c, out);
        }
        _mm256_storeu_pd(ptrs.1.add(i), out);
        i += 4;
    }
    for t in 0..4 {
        let mut lanes = [0.0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), acc[t]);
        dots[t] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
    dot_add_scaled4_rows(p, ptrs, a, i..n, &mut dots);
    dots
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_add_scaled4_avx512(
    cols: [&[f64]; 4],
    v: &[f64],
    y: &mut [f64],
    a: [f64; 4],
) -> [f64; 4] {
    use std::arch::x86_64::*;
    let (n, lead, p) = dot_add_scaled4_layout(&cols, v, y, 64);
    let ptrs = (v.as_ptr(), y.as_mut_ptr());
    let mut dots = [0.0; 4];
    // SAFETY (every access below): offsets are < n, within all six slices.
    dot_add_scaled4_rows(p, ptrs, a, 0..lead, &mut dots);
    let va = [
        _mm512_set1_pd(a[0]),
        _mm512_set1_pd(a[1]),
        _mm512_set1_pd(a[2]),
        _mm512_set1_pd(a[3]),
    ];
    let mut acc = [_mm512_setzero_pd(); 4];
    let mut i = lead;
    while i + 8 <= n {
        let x = _mm512_loadu_pd(ptrs.0.add(i));
        let mut out = _mm512_loadu_pd(ptrs.1.add(i));
        for t in 0..4 {
            let c = _mm512_loadu_pd(p[t].add(i));
            acc[t] = _mm512_fmadd_pd(c, x, acc[t]);
            out = _mm512_fmadd_pd(va[t], c, out);
        }
        _mm512_storeu_pd(ptrs.1.add(i), out);
        i += 8;
    }
    for t in 0..4 {
        dots[t] += _mm512_reduce_add_pd(acc[t]);
    }
    dot_add_scaled4_rows(p, ptrs, a, i..n, &mut dots);
    dots
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each build the CPU can run (portable, AVX2, AVX-512) against plain loops, at every
    /// alignment of the columns and with lengths around the vector widths.
    #[test]
    fn dot_add_scaled4_builds_match_plain_loops() {
        type Build = fn([&[f64]; 4], &[f64], &mut [f64], [f64; 4]) -> [f64; 4];
        let mut builds: Vec<(&str, Build)> = vec![("portable", dot_add_scaled4_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA.
                builds.push(("avx2", |c, v, y, a| unsafe {
                    dot_add_scaled4_avx2(c, v, y, a)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F.
                builds.push(("avx512", |c, v, y, a| unsafe {
                    dot_add_scaled4_avx512(c, v, y, a)
                }));
            }
        }
        let stride = 260;
        let data: Vec<f64> = (0..4 * stride + 8)
            .map(|i| (i as f64 * 0.71).sin())
            .collect();
        let v: Vec<f64> = (0..stride).map(|i| (i as f64 * 1.9).cos()).collect();
        let a = [0.5, -1.25, 2.0, 0.75];
        for offset in 0..8 {
            for n in [0, 1, 3, 7, 8, 9, 15, 17, 64, 101, 203] {
                let cols: [&[f64]; 4] = std::array::from_fn(|t| &data[offset + t * stride..][..n]);
                let y0: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
                let mut y_plain = y0.clone();
                let mut dots_plain = [0.0; 4];
                for i in 0..n {
                    for t in 0..4 {
                        y_plain[i] += a[t] * cols[t][i];
                        dots_plain[t] += cols[t][i] * v[i];
                    }
                }
                for (name, build) in &builds {
                    let mut y = y0.clone();
                    let dots = build(cols, &v[..n], &mut y, a);
                    for t in 0..4 {
                        assert!(
                            (dots[t] - dots_plain[t]).abs() <= 1e-12 * (1.0 + dots_plain[t].abs()),
                            "{name}, offset {offset}, n = {n}: dot {t}"
                        );
                    }
                    for i in 0..n {
                        assert!(
                            (y[i] - y_plain[i]).abs() <= 1e-12 * (1.0 + y_plain[i].abs()),
                            "{name}, offset {offset}, n = {n}: y[{i}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dot_and_sub_scaled_match_plain_loops() {
        for n in [0, 1, 7, 8, 9, 200, 203] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..n).map(|i| (i as f64 * 1.3).cos()).collect();
            let plain: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert!(
                (dot(&x, &y) - plain).abs() <= 1e-12 * (1.0 + plain.abs()),
                "n = {n}"
            );
            assert_eq!(
                dot(&x, &y).to_bits(),
                dot_portable(&x, &y).to_bits(),
                "n = {n}"
            );
            let mut z = y.clone();
            sub_scaled(&mut z, 0.5, &x);
            for i in 0..n {
                assert_eq!(z[i], y[i] - 0.5 * x[i]);
            }
        }
    }
}
