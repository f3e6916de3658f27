"""TFDS data sets as random-access sources over ArrayRecord files: reading needs no TensorFlow.

Preparing a data set (download, then TFDS's builder code writes the files) is separate: most image
builders encode with TensorFlow, installed by the `tfds` extra. tensorflow_datasets is imported
only here, and only when data.source is 'tfds'.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from csg_jax import fileio
from csg_jax.data import cache
from csg_jax.data.dataset import Dataset, check_labels, resize_image
from csg_jax.errors import CSGError
from csg_jax.log import log


_LABEL_CHUNK = 8192  # Records per read when collecting every label.


class TfdsSplit:
  """A Split over a TFDS data source; decodes the 'image' and 'label' features on read."""

  def __init__(self, source: Sequence[Any], split: str, image_size: int | None, num_classes: int,
               open_label_source: Callable[[], Sequence[Any]]):
    """open_label_source: opens the split without decoding images, for `labels`."""
    self._source = source
    self._split = split
    self._image_size = image_size
    self._num_classes = num_classes
    self._open_label_source = open_label_source
    self._batched = hasattr(source, "__getitems__")  # Batched reads when the source has them.

  def __len__(self) -> int:
    return len(self._source)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """Every label in order: one pass over the records, opened once and only when asked for."""
    fetch = self._open_label_source().__getitems__
    keys = list(range(len(self)))
    labels = np.array([r["label"] for start in range(0, len(keys), _LABEL_CHUNK)
                       for r in fetch(keys[start:start + _LABEL_CHUNK])], np.int32)
    check_labels(self._split, labels, self._num_classes)
    return labels

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


def prepare_command(name: str, data_dir) -> str:
  """A command that prepares `name` into `data_dir` from a fresh checkout's venv."""
  return (f'pip install -e ".[tfds]" && python launch/prepare_tfds.py --name={name} '
          f"--data_dir={data_dir}")


def open_builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` writing array_record files under `data_dir` (None: TFDS's)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
    raise CSGError(f"TFDS cannot open data set {name!r} (data_dir={data_dir!r}): "
                   f"{_one_line(e)}; check the name (data.name).") from e


def prepare(builder, name: str) -> None:
  """Downloads and prepares `builder`'s data set (called `name`) as array_record files.

  Preparing runs TFDS's own builder code, which for most image data sets encodes with TensorFlow:
  a missing module is named with the command that installs it.
  """
  where = str(builder.data_dir_root)
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
    missing = _missing_module(e)
    if missing:
      raise CSGError(f"Preparing TFDS data set {name!r} needs the Python module {missing!r}, "
                     "which is not installed (reading prepared data does not): "
                     f"`{prepare_command(name, where)}` installs it and prepares the data.") from e
    raise CSGError(f"TFDS could not download and prepare {name!r} into {where}: {_one_line(e)}. "
                   f"Prepare it where it can be downloaded (`{prepare_command(name, where)}`) "
                   "and copy the data over, or set data.data_dir to where it is prepared.") from e


def _missing_module(error: BaseException) -> str | None:
  """The module whose import failed somewhere in `error`'s chain (TFDS re-raises with context)."""
  while error is not None:
    if isinstance(error, ModuleNotFoundError) and error.name:
      return error.name.split(".")[0]
    error = error.__cause__ or error.__context__
  return None


def _one_line(error: BaseException) -> str:
  """TFDS messages list every data set or every cause on further lines: keep the first."""
  first = next((l.strip() for l in str(error).splitlines() if l.strip()), "").rstrip(".")
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


def local_copy(data_dir: str, name: str, cache_dir: str) -> str:
  """A local data_dir holding a copy of <data_dir>/<name> (data_dir on gs:// or s3://).

  TFDS reads a remote data_dir's metadata, but array_record reads local files only: the
  prepared data set is copied once into data.cache_dir, keyed by its location and its files'
  names and sizes, and reused while they stay the same.
  """
  remote = fileio.join(data_dir, name)
  files = fileio.walk_files(remote)
  if not files:
    raise CSGError(f"TFDS data set {name!r} is not prepared in data_dir {data_dir}: prepare it "
                   f"locally (`{prepare_command(name, '<local dir>')}`) and copy "
                   f"<local dir>/{name} to {remote}, or set data.data_dir to where it is prepared.")
  listing = [(rel, fileio.size(fileio.join(remote, rel))) for rel in files]
  key = cache.cache_key(source=remote, files=listing)
  root = os.path.join(os.path.expanduser(cache_dir), f"tfds-{key}")

  def download(tmp: str) -> dict:
    log(f"Copying TFDS data set {name!r} from {remote} to {root} ({len(files)} files, "
        f"{sum(n for _, n in listing) / 1e6:.1f} MB)")
    fileio.download_tree(remote, os.path.join(tmp, name))
    return {"source": remote, "files": listing}

  if cache.read_meta(root) is None:
    cache.build_atomically(root, download)
  return root


def load(cfg) -> Dataset:
  """Opens data.train_split and data.test_split of TFDS data set data.name.

  Downloads and prepares it first when it is not prepared and data.download is set.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)

  data_dir = cfg.data_dir
  if data_dir and fileio.is_remote(data_dir):
    data_dir = local_copy(data_dir, cfg.name, cfg.cache_dir)
  builder = open_builder(cfg.name, data_dir)
  where = str(builder.data_dir_root)
  if cfg.download and not builder.is_prepared():
    prepare(builder, cfg.name)
  roles = {"train": cfg.train_split, "test": cfg.test_split}
  sources = {}
  for role, split in roles.items():
    try:
      sources[role] = builder.as_data_source(split=split)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      if not builder.is_prepared():
        raise CSGError(f"TFDS data set {cfg.name!r} is not prepared in data_dir {where} and "
                       "data.download is False: prepare it with "
                       f"`{prepare_command(cfg.name, where)}`, or set data.data_dir to where it "
                       "is prepared.") from e
      raise CSGError(
          f"TFDS cannot open data set {cfg.name!r} split {split!r} (data_dir={where}): "
          f"{_one_line(e)}. Check data.{role}_split and data.data_dir; csg_jax reads array_record "
          f"files: `{prepare_command(cfg.name, where)}` prepares them.") from e

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
  # Labels are read without decoding images (what a validation split is drawn by).
  labels_only = {"image": tfds.decode.SkipDecoding()}
  return Dataset(
      name=cfg.name,
      class_names=class_names,
      image_shape=(height, width, channels),
      splits={role: TfdsSplit(sources[role], split, cfg.image_size, len(class_names),
                              functools.partial(builder.as_data_source, split=split,
                                                decoders=labels_only))
              for role, split in roles.items()},
  )
