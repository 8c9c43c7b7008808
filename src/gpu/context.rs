//! [`GpuContext`]: one device, its queue, its limits, the compiled pipelines with their
//! explicit bind group layouts, the capture of device faults, and the counters of what was
//! done on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::counters::{Counters, GpuCounters, Stage};
use super::timing::PassTimer;
use crate::error::{Error, Result};

/// What one binding of a compute shader holds: the explicit bind group layouts are built
/// from these, so a bind group made for one pipeline serves every pipeline that declares the
/// same group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Storage,
    /// `var<storage, read_write>`.
    StorageMut,
}

/// A compute shader entry point, identified by a static key so that its pipeline is
/// compiled once per context and then reused.
#[derive(Clone, Copy, Debug)]
pub struct ShaderEntry {
    /// Cache key, unique per (source, entry point), e.g. `"gram::gram_tiles::f32"`.
    pub key: &'static str,
    /// The WGSL source (embedded with `include_str!`).
    pub source: &'static str,
    /// The entry point's name in `source`.
    pub entry_point: &'static str,
    /// The bind groups of the pipeline layout, in order; each lists its bindings 0, 1, ...
    pub groups: &'static [&'static [Binding]],
}

/// The memory the statistics pass's accumulators may take on a device unless told otherwise
/// ([`GpuContext::with_memory_budget`]): 4 GiB. wgpu does not say how much memory a device
/// has; 4 GiB fits the n x n accumulators of a 16384-neuron layer (Gram and distances) or a
/// 22000-neuron one (one of them) next to an application on an 8 GB card. Wider layers are
/// processed in groups of blocks, one pass over the activations per group. Besides the
/// accumulators, a pass holds two input chunks of at most 64 MiB each on the device.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;

/// Storage buffers per shader stage that divnet's kernels need at most (the statistics'
/// `both_tiles`); a device opened with fewer gets an error naming the limit.
pub const MIN_STORAGE_BUFFERS_PER_STAGE: u32 = 6;

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
    memory_budget: Option<u64>,
    layouts: Mutex<HashMap<&'static [Binding], wgpu::BindGroupLayout>>,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
    /// The first uncaptured error or device loss on a device this context opened itself
    /// (wgpu's default handler would panic): reported as [`Error::Gpu`] by the next operation.
    fault: Arc<Mutex<Option<String>>>,
    counters: Counters,
    /// Created by [`GpuContext::enable_timing`] on a device with `TIMESTAMP_QUERY`.
    timer: OnceLock<PassTimer>,
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
                // Timestamps only where the adapter has them: `divnet bench` reports the
                // device's own time beside the wall time.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("request_device on {}: {e}", info.name)))?;
        let mut ctx = Self::from_device(device, queue);
        ctx.adapter_info = Some(info);
        // Only on our own device: an application's device keeps the handlers it chose.
        let fault = ctx.fault.clone();
        ctx.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| e.to_string().replace('\n', " "));
            }));
        let fault = ctx.fault.clone();
        ctx.device
            .set_device_lost_callback(move |reason, message: String| {
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
            });
        Ok(ctx)
    }

    /// Blocking wrapper around [`GpuContext::new_async`].
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Wraps a device and queue that another application already owns. divnet allocates
    /// its own buffers on that device and never changes its state otherwise.
    ///
    /// What the application should know:
    /// - Limits: divnet's kernels bind up to 6 storage buffers per shader stage
    ///   ([`MIN_STORAGE_BUFFERS_PER_STAGE`]; `wgpu::Limits::default()` has 8, the downlevel
    ///   defaults 4); a device with fewer gets an error naming the limit at the first
    ///   kernel. Storage bindings and workgroup sizes are read from `device.limits()`.
    /// - Errors: divnet takes its own validation errors through error scopes, but installs no
    ///   handler on a device it does not own. A device lost, or a buffer the application
    ///   destroys while divnet reads it, reaches the application's
    ///   `on_uncaptured_error` / device-lost callbacks (wgpu's default panics), and divnet's
    ///   call fails with an [`Error::Gpu`].
    /// - Pipelines are cached by [`ShaderEntry::key`], in one name space with divnet's own:
    ///   give an application's shaders keys of their own.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let limits = device.limits();
        Self {
            device,
            queue,
            adapter_info: None,
            limits,
            max_block_bytes: None,
            memory_budget: None,
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            fault: Arc::new(Mutex::new(None)),
            counters: Counters::default(),
            timer: OnceLock::new(),
        }
    }

    /// Records the adapter description of a context built with [`GpuContext::from_device`].
    pub fn with_adapter_info(mut self, info: wgpu::AdapterInfo) -> Self {
        self.adapter_info = Some(info);
        self
    }

    /// Caps the size of one input chunk or accumulator block below the device limit (an
    /// accumulator block never goes below one 64 x 64 output tile). Tests use it to exercise
    /// tiling on small inputs; applications to bound memory use.
    pub fn with_max_block_bytes(mut self, bytes: u64) -> Self {
        self.max_block_bytes = Some(bytes.max(256));
        self
    }

    /// Sets the device memory the statistics pass's accumulators may take (see
    /// [`DEFAULT_MEMORY_BUDGET`]). A smaller budget splits the result into more groups of
    /// blocks, each costing one more pass over the activations.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// The device memory the statistics pass's accumulators may take.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget.unwrap_or(DEFAULT_MEMORY_BUDGET)
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

    /// The largest byte size one storage binding may have on this device: the smaller of
    /// `max_storage_buffer_binding_size` and `max_buffer_size`, rounded down to a multiple
    /// of 256.
    pub fn binding_limit(&self) -> u64 {
        let device = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        device / 256 * 256
    }

    /// [`GpuContext::binding_limit`], lowered to the cap set with
    /// [`GpuContext::with_max_block_bytes`]: the size of one input chunk or output block.
    pub fn max_binding_bytes(&self) -> u64 {
        let device = self.binding_limit();
        let capped = self.max_block_bytes.map_or(device, |c| c.min(device));
        capped / 256 * 256
    }

    /// What this context has done so far (see [`GpuCounters`]). With timing on, the device
    /// time of the passes timed since the last call is read back first (a wait).
    pub fn counters(&self) -> Result<GpuCounters> {
        if let Some(timer) = self.timer.get() {
            let (ns, passes) = timer.read_out(&self.device, &self.queue)?;
            self.counters.gpu_time(ns, passes);
        }
        Ok(self.counters.snapshot())
    }

    /// Times every compute pass from now on with timestamp queries, so that
    /// [`GpuCounters::gpu_seconds`] holds the device's own time. Returns false (and changes
    /// nothing) when the device lacks `TIMESTAMP_QUERY`.
    pub fn enable_timing(&self) -> bool {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return false;
        }
        self.timer
            .get_or_init(|| PassTimer::new(&self.device, &self.queue));
        true
    }

    pub(crate) fn count(&self) -> &Counters {
        &self.counters
    }

    /// The bind group layout of one group of bindings, created once per context.
    fn layout(&self, bindings: &'static [Binding]) -> wgpu::BindGroupLayout {
        let mut layouts = self.layouts.lock().expect("layout cache poisoned");
        layouts
            .entry(bindings)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match b {
                                Binding::Uniform => wgpu::BufferBindingType::Uniform,
                                Binding::Storage => {
                                    wgpu::BufferBindingType::Storage { read_only: true }
                                }
                                Binding::StorageMut => {
                                    wgpu::BufferBindingType::Storage { read_only: false }
                                }
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                self.device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: None,
                        entries: &entries,
                    })
            })
            .clone()
    }

    /// The compute pipeline for `entry`, compiled on first use and cached, with the explicit
    /// layout its [`ShaderEntry::groups`] describe.
    pub fn pipeline(&self, entry: ShaderEntry) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self
            .pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .get(entry.key)
        {
            return Ok(p.clone());
        }
        let storage = entry
            .groups
            .iter()
            .flat_map(|g| g.iter())
            .filter(|b| matches!(b, Binding::Storage | Binding::StorageMut))
            .count() as u32;
        let allowed = self.device.limits().max_storage_buffers_per_shader_stage;
        if storage > allowed {
            return Err(Error::Gpu(format!(
                "{} binds {storage} storage buffers, but the device allows {allowed} per shader \
                 stage: open it with max_storage_buffers_per_shader_stage of at least \
                 {MIN_STORAGE_BUFFERS_PER_STAGE} (wgpu::Limits::default() has 8)",
                entry.key
            )));
        }
        let layouts: Vec<wgpu::BindGroupLayout> =
            entry.groups.iter().map(|g| self.layout(g)).collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry.key),
                source: wgpu::ShaderSource::Wgsl(entry.source.into()),
            });
        let group_refs: Vec<Option<&wgpu::BindGroupLayout>> = layouts.iter().map(Some).collect();
        let layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry.key),
                bind_group_layouts: &group_refs,
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry.key),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry.entry_point),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling {}: {e}", entry.key)));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .insert(entry.key, pipeline.clone());
        Ok(pipeline)
    }

    /// A bind group for a group declared as `bindings`, with `buffers` at bindings 0, 1, ...
    /// (whole buffers, or windows of them).
    pub fn bind_group(
        &self,
        label: &str,
        bindings: &'static [Binding],
        buffers: &[wgpu::BufferBinding<'_>],
    ) -> Result<wgpu::BindGroup> {
        let layout = self.layout(bindings);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            })
            .collect();
        self.checked(label, || {
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &layout,
                entries: &entries,
            })
        })
    }

    /// [`GpuContext::bind_group`] over whole buffers.
    pub fn bind_buffers(
        &self,
        label: &str,
        bindings: &'static [Binding],
        buffers: &[&wgpu::Buffer],
    ) -> Result<wgpu::BindGroup> {
        let whole: Vec<wgpu::BufferBinding> = buffers
            .iter()
            .map(|b| b.as_entire_buffer_binding())
            .collect();
        self.bind_group(label, bindings, &whole)
    }

    /// Records a compute pass on `encoder`; with timing on, the pass is timed.
    pub fn compute_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &str,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) {
        match self.timer.get() {
            Some(timer) => timer.pass(encoder, label, record),
            None => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: None,
                });
                record(&mut pass);
            }
        }
    }

    /// A command encoder.
    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Submits `encoder` (counted) and returns the submission, inside a validation scope so
    /// that a bad command becomes an [`Error::Gpu`] naming `what`.
    pub fn submit(
        &self,
        what: &str,
        encoder: wgpu::CommandEncoder,
    ) -> Result<wgpu::SubmissionIndex> {
        let start = Instant::now();
        let index = self.checked(what, || self.queue.submit([encoder.finish()]))?;
        self.counters.submit();
        self.counters.time(Stage::Submit, start);
        Ok(index)
    }

    /// Blocks until `submission` (or, for `None`, everything submitted so far) has finished
    /// on the device and its callbacks have run.
    pub fn wait_for(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check_fault()?;
        let start = Instant::now();
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: submission,
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        self.counters.wait();
        self.counters.time(Stage::Wait, start);
        self.check_fault()
    }

    /// Creates a buffer inside out-of-memory and validation scopes (counted).
    pub fn buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped_at_creation: bool,
    ) -> Result<wgpu::Buffer> {
        self.buffer_scoped(label, size, usage, mapped_at_creation)
            .map_err(|r| r.error)
    }

    /// [`GpuContext::buffer`], telling an out-of-memory refusal from the others.
    pub(crate) fn buffer_scoped(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped_at_creation: bool,
    ) -> std::result::Result<wgpu::Buffer, Refusal> {
        let size = size.max(4).div_ceil(4) * 4;
        let buffer = self.scoped(label, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation,
            })
        })?;
        self.counters.buffer(size);
        Ok(buffer)
    }

    /// A storage buffer of `size` bytes (rounded up to 4), usable as copy source and
    /// destination. Fails with [`Error::Gpu`] when the allocation is refused.
    pub fn storage_buffer(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            false,
        )
    }

    /// A storage buffer holding `data`.
    pub fn storage_buffer_init<T: bytemuck::Pod>(
        &self,
        label: &str,
        data: &[T],
    ) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(label, bytes.len() as u64)?;
        self.write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// A uniform buffer holding `value`.
    pub fn uniform_buffer<T: bytemuck::Pod>(&self, label: &str, value: &T) -> Result<wgpu::Buffer> {
        let bytes = bytemuck::bytes_of(value);
        let buffer = self.buffer(
            label,
            (bytes.len() as u64).div_ceil(16) * 16,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            false,
        )?;
        self.write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// Writes `bytes` into `buffer` at `offset` through the queue (counted as an upload). The
    /// write lands before the commands of the next submit and after every earlier one.
    pub fn write_buffer(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.queue.write_buffer(buffer, offset, bytes);
        self.counters.upload(bytes.len() as u64);
    }

    /// Copies `len` elements of type `T` starting at element `offset` of `buffer` back to the
    /// host (one readback, through a staging buffer made for it). Waits for all submitted
    /// work first.
    pub fn read_buffer<T: bytemuck::Pod>(
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
        let readback = super::readback::Readback::new(self, bytes)?;
        let mut out: Vec<T> = Vec::with_capacity(len);
        let region = super::readback::Region {
            buffer,
            offset: offset * elem,
            bytes,
            granule: elem,
        };
        readback.read(self, &[region], &mut |_, _, data| {
            out.extend_from_slice(bytemuck::cast_slice(data));
            Ok(())
        })?;
        Ok(out)
    }

    /// Waits until the device has finished all submitted work.
    pub fn poll_wait(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// The recorded uncaptured error or device loss, if any, as an [`Error::Gpu`].
    pub(crate) fn check_fault(&self) -> Result<()> {
        let slot = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(e) => Err(Error::Gpu(e.clone())),
            None => Ok(()),
        }
    }

    /// Runs `make` inside out-of-memory and validation error scopes, so that a refused
    /// allocation or a binding over the limits becomes an [`Error::Gpu`] instead of a panic.
    pub fn checked<T>(&self, what: &str, make: impl FnOnce() -> T) -> Result<T> {
        self.scoped(what, make).map_err(|r| r.error)
    }

    /// [`GpuContext::checked`], telling an out-of-memory refusal from the others.
    pub(crate) fn scoped<T>(
        &self,
        what: &str,
        make: impl FnOnce() -> T,
    ) -> std::result::Result<T, Refusal> {
        self.check_fault().map_err(|e| Refusal {
            out_of_memory: false,
            error: Error::Gpu(format!(
                "{what}: {}",
                e.to_string().trim_start_matches("GPU: ")
            )),
        })?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = make();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) => Err(Refusal {
                out_of_memory: true,
                error: Error::Gpu(format!("{what}: out of memory: {e}")),
            }),
            (None, Some(e)) => Err(Refusal {
                out_of_memory: false,
                error: Error::Gpu(format!("{what}: {e}")),
            }),
            (None, None) => Ok(value),
        }
    }
}

/// Why [`GpuContext::scoped`] failed: the error, and whether it was the device running out
/// of memory (which a caller may answer by asking for less).
pub(crate) struct Refusal {
    pub(crate) out_of_memory: bool,
    pub(crate) error: Error,
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
