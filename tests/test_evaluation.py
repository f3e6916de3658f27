"""The evaluation report, its figures and the STD-vs-CSG comparison."""

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np

from conftest import REPO, small_config, tensorboard_events
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import report as report_lib
from csg_jax import training


def _is_png(path):
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return False
  image = matplotlib.image.imread(path)
  return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_mi_ceiling_is_the_largest_class_indicator_entropy():
  labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
  p = 0.5  # class 0: H(0.5) = ln 2 is the largest
  assert mis_lib.mi_ceiling(labels, 3) == np.float64(-2 * p * np.log(p))


def test_report_and_comparison(straight_run, tmp_path):
  csg_dir, results = straight_run
  csg = report_lib.evaluate_workdir(csg_dir)
  written = json.loads(open(os.path.join(csg_dir, "eval", "report.json")).read())
  assert written["method"] == "csg" and written["step"] == 23
  assert written["accuracy"] == results["accuracy"]
  np.testing.assert_allclose(written["mis"], results["mis"], rtol=1e-9)
  assert written["num_examples"] == 360
  assert sum(written["filters_per_class"]["by_gate"].values()) == 16  # K filters, each one class
  assert sum(written["filters_per_class"]["by_mi"].values()) == 16
  per_class = written["per_class_accuracy"]
  assert list(per_class) == [str(c) for c in range(10)]
  assert abs(np.mean(list(per_class.values())) - written["accuracy"]) < 0.02  # balanced classes
  for name in ("gate", "mi_matrix", "max_mi_histogram"):
    assert _is_png(os.path.join(csg_dir, written["figures"][name])), name
  np.testing.assert_allclose(np.load(os.path.join(csg_dir, "eval", "mi_matrix.npy")).max(0).mean(),
                             written["mis"])

  std_dir = str(tmp_path / "std")
  training.train_and_evaluate(small_config(method="std", num_epochs=0.3), std_dir)
  with open(os.path.join(std_dir, "metrics.jsonl")) as f:
    tags = {json.loads(line)["split"] for line in f}
  assert tags == {"train", "test"}  # the same tags as a CSG run's: the curves overlay
  scalars, images = tensorboard_events(os.path.join(std_dir, "tensorboard"))
  assert set(images) == {"test/mi_matrix"}  # no gate image, no filters per class
  assert not any(t.startswith(("filters_per_class/", "gate/")) for t in scalars)
  std = report_lib.evaluate_workdir(std_dir)
  assert std.report["gate_density"] is None and "gate" not in std.report["figures"]
  path = report_lib.write_comparison(str(tmp_path), {"std": std, "csg": csg})
  text = open(path).read()
  assert "| training | accuracy | MIS | L1 density |" in text
  assert f"| CSG | {csg.report['accuracy']:.4f} | {csg.report['mis']:.4f} |" in text
  assert f"| STD | {std.report['accuracy']:.4f} | {std.report['mis']:.4f} | – |" in text
  assert _is_png(str(tmp_path / "compare.png"))


def test_evaluate_launcher_on_a_missing_workdir(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "evaluate.py"),
                         f"--workdir={tmp_path / 'nothing'}"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert "holds no config.json" in proc.stderr and "Traceback" not in proc.stderr
