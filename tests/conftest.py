"""Shared test helpers: run a script as a user would, in a temporary directory, and read its run folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests import the scripts' pure functions


def run_script(cwd: Path, script: str, *args: str, timeout: int = 300, extra_env: dict | None = None):
    """python SCRIPT ARGS in cwd, offline and headless; returns the CompletedProcess."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def only_run_dir(cwd: Path) -> Path:
    """The single run folder a script made under cwd/runs."""
    runs = sorted((cwd / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def run(tmp_path):
    """run(script, *args) -> (CompletedProcess, run_dir or None), with a fresh cwd per call."""
    counter = {"n": 0}

    def _run(script: str, *args: str, **kwargs):
        counter["n"] += 1
        cwd = tmp_path / f"call{counter['n']}"
        cwd.mkdir()
        proc = run_script(cwd, script, *args, **kwargs)
        run_dir = only_run_dir(cwd) if (cwd / "runs").exists() else None
        return proc, run_dir

    return _run
