"""TFDS data sets through `tfds.data_source`: random access to ArrayRecord files, no TensorFlow.

tensorflow_datasets is imported only here, and only when data.source is 'tfds'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from csg_jax.data.dataset import Dataset, check_labels, resize_image
from csg_jax.errors import CSGError


class TfdsSplit:
  """A Split over a TFDS data source; decodes the 'image' and 'label' features on read."""

  def __init__(self, source: Sequence[Any], split: str, image_size: int | None, num_classes: int):
    self._source = source
    self._split = split
    self._image_size = image_size
    self._num_classes = num_classes
    self._batched = hasattr(source, "__getitems__")  # Batched reads when the source has them.

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")  # ArrayRecord reads faster in file order.
    records = self._fetch([int(i) for i in indices[order]])
    images = np.stack([self._image(r["image"]) for r in records])
    labels = np.array([r["label"] for r in records], np.int32)
    check_labels(self._split, labels, self._num_classes)
    out_images, out_labels = np.empty_like(images), np.empty_like(labels)
    out_images[order], out_labels[order] = images, labels
    return out_images, out_labels

  def _fetch(self, keys: list[int]) -> list[dict]:
    if self._batched:
      try:
        return self._source.__getitems__(keys)
      except TypeError:
        # tfds.testing.mock_data (4.9.10) installs an unbound __getitems__; items still work.
        self._batched = False
    return [self._source[k] for k in keys]

  def _image(self, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    if self._image_size is None or image.shape[:2] == (self._image_size,) * 2:
      return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(resize_image(pil, self._image_size)).reshape(
        self._image_size, self._image_size, image.shape[-1])


def load(cfg) -> Dataset:
  """Opens data.train_split and data.test_split of TFDS data set data.name."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)

  roles = {"train": cfg.train_split, "test": cfg.test_split}
  sources = {}
  for role, split in roles.items():
    try:
      sources[role] = tfds.data_source(cfg.name, split=split, data_dir=cfg.data_dir,
                                       download=cfg.download)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise CSGError(
          f"TFDS cannot open data set {cfg.name!r} split {split!r} (data_dir={cfg.data_dir!r}): "
          f"{type(e).__name__}: {e}. Check data.name, data.{role}_split and data.data_dir, or "
          f"prepare it with `tfds build {cfg.name} --file_format=array_record`.") from e

  features = sources["train"].dataset_info.features
  if "image" not in features or "label" not in features:
    raise CSGError(f"TFDS data set {cfg.name!r} has features {sorted(features)}: csg_jax needs "
                   "'image' and 'label'; choose an image classification data set.")
  class_names = tuple(features["label"].names)
  height, width, channels = features["image"].shape
  if cfg.image_size is not None:
    height = width = cfg.image_size
  elif height is None or width is None:
    raise CSGError(f"TFDS data set {cfg.name!r} has images of varying size: set data.image_size "
                   "to resize them to one size.")
  return Dataset(
      name=cfg.name,
      class_names=class_names,
      image_shape=(height, width, channels),
      splits={role: TfdsSplit(sources[role], split, cfg.image_size, len(class_names))
              for role, split in roles.items()},
  )
