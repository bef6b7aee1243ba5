"""The command line under ``torchrun`` (2 CPU processes, gloo): ``densattn train`` extracts on both ranks, trains the
folds on both, and writes the same feature cache and metrics as one process; a LoRA run trains data-parallel and its
adapter reloads. Slow (each launch imports torch in three processes), so it runs in ``make test-all``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from densattn.adapters import load_adapter

pytestmark = pytest.mark.slow

TIMING = {"seconds_per_epoch", "train_seconds"}


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _densattn(*args: str, ranks: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    densattn = shutil.which("densattn", path=str(Path(sys.executable).parent))
    if ranks == 1:
        command = [densattn, *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        command = [
            torchrun,
            f"--nproc-per-node={ranks}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            densattn,
            *args,
        ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def csv_data(tiny_texts, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in zip(tiny_texts.items, tiny_texts.labels):
            writer.writerow([text, tiny_texts.classes[label]])
    return path


def _train_args(encoder: str, data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        f"--encoder={encoder}",
        "--encoder-option=max_length=16",
        f"--data=csv:{data}",
        f"--cache-dir={cache}",
        "--batch-size-encode=4",
        "--folds=2",
        "--epochs=3",
        "--batch-size=16",
        "--device=cpu",
        f"--out={out}",
        *extra,
    ]


def test_torchrun_train_heads_equals_one_process(tiny_bert_dir, csv_data, tmp_path):
    one = _densattn(*_train_args(tiny_bert_dir, csv_data, tmp_path / "c1", tmp_path / "one"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = _densattn(*_train_args(tiny_bert_dir, csv_data, tmp_path / "c2", tmp_path / "two"), ranks=2, cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("accuracy") == 1  # one rank reports
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _without_timing(m2) == _without_timing(m1)
    (e1,) = (tmp_path / "c1").iterdir()
    (e2,) = (tmp_path / "c2").iterdir()
    assert (e1 / "manifest.json").read_bytes() == (e2 / "manifest.json").read_bytes()


def test_torchrun_lora_trains_data_parallel_and_reloads(tiny_bert_dir, csv_data, tmp_path):
    args = _train_args(tiny_bert_dir, csv_data, tmp_path / "c", tmp_path / "lora", "--method=lora", "--rank=2")
    run = _densattn(*args, ranks=2, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    model = load_adapter(tmp_path / "lora")
    assert len(model.predict(["the cat sat on the mat"])) == 1
    assert not list((tmp_path / "lora").glob("folds/*/state.pt"))
