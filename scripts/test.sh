#!/usr/bin/env bash
# Runs divnet's test suite on a fresh Debian/Ubuntu machine: installs what is missing
# (a Vulkan driver for the GPU tests, fonts for the plots, Python's safetensors for the
# interoperability check), then runs `cargo test --release`.
#
# The GPU tests run on whatever Vulkan adapter exists; without a real GPU that is Mesa's
# lavapipe (mesa-vulkan-drivers), a real Vulkan device on the CPU. Set DIVNET_REQUIRE_GPU=1
# to make a missing adapter a test failure instead of a skip (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "scripts/test.sh: need root to run: $*" >&2; return 1; fi
}

missing=()
if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null; then
  missing+=(mesa-vulkan-drivers)
fi
if ! compgen -G "/usr/share/fonts/truetype/dejavu/*.ttf" >/dev/null; then
  missing+=(fonts-dejavu-core fontconfig)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c "import safetensors, numpy" >/dev/null 2>&1; then
  echo "scripts/test.sh: installing Python packages safetensors, numpy" >&2
  python3 -m pip install --quiet --disable-pip-version-check safetensors numpy ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages safetensors numpy
fi

cargo test --release "$@"
