"""Shared fixtures: random data, and the divnet command line to compare against.

The comparisons with the command line need the release binary built from the same sources
(`cargo build --release`, done by `cargo test --release`): `DIVNET_BIN` names it, else
`target/release/divnet` in the repository is used. When it is missing those tests are
skipped, or fail with `DIVNET_REQUIRE_CLI=1` (CI sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


class Cli:
    """Runs the divnet binary; `run` asserts success, `fail` asserts the one-line error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.setdefault("NODEVICE_SELECT", "1")
        return subprocess.run(
            [str(self.path), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def run(self, args: list[str], cwd: Path) -> str:
        done = self._run(args, cwd)
        assert done.returncode == 0, f"divnet {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def fail(self, args: list[str], cwd: Path) -> str:
        """The error line, without its `divnet: error: ` prefix."""
        done = self._run(args, cwd)
        assert done.returncode == 2, f"divnet {' '.join(args)} did not fail:\n{done.stderr}"
        lines = [l for l in done.stderr.splitlines() if l.startswith("divnet: error: ")]
        assert len(lines) == 1, done.stderr
        return lines[0].removeprefix("divnet: error: ")

    def report(self, path: Path) -> dict:
        return json.loads(path.read_text())


@pytest.fixture(scope="session")
def cli() -> Cli:
    path = Path(os.environ.get("DIVNET_BIN", REPO / "target" / "release" / "divnet"))
    if not path.is_file():
        message = (
            f"the divnet binary {path} is not built (cargo build --release): the "
            "comparisons with the command line need it"
        )
        if os.environ.get("DIVNET_REQUIRE_CLI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Cli(path)
