//! Embedding divnet in an application that already has a wgpu device and its activations in
//! a GPU buffer: hand device, queue and buffer over, get the Gram matrix and the RBF kernel
//! back, and check them against the CPU twin.
//!
//! `cargo run --example embed` (needs a Vulkan/Metal/DX12 adapter; lavapipe will do).

use divnet::gpu::gram::{gram_from_buffer, RowFormat};
use divnet::gpu::rbf::rbf_from_buffer;
use divnet::kernel::{gram_stats, rbf_kernel, ActivationRows, Beta};
use divnet::{Backend, GpuContext};
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;

fn main() -> anyhow::Result<()> {
    // The application's own device, as any wgpu program would open it.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let info = adapter.get_info();
    println!("adapter: {} ({:?})", info.name, info.device_type);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my application"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    // Activations of a 300-neuron layer over 2000 samples, produced by the application and
    // already resident on the GPU (here simply uploaded).
    let (m, n) = (2000, 300);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let acts: Vec<f32> = (0..m * n)
        .map(|_| rng.random_range(0.0f32..1.0).max(0.3) - 0.3)
        .collect();
    let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("my activations"),
        contents: bytemuck::cast_slice(&acts),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    });

    // divnet works on the application's device; the buffer is read in place.
    let ctx = GpuContext::from_device(device.clone(), queue.clone()).with_adapter_info(info);
    let before = ctx.counters()?;
    let stats = gram_from_buffer(&ctx, &buffer, RowFormat::F32, m, n)?;
    let l = rbf_from_buffer(&ctx, &buffer, RowFormat::F32, m, n, Beta::Median, 1e-6)?;
    let cost = ctx.counters()?.since(&before);
    println!("G: {n} x {n}, L: {n} x {n}, beta = {:e}", l.beta);
    // The activations stay where they are: what comes back is the two results, once each.
    println!(
        "{} readbacks ({:.1} MB), {} bytes uploaded, {} submits",
        cost.readbacks,
        cost.readback_bytes as f64 / 1e6,
        cost.upload_bytes,
        cost.submits
    );

    // The CPU twin on the same numbers.
    let rows = ActivationRows::F32(&acts);
    let cpu_g = gram_stats(&Backend::Cpu, rows, n)?;
    let cpu_l = rbf_kernel(&Backend::Cpu, rows, n, Beta::Median, 1e-6)?;
    let mut g_err: f64 = 0.0;
    let mut g_max: f64 = 0.0;
    let mut l_err: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            g_err = g_err.max((stats.gram[(i, j)] - cpu_g.gram[(i, j)]).abs());
            g_max = g_max.max(cpu_g.gram[(i, j)].abs());
            l_err = l_err.max((l.matrix[(i, j)] - cpu_l.matrix[(i, j)]).abs());
        }
    }
    println!("max |G_gpu - G_cpu| / max|G| = {:.2e}", g_err / g_max);
    println!("max |L_gpu - L_cpu|          = {l_err:.2e}");
    anyhow::ensure!(
        g_err <= 1e-5 * g_max && l_err <= 1e-5,
        "GPU and CPU disagree"
    );
    println!("ok");
    Ok(())
}
