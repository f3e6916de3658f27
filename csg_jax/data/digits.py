"""scikit-learn's bundled 8x8 digits: the default data set, needs no download."""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn import datasets, model_selection

from csg_jax.data.dataset import ArraySplit, Dataset, resize_image

SPLIT_SEED = 0  # Fixed so every run, on every machine, trains and tests on the same images.


def load(cfg) -> Dataset:
  """Loads digits as uint8 [n, 8, 8, 1] (0..16 scaled to 0..255), stratified train/test split."""
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  if cfg.image_size is not None and cfg.image_size != images.shape[1]:
    # One-off at load time on 1797 tiny images, so a per-image loop costs nothing.
    images = np.stack([
        np.asarray(resize_image(Image.fromarray(im, "L"), cfg.image_size)) for im in images
    ])
  images = images[..., None]
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=cfg.test_fraction, stratify=labels,
      random_state=SPLIT_SEED)
  return Dataset(
      name="digits",
      class_names=tuple(str(c) for c in range(10)),
      image_shape=images.shape[1:],
      splits={"train": ArraySplit(images[train], labels[train]),
              "test": ArraySplit(images[test], labels[test])},
  )
