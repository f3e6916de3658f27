"""`load_dataset`: validates the data config, then loads the chosen source."""

from __future__ import annotations

import dataclasses

from csg_jax.data import sources
from csg_jax.data.config import validate_config
from csg_jax.data.dataset import (ArraySplit, Dataset, carve_validation, channel_statistics,
                                  check_channels, check_labels)
from csg_jax.errors import CSGError

Statistics = tuple[tuple[float, ...], tuple[float, ...]]


def load_dataset(data_config, *, seed: int = 0, statistics: Statistics | None = None) -> Dataset:
  """Returns the Dataset `data_config` describes; CSGError on a bad config or bad data.

  seed: draws the 'val' split when data.validation_fraction > 0 (a run passes config.seed).
  statistics: the (mean, std) a run recorded in its dataset.json, used when data.mean and
  data.std are empty, so a restored or resumed run normalises as it trained. The Dataset's
  `statistics` are what every image is normalised with: data.mean/data.std when given, else
  `statistics`, else the source's known values, else measured on the training split (the
  validation split excluded).
  """
  validate_config(data_config)
  source = sources.get(data_config.source)
  dataset = source.load(data_config)
  for role, split in dataset.splits.items():
    if isinstance(split, ArraySplit):  # Other splits check labels as they read them.
      check_labels(role, split.labels, dataset.num_classes)
  if dataset.num_classes < 2:
    raise CSGError(f"{dataset.name!r} has {dataset.num_classes} class(es) "
                   f"({', '.join(dataset.class_names)}): a classifier needs two or more.")
  if data_config.num_classes is not None and data_config.num_classes != dataset.num_classes:
    raise CSGError(f"data.num_classes is {data_config.num_classes} but {dataset.name!r} has "
                   f"{dataset.num_classes} classes ({', '.join(dataset.class_names[:12])}"
                   f"{', ...' if dataset.num_classes > 12 else ''}): fix data.num_classes or "
                   "unset it.")
  check_channels(dataset, data_config)
  dataset = carve_validation(dataset, data_config.validation_fraction, seed)
  if len(data_config.mean):
    statistics = tuple(data_config.mean), tuple(data_config.std)
  statistics = (statistics or source.statistics
                or channel_statistics(dataset.splits["train"]))
  return dataclasses.replace(dataset, statistics=tuple(tuple(float(v) for v in s)
                                                       for s in statistics))
