"""csg_jax.data TFDS source: reading through tfds.testing.mock_data, preparing a data set built
offline from PNG files (no download, no TensorFlow), and the one-line errors of unprepared data."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from csg_jax import data
from csg_jax.data import tfds_source
from csg_jax.errors import CSGError
from conftest import REPO

tfds = pytest.importorskip("tensorflow_datasets")


class CsgTinyPngs(tfds.core.GeneratorBasedBuilder):
  """PNG files under <data_dir>/downloads/manual/<split>/<class>/, as ImageNet's builder reads its
  archives: TFDS's builder machinery end to end, offline. Files are stored as encoded: no TF."""
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Written by the test."
  CLASSES = ("dark", "light")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 3)),
        "label": tfds.features.ClassLabel(names=self.CLASSES)}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(dl_manager.manual_dir / split)
            for split in ("train", "test")}

  def _generate_examples(self, root):
    for path in sorted(root.glob("*/*.png")):
      yield path.name, {"image": path, "label": path.parent.name}


def _config(**overrides):
  cfg = data.default_config("tfds")
  cfg.prefetch = 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_mock_cifar10_through_data_source():
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load_dataset(_config())
    # Without metadata files the mock names CIFAR-10's classes '0'..'9'.
    assert ds.name == "cifar10" and ds.class_names == tuple("0123456789")
    assert ds.image_shape == (32, 32, 3)
    assert isinstance(ds.splits["train"], tfds_source.TfdsSplit)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (20, 20)
    images, labels = ds.splits["train"].read(np.array([7, 2, 5]))
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert labels.dtype == np.int32 and ((labels >= 0) & (labels < 10)).all()
    for i, index in enumerate([7, 2, 5]):  # Read order is the requested order.
      one, label = ds.splits["train"].read(np.array([index]))
      np.testing.assert_array_equal(one[0], images[i])
      assert label[0] == labels[i]

    batch = next(data.train_batches(ds, _config(), global_batch_size=8, seed=0))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    seen = sum(int(b["mask"].sum()) for b in data.eval_batches(ds, _config(),
                                                             global_batch_size=6))
    assert seen == 20


def test_mock_cifar10_resized():
  with tfds.testing.mock_data(num_examples=4):
    ds = data.load_dataset(_config(image_size=16))
    assert ds.image_shape == (16, 16, 3)
    assert ds.splits["test"].read(np.arange(4))[0].shape == (4, 16, 16, 3)


def test_unknown_data_set_is_one_line():
  with pytest.raises(CSGError, match="TFDS cannot open data set 'no_such_data_set_xyz'") as e:
    data.load_dataset(_config(name="no_such_data_set_xyz", download=False))
  assert "\n" not in str(e.value)  # TFDS's own message lists every data set on further lines


def test_unprepared_data_set_without_download_names_it_and_the_command(tmp_path):
  with pytest.raises(CSGError) as e:
    data.load_dataset(_config(data_dir=str(tmp_path), download=False))
  message = str(e.value)
  assert "\n" not in message and f"'cifar10' is not prepared in data_dir {tmp_path}" in message
  assert (f'`pip install -e ".[tfds]" && python launch/prepare_tfds.py --name=cifar10 '
          f"--data_dir={tmp_path}`") in message
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_unprepared_data_set_stops_the_run_before_the_workdir_exists(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config",
       os.path.join(REPO, "configs", "cifar10_resnet20.py"), "--config.data.download=False",
       f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'new' / 'run'}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "'cifar10' is not prepared" in errors[0]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "new")


def test_missing_module_while_preparing_names_it_and_the_command():
  class Builder:  # what TFDS does when TensorFlow is absent: re-raises with the import error
    data_dir_root = "/data/tfds"

    def download_and_prepare(self, file_format):
      assert file_format == "array_record"
      try:
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
      except ModuleNotFoundError as e:
        raise RuntimeError("Failed to encode example") from e

  with pytest.raises(CSGError) as e:
    tfds_source.prepare(Builder(), "cifar10")
  assert str(e.value).startswith("Preparing TFDS data set 'cifar10' needs the Python module "
                                 "'tensorflow'")
  assert "python launch/prepare_tfds.py --name=cifar10 --data_dir=/data/tfds`" in str(e.value)


def _write_pngs(manual, per_class):
  """{first pixel value: (split, label)}; pixel (v, v + 1, v + 2) everywhere in image v."""
  expected = {}
  for split, count in per_class.items():
    for label, name in enumerate(CsgTinyPngs.CLASSES):
      (manual / split / name).mkdir(parents=True)
      for _ in range(count):
        value = 10 + 5 * len(expected)
        pixel = np.array([value, value + 1, value + 2], np.uint8)
        Image.fromarray(np.tile(pixel, (4, 4, 1))).save(manual / split / name / f"{value}.png")
        expected[value] = (split, label)
  return expected


def test_prepared_offline_then_read_back(tmp_path):
  expected = _write_pngs(tmp_path / "tfds" / "downloads" / "manual", {"train": 4, "test": 2})
  cfg = _config(name="csg_tiny_pngs", data_dir=str(tmp_path / "tfds"), crop_padding=0,
                flip=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  ds = data.load_dataset(cfg)  # download=True: TFDS's builder prepares array_record files
  assert list(tmp_path.glob("tfds/csg_tiny_pngs/1.0.0/*.array_record*"))
  assert ds.class_names == CsgTinyPngs.CLASSES and ds.image_shape == (4, 4, 3)
  for split in ("train", "test"):
    images, labels = ds.splits[split].read(np.arange(len(ds.splits[split])))
    assert sorted(zip(images[:, 0, 0, 0].tolist(), labels.tolist())) == sorted(
        (value, label) for value, (s, label) in expected.items() if s == split)
    assert (images == images[:, :1, :1]).all()  # every pixel of an image alike
    np.testing.assert_array_equal(images[..., 2] - images[..., 0], 2)  # channel order kept
  swapped = data.load_dataset(_config(name="csg_tiny_pngs", data_dir=str(tmp_path / "tfds"),
                                      download=False, train_split="test", test_split="train"))
  assert (len(swapped.splits["train"]), len(swapped.splits["test"])) == (4, 8)

  # Prepared: read without download; a quarter of each class as 'val' (one of four).
  cfg.download, cfg.validation_fraction = False, 0.25
  ds = data.load_dataset(cfg, seed=3)
  assert (len(ds.splits["train"]), len(ds.splits["val"]), len(ds.splits["test"])) == (6, 2, 4)
  val_images, val_labels = ds.splits["val"].read(np.arange(2))
  assert sorted(val_labels.tolist()) == [0, 1]
  assert ds.splits["val"].labels.tolist() == val_labels.tolist()  # read without decoding
  batch = next(data.train_batches(ds, cfg, global_batch_size=6, seed=0))  # one whole epoch
  values = np.round(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()
  assert [expected[v] for v in values] == [("train", l) for l in batch["label"].tolist()]
  assert sorted(values + val_images[:, 0, 0, 0].tolist()) == sorted(
      v for v, (s, _) in expected.items() if s == "train")


def test_out_of_range_label_names_the_split():
  source = [{"image": np.zeros((4, 4, 3), np.uint8), "label": 12}]
  split = tfds_source.TfdsSplit(source, "validation", None, 10, lambda: source)
  with pytest.raises(CSGError, match=r"Split 'validation' has label 12 outside \[0, 10\)"):
    split.read(np.array([0]))
