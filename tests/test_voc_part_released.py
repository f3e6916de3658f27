"""The voc_part_released source on a fixture in the authors' preprocessed layout."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file
from sklearn.feature_selection import mutual_info_classif

from conftest import REPO, small_config
from csg_jax import data as data_lib
from csg_jax import runs
from csg_jax import torch_import
from csg_jax import training
from csg_jax.data import voc_part_released
from csg_jax.errors import CSGError
from csg_jax.evaluation import applications
from csg_jax.evaluation import localization
from csg_jax.evaluation import predict

# (class, object number, image id): train.txt lists 2008_00000{1..4}, val.txt 2008_00000{5,6}
# and 2008_000007 (no objects); 2009_000009 is in neither list, so its cat is in no split.
OBJECTS = [("bird", 0, "2008_000001"), ("dog", 1, "2008_000001"), ("cat", 2, "2008_000002"),
           ("cow", 3, "2008_000003"), ("horse", 4, "2008_000004"), ("sheep", 5, "2008_000004"),
           ("dog", 6, "2008_000005"), ("cow", 7, "2008_000006"), ("bird", 8, "2008_000006"),
           ("cat", 9, "2009_000009")]
TRAIN_IDS = ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
VAL_IDS = ["2008_000005", "2008_000006", "2008_000007"]


def _image(n, size):
  """Smooth, so that JPEG at quality 75 keeps every pixel close; different per object."""
  y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  return (np.stack([y, x, np.full_like(x, n / 10)], -1) * 200 + 20).astype(np.uint8)


def _varied_image(n, size):
  """A smooth random colour field of its own per object (4x4 colours, upsampled): a random net's
  features then differ between images by far more than float rounding."""
  colours = np.random.default_rng(n).integers(0, 256, (4, 4, 3), np.uint8)
  return np.asarray(Image.fromarray(colours).resize((size, size), Image.BILINEAR))


def _mask(n, size):
  mask = np.zeros((size, size), np.uint8)
  mask[n % 3:size // 2 + n, 1:size - n % 4] = 1
  return mask


def write_release(root, size, objects=OBJECTS, train_ids=TRAIN_IDS, val_ids=VAL_IDS,
                  image=_image):
  """What preprocess.py writes: JPEGs at PIL's default quality (75), 1-bit BMP masks; `objects`
  are (class, object number, image id), the ids split by train.txt and val.txt; image(n, size)
  draws object n."""
  processed = root / "processed"
  (processed / "metadata").mkdir(parents=True)
  (processed / "metadata" / "train.txt").write_text("\n".join(train_ids) + "\n")
  (processed / "metadata" / "val.txt").write_text("\n".join(val_ids) + "\n")
  for folder in ("obj_img", "obj_mask"):
    (processed / f"{size}x{size}" / folder).mkdir(parents=True)
  for cls, n, image_id in objects:
    name = f"{cls}-{n}-{image_id}"
    Image.fromarray(image(n, size)).save(processed / f"{size}x{size}" / "obj_img" / f"{name}.jpg")
    Image.fromarray(_mask(n, size) * 255).convert("1").save(
        processed / f"{size}x{size}" / "obj_mask" / f"{name}.mask.bmp")
  return root


def objects_per_class(per_class):
  """(objects, train ids, val ids, image) of a release with `per_class` objects of every class
  in each split, one image each, each drawn differently."""
  objects, ids = [], {"train": [], "val": []}
  for role, year in (("train", 2008), ("val", 2009)):
    for cls in voc_part_released.CLASSES:
      for _ in range(per_class):
        ids[role].append(f"{year}_{len(objects):06d}")
        objects.append((cls, len(objects), ids[role][-1]))
  return objects, ids["train"], ids["val"], _varied_image


def _config(root, cache_dir, **overrides):
  cfg = data_lib.default_config("voc_part_released")
  cfg.path, cfg.cache_dir = root and str(root), str(cache_dir)
  cfg.update(overrides)
  return cfg


def test_defaults_are_the_released_transforms():
  cfg = data_lib.default_config("voc_part_released")  # VOCPart.py: RandomCrop(128, padding=16)
  assert (cfg.crop_padding, cfg.flip) == (16, True)
  assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)


def test_reads_the_release_with_its_class_order_splits_and_masks(tmp_path):
  root = write_release(tmp_path / "preprocessed_VOC_Part", 128)
  ds = data_lib.load_dataset(_config(root, tmp_path / "cache"))
  assert ds.class_names == ("bird", "cat", "dog", "cow", "horse", "sheep")
  assert ds.image_shape == (128, 128, 3) and ds.cache.built
  # Sorted by label, then file name; the cat of 2009_000009 is in no split.
  expected = {"train": [0, 2, 1, 3, 4, 5], "test": [8, 6, 7]}
  for role, objects in expected.items():
    split = ds.splits[role]
    images, labels = split.read(np.arange(len(split)))
    np.testing.assert_array_equal(labels, [ds.class_names.index(OBJECTS[n][0]) for n in objects])
    truth = np.stack([_image(n, 128) for n in objects]).astype(int)
    assert np.abs(images.astype(int) - truth).mean() < 1.0  # JPEG: close, not equal
    assert np.abs(images.astype(int) - truth).max() <= 8
    masks = np.load(voc_part_released.masks_path(ds.cache.path, role))
    np.testing.assert_array_equal(masks, np.stack([_mask(n, 128) for n in objects]))

  again = data_lib.load_dataset(_config(root, tmp_path / "cache"))
  assert not again.cache.built and again.cache.path == ds.cache.path
  # Localization finds the masks, and the eval stream pairs each test image with its own mask.
  config = small_config()
  config.data = _config(root, tmp_path / "cache")
  path = applications._masks_path(config, again)  # pylint: disable=protected-access
  assert path == voc_part_released.masks_path(ds.cache.path, "test")
  batch = next(localization.mask_batches(again, config.data, np.load(path), batch_size=4)())
  np.testing.assert_array_equal(batch["object_mask"][:3],
                                np.stack([_mask(n, 128) for n in expected["test"]]))
  assert batch["mask"].tolist() == [True, True, True, False]


@pytest.mark.parametrize("change,message", [
    (lambda p: os.remove(p / "processed" / "metadata" / "val.txt"), "split file .*val.txt"),
    (lambda p: Image.new("RGB", (128, 128)).save(
        p / "processed" / "128x128" / "obj_img" / "car-10-2008_000001.jpg"),
     "class 'car', not one of the released classes bird, cat, dog, cow"),
    (lambda p: os.remove(p / "processed" / "128x128" / "obj_mask" / "dog-6-2008_000005.mask.bmp"),
     "object mask .*dog-6-2008_000005.mask.bmp is missing"),
])
def test_bad_release_is_one_line(tmp_path, change, message):
  root = write_release(tmp_path / "release", 128)
  change(root)
  with pytest.raises(CSGError, match=message) as error:
    data_lib.load_dataset(_config(root, tmp_path / "cache"))
  assert "\n" not in str(error.value)


def test_path_and_size_errors_name_the_folder_to_give(tmp_path):
  root = write_release(tmp_path / "release", 128)
  with pytest.raises(CSGError, match=r"found \['128x128'\].*data.image_size"):
    data_lib.load_dataset(_config(root, tmp_path / "cache", image_size=64))
  with pytest.raises(CSGError, match="has no processed/ folder"):
    data_lib.load_dataset(_config(root / "processed", tmp_path / "cache"))
  with pytest.raises(CSGError, match="data.path is None"):
    data_lib.load_dataset(_config(None, tmp_path / "cache"))


def test_trains_a_step(tmp_path):
  """processed/16x16 with data.image_size=16: a size the authors' code also reads."""
  root = write_release(tmp_path / "release", 16)
  config = small_config(method="std", batch_size=8, eval_batch_size=8)  # 6 images: one step
  config.model.name = "tiny"
  config.data = _config(root, tmp_path / "cache", image_size=16, crop_padding=2)
  results = training.train_and_evaluate(config, str(tmp_path / "run"),
                                        devices=jax.devices()[:1])
  assert results["step"] == 1 and results["dataset"] == "voc_part_released"
  assert 0 <= results["accuracy"] <= 1


# csg-evaluate --torch_checkpoint: the authors' checkpoints, imported and evaluated in one command.

FIXTURES = os.path.join(REPO, "tests", "fixtures")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def authors_checkpoint(path, *, gate, classes=6, seed=0):
  """A checkpoint in the authors' format, as .safetensors: their train.py saves a DataParallel
  model's state dict (`module.` keys) with a 6-class fc and, for CSG, `lmask.mask` [K, C]. The
  trunk is the resnet18_w8 fixture's (torchvision layout, width 8, K = 64); head and gate are
  random. Returns the tensors as written."""
  tensors = load_file(os.path.join(FIXTURES, "resnet18_w8.safetensors"))
  rng = np.random.default_rng(seed)
  tensors["fc.weight"] = rng.normal(0, 0.5, (classes, 64)).astype(np.float32)
  tensors["fc.bias"] = rng.normal(0, 0.1, (classes,)).astype(np.float32)
  if gate:
    tensors["lmask.mask"] = rng.uniform(0.05, 1, (64, classes)).astype(np.float32)
  tensors = {f"module.{k}": v for k, v in tensors.items()}
  save_file(tensors, str(path))
  return tensors


def _evaluate(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "evaluate.py"), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def _released_flags(root, cache, size=32):
  return ["--config=voc_part_resnet152", "--config.model.name=resnet18",
          "--config.data.source=voc_part_released", f"--config.data.path={root}",
          f"--config.data.image_size={size}", f"--config.data.cache_dir={cache}"]


def _test_split_numbers(weights, workdir, root, cache, size=32):
  """Accuracy and MIS of `weights` on the release's test split, computed here.

  Accuracy: the file's model applied to the whole split at once, normalised with ImageNet's
  statistics. MIS: scikit-learn's estimator on the pooled features of the workdir's restored
  run (load_run + predict), after checking they are the file's model's features: a kNN estimate
  on 18 samples moves with float rounding, so both sides must see the same features.
  """
  model, variables = torch_import.load_resnet(str(weights), "resnet18")
  ds = data_lib.load_dataset(_config(root, cache, image_size=size))
  images, labels = ds.splits["test"].read(np.arange(len(ds.splits["test"])))
  x = (images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  out = model.apply(variables, x.astype(np.float32), train=False)
  accuracy = float((np.asarray(out["logits"]).argmax(-1) == labels).mean())

  run = runs.load_run(workdir)
  result = predict.evaluate(predict.make_eval_fn(run.model, run.mesh), run.state, run.dataset,
                            run.config, run.mesh, "test")
  np.testing.assert_array_equal(result["label"], labels)
  features = np.asarray(out["features"])
  np.testing.assert_allclose(result["features"], features, rtol=1e-5,
                             atol=1e-5 * np.abs(features).max())
  mi = np.stack([mutual_info_classif(np.asarray(result["features"], np.float64), labels == c,
                                     n_neighbors=3, random_state=0)
                 for c in range(ds.num_classes)])
  return accuracy, float(mi.max(0).mean()), len(labels)


@pytest.mark.slow
def test_evaluate_imports_the_authors_checkpoints_and_evaluates_them(tmp_path):
  root = write_release(tmp_path / "release", 32, *objects_per_class(3))
  cache = tmp_path / "cache"
  for name, gate in (("CSG", True), ("STD", False)):
    weights = tmp_path / f"{name}.safetensors"
    tensors = authors_checkpoint(weights, gate=gate, seed=int(gate))
    workdir = str(tmp_path / name)
    proc = _evaluate(f"--torch_checkpoint={weights}", *_released_flags(root, cache),
                     f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    method = name.lower()
    assert (f"imported {weights} as {method} resnet18 (width 8, 3 input channels, 6 classes, "
            f"K = 64) into {workdir}") in proc.stdout

    with open(os.path.join(workdir, "eval", "report.json")) as f:
      report = json.load(f)
    accuracy, mis, n = _test_split_numbers(weights, workdir, root, cache)
    assert (report["method"], report["step"], report["num_examples"]) == (method, 0, n) == (
        method, 0, 18)
    assert report["dataset"] == "voc_part_released"
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert report["mis"] == pytest.approx(mis, abs=1e-9) and report["mis"] > 0
    with open(os.path.join(workdir, "imported.json")) as f:
      assert json.load(f) == {"weights": str(weights), "model": "resnet18", "width": 8,
                              "input_channels": 3, "num_classes": 6, "gate": gate}
    run = runs.load_run(workdir)
    assert run.config.csg.schedule == "alternate"  # the released procedure's config
    if not gate:
      assert report["gate_density"] is None and run.state.host_gate() is None
      assert "gate" not in report["figures"]
      continue
    # The gate of the evaluated run is lmask.mask transposed; the report's gate numbers are its.
    mask = tensors["module.lmask.mask"]
    np.testing.assert_array_equal(run.state.host_gate(), mask.T)
    assert report["gate_density"] == pytest.approx(float(mask.mean()), rel=1e-6)
    counts = np.bincount(mask.argmax(1), minlength=6)
    assert report["filters_per_class"]["by_gate"] == dict(zip(voc_part_released.CLASSES,
                                                              counts.tolist()))
    assert report["filters_per_class"]["closed_by_gate"] == 0
    assert os.path.isfile(os.path.join(workdir, "eval", "gate.png"))


def _holds_a_run(tmp_path):
  (tmp_path / "W").mkdir()
  (tmp_path / "W" / "config.json").write_text("{}")


@pytest.mark.slow
@pytest.mark.parametrize("case,message", [
    ("holds a run", "--workdir '{W}' already holds a run: evaluate it with `csg-evaluate "
     "--workdir {W}` (without --torch_checkpoint), or import into a new --workdir"),
    ("missing file", "--torch_checkpoint '{weights}x' does not exist: give the path of a "
     "PyTorch ResNet file (.pth/.pt or .safetensors)"),
    ("missing data", "data.path is '{root}x': set --config.data.path to the folder holding "
     "processed/ of the authors' preprocessed VOC Part (preprocessed_VOC_Part/)."),
    ("channels", "{weights} holds a resnet18 for images of 3 channels and 6 classes, but this "
     "config's data (digits) has 1 channel and 10 classes: give a --config whose data fits the "
     "weights"),
    ("classes", "{weights}: fc.weight has shape (5, 64), a 5-class head, but 6 classes were asked "
     "for; import it as it is and fine-tune a new head with --config.init_from_skip='^head/'"),
    ("config without checkpoint", "--config is read only with --torch_checkpoint: the run in "
     "--workdir is evaluated with its own config.json (drop --config and its overrides)"),
], ids=["holds-a-run", "missing-file", "missing-data", "channels", "classes", "config-alone"])
def test_evaluate_refusals_are_one_line_and_write_nothing(tmp_path, case, message):
  root = write_release(tmp_path / "release", 32, *objects_per_class(1))
  weights = tmp_path / "CSG.safetensors"
  authors_checkpoint(weights, gate=True, classes=5 if case == "classes" else 6)
  workdir, flags = tmp_path / "W", _released_flags(root, tmp_path / "cache")
  args = {"holds a run": [f"--torch_checkpoint={weights}", *flags],
          "missing file": [f"--torch_checkpoint={weights}x", *flags],
          "missing data": [f"--torch_checkpoint={weights}", *flags,
                           f"--config.data.path={root}x"],
          "channels": [f"--torch_checkpoint={weights}", "--config.model.name=resnet18",
                       f"--config.data.cache_dir={tmp_path / 'cache'}"],
          "classes": [f"--torch_checkpoint={weights}", *flags],
          "config without checkpoint": flags}[case]
  if case == "holds a run":
    _holds_a_run(tmp_path)
  before = sorted(p for p in os.listdir(tmp_path) if p != "cache")
  proc = _evaluate(*args, f"--workdir={workdir}")
  assert proc.returncode == 2, proc.stdout[-2000:]
  assert proc.stderr.strip().splitlines() == [
      "error: " + message.format(W=workdir, weights=weights, root=root)]
  assert sorted(p for p in os.listdir(tmp_path) if p != "cache") == before
  if case == "holds a run":
    assert os.listdir(workdir) == ["config.json"]
