r"""Cross-check csg_jax's localization scores of explanation maps against Quantus.

Reads the arrays `csg-applications --export_maps DIR` writes (DIR/<run>.npz) and scores each map
type with csg_jax (evaluation/explanation_metrics.py) and with Quantus's PointingGame and
RelevanceRankAccuracy on the same arrays; prints both means and the largest per-image
difference. Quantus is not a dependency of csg_jax (it brings about 800 MB): install it apart,
e.g. `pip install --target DIR quantus` and run with PYTHONPATH=DIR.

  python benchmarks/quantus_crosscheck.py workdirs/applications_shapes_s0/maps/csg.npz

Conventions compared: Quantus's pointing game has no tolerance and counts a hit when a maximum
(any of the ties) lies in the mask; csg_jax's with tolerance 0 takes the first maximum in
row-major order, so the two can differ only on images whose map has tied maxima. Relevance rank
accuracy: both take the mask's size K and the K highest map values; ties may be ordered
differently.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("npz", nargs="+", help="files written by csg-applications --export_maps")
  args = parser.parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    import quantus  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("error: quantus is not installed: pip install quantus (or into a folder on "
          "PYTHONPATH)", file=sys.stderr)
    return 2
  from csg_jax.evaluation import explanation_metrics as em  # pylint: disable=g-import-not-at-top
  print(f"quantus {quantus.__version__}; load average {os.getloadavg()}")
  for path in args.npz:
    f = np.load(path)
    masks = f["masks"]
    keep = masks.reshape(len(masks), -1).any(axis=1)
    for name in sorted(k for k in f.files if k.startswith("maps_")):
      maps = f[name][keep].astype(np.float32)
      m = masks[keep]
      x = np.repeat(maps[:, None], 3, axis=1)  # Quantus wants inputs; localisation ignores them
      ours = {"pointing game": np.asarray(em.pointing_game(maps, m, tolerance=0)),
              "relevance rank accuracy": np.asarray(em.relevance_rank_accuracy(maps, m))}
      theirs = {}
      for label, metric in (("pointing game", quantus.PointingGame),
                            ("relevance rank accuracy", quantus.RelevanceRankAccuracy)):
        theirs[label] = np.asarray(metric(normalise=False, abs=False, disable_warnings=True)(
            model=None, x_batch=x, y_batch=f["labels"][keep], a_batch=maps[:, None],
            s_batch=m[:, None].astype(np.float32), channel_first=True), np.float64)
      for label in ours:
        diff = np.abs(ours[label] - theirs[label])
        print(f"{os.path.basename(path)} {name[5:]:8s} {label:24s} csg_jax "
              f"{np.nanmean(ours[label]):.4f}  quantus {np.nanmean(theirs[label]):.4f}  "
              f"images {len(maps)}, differing {int((diff > 1e-6).sum())}, "
              f"max |diff| {np.nanmax(diff):.2e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
