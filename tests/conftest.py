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


# ------------------------------------------------------------------------------------------------
# In-process helpers: the scripts' parse_args / run_experiment / train, without a subprocess
# ------------------------------------------------------------------------------------------------
def parse_in_process(module, script: str, *argv: str):
    """module.parse_args(script, module.Args, module.finalize_args) with sys.argv = [script, *argv]."""
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        return module.parse_args(script, module.Args, module.finalize_args)
    finally:
        sys.argv = saved


def assert_bad_input(module, script: str, argv, message: str, capsys, tmp_path, monkeypatch) -> str:
    """parse_args refuses argv with exit status 2 and one stderr line containing message; no run folder.
    tyro's own parse box (type errors, unknown flags, bad choices) counts when message is None."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        parse_in_process(module, script, *argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (e.value.code, err)
    assert "Traceback" not in err and not (tmp_path / "runs").exists(), err
    if message is not None:
        assert err.startswith(f"{script}: error: ") and len(err.strip().splitlines()) == 1, err
        assert message in err, err
    return err


def run_in_process(module, script: str, x_axis: str, tmp_path: Path, *argv: str):
    """Parse argv and run module.train through module.run_experiment with cwd = tmp_path;
    returns (exit status, run folder)."""
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        args = parse_in_process(module, script, *argv)
        code = module.run_experiment(script, args, module.train, x_axis, root=str(tmp_path / "runs"))
    finally:
        os.chdir(cwd)
    return code, only_run_dir(tmp_path)
