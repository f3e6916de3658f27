r"""Trains (or reuses) STD and CSG runs with the same config and seed, evaluates both, compares.

  python launch/compare.py --workdir workdirs/compare
  python launch/compare.py --workdir W --config configs/cifar10_resnet20.py --config.num_epochs=2

Runs go to <workdir>/std and <workdir>/csg (a finished run is reused, an interrupted one
resumes); the paper's Table 1 form goes to <workdir>/compare.md with <workdir>/compare.png.
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # runs from a checkout without `pip install -e .` too

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

with cli.config_errors():
  _CONFIG = cli.define_config_flag(os.path.join(_REPO, "configs", "default.py"))
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/compare",
                               "Root folder: runs go to <workdir>/std and <workdir>/csg.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  with cli.config_errors():
    config = cli.resolve_config(_CONFIG)
  with cli.user_errors():
    from csg_jax import evaluation  # pylint: disable=g-import-not-at-top
    from csg_jax import train  # pylint: disable=g-import-not-at-top
    root = _WORKDIR.value
    cli.check_workdir(root)
    evaluations = {}
    for method in ("std", "csg"):
      run_config = config.copy_and_resolve_references()
      run_config.unlock()
      run_config.method = method
      workdir = os.path.join(root, method)
      print(f"== {method.upper()} run in {workdir}", flush=True)
      cli.print_summary(train.train_and_evaluate(run_config, workdir), workdir)
      evaluations[method] = evaluation.evaluate_workdir(workdir)
    path = evaluation.write_comparison(root, evaluations)
    std, csg = evaluations["std"].report, evaluations["csg"].report
    print(f"STD: accuracy {std['accuracy']:.4f}, MIS {std['mis']:.4f} | CSG: accuracy "
          f"{csg['accuracy']:.4f}, MIS {csg['mis']:.4f}, density {csg['gate_density']:.4f}; "
          f"table in {path}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
