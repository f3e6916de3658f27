"""Judging explanations inside the applications command, on a tiny trained shapes run."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_shapes_config
from csg_jax import data as data_lib
from csg_jax import runs as runs_lib
from csg_jax import training
from csg_jax.data import augment
from csg_jax.data import shapes
from csg_jax.evaluation import applications
from csg_jax.evaluation import explanation_quality as eq

FAITH, STEPS, SANITY = 6, 4, 8


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
  """A tiny CSG run on 16 px shapes (24 test images with masks), judged with maps exported."""
  base = tmp_path_factory.mktemp("explanations")
  root = str(base / "shapes")
  shapes.write_shapes_dataset(root, num_train=48, num_test=24, image_size=16, seed=0)
  config = tiny_shapes_config(root, str(base / "cache"), "csg")
  workdir = str(base / "csg")
  one = jax.devices()[:1]
  training.train_and_evaluate(config, workdir, devices=one)
  cfg = applications.app_config()
  cfg.run_localization = False
  cfg.run_adversarial = False
  cfg.attacks.batch_size = 8
  e = cfg.explanations
  e.batch_size = 8
  e.num_filters = 3
  e.faithfulness_images = FAITH
  e.steps = STEPS
  e.faithfulness_batch_size = 16
  e.sanity_images = SANITY
  e.sanity_figure_images = 2
  export_dir = str(base / "maps")
  report, _ = applications.evaluate_run(workdir, cfg, devices=one, export_maps=export_dir)
  return {"workdir": workdir, "report": report, "cfg": cfg,
          "npz": os.path.join(export_dir, "csg.npz")}


def test_report_has_every_metric_and_the_figures(judged):
  ex = judged["report"]["explanations"]
  assert ex["num_images"] == 24 and ex["map_types"] == ["cam", "gradmap", "filters"]
  assert ex["assigned_by"] == "gate" and ex["notes"] == []
  assert ex["pointing_tolerance_px"] == pytest.approx(15 * 16 / 224)
  for t in ex["map_types"]:
    loc = ex["localization"][t]
    for m in eq.LOCALIZATION_METRICS:
      assert 0 <= loc[m] <= 1
    assert sum(c["num_images"] for c in loc["per_class"].values()) == 24
  faith = ex["faithfulness"]
  assert faith["num_images"] == FAITH and len(faith["fraction"]) == STEPS + 1
  assert set(faith["orders"]) == {"cam", "gradmap", "filters", "random"}
  for o in faith["orders"].values():
    assert 0 <= o["deletion_auc"] <= 1 and 0 <= o["insertion_auc"] <= 1
    assert len(o["deletion_curve"]) == STEPS + 1 and o["seconds_per_image"] > 0
  sanity = ex["sanity"]
  assert [s["name"] for s in sanity["steps"]] == ["head", "conv2", "conv1"]
  assert sanity["check_step"] == "conv2" and set(sanity["verdict"]) == {"cam", "gradmap"}
  for v in sanity["verdict"].values():
    assert v["message"].startswith("pass" if v["passed"] else "FAIL")
  d = ex["dissection"]
  assert d["num_filters"] == 8 and 0 <= d["num_detectors"] <= 8
  assert sum(d["detector_classes"].values()) == d["num_detectors"]
  eval_dir = os.path.join(judged["workdir"], "eval")
  for name in ("explanation_curves.png", "sanity_check.png"):
    assert os.path.getsize(os.path.join(eval_dir, name)) > 0
  text = open(os.path.join(eval_dir, "applications.md")).read()
  for row in ("| pointing game (CAM) |", "| deletion AUC (CAM; lower is better) |",
              "| sanity check (CAM) |", "| detectors (classes) |"):
    assert row in text


def _pointing_hits(maps, masks, tolerance):
  """Independent pointing game: numpy's first argmax, any mask pixel within the tolerance."""
  hits = []
  for m, mask in zip(maps, masks):
    if not mask.any():
      hits.append(np.nan)
      continue
    y, x = np.unravel_index(np.argmax(m), m.shape)
    yy, xx = np.nonzero(mask)
    d2 = (yy - y)**2 + (xx - x)**2
    hits.append(float(((d2 < tolerance**2) | (d2 == 0)).any()))
  return np.array(hits)


def test_exported_arrays_reproduce_the_report(judged):
  ex = judged["report"]["explanations"]
  with np.load(judged["npz"]) as f:
    arrays = {k: f[k] for k in f.files}
  assert arrays["images"].shape == (24, 16, 16, 3) and arrays["images"].dtype == np.uint8
  assert arrays["masks"].shape == (24, 16, 16) and arrays["masks"].dtype == bool
  run = runs_lib.load_run(judged["workdir"], devices=jax.devices()[:1])
  images, labels = run.dataset.splits["test"].read(np.arange(24))
  np.testing.assert_array_equal(arrays["images"], images)
  np.testing.assert_array_equal(arrays["labels"], labels)
  tol = float(arrays["tolerance"])
  for t in ex["map_types"]:
    assert arrays[f"maps_{t}"].shape == (24, 16, 16)
    hits = _pointing_hits(arrays[f"maps_{t}"], arrays["masks"], tol)
    assert np.nanmean(hits) == pytest.approx(ex["localization"][t]["pointing_game"], abs=1e-6)
  # Deletion of the CAM's pixels, recomputed with the model from the exported images and maps.
  mean, std = data_lib.normalization(run.dataset, run.config.data)
  x = augment.normalize(arrays["images"][:FAITH], mean, std)
  variables = run.state.variables()
  curves = np.zeros((FAITH, STEPS + 1))
  for i in range(FAITH):
    order = np.argsort(-arrays["maps_cam"][i].ravel(), kind="stable")
    batch = []
    for s in range(STEPS + 1):
      img = x[i].reshape(-1, 3).copy()
      img[order[:s * 256 // STEPS]] = 0.0
      batch.append(img.reshape(16, 16, 3))
    logits = np.asarray(run.model.apply(variables, np.stack(batch), train=False)["logits"])
    p = np.exp(logits - logits.max(1, keepdims=True))
    curves[i] = (p / p.sum(1, keepdims=True))[:, arrays["labels"][i]]
  np.testing.assert_allclose(arrays["deletion_cam"], curves, atol=1e-5)
  area = np.trapezoid(curves, dx=1 / STEPS, axis=1).mean()
  assert area == pytest.approx(ex["faithfulness"]["orders"]["cam"]["deletion_auc"], abs=1e-5)
  for t in ("gradmap", "random"):
    area = np.trapezoid(arrays[f"insertion_{t}"], dx=1 / STEPS, axis=1).mean()
    assert area == pytest.approx(ex["faithfulness"]["orders"][t]["insertion_auc"], abs=1e-5)


def test_perfect_map_scores_one_and_its_complement_zero():
  _, labels, masks = shapes.render(12, image_size=32, seed=3, split="test")
  masks = masks.astype(bool)
  perfect = eq.summarize_localization(
      eq.score_localization(masks.astype(np.float32), masks, tolerance=0.0), labels,
      list(shapes.CLASS_NAMES))
  for m in eq.LOCALIZATION_METRICS:
    assert perfect[m] == 1.0
    assert all(c[m] == 1.0 for c in perfect["per_class"].values() if c["num_images"])
  outside = eq.summarize_localization(
      eq.score_localization((~masks).astype(np.float32), masks, tolerance=0.0), labels,
      list(shapes.CLASS_NAMES))
  assert outside["pointing_game"] == 0.0 and outside["energy_pointing_game"] == 0.0


def test_sanity_check_fails_maps_that_ignore_the_weights(judged):
  run = runs_lib.load_run(judged["workdir"], devices=jax.devices()[:1])
  variables = jax.device_get(run.state.variables())
  images, labels = run.dataset.splits["test"].read(np.arange(SANITY))
  x = augment.normalize(images, *data_lib.normalization(run.dataset, run.config.data))
  steps = eq.cascade_variables(run.model, variables, run.dataset.image_shape, seed=0)
  assert [s[0] for s in steps] == ["head", "conv2", "conv1"]
  # Every step changed the randomised module's weights, and only those.
  for name, _, v in steps[1:]:
    assert not np.allclose(v["params"]["backbone"][name]["kernel"],
                           variables["params"]["backbone"][name]["kernel"])
  assert np.array_equal(steps[0][2]["params"]["backbone"]["conv1"]["kernel"],
                        variables["params"]["backbone"]["conv1"]["kernel"])

  def activation(v, xs, ys):  # depends on the weights: the summed last-layer activations
    return run.model.apply(v, xs, train=False)["feature_map"].sum(-1).repeat(2, 1).repeat(2, 2)

  out = eq.sanity_check({"image": lambda v, xs, ys: xs.mean(-1),
                         "constant": lambda v, xs, ys: np.ones(xs.shape[:3], np.float32),
                         "activation": activation},
                        variables, steps, x, labels, threshold=0.5, keep=1)
  verdict = out["verdict"]
  assert not verdict["image"]["passed"] and verdict["image"]["abs_spearman"] == pytest.approx(1)
  assert "does not depend on the learned weights" in verdict["image"]["message"]
  assert not verdict["constant"]["passed"] and "constant" in verdict["constant"]["message"]
  assert out["steps"][0]["maps"]["image"]["ssim"] == pytest.approx(1, abs=1e-5)
  # The activation map does not depend on the head, then changes once conv2 is randomised.
  assert out["steps"][0]["maps"]["activation"]["abs_spearman"] == pytest.approx(1, abs=1e-5)
  assert out["steps"][2]["maps"]["activation"]["abs_spearman"] < 0.99
  assert out["example_maps"]["image"].shape == (4, 1, 16, 16)


def test_cascade_groups_of_a_resnet_with_a_neck():
  params = {"head": {}, "neck": {}, "backbone": {
      "stem_conv": {}, "stem_bn": {}, "stage1_block1": {}, "stage2_block1": {},
      "stage2_block2": {}, "stage3_block1": {}, "stage10_block1": {}}}
  groups = eq.cascade_groups(params)
  assert [g[0] for g in groups] == ["head", "neck", "stage10", "stage3", "stage2", "stage1",
                                    "stem"]
  assert groups[4][1] == [("backbone", "stage2_block1"), ("backbone", "stage2_block2")]


def test_markdown_rows_side_by_side_and_export_threading(judged, monkeypatch, tmp_path):
  with_ex = judged["report"]
  without = {k: v for k, v in with_ex.items() if k != "explanations"}
  text = applications.markdown_report({"STD": without, "CSG": with_ex})
  line = next(x for x in text.splitlines() if x.startswith("| pointing game (CAM) |"))
  assert line.split("|")[2].strip() == "–" and line.split("|")[3].strip() != "–"
  assert "GradMap" not in text  # the localization section's name stays its own
  assert "explanations" not in applications.markdown_report({"STD": without}).lower()
  seen = []
  monkeypatch.setattr(applications, "evaluate_run",
                      lambda w, cfg, **kw: seen.append(kw) or (with_ex, {}))
  applications.run_applications(judged["cfg"], [judged["workdir"]], export_maps=str(tmp_path))
  assert seen == [{"export_maps": str(tmp_path)}]


@pytest.mark.slow
def test_cli_has_the_export_maps_flag():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "applications.py"),
                         "--help"], capture_output=True, text=True, timeout=120)
  assert "--export_maps" in proc.stdout + proc.stderr
