"""Input pipeline throughput on CIFAR-10 from a JPEG tarball, with CIFAR augmentation.

Builds (or reuses) the decoded cache, then times `train_batches` with crop_padding=4, flip and
normalisation. The last line printed is a JSON object.

  python benchmarks/input_pipeline.py [--path ../shared/data/cifar10-jpeg.tar.gz] [--steps 1000]
  python benchmarks/input_pipeline.py --fresh-cache   # time a cold cache build too
"""

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from csg_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--path", default="../shared/data/cifar10-jpeg.tar.gz",
                      help="folder or tarball of train/<class>/*.jpg, test/...; relative paths "
                      "are taken from the repository root")
  parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
  parser.add_argument("--steps", type=int, default=1000, help="timed steps")
  parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first")
  parser.add_argument("--cache-dir", default=data.default_config("folder").cache_dir)
  parser.add_argument("--fresh-cache", action="store_true",
                      help="build into a new temporary cache dir, to time a cold build")
  parser.add_argument("--prefetch", type=int, default=2, help="data.prefetch")
  parser.add_argument("--step-ms", type=float, default=0.0,
                      help="simulated training step per batch (sleep), to show overlap")
  args = parser.parse_args()

  cfg = data.default_config("folder")
  cfg.path = os.path.join(REPO, args.path)
  cfg.prefetch = args.prefetch
  with tempfile.TemporaryDirectory() as fresh:
    cfg.cache_dir = fresh if args.fresh_cache else args.cache_dir
    try:
      dataset = data.load_dataset(cfg)
    except CSGError as e:
      sys.exit(f"error: {e}")
    print(f"{dataset.name}: {len(dataset.splits['train'])} train / "
          f"{len(dataset.splits['test'])} test images {dataset.image_shape}, cache "
          f"{'built' if dataset.cache.built else 'reused'} in {dataset.cache.seconds:.1f} s",
          flush=True)

    batches = data.train_batches(dataset, cfg, global_batch_size=args.batch_size, seed=0)
    for _ in range(args.warmup_steps):
      next(batches)
    start = last = time.perf_counter()
    cpu_start = time.process_time()  # All threads: shows the cost even on a busy machine.
    for step in range(1, args.steps + 1):
      batch = next(batches)
      if args.step_ms:
        time.sleep(args.step_ms / 1000)
      if time.perf_counter() - last > 2:
        last = time.perf_counter()
        print(f"step {step}/{args.steps}: {step * args.batch_size / (last - start):.0f} images/s",
              flush=True)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    batches.close()

  assert batch["image"].shape == (args.batch_size,) + dataset.image_shape
  print(json.dumps({
      "images_per_s": round(args.steps * args.batch_size / seconds),
      "images_per_cpu_s": round(args.steps * args.batch_size / cpu_seconds),
      "batch_size": args.batch_size,
      "steps": args.steps,
      "prefetch": args.prefetch,
      "step_ms": args.step_ms,
      "cache_built": dataset.cache.built,
      "cache_build_s": round(dataset.cache.seconds, 2) if dataset.cache.built else None,
      "cache_load_s": round(dataset.cache.seconds, 3),
      "train_images": len(dataset.splits["train"]),
      "cpus": len(os.sched_getaffinity(0)),
  }))


if __name__ == "__main__":
  main()
