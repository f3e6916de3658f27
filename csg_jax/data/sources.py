"""`load_dataset`: validates the data config, then loads the chosen source."""

from __future__ import annotations

import dataclasses
import importlib

from csg_jax.data.config import DIGITS_MEAN, DIGITS_STD, validate_config
from csg_jax.data.dataset import (ArraySplit, Dataset, carve_validation, channel_statistics,
                                  check_channels, check_labels)
from csg_jax.errors import CSGError

# Imported on demand: digits pulls in scikit-learn, tfds pulls in tensorflow_datasets.
_LOADERS = {"digits": "csg_jax.data.digits", "folder": "csg_jax.data.folder",
            "tfds": "csg_jax.data.tfds_source",
            "voc_part_released": "csg_jax.data.voc_part_released"}


def load_dataset(data_config, *, seed: int = 0) -> Dataset:
  """Returns the Dataset `data_config` describes; CSGError on a bad config or bad data.

  seed: draws the 'val' split when data.validation_fraction > 0 (a run passes config.seed).
  """
  validate_config(data_config)
  dataset = importlib.import_module(_LOADERS[data_config.source]).load(data_config)
  for role, split in dataset.splits.items():
    if isinstance(split, ArraySplit):  # Other splits check labels as they read them.
      check_labels(role, split.labels, dataset.num_classes)
  if data_config.num_classes is not None and data_config.num_classes != dataset.num_classes:
    raise CSGError(f"data.num_classes is {data_config.num_classes} but {dataset.name!r} has "
                   f"{dataset.num_classes} classes ({', '.join(dataset.class_names[:12])}"
                   f"{', ...' if dataset.num_classes > 12 else ''}): fix data.num_classes or "
                   "unset it.")
  check_channels(dataset, data_config)
  dataset = carve_validation(dataset, data_config.validation_fraction, seed)
  if not len(data_config.mean):  # measured on what the model trains on (validation excluded)
    statistics = (DIGITS_MEAN, DIGITS_STD) if data_config.source == "digits" else (
        channel_statistics(dataset.splits["train"]))
    dataset = dataclasses.replace(dataset, statistics=statistics)
  return dataset
