//! Where the work runs: the backend chosen once per choice and process (a GPU context is
//! costly to create), and the command line's retry on the CPU after a GPU failure.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;

use divnet::{Backend, BackendChoice, BackendSelection};

/// The process that first asked divnet for work (0 before): a forked child inherits it.
static WORKING_PID: AtomicU32 = AtomicU32::new(0);

/// Refuses work in a process forked from one that already used divnet: the worker threads of
/// its thread pool (and a GPU device's) were started in the parent and do not exist in the
/// child, where the first parallel step would wait for them forever. A process forked before
/// any use works normally. Every entry point calls this first.
pub fn check_process(py: Python<'_>) -> PyResult<()> {
    let pid = std::process::id();
    match WORKING_PID.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => Ok(()),
        Err(first) if first == pid => Ok(()),
        Err(first) => Err(crate::errors::forked(
            py,
            format!(
                "this process ({pid}) was forked from one that had already used divnet \
                 ({first}), whose worker threads do not survive a fork: start worker \
                 processes with multiprocessing's \"spawn\" or \"forkserver\" method, or use \
                 divnet in the workers only"
            ),
        )),
    }
}

/// Backends already selected in this process, by choice.
static SELECTED: Mutex<Vec<(BackendChoice, BackendSelection)>> = Mutex::new(Vec::new());

/// [`Backend::select`], remembered: the same choice gives the same backend (and GPU context)
/// for the rest of the process.
pub fn select(choice: BackendChoice) -> divnet::Result<BackendSelection> {
    let mut selected = SELECTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = selected.iter().find(|(c, _)| *c == choice) {
        return Ok(s.clone());
    }
    let selection = Backend::select(choice)?;
    selected.push((choice, selection.clone()));
    Ok(selection)
}

/// What the user should hear about the backend: which one ran and why, and a GPU failure
/// that sent the work to the CPU.
#[derive(Default)]
pub struct BackendLog {
    /// "backend: ..." as the command line prints it.
    pub reason: Option<String>,
    /// Set when the work failed on the GPU and ran again on the CPU.
    pub fallback: Option<String>,
}

/// Selects the backend for `choice` and runs `work` on it. As on the command line, a GPU
/// device error under `auto` runs the work again on the CPU (and says so in the log); with
/// `gpu` the error stands.
pub fn run<T>(
    choice: BackendChoice,
    log: &mut BackendLog,
    mut work: impl FnMut(&Backend) -> divnet::Result<T>,
) -> divnet::Result<T> {
    let selection = select(choice)?;
    log.reason = Some(format!("backend: {}", selection.reason));
    match work(&selection.backend) {
        Err(divnet::Error::Gpu(e))
            if choice == BackendChoice::Auto && selection.backend.gpu().is_some() =>
        {
            log.fallback = Some(format!(
                "backend: the GPU failed ({e}); continuing on the CPU"
            ));
            work(&Backend::Cpu)
        }
        other => other,
    }
}
