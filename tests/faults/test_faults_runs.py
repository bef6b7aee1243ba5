"""Training runs under faults, in this process: crafted checkpoints (issue item 1), a locked run directory (3),
evaluate's --out (4), options refused before anything is written (5), batches of one (7), diverging runs (9)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faultkit import run_main, temp_files, train_argv
from safetensors.torch import load_file

import densattn.train.fold as fold_runner
import densattn.train.loop as loop
from densattn.heads import build_head
from densattn.train import NonFiniteLossError, RunDirectory, RunLockedError, TrainConfig, run_experiment
from densattn.train.loop import load_checkpoint, train_model


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fortunes_cache) -> Path:
    """A finished 2-fold pool-head run of the tiny task (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    from densattn.cli import main

    assert main(train_argv(out, fortunes_cache)) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor densattn saved under ``folder`` (safetensors files and checkpoints)."""
    out = {}
    for path in folder.rglob("*.safetensors"):
        out.update({f"{path}:{k}": v for k, v in load_file(str(path)).items()})
    for path in folder.rglob("state.pt"):
        state = load_checkpoint(path)
        out.update({f"{path}:model.{k}": v for k, v in state["model"].items()})
        out.update({f"{path}:best.{k}": v for k, v in state["best_state"].items()})
    return out


# ------------------------------------------------------------------------------ item 1: crafted checkpoints
class Payload:
    """Unpickling this would create ``marker``: code execution, if a loader ever runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("container", ["torch-zip", "plain-pickle"])
def test_resume_refuses_a_crafted_checkpoint_and_runs_none_of_it(
    finished_run, tmp_path, capsys, fortunes_cache, container
):
    import pickle

    proof = tmp_path / "payload-works"
    pickle.loads(pickle.dumps(Payload(proof)))  # an unsafe loader would run it: the payload is real
    assert proof.is_dir()
    run = copy_run(finished_run, tmp_path / "shared-run")
    marker = tmp_path / "code-ran"
    (run / "folds" / "1" / "result.json").unlink()  # fold 1 looks interrupted: --resume will read its checkpoint
    state = {"model": Payload(marker), "epoch": 1}
    if container == "torch-zip":
        torch.save(state, run / "folds" / "1" / "state.pt")
    else:
        (run / "folds" / "1" / "state.pt").write_bytes(pickle.dumps(state))
    code, err = run_main(train_argv(run, fortunes_cache, "--resume"), capsys)
    assert code == 2 and "state.pt" in err and "Traceback" not in err
    expected = "refusing to load" if container == "torch-zip" else "not a torch checkpoint archive"
    assert expected in err and "delete it and rerun with --resume" in err
    assert not marker.exists()  # nothing in the file was executed (following the advice: see test_faults_errors)


# -------------------------------------------------------------------------------- item 3: one writer per run
def test_second_writer_is_refused_at_once_before_any_work(tmp_path, capsys, fortunes_cache, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process holding the run's OS lock, as a running `densattn train` does
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(120)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"

        def no_work(*args, **kwargs):
            raise AssertionError("data or encoder loaded before the lock was checked")

        monkeypatch.setattr("densattn.pipeline.load_task", no_work)
        code, err = run_main(train_argv(out, fortunes_cache), capsys)
        assert code == 2 and f"another densattn process is writing {out}" in err and "choose another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.undo()
    assert run_main(train_argv(out, fortunes_cache), capsys)[0] == 0  # the kernel released the dead holder's lock


def test_two_run_directories_on_one_path_in_one_process(tmp_path):
    with RunDirectory(tmp_path / "r"):
        with pytest.raises(RunLockedError, match="another densattn process"):
            RunDirectory(tmp_path / "r")
    with RunDirectory(tmp_path / "r", resume=True):  # released on close
        with open(tmp_path / "r" / ".lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: an OS lock, visible to any process


# --------------------------------------------------------------------------- item 4: evaluate's --out target
def test_evaluate_refuses_to_write_into_a_run(finished_run, tmp_path, capsys, fortunes_cache):
    run = copy_run(finished_run, tmp_path / "run")
    metrics = (run / "metrics.json").read_bytes()
    data = ["--data", "fortunes", "--max-samples", "60", "--cache-dir", str(fortunes_cache)]
    for target, out in [(run, run / "metrics.json"), (run / "folds" / "0" / "adapter", run / "evaluation.json")]:
        code, err = run_main(["evaluate", str(target), *data, "--out", str(out)], capsys)
        assert code == 2 and f"lies inside the run directory {run.resolve()}" in err
    assert (run / "metrics.json").read_bytes() == metrics and not (run / "evaluation.json").exists()
    folder = tmp_path / "reports"
    folder.mkdir()
    code, err = run_main(["evaluate", str(run), *data, "--out", str(folder)], capsys)
    assert code == 2 and "is a directory; give a file path" in err and not list(folder.iterdir())
    code, _ = run_main(["evaluate", str(run), *data, "--out", str(folder / "eval.json")], capsys)
    assert code == 0 and json.loads((folder / "eval.json").read_text())["num_examples"] == 60
    assert not temp_files(run) and not temp_files(folder)


# ------------------------------------------------------------------ item 5: options checked before writing
def test_bad_head_options_leave_out_reusable(tmp_path, capsys, fortunes_cache):
    out = tmp_path / "run"
    for bad in (["--num-heads", "3"], ["--preset", "bogus"]):
        code, err = run_main(train_argv(out, fortunes_cache, *bad, head="daam", epochs=1), capsys)
        assert code == 2 and " ".join(bad) in err and "Traceback" not in err
        assert not out.exists()  # nothing was written, not even the folder
    code, _ = run_main(train_argv(out, fortunes_cache, head="daam", epochs=1), capsys)  # the corrected rerun
    assert code == 0 and json.loads((out / "config.json").read_text())["method"] == "daam"


def test_folder_with_only_an_aborted_config_is_reused(tmp_path, capsys, fortunes_cache):
    out = tmp_path / "run"
    (out / "folds" / "0").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"method": "conv", "kind": "head"}))  # an attempt that never trained
    code, _ = run_main(train_argv(out, fortunes_cache, epochs=1), capsys)
    assert code == 0 and json.loads((out / "config.json").read_text())["method"] == "pool"
    code, err = run_main(train_argv(out, fortunes_cache, head="conv", epochs=1), capsys)  # finished folds: kept
    assert code == 2 and "is not empty; pass --resume" in err
    assert json.loads((out / "metrics.json").read_text())["method"] == "pool"


# ------------------------------------------------------------------------------------ item 7: batches of one
def test_batch_size_one_trains_every_example(text_features):
    x, y = text_features.features[:40], text_features.labels[:40]
    torch.manual_seed(0)
    model = build_head("pool", 7, 384, 4)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    steps = []
    model.register_forward_hook(lambda m, inputs, out: steps.append(len(inputs[0])) if m.training else None)
    cfg = TrainConfig(epochs=1, batch_size=1, early_stopping=5)
    result = train_model(model, x[:30], y[:30], x[30:], y[30:], cfg)
    assert steps == [1] * 30  # one optimiser step per example, none skipped
    assert math.isfinite(result.history[0]["train_loss"])
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert moved == list(before)  # every parameter left its initial value


def test_batch_size_one_with_batchnorm_is_refused_before_extraction(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "fresh-cache"
    code, err = run_main(train_argv(out, cache, "--batch-size", "1", head="mha_bn"), capsys)
    assert code == 2 and "BatchNorm" in err and "use --batch-size 2 or more" in err
    assert not out.exists() and not any(cache.glob("*/*"))  # refused before a feature was extracted
    with pytest.raises(ValueError, match="BatchNorm"):
        model = build_head("mha_bn", 7, 384, 4)
        train_model(model, torch.randn(8, 7, 384), torch.arange(8) % 4, torch.randn(4, 7, 384), torch.arange(4),
                    TrainConfig(batch_size=1))  # fmt: skip


# ------------------------------------------------------------------------------------ item 9: divergence
def test_non_finite_learning_rate_is_refused(tmp_path, capsys):
    for lr in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            TrainConfig(lr=lr)
    code, err = run_main(train_argv(tmp_path / "o", tmp_path / "c", "--lr", "inf"), capsys)
    assert code == 2 and "--lr must be a finite number > 0, got inf" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("lr", ["1e30", "1e38"])  # NaN loss; AdamW's step overflowing float32
def test_diverging_run_stops_with_exit_2_and_saves_no_nan(tmp_path, capsys, fortunes_cache, lr):
    out = tmp_path / "run"
    code, err = run_main(train_argv(out, fortunes_cache, "--lr", lr, epochs=3), capsys)
    assert code == 2 and "fold 0: training diverged at epoch" in err and "lower --lr" in err
    assert "--on-nonfinite skip-fold" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert all(torch.isfinite(v).all() for v in saved_tensors(out).values())


@pytest.fixture
def fold_1_diverges(monkeypatch):
    """Make the loss of fold 1 (seed 1) NaN and leave the other folds alone."""
    real_train, real_loss, current = fold_runner.train_model, loop.classification_loss, {}

    def train(model, *args, **kwargs):
        current["seed"] = args[4].seed
        return real_train(model, *args, **kwargs)

    def loss(logits, y, kind, **kw):
        value = real_loss(logits, y, kind, **kw)
        return value * float("nan") if current["seed"] == 1 else value

    monkeypatch.setattr(fold_runner, "train_model", train)
    monkeypatch.setattr(loop, "classification_loss", loss)


def test_skip_fold_records_the_failure_and_saves_no_nan(text_features, tmp_path, fold_1_diverges):
    cfg = TrainConfig(epochs=2, batch_size=32, on_nonfinite="skip-fold")
    out = tmp_path / "run"
    metrics = run_experiment(text_features, head="pool", out=out, folds=3, train_config=cfg, plots=False)
    assert metrics["num_folds"] == 2 and metrics["num_failed_folds"] == 1
    assert [f["fold"] for f in metrics["folds"]] == [0, 2] and metrics["adapter_fold"] == 0
    (failed,) = metrics["failed_folds"]
    assert failed["fold"] == 1 and "training diverged at epoch 1: the loss is nan" in failed["reason"]
    assert json.loads((out / "folds" / "1" / "result.json").read_text())["failed"] is True
    assert sorted(p.name for p in (out / "folds" / "1").iterdir()) == ["result.json"]  # no weights, no state
    assert all(torch.isfinite(v).all() for v in saved_tensors(out).values())
    assert json.loads((out / "metrics.json").read_text())["failed_folds"] == metrics["failed_folds"]
    again = run_experiment(text_features, head="pool", out=out, folds=3, train_config=cfg, plots=False, resume=True)
    assert again["failed_folds"] == metrics["failed_folds"] and again["folds"] == metrics["folds"]


def test_default_policy_stops_at_the_failing_fold(text_features, tmp_path, fold_1_diverges):
    cfg = TrainConfig(epochs=2, batch_size=32)
    with pytest.raises(NonFiniteLossError, match="fold 1: training diverged .* --on-nonfinite skip-fold"):
        run_experiment(text_features, head="pool", out=tmp_path / "run", folds=3, train_config=cfg, plots=False)
    assert (tmp_path / "run" / "folds" / "0" / "result.json").exists()
    assert not (tmp_path / "run" / "folds" / "1" / "result.json").exists()
    assert all(torch.isfinite(v).all() for v in saved_tensors(tmp_path / "run").values())


def test_cli_skip_fold_summary_counts_failed_folds(tmp_path, capsys, fortunes_cache, fold_1_diverges):
    out = tmp_path / "run"
    code, err = run_main(train_argv(out, fortunes_cache, "--on-nonfinite", "skip-fold", folds=3), capsys)
    assert code == 0
    assert "warning: 1 of 3 folds failed (folds 1: training diverged" in err and "the other 2" in err
    assert json.loads((out / "config.json").read_text())["train"]["on_nonfinite"] == "skip-fold"


def test_cli_skip_fold_when_every_fold_diverges(tmp_path, capsys, fortunes_cache):
    out = tmp_path / "run"
    code, err = run_main(train_argv(out, fortunes_cache, "--on-nonfinite", "skip-fold", "--lr", "1e30"), capsys)
    assert code == 2 and "every fold diverged" in err and "train into a new --out" in err
    assert not (out / "metrics.json").exists() and not saved_tensors(out)


def test_run_started_before_on_nonfinite_existed_still_resumes(tmp_path):
    recorded = {"method": "pool", "train": TrainConfig().to_dict()}
    del recorded["train"]["on_nonfinite"]  # what an older densattn wrote
    with RunDirectory(tmp_path / "r") as run:
        run.write_config(recorded)
    with RunDirectory(tmp_path / "r", resume=True) as run:
        run.write_config({"method": "pool", "train": TrainConfig().to_dict()})  # the default: the same run
    with RunDirectory(tmp_path / "r", resume=True) as run, pytest.raises(ValueError, match="differs in \\['train'\\]"):
        run.write_config({"method": "pool", "train": TrainConfig(on_nonfinite="skip-fold").to_dict()})
