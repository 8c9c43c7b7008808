//! The Python interpreter that the interoperability checks run: `DIVNET_PYTHON` if set
//! (scripts/test.sh points it at its own virtual environment), else `python3` on PATH.

use std::ffi::OsString;
use std::process::Command;

/// The interpreter, if it imports numpy and safetensors. Without one the check is skipped
/// (said on stderr), unless DIVNET_REQUIRE_PYTHON=1 (as in CI), where the test fails.
pub fn python_with_safetensors() -> Option<OsString> {
    let python = std::env::var_os("DIVNET_PYTHON").unwrap_or_else(|| "python3".into());
    let required = std::env::var("DIVNET_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let probe = Command::new(&python)
        .args(["-c", "import safetensors, numpy"])
        .output();
    let why = match &probe {
        Ok(o) if o.status.success() => return Some(python),
        Err(e) => format!("{} not runnable: {e}", python.to_string_lossy()),
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string(),
    };
    assert!(
        !required,
        "DIVNET_REQUIRE_PYTHON=1 but {} with safetensors and numpy is missing: {why}",
        python.to_string_lossy()
    );
    eprintln!(
        "skipping the Python check: {} with safetensors and numpy is missing ({why})",
        python.to_string_lossy()
    );
    None
}
