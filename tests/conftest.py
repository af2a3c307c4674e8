"""Shared fixtures: tiny seeded specs and an isolated cache per test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_SPEC = """\
name: tiny
seed: 3
device: cpu
data:
  kind: hierarchy
  branching: [2, 2]
  features_per_level: [2, 2, 1]
  query_sets:
    left: [item0, item1]
model:
  kind: deep_linear
  hidden: [6]
  init_scale: 0.01
training:
  lr: 0.2
  steps: 60
  checkpoints:
    steps: [10, 30, 60]
    include_zero: false
observables:
  - name: train
    data: train
  - name: left
    data: left
sampler:
  eps: 1.0e-4
  gamma: 1000
  nbeta: 100
  chains: 3
  draws: 20
  burn_in: 5
analyses:
  - kind: bif
  - kind: bif
    name: train_on_left
    source: train
    target: left
  - kind: llc
  - kind: loss_kernel
"""


def write_spec(tmp_path: Path, text: str = TINY_SPEC, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tiny_spec(tmp_path) -> Path:
    return write_spec(tmp_path)


@pytest.fixture
def cache_path(tmp_path) -> Path:
    return tmp_path / "cache" / "sbif.duckdb"


def sbif(*args: str, cache: Path | None = None, check: bool = True, cwd: Path | None = None, env: dict | None = None):
    """Run the real CLI in a subprocess (what a user runs)."""
    full_env = {**os.environ, **(env or {})}
    if cache is not None:
        full_env["SBIF_CACHE"] = str(cache)
    proc = subprocess.run(
        [sys.executable, "-m", "sbif_dsl.cli", *args], capture_output=True, text=True, cwd=cwd or REPO, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sbif {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
