#!/usr/bin/env bash
# Runs the csg_jax benchmarks on a lent GPU machine in one call of at most 10 minutes:
# training throughput (vs PyTorch when torch is there), MIS speed, and the full CIFAR-10
# reproduction (STD and CSG at once, stopped and evaluated at a deadline if they run late).
#
# Here, once (needs PyPI and ../shared/data):
#   bash benchmarks/gpu.sh prepare       # wheels the GPU image lacks + CIFAR-10 into .whl/
#   bash benchmarks/gpu.sh smoke         # optional: every stage at toy size, on any machine
#                                        # (with a python3 that has csg_jax's dependencies)
# On the GPU machine (the device tool), from the repository root:
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
# Logs and summary.json go to $OUT (the tool's return folder), else /tmp/csg_bench_out.
# BUDGET_S (default 560) is the whole script's time; FULL_EPOCHS overrides the full schedule.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU image ('cuda', KINDS.md) lacks of csg_jax's needs; pure-Python wheels.
WHEELS=("ml_collections==1.1.0" "tensorboardX==2.6.5")
DATA_NAME=cifar10-jpeg.tar.gz

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p .whl/data
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  cp -f "../shared/data/$DATA_NAME" .whl/data/ || exit 1
  git check-ignore -q .whl || echo "warning: .whl/ is not ignored by git; add /.whl/ to .git/info/exclude"
  ls -la .whl .whl/data
  exit 0
fi

# `bash benchmarks/gpu.sh smoke` runs every stage at toy size: checks this script on any machine.
SMOKE=0
[[ "${1:-}" == "smoke" ]] && SMOKE=1
if (( SMOKE )); then
  THROUGHPUT_ARGS=(--models resnet20 --rounds 2)
  MIS_ARGS=(--n 2000 --k 16 --c 10)
  FULL_EPOCHS=${FULL_EPOCHS:-0.01}
else
  THROUGHPUT_ARGS=(--rounds 30)
  MIS_ARGS=(--n 10000 --k 64 --c 10)
fi
BUDGET_S=${BUDGET_S:-560}
OUT=${OUT:-/tmp/csg_bench_out}
mkdir -p "$OUT"
left() { echo $((BUDGET_S - SECONDS)); }
say() { echo "== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }

say "environment"
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  lscpu | grep -m1 "Model name"
  python3 --version
} | tee "$OUT/env.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "error: installing .whl/*.whl failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "numpy",
             "sklearn", "tensorboardX", "torch"):
  try:
    print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
  except ImportError as e:
    print(f"{name} MISSING ({e})")
import jax
print(f"jax devices: {jax.devices()}")
EOF
MISSING=$(python3 -c '
import importlib
for name in ("jax", "flax", "optax", "chex", "orbax.checkpoint", "absl", "sklearn", "PIL",
             "ml_collections", "tensorboardX"):
  try:
    importlib.import_module(name)
  except ImportError:
    print(name, end=" ")
' 2>/dev/null)
if [[ -n "$MISSING" ]]; then
  echo "error: csg_jax needs ${MISSING}which this machine lacks. Carry their wheels in .whl/"
  echo "(ml_collections and tensorboardX come from 'bash benchmarks/gpu.sh prepare'; add others"
  echo "to WHEELS there)."
  exit 1
fi

TORCH_FLAG=()
if ! python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "torch with CUDA is not on this machine: the PyTorch comparison is skipped"
  TORCH_FLAG=(--skip-torch)
fi

say "training throughput (budget 200 s)"
# Half the GPU memory for JAX, so that torch, in the same process, has room too.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 timeout 200 python3 benchmarks/train_throughput.py \
  "${THROUGHPUT_ARGS[@]}" "${TORCH_FLAG[@]}" 2>&1 | tee "$OUT/throughput.log"

say "MIS speed, CIFAR scale (budget 80 s)"
timeout 80 python3 benchmarks/mis_speed.py "${MIS_ARGS[@]}" 2>&1 | tee "$OUT/mis_speed.log"

DATA=""
for d in "../shared/data/$DATA_NAME" ".whl/data/$DATA_NAME"; do
  [[ -f "$d" ]] && { DATA="$d"; break; }
done
if [[ -z "$DATA" ]]; then
  echo "CIFAR-10 ($DATA_NAME) is neither in ../shared/data nor .whl/data: run"
  echo "'bash benchmarks/gpu.sh prepare' here and carry .whl. Reproduction skipped."
else
  # Training stops at the deadline, leaving ~70 s to evaluate checkpoints and print the table.
  TRAIN_S=$(($(left) - 70))
  say "CIFAR-10 reproduction, full schedule (training deadline ${TRAIN_S} s)"
  EPOCHS=()
  [[ -n "${FULL_EPOCHS:-}" ]] && EPOCHS=(--epochs "$FULL_EPOCHS")
  timeout $(($(left) - 10)) python3 benchmarks/reproduce_cifar10.py --schedule full --jobs 2 \
    "${EPOCHS[@]}" --data "$DATA" --workdir /tmp/csg_reproduce --deadline-s "$TRAIN_S" 2>&1 \
    | tee "$OUT/reproduce.log"
fi

if (( ! SMOKE && $(left) > 100 )); then
  say "MIS speed, ImageNet scale, csg_jax only (budget $(($(left) - 20)) s)"
  timeout $(($(left) - 20)) python3 benchmarks/mis_speed.py --n 50000 --k 2048 --c 1000 \
    --skip-sklearn --sklearn-classes 0 2>&1 | tee "$OUT/mis_speed_imagenet.log"
fi

# The last line of each benchmark is its JSON result: collect them in one file.
python3 - "$OUT" <<'EOF'
import json, os, sys
out, summary = sys.argv[1], {}
for name in ("throughput", "mis_speed", "reproduce", "mis_speed_imagenet"):
  path = os.path.join(out, f"{name}.log")
  lines = open(path).read().strip().splitlines() if os.path.exists(path) else []
  try:
    summary[name] = json.loads(lines[-1])
  except (IndexError, ValueError):
    summary[name] = None
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary))
EOF
say "done"
