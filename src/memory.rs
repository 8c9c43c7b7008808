//! Checks that a large host allocation fits before it is made: a failed allocation aborts
//! the process, an error lets the caller say what the layer needs.

use crate::error::{Error, Result};

/// Fails with an error when this process cannot allocate `count` n x n f64 matrices at
/// once (a probe: the memory is reserved and released at once), before any work: a 200 KB
/// file of one sample over 100000 neurons asks for 80 GB, and a failed allocation would
/// abort the process.
pub(crate) fn ensure_host_matrices(n: usize, count: usize) -> Result<()> {
    let fits = n
        .checked_mul(n)
        .and_then(|len| len.checked_mul(count))
        .is_some_and(|len| Vec::<f64>::new().try_reserve_exact(len).is_ok());
    if fits {
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
    }
}
