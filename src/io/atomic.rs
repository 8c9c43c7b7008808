//! Atomic output files: write a temporary file in the destination's folder, then rename it
//! over the destination, so that a failed or killed run never leaves a half-written file and
//! an earlier output stays intact until the new one is complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
/// removed), and `path` is not a folder. An error names `path`.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    let tmp = temp_path(path);
    File::create(&tmp).map_err(|e| Error::io(path, e))?;
    std::fs::remove_file(&tmp).map_err(|e| Error::io(path, e))
}

/// A complete temporary file waiting to be renamed over its destination by
/// [`PendingFile::commit`]; removed when dropped uncommitted. For outputs that must appear
/// together but are not ready at the same time (a model, then the report that times its
/// writing).
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Fills, flushes and syncs the temporary file of `path` (removed again on any error), to be
/// renamed over `path` by [`PendingFile::commit`].
pub fn stage(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<PendingFile> {
    let staged = PendingFile {
        tmp: temp_path(path),
        path: path.to_path_buf(),
        committed: false,
    };
    let file = File::create(&staged.tmp).map_err(|e| Error::io(path, e))?;
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
    /// Renames the temporary file over the destination.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
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
