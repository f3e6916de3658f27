#!/usr/bin/env bash
# End to end on CPU: the synthetic shapes data, STD and CSG training, then localization and
# adversarial-sample detection for both, side by side (docs/applications.md).
#
#   benchmarks/applications_shapes.sh [OUT]        # default OUT: workdirs/applications_shapes
#   SEED=1 benchmarks/applications_shapes.sh workdirs/applications_shapes_s1
#
# SEED (default 0) seeds both trainings; the data set is the same for every seed (its own seed 0).
# Fresh STD/CSG runs every time (their workdirs under OUT are deleted first; the generated data
# set is kept and reused). Prints the side-by-side tables and the wall time of every stage.
# About 6-9 minutes on 2 CPU cores (docs/applications.md has a measured run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${1:-workdirs/applications_shapes}
SEED=${SEED:-0}
DATA=$OUT/shapes32

rm -rf "$OUT/std" "$OUT/csg" "$OUT/report"
mkdir -p "$OUT"
t0=$(date +%s)
stage() { echo "=== $1 ($(( $(date +%s) - t0 )) s elapsed)"; }
# orbax's deprecation warnings say nothing to the user; grep must not fail on empty output.
quiet() { grep --line-buffered -v "option is deprecated" || true; }

stage "1/4 shapes data set -> $DATA"
$PYTHON launch/build_shapes.py --root "$DATA" --num_train 4000 --num_test 1000 --seed 0
t1=$(date +%s)

stage "2/4 STD training"
$PYTHON launch/train.py --config configs/shapes.py --config.data.path="$DATA" \
  --config.method=std --config.seed="$SEED" --workdir "$OUT/std" 2>&1 | quiet
t2=$(date +%s)

stage "3/4 CSG training"
$PYTHON launch/train.py --config configs/shapes.py --config.data.path="$DATA" \
  --config.method=csg --config.seed="$SEED" --workdir "$OUT/csg" 2>&1 | quiet
t3=$(date +%s)

stage "4/4 localization and adversarial detection"
$PYTHON launch/applications.py --std_workdir "$OUT/std" --csg_workdir "$OUT/csg" \
  --out "$OUT/report" 2>&1 | quiet
t4=$(date +%s)

echo "=== wall time: data $(( t1 - t0 )) s, STD training $(( t2 - t1 )) s, CSG training" \
  "$(( t3 - t2 )) s, applications $(( t4 - t3 )) s; total $(( t4 - t0 )) s"
echo "report: $OUT/report/applications_std_vs_csg.md (+ .json, *.png);" \
  "per run: $OUT/{std,csg}/eval/"
