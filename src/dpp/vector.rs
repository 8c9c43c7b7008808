//! The two vector kernels of the samplers' inner loops, `x . y` and `y -= a x`, in one
//! fixed order of operations that the compiler maps onto the widest vectors the CPU has.
//!
//! The crate is built for baseline x86-64 (SSE2: two f64 per instruction). These loops
//! run hundreds of thousands of times per sample on vectors of a few hundred values, so
//! on x86-64 a copy compiled for AVX2 is chosen at run time when the CPU has it. Both
//! copies perform the same operations in the same order (eight independent partial sums,
//! added pairwise), so a seed gives the same sample on every CPU.

/// Partial sums per dot product: one AVX2 register pair, or four SSE2 registers.
const LANES: usize = 8;

#[inline(always)]
fn dot_portable(x: &[f64], y: &[f64]) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
