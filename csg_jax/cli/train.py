r"""Trains a CSG (or STD) model and evaluates it.

  csg-train                                     # the default: digits, CSG, CPU-friendly
  csg-train --config cifar10_resnet20 --config.num_epochs=2 --workdir W   # a shipped config
  csg-train --config my_config.py ...                                     # or a config file
  csg-train --show_config --config.csg.gate.target_density=0.05   # every field, its comment

Several processes (hand-launched; TPU pods and SLURM jobs are found automatically):
  csg-train ... --coordinator_address host0:1234 --num_processes 2 --process_id 0

From a checkout without `pip install -e .`: python launch/train.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax import config as config_lib
from csg_jax.log import log

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and results go (a folder, gs://... or "
    "s3://...); an unfinished run of the same config there resumes. Default: "
    "workdirs/<dataset>_<model>_<method>[-<field>=<value>...] under the current folder, one "
    "-<field>=<value> per override that changes the config file's value.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a manual multi-process launch.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a manual launch.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a manual launch.")
_SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print every config field (with the "
                                 "overrides applied) and its comment, then exit; trains nothing.")


def main(argv):
  config = cli.start(argv, _CONFIG)
  if _SHOW_CONFIG.value:
    cli.print_text(config_lib.describe(config))
    return
  with cli.user_errors():
    # Imported here so that --help and flag errors answer without loading JAX.
    from csg_jax import runs  # pylint: disable=g-import-not-at-top
    from csg_jax import sharding  # pylint: disable=g-import-not-at-top
    from csg_jax import training  # pylint: disable=g-import-not-at-top
    workdir = _WORKDIR.value or cli.default_workdir(config)
    config_lib.validate(config)  # a bad value stops the run before the workdir is created
    cli.check_overrides_are_read(config)
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cli.check_workdir(workdir)
    results = training.train_and_evaluate(config, workdir)
  log(runs.summary_line(results, workdir))


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
