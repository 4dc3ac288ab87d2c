"""The run machinery every script shares (the copied blocks run-name, wandb-init, outputs, entry):
signals, bad run folders, W&B credentials, strict JSON, failed and non-finite runs. The blocks are
byte-identical across scripts (test_copied_blocks.py), so their unit tests run once, on rd_ppo.py;
whatever touches a script's own code runs on all six."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, parse_in_process, read_json, read_metrics

import rd_ppo as R

# script -> (module name, x-axis, arguments of a run that lasts well beyond a few seconds)
SCRIPTS = {
    "rd_ppo.py": ("rd_ppo", "global_step", ()),
    "order_parameter.py": ("order_parameter", "episode", ()),
    "control_parameter.py": ("control_parameter", "episode", ()),
    "ga_learning_rule.py": ("ga_learning_rule", "generation", ()),
    "self_critic_lm.py": ("self_critic_lm", "step", ()),
    "gist_meta.py": ("gist_meta", "step", ()),
}


def offline_env(**extra):
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1", **extra}


# ------------------------------------------------------------------------------------------------
# Signals: a real subprocess, killed once it has logged a row
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_signals_end_the_run_cleanly(script, tmp_path):
    _, x_axis, argv = SCRIPTS[script]
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        cwd = tmp_path / signal.Signals(signum).name
        cwd.mkdir()
        proc = subprocess.Popen([sys.executable, str(REPO / script), *argv], cwd=cwd, env=offline_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        metrics = None
        while time.time() < deadline and proc.poll() is None:
            found = list((cwd / "runs").glob("*/metrics.jsonl")) if (cwd / "runs").exists() else []
            if found and found[0].stat().st_size > 0:
                metrics = found[0]
                break
            time.sleep(0.2)
        assert metrics is not None and proc.poll() is None, f"{script} logged no row in time: {proc.stderr.read()}"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "Traceback" not in err and f"interrupted by {signal.Signals(signum).name}" in err, err
        summary = read_json(metrics.parent / "summary.json")
        rows = read_metrics(metrics.parent)
        assert summary["status"] == "interrupted" and summary["signal"] == signal.Signals(signum).name
        assert summary["rows_logged"] == len(rows) >= 1
        assert summary[f"last_{x_axis}"] == rows[-1][x_axis]


# ------------------------------------------------------------------------------------------------
# Run folders and W&B credentials, in every script (in process)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/abs", "..", "x" * 300])
def test_exp_name_must_stay_under_runs(script, name, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(SCRIPTS[script][0])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        parse_in_process(module, script, "--exp-name", name)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--exp-name" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_track_without_credentials_is_one_line(script, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(SCRIPTS[script][0])
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        parse_in_process(module, script, "--track", "True")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "WANDB_MODE=offline" in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("WANDB_MODE", "offline")
    parse_in_process(module, script, "--track", "True")          # offline mode is enough


def test_run_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file, not a folder")
    proc = subprocess.run([sys.executable, str(REPO / "rd_ppo.py"), "--total-timesteps", "2048"], cwd=tmp_path,
                          env=offline_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot create a run folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    if os.geteuid() != 0:                                       # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="cannot create a run folder"):
            R.make_run_dir("x", 1, root=str(ro / "runs"))


# ------------------------------------------------------------------------------------------------
# The shared blocks themselves (identical in every script, tested once here)
# ------------------------------------------------------------------------------------------------
def test_json_is_strict_and_nan_becomes_null(tmp_path):
    value = {"a": float("nan"), "b": [np.float32(np.inf), np.int64(3)], "c": torch.tensor(2.5),
             "d": np.array([1.0, np.nan]), "e": None, "f": True, "g": (1, "x")}
    assert R.to_json_safe(value) == {"a": None, "b": [None, 3], "c": 2.5, "d": [1.0, None], "e": None, "f": True,
                                     "g": [1, "x"]}
    R.write_json(str(tmp_path / "s.json"), value)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)["a"] is None
    assert not (tmp_path / "s.json.tmp").exists()


def test_check_exp_name_and_memory():
    R.check_exp_name("fine_name-1.2")
    for bad in ("", ".", "..", "a/b", "../x", "/abs", "x" * 201):
        with pytest.raises(ValueError):
            R.check_exp_name(bad)
    R.check_memory(1e6, "small", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs about .* GiB"):
        R.check_memory(1e15, "a huge buffer", torch.device("cpu"))


class FakeArgs:
    """The fields run_experiment reads."""

    def __init__(self, **kw):
        self.exp_name, self.seed, self.torch_deterministic, self.track = "fake", 1, True, False
        self.wandb_project_name, self.wandb_entity = "test", None
        self.__dict__.update(kw)


def logged_then(action):
    """A train(args, log) that logs three rows, then does `action`."""
    def train(args, log):
        for x in range(3):
            log.log(x, {"loss": float(x)})
        return action(log)
    return train


def fake_run(tmp_path, action):
    code = R.run_experiment("fake.py", FakeArgs(), logged_then(action), "step", root=str(tmp_path / "runs"))
    run_dir = next((tmp_path / "runs").iterdir())
    return code, run_dir, read_json(run_dir / "summary.json"), read_metrics(run_dir)


def test_run_experiment_ok_nonfinite_failed_interrupted(tmp_path, capsys):
    code, _, summary, rows = fake_run(tmp_path / "ok", lambda log: {"status": "ok", "x": float("nan")})
    assert code == 0 and summary == {"status": "ok", "x": None, "last_step": 2, "rows_logged": 3} and len(rows) == 3

    code, _, summary, rows = fake_run(tmp_path / "nan", lambda log: {"status": "non-finite loss at step 2"})
    assert code == 1 and summary["status"].startswith("non-finite") and len(rows) == 3
    assert "stopped: non-finite loss" in capsys.readouterr().err

    def boom(log):
        raise RuntimeError("the disk is on fire")
    code, run_dir, summary, rows = fake_run(tmp_path / "fail", boom)
    err = capsys.readouterr().err
    assert code == 1 and summary["status"] == "failed" and "the disk is on fire" in summary["error"]
    assert "Traceback" not in err and "failed: RuntimeError" in err and len(rows) == 3
    assert "RuntimeError" in (run_dir / "traceback.txt").read_text()

    def killed(log):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the run")
    before = signal.getsignal(signal.SIGTERM)
    code, _, summary, rows = fake_run(tmp_path / "term", killed)
    assert code == 143 and summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["last_step"] == 2 and len(rows) == 3
    assert signal.getsignal(signal.SIGTERM) is before                 # handlers restored afterwards


def test_nan_metric_rows_are_valid_json(tmp_path):
    code, run_dir, _, _ = fake_run(tmp_path, lambda log: (log.log(3, {"loss": math.nan}), {"status": "ok"})[1])
    rows = read_metrics(run_dir)
    assert rows[-1] == {"step": 3, "loss": None}


def test_a_signal_during_a_row_write_still_counts_the_row(tmp_path):
    """A signal that lands while a row is being written is held until the row is counted."""
    class KillingFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text)
            os.kill(os.getpid(), signal.SIGTERM)             # arrives between the write and the count

        def close(self):
            self.f.close()

    def train(args, log):
        log.log(0, {"loss": 1.0})
        log.metrics = KillingFile(log.metrics)
        log.log(1, {"loss": 2.0})
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the run")

    code = R.run_experiment("fake.py", FakeArgs(), train, "step", root=str(tmp_path / "runs"))
    run_dir = next((tmp_path / "runs").iterdir())
    summary, rows = read_json(run_dir / "summary.json"), read_metrics(run_dir)
    assert code == 143 and len(rows) == 2
    assert summary["rows_logged"] == 2 and summary["last_step"] == 1
