r"""Trains (or reuses) STD and CSG runs with the same config and seed, evaluates both, compares.

  csg-compare --workdir workdirs/compare
  csg-compare --workdir W --config configs/cifar10_resnet20.py --config.num_epochs=2
  csg-compare --workdir workdirs/compare_seeds --seeds 0,1,2,3,4

Runs go to <workdir>/std and <workdir>/csg (a finished run is reused, an interrupted one
resumes); the paper's Table 1 form goes to <workdir>/compare.md with <workdir>/compare.png.
The STD run is the CSG config with method=std, unless the config names its STD baseline in
config.std_config (configs/voc_part_resnet152.py: the released STD run's config, which trains
stage 2 too); the command-line overrides apply to both, and compare.md names each side's config.
With --seeds, each seed k (in place of config.seed) gets its pair in <workdir>/seed<k>/, and
<workdir>/compare.md and compare.json hold the per-seed rows, mean ± sd, and the paired
CSG − STD differences with 95 % confidence intervals.
From a checkout without `pip install -e .`: python launch/compare.py ...
"""

import os

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
    overrides = cli.config_overrides()
    std = compare.std_baseline(config, overrides)
    config_lib.validate(std)
    file = os.path.basename(cli.config_file_name())
    described = f"{file}, " + (", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
                               or "no overrides")
    configs = {"std": (f"{os.path.basename(config_lib.resolve(config.std_config))} (its "
                       f"std_config), the same overrides" if config.std_config
                       else f"{described}, method=std"),
               "csg": f"{described}, method=csg"}
    cli.check_workdir(_WORKDIR.value)
    compare.train_and_compare(config, _WORKDIR.value, seeds, std_config=std, configs=configs)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
