//! Checks that a large host allocation fits before it is made: a failed allocation aborts
//! the process, an error lets the caller say what the layer needs.

use crate::error::{Error, Result};

/// Fails with an error when this process cannot allocate an n x n f64 matrix, before any
/// work: a 200 KB file of one sample over 100000 neurons asks for 80 GB, and both backends
/// end with such a matrix on the host, where a failed allocation would abort the process.
pub(crate) fn ensure_host_matrix(n: usize) -> Result<()> {
    ensure_host_matrices(n, 1)
}

/// Fails with an error when this process cannot allocate `count` n x n f64 matrices at
/// once (a probe: the memory is reserved and released at once).
pub(crate) fn ensure_host_matrices(n: usize, count: usize) -> Result<()> {
    if can_allocate_f64(n.checked_mul(n).and_then(|len| len.checked_mul(count))) {
        return Ok(());
    }
    let gb = (n as f64) * (n as f64) * 8e-9;
    let what = if count == 1 {
        format!("{n} x {n} matrices of {gb:.1} GB each")
    } else {
        format!("{count} matrices of {n} x {n} at once, {gb:.1} GB each")
    };
    Err(Error::invalid(format!(
        "a layer of {n} neurons needs {what}, more than this machine can allocate"
    )))
}

/// Fails with an error when this process cannot allocate an n x `columns` f64 matrix
/// (a probe, as [`ensure_host_matrices`]): the work of a computation that holds O(n k)
/// beside a kernel that exists already, such as eigenvectors for a k-DPP draw.
pub(crate) fn ensure_host_columns(n: usize, columns: usize, what: &str) -> Result<()> {
    if can_allocate_f64(n.checked_mul(columns)) {
        return Ok(());
    }
    let gb = (n as f64) * (columns as f64) * 8e-9;
    Err(Error::invalid(format!(
        "{what} for {n} neurons needs {columns} columns of {n} values at once ({gb:.1} GB), \
         more than this machine can allocate"
    )))
}

/// Whether `len` f64 (None: more than usize holds) can be reserved now; the memory is
/// released at once.
fn can_allocate_f64(len: Option<usize>) -> bool {
    len.is_some_and(|len| Vec::<f64>::new().try_reserve_exact(len).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matrix_probe_refuses_what_cannot_be_allocated() {
        assert!(ensure_host_matrices(100, 3).is_ok());
        // 3 x (2^24)^2 f64 is 6.8 million TB: no machine reserves that.
        let n = 1 << 24;
        let msg = ensure_host_matrices(n, 3).unwrap_err().to_string();
        assert!(
            msg.contains("3 matrices of 16777216 x 16777216 at once"),
            "{msg}"
        );
        // n * n * count overflowing usize is the same refusal, not a panic.
        assert!(ensure_host_matrices(1 << 40, 3).is_err());
        assert!(ensure_host_columns(1000, 100, "eigenvectors").is_ok());
        let msg = ensure_host_columns(1 << 40, 1 << 20, "eigenvectors")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("eigenvectors for 1099511627776 neurons needs 1048576 columns"),
            "{msg}"
        );
    }
}
