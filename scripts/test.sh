#!/usr/bin/env bash
# Runs divnet's test suite on a fresh Debian/Ubuntu machine: installs what is missing (a
# Vulkan driver for the GPU tests; Python's venv module, whose virtual environment
# target/test-venv gets numpy and safetensors for the interoperability checks), then runs
# `cargo test --release` and, without arguments, the Python package's tests
# (scripts/test_python.sh, in the same virtual environment). Nothing is installed into the
# system's Python.
#
# The GPU tests run on whatever Vulkan adapter exists; without a real GPU that is Mesa's
# lavapipe (mesa-vulkan-drivers), a real Vulkan device on the CPU. Set DIVNET_REQUIRE_GPU=1
# to make a missing adapter a test failure instead of a skip (CI does), and
# DIVNET_REQUIRE_PYTHON=1 to make a missing Python environment one.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "scripts/test.sh: need root to run: $*" >&2; return 1; fi
}

apt_updated=
apt_install() {
  echo "scripts/test.sh: installing $*" >&2
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq || return; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null; then
  apt_install mesa-vulkan-drivers
fi

# The Python checks' own interpreter: a virtual environment under target/, kept between runs.
venv=target/test-venv
setup_python() {
  # (Called as an if condition, where set -e is off: every step says || return.)
  if [ -e "$venv" ] && ! "$venv/bin/python" -c "" >/dev/null 2>&1; then rm -rf "$venv"; fi
  if [ ! -e "$venv" ]; then
    if ! command -v python3 >/dev/null; then apt_install python3 python3-venv || return; fi
    # Debian's python3 cannot make a virtual environment until python3-venv is installed.
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt_install python3-venv || return
      python3 -m venv "$venv" || return
    fi
  fi
  if ! "$venv/bin/python" -c "import safetensors, numpy" >/dev/null 2>&1; then
    echo "scripts/test.sh: installing numpy, safetensors into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy safetensors ||
      return
  fi
}
python_ready=
if setup_python; then
  python_ready=1
  # The tests run Python through this variable (python3 on PATH when it is unset).
  DIVNET_PYTHON="$(pwd)/$venv/bin/python"
  export DIVNET_PYTHON
elif [ "${DIVNET_REQUIRE_PYTHON:-}" = 1 ]; then
  echo "scripts/test.sh: DIVNET_REQUIRE_PYTHON=1 but the Python environment $venv failed" >&2
  exit 1
else
  echo "scripts/test.sh: no Python environment ($venv failed): the Python checks may skip" >&2
fi

# Mesa's device-select Vulkan layer asks the Wayland compositor for the default GPU in every
# process that creates a Vulkan instance (the GPU tests do, in the test processes themselves),
# and libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set" when there is no
# session, as on CI. The tests pick their adapter themselves; the divnet binary makes the
# same choice at start-up.
if [ -z "${XDG_RUNTIME_DIR:-}" ] && [ -z "${NODEVICE_SELECT:-}" ]; then
  export NODEVICE_SELECT=1
fi

cargo test --release "$@"

# The Python package's tests (build, install, pytest) on a full run; arguments select Rust
# tests only.
if [ $# -eq 0 ] && [ -n "$python_ready" ]; then
  ./scripts/test_python.sh
elif [ $# -eq 0 ]; then
  echo "scripts/test.sh: no Python environment: the Python package's tests did not run" >&2
fi
