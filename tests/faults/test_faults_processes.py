"""The `densattn` command as separate processes, the way faults happen to users: two runs on one --out (issue item
3), kill -9 during training and --resume (items 1 and 6), a full disk (items 6 and 10). Each starts Python, torch
and the encoder several times, so these are slow tests (`make test-all`); the same faults are covered in this
process by the fast tests beside them."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from faultkit import remount, run_cli, start_cli, temp_files, tmpfs, train_argv
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def wait_for(condition, *, timeout: float = 300.0, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(poll)


def run_summary(run: Path) -> dict:
    """What must not depend on interruptions: per-fold test metrics, per-epoch losses and scores, the weights."""
    folds = []
    for k in sorted(int(p.name) for p in (run / "folds").iterdir()):
        row = json.loads((run / "folds" / str(k) / "result.json").read_text())
        history = [(h["epoch"], h["train_loss"], h["val_accuracy"], h["lr"]) for h in row["history"]]
        folds.append({k2: row[k2] for k2 in ("accuracy", "confusion_matrix", "best_epoch")} | {"history": history})
    weights = {k: v.tolist() for k, v in load_file(str(run / "adapter_model.safetensors")).items()}
    return {"folds": folds, "weights": weights}


def test_two_processes_on_one_out(tmp_path, fortunes_cache):
    out = tmp_path / "run"
    first = start_cli(train_argv(out, fortunes_cache, "--patience", "40", head="daam", epochs=40))
    try:
        wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(first.pid))
        second = run_cli(train_argv(out, fortunes_cache, head="conv", epochs=2))
        assert second.returncode == 2, second.stderr
        assert f"another densattn process is writing {out}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None, "the second run waited for the first instead of failing at once"
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert config["method"] == metrics["method"] == adapter["head"] == "daam"


def test_kill_9_during_training_then_resume_equals_uninterrupted(tmp_path, fortunes_cache):
    argv = ["--patience", "30"]
    reference = run_cli(train_argv(tmp_path / "reference", fortunes_cache, *argv, head="daam", epochs=30))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    proc = start_cli(train_argv(out, fortunes_cache, *argv, head="daam", epochs=30))
    wait_for(lambda: any(out.glob("folds/*/state.pt")) or proc.poll() is not None)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))  # somewhere in the middle of training
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists(), "finished before the kill"
    resumed = run_cli(train_argv(out, fortunes_cache, *argv, "--resume", head="daam", epochs=30))
    assert resumed.returncode == 0, resumed.stderr
    assert run_summary(out) == run_summary(tmp_path / "reference")
    assert not temp_files(out) and not any(out.glob("folds/*/state.pt"))


def test_disk_full_in_a_separate_process(tmp_path, fortunes_cache):
    with tmpfs(tmp_path / "small-disk", "256k") as disk:
        out = disk / "run"
        full = run_cli(train_argv(out, fortunes_cache))
        assert full.returncode == 2 and "Traceback" not in full.stderr
        (line,) = [x for x in full.stderr.splitlines() if x.startswith("densattn train: error:")]
        assert f"No space left on device: {out}/folds/0/" in line and "rerun with --resume" in line
        assert not temp_files(out)
        remount(disk, "16m")
        resumed = run_cli(train_argv(out, fortunes_cache, "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        weights = load_file(str(out / "adapter_model.safetensors")).values()
        assert all(torch.isfinite(v).all() for v in weights)
