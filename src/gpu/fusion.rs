//! Fusion assembly on the GPU: the right-hand side `R = [G_YP; s_P^T] W_P^T` and the two
//! quadratic forms of the reconstruction error, as gathered products in WGSL
//! (`shaders/fusion.wgsl`). CPU twin: [`crate::cpu::fusion::assemble`].
//!
//! The host uploads rows of the augmented Gram matrix `G~ = [[G, s], [s^T, m]]` (the rows
//! it needs, converted to f32 in the same pass) and rows of `W~ = [W, b]`; the shader
//! gathers the columns. Each operand is uploaded once per block and serves every column set.
//! Products run in compensated f32: G~ as g1 + g2 (12 leading bits, then the rest), W as
//! w1 + w2 (12 bits each), so that the leading products are exact and summed with TwoSum
//! (see the shader). Sums over blocks accumulate in f64 on the host.
//!
//! Precision (measured on lavapipe): R within ~4e-11 of the f64 CPU twin (plain f32:
//! ~9e-8). The reported error is a small difference of large energies,
//! `||Z-Z'||^2 = tr(W_P G_PP W_P^T) - <X, R> - ridge ||X||^2`, so it keeps a floor: ~3e-6
//! relative here (plain f32: ~2e-4, erratic); at 1e-5 it agrees with the CPU to ~1%, at
//! 1e-4 to 0.05%. The CPU twin (f64) resolves errors down to ~1e-8.

use faer::Mat;

use super::context::{Binding, GpuContext, ShaderEntry};
use crate::error::{Error, Result};
use crate::types::{FusionSystem, GramStats, NextLayer};

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
#[derive(Clone, Copy)]
enum Sink {
    /// Store it into the right-hand side.
    Rhs,
    /// Add `sum_{i,o} out[i, o] W~[o, row_i]` to the kept-part energy.
    KeptEnergy,
    /// The same, into the dropped-part energy.
    DroppedEnergy,
}

/// One product over a row group: the gathered columns, how many, and where it goes.
type Job<'a> = (&'a wgpu::Buffer, usize, Sink);

/// `x` with its mantissa cut to 12 significant bits (exact: a product of two such values
/// fits in f32's 24).
fn lead12(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & !0xfff)
}

/// GPU version of [`crate::cpu::fusion::assemble`], same inputs and output. Blocks are
/// sized to `ctx.max_binding_bytes()`; one row of `G~` (n+1 floats) must fit in a binding.
pub fn assemble(
    ctx: &GpuContext,
    stats: &GramStats,
    keep: &[usize],
    dropped: &[usize],
    next: NextLayer<'_>,
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
    let idx_keep = ctx.storage_buffer_init("fusion kept columns", &to_u32(&aug_keep))?;
    let idx_drop = if dropped.is_empty() {
        None
    } else {
        Some(ctx.storage_buffer_init("fusion dropped columns", &to_u32(dropped))?)
    };
    let pipeline = ctx.pipeline(PRODUCT)?;
    // 1.0 that the shader's compiler cannot see (keeps TwoSum from being simplified away).
    let one_buf = ctx.storage_buffer_init("fusion opaque one", &[1.0f32])?;

    let mut rhs = Mat::<f64>::zeros(k + 1, n_out);
    let mut kept_energy = 0.0;
    let mut dropped_energy = 0.0;

    // Output columns per block: as many rows of W~ as a binding holds, whole tiles.
    let mut oc = n_out.min(max_pairs / ld).min(max_extent);
    if oc > TILE {
        oc = oc / TILE * TILE;
    }
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
    let g_row = |r: usize, dst: &mut Vec<[f32; 2]>| {
        if r < n {
            // G is symmetric: row r is column r, contiguous in faer's column-major storage.
            let col = stats.gram.col(r);
            dst.extend(col.iter().map(|&v| split(v)));
            dst.push(split(stats.col_sums[r]));
        } else {
            dst.extend(stats.col_sums.iter().map(|&v| split(v)));
            dst.push(split(stats.samples as f64));
        }
    };

    let mut o0 = 0;
    while o0 < n_out {
        let ob = oc.min(n_out - o0);
        let mut w_block: Vec<[f32; 2]> = Vec::with_capacity(ob * ld);
        for o in o0..o0 + ob {
            w_block.extend((0..ld).map(|c| {
                let w = w_aug(o, c);
                let w1 = lead12(w);
                [w1, w - w1]
            }));
        }
        let w_buf = ctx.storage_buffer_init("fusion W~ block", &w_block)?;
        drop(w_block);

        let mut groups: Vec<(&[usize], Vec<Job>)> = Vec::new();
        let mut kept_jobs = vec![(&idx_keep, k + 1, Sink::KeptEnergy)];
        if let Some(idx) = &idx_drop {
            kept_jobs.insert(0, (idx, dropped.len(), Sink::Rhs));
            groups.push((dropped, vec![(idx, dropped.len(), Sink::DroppedEnergy)]));
        }
        groups.insert(0, (&aug_keep, kept_jobs));

        for (rows, jobs) in &groups {
            let pr = rows
                .len()
                .min(max_pairs / ld)
                .min(max_pairs / ob)
                .min(max_extent)
                .max(1);
            let mut r0 = 0;
            while r0 < rows.len() {
                let rb = pr.min(rows.len() - r0);
                let mut g_block = Vec::with_capacity(rb * ld);
                for &r in &rows[r0..r0 + rb] {
                    g_row(r, &mut g_block);
                }
                let g_buf = ctx.storage_buffer_init("fusion G~ panel", &g_block)?;
                drop(g_block);
                let out_buf = ctx.storage_buffer("fusion product block", (rb * ob * 8) as u64)?;
                for &(idx, cols, sink) in jobs {
                    let params = Params {
                        rows: rb as u32,
                        cols: cols as u32,
                        n_out: ob as u32,
                        ld_g: ld as u32,
                        ld_w: ld as u32,
                        _pad: [0; 3],
                    };
                    let p_buf = ctx.uniform_buffer("fusion params", &params)?;
                    let bind = ctx.bind_buffers(
                        "fusion bind group",
                        PRODUCT_GROUP,
                        &[&p_buf, &g_buf, &w_buf, idx, &out_buf, &one_buf],
                    )?;
                    let mut encoder =
                        ctx.device()
                            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                                label: Some("fusion"),
                            });
                    {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("fusion gathered product"),
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, &bind, &[]);
                        pass.dispatch_workgroups(
                            ob.div_ceil(TILE) as u32,
                            rb.div_ceil(TILE) as u32,
                            1,
                        );
                    }
                    ctx.checked("fusion dispatch", || {
                        ctx.queue().submit([encoder.finish()]);
                    })?;
                    let pairs: Vec<[f32; 2]> = ctx.read_buffer(&out_buf, 0, rb * ob)?;
                    let block: Vec<f64> = pairs.iter().map(|p| p[0] as f64 + p[1] as f64).collect();
                    match sink {
                        Sink::Rhs => {
                            for i in 0..rb {
                                for o in 0..ob {
                                    rhs[(r0 + i, o0 + o)] = block[i * ob + o];
                                }
                            }
                        }
                        Sink::KeptEnergy | Sink::DroppedEnergy => {
                            let mut t = 0.0;
                            for i in 0..rb {
                                let r = rows[r0 + i];
                                for o in 0..ob {
                                    t += block[i * ob + o] * w_aug(o0 + o, r) as f64;
                                }
                            }
                            if matches!(sink, Sink::KeptEnergy) {
                                kept_energy += t;
                            } else {
                                dropped_energy += t;
                            }
                        }
                    }
                }
                r0 += rb;
            }
        }
        o0 += ob;
    }

    Ok(FusionSystem {
        lhs: stats.augmented_block(keep),
        rhs,
        kept_energy,
        dropped_energy,
    })
}
