//! Fusion assembly on the GPU: the right-hand side `R = [G_YP; s_P^T] W_P^T` and the two
//! quadratic forms of the reconstruction error, as gathered products in WGSL
//! (`shaders/fusion.wgsl`). CPU twin: [`crate::cpu::fusion::assemble`].
//!
//! The host uploads rows of the augmented Gram matrix of the centred activations,
//! `[[G_c, 0], [0, m]]` with `G_c = G - s s^T / m` (the rows it needs, centred and converted
//! to f32 in the same pass), and rows of `W~ = [W, b]`, and adds the means' share of `R` and
//! of the energies back in f64 (so that the products' rounding is relative to the centred
//! system the solve uses, not to a mean that may be 10^4 times the spread); the shader
//! gathers the columns. Each operand is uploaded once per block and serves every column set;
//! the device buffers are made once and rewritten, and each panel of rows is one submit and
//! one readback of all its products.
//! Products run in compensated f32: G~ as g1 + g2 (12 leading bits, then the rest), W as
//! w1 + w2 (12 bits each), so that the leading products are exact and summed with TwoSum
//! (see the shader). Sums over blocks accumulate in f64 on the host.
//!
//! Precision (measured on lavapipe): R within ~4e-11 of the f64 CPU twin (plain f32:
//! ~9e-8). The reported error is a small difference of large energies,
//! `||Z-Z'||^2 = tr(W_P G_PP W_P^T) - <X, R> - ridge ||X||^2`, so it keeps a floor: ~3e-6
//! relative here (plain f32: ~2e-4, erratic); at 1e-5 it agrees with the CPU to ~1%, at
//! 1e-4 to 0.05%. Both backends are then limited by the statistics themselves (f32
//! products): see [`crate::fusion::FusedLayer::relative_error`].

use faer::Mat;
use rayon::prelude::*;

use super::context::{Binding, GpuContext, ShaderEntry};
use super::readback::{Readback, Region};
use crate::error::{Error, Result};
use crate::types::{FusionSystem, GramStats, NextLayer, RowGroup};

const PRODUCT: ShaderEntry = ShaderEntry {
    key: "fusion::gathered_product",
    source: include_str!("../../shaders/fusion.wgsl"),
    entry_point: "gathered_product",
    groups: &[PRODUCT_GROUP],
};
/// params, G~ panel, W~ block, gathered columns, output, opaque one.
const PRODUCT_GROUP: &[Binding] = &[
    Binding::Uniform,
    Binding::Storage,
    Binding::Storage,
    Binding::Storage,
    Binding::StorageMut,
    Binding::Storage,
];

/// Output rows and columns per workgroup (see the shader).
const TILE: usize = 64;
/// Products per panel at most: the right-hand side and the kept energy share the panel of
/// kept rows.
const JOBS: usize = 2;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n_out: u32,
    ld_g: u32,
    ld_w: u32,
    _pad: [u32; 3],
}

/// What to do with one gathered product block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Store it into the right-hand side.
    Rhs,
    /// Add `sum_{i,o} out[i, o] W~[o, row_i]` to the kept-part energy.
    KeptEnergy,
    /// The same, into the dropped-part energy.
    DroppedEnergy,
}

/// One product over a panel of rows: which gathered columns (0: kept, 1: dropped), how
/// many, and where it goes.
type Job = (usize, usize, Sink);

/// `x` with its mantissa cut to 12 significant bits (exact: a product of two such values
/// fits in f32's 24).
fn lead12(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & !0xfff)
}

/// GPU version of [`crate::cpu::fusion::assemble`], same inputs, checks and output. Blocks are
/// sized to `ctx.max_binding_bytes()`; one row of `G~` (n+1 floats) must fit in a binding.
///
/// Every device buffer is made once and rewritten per block; each panel of rows of `G~`
/// is one submit (all its products) and one readback (all their outputs).
pub fn assemble(
    ctx: &GpuContext,
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
) -> Result<FusionSystem> {
    assemble_stacked(ctx, stats, keep, dropped, next, &[next.n_out])
}

/// GPU version of [`crate::cpu::fusion::assemble_stacked`]: several next layers stacked in
/// `next`, `row_groups` rows each, with each layer's energies apart.
pub fn assemble_stacked(
    ctx: &GpuContext,
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
    row_groups: &[usize],
) -> Result<FusionSystem> {
    crate::fusion::check_assembly(stats, keep, dropped, &next)?;
    crate::types::check_row_groups(row_groups, next.n_out)?;
    assemble_checked(ctx, stats, keep, dropped, next, row_groups)
}

/// [`assemble_stacked`] on inputs already checked ([`crate::fusion::fuse_next_layer`] checks
/// them as it derives `dropped`).
pub(crate) fn assemble_checked(
    ctx: &GpuContext,
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
    row_groups: &[usize],
) -> Result<FusionSystem> {
    let n = stats.gram.nrows();
    let k = keep.len();
    let n_out = next.n_out;
    let ld = n + 1;
    // Every operand holds pairs of f32 (split values, or sum and correction): 8 bytes each.
    let max_pairs = (ctx.max_binding_bytes() / 8) as usize;
    if ld > max_pairs {
        return Err(Error::Gpu(format!(
            "fusion: one row of the Gram matrix ({ld} split float pairs) exceeds the largest \
             storage binding ({} bytes)",
            ctx.max_binding_bytes()
        )));
    }
    let max_groups = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let max_extent = (max_groups * TILE).max(TILE);

    let mut aug_keep = keep.to_vec();
    aug_keep.push(n);
    let to_u32 = |v: &[usize]| v.iter().map(|&i| i as u32).collect::<Vec<u32>>();
    // [kept + const, dropped]: the gathered column sets of the jobs.
    let mut columns = vec![ctx.storage_buffer_init("fusion kept columns", &to_u32(&aug_keep))?];
    if !dropped.is_empty() {
        columns.push(ctx.storage_buffer_init("fusion dropped columns", &to_u32(dropped))?);
    }
    let pipeline = ctx.pipeline(PRODUCT)?;
    // 1.0 that the shader's compiler cannot see (keeps TwoSum from being simplified away).
    let one_buf = ctx.storage_buffer_init("fusion opaque one", &[1.0f32])?;

    // Output columns per block: as many rows of W~ as a binding holds, whole tiles.
    let mut oc = n_out.min(max_pairs / ld).min(max_extent);
    if oc > TILE {
        oc = oc / TILE * TILE;
    }
    // The row groups: kept rows (right-hand side over the dropped columns, kept energy over
    // the kept ones), dropped rows (dropped energy).
    let mut groups: Vec<(&[usize], Vec<Job>)> = Vec::new();
    let mut kept_jobs = vec![(0, k + 1, Sink::KeptEnergy)];
    if !dropped.is_empty() {
        kept_jobs.insert(0, (1, dropped.len(), Sink::Rhs));
        groups.push((dropped, vec![(1, dropped.len(), Sink::DroppedEnergy)]));
    }
    groups.insert(0, (&aug_keep, kept_jobs));
    let panel_rows = |rows: usize| {
        rows.min(max_pairs / ld)
            .min(max_pairs / oc.max(1))
            .min(max_extent)
            .max(1)
    };
    let pr = groups
        .iter()
        .map(|(r, _)| panel_rows(r.len()))
        .max()
        .unwrap_or(1);

    // The device buffers, made once: W~ block, G~ panel, one output window per job.
    let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
    let window = ((pr * oc * 8) as u64).div_ceil(align) * align;
    let w_buf = ctx.storage_buffer("fusion W~ block", (oc * ld * 8) as u64)?;
    let g_buf = ctx.storage_buffer("fusion G~ panel", (pr * ld * 8) as u64)?;
    let out_buf = ctx.storage_buffer("fusion products", window * JOBS as u64)?;
    let mut params = Vec::with_capacity(JOBS);
    let mut binds = Vec::with_capacity(JOBS);
    for slot in 0..JOBS {
        let p = ctx.buffer(
            "fusion params",
            std::mem::size_of::<Params>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            false,
        )?;
        // Per column set: the same buffers, this slot's output window.
        let per_columns = columns
            .iter()
            .map(|idx| {
                ctx.bind_group(
                    "fusion bind group",
                    PRODUCT_GROUP,
                    &[
                        p.as_entire_buffer_binding(),
                        g_buf.as_entire_buffer_binding(),
                        w_buf.as_entire_buffer_binding(),
                        idx.as_entire_buffer_binding(),
                        wgpu::BufferBinding {
                            buffer: &out_buf,
                            offset: slot as u64 * window,
                            size: std::num::NonZeroU64::new(window),
                        },
                        one_buf.as_entire_buffer_binding(),
                    ],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        params.push(p);
        binds.push(per_columns);
    }
    let readback = Readback::new(ctx, window * JOBS as u64)?;

    let mut rhs = Mat::<f64>::zeros(k + 1, n_out);
    // Per output row of W, so that stacked next layers get their energies apart.
    let mut kept_energy = vec![0.0f64; n_out];
    let mut dropped_energy = vec![0.0f64; n_out];
    let w_aug = |o: usize, c: usize| -> f32 {
        if c < n {
            next.weight[o * n + c]
        } else {
            next.bias.map_or(0.0, |b| b[o])
        }
    };
    // f64 -> (g1, g2): g1 its 12 leading significant bits, g2 = f32(v - g1).
    let split = |v: f64| -> [f32; 2] {
        let g1 = lead12(v as f32);
        [g1, (v - g1 as f64) as f32]
    };
    // The products are taken about the means: the device gets the augmented Gram matrix of
    // the centred activations, [[G_c, 0], [0, m]] with G_c = G - s s^T / m (centred here in
    // f64), and the host adds the means' share back in f64 below. Uncentred, a neuron whose
    // mean is 10^4 times its spread has G ~ 10^8 G_c, and the products' ~4e-11 relative
    // error became ~4e-3 of the centred system the solve works on (a review measured fused
    // layers 9 times worse than least squares, with a reported error of 0).
    let m = stats.samples as f64;
    let s = &stats.col_sums;
    let centring = |i: usize, j: usize| if m > 0.0 { s[i] * s[j] / m } else { 0.0 };
    let g_row = |r: usize, dst: &mut [[f32; 2]]| {
        if r < n {
            // G is symmetric: row r is column r, contiguous in faer's column-major storage.
            for (j, (d, &v)) in dst.iter_mut().zip(stats.gram.col(r).iter()).enumerate() {
                *d = split(v - centring(r, j));
            }
            dst[n] = [0.0; 2];
        } else {
            dst[..n].fill([0.0; 2]);
            dst[n] = split(m);
        }
    };

    let mut host_block: Vec<[f32; 2]> = Vec::new();
    let mut o0 = 0;
    while o0 < n_out {
        let ob = oc.min(n_out - o0);
        host_block.clear();
        host_block.resize(ob * ld, [0.0; 2]);
        host_block
            .par_chunks_mut(ld)
            .enumerate()
            .for_each(|(i, row)| {
                for (c, d) in row.iter_mut().enumerate() {
                    let w = w_aug(o0 + i, c);
                    let w1 = lead12(w);
                    *d = [w1, w - w1];
                }
            });
        ctx.write_buffer(&w_buf, 0, bytemuck::cast_slice(&host_block));

        for (rows, jobs) in &groups {
            let pr = panel_rows(rows.len());
            let mut r0 = 0;
            while r0 < rows.len() {
                let rb = pr.min(rows.len() - r0);
                host_block.clear();
                host_block.resize(rb * ld, [0.0; 2]);
                host_block
                    .par_chunks_mut(ld)
                    .zip(&rows[r0..r0 + rb])
                    .for_each(|(dst, &r)| g_row(r, dst));
                ctx.write_buffer(&g_buf, 0, bytemuck::cast_slice(&host_block));
                let mut encoder = ctx.encoder("fusion");
                for (slot, &(cols, count, _)) in jobs.iter().enumerate() {
                    let p = Params {
                        rows: rb as u32,
                        cols: count as u32,
                        n_out: ob as u32,
                        ld_g: ld as u32,
                        ld_w: ld as u32,
                        _pad: [0; 3],
                    };
                    ctx.write_buffer(&params[slot], 0, bytemuck::bytes_of(&p));
                    let bind = &binds[slot][cols];
                    ctx.compute_pass(&mut encoder, "fusion gathered product", |pass| {
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, bind, &[]);
                        pass.dispatch_workgroups(
                            ob.div_ceil(TILE) as u32,
                            rb.div_ceil(TILE) as u32,
                            1,
                        );
                    });
                }
                ctx.submit("fusion dispatch", encoder)?;
                let regions: Vec<Region> = (0..jobs.len())
                    .map(|slot| Region {
                        buffer: &out_buf,
                        offset: slot as u64 * window,
                        bytes: (rb * ob * 8) as u64,
                        granule: (ob * 8) as u64,
                    })
                    .collect();
                readback.read(ctx, &regions, &mut |slot, offset, bytes| {
                    let pairs: &[[f32; 2]] = bytemuck::cast_slice(bytes);
                    let first = r0 + (offset as usize) / (ob * 8);
                    let value = |p: &[f32; 2]| p[0] as f64 + p[1] as f64;
                    match jobs[slot].2 {
                        Sink::Rhs => {
                            for (i, row) in pairs.chunks_exact(ob).enumerate() {
                                for (o, p) in row.iter().enumerate() {
                                    rhs[(first + i, o0 + o)] = value(p);
                                }
                            }
                        }
                        sink => {
                            // Per output, over the rows in order: the same sums whatever
                            // the thread count.
                            let energy = if sink == Sink::KeptEnergy {
                                &mut kept_energy
                            } else {
                                &mut dropped_energy
                            };
                            energy[o0..o0 + ob]
                                .par_iter_mut()
                                .enumerate()
                                .for_each(|(o, e)| {
                                    for (i, row) in pairs.chunks_exact(ob).enumerate() {
                                        let r = rows[first + i];
                                        *e += value(&row[o]) * w_aug(o0 + o, r) as f64;
                                    }
                                });
                        }
                    }
                    Ok(())
                })?;
                r0 += rb;
            }
        }
        o0 += ob;
    }

    // The means' share, in f64, per output o: with r = W_P s_P and u = W_Y s_Y (row o),
    // R = [G_c,YP; 0] W_P^T + [s_Y; m] r / m, the kept energy gains u^2 / m + 2 b u and the
    // dropped one r^2 / m.
    if m > 0.0 {
        let weighted_sum = |o: usize, cols: &[usize]| -> f64 {
            let row = &next.weight[o * n..(o + 1) * n];
            cols.iter().map(|&c| row[c] as f64 * s[c]).sum()
        };
        for o in 0..n_out {
            let r = weighted_sum(o, dropped);
            for (i, &y) in keep.iter().enumerate() {
                rhs[(i, o)] += s[y] * r / m;
            }
            rhs[(k, o)] = r;
            dropped_energy[o] += r * r / m;
            let u = weighted_sum(o, keep);
            let b = next.bias.map_or(0.0, |b| b[o] as f64);
            kept_energy[o] += u * u / m + 2.0 * b * u;
        }
    }

    let groups = RowGroup::zip(
        row_groups,
        RowGroup::sums(row_groups, &kept_energy),
        RowGroup::sums(row_groups, &dropped_energy),
    );
    Ok(FusionSystem::from_groups(
        stats.augmented_block(keep),
        rhs,
        groups,
    ))
}
