#!/usr/bin/env bash
# GPU smoke test and benchmark (make gpu-check): on a CUDA machine,
#   1. the CUDA tests (tests/train/test_cuda.py: AMP head and LoRA runs, extraction vs CPU, no host syncs in a step),
#   2. the command line on CUDA with mixed precision: extract MiniLM features of Debian fortunes, train a DAAM head
#      (2 folds) and a LoRA fold, and check that every reported number is finite,
#   3. with 2 or more GPUs, the same LoRA fold data-parallel under torchrun (NCCL),
#   4. the DAAM kernel benchmark on CUDA (benchmarks/daam_kernel.py --device cuda).
# Writes OUT/gpu_check.json (default gpu_check_out/); exits non-zero on the first failure.
# Usage: scripts/gpu_check.sh [OUT]     Takes about 5 minutes on one GPU (most of it the kernel benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${1:-gpu_check_out}
rm -rf "$OUT" && mkdir -p "$OUT"
timed() {  # timed NAME COMMAND...: run it, keep its start and end times in OUT/NAME.time
  local name=$1 start
  shift
  start=$(date +%s.%N)
  "$@"
  echo "$start $(date +%s.%N)" >"$OUT/$name.time"
}

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available here')"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(), 'x', torch.cuda.device_count(), \
'| torch', torch.__version__, '| CUDA', torch.version.cuda)"

echo "== 1. CUDA tests"
"$PY" -m pytest -q -m "" -rs tests/train/test_cuda.py

echo "== 2. command line on CUDA (AMP)"
COMMON=(--encoder minilm --data fortunes --max-samples 400 --cache-dir "$OUT/cache" --device cuda)
timed extract "$BIN/densattn" extract "${COMMON[@]}"
timed daam "$BIN/densattn" train "${COMMON[@]}" --head daam --folds 2 --epochs 10 \
  --out "$OUT/daam"
timed lora "$BIN/densattn" train "${COMMON[@]}" --method lora --folds 1 --epochs 2 \
  --batch-size 32 --out "$OUT/lora"

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  echo "== 3. LoRA data-parallel on $GPUS GPUs (torchrun, NCCL)"
  timed lora_ddp "$BIN/torchrun" --nproc-per-node "$GPUS" "$BIN/densattn" train \
    "${COMMON[@]}" --method lora --folds 1 --epochs 2 --batch-size 32 --out "$OUT/lora_ddp"
else
  echo "== 3. skipped: one GPU (data-parallel LoRA needs 2 or more)"
fi

"$PY" - "$OUT" <<'PYEOF'
import json, math, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])


def wall(name):
    start, end = map(float, (out / f"{name}.time").read_text().split())
    return round(end - start, 2)


report = {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "torch": torch.__version__}
for name in ("daam", "lora", "lora_ddp"):
    path = out / name / "metrics.json"
    if not path.exists():
        continue
    m = json.loads(path.read_text())
    numbers = [m["accuracy_mean"], m["macro_f1_mean"], *m["per_class_f1_mean"].values()]
    if not all(math.isfinite(v) for v in numbers):
        sys.exit(f"gpu_check: {name} reported non-finite metrics: {numbers}")
    report[name] = {"accuracy": m["accuracy_mean"], "seconds_per_epoch": m["seconds_per_epoch"], "wall_s": wall(name)}
report["extract_wall_s"] = wall("extract")
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
PYEOF

echo "== 4. DAAM kernel benchmark on CUDA"
if "$PY" benchmarks/daam_kernel.py --help | grep -q -- "--device"; then
  "$PY" benchmarks/daam_kernel.py --device cuda
else
  echo "skipped: benchmarks/daam_kernel.py has no --device flag in this checkout"
fi
echo "gpu_check: all passed ($OUT/gpu_check.json)"
