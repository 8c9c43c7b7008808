//! What every subcommand shares: backend selection with a report, progress bars, timing.

use std::io::IsTerminal;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use divnet::io::npy::NpyRowReader;
use divnet::kernel::{
    layer_statistics, rbf_from_distances, Beta, LayerStatistics, RbfKernel, RowSource, StatsKind,
};
use divnet::select::{max_swaps, SwapSearch};
use divnet::{Backend, BackendChoice};
use indicatif::{ProgressBar, ProgressStyle};

/// The error chain on one line: "outer: inner: innermost".
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            if s.contains(&text) {
                continue;
            }
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s.replace('\n', " ")
}

/// `--backend auto|gpu|cpu` as clap sees it.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum BackendArg {
    /// The GPU if it is a real one, else the CPU.
    #[default]
    Auto,
    /// The GPU (any adapter, software ones included); fail without one.
    Gpu,
    /// The CPU.
    Cpu,
}

impl From<BackendArg> for BackendChoice {
    fn from(a: BackendArg) -> Self {
        match a {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Gpu => BackendChoice::Gpu,
            BackendArg::Cpu => BackendChoice::Cpu,
        }
    }
}

/// Resolves the backend and tells the user on stderr which one runs, and why.
pub fn select_backend(arg: BackendArg) -> anyhow::Result<Backend> {
    let sel = Backend::select(arg.into())?;
    eprintln!("backend: {}", sel.reason);
    Ok(sel.backend)
}

/// Runs `work` on `backend`. When it fails on the GPU with a device error (out of memory, a
/// lost device, a limit too small) and the user let divnet choose (`--backend auto`), says
/// so on stderr and runs it again on the CPU; with `--backend gpu` the error stands.
pub fn with_cpu_fallback<T>(
    arg: BackendArg,
    backend: &Backend,
    mut work: impl FnMut(&Backend) -> divnet::Result<T>,
) -> divnet::Result<T> {
    match work(backend) {
        Err(divnet::Error::Gpu(e))
            if matches!(arg, BackendArg::Auto) && backend.gpu().is_some() =>
        {
            eprintln!("backend: the GPU failed ({e}); continuing on the CPU");
            work(&Backend::Cpu)
        }
        other => other,
    }
}

/// "1 neuron", "2 neurons": `n` and `noun`, plural unless n is 1.
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Opens the activations in `path` for streaming (stage `open`: the header only; the data
/// is read by each pass) and says on stderr what they are.
pub fn open_activations(path: &Path, timer: &mut StageTimer) -> divnet::Result<NpyRowReader> {
    let reader = timer.try_stage("open", || NpyRowReader::open(path))?;
    eprintln!(
        "activations: {} x {} ({:?}{}) from {}",
        counted(reader.rows(), "sample"),
        counted(reader.width(), "neuron"),
        reader.dtype(),
        if reader.is_fortran_order() {
            ", Fortran order"
        } else {
            ""
        },
        path.display()
    );
    Ok(reader)
}

/// One pass over `reader` collecting `kind`, with a progress bar, on `backend` (falling
/// back to the CPU as [`with_cpu_fallback`] says).
pub fn activation_statistics(
    arg: BackendArg,
    backend: &Backend,
    reader: &mut NpyRowReader,
    kind: StatsKind,
) -> divnet::Result<LayerStatistics> {
    with_cpu_fallback(arg, backend, |b| {
        layer_statistics(b, reader, kind, &mut BarProgress::default())
    })
}

/// The RBF kernel over the neurons of the activations in `reader` (stage `read + rbf
/// kernel`: the pass reads the file), the beta used said on stderr.
pub fn activation_kernel(
    reader: &mut NpyRowReader,
    arg: BackendArg,
    backend: &Backend,
    beta: Beta,
    eps: f64,
    timer: &mut StageTimer,
) -> anyhow::Result<RbfKernel> {
    let path = reader.path().to_path_buf();
    let kernel = timer
        .try_stage("read + rbf kernel", || {
            let d = activation_statistics(arg, backend, reader, StatsKind::Distances)?
                .into_distances()?;
            rbf_from_distances(d, beta, eps)
        })
        .map_err(|e| naming_file(&path, e))?;
    eprintln!(
        "beta = {:.4e} ({beta}), eps = {:e}",
        kernel.beta, kernel.eps
    );
    Ok(kernel)
}

/// `e` as an error that names `path`: as it is when it names a file already (a read or
/// format error), else with the path before it.
pub fn naming_file(path: &Path, e: divnet::Error) -> anyhow::Error {
    match e {
        divnet::Error::Io { .. } | divnet::Error::Format { .. } => e.into(),
        other => anyhow::Error::from(other).context(path.display().to_string()),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Times named stages and prints each as it ends ("  gram        0.123 s").
#[derive(Default)]
pub struct StageTimer {
    stages: Vec<(String, f64)>,
}

impl StageTimer {
    /// Runs `f` as stage `name`, prints and records its duration.
    pub fn stage<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let secs = start.elapsed().as_secs_f64();
        eprintln!("  {name:<24} {secs:>9.3} s");
        self.stages.push((name.to_string(), secs));
        out
    }

    /// [`StageTimer::stage`] for work that can fail: a failed stage prints nothing, so that
    /// a run that fails while reading its inputs prints only its one error line.
    pub fn try_stage<T, E>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let out = f()?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!("  {name:<24} {secs:>9.3} s");
        self.stages.push((name.to_string(), secs));
        Ok(out)
    }

    /// The recorded stages, in order, as (name, seconds).
    pub fn stages(&self) -> &[(String, f64)] {
        &self.stages
    }
}

/// The library's [`divnet::compress::Progress`] drawn as one indicatif bar per stage on a
/// terminal. Elsewhere (a log file, nohup, a batch job) a bar draws nothing, so a stage that
/// runs longer than 5 s gets plain lines instead: at the first progress it makes past that
/// mark, every 30 s after, and when it ends. `DIVNET_PROGRESS_SECS=S` moves the first mark
/// to S seconds and the interval to 6 S; `off` (or `inf`) turns the lines off.
pub struct BarProgress {
    bar: Option<ProgressBar>,
    log: Option<StageLog>,
    /// When a stage off a terminal gets its first line, and then how often.
    log_after: std::time::Duration,
    log_every: std::time::Duration,
}

impl Default for BarProgress {
    fn default() -> Self {
        let after = match std::env::var("DIVNET_PROGRESS_SECS").ok().as_deref() {
            Some("off") => f64::INFINITY,
            Some(v) => v.parse::<f64>().ok().filter(|s| *s >= 0.0).unwrap_or(5.0),
            None => 5.0,
        };
        // Past what a Duration holds (infinity included): never.
        let seconds =
            |s: f64| std::time::Duration::try_from_secs_f64(s).unwrap_or(std::time::Duration::MAX);
        Self {
            bar: None,
            log: None,
            log_after: seconds(after),
            log_every: seconds(6.0 * after),
        }
    }
}

/// A stage followed by lines rather than a bar.
struct StageLog {
    stage: String,
    total: u64,
    done: u64,
    start: std::time::Instant,
    /// When the last line was printed; None before the first.
    last: Option<std::time::Instant>,
}

impl StageLog {
    fn line(&self, what: &str) {
        let percent = if self.total > 0 {
            format!(
                " {:.0}% ({}/{})",
                100.0 * self.done as f64 / self.total as f64,
                self.done,
                self.total
            )
        } else {
            String::new()
        };
        eprintln!(
            "{}: {what}{percent} after {:.1} s",
            self.stage,
            self.start.elapsed().as_secs_f64()
        );
    }
}

impl divnet::compress::Progress for BarProgress {
    fn start(&mut self, stage: &str, total: u64) {
        if std::io::stderr().is_terminal() {
            self.bar = Some(progress_bar(total, stage));
        } else {
            self.log = Some(StageLog {
                stage: stage.to_string(),
                total,
                done: 0,
                start: std::time::Instant::now(),
                last: None,
            });
        }
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(log) = &mut self.log {
            log.done += n;
            let due = match log.last {
                None => log.start.elapsed() >= self.log_after,
                Some(last) => last.elapsed() >= self.log_every,
            };
            if due {
                log.line("running,");
                log.last = Some(std::time::Instant::now());
            }
        }
    }
    fn note(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(mut log) = self.log.take() {
            // A stage that reports no steps (one solve) is whole once it ends.
            log.done = log.done.max(log.total);
            if log.last.is_some() || log.start.elapsed() >= self.log_after {
                log.line("done,");
            }
        }
    }
}

/// "N swaps in P passes over the rows" of a fusion-swap search.
pub fn swap_counts(search: &SwapSearch) -> String {
    format!(
        "{} swaps in {} passes over the rows",
        search.swaps, search.passes
    )
}

/// What to add when the cap stopped a fusion-swap search that kept `k` neurons (else
/// nothing).
pub fn swap_cap_note(search: &SwapSearch, k: usize) -> String {
    if search.capped {
        format!(
            "; stopped at the cap of {} swaps, with swaps still lowering the error",
            max_swaps(k)
        )
    } else {
        String::new()
    }
}

/// Parses "a,b,c" into values with `parse`, naming the option in errors.
pub fn parse_list<T>(
    option: &str,
    text: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .map(|s| {
            parse(s).ok_or_else(|| anyhow::anyhow!("{option}: invalid value {s:?} in {text:?}"))
        })
        .collect()
}

/// Checks a command's output files (`(option, path)`, absent options skipped) before any
/// work, so that a long run does not end on an unwritable path: each folder must exist and
/// take a new file, no output may be a folder or an existing read-only file, no two options
/// may name the same file (the second write would replace the first), and no output may be
/// one of the command's `inputs` (which it would replace: activations overwritten by a
/// report, a model by its compressed copy).
pub fn check_outputs(
    outputs: &[(&str, Option<&Path>)],
    inputs: &[(&str, Option<&Path>)],
) -> anyhow::Result<()> {
    let inputs: Vec<(&str, std::path::PathBuf)> = inputs
        .iter()
        .filter_map(|&(option, path)| Some((option, path?.canonicalize().ok()?)))
        .collect();
    let mut seen: Vec<(&str, std::path::PathBuf)> = Vec::new();
    for &(option, path) in outputs {
        let Some(path) = path else { continue };
        if path.as_os_str() == "-" {
            anyhow::bail!(
                "{option} -: outputs are files (written whole, then renamed into place), not \
                 standard output; name a file"
            );
        }
        divnet::io::atomic::check_writable(path).map_err(|e| anyhow::anyhow!("{option} {e}"))?;
        // The folder exists now, so it canonicalises; the file need not exist (a link that
        // does canonicalises to its target, which the rename would not replace, but the
        // user meant that file all the same).
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let resolved = path.canonicalize().unwrap_or_else(|_| {
            folder
                .canonicalize()
                .map(|f| f.join(path.file_name().unwrap_or_default()))
                .unwrap_or_else(|_| path.to_path_buf())
        });
        if let Some((input, _)) = inputs
            .iter()
            .find(|(_, p)| *p == resolved || same_file(p, path))
        {
            anyhow::bail!(
                "{option} {} is the input {input}: writing it would replace what the command \
                 reads; choose another path",
                path.display()
            );
        }
        if let Some((first, _)) = seen.iter().find(|(_, p)| *p == resolved) {
            anyhow::bail!(
                "{first} and {option} name the same file {}: one would replace the other",
                path.display()
            );
        }
        seen.push((option, resolved));
    }
    Ok(())
}

/// Whether `a` and `b` are one file under two names (hard links).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> anyhow::Result<()> {
    stage_json(path, value)?.commit()?;
    Ok(())
}

/// Writes `value` as pretty JSON to the temporary file of `path`, to be put in place with
/// the command's other outputs ([`divnet::io::atomic::PendingFile::commit`]).
pub fn stage_json<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
) -> anyhow::Result<divnet::io::atomic::PendingFile> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(divnet::io::atomic::stage(path, |w| {
        w.write_all(text.as_bytes())
            .map_err(|e| divnet::Error::io(path, e))
    })?)
}

/// `--select`'s parser: the names of `SelectionMethod::ALL`, so that `--help` lists them and
/// the command line and the library never disagree on a method.
pub fn selection_method_parser(
) -> impl clap::builder::TypedValueParser<Value = divnet::select::SelectionMethod> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(divnet::select::SelectionMethod::names()).map(|name| {
        name.parse::<divnet::select::SelectionMethod>()
            .expect("a name from SelectionMethod::ALL")
    })
}
