#!/usr/bin/env bash
# Runs the csg_jax benchmarks on a machine with a CUDA GPU, in at most about 10 minutes:
# training throughput (vs PyTorch when torch with CUDA is installed), MIS speed, and the full
# CIFAR-10 reproduction (STD and CSG at once, stopped and evaluated at a deadline if they run
# late), then MIS speed at ImageNet scale if time is left.
#
# On a machine with a CUDA GPU, from the repository root:
#   pip install -e .                  # csg_jax and its dependencies
#   pip install -U "jax[cuda12]"      # jax with CUDA
#   pip install -e ".[bench]"         # optional: torch, for the PyTorch comparison
#   bash benchmarks/gpu.sh OUT_DIR    # OUT_DIR defaults to workdirs/gpu_bench
# Each stage's log (env.txt, throughput.log, mis_speed.log, reproduce.log,
# mis_speed_imagenet.log) and summary.json (every stage's final JSON line, null where a stage
# failed or was skipped) go to OUT_DIR; the reproduction's workdirs go to workdirs/gpu_reproduce
# (both relative to the repository root, which git ignores).
# CIFAR-10 is the JPEG tarball at ../shared/data/cifar10-jpeg.tar.gz (as for
# reproduce_cifar10.py), .whl/data/cifar10-jpeg.tar.gz, or the path in CIFAR10_DATA; without it
# the reproduction is skipped.
# Environment: BUDGET_S (default 560) is the whole script's time in seconds; FULL_EPOCHS
# overrides the full schedule's 60 epochs; SMOKE=1 runs every stage at toy size, which checks
# this script in a few minutes on any machine, a CPU-only one included.
#
# For a GPU machine without internet access whose Python already has jax with CUDA (and
# possibly torch) but lacks some of csg_jax's other dependencies: on a machine with internet
# access, `bash benchmarks/gpu.sh prepare` downloads the wheels listed in WHEELS below and copies
# the CIFAR-10 tarball into .whl/ (git-ignored); copy the checkout with .whl/ to the GPU machine,
# where this script installs .whl/*.whl into .whl/site and puts it on PYTHONPATH.
set -uo pipefail

# Pure-Python dependencies of csg_jax that a preinstalled jax/CUDA environment often lacks;
# `prepare` downloads these (add others here).
WHEELS=("ml_collections==1.1.0" "tensorboardX==2.6.5")
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}   # the GPU machine's Python version, for `prepare`
DATA_NAME=cifar10-jpeg.tar.gz
# A relative CIFAR10_DATA is relative to where the script was started: make it absolute.
if [[ -n "${CIFAR10_DATA:-}" && -f "$CIFAR10_DATA" ]]; then
  CIFAR10_DATA=$(cd "$(dirname "$CIFAR10_DATA")" && pwd)/$(basename "$CIFAR10_DATA")
fi

if [[ "${1:-}" == "smoke" ]]; then
  echo "usage: bash benchmarks/gpu.sh OUT_DIR (toy size: SMOKE=1 bash benchmarks/gpu.sh OUT_DIR)"
  exit 2
fi
if [[ "${1:-}" == "prepare" ]]; then
  cd "$(dirname "$0")/.."
  mkdir -p .whl/data
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  SRC=${CIFAR10_DATA:-../shared/data/$DATA_NAME}
  if [[ -f "$SRC" ]]; then
    cp -f "$SRC" ".whl/data/$DATA_NAME" || exit 1
  else
    echo "warning: CIFAR-10 ($SRC) not found: set CIFAR10_DATA=PATH to the tarball to include it"
  fi
  git check-ignore -q .whl || echo "warning: .whl/ is not ignored by git; add /.whl/ to .git/info/exclude"
  ls -la .whl .whl/data
  exit 0
fi

# The output folder, made absolute before the script moves to the repository root (its default
# is in the repository's workdirs/).
OUT_DIR=${1:-"$(dirname "$0")/../workdirs/gpu_bench"}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) \
  || { echo "error: cannot create the output folder $OUT_DIR"; exit 1; }
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
if [[ "$SMOKE" == 1 ]]; then
  THROUGHPUT_ARGS=(--models resnet20 --rounds 2)
  MIS_ARGS=(--n 2000 --k 16 --c 10)
  FULL_EPOCHS=${FULL_EPOCHS:-0.01}
else
  SMOKE=0
  THROUGHPUT_ARGS=(--rounds 30)
  MIS_ARGS=(--n 10000 --k 64 --c 10)
fi
BUDGET_S=${BUDGET_S:-560}
left() { echo $((BUDGET_S - SECONDS)); }
say() { echo "== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }

say "environment (logs in $OUT_DIR)"
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  lscpu | grep -m1 "Model name"
  python3 --version
} | tee "$OUT_DIR/env.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .whl/site .whl/*.whl || { echo "error: installing .whl/*.whl failed"; exit 1; }
  export PYTHONPATH="$PWD/.whl/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee -a "$OUT_DIR/env.txt"
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
  echo "error: csg_jax needs ${MISSING}which this Python lacks: 'pip install -e .' installs them."
  echo "Without internet access, put their wheels in .whl/ ('bash benchmarks/gpu.sh prepare' on a"
  echo "machine with internet access downloads those listed in WHEELS; add others there)."
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
  "${THROUGHPUT_ARGS[@]}" "${TORCH_FLAG[@]}" 2>&1 | tee "$OUT_DIR/throughput.log"

say "MIS speed, CIFAR scale (budget 80 s)"
timeout 80 python3 benchmarks/mis_speed.py "${MIS_ARGS[@]}" 2>&1 | tee "$OUT_DIR/mis_speed.log"

DATA=""
for d in ${CIFAR10_DATA:+"$CIFAR10_DATA"} "../shared/data/$DATA_NAME" ".whl/data/$DATA_NAME"; do
  [[ -f "$d" ]] && { DATA="$d"; break; }
done
if [[ -z "$DATA" ]]; then
  echo "CIFAR-10 ($DATA_NAME) is neither in ../shared/data nor in .whl/data, and CIFAR10_DATA"
  echo "names no file: reproduction skipped. Set CIFAR10_DATA=PATH to the tarball."
else
  # Training stops at the deadline, leaving ~70 s to evaluate checkpoints and print the table.
  TRAIN_S=$(($(left) - 70))
  say "CIFAR-10 reproduction, full schedule (training deadline ${TRAIN_S} s)"
  EPOCHS=()
  [[ -n "${FULL_EPOCHS:-}" ]] && EPOCHS=(--epochs "$FULL_EPOCHS")
  timeout $(($(left) - 10)) python3 benchmarks/reproduce_cifar10.py --schedule full --jobs 2 \
    "${EPOCHS[@]}" --data "$DATA" --workdir workdirs/gpu_reproduce --deadline-s "$TRAIN_S" 2>&1 \
    | tee "$OUT_DIR/reproduce.log"
fi

if (( ! SMOKE && $(left) > 100 )); then
  say "MIS speed, ImageNet scale, csg_jax only (budget $(($(left) - 20)) s)"
  timeout $(($(left) - 20)) python3 benchmarks/mis_speed.py --n 50000 --k 2048 --c 1000 \
    --skip-sklearn --sklearn-classes 0 2>&1 | tee "$OUT_DIR/mis_speed_imagenet.log"
fi

# The last line of each benchmark is its JSON result: collect them in one file.
python3 - "$OUT_DIR" <<'EOF'
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
say "done: $OUT_DIR/summary.json"
