r"""The paper's applications on trained runs: localization and adversarial-sample detection.

  csg-applications --std_workdir workdirs/shapes_std --csg_workdir workdirs/shapes_csg
  csg-applications --workdir W                    # one run
  csg-applications --workdir W --app.attacks.epsilons="(0.0314,)" \
      --app.localization.methods="('cam',)"
  csg-applications --workdir W --export_maps maps/   # + explanation maps as maps/<W name>.npz

For each run: localization (GradMap, CAM, ActivMap; only when the data set has object masks,
i.e. `<data.path>/masks/<test split>.npy`, or the voc_part_released source), FGSM/PGD attacks
and detection ROC-AUCs. Writes `W/eval/applications.json`, `W/eval/applications.md` and PNG
figures; with an STD and a CSG run, also a side-by-side report (`--out`, default
`<csg workdir>/eval/`). Definitions and protocol: docs/applications.md. From a checkout without
`pip install -e .`: python launch/applications.py
"""

import time

from absl import flags
from ml_collections import config_flags

from csg_jax import cli
from csg_jax.evaluation import applications
from csg_jax.log import log

_WORKDIRS = flags.DEFINE_multi_string("workdir", [], "A trained workdir (repeatable).")
_STD = flags.DEFINE_string("std_workdir", None, "The STD run of a side-by-side comparison.")
_CSG = flags.DEFINE_string("csg_workdir", None, "The CSG run of a side-by-side comparison.")
_OUT = flags.DEFINE_string("out", None, "Folder of the side-by-side report (default: "
                           "<csg_workdir>/eval).")
_EXPORT = flags.DEFINE_string("export_maps", None, "Folder for every run's explanation maps, "
                              "masks, labels, predictions and images: DIR/<run workdir "
                              "name>.npz (runs with object masks only).")
with cli.config_errors():  # config_flags reads the --app.<field> overrides here
  _APP = config_flags.DEFINE_config_dict("app", applications.app_config(), "Application "
                                         "settings: --app.<field>=<value>.", lock_config=True)


def main(argv):
  cfg = cli.start(argv, _APP)
  start = time.perf_counter()
  with cli.user_errors():
    applications.run_applications(cfg, _WORKDIRS.value, std_workdir=_STD.value,
                                  csg_workdir=_CSG.value, out_dir=_OUT.value,
                                  export_maps=_EXPORT.value)
  log(f"done in {time.perf_counter() - start:.0f} s")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
