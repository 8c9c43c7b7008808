#!/usr/bin/env bash
# Builds the Python package (python/) into the virtual environment target/test-venv with the
# README's command, `pip install ./python` (maturin compiles the extension in this
# repository's target directory, reusing the compiled library), then runs its tests
# (python/tests) with pytest. scripts/test.sh runs this after the Rust tests; run alone, it
# makes the virtual environment when there is none (python3-venv must be installed).
#
# The tests compare the package with the divnet binary, target/release/divnet (built by
# `cargo test --release`); without it they skip those comparisons, unless
# DIVNET_REQUIRE_CLI=1 (or DIVNET_REQUIRE_PYTHON=1, as CI sets) makes that a failure. The
# PyTorch tests run when torch is installed in the environment and are reported as skipped
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if ! "$venv/bin/python" -c "" >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
python="$(pwd)/$venv/bin/python"
pip=("$python" -m pip --disable-pip-version-check)
if ! "$python" -c "import pytest, numpy, safetensors" >/dev/null 2>&1; then
  echo "scripts/test_python.sh: installing pytest, numpy, safetensors into $venv" >&2
  "${pip[@]}" install --quiet pytest numpy safetensors
fi
echo "scripts/test_python.sh: pip install ./python (cargo build of the extension, via maturin)" >&2
start=$SECONDS
"${pip[@]}" install --quiet ./python
echo "scripts/test_python.sh: package built and installed in $((SECONDS - start)) s" >&2

export DIVNET_BIN="${DIVNET_BIN:-$(pwd)/target/release/divnet}"
export DIVNET_REQUIRE_CLI="${DIVNET_REQUIRE_CLI:-${DIVNET_REQUIRE_PYTHON:-}}"
# From the repository root, so that python/divnet (the sources) does not shadow the
# installed package; -rs prints why a test was skipped (no PyTorch, no binary).
"$python" -m pytest -rs python/tests "$@"
