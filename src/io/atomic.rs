//! Atomic output files: write a temporary file in the destination's folder, then rename it
//! over the destination, so that a failed or killed run never leaves a half-written file and
//! an earlier output stays intact until the new one is complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The temporary files that exist now (being written, or complete and not yet renamed), so
/// that a program stopped by a signal can remove them ([`remove_staged_files`]): a drop
/// never runs then, and an interrupted write of a large model would leave hundreds of MB
/// in a hidden file.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn staged_list() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the list was held leaves it usable: it only holds paths.
    STAGED.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget_staged(tmp: &Path) {
    let mut list = staged_list();
    if let Some(i) = list.iter().position(|p| p == tmp) {
        list.swap_remove(i);
    }
}

/// A temporary file that some other writer fills (an image library, say) before the caller
/// renames it into place: listed with the staged files, so that a signal removes it too
/// ([`remove_staged_files`]), and removed when dropped before [`TemporaryFile::renamed`].
pub struct TemporaryFile {
    path: PathBuf,
}

impl TemporaryFile {
    /// Lists `path` (not created here).
    pub fn track(path: &Path) -> Self {
        staged_list().push(path.to_path_buf());
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The file was renamed into place: nothing to remove any more.
    pub fn renamed(self) {
        forget_staged(&self.path);
        std::mem::forget(self);
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        forget_staged(&self.path);
    }
}

/// Removes every temporary file of this process's outputs that exists now, for a program
/// about to end on a signal (SIGINT, SIGTERM, SIGHUP); the outputs themselves stay as they
/// were.
/// Not for a signal handler's own context: it takes a lock. Call it from a thread that
/// waits for the signal.
pub fn remove_staged_files() {
    remove_staged_where(|_| true);
}

fn remove_staged_where(pick: impl Fn(&Path) -> bool) {
    staged_list().retain(|tmp| {
        if pick(tmp) {
            let _ = std::fs::remove_file(tmp);
        }
        !pick(tmp)
    });
}

/// Writes `path` atomically: `write` fills a buffered temporary file next to `path`, which is
/// flushed, synced and renamed over `path` only if `write` succeeds. On any error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    stage(path, write)?.commit()
}

/// Checks, before a long computation, that `path` can be written the way [`write_atomic`]
/// writes it: its folder exists and takes a new file (the temporary one, created and
/// removed), `path` is not a folder, and if it exists it is a regular file that this user
/// may write and that is not marked read-only (the rename would replace a device, or a file
/// the user may not write, all the same). An error names `path`.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let refuse = |kind, why: &str| Err(Error::io(path, std::io::Error::new(kind, why)));
        if !meta.is_file() {
            // A device, a FIFO or a socket (/dev/null, /dev/stdout): the rename would put a
            // regular file in its place.
            return refuse(
                std::io::ErrorKind::InvalidInput,
                "exists and is not a regular file (a device, a pipe or a socket), which the \
                 output, written to a new file and renamed into place, would replace",
            );
        }
        // Marked read-only (root could write it all the same), or not writable by this user
        // (opened for writing, not truncated): the rename needs only the folder, and would
        // replace a file the user may not write.
        if meta.permissions().readonly() {
            return refuse(
                std::io::ErrorKind::PermissionDenied,
                "exists and is read-only: make it writable or choose another path",
            );
        }
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
            return refuse(
                e.kind(),
                &format!(
                    "exists and cannot be written ({e}): make it writable or choose another path"
                ),
            );
        }
    }
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !folder.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("the folder {} does not exist", folder.display()),
                ),
            ));
        }
    }
    let tmp = temp_path(path);
    // Listed while it exists, as every temporary file: a signal between its creation and
    // its removal would otherwise leave it behind.
    let probe = TemporaryFile::track(&tmp);
    File::create(&tmp).map_err(|e| {
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        let folder = folder.unwrap_or(Path::new(".")).display();
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("cannot create a file in {folder}: {e}")),
        )
    })?;
    drop(probe);
    Ok(())
}

/// A complete temporary file waiting to be renamed over its destination by
/// [`PendingFile::commit`]; removed when dropped uncommitted. For outputs that must appear
/// together but are not ready at the same time (a model, then the report that times its
/// writing).
pub struct PendingFile {
    /// Listed for removal on a signal, and removed when dropped uncommitted.
    tmp: TemporaryFile,
    path: PathBuf,
}

/// Fills, flushes and syncs the temporary file of `path` (removed again on any error), to be
/// renamed over `path` by [`PendingFile::commit`].
pub fn stage(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<PendingFile> {
    // Listed before it exists: a signal between the two would otherwise miss it.
    let staged = PendingFile {
        tmp: TemporaryFile::track(&temp_path(path)),
        path: path.to_path_buf(),
    };
    let file = File::create(&staged.tmp.path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    w.flush().map_err(|e| Error::io(path, e))?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(staged)
}

impl PendingFile {
    /// Renames the temporary file over the destination. A destination that exists keeps its
    /// permissions (the temporary file was made with the default ones).
    pub fn commit(self) -> Result<()> {
        if let Ok(meta) = std::fs::metadata(&self.path) {
            std::fs::set_permissions(&self.tmp.path, meta.permissions())
                .map_err(|e| Error::io(&self.path, e))?;
        }
        std::fs::rename(&self.tmp.path, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.tmp.renamed();
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// `dir/.name.<pid>.tmp`: same folder (so the rename stays on one file system), hidden,
/// unique per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_previous_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_bytes_atomic(&path, b"first").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial").unwrap();
            Err(Error::invalid("stop half-way"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    #[test]
    fn staged_files_appear_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let report = dir.path().join("report.json");
        let bytes = |b: &'static [u8]| {
            move |w: &mut BufWriter<File>| w.write_all(b).map_err(|e| Error::io("x", e))
        };
        let model = stage(&out, bytes(b"model")).unwrap();
        assert!(
            !out.exists(),
            "a staged file is not in place before its commit"
        );
        let json = stage(&report, bytes(b"{}")).unwrap();
        model.commit().unwrap();
        json.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"model");
        assert_eq!(std::fs::read(&report).unwrap(), b"{}");

        // The second output cannot be written: the first, dropped uncommitted, leaves the
        // old file and no temporary one.
        let model = stage(&out, bytes(b"new model")).unwrap();
        let missing = dir.path().join("no such folder").join("report.json");
        let err = stage(&missing, bytes(b"{}")).err().unwrap();
        assert!(err.to_string().contains("no such folder"), "{err}");
        drop(model);
        assert_eq!(std::fs::read(&out).unwrap(), b"model");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn staged_files_are_listed_until_committed_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let write = |w: &mut BufWriter<File>| w.write_all(b"x").map_err(|e| Error::io("x", e));
        let listed = |tmp: &Path| staged_list().iter().any(|p| p == tmp);
        let kept = stage(&dir.path().join("a.bin"), write).unwrap();
        let removed = stage(&dir.path().join("b.bin"), write).unwrap();
        let (kept_tmp, removed_tmp) = (kept.tmp.path.clone(), removed.tmp.path.clone());
        assert!(listed(&kept_tmp) && listed(&removed_tmp));
        kept.commit().unwrap();
        assert!(!listed(&kept_tmp));
        // As a signal's waiting thread would (for this test's files only: other tests stage
        // theirs at the same time): the temporary file goes, the outputs stay.
        remove_staged_where(|tmp| tmp.starts_with(dir.path()));
        assert!(!removed_tmp.exists() && !listed(&removed_tmp));
        assert!(dir.path().join("a.bin").exists());
        drop(removed);
        assert!(!dir.path().join("b.bin").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_permissions_and_a_read_only_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_bytes_atomic(&path, b"first").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_bytes_atomic(&path, b"second").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = check_writable(&path).unwrap_err().to_string();
        assert!(
            err.contains("out.bin") && err.contains("read-only"),
            "{err}"
        );
    }

    #[test]
    fn writability_is_checked_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        check_writable(&dir.path().join("out.bin")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let err = check_writable(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = check_writable(&dir.path().join("missing").join("out.bin")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
