//! [`GpuContext`]: one device, its queue, its limits and the compiled pipelines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A compute shader entry point, identified by a static key so that its pipeline is
/// compiled once per context and then reused.
#[derive(Clone, Copy, Debug)]
pub struct ShaderEntry {
    /// Cache key, unique per (source, entry point), e.g. `"gram::gram_tile"`.
    pub key: &'static str,
    /// The WGSL source (embedded with `include_str!`).
    pub source: &'static str,
    /// The entry point's name in `source`.
    pub entry_point: &'static str,
}

/// Owns a wgpu device and queue, reads their limits, and caches compute pipelines.
///
/// Create it from scratch with [`GpuContext::new`] (best adapter, honouring `WGPU_BACKEND`
/// and `WGPU_ADAPTER_NAME`), or wrap a device and queue that an application already owns
/// with [`GpuContext::from_device`].
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: Option<wgpu::AdapterInfo>,
    limits: wgpu::Limits,
    max_block_bytes: Option<u64>,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_description())
            .field("max_binding_bytes", &self.max_binding_bytes())
            .finish()
    }
}

impl GpuContext {
    /// Picks the best adapter and opens a device with the adapter's own limits.
    ///
    /// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`) restricts the backends;
    /// `WGPU_ADAPTER_NAME` picks the first adapter whose name contains it (case-insensitive).
    /// Otherwise discrete GPUs are preferred over integrated, then virtual, then software ones.
    pub async fn new_async() -> Result<Self> {
        // Compute needs Vulkan, Metal or DX12 unless the user asks otherwise: probing the GL
        // backend also wakes EGL, which prints Wayland/X11 complaints on headless machines.
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "no adapter on backends {backends:?} (install a Vulkan driver, e.g. mesa-vulkan-drivers)"
            )));
        }
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let wanted_lower = wanted.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lower))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}"
                        ))
                    })?
            }
            Err(_) => adapters
                .into_iter()
                .min_by_key(|a| device_type_rank(a.get_info().device_type))
                .expect("non-empty"),
        };
        let info = adapter.get_info();
        // The adapter's own limits, not wgpu's conservative defaults: large layers need the
        // biggest storage bindings the hardware allows.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("divnet"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("request_device on {}: {e}", info.name)))?;
        let mut ctx = Self::from_device(device, queue);
        ctx.adapter_info = Some(info);
        Ok(ctx)
    }

    /// Blocking wrapper around [`GpuContext::new_async`].
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Wraps a device and queue that another application already owns. divnet allocates
    /// its own buffers on that device and never changes its state otherwise.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let limits = device.limits();
        Self {
            device,
            queue,
            adapter_info: None,
            limits,
            max_block_bytes: None,
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// Records the adapter description of a context built with [`GpuContext::from_device`].
    pub fn with_adapter_info(mut self, info: wgpu::AdapterInfo) -> Self {
        self.adapter_info = Some(info);
        self
    }

    /// Caps the size of one output block or input chunk below the device limit. Tests use
    /// it to exercise tiling on small inputs; applications to bound memory use.
    pub fn with_max_block_bytes(mut self, bytes: u64) -> Self {
        self.max_block_bytes = Some(bytes.max(256));
        self
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The device's limits (as granted, which are the adapter's own for [`GpuContext::new`]).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The adapter, when known.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.adapter_info.as_ref()
    }

    /// "name (backend, device type)" or "application-provided device".
    pub fn adapter_description(&self) -> String {
        match &self.adapter_info {
            Some(i) => format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type),
            None => "application-provided device".to_string(),
        }
    }

    /// True when the adapter is a CPU implementation (lavapipe, WARP, SwiftShader): there the
    /// CPU twins with BLAS-class matmul are far faster than WGSL kernels.
    pub fn is_software(&self) -> bool {
        matches!(
            self.adapter_info.as_ref().map(|i| i.device_type),
            Some(wgpu::DeviceType::Cpu)
        )
    }

    /// The largest byte size one storage binding may have: the smaller of the device's
    /// `max_storage_buffer_binding_size` and `max_buffer_size`, and of the cap set with
    /// [`GpuContext::with_max_block_bytes`]. Rounded down to a multiple of 256.
    pub fn max_binding_bytes(&self) -> u64 {
        let device = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        let capped = self.max_block_bytes.map_or(device, |c| c.min(device));
        capped / 256 * 256
    }

    /// The compute pipeline for `entry`, compiled on first use and cached. The layout is
    /// derived from the shader, so bind groups use `pipeline.get_bind_group_layout(0)`.
    pub fn pipeline(&self, entry: ShaderEntry) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.pipelines.lock().expect("pipeline cache poisoned");
        if let Some(p) = cache.get(entry.key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry.key),
                source: wgpu::ShaderSource::Wgsl(entry.source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry.key),
                layout: None,
                module: &module,
                entry_point: Some(entry.entry_point),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling {}: {e}", entry.key)));
        }
        let pipeline = Arc::new(pipeline);
        cache.insert(entry.key, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer of `size` bytes (rounded up to 4), usable as copy source and
    /// destination. Fails with [`Error::Gpu`] when the allocation is refused.
    pub fn storage_buffer(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.checked(label, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4).div_ceil(4) * 4,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `data`.
    pub fn storage_buffer_init<T: bytemuck::Pod>(
        &self,
        label: &str,
        data: &[T],
    ) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(label, bytes.len() as u64)?;
        self.queue.write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// A uniform buffer holding `value`.
    pub fn uniform_buffer<T: bytemuck::Pod>(&self, label: &str, value: &T) -> Result<wgpu::Buffer> {
        let bytes = bytemuck::bytes_of(value);
        let buffer = self.checked(label, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (bytes.len() as u64).div_ceil(16) * 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.queue.write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// A bind group for `pipeline`'s group 0 with `buffers` at bindings 0, 1, 2, ...
    pub fn bind_buffers(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Copies `len` elements of type `T` starting at element `offset` of `buffer` back to the
    /// host. Waits for all submitted work first.
    pub async fn read_buffer_async<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        let elem = std::mem::size_of::<T>() as u64;
        let bytes = len as u64 * elem;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let padded = bytes.div_ceil(4) * 4;
        let staging = self.checked("readback", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("divnet readback"),
                size: padded,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(buffer, offset * elem, &staging, 0, padded);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures::channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait()?;
        rx.await
            .map_err(|_| Error::Gpu("readback callback dropped (device lost?)".into()))?
            .map_err(|e| Error::Gpu(format!("mapping readback buffer: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("reading mapped buffer: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Blocking wrapper around [`GpuContext::read_buffer_async`].
    pub fn read_buffer<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        pollster::block_on(self.read_buffer_async(buffer, offset, len))
    }

    /// Waits until the device has finished all submitted work.
    pub fn poll_wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))
    }

    /// Runs `make` inside out-of-memory and validation error scopes, so that a refused
    /// allocation or a binding over the limits becomes an [`Error::Gpu`] instead of a panic.
    pub fn checked<T>(&self, what: &str, make: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = make();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) => Err(Error::Gpu(format!("{what}: out of memory: {e}"))),
            (None, Some(e)) => Err(Error::Gpu(format!("{what}: {e}"))),
            (None, None) => Ok(value),
        }
    }
}

fn device_type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}
