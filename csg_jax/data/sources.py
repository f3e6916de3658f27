"""The data sources: one entry each, holding everything csg_jax knows of that source.

An entry says how the source is loaded (a module whose `load(data_config)` returns a Dataset,
imported on first use: digits pulls in scikit-learn, tfds pulls in tensorflow_datasets), its
values of the shared data fields where they differ from the defaults, the fields that only some
sources read and it does, its known normalisation statistics, what its paths must be, and where
its object masks come from. Config defaults, validation, `unread_fields`, loading and the
applications read it; nothing else branches on a source's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from csg_jax.errors import CSGError

TAR_EXTENSIONS = (".tar.gz", ".tgz", ".tar")  # Archives the folder source reads.

# Per-channel statistics of the training images, on the 0..1 scale.
DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3760,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  loader: str  # module with load(data_config) -> Dataset
  # Of the data fields only some sources read (SOURCE_FIELDS), those this one reads.
  reads: tuple[str, ...] = ()
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # its own defaults
  # (mean, std) of its images when known, so never measured; None: measured on the train split.
  statistics: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  check: Callable[[Any], None] | None = None  # its paths, checked before anything is loaded
  # Whether it can have object masks: its loader's object_masks_path(data config, Dataset, role)
  # gives the path of a split's masks (uint8 [N, H, W], 1 on the object, in the split's order).
  has_masks: bool = False
  named_by: str | None = None  # the data field naming the data set in workdir names (None: name)
  # (side, channels, classes) of the data sets it serves, known without reading them, by the
  # value of `named_by` ("" when the source is one data set); what compiling ahead of time needs.
  known_shapes: Mapping[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)

  def load(self, data_config):
    return importlib.import_module(self.loader).load(data_config)

  def object_masks_path(self, data_config, dataset, role: str) -> str | None:
    """The path of split `role`'s object masks, or None where the data has none."""
    if not self.has_masks:
      return None
    path = importlib.import_module(self.loader).object_masks_path(data_config, dataset, role)
    return path if path is not None and os.path.exists(path) else None

  def known_shape(self, data_config) -> tuple[int, int, int] | None:
    """(side, channels, classes) of the configured data set when known without its data."""
    return self.known_shapes.get(str(data_config[self.named_by]) if self.named_by else "")

  def data_set_name(self, data_config) -> str:
    """What a workdir name calls the data: the source, or the data set it names."""
    return str(data_config[self.named_by]) if self.named_by else self.name


def is_tarball(path: str) -> bool:
  """Whether `path` names a tar archive the folder source reads (by its extension)."""
  return path.lower().endswith(TAR_EXTENSIONS)


def _check_folder(cfg) -> None:
  if not cfg.path:
    raise CSGError("data.path is not set: set --config.data.path to a folder or .tar.gz holding "
                   "train/<class>/*.jpg and test/<class>/*.jpg.")
  path = os.path.expanduser(cfg.path)
  if not os.path.exists(path):
    raise CSGError(f"data.path {cfg.path!r} does not exist: point it at a folder or tarball "
                   "of images (train/<class>/*.jpg, test/<class>/*.jpg).")
  if not os.path.isdir(path) and not is_tarball(path):
    raise CSGError(f"data.path {cfg.path!r} is neither a folder nor a .tar/.tar.gz/.tgz file.")


def _check_voc_part_released(cfg) -> None:
  if not cfg.path or not os.path.isdir(os.path.expanduser(cfg.path)):
    raise CSGError(f"data.path is {cfg.path!r}: set --config.data.path to the folder holding "
                   "processed/ of the authors' preprocessed VOC Part (preprocessed_VOC_Part/).")


_CIFAR_LIKE = {"crop_padding": 4, "flip": True}

SOURCES = {s.name: s for s in (
    Source("digits", "csg_jax.data.digits", reads=("test_fraction",),
           defaults={"crop_padding": 0, "flip": False}, statistics=(DIGITS_MEAN, DIGITS_STD),
           known_shapes={"": (8, 1, 10)}),
    Source("folder", "csg_jax.data.folder",
           reads=("path", "train_split", "test_split", "decode_workers", "skip_corrupt"),
           defaults=_CIFAR_LIKE, check=_check_folder, has_masks=True),
    Source("tfds", "csg_jax.data.tfds_source",
           reads=("name", "data_dir", "download", "train_split", "test_split"),
           defaults=_CIFAR_LIKE, named_by="name",
           known_shapes={"cifar10": (32, 3, 10), "cifar100": (32, 3, 100)}),
    # The released transforms (VOCPart.py): pad 128 px images by 16, ImageNet statistics.
    Source("voc_part_released", "csg_jax.data.voc_part_released", reads=("path",),
           defaults={**_CIFAR_LIKE, "crop_padding": 16, "mean": IMAGENET_MEAN,
                     "std": IMAGENET_STD},
           check=_check_voc_part_released, has_masks=True),
)}

# The data fields that only some sources read; every other data field is read by all of them.
SOURCE_FIELDS = tuple(sorted({field for s in SOURCES.values() for field in s.reads}))


def get(name: str) -> Source:
  """The entry of source `name`; CSGError naming the choices for an unknown one."""
  if name not in SOURCES:
    raise CSGError(f"data.source is {name!r}: set it to one of {', '.join(SOURCES)}.")
  return SOURCES[name]


def readers(field: str) -> tuple[str, ...]:
  """The sources that read data field `field` (its name without `data.`)."""
  if field not in SOURCE_FIELDS:
    return tuple(SOURCES)
  return tuple(name for name, s in SOURCES.items() if field in s.reads)
