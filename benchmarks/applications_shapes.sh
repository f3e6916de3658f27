#!/usr/bin/env bash
# End to end on CPU: the synthetic shapes data, one training per method, then localization,
# explanation quality and adversarial-sample detection for every run, side by side
# (docs/applications.md).
#
#   benchmarks/applications_shapes.sh [OUT]        # default OUT: workdirs/applications_shapes
#   SEED=1 benchmarks/applications_shapes.sh workdirs/applications_shapes_s1
#   METHODS="std csg" benchmarks/applications_shapes.sh      # default: std csg picnn
#   APPS_ONLY=1 benchmarks/applications_shapes.sh OUT       # the applications on OUT's runs
#
# SEED (default 0) seeds every training; the data set is the same for every seed (its own seed
# 0). Fresh runs every time (their workdirs under OUT are deleted first; the generated data set
# is kept and reused), unless APPS_ONLY=1. Prints the side-by-side tables and the wall time of
# every stage. About 3 minutes a method on 2 CPU cores (docs/applications.md has a measured run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${1:-workdirs/applications_shapes}
SEED=${SEED:-0}
METHODS=${METHODS:-std csg picnn}
DATA=$OUT/shapes32

mkdir -p "$OUT"
t0=$(date +%s)
stage() { echo "=== $1 ($(( $(date +%s) - t0 )) s elapsed)"; }
# orbax's deprecation warnings say nothing to the user; grep must not fail on empty output.
quiet() { grep --line-buffered -v "option is deprecated" || true; }

if [ "${APPS_ONLY:-0}" != 1 ]; then
  stage "shapes data set -> $DATA"
  $PYTHON launch/build_shapes.py --root "$DATA" --num_train 4000 --num_test 1000 --seed 0
  for m in $METHODS; do
    rm -rf "${OUT:?}/$m"
    stage "${m} training"
    s=$(date +%s)
    $PYTHON launch/train.py --config configs/shapes.py --config.data.path="$DATA" \
      --config.method="$m" --config.seed="$SEED" --workdir "$OUT/$m" 2>&1 | quiet
    echo "=== ${m} training: $(( $(date +%s) - s )) s"
  done
fi

stage "evaluation of every run (MIS, the MI matrix the class-filter maps of STD need)"
for m in $METHODS; do
  $PYTHON launch/evaluate.py --workdir "$OUT/$m" 2>&1 | quiet
done
stage "applications of every run"
rm -rf "${OUT:?}/report" "${OUT:?}/maps"
s=$(date +%s)
args=()
for m in $METHODS; do args+=(--workdir "$OUT/$m"); done
$PYTHON launch/applications.py "${args[@]}" --out "$OUT/report" --export_maps "$OUT/maps" 2>&1 | quiet
echo "=== applications: $(( $(date +%s) - s )) s; total $(( $(date +%s) - t0 )) s"
echo "report: $OUT/report/applications_$(echo $METHODS | sed 's/ /_vs_/g').md (+ .json, *.png);" \
  "per run: $OUT/<method>/eval/"
