"""Errors a user can act on, in this process: failed and killed writes (issue item 6), OS errors and interrupts
(10), mistyped encoders (11), malformed JSON and relative data paths (12)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from faultkit import dead_pid, mount_tmpfs, read_only_folder, remount, run_main, temp_files, train_argv

import densattn.train.fold as fold_runner
from densattn.cli import main
from densattn.data.cache import cached_features
from densattn.encoders import get_encoder
from densattn.io import atomic_torch_save, atomic_write_text, remove_stale_temp_files
from densattn.train import RunDirectory


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, fortunes_cache) -> Path:
    """The tiny task trained without faults (2 folds, pool head), to compare interrupted runs against."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_argv(out, fortunes_cache)) == 0
    return out


def fold_results(run: Path) -> list[dict]:
    keep = ("accuracy", "macro_f1", "confusion_matrix", "best_epoch", "best_val_accuracy", "epochs_run")
    return [{k: f[k] for k in keep} for f in json.loads((run / "metrics.json").read_text())["folds"]]


# ------------------------------------------------------------------------------- item 6: failed writes
def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_torch_save({"epoch": 1}, target)
    before = target.read_bytes()

    def full_disk_save(obj, path):  # what torch.save does on a full disk: part of the file, then its own error
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr("densattn.io.os.statvfs", lambda _: type("S", (), {"f_bavail": 0, "f_frsize": 4096})())
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_torch_save({"epoch": 2}, target)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)  # the target, not the temp
    assert target.read_bytes() == before and not temp_files(tmp_path)
    monkeypatch.undo()
    with pytest.raises(TypeError):  # a bug in what is written stays a bug, not a "full disk"
        atomic_write_text(tmp_path / "x.txt", 42)  # type: ignore[arg-type]
    assert not temp_files(tmp_path)


@contextlib.contextmanager
def small_disk(path: Path, monkeypatch):
    """A folder whose disk is too small for a checkpoint: a 256 KiB tmpfs where it can be mounted, else a patched
    ``torch.save`` that fails there as it does on a full disk. Yields a function that frees space."""
    if mount_tmpfs(path, "256k") is None:
        try:
            yield lambda: remount(path, "16m")
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    real_save, full = torch.save, {"on": True}

    def save(obj, file, *args, **kwargs):
        if full["on"] and Path(file).is_relative_to(path):
            Path(file).write_bytes(b"PK\x03\x04 part of a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, file, *args, **kwargs)

    real_statvfs = os.statvfs
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", lambda p: _no_space() if full["on"] else real_statvfs(p))
    yield lambda: full.update(on=False)


def _no_space():
    return type("Full", (), {"f_bavail": 0, "f_frsize": 4096})()


def test_disk_full_during_training_exits_2_and_resume_finishes(
    tmp_path, capsys, fortunes_cache, reference_run, monkeypatch
):
    with small_disk(tmp_path / "small-disk", monkeypatch) as free_space:
        out = tmp_path / "small-disk" / "run"
        code, err = run_main(train_argv(out, fortunes_cache), capsys)
        assert code == 2 and "Traceback" not in err
        assert f"No space left on device: {out}/folds/0/" in err and "rerun with --resume" in err
        assert not temp_files(out)  # the failed write cleaned up after itself
        free_space()
        code, _ = run_main(train_argv(out, fortunes_cache, "--resume"), capsys)
        assert code == 0 and fold_results(out) == fold_results(reference_run)
        assert not temp_files(out)


def test_killed_writers_temp_files_are_removed_on_the_next_start(tmp_path, toy_dataset, encoder_cls):
    pid = dead_pid()
    run = tmp_path / "run"
    (run / "folds" / "1").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    stale = [run / "folds" / "1" / f".state.pt.tmp{pid}-0123abcd", run / f".curves.png.tmp{pid}-89abcdef.png"]
    for path in stale:
        path.write_bytes(b"half")
    live = run / f".metrics.json.tmp{os.getpid()}-00000000"  # a writer still running: kept
    live.write_bytes(b"busy")
    with RunDirectory(run, resume=True):
        assert not any(p.exists() for p in stale) and live.exists()
    live.unlink()
    # the feature cache: an extraction killed mid-shard leaves a temp in its entry; the next extraction removes it
    cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "cache", batch_size=8)
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "manifest.json").unlink()
    shard_temp = entry / f".shard-00000.safetensors.tmp{pid}-feedbeef"
    shard_temp.write_bytes(b"half a shard")
    cached_features(encoder_cls(), toy_dataset, cache_dir=tmp_path / "cache", batch_size=8)
    assert not shard_temp.exists() and not temp_files(entry) and (entry / "manifest.json").exists()
    assert remove_stale_temp_files(tmp_path) == []


# ------------------------------------------------------------------------------------- item 10: OS errors
def test_read_only_out_and_cache_dir_exit_2_naming_the_path(tmp_path, capsys, fortunes_cache):
    with read_only_folder(tmp_path / "cdrom") as ro:
        why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
        code, err = run_main(train_argv(ro / "run", fortunes_cache), capsys)
        assert code == 2 and f"cannot write the run directory {ro / 'run'}: {why}; choose a writable --out" in err
        code, err = run_main(train_argv(tmp_path / "run", ro / "cache"), capsys)
        assert code == 2 and f"{why}: {ro / 'cache'}" in err and "--cache-dir" in err
        assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_out_that_is_a_file_and_bogus_device(tmp_path, capsys, fortunes_cache):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_main(train_argv(tmp_path / "notes.txt", fortunes_cache), capsys)
    assert code == 2 and "is a file, not a directory" in err and (tmp_path / "notes.txt").read_text() == "mine"
    code, err = run_main(train_argv(tmp_path / "o", fortunes_cache, "--device", "bogus"), capsys)
    assert code == 2 and "--device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'bogus'" in err


@pytest.mark.parametrize("damage", ["truncated", "empty", "other-model"])
def test_corrupt_checkpoint_on_resume_exits_2_with_the_fix(reference_run, tmp_path, capsys, fortunes_cache, damage):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "folds" / "1" / "result.json").unlink()
    state = run / "folds" / "1" / "state.pt"
    if damage == "other-model":
        torch.save({"model": {"weight": torch.zeros(3)}, "epoch": 1}, state)
    else:
        torch.save({"model": {"weight": torch.zeros(300)}}, state)
        state.write_bytes(state.read_bytes()[: 0 if damage == "empty" else 100])
    code, err = run_main(train_argv(run, fortunes_cache, "--resume"), capsys)
    assert code == 2 and str(state) in err and "delete it and rerun with --resume" in err and "Traceback" not in err
    if damage == "truncated":  # following the advice finishes the run as if nothing had happened
        state.unlink()
        assert run_main(train_argv(run, fortunes_cache, "--resume"), capsys)[0] == 0
        assert fold_results(run) == fold_results(reference_run)


def test_interrupt_exits_130_and_points_at_resume(tmp_path, capsys, fortunes_cache, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fold_runner, "train_model", interrupted)
    code, err = run_main(train_argv(tmp_path / "run", fortunes_cache), capsys)
    assert code == 130 and "interrupted; rerun the same command with --resume" in err and "Traceback" not in err


def test_bugs_keep_their_traceback_and_debug_reraises(tmp_path, capsys, fortunes_cache, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(fold_runner, "train_model", bug)
    with pytest.raises(ZeroDivisionError):  # not turned into a one-line message
        main(train_argv(tmp_path / "a", fortunes_cache))
    monkeypatch.setenv("DENSATTN_DEBUG", "1")
    with pytest.raises(ValueError, match="--device must be"):
        main(train_argv(tmp_path / "b", fortunes_cache, "--device", "bogus"))


# ------------------------------------------------------------------------------ item 11: mistyped encoders
@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"densattn tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("offline", [False, True])
def test_mistyped_encoder_fails_at_once_with_a_suggestion(no_network, monkeypatch, offline, tmp_path, capsys):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for typo, meant in [("minlm", "minilm"), ("whisper", "whisper-tiny"), ("efficientnet-lite", "efficientnet-lite0")]:
        with pytest.raises(ValueError, match=rf"is not a bundled encoder .*did you mean '{meant}'\?"):
            get_encoder(typo)
    with pytest.raises(ValueError, match=r"not .* a hub id in the local Hugging Face cache; densattn never downloads"):
        get_encoder("someone/some-model")
    code, err = run_main(["train", "--data", "fortunes", "--encoder", "minlm", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "did you mean 'minilm'?" in err and not (tmp_path / "o").exists()


def test_encoder_folder_without_config_json(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"encoder folder .*model' has no config.json"):
        get_encoder(str(tmp_path / "model"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file; give the folder"):
        get_encoder(str(tmp_path / "weights.bin"))


def tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertModel(config).save_pretrained(folder)
    return folder


def test_cached_hub_id_loads_without_the_network(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--someone--tiny-bert"
    tiny_bert(repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    encoder = get_encoder("someone/tiny-bert")
    assert encoder.encode(["hello world"]).shape == (1, 2, 8)


# ------------------------------------------------------------------ item 12: JSON errors, relative data paths
def test_malformed_json_names_the_file(reference_run, tmp_path, capsys, fortunes_cache):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "config.json").write_text('{"method": "pool", ')  # truncated
    code, err = run_main(train_argv(run, fortunes_cache, "--resume"), capsys)
    assert code == 2 and f"{run / 'config.json'} is not valid JSON (line 1" in err
    code, err = run_main(["compare", str(run), str(reference_run), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 2 and f"{run / 'config.json'} is not valid JSON" in err
    model = tiny_bert(tmp_path / "bert")
    (model / "preprocessor_config.json").write_text("{'single': 'quotes'}")
    with pytest.raises(ValueError, match=r"preprocessor_config.json is not valid JSON"):
        get_encoder(str(model))


def test_relative_csv_path_is_recorded_resolved_and_explain_works_elsewhere(tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    rows = [
        f"{'the match ended in a draw' if k % 2 else 'the server crashed again'} {k},{'ab'[k % 2]}" for k in range(24)
    ]
    (work / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(work)
    argv = ["train", "--data", "csv:reviews.csv", "--encoder", "minilm", "--head", "daam", "--folds", "2"]
    code, _ = run_main(argv + ["--epochs", "1", "--out", "run", "--cache-dir", "cache"], capsys)
    assert code == 0
    assert json.loads((work / "run" / "config.json").read_text())["data"] == f"csv:{work / 'reviews.csv'}"
    monkeypatch.chdir(elsewhere)
    code, err = run_main(["explain", str(work / "run"), "--cache-dir", str(work / "cache")], capsys)
    assert code == 0, err
