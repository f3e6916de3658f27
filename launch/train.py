r"""Trains a CSG (or STD) model and evaluates it.

  python launch/train.py                                   # the default: digits, CSG, CPU-friendly
  python launch/train.py --config configs/cifar10_resnet20.py --config.num_epochs=2 --workdir W

Several processes (hand-launched; TPU pods and SLURM jobs are found automatically):
  python launch/train.py ... --coordinator_address host0:1234 --num_processes 2 --process_id 0
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # runs from a checkout without `pip install -e .` too

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

# config_flags reads the --config.<field> overrides while the flag is defined: a bad override
# must become one line, not a traceback.
with cli.config_errors():
  _CONFIG = cli.define_config_flag(os.path.join(_REPO, "configs", "default.py"))
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
  with cli.config_errors():
    config = cli.resolve_config(_CONFIG)
  with cli.user_errors():
    # Imported here so that --help and flag errors answer without loading JAX.
    from csg_jax import parallel  # pylint: disable=g-import-not-at-top
    from csg_jax import train  # pylint: disable=g-import-not-at-top
    workdir = _WORKDIR.value or cli.default_workdir(config)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cli.check_workdir(workdir)
    results = train.train_and_evaluate(config, workdir)
    cli.print_summary(results, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
