"""The voc_part_released source on a fixture in the authors' preprocessed layout."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import small_config
from csg_jax import data as data_lib
from csg_jax import training
from csg_jax.data import voc_part_released
from csg_jax.errors import CSGError
from csg_jax.evaluation import applications
from csg_jax.evaluation import localization

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


def _mask(n, size):
  mask = np.zeros((size, size), np.uint8)
  mask[n % 3:size // 2 + n, 1:size - n % 4] = 1
  return mask


def _write_release(root, size):
  """What preprocess.py writes: JPEGs at PIL's default quality (75), 1-bit BMP masks."""
  processed = root / "processed"
  (processed / "metadata").mkdir(parents=True)
  (processed / "metadata" / "train.txt").write_text("\n".join(TRAIN_IDS) + "\n")
  (processed / "metadata" / "val.txt").write_text("\n".join(VAL_IDS) + "\n")
  for folder in ("obj_img", "obj_mask"):
    (processed / f"{size}x{size}" / folder).mkdir(parents=True)
  for cls, n, image_id in OBJECTS:
    name = f"{cls}-{n}-{image_id}"
    Image.fromarray(_image(n, size)).save(processed / f"{size}x{size}" / "obj_img" / f"{name}.jpg")
    Image.fromarray(_mask(n, size) * 255).convert("1").save(
        processed / f"{size}x{size}" / "obj_mask" / f"{name}.mask.bmp")
  return root


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
  root = _write_release(tmp_path / "preprocessed_VOC_Part", 128)
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
  root = _write_release(tmp_path / "release", 128)
  change(root)
  with pytest.raises(CSGError, match=message) as error:
    data_lib.load_dataset(_config(root, tmp_path / "cache"))
  assert "\n" not in str(error.value)


def test_path_and_size_errors_name_the_folder_to_give(tmp_path):
  root = _write_release(tmp_path / "release", 128)
  with pytest.raises(CSGError, match=r"found \['128x128'\].*data.image_size"):
    data_lib.load_dataset(_config(root, tmp_path / "cache", image_size=64))
  with pytest.raises(CSGError, match="has no processed/ folder"):
    data_lib.load_dataset(_config(root / "processed", tmp_path / "cache"))
  with pytest.raises(CSGError, match="data.path is None"):
    data_lib.load_dataset(_config(None, tmp_path / "cache"))


def test_trains_a_step(tmp_path):
  """processed/16x16 with data.image_size=16: a size the authors' code also reads."""
  root = _write_release(tmp_path / "release", 16)
  config = small_config(method="std", batch_size=8, eval_batch_size=8)  # 6 images: one step
  config.model.name = "tiny"
  config.data = _config(root, tmp_path / "cache", image_size=16, crop_padding=2)
  results = training.train_and_evaluate(config, str(tmp_path / "run"),
                                        devices=jax.devices()[:1])
  assert results["step"] == 1 and results["dataset"] == "voc_part_released"
  assert 0 <= results["accuracy"] <= 1
