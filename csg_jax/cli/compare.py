r"""Trains (or reuses) STD and CSG runs with the same config and seed, evaluates both, compares.

  csg-compare --workdir workdirs/compare
  csg-compare --workdir W --config configs/cifar10_resnet20.py --config.num_epochs=2
  csg-compare --workdir workdirs/compare_seeds --seeds 0,1,2,3,4

Runs go to <workdir>/std and <workdir>/csg (a finished run is reused, an interrupted one
resumes); the paper's Table 1 form goes to <workdir>/compare.md with <workdir>/compare.png.
With --seeds, each seed k (in place of config.seed) gets its pair in <workdir>/seed<k>/, and
<workdir>/compare.md and compare.json hold the per-seed rows, mean ± sd, and the paired
CSG − STD differences with 95 % confidence intervals.
From a checkout without `pip install -e .`: python launch/compare.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax import config as config_lib

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/compare",
                               "Root folder: runs go to <workdir>/std and <workdir>/csg.")
_SEEDS = flags.DEFINE_string("seeds", "", "Comma-separated seeds, e.g. 0,1,2: one STD and one "
                             "CSG run per seed in <workdir>/seed<k>/ (empty: config.seed only).")


def main(argv):
  config = cli.start(argv, _CONFIG)
  with cli.user_errors():
    seeds = cli.parse_seeds(_SEEDS.value)
    from csg_jax.experiments import compare  # pylint: disable=g-import-not-at-top  (JAX)
    config_lib.validate(config)  # a bad value stops the run before the workdir is created
    csg = config.copy_and_resolve_references()
    csg.unlock()
    csg.method = "csg"  # the CSG run reads every field the STD run does, and the gate's
    cli.check_overrides_are_read(csg)
    cli.check_workdir(_WORKDIR.value)
    compare.train_and_compare(config, _WORKDIR.value, seeds)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
