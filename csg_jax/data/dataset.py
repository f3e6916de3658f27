"""The Dataset record and random-access splits every source produces."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from csg_jax.errors import CSGError


@runtime_checkable
class Split(Protocol):
  """Random-access source of raw examples."""

  @property
  def labels(self) -> np.ndarray:
    """Every label (int32 [n]) in order, without images: what a validation split is drawn by."""
    ...

  def __len__(self) -> int:
    ...

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 images [n, H, W, C], int32 labels [n]) for `indices`, in that order."""
    ...


class ArraySplit:
  """A split held as arrays in memory or memory-mapped from a cache file."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 [n, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
      raise ValueError(f"labels shape {labels.shape} does not match {len(images)} images")
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    # Sorted reads walk a memory-mapped file forwards; the inverse permutation restores order.
    order = np.argsort(indices, kind="stable")
    images = np.empty((len(indices),) + self.images.shape[1:], np.uint8)
    images[order] = self.images[indices[order]]
    return images, self.labels[indices]


class SubsetSplit:
  """Examples `indices` of another split, read through it: a split carved out without copying."""

  def __init__(self, base: Split, indices: np.ndarray):
    self.base = base
    self.indices = np.asarray(indices, np.int64)

  @property
  def labels(self) -> np.ndarray:
    return self.base.labels[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.base.read(self.indices[np.asarray(indices, np.int64)])


@dataclasses.dataclass(frozen=True)
class CacheInfo:
  """Where a source's decoded arrays live and whether this load built them."""
  path: str
  built: bool
  seconds: float


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification data set: class names, the model's input shape and its splits."""
  name: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees, after any resize.
  splits: Mapping[str, Split]  # 'train', 'test', and 'val' when carved out of train.
  skipped: tuple[str, ...] = ()  # Unreadable files left out (data.skip_corrupt).
  cache: CacheInfo | None = None  # Set by sources that decode into a local cache.
  # Per-channel (mean, std) in 0..1 when data.mean/data.std are not given: the data set's known
  # values (digits) or measured on its training split (see channel_statistics).
  statistics: tuple[tuple[float, ...], tuple[float, ...]] | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# Stream word of the validation draw; pipeline.py draws epochs and augmentation from 0 and 1.
_VALIDATION_STREAM = 2


def validation_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a seeded validation subset, stratified so that it has the classes' mix.

  Class c with n_c examples gives round(fraction * n_c) of them: at least one when fraction > 0
  and n_c >= 2, never all of them (every class keeps training examples).
  """
  rng = np.random.default_rng([_VALIDATION_STREAM, int(seed) % 2**64])
  chosen = [np.empty(0, np.int64)]
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    wanted = max(round(fraction * len(members)), 1 if fraction > 0 else 0)
    chosen.append(rng.choice(members, min(wanted, len(members) - 1), replace=False))
  return np.sort(np.concatenate(chosen))


def carve_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
  """`dataset` with split 'val' drawn from its train split and train left with the rest.

  A fraction of 0 returns `dataset` itself, so runs without validation are unchanged.
  """
  if not fraction:
    return dataset
  train = dataset.splits["train"]
  held_out = validation_indices(train.labels, fraction, seed)
  if not held_out.size:
    raise CSGError(f"data.validation_fraction={fraction} holds out no example of "
                   f"{dataset.name!r}: every class has fewer than 2 training examples.")
  kept = np.setdiff1d(np.arange(len(train)), held_out)
  return dataclasses.replace(dataset, splits={**dataset.splits, "train": SubsetSplit(train, kept),
                                              "val": SubsetSplit(train, held_out)})


def channel_statistics(split: Split, max_images: int = 10_000,
                       batch_size: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and standard deviation (pixel values / 255) of a split's images: all of
  them, or `max_images` drawn with a fixed seed from a larger split. Accumulated in float64."""
  n = len(split)
  indices = (np.arange(n) if n <= max_images
             else np.sort(np.random.default_rng(0).choice(n, max_images, replace=False)))
  total = total_sq = count = 0
  for start in range(0, len(indices), batch_size):
    images, _ = split.read(indices[start:start + batch_size])
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total = total + pixels.sum(0)
    total_sq = total_sq + np.square(pixels).sum(0)
    count += pixels.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def normalization(dataset: Dataset, cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The (mean, std) images are normalised with: data.mean/data.std when given, else the data
  set's own statistics."""
  if len(cfg.mean):
    return tuple(cfg.mean), tuple(cfg.std)
  if dataset.statistics is None:
    raise CSGError("data.mean and data.std are empty but the data set carries no statistics: "
                   "load it with csg_jax.data.load_dataset, or give both fields.")
  return dataset.statistics


def check_labels(split: str, labels: np.ndarray, num_classes: int) -> None:
  """Raises CSGError if any label lies outside [0, num_classes)."""
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise CSGError(f"Split {split!r} has label {int(bad[0])} outside [0, {num_classes}) "
                   f"({bad.size} such labels): fix the data or its class list.")


def resize_image(image: Image.Image, size: int | None) -> Image.Image:
  """Resizes a PIL image to size x size (bilinear, antialiased) unless it is already that size."""
  if size is None or image.size == (size, size):
    return image
  return image.resize((size, size), Image.BILINEAR)


def check_channels(dataset: Dataset, cfg) -> None:
  """Raises CSGError unless data.mean and data.std, when given, have one value per channel."""
  channels = dataset.image_shape[-1]
  if len(cfg.mean) and (len(cfg.mean) != channels or len(cfg.std) != channels):
    raise CSGError(f"data.mean/data.std have {len(cfg.mean)}/{len(cfg.std)} values but "
                   f"{dataset.name!r} images have {channels} channel(s): give one value per "
                   "channel, or leave both empty (--config.data.mean='()' "
                   "--config.data.std='()') to measure them on the training split.")
