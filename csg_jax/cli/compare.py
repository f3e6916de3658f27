r"""Trains (or reuses) one run per method with the same config and seed, evaluates each, compares.

  csg-compare --workdir workdirs/compare
  csg-compare --workdir W --config configs/cifar10_resnet20.py --config.num_epochs=2
  csg-compare --workdir workdirs/compare_seeds --seeds 0,1,2,3,4
  csg-compare --workdir workdirs/methods --methods std,csg,picnn --seeds 0,1,2

Runs go to <workdir>/<method> (a finished run is reused, an interrupted one resumes); the
paper's Table 1 form goes to <workdir>/compare.md with <workdir>/compare.png. Every method's run
is the config with method=<method> (same initialisation and data order for a seed), except
STD's when the config names its STD baseline in config.std_config (configs/voc_part_resnet152.py:
the released STD run's config, which trains stage 2 too); the command-line overrides apply to
all, and compare.md names each side's config. With --seeds, each seed k (in place of
config.seed) gets its set in <workdir>/seed<k>/, and <workdir>/compare.md and compare.json hold
the per-seed rows, mean ± sd, and the paired difference of every pair of methods (later − earlier
in --methods: CSG − STD, PICNN − STD, PICNN − CSG) with 95 % confidence intervals.
From a checkout without `pip install -e .`: python launch/compare.py ...
"""

import os

from absl import flags

from csg_jax import cli
from csg_jax import config as config_lib

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/compare",
                               "Root folder: runs go to <workdir>/<method>.")
_SEEDS = flags.DEFINE_string("seeds", "", "Comma-separated seeds, e.g. 0,1,2: one run per "
                             "method and seed in <workdir>/seed<k>/ (empty: config.seed only).")
_METHODS = flags.DEFINE_string("methods", "std,csg", "Comma-separated methods compared, in "
                               "order: std, csg, picnn (differences: later − earlier).")


def main(argv):
  config = cli.start(argv, _CONFIG)
  with cli.user_errors():
    seeds = cli.parse_seeds(_SEEDS.value)
    names = cli.parse_methods(_METHODS.value)
    from csg_jax.experiments import compare  # pylint: disable=g-import-not-at-top  (JAX)
    cli.check_overrides_are_read(config, methods=names)
    overrides = cli.config_overrides()
    std = compare.std_baseline(config, overrides)
    runs = compare.method_configs(config, names, std)
    for run_config in runs.values():  # a bad value stops every run before a workdir is made
      config_lib.validate(run_config)
    file = os.path.basename(cli.config_file_name())
    described = f"{file}, " + (", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
                               or "no overrides")
    configs = {name: (f"{os.path.basename(config_lib.resolve(config.std_config))} (its "
                      f"std_config), the same overrides" if name == "std" and config.std_config
                      else f"{described}, method={name}") for name in names}
    cli.check_workdir(_WORKDIR.value)
    compare.train_and_compare(config, _WORKDIR.value, seeds, methods=names, std_config=std,
                              configs=configs)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
