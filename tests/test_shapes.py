"""The synthetic shapes data set, and the applications end to end on tiny trained runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_shapes_config
from csg_jax import data as data_lib
from csg_jax.data import shapes
from csg_jax import training
from csg_jax.errors import CSGError
from csg_jax.evaluation import applications


def test_render_is_deterministic_balanced_and_masks_cover_the_object():
  images, labels, masks = shapes.render(36, image_size=32, seed=1, split="test")
  again = shapes.render(36, image_size=32, seed=1, split="test")
  for a, b in zip((images, labels, masks), again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(images, shapes.render(36, image_size=32, seed=2, split="test")[0])
  assert not np.array_equal(images, shapes.render(36, image_size=32, seed=1, split="train")[0])
  assert images.shape == (36, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [6] * 6)
  assert set(np.unique(masks)) == {0, 1}
  area = masks.mean(axis=(1, 2))
  assert (area > 0.03).all() and (area < 0.7).all()
  # Objects are light (channels >= 0.6 before noise); under the mask, pixels are mostly that.
  brightness = np.array([images[i][masks[i] == 1].min(-1).mean() for i in range(36)])
  assert (brightness > 0.5 * 255).all()
  # Class-specific geometry: the ring's hole is background, the square fills its bounding box.
  ring, square = labels == shapes.CLASS_NAMES.index("ring"), labels == shapes.CLASS_NAMES.index(
      "square")
  fill = np.array([m.sum() / ((m.any(1).sum()) * (m.any(0).sum())) for m in masks])
  assert fill[square].min() > 0.6 and fill[ring].max() < 0.7


def test_written_data_set_is_what_the_folder_source_reads(tmp_path):
  root = str(tmp_path / "shapes")
  meta = shapes.write_shapes_dataset(root, num_train=12, num_test=18, image_size=32, seed=3)
  assert meta["class_names"] == list(shapes.CLASS_NAMES) and len(meta["mean"]) == 3
  cfg = data_lib.default_config("folder")
  cfg.path = root
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.decode_workers = 1
  dataset = data_lib.load_dataset(cfg)
  assert dataset.class_names == shapes.CLASS_NAMES
  images, labels, masks = shapes.render(18, image_size=32, seed=3, split="test")
  order = shapes.folder_order(labels)
  got_images, got_labels = dataset.splits["test"].read(np.arange(18))
  np.testing.assert_array_equal(got_images, images[order])  # PNG is lossless
  np.testing.assert_array_equal(got_labels, labels[order])
  np.testing.assert_array_equal(shapes.load_masks(root, "test"), masks[order])

  # Same settings: left untouched (file times too, so the decode cache stays valid).
  before = os.stat(os.path.join(root, "masks", "test.npy")).st_mtime_ns
  shapes.write_shapes_dataset(root, num_train=12, num_test=18, image_size=32, seed=3)
  assert os.stat(os.path.join(root, "masks", "test.npy")).st_mtime_ns == before
  with pytest.raises(CSGError, match="other settings"):
    shapes.write_shapes_dataset(root, num_train=12, num_test=18, image_size=32, seed=4)
  shapes.write_shapes_dataset(root, num_train=12, num_test=12, image_size=32, seed=4,
                              overwrite=True)
  assert len(shapes.load_masks(root, "test")) == 12
  with pytest.raises(CSGError, match="no object masks"):
    shapes.load_masks(str(tmp_path), "test")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """STD and CSG TinyCNN runs on a tiny shapes set (16 px), a few steps each."""
  base = tmp_path_factory.mktemp("apps")
  root = str(base / "shapes")
  shapes.write_shapes_dataset(root, num_train=48, num_test=24, image_size=16, seed=0)
  runs = {}
  for method in ("std", "csg"):
    config = tiny_shapes_config(root, str(base / "cache"), method)
    runs[method] = str(base / method)
    # One device: 8 fake CPU devices would only slow these tiny programs down.
    training.train_and_evaluate(config, runs[method], devices=jax.devices()[:1])
  return runs


@pytest.mark.slow
def test_applications_end_to_end(tiny_runs, tmp_path):
  cfg = applications.app_config()
  cfg.localization.batch_size = 8
  cfg.localization.num_filters = 3
  cfg.attacks.batch_size = 8
  cfg.attacks.epsilons = (8 / 255,)
  cfg.attacks.pgd_steps = 2
  cfg.detection.successful_only = False  # an untrained tiny model: keep every sample
  cfg.num_examples = 3
  one = jax.devices()[:1]
  csg, csg_curves = applications.evaluate_run(tiny_runs["csg"], cfg, devices=one)
  cfg.localization.methods = ("cam",)  # the STD run: the cheapest method is enough here
  cfg.num_examples = 0
  std, std_curves = applications.evaluate_run(tiny_runs["std"], cfg, devices=one)
  for run in ("std", "csg"):
    eval_dir = os.path.join(tiny_runs[run], "eval")
    saved = json.loads(open(os.path.join(eval_dir, "applications.json")).read())
    assert saved["method"] == run and saved["localization"]["num_images"] == 24
    assert [(r["attack"], r["epsilon_255"]) for r in saved["adversarial"]] == [
        ("fgsm", 8.0), ("pgd", 8.0)]
    for name in ("roc.png", "localization.png", "applications.md"):
      assert os.path.getsize(os.path.join(eval_dir, name)) > 0
  assert {"gradmap", "cam", "activmap"} <= set(csg["localization"])
  assert os.path.getsize(os.path.join(tiny_runs["csg"], "eval", "localization_examples.png"))
  assert "gate_consistency" in csg["adversarial"][0]["detection"]
  assert "gate_consistency" not in std["adversarial"][0]["detection"]
  text, written = applications.compare({"STD": std, "CSG": csg},
                                       {"STD": std_curves, "CSG": csg_curves},
                                       str(tmp_path / "cmp"))
  assert "| CAM IoU |" in text and "| PGD | 8/255 |" in text and "| STD | CSG |" in text
  assert "GradMap" not in text  # only in the CSG report: no half-empty rows
  assert sorted(os.listdir(tmp_path / "cmp")) == sorted(written) == [
      "applications_std_vs_csg.json", "applications_std_vs_csg.md",
      "localization_std_vs_csg.png", "roc_std_vs_csg.png"]
  # A run without localization (no masks): no localization figure, and none listed.
  std.pop("localization")
  _, written = applications.compare({"STD": std, "CSG": csg},
                                 {"STD": std_curves, "CSG": csg_curves}, str(tmp_path / "cmp2"))
  assert sorted(os.listdir(tmp_path / "cmp2")) == sorted(written) == [
      "applications_std_vs_csg.json", "applications_std_vs_csg.md", "roc_std_vs_csg.png"]


def test_few_samples_warning_names_the_smallest_count():
  def det(clean, adversarial):
    return {"auc": 0.5, "num_clean": clean, "num_adversarial": adversarial}
  assert applications.few_samples_warning({"a": det(12, 10), "b": det(50, 40)}) is None
  warning = applications.few_samples_warning({"a": det(12, 1), "b": det(50, 40)})
  assert warning.startswith("detection AUCs scored on as few as 1 clean or adversarial")
  assert "as few as 9 " in applications.few_samples_warning({"a": det(9, 30)})


@pytest.mark.slow
def test_applications_cli_error_is_one_line(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "applications.py"),
                           *args], capture_output=True, text=True, timeout=120)
  (tmp_path / "empty").mkdir()
  proc = run(f"--workdir={tmp_path / 'empty'}")
  assert proc.returncode == 2 and "holds no config.json" in proc.stderr
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
