r"""Trains a CSG (or STD) model and evaluates it.

  python launch/train.py                                   # the default: digits, CSG, CPU-friendly
  python launch/train.py --config configs/cifar10_resnet20.py --config.num_epochs=2 --workdir W

Several processes (hand-launched; TPU pods and SLURM jobs are found automatically):
  python launch/train.py ... --coordinator_address host0:1234 --num_processes 2 --process_id 0
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_REPO, "configs", "default.py"),
    "Config file; override any field with --config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and results go; a workdir holding checkpoints "
    "resumes. Default: workdirs/<dataset>_<model>_<method> under the current folder.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a manual multi-process launch.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a manual launch.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a manual launch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # keep library INFO chatter out of the progress output
  # Imported here so that `--help` and flag errors answer without loading JAX.
  from csg_jax import cli  # pylint: disable=g-import-not-at-top
  from csg_jax import parallel  # pylint: disable=g-import-not-at-top
  from csg_jax import train  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  workdir = _WORKDIR.value or cli.default_workdir(config)
  with cli.user_errors():
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cli.check_workdir(workdir)
    results = train.train_and_evaluate(config, workdir)
    cli.print_summary(results, workdir)


if __name__ == "__main__":
  sys.path.insert(0, _REPO)  # run from a checkout without `pip install -e .` too
  app.run(main)
