"""Per-image explanations, the filter atlas, csg-explain, and the gate in TensorBoard.

Expected values come from numpy on the model's own feature map and head variables, or from one
sort over every activation; never from explain.py.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, small_config, tensorboard_events
from csg_jax.data import augment
from csg_jax.errors import CSGError
from csg_jax.evaluation import explain
from csg_jax.evaluation import explain_report
from csg_jax import runs as run_lib


@pytest.fixture(scope="module")
def csg(straight_run):
  """The shared small CSG run (ResNet-8 at width 4: K = 16, 2 x 2 maps), restored."""
  return run_lib.load_run(straight_run[0])


@pytest.fixture(scope="module")
def std_run(csg, tmp_path_factory):
  """An STD workdir: the STD model (no gate) with straight_run's trunk and head as its step 0,
  written as imported weights are; an STD run without the seconds of training one."""
  workdir = str(tmp_path_factory.mktemp("std_explain"))
  variables = dict(jax.device_get(csg.state.variables()))
  del variables["gates"]
  run_lib.save_as_run(small_config(method="std"), variables, workdir)
  return workdir


def _numpy_forward(run, images):
  """(feature map [N, h, w, K], pooled features [N, K], logits [N, C]) in float64 numpy, from
  the model's feature map and the head's variables."""
  x = augment.normalize(images, *run.dataset.statistics)
  variables = jax.device_get(run.state.variables())
  fmap = np.asarray(run.model.apply(variables, x, train=False)["feature_map"], np.float64)
  head = variables["params"]["head"]
  features = fmap.mean(axis=(1, 2))
  return fmap, features, features @ np.asarray(head["kernel"], np.float64) + np.asarray(
      head["bias"], np.float64)


def _is_png(path):
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return False
  with Image.open(path) as image:
    return image.width > 300 and image.height > 300


def test_contributions_plus_bias_equal_the_logit(csg):
  run = csg
  images, labels = run.dataset.splits["test"].read(np.arange(6))
  explanations = explain.explain_images(run, images, [f"test[{i}]" for i in range(6)], labels,
                                        num_filters=4)
  fmap, features, logits = _numpy_forward(run, images)
  kernel = np.asarray(run.state.params["head"]["kernel"], np.float64)
  classes = explain.FilterClasses(run.state.host_gate(), None)
  for i, e in enumerate(explanations):
    c = int(np.argmax(logits[i]))
    assert e.predicted == c and e.label == labels[i]
    expected = features[i] * kernel[:, c]
    np.testing.assert_allclose(e.contributions, expected, atol=1e-5)
    assert abs(e.logit - logits[i, c]) < 1e-4
    assert abs(e.contributions.sum() + e.bias - e.logit) < 1e-4
    np.testing.assert_allclose(e.contributions[e.top_filters], np.sort(expected)[::-1][:4],
                               atol=1e-5)
    # Maps: bilinear upsampling with half-pixel centres (jax.image.resize's, for upsampling).
    height, width = images.shape[1:3]
    cam = np.einsum("hwk,k->hw", fmap[i], kernel[:, c])
    np.testing.assert_allclose(e.cam, jax.image.resize(cam, (height, width), "linear"),
                               atol=1e-4)
    np.testing.assert_allclose(
        e.filter_maps[0], jax.image.resize(fmap[i, :, :, e.top_filters[0]], (height, width),
                                           "linear"), atol=1e-4)
    record = json.loads(json.dumps(explain.explanation_record(e, classes, run.dataset.class_names)))
    assert abs(sum(record["contributions"]) + record["bias"] - record["logit"]) < 1e-4
    gate = run.state.host_gate()
    top = record["top_filters"][0]
    assert top["gate_class"] == int(gate[:, top["filter"]].argmax())
    assert top["gate_value"] == pytest.approx(float(gate[:, top["filter"]].max()))


def test_running_top_k_equals_one_sort_over_everything():
  acts = np.random.default_rng(0).integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
  values, indices = np.zeros((7, 0), np.float32), np.zeros((7, 0), np.int64)
  for start in range(0, 50, 8):
    values, indices = explain.merge_top_k(values, indices, acts[start:start + 8].T,
                                          np.arange(start, min(start + 8, 50)), 6)
  brute = np.argsort(-acts, axis=0, kind="stable")[:6].T  # ties: the lower index first
  np.testing.assert_array_equal(indices, brute)
  np.testing.assert_array_equal(values, np.take_along_axis(acts.T, brute, axis=1))


def test_atlas_top_k_scales_and_purity_equal_brute_force(csg):
  run = csg
  split = run.dataset.splits["test"]
  scan = explain.scan_split(run, "test", top_k=5)  # 360 images in 3 batches of 128
  images, labels = split.read(np.arange(len(split)))
  fmap, features, _ = _numpy_forward(run, images)
  brute = np.argsort(-features, axis=0, kind="stable")[:5].T
  np.testing.assert_array_equal(scan.top_indices, brute)
  np.testing.assert_allclose(scan.top_values, np.take_along_axis(features.T, brute, 1),
                             rtol=1e-5)
  np.testing.assert_array_equal(scan.top_labels, labels[brute])
  np.testing.assert_allclose(scan.filter_max, fmap.max(axis=(0, 1, 2)), rtol=1e-5)
  kernel = np.asarray(run.state.params["head"]["kernel"], np.float64)
  np.testing.assert_allclose(scan.cam_max, np.abs(fmap @ kernel).max(axis=(0, 1, 2)),
                             rtol=1e-5)
  gate = run.state.host_gate()
  assigned = np.where(gate.max(axis=0) > 0, gate.argmax(axis=0), -1)  # -1: closed, no class
  np.testing.assert_allclose(explain.purity(scan.top_labels, assigned),
                             [np.mean(labels[brute[k]] == assigned[k]) if assigned[k] >= 0
                              else np.nan for k in range(16)])
  np.testing.assert_array_equal(explain.FilterClasses(gate).gate_class, assigned)


def test_csg_explanations_name_gate_and_mi_classes(straight_run, csg, tmp_path):
  written = explain_report.explain_workdir(straight_run[0], indices=[3], out=str(tmp_path),
                                       num_filters=3)
  assert sorted(os.listdir(tmp_path)) == ["explanations.json", "test_3.png"]
  data = json.loads((tmp_path / "explanations.json").read_text())
  top = data["images"][0]["top_filters"]
  assert len(top) == 3 and all("gate_class" in f and "mi_class" in f for f in top)
  shares = data["top3_filters_of_predicted_class"]
  assert set(shares) == {"gate", "mi"} and shares == written["top3_filters_of_predicted_class"]
  gate_class = csg.state.host_gate().argmax(0)[[f["filter"] for f in top]]
  assert shares["gate"] == pytest.approx(np.mean(gate_class == data["images"][0]["predicted"]))
  assert _is_png(tmp_path / "test_3.png")


def test_output_names_are_unique():
  assert explain_report._output_names([3, 3], ["a/x.png", "b/x.jpg"]) == [
      "test_3", "test_3-2", "x", "x-2"]


def test_std_run_is_explained_without_a_gate(std_run, tmp_path):
  image_file = tmp_path / "photo.png"  # RGB, another size: made grey and 8 x 8 like digits
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)).save(
      image_file)
  written = explain_report.explain_workdir(std_run, indices=[5], files=[str(image_file)],
                                       atlas=True, top_k=3, filters_per_page=16, num_filters=3)
  assert run_lib.load_run(std_run).state.host_gate() is None
  with pytest.raises(CSGError, match="test-split index 360 is out of range"):
    explain_report.explain_workdir(std_run, indices=[0, 360])  # no dataset.json: checked loaded
  out = os.path.join(std_run, "explain")
  assert written["out"] == out and written["atlas"]["pages"] == 1  # K = 16
  assert sorted(os.listdir(out)) == ["atlas.json", "atlas_1.png", "explanations.json",
                                     "photo.png", "test_5.png"]
  assert os.path.exists(os.path.join(std_run, "eval", "mi_matrix.npy"))  # evaluated first
  data = json.loads(open(os.path.join(out, "explanations.json")).read())
  # Shareable: the image file relative to the output folder, the workdir by its name only.
  assert [r["source"] for r in data["images"]] == [
      "test[5]", os.path.relpath(str(image_file), out)]
  assert os.path.normpath(os.path.join(out, data["images"][1]["source"])) == str(image_file)
  assert data["workdir"] == os.path.basename(std_run)
  assert str(tmp_path) not in open(os.path.join(out, "explanations.json")).read()
  assert data["images"][1]["label"] is None
  for r in data["images"]:
    assert len(r["contributions"]) == 16
    assert abs(sum(r["contributions"]) + r["bias"] - r["logit"]) < 1e-4
    assert all("gate_class" not in f and "mi_class" in f for f in r["top_filters"])
  assert set(data["top3_filters_of_predicted_class"]) == {"mi"}
  atlas = json.loads(open(os.path.join(out, "atlas.json")).read())
  assert atlas["assigned_by"] == "mi" and set(atlas["mean_purity"]) == {"mi"}
  assert sorted(f["filter"] for f in atlas["filters"]) == list(range(16))
  mi_class = [f["mi_class"] for f in atlas["filters"]]
  assert mi_class == sorted(mi_class)  # grouped by class
  for f in atlas["filters"]:
    assert f["purity"]["mi"] == pytest.approx(np.mean([t["label"] == f["mi_class"]
                                                       for t in f["top"]]))
  for name in ("atlas_1.png", "photo.png", "test_5.png"):
    assert _is_png(os.path.join(out, name)), name


def _read_with_tensorboard(logdir):
  """tensorboard_events' answer, by TensorBoard's own reader (the `tensorboard` extra)."""
  accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  events = accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
  events.Reload()
  tags = events.Tags()
  return ({t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags["scalars"]},
          {t: [(e.step, e.encoded_image_string) for e in events.Images(t)] for t in tags["images"]})


@pytest.mark.parametrize("read", [_read_with_tensorboard, tensorboard_events],
                         ids=["tensorboard", "records"])
def test_tensorboard_shows_the_gate_and_filters_per_class(straight_run, csg, read):
  """At the end of training (every evaluation: test_train's cadence test; none in STD runs:
  test_evaluation's)."""
  scalars, images = read(os.path.join(straight_run[0], "tensorboard"))
  assert [step for step, _ in images["gate"]] == [23]
  assert [step for step, _ in images["test/mi_matrix"]] == [23]
  with Image.open(io.BytesIO(images["gate"][0][1])) as gate_image:
    assert gate_image.width > 500 and gate_image.height > 200
  gate = csg.state.host_gate()
  is_open = gate.max(axis=0) > 0  # an all-zero column serves no class
  counts = np.bincount(gate.argmax(axis=0)[is_open], minlength=10)
  assert {t: v for t, v in scalars.items() if t.startswith("filters_per_class/")} == {
      f"filters_per_class/{c}": [(23, float(counts[c]))] for c in range(10)}
  assert scalars["gate/closed_filters"] == [(23, float(16 - is_open.sum()))]
  assert [step for step, _ in scalars["test/accuracy"]] == [23]
  # The end of training: the max-MI histogram and an atlas of 10 of the K = 16 filters (one page).
  assert [step for step, _ in images["test/max_mi_histogram"]] == [23]
  assert [step for step, _ in images["atlas/page_1"]] == [23]
  assert not any(t.startswith("atlas/") and t != "atlas/page_1" for t in images)
  with Image.open(io.BytesIO(images["atlas/page_1"][0][1])) as atlas_image:
    # 10 rows of 8 images at 1.1 inch a row and 90 dpi
    assert atlas_image.height > 10 * 1.1 * 90 and atlas_image.width > 500


def test_atlas_selection_takes_every_class_in_turn():
  """Gate columns by hand: filters 0, 2, 5 serve class 0 (0.9, 0.7, 0.6), 6 and 1 class 1
  (0.95, 0.5), 4 class 2 (0.8); filter 3 is closed. Atlas order: 0 2 5 | 6 1 | 4 | 3."""
  gate = np.zeros((3, 7), np.float32)
  for k, c, v in [(0, 0, 0.9), (1, 1, 0.5), (2, 0, 0.7), (4, 2, 0.8), (5, 0, 0.6), (6, 1, 0.95)]:
    gate[c, k] = v
  gate[2, 1] = 0.2  # a weaker second class changes nothing
  classes = explain.FilterClasses(gate, None)
  np.testing.assert_array_equal(explain.atlas_order(classes), [0, 2, 5, 6, 1, 4, 3])
  expected = {
      0: [],
      3: [0, 6, 4],  # each class's strongest
      4: [0, 2, 6, 4],  # then the second strongest, first in atlas order: class 0's
      6: [0, 2, 5, 6, 1, 4],  # every open filter; the closed one last
      7: [0, 2, 5, 6, 1, 4, 3],
      99: [0, 2, 5, 6, 1, 4, 3],
  }
  for limit, filters in expected.items():
    np.testing.assert_array_equal(explain.atlas_selection(classes, limit), filters, str(limit))


def _explain(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "explain.py"), *args],
                        capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_launcher_bad_inputs_are_one_line(straight_run, tmp_path):
  workdir = straight_run[0]
  present = tmp_path / "present.png"
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(present)
  no_checkpoint = tmp_path / "fresh"
  no_checkpoint.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), no_checkpoint)
  cases = [
      # --images a.png b.png: the second file is a plain argument
      ([f"--workdir={workdir}", "--images", str(present), str(tmp_path / "missing.png")],
       f"image file '{tmp_path / 'missing.png'}' does not exist"),
      ([f"--workdir={no_checkpoint}", "--indices=0"], "holds no checkpoint yet"),
      ([f"--workdir={workdir}", "--indices=0,360"],
       "test-split index 360 is out of range: the test split has 360 images (0 to 359)"),
  ]
  for args, expected in cases:
    proc = _explain(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
  assert not os.path.exists(os.path.join(workdir, "explain"))
