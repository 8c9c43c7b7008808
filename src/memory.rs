//! How much host memory work may take, and how much it took.
//!
//! Linux overcommits: reserving 80 GB succeeds, and the process is killed later when the
//! pages are touched. So a check before a large allocation cannot ask the allocator; it
//! reads what the kernel says is free ([`available`]): `MemAvailable` from `/proc/meminfo`,
//! the limit of every cgroup the process sits in (v2 `memory.max`, v1
//! `memory.limit_in_bytes`) less what the cgroup uses already, and the process's own
//! limits (`ulimit -v`, `ulimit -d`) less what it has mapped. A plan of the allocations a
//! piece of work will make ([`MemoryPlan`]) is checked against it before the work starts,
//! and the error says what is needed and what is free.
//!
//! The environment variable `DIVNET_MEMORY_AVAILABLE` (bytes, or a number with a suffix
//! K, M, G or T, powers of 1024) replaces the probe: tests use it to pretend that little is
//! free, and a user can use it to keep divnet below a budget.
//!
//! [`peak_rss`] reads the process's high-water mark (`VmHWM`), which the pipelines report
//! after each stage.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// The environment variable that replaces the memory probe (see the module docs).
pub const AVAILABLE_VAR: &str = "DIVNET_MEMORY_AVAILABLE";

/// A plan fits when its peak plus this fraction of it plus [`MARGIN_BYTES`] is available:
/// room for what the plan does not itemise (small buffers, the allocator's slack, the
/// page cache the system needs to stay responsive).
const MARGIN_FRACTION: f64 = 0.1;
/// See [`MARGIN_FRACTION`].
const MARGIN_BYTES: u64 = 100 << 20;

/// Cgroup limits at or above this are "no limit" (v1 writes 2^63 rounded to a page).
const NO_LIMIT: u64 = 1 << 62;

/// Host memory that new allocations may take now, and where the figure comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Available {
    /// Bytes, or `None` when the system does not say (not Linux, no `/proc`).
    pub bytes: Option<u64>,
    /// Where the figure comes from: `MemAvailable`, a cgroup file, or the
    /// `DIVNET_MEMORY_AVAILABLE` override.
    pub source: String,
}

impl Available {
    /// The figure for messages: "6.2 GB is available (MemAvailable)".
    pub fn describe(&self) -> String {
        match self.bytes {
            Some(b) => format!("{} is available ({})", gb(b), self.source),
            None => format!("the free memory is unknown ({})", self.source),
        }
    }
}

/// The host memory available to this process now: the override in
/// `DIVNET_MEMORY_AVAILABLE` if set, else the least of `MemAvailable`, for every cgroup the
/// process belongs to (and the cgroups above it) its limit less its usage (the inactive
/// page cache counted as free, as the kernel would reclaim it), and the room below the
/// process's address-space and data-size limits. An error only for an override that is
/// not a size.
pub fn available() -> Result<Available> {
    if let Ok(text) = std::env::var(AVAILABLE_VAR) {
        let bytes = parse_size(&text).ok_or_else(|| {
            Error::invalid(format!(
                "{AVAILABLE_VAR}={text:?} is not a size: expected bytes, or a number with a \
                 suffix K, M, G or T (e.g. 6G)"
            ))
        })?;
        return Ok(Available {
            bytes: Some(bytes),
            source: AVAILABLE_VAR.into(),
        });
    }
    let mut best: Option<(u64, String)> = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_field(&t, "MemAvailable"))
        .map(|b| (b, "MemAvailable".to_string()));
    let mut limits = Vec::new();
    if let Ok(groups) = std::fs::read_to_string("/proc/self/cgroup") {
        limits.extend(cgroup_headroom(&groups, &|p| {
            std::fs::read_to_string(p).ok()
        }));
    }
    if let (Ok(table), Ok(status)) = (
        std::fs::read_to_string("/proc/self/limits"),
        std::fs::read_to_string("/proc/self/status"),
    ) {
        limits.extend(rlimit_headroom(&table, &status));
    }
    for (free, source) in limits {
        if best.as_ref().is_none_or(|(b, _)| free < *b) {
            best = Some((free, source));
        }
    }
    Ok(match best {
        Some((bytes, source)) => Available {
            bytes: Some(bytes),
            source,
        },
        None => Available {
            bytes: None,
            source: "no /proc/meminfo".into(),
        },
    })
}

/// The process's peak resident memory so far (`VmHWM` in `/proc/self/status`), in bytes;
/// `None` where the system does not say.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_field(&status, "VmHWM")
}

/// The process's resident memory now (`VmRSS`), in bytes; `None` where unknown.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_field(&status, "VmRSS")
}

/// `"<field>:   123 kB"` from `/proc/meminfo` or `/proc/self/status`, in bytes.
fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// For each memory cgroup of `/proc/self/cgroup` (text `groups`) and each ancestor, the
/// bytes left below its limit (limit - usage + inactive file cache) and the file the limit
/// came from; cgroups without a limit are skipped. `read` reads a file (a parameter, so
/// that tests can give a fake tree).
fn cgroup_headroom(groups: &str, read: &dyn Fn(&str) -> Option<String>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // v2: "0::/path", the unified tree; v1: "4:memory:/path" (or with other controllers).
        let (root, limit_file, usage_file, inactive_key) = if controllers.is_empty() {
            (
                "/sys/fs/cgroup",
                "memory.max",
                "memory.current",
                "inactive_file",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        } else {
            continue;
        };
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let base = format!("{root}{dir}");
            let limit = read(&format!("{base}/{limit_file}"))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|&l| l < NO_LIMIT);
            if let Some(limit) = limit {
                let usage = read(&format!("{base}/{usage_file}"))
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let inactive = read(&format!("{base}/memory.stat"))
                    .and_then(|t| {
                        t.lines().find_map(|l| {
                            let (key, value) = l.split_once(' ')?;
                            (key == inactive_key).then(|| value.trim().parse::<u64>().ok())?
                        })
                    })
                    .unwrap_or(0);
                let used = usage.saturating_sub(inactive);
                out.push((limit.saturating_sub(used), format!("{base}/{limit_file}")));
            }
            match dir.rfind('/') {
                Some(pos) if !dir.is_empty() => dir.truncate(pos),
                _ => break,
            }
        }
    }
    out
}

/// The room left below the process's own limits (`ulimit -v`, `ulimit -d`), from
/// `/proc/self/limits` (text `table`) and the sizes in `/proc/self/status` (`status`):
/// allocations past them fail even when the machine has memory free.
fn rlimit_headroom(table: &str, status: &str) -> Vec<(u64, String)> {
    [
        (
            "Max address space",
            "VmSize",
            "the address-space limit (ulimit -v)",
        ),
        ("Max data size", "VmData", "the data-size limit (ulimit -d)"),
    ]
    .into_iter()
    .filter_map(|(limit, used, source)| {
        let soft: u64 = table
            .lines()
            .find_map(|l| l.strip_prefix(limit))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let used = meminfo_field(status, used).unwrap_or(0);
        Some((soft.saturating_sub(used), source.to_string()))
    })
    .collect()
}

/// "123", "1.5G", "800M", "64k": bytes (suffixes are powers of 1024).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some((value * scale as f64) as u64)
}

/// Bytes in decimal units for messages: "8.6 GB" (to the nearest tenth), and rounded up
/// below that: "12 MB" below 0.1 GB, "1.3 MB" below 10 MB, "64 kB" below 1 MB.
pub fn gb(bytes: u64) -> String {
    if bytes >= 100_000_000 {
        format!("{:.1} GB", bytes as f64 * 1e-9)
    } else if bytes >= 10_000_000 {
        format!("{} MB", bytes.div_ceil(1_000_000))
    } else if bytes >= 1_000_000 {
        format!("{:.1} MB", (bytes as f64 * 1e-5).ceil() / 10.0)
    } else {
        format!("{} kB", bytes.div_ceil(1000))
    }
}

/// One allocation of a plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Allocation {
    /// What it is: "the kernel L (8192 x 8192 f64)".
    pub what: String,
    /// Its size.
    pub bytes: u64,
}

impl Allocation {
    /// A `rows x cols` matrix of `elem_bytes`-byte values, described as `what` followed by
    /// its shape: `Allocation::matrix("the kernel L", n, n, 8)`.
    pub fn matrix(what: &str, rows: usize, cols: usize, elem_bytes: usize) -> Self {
        let ty = match elem_bytes {
            2 => "f16",
            4 => "f32",
            _ => "f64",
        };
        Allocation {
            what: format!("{what} ({rows} x {cols} {ty})"),
            bytes: (rows as u64)
                .saturating_mul(cols as u64)
                .saturating_mul(elem_bytes as u64),
        }
    }
}

/// What one stage of a piece of work holds at once.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageFootprint {
    /// The stage, as the pipeline's report names it.
    pub stage: String,
    /// Everything alive at the stage's peak (beyond what the process held when the plan
    /// was made).
    pub holds: Vec<Allocation>,
}

impl StageFootprint {
    /// The stage's peak: the sum of what it holds.
    pub fn bytes(&self) -> u64 {
        self.holds
            .iter()
            .fold(0u64, |acc, a| acc.saturating_add(a.bytes))
    }
}

/// The allocations a piece of work will make, stage by stage, checked against the free
/// memory before it starts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    /// What the work is, for messages: "a layer of 8192 neurons".
    pub subject: String,
    /// Every stage that allocates, in order.
    pub stages: Vec<StageFootprint>,
}

impl MemoryPlan {
    /// The stage with the largest footprint (the first of equals); `None` for no stage.
    pub fn peak_stage(&self) -> Option<&StageFootprint> {
        self.stages
            .iter()
            .fold(None, |best: Option<&StageFootprint>, s| match best {
                Some(b) if b.bytes() >= s.bytes() => Some(b),
                _ => Some(s),
            })
    }

    /// The peak over the stages, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak_stage().map_or(0, StageFootprint::bytes)
    }

    /// The peak plus the margin kept free (10% of it plus 100 MiB).
    pub fn need_with_margin(&self) -> u64 {
        let peak = self.peak();
        peak.saturating_add((peak as f64 * MARGIN_FRACTION) as u64)
            .saturating_add(MARGIN_BYTES)
    }

    /// Whether the plan fits `available` with the margin; an unknown figure fits.
    pub fn fits(&self, available: &Available) -> bool {
        self.fits_share(available, 1)
    }

    /// Whether the plan, with the margin, takes at most one part in `parts` of
    /// `available`; an unknown figure fits.
    pub fn fits_share(&self, available: &Available, parts: u64) -> bool {
        available
            .bytes
            .is_none_or(|free| self.need_with_margin() <= free / parts.max(1))
    }

    /// An error when the plan does not fit: "a layer of 32768 neurons needs 10.9 GB at its
    /// peak (select: the kernel L (32768 x 32768 f64) 8.6 GB, ...); 6.2 GB is available
    /// (MemAvailable)".
    pub fn check(&self, available: &Available) -> Result<()> {
        if self.fits(available) {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{} needs {}, {} with a margin of {:.0}% and {} MB for what is not itemised; {}",
            self.subject,
            self.describe_peak(),
            gb(self.need_with_margin()),
            MARGIN_FRACTION * 100.0,
            MARGIN_BYTES >> 20,
            available.describe()
        )))
    }

    /// "10.9 GB at its peak (select: the kernel L (...) 8.6 GB, plus ...)": the peak and
    /// what makes it up, largest first.
    pub fn describe_peak(&self) -> String {
        let Some(stage) = self.peak_stage() else {
            return "no memory".into();
        };
        let mut holds: Vec<&Allocation> = stage.holds.iter().filter(|a| a.bytes > 0).collect();
        holds.sort_by_key(|a| std::cmp::Reverse(a.bytes));
        let mut text = format!("{} at its peak ({}: ", gb(stage.bytes()), stage.stage);
        for (i, a) in holds.iter().enumerate() {
            if i > 0 {
                text.push_str(if i == 1 { ", plus " } else { ", " });
            }
            let _ = write!(text, "{} {}", a.what, gb(a.bytes));
        }
        text.push(')');
        text
    }
}

/// Fails with an error when what one stage of work on a layer of `n` neurons `holds` does
/// not fit the memory available now (see [`available`]), before the stage allocates it.
pub(crate) fn ensure_fits(n: usize, stage: &str, holds: Vec<Allocation>) -> Result<()> {
    let plan = MemoryPlan {
        subject: format!("a layer of {n} neurons"),
        stages: vec![StageFootprint {
            stage: stage.into(),
            holds,
        }],
    };
    plan.check(&available()?)
}

/// Fails with an error when `count` n x n f64 matrices do not fit the memory available
/// now (see [`available`]), before any work: a 200 KB file of one sample over 100000
/// neurons asks for 80 GB, which Linux would grant and then kill the process for.
pub(crate) fn ensure_host_matrices(n: usize, count: usize) -> Result<()> {
    let what = if count == 1 {
        "one n x n f64 matrix".to_string()
    } else {
        format!("{count} n x n f64 matrices at once")
    };
    let addressable = n
        .checked_mul(n)
        .and_then(|len| len.checked_mul(count))
        .and_then(|len| len.checked_mul(8))
        .is_some();
    if !addressable {
        return Err(Error::invalid(format!(
            "a layer of {n} neurons needs {what}: more bytes than this machine can address"
        )));
    }
    let holds = (0..count)
        .map(|_| Allocation::matrix("an n x n matrix", n, n, 8))
        .collect();
    ensure_fits(n, &what, holds)
}

/// Fails with an error when an n x `columns` f64 matrix does not fit the memory available
/// now (see [`available`]): the work of a computation that holds O(n k) beside a kernel that
/// exists already, such as the eigenvectors of a k-DPP draw.
pub(crate) fn ensure_host_columns(n: usize, columns: usize, what: &str) -> Result<()> {
    let addressable = n
        .checked_mul(columns)
        .and_then(|len| len.checked_mul(8))
        .is_some();
    if !addressable {
        return Err(Error::invalid(format!(
            "{what} for {n} neurons needs {columns} columns of {n} values: more bytes than \
             this machine can address"
        )));
    }
    ensure_fits(n, what, vec![Allocation::matrix(what, n, columns, 8)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("800 MiB"), Some(800 << 20));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        for bad in ["", "G", "-1G", "1X", "one"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24684096 kB\nMemAvailable:   23070692 kB\nHugePages_Total: 0\n";
        assert_eq!(meminfo_field(text, "MemAvailable"), Some(23070692 * 1024));
        assert_eq!(meminfo_field(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_field(text, "MemFree"), None);
        // A field whose name only starts the same is not the field.
        assert_eq!(meminfo_field("MemAvailableX: 5 kB\n", "MemAvailable"), None);
    }

    #[test]
    fn cgroup_limits_of_v1_and_v2_and_their_ancestors_are_found() {
        let files = std::collections::HashMap::from([
            // v2: a limit on the parent, none on the process's own group.
            ("/sys/fs/cgroup/a/memory.max", "4000000000\n"),
            ("/sys/fs/cgroup/a/memory.current", "1000000000\n"),
            (
                "/sys/fs/cgroup/a/memory.stat",
                "anon 1\ninactive_file 500000000\n",
            ),
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            // v1: unlimited at the top (2^63 rounded), limited below.
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/x/memory.limit_in_bytes",
                "2000000000",
            ),
            ("/sys/fs/cgroup/memory/x/memory.usage_in_bytes", "500000000"),
        ]);
        let read = |p: &str| files.get(p).map(|s| s.to_string());
        let v2 = cgroup_headroom("0::/a/b\n", &read);
        assert_eq!(
            v2,
            vec![(3_500_000_000, "/sys/fs/cgroup/a/memory.max".to_string())]
        );
        let v1 = cgroup_headroom("9:cpu:/\n4:memory:/x\n", &read);
        assert_eq!(
            v1,
            vec![(
                1_500_000_000,
                "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".to_string()
            )]
        );
        assert!(cgroup_headroom("garbage\n1:pids:/\n", &read).is_empty());
    }

    #[test]
    fn process_limits_leave_their_headroom() {
        let table = "Limit                     Soft Limit           Hard Limit           Units\n\
                     Max data size             unlimited            unlimited            bytes\n\
                     Max address space         4096000000           unlimited            bytes\n";
        let status = "VmSize:\t  1000 kB\nVmData:\t 500 kB\n";
        assert_eq!(
            rlimit_headroom(table, status),
            vec![(
                4_096_000_000 - 1_024_000,
                "the address-space limit (ulimit -v)".to_string()
            )]
        );
    }

    #[test]
    fn a_plan_fits_with_its_margin_and_names_its_peak_when_not() {
        let plan = MemoryPlan {
            subject: "a layer of 32768 neurons".into(),
            stages: vec![
                StageFootprint {
                    stage: "statistics".into(),
                    holds: vec![Allocation::matrix("the distances D", 32768, 32768, 8)],
                },
                StageFootprint {
                    stage: "select".into(),
                    holds: vec![
                        Allocation::matrix("the kernel L", 32768, 32768, 8),
                        Allocation::matrix("greedy's Cholesky rows", 8192, 32768, 8),
                    ],
                },
            ],
        };
        assert_eq!(plan.peak_stage().unwrap().stage, "select");
        assert_eq!(plan.peak(), 8 * 32768 * (32768 + 8192));
        let free = |bytes| Available {
            bytes: Some(bytes),
            source: "test".into(),
        };
        assert!(plan.fits(&free(plan.need_with_margin())));
        assert!(!plan.fits(&free(plan.peak())));
        let unknown = Available {
            bytes: None,
            source: "unknown".into(),
        };
        assert!(plan.fits(&unknown));
        // A share: one part in eight of what is free, the margin included.
        let need = plan.need_with_margin();
        assert!(plan.fits_share(&free(8 * need), 8));
        assert!(!plan.fits_share(&free(8 * need - 1), 8));
        assert!(plan.fits_share(&free(need), 1));
        assert!(plan.fits_share(&unknown, 8));
        let msg = plan.check(&free(6_200_000_000)).unwrap_err().to_string();
        assert_eq!(
            msg,
            "a layer of 32768 neurons needs 10.7 GB at its peak (select: the kernel L \
             (32768 x 32768 f64) 8.6 GB, plus greedy's Cholesky rows (8192 x 32768 f64) \
             2.1 GB), 11.9 GB with a margin of 10% and 100 MB for what is not itemised; 6.2 GB \
             is available (test)"
        );
    }

    #[test]
    fn host_matrix_check_refuses_what_cannot_be_addressed() {
        assert!(ensure_host_matrices(100, 3).is_ok());
        // 3 x (2^24)^2 f64 is 6.8 million TB: no machine has that free.
        let n = 1 << 24;
        let msg = ensure_host_matrices(n, 3).unwrap_err().to_string();
        assert!(
            msg.starts_with("a layer of 16777216 neurons needs") && msg.contains("available"),
            "{msg}"
        );
        // n * n * count overflowing usize is a refusal too, not a panic.
        assert!(ensure_host_matrices(1 << 40, 3).is_err());
        assert!(ensure_host_columns(1000, 100, "eigenvectors").is_ok());
        let msg = ensure_host_columns(1 << 40, 1 << 20, "eigenvectors")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("a layer of 1099511627776 neurons needs")
                && msg.contains("eigenvectors (1099511627776 x 1048576 f64)")
                && msg.contains("available"),
            "{msg}"
        );
        let msg = ensure_host_columns(1 << 40, 1 << 30, "eigenvectors")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("more bytes than this machine can address"),
            "{msg}"
        );
    }
}
