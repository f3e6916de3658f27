"""Speed and parity of `csg_jax.evaluation.mis.mutual_information_matrix` against sklearn.

Times sklearn (a loop of `mutual_info_classif` over classes, as docs/csg-method.md §5.1 defines
the metric) and csg_jax (after one warm-up call that compiles) on the same realistic features,
in the same run. The last output line is a JSON object with the results.

  python benchmarks/mis_speed.py --n 10000 --k 512 --c 10
  python benchmarks/mis_speed.py --n 50000 --k 2048 --c 1000 --skip-sklearn  # ImageNet scale
"""

import argparse
import json
import sys
import time

import jax
import numpy as np
from sklearn.feature_selection import mutual_info_classif

from csg_jax.evaluation import mis as metrics
from csg_jax.log import log


def make_features(n: int, k: int, c: int, seed: int):
  """ReLU of random projections of class-dependent inputs: GAP-like features, many zeros."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, size=n)
  dim = 32
  class_means = rng.normal(0.0, 1.0, size=(c, dim))
  inputs = class_means[labels] + rng.normal(0.0, 1.5, size=(n, dim))
  projection = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(dim, k))
  bias = rng.normal(-0.3, 0.5, size=k)
  features = np.maximum(0.0, inputs @ projection + bias).astype(np.float32)
  return features, labels


def sklearn_matrix(features, labels, classes, seed: int) -> np.ndarray:
  return np.stack([
      mutual_info_classif(features, labels == c, n_neighbors=3, random_state=seed)
      for c in classes
  ])


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10000, help="samples")
  parser.add_argument("--k", type=int, default=512, help="filters")
  parser.add_argument("--c", type=int, default=10, help="classes")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--chunk-size", type=int, default=None, help="filters per device call")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed csg_jax runs after the warm-up; the median is reported")
  parser.add_argument("--skip-sklearn", action="store_true",
                      help="do not run sklearn on everything (ImageNet scale): time it on "
                      "--sklearn-classes classes x --sklearn-filters filters and extrapolate")
  parser.add_argument("--sklearn-classes", type=int, default=1,
                      help="with --skip-sklearn: classes sklearn is timed on (0: none)")
  parser.add_argument("--sklearn-filters", type=int, default=64,
                      help="with --skip-sklearn: filters sklearn is timed on")
  args = parser.parse_args(argv)

  log(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}")
  log(f"building features n={args.n} k={args.k} c={args.c} seed={args.seed}")
  features, labels = make_features(args.n, args.k, args.c, args.seed)
  log(f"zeros: {np.mean(features == 0):.1%}")

  log("csg_jax warm-up (compiles)...")
  t0 = time.perf_counter()
  metrics.mutual_information_matrix(features, labels, args.c, seed=args.seed,
                                    chunk_size=args.chunk_size)
  warmup_s = time.perf_counter() - t0
  log(f"  warm-up {warmup_s:.2f} s")
  runs = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    ours = metrics.mutual_information_matrix(features, labels, args.c, seed=args.seed,
                                             chunk_size=args.chunk_size)
    runs.append(time.perf_counter() - t0)
  ours_s = float(np.median(runs))
  log(f"csg_jax: median {ours_s:.3f} s of {[round(r, 3) for r in runs]}, "
      f"MIS = {metrics.mis(ours):.5f}")

  result = {"n": args.n, "k": args.k, "c": args.c, "sklearn_s": None, "csg_jax_s": ours_s,
            "speedup": None, "max_abs_diff": None, "csg_jax_warmup_s": warmup_s,
            "csg_jax_runs_s": runs, "backend": jax.default_backend()}
  if not args.skip_sklearn:
    log(f"sklearn: {args.c} x mutual_info_classif ...")
    t0 = time.perf_counter()
    ref = sklearn_matrix(features, labels, range(args.c), args.seed)
    sk_s = time.perf_counter() - t0
    log(f"sklearn: {sk_s:.2f} s, MIS = {metrics.mis(ref):.5f}")
    result.update(sklearn_s=sk_s, speedup=sk_s / ours_s,
                  max_abs_diff=float(np.abs(ours - ref).max()))
  elif args.sklearn_classes > 0:
    # sklearn's cost is linear in classes and filters (one independent estimate per pair).
    classes = list(range(min(args.sklearn_classes, args.c)))
    filters = min(args.sklearn_filters, args.k)
    log(f"sklearn on {len(classes)} classes x {filters} filters, extrapolated ...")
    t0 = time.perf_counter()
    ref = sklearn_matrix(features[:, :filters], labels, classes, args.seed)
    sk_s = time.perf_counter() - t0
    extrapolated = sk_s * (args.c / len(classes)) * (args.k / filters)
    log(f"sklearn: {sk_s:.2f} s -> ~{extrapolated:.0f} s for all")
    # sklearn re-draws its noise for the [N, filters] subset, so compare on equal terms.
    ours_subset = metrics.mutual_information_matrix(features[:, :filters], labels, args.c,
                                                    seed=args.seed)[classes]
    result.update(sklearn_s_extrapolated=extrapolated,
                  speedup_extrapolated=extrapolated / ours_s,
                  max_abs_diff_subset=float(np.abs(ours_subset - ref).max()))
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
