//! The crate's error type: every failure carries what went wrong and, for files, which file.

use std::path::PathBuf;

/// Everything that can go wrong in divnet.
///
/// The `Display` form is one line, fit to print after `divnet: error: `.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or write of `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are malformed or not what was asked for.
    #[error("{}: {message}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, and what was expected.
        message: String,
    },
    /// An argument or an in-memory input is out of range or inconsistent.
    #[error("{0}")]
    InvalidInput(String),
    /// No usable GPU adapter (or none matching `WGPU_ADAPTER_NAME` / `WGPU_BACKEND`).
    #[error("no GPU adapter: {}", one_line(.0))]
    NoAdapter(String),
    /// The GPU reported an error: out of memory, device lost, validation, a limit too small.
    /// (wgpu's messages span lines, "Caused by:" and all; `Display` joins them into one.)
    #[error("GPU: {}", one_line(.0))]
    Gpu(String),
    /// A numerical failure that input validation could not foresee.
    #[error("numerical: {0}")]
    Numerical(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// This error as one about the file `path` its input came from: an
    /// [`Error::InvalidInput`] (a check of contents read from it) becomes an
    /// [`Error::Format`] naming it; the others, which name their file already or concern
    /// none, are unchanged.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Error::InvalidInput(m) => Error::format(path, m),
            e => e,
        }
    }

    /// This error with `what` (a layer, an argument) before its message, for the input and
    /// numerical errors, whose messages do not say where; the others are unchanged.
    pub fn about(self, what: &str) -> Self {
        match self {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{what}: {m}")),
            Error::Numerical(m) => Error::Numerical(format!("{what}: {m}")),
            e => e,
        }
    }
}

/// `text` on one line: its lines, trimmed, joined by spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Result` with divnet's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_errors_display_on_one_line() {
        let e = Error::Gpu("Validation Error\n\nCaused by:\n    In Queue::write_buffer\n".into());
        assert_eq!(
            e.to_string(),
            "GPU: Validation Error Caused by: In Queue::write_buffer"
        );
    }
}
