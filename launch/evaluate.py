r"""Evaluates a trained run: accuracy, MIS, gate density, per-class numbers and figures.

  python launch/evaluate.py --workdir workdirs/digits_resnet8_csg

Writes <workdir>/eval/report.json, mi_matrix.npy and PNG figures (gate, MI matrix, histogram of
each filter's largest MI), drawn on fixed scales so STD and CSG runs compare by eye.
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # runs from a checkout without `pip install -e .` too

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch/train.py.",
                               required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Which split to evaluate: test or train.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  with cli.user_errors():
    from csg_jax import evaluation  # pylint: disable=g-import-not-at-top
    from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
    if _SPLIT.value not in ("test", "train"):
      raise CSGError(f"--split={_SPLIT.value!r}: use test or train")
    r = evaluation.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value).report
    density = "n/a" if r["gate_density"] is None else f"{r['gate_density']:.4f}"
    print(f"{r['method']} {r['model']} on {r['dataset']} (step {r['step']}, {r['split']} split, "
          f"{r['num_examples']} examples): accuracy {r['accuracy']:.4f}, MIS {r['mis']:.4f}, "
          f"gate L1 density {density}; report and figures in "
          f"{os.path.join(_WORKDIR.value, 'eval')}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
