"""csg_jax.data: the config, its validation and the default digits source."""

import subprocess
import sys

import numpy as np
import pytest

from csg_jax import data
from csg_jax.data import dataset as dataset_lib
from csg_jax.data import digits
from csg_jax.data.sources import SOURCES
from csg_jax.errors import CSGError


def test_every_source_config_has_the_same_fields():
  keys = [set(data.default_config(s).keys()) for s in SOURCES]
  assert len(SOURCES) == 4 and all(k == keys[0] for k in keys)
  assert data.default_config().source == "digits"
  assert not data.default_config("digits").flip  # A mirrored digit is a different symbol.
  assert data.default_config("folder").crop_padding == 4


def test_unknown_source_is_a_csg_error():
  with pytest.raises(CSGError, match="data.source is 'imagenet': set it to one of digits, folder, "
                                     "tfds, voc_part_released"):
    data.default_config("imagenet")


@pytest.mark.parametrize("field, value, message", [
    ("source", "nope", "data.source"),
    ("crop_padding", -1, "data.crop_padding"),
    ("prefetch", -1, "data.prefetch"),
    ("batch_workers", 0, "data.batch_workers"),
    ("image_size", 0, "data.image_size"),
    ("std", (0.0,), "data.std"),
    ("mean", (0.1, 0.2), "data.mean has 2 values but data.std has 0"),  # std left empty
    ("test_split", "train", "both 'train'"),
    ("test_fraction", 1.5, "data.test_fraction"),
])
def test_validation_names_the_bad_field(field, value, message):
  cfg = data.default_config()
  with cfg.unlocked():
    cfg[field] = value
  with pytest.raises(CSGError, match=message):
    data.load_dataset(cfg)


def test_validation_rejects_typos_and_conflicting_crops(tmp_path):
  cfg = data.default_config()
  with cfg.unlocked():
    cfg.crop_pading = 4
  with pytest.raises(CSGError, match="crop_pading"):
    data.load_dataset(cfg)
  cfg = data.default_config()
  cfg.random_resized_crop, cfg.crop_padding = True, 2
  with pytest.raises(CSGError, match="random_resized_crop and data.crop_padding"):
    data.load_dataset(cfg)
  cfg = data.default_config("folder")
  with pytest.raises(CSGError, match="data.path is not set"):
    data.load_dataset(cfg)
  cfg.path = str(tmp_path / "missing")
  with pytest.raises(CSGError, match="does not exist"):
    data.load_dataset(cfg)


def test_digits_shapes_and_split_sizes():
  ds = data.load_dataset(data.default_config())
  assert ds.name == "digits"
  assert ds.class_names == tuple("0123456789") and ds.num_classes == 10
  assert ds.image_shape == (8, 8, 1)
  assert (len(ds.splits["train"]), len(ds.splits["test"])) == (1437, 360)
  images, labels = ds.splits["test"].read(np.arange(5))
  assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
  assert labels.dtype == np.int32 and labels.shape == (5,)
  assert ds.splits["train"].images.max() == 255  # 16 on sklearn's 0..16 scale.
  assert data.steps_per_epoch(ds, 100) == pytest.approx(14.37)


def test_digits_test_fraction_sets_the_split():
  cfg = data.default_config()
  cfg.test_fraction = 0.5
  ds = data.load_dataset(cfg)
  assert (len(ds.splits["train"]), len(ds.splits["test"])) == (898, 899)  # ceil(0.5 * 1797)


def test_digits_split_is_stratified_and_fixed():
  a = data.load_dataset(data.default_config())
  b = data.load_dataset(data.default_config())
  for role in ("train", "test"):
    np.testing.assert_array_equal(a.splits[role].images, b.splits[role].images)
    np.testing.assert_array_equal(a.splits[role].labels, b.splits[role].labels)
  train = np.bincount(a.splits["train"].labels, minlength=10)
  test = np.bincount(a.splits["test"].labels, minlength=10)
  np.testing.assert_allclose(test / (train + test), 0.2, atol=0.01)


def test_digits_known_statistics_match_the_data():
  ds = data.load_dataset(data.default_config())  # data.mean/std not given: digits' own
  assert ds.statistics == ((0.3054,), (0.3760,))
  pixels = ds.splits["train"].images / 255
  assert pixels.mean() == pytest.approx(ds.statistics[0][0], abs=1e-3)
  assert pixels.std() == pytest.approx(ds.statistics[1][0], abs=1e-3)


def test_digits_resize():
  cfg = data.default_config()
  cfg.image_size = 16
  ds = data.load_dataset(cfg)
  assert ds.image_shape == (16, 16, 1)
  assert ds.splits["train"].read(np.arange(3))[0].shape == (3, 16, 16, 1)


def test_num_classes_must_match():
  cfg = data.default_config()
  cfg.num_classes = 6
  with pytest.raises(CSGError, match="data.num_classes is 6 but 'digits' has 10"):
    data.load_dataset(cfg)


def test_mean_must_have_one_value_per_channel():
  cfg = data.default_config()
  cfg.mean, cfg.std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
  with pytest.raises(CSGError, match="1 channel"):
    data.load_dataset(cfg)


def test_label_out_of_range_names_split_and_value(monkeypatch):
  good = digits.load

  def bad_load(cfg):
    ds = good(cfg)
    labels = ds.splits["test"].labels.copy()
    labels[3] = 10
    splits = dict(ds.splits, test=dataset_lib.ArraySplit(ds.splits["test"].images, labels))
    return dataset_lib.Dataset(ds.name, ds.class_names, ds.image_shape, splits)

  monkeypatch.setattr(digits, "load", bad_load)
  with pytest.raises(CSGError, match=r"Split 'test' has label 10 outside \[0, 10\)"):
    data.load_dataset(data.default_config())


def test_digits_does_not_import_tensorflow_datasets():
  code = ("import sys; from csg_jax import data; data.load_dataset(data.default_config()); "
          "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
