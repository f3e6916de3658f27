r"""Evaluates a trained run: accuracy, MIS, gate density, per-class numbers and figures.

  csg-evaluate --workdir workdirs/digits_resnet8_csg

Writes <workdir>/eval/report.json, mi_matrix.npy and PNG figures (gate, MI matrix, histogram of
each filter's largest MI), drawn on fixed scales so STD and CSG runs compare by eye.
From a checkout without `pip install -e .`: python launch/evaluate.py ...
"""

import os

from absl import flags

from csg_jax import cli
from csg_jax.errors import CSGError
from csg_jax.log import log

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by csg-train.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Which split to evaluate: test, train, or val (runs "
                             "with data.validation_fraction > 0).")


def main(argv):
  cli.start(argv)
  with cli.user_errors():
    if _SPLIT.value not in ("test", "train", "val"):
      raise CSGError(f"--split={_SPLIT.value!r}: use test, train or val")
    from csg_jax.evaluation import report  # pylint: disable=g-import-not-at-top  (JAX)
    r = report.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value).report
  density = "n/a" if r["gate_density"] is None else f"{r['gate_density']:.4f}"
  log(f"{r['method']} {r['model']} on {r['dataset']} (step {r['step']}, {r['split']} split, "
      f"{r['num_examples']} examples): accuracy {r['accuracy']:.4f}, MIS {r['mis']:.4f}, "
      f"gate L1 density {density}; report and figures in {os.path.join(_WORKDIR.value, 'eval')}")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
