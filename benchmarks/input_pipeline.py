"""Input pipeline throughput from JPEGs, with training augmentation.

Builds (or reuses) the decoded cache, then times `train_batches`. Default: CIFAR-10 from its JPEG
tarball with crop_padding=4, flip and normalisation. `--photos N` times an ImageNet-style input
instead: N photo-sized JPEGs (random crops of scikit-learn's two sample photographs, about
500x375 at JPEG quality 85-95, written to a temporary folder) decoded to `--image-size` px, then
random-resized crops and flips. The last line printed is a JSON object; its
`decode_images_per_s` (with --fresh-cache) is the cold cache build's rate, per core with
`--decode-workers 1`.

  python benchmarks/input_pipeline.py [--path ../shared/data/cifar10-jpeg.tar.gz] [--steps 1000]
  python benchmarks/input_pipeline.py --fresh-cache   # time a cold cache build too
  python benchmarks/input_pipeline.py --photos 2000 --decode-workers 1 --batch-size 64 \
      --steps 100 [--batch-workers 2]
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from csg_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_photos(root: str, count: int, seed: int = 0, classes: int = 10) -> float:
  """Writes `count` train and count // 10 test JPEGs under root/{train,test}/<class>/; their mean
  size in KiB."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images  # two 427x640 photographs
  rng = np.random.default_rng(seed)
  sizes = []
  for split, n in (("train", count), ("test", max(count // 10, classes))):
    for i in range(n):
      photo = photos[rng.integers(len(photos))]
      h, w = int(rng.integers(300, 428)), int(rng.integers(400, 641))
      y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
      crop = photo[y:y + h, x:x + w]
      if rng.random() < 0.5:
        crop = crop[:, ::-1]
      folder = os.path.join(root, split, f"class{i % classes}")
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, f"{i:06d}.jpg")
      Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=int(rng.integers(85, 96)))
      sizes.append(os.path.getsize(path))
  return float(np.mean(sizes)) / 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--path", default="../shared/data/cifar10-jpeg.tar.gz",
                      help="folder or tarball of train/<class>/*.jpg, test/...; relative paths "
                      "are taken from the repository root")
  parser.add_argument("--photos", type=int, default=0,
                      help="time N photo-sized JPEGs instead of --path (ImageNet-style input)")
  parser.add_argument("--image-size", type=int, default=None,
                      help="data.image_size (default: CIFAR's 32, or 224 with --photos)")
  parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
  parser.add_argument("--steps", type=int, default=1000, help="timed steps")
  parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first")
  parser.add_argument("--cache-dir", default=data.default_config("folder").cache_dir)
  parser.add_argument("--fresh-cache", action="store_true",
                      help="build into a new temporary cache dir, to time a cold build")
  parser.add_argument("--decode-workers", type=int, default=0,
                      help="data.decode_workers (0: one per core; 1: in-process, one core)")
  parser.add_argument("--prefetch", type=int, default=2, help="data.prefetch")
  parser.add_argument("--batch-workers", type=int, default=1, help="data.batch_workers")
  parser.add_argument("--step-ms", type=float, default=0.0,
                      help="simulated training step per batch (sleep), to show overlap")
  args = parser.parse_args()

  cfg = data.default_config("folder")
  cfg.prefetch = args.prefetch
  cfg.batch_workers = args.batch_workers
  cfg.decode_workers = args.decode_workers
  with tempfile.TemporaryDirectory() as fresh, tempfile.TemporaryDirectory() as photos:
    jpeg_kib = None
    if args.photos:
      jpeg_kib = write_photos(photos, args.photos)
      cfg.path = photos
      cfg.image_size = args.image_size or 224
      cfg.crop_padding = 0
      cfg.random_resized_crop = True
      args.fresh_cache = True  # a new folder each time: nothing to reuse
    else:
      cfg.path = os.path.join(REPO, args.path)
      cfg.image_size = args.image_size
    cfg.cache_dir = fresh if args.fresh_cache else args.cache_dir
    try:
      dataset = data.load_dataset(cfg)
    except CSGError as e:
      sys.exit(f"error: {e}")
    decoded = len(dataset.splits["train"]) + len(dataset.splits["test"])
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
      "image_shape": list(dataset.image_shape),
      "batch_size": args.batch_size,
      "steps": args.steps,
      "prefetch": args.prefetch,
      "batch_workers": args.batch_workers,
      "step_ms": args.step_ms,
      "cache_built": dataset.cache.built,
      "cache_build_s": round(dataset.cache.seconds, 2) if dataset.cache.built else None,
      "decode_images_per_s": (round(decoded / dataset.cache.seconds)
                              if dataset.cache.built else None),
      "decode_workers": args.decode_workers,
      "photo_jpeg_kib": round(jpeg_kib, 1) if jpeg_kib else None,
      "cache_load_s": round(dataset.cache.seconds, 3),
      "train_images": len(dataset.splits["train"]),
      "cpus": len(os.sched_getaffinity(0)),
      "load_average": [round(x, 2) for x in os.getloadavg()],
  }))


if __name__ == "__main__":
  main()
