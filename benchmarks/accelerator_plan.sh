#!/usr/bin/env bash
# The "Accelerator plan" of benchmarks/RESULTS.md: csg-compile of the shipped configs and an
# ImageNet-style ResNet-50 at 224 px (every layer trained) for several TPU slices, float32 and bfloat16, from any
# machine with libtpu (pip install -e ".[tpu]"). One compile.json per case in OUT/<case>/.
#
#   benchmarks/accelerator_plan.sh [OUT]     # default OUT: workdirs/accelerator_plan
#   CASES="r20_v4 r50_v5e16" benchmarks/accelerator_plan.sh   # a subset (names below)
#
# v6e needs libtpu 0.0.43.2 or later (0.0.42.1, jax 0.10.2's pin, crashes compiling for it): run
# its cases from an environment with that libtpu, e.g. CASES="r20_v6e_f32 r20_v6e_bf16 ...".
# ResNet-152 compiles take minutes each on 2 CPU cores (JAX's persistent compilation cache cannot
# serve compile-only TPU clients, so csg-compile leaves it off). Cases that already have a
# compile.json are skipped: the script resumes where it stopped.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${1:-workdirs/accelerator_plan}
R50="--config voc_part_resnet152 --config.model.name=resnet50 --config.data.source=folder \
--config.data.image_size=224 --config.data.num_classes=1000 --config.batch_size=256 \
--config.eval_batch_size=256 --config.optimizer.freeze= --config.csg.alternate.freeze="
declare -A CASE=(
  [r20_v4_f32]="--config cifar10_resnet20 --topology v4:2x2x1"
  [r20_v4_bf16]="--config cifar10_resnet20 --topology v4:2x2x1 --config.model.dtype=bfloat16"
  [r20_v5e16_f32]="--config cifar10_resnet20 --topology v5e:4x4"
  [r20_v5e16_bf16]="--config cifar10_resnet20 --topology v5e:4x4 --config.model.dtype=bfloat16"
  [r20_v6e_f32]="--config cifar10_resnet20 --topology v6e:2x2"
  [r20_v6e_bf16]="--config cifar10_resnet20 --topology v6e:2x2 --config.model.dtype=bfloat16"
  [r20_v5e256_f32]="--config cifar10_resnet20 --topology v5e:16x16 --config.batch_size=1024 \
--config.eval_batch_size=1024"
  [r50_v5e16_f32]="$R50 --topology v5e:4x4"
  [r50_v5e16_bf16]="$R50 --topology v5e:4x4 --config.model.dtype=bfloat16"
  [r50_v5e256_bf16]="$R50 --topology v5e:16x16 --config.model.dtype=bfloat16 \
--config.batch_size=4096 --config.eval_batch_size=4096"
  [r152_v5e16_bf16]="--config voc_part_resnet152 --topology v5e:4x4 --config.model.dtype=bfloat16"
  [r152_v5e16_f32]="--config voc_part_resnet152 --topology v5e:4x4"
  [r152std_v5e16_bf16]="--config voc_part_resnet152_std --topology v5e:4x4 \
--config.model.dtype=bfloat16"
  [r152std_v5e16_f32]="--config voc_part_resnet152_std --topology v5e:4x4"
  [r152_v5e4_bf16]="--config voc_part_resnet152 --topology v5e:2x2 --config.model.dtype=bfloat16"
  [r152_v6e_bf16]="--config voc_part_resnet152 --topology v6e:2x2 --config.model.dtype=bfloat16"
  [r152_v6e_f32]="--config voc_part_resnet152 --topology v6e:2x2"
  [r152_v4_bf16]="--config voc_part_resnet152 --topology v4:2x2x1 --config.model.dtype=bfloat16"
  [r152_v4_f32]="--config voc_part_resnet152 --topology v4:2x2x1"
  [r152_v5e256_bf16]="--config voc_part_resnet152 --topology v5e:16x16 \
--config.model.dtype=bfloat16 --config.batch_size=256 --config.eval_batch_size=256"
  # The largest global batch whose train steps fit (--max_batch: doubling, then bisection).
  [r20_v5e16_f32_max]="--config cifar10_resnet20 --topology v5e:4x4 --max_batch"
  [r20_v5e16_bf16_max]="--config cifar10_resnet20 --topology v5e:4x4 \
--config.model.dtype=bfloat16 --max_batch"
  [r50_v5e16_bf16_max]="$R50 --topology v5e:4x4 --config.model.dtype=bfloat16 --max_batch"
  [r152_v5e16_bf16_max]="--config voc_part_resnet152 --topology v5e:4x4 \
--config.model.dtype=bfloat16 --max_batch"
)
ORDER="r20_v4_f32 r20_v4_bf16 r20_v5e16_f32 r20_v5e16_bf16 r20_v6e_f32 r20_v6e_bf16 \
r20_v5e256_f32 r152_v5e16_bf16 r152_v5e16_f32 r152std_v5e16_bf16 r50_v5e16_bf16 r50_v5e16_f32 \
r50_v5e256_bf16 r152_v5e256_bf16 r152_v4_bf16 r20_v5e16_f32_max r20_v5e16_bf16_max \
r50_v5e16_bf16_max r152_v4_f32 r152std_v5e16_f32 r152_v6e_bf16 r152_v6e_f32 r152_v5e4_bf16 r152_v5e16_bf16_max"
for name in ${CASES:-$ORDER}; do
  if [ -f "$OUT/$name/compile.json" ]; then echo "=== $name: done before"; continue; fi
  echo "=== $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  s=$(date +%s)
  # shellcheck disable=SC2086
  $PYTHON launch/compile.py ${CASE[$name]} --out "$OUT/$name"
  echo "=== $name: exit $?, $(( $(date +%s) - s )) s"
done
