"""The evaluation report, its figures and the STD-vs-CSG comparison."""

import json
import os
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest

from conftest import REPO, small_config, tensorboard_events
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import report as report_lib
from csg_jax.experiments import compare
from csg_jax.experiments import statistics
from csg_jax import runs
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


def test_mis_of_a_seed_1_run_is_sklearns_with_random_state_0(tmp_path, monkeypatch):
  """The released evaluation calls mutual_info_classif(..., random_state=0) whatever the run's
  seed (VOCPart/mutualinfo/mutualinfo.py lines 110-112): so does csg-evaluate by default."""
  from sklearn.feature_selection import mutual_info_classif  # pylint: disable=g-import-not-at-top
  from csg_jax.evaluation import predict  # pylint: disable=g-import-not-at-top
  config = small_config(seed=1, num_epochs=0.2)
  config.model.name = "tiny"
  training.train_and_evaluate(config, str(tmp_path))
  run = runs.load_run(str(tmp_path))
  out = predict.evaluate(predict.make_eval_fn(run.model, run.mesh), run.state, run.dataset,
                         run.config, run.mesh)
  want = np.stack([mutual_info_classif(out["features"], out["label"] == c, n_neighbors=3,
                                       random_state=0) for c in range(10)])
  seeds = []
  estimator = mis_lib.mutual_information_matrix

  def recorded(*args, seed, **kwargs):
    seeds.append(seed)
    return estimator(*args, seed=seed, **kwargs)

  monkeypatch.setattr(mis_lib, "mutual_information_matrix", recorded)
  mi = report_lib.evaluate_workdir(str(tmp_path)).mi_matrix
  assert seeds == [0]  # the estimator's noise (it breaks ties) is drawn with random_state 0
  np.testing.assert_allclose(mi, want, rtol=0, atol=1e-9)
  # A run written before mis_seed existed keeps being evaluated with its own seed.
  assert predict.mis_seed(run.config) == 0
  run.config.mis_seed = None
  assert predict.mis_seed(run.config) == 1


def test_report_counts_closed_filters_apart_from_every_class(straight_run, tmp_path):
  """A gate with 5 all-zero columns: report.json counts them as closed, never under class 0."""
  run = runs.load_run(straight_run[0])
  variables = jax.device_get(run.state.variables())
  gate = np.array(run.state.host_gate())
  gate[:, [0, 3, 4, 9, 15]] = 0.0
  gate[:, 1] = 0.0
  gate[7, 1] = 0.25  # open, for class 7 only
  variables["gates"] = jax.tree_util.tree_map(lambda _: gate, variables["gates"])  # the one G
  workdir = str(tmp_path / "closed")
  runs.save_as_run(run.config, variables, workdir)
  report = report_lib.evaluate_workdir(workdir).report
  open_cols = [k for k in range(16) if k not in (0, 3, 4, 9, 15)]
  expected = np.bincount(gate[:, open_cols].argmax(0), minlength=10)
  counts = report["filters_per_class"]
  assert counts["closed_by_gate"] == 5
  assert list(counts["by_gate"].values()) == expected.tolist()
  assert sum(counts["by_gate"].values()) == 11 and expected[7] >= 1
  assert report["workdir"] == "closed"  # the name only: no machine's folders in shared outputs
  assert set(mis_lib.gate_filters_per_class(np.zeros((3, 4)))[0]) == {0}  # all closed
  assert mis_lib.gate_filters_per_class(np.zeros((3, 4)))[1] == 4


@pytest.mark.slow
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
  training.train_and_evaluate(small_config(method="std", num_epochs=0.3, tensorboard_images=True,
                                           tensorboard_atlas_filters=0), std_dir)
  with open(os.path.join(std_dir, "metrics.jsonl")) as f:
    tags = {json.loads(line)["split"] for line in f}
  assert tags == {"train", "test"}  # the same tags as a CSG run's: the curves overlay
  scalars, images = tensorboard_events(os.path.join(std_dir, "tensorboard"))
  # No gate image, no filters per class; no atlas (tensorboard_atlas_filters=0).
  assert set(images) == {"test/mi_matrix", "test/max_mi_histogram"}
  assert not any(t.startswith(("filters_per_class/", "gate/")) for t in scalars)
  std = report_lib.evaluate_workdir(std_dir)
  assert std.report["gate_density"] is None and "gate" not in std.report["figures"]
  path = compare.write_comparison(str(tmp_path), {"std": std, "csg": csg})
  text = open(path).read()
  assert "| training | accuracy | MIS | L1 density |" in text
  assert f"| CSG | {csg.report['accuracy']:.4f} | {csg.report['mis']:.4f} |" in text
  assert f"| STD | {std.report['accuracy']:.4f} | {std.report['mis']:.4f} | – |" in text
  assert _is_png(str(tmp_path / "compare.png"))


@pytest.mark.slow
def test_evaluate_launcher_on_a_missing_workdir(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "evaluate.py"),
                         f"--workdir={tmp_path / 'nothing'}"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert "holds no config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_compare_statistics_match_hand_derived_numbers():
  # Differences [1, 2, 3]: mean 2, sd 1, t_{0.975, 2} = 4.302653, CI 2 ± 4.302653 / sqrt(3).
  d = statistics.paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
  assert (d["n"], d["mean"], d["sd"]) == (3, 2.0, 1.0)
  np.testing.assert_allclose(d["t"], 4.302653, rtol=1e-6)
  np.testing.assert_allclose([d["low"], d["high"]], 2 + np.array([-1, 1]) * 4.302653 / 3**0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(statistics.t_quantile(0.975, 4), 2.776445, rtol=1e-6)
  assert statistics.mean_sd([0.5]) == {"n": 1, "mean": 0.5, "sd": None}
  one = statistics.paired_difference([0.5], [0.25])
  assert one["mean"] == 0.25 and one["low"] is None and one["high"] is None


def _fake_report(method, seed, accuracy, mis):
  return {"workdir": f"/w/seed{seed}/{method}", "method": method, "dataset": "digits",
          "model": "resnet8", "step": 10, "num_examples": 360, "accuracy": accuracy, "mis": mis,
          "gate_density": 0.1 if method == "csg" else None}


def test_compare_over_seeds_writes_rows_means_and_intervals(tmp_path):
  rows = {0: (0.90, 0.20, 0.91, 0.21), 1: (0.92, 0.20, 0.94, 0.22), 4: (0.94, 0.19, 0.97, 0.22)}
  reports = {s: {"std": _fake_report("std", s, a, m), "csg": _fake_report("csg", s, a2, m2)}
             for s, (a, m, a2, m2) in rows.items()}
  path = statistics.write_seed_comparison(str(tmp_path), reports)
  summary = json.loads((tmp_path / "compare.json").read_text())
  assert summary["seeds"] == [0, 1, 4] and [r["seed"] for r in summary["runs"]] == [0, 1, 4]
  assert summary["runs"][2]["csg"] == {"accuracy": 0.97, "mis": 0.22, "gate_density": 0.1,
                                       "step": 10, "workdir": "/w/seed4/csg"}
  np.testing.assert_allclose(summary["summary"]["std"]["accuracy"]["mean"], 0.92)
  np.testing.assert_allclose(summary["summary"]["std"]["accuracy"]["sd"], 0.02)
  assert "gate_density" not in summary["summary"]["std"]
  assert summary["summary"]["csg"]["gate_density"] == {"n": 3, "mean": pytest.approx(0.1),
                                                       "sd": pytest.approx(0.0)}
  assert summary["methods"] == ["std", "csg"] and list(summary["differences"]) == ["csg-std"]
  acc = summary["differences"]["csg-std"]["accuracy"]  # differences 0.01, 0.02, 0.03
  np.testing.assert_allclose([acc["mean"], acc["sd"]], [0.02, 0.01])
  np.testing.assert_allclose([acc["low"], acc["high"]],
                             0.02 + np.array([-1, 1]) * 4.302653 * 0.01 / 3**0.5, rtol=1e-6)
  assert set(summary["differences"]["csg-std"]) == {"accuracy", "mis"}  # STD: no gate density
  text = open(path).read()
  assert "| seed | STD accuracy | STD MIS | CSG accuracy | CSG MIS | CSG L1 density |" in text
  assert "| 4 | 0.9400 | 0.1900 | 0.9700 | 0.2200 | 0.1000 |" in text
  assert "| mean ± sd | 0.9200 ± 0.0200 |" in text
  assert (f"| CSG − STD | accuracy | +0.0200 | 0.0100 | [{acc['low']:+.4f}, {acc['high']:+.4f}] |"
          in text)


def test_compare_over_seeds_pairs_every_method_with_every_earlier_one(tmp_path):
  """Three methods: CSG − STD, PICNN − STD and PICNN − CSG, each paired by seed; PICNN has no
  gate density (None), so no density column or difference for it."""
  acc = {"std": (0.90, 0.92, 0.91), "csg": (0.91, 0.95, 0.93), "picnn": (0.93, 0.93, 0.96)}
  reports = {s: {m: {**_fake_report(m, s, acc[m][i], 0.1 * (i + 1)),
                     "gate_density": 0.1 if m == "csg" else None} for m in acc}
             for i, s in enumerate((0, 1, 2))}
  path = statistics.write_seed_comparison(str(tmp_path), reports)
  summary = json.loads((tmp_path / "compare.json").read_text())
  assert summary["methods"] == ["std", "csg", "picnn"]
  assert list(summary["differences"]) == ["csg-std", "picnn-std", "picnn-csg"]
  # picnn - csg per seed: +0.02, -0.02, +0.03: mean 0.01, sd sqrt(((0.01)^2 + 0.03^2 + 0.02^2)/2)
  d = summary["differences"]["picnn-csg"]["accuracy"]
  np.testing.assert_allclose([d["mean"], d["sd"]], [0.01, np.sqrt(0.0014 / 2)], atol=1e-12)
  np.testing.assert_allclose(d["high"] - d["mean"], 4.302653 * d["sd"] / 3**0.5, rtol=1e-6)
  assert set(summary["differences"]["picnn-csg"]) == {"accuracy", "mis"}
  np.testing.assert_allclose(summary["differences"]["picnn-std"]["mis"]["mean"], 0.0, atol=1e-12)
  text = open(path).read()
  assert "| seed | STD accuracy | STD MIS | CSG accuracy | CSG MIS | CSG L1 density | PICNN " \
         "accuracy | PICNN MIS |" in text
  assert "| PICNN − CSG | accuracy | +0.0100 |" in text
