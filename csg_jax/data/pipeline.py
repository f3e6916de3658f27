"""Deterministic, resumable, multi-process train and eval batch streams.

The training stream is the concatenation of per-epoch permutations of the train split; step s
takes stream positions [s*B, (s+1)*B). Epoch e's permutation comes from a generator seeded by
(seed, e) and step s's augmentation from one seeded by (seed, s), in separate generator streams,
so any step's global batch can be rebuilt from (seed, s) alone: resuming and re-sharding across
processes are exact.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np

from csg_jax.data import augment
from csg_jax.data.dataset import Dataset, check_channels, normalization
from csg_jax.errors import CSGError

_EPOCH_STREAM = 0  # First seed word of epoch permutations,
_AUGMENT_STREAM = 1  # and of per-step augmentation, so the two never share a generator.


def _rng(stream: int, seed: int, counter: int) -> np.random.Generator:
  # SeedSequence takes non-negative words only; any int seed maps to one.
  return np.random.default_rng([stream, int(seed) % 2**64, int(counter)])


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the train split."""
  return _rng(_EPOCH_STREAM, seed, epoch).permutation(num_examples)


class _Permutations:
  """Epoch permutations, keeping the last two (a batch can straddle one boundary)."""

  def __init__(self, num_examples: int, seed: int):
    self.num_examples, self.seed = num_examples, seed
    self._cache: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        del self._cache[min(self._cache)]
      self._cache[epoch] = epoch_permutation(self.num_examples, self.seed, epoch)
    return self._cache[epoch]


def stream_indices(num_examples: int, seed: int, start: int, stop: int) -> np.ndarray:
  """Train-split indices at positions [start, stop) of the training stream."""
  return _stream_indices(_Permutations(num_examples, seed), start, stop)


def _stream_indices(permutations: _Permutations, start: int, stop: int) -> np.ndarray:
  n = permutations.num_examples
  positions = np.arange(start, stop, dtype=np.int64)
  epochs = positions // n
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = permutations(int(epoch))[positions[here] - epoch * n]
  return out


def steps_per_epoch(dataset: Dataset, global_batch_size: int) -> float:
  """Training steps per pass over the train split (fractional: batches straddle epochs)."""
  return len(dataset.splits["train"]) / global_batch_size


def train_batches(dataset: Dataset, data_config, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Infinite augmented training batches of steps start_step, start_step + 1, ...

  Yields {'image': float32 [B // process_count, H, W, C], 'label': int32 [...]}: this process's
  contiguous slice of the global batch.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  check_channels(dataset, data_config)
  normalize_with = normalization(dataset, data_config)
  start_step = int(start_step)  # Restored checkpoints may hand over a numpy or JAX scalar.
  if start_step < 0:
    raise CSGError(f"start_step is {start_step}: it must be >= 0.")
  split = dataset.splits["train"]
  if not len(split):
    raise CSGError(f"Data set {dataset.name!r} has an empty train split: add training images.")
  permutations = _Permutations(len(split), seed)
  first = process_index * local

  def batch(step: int) -> dict[str, np.ndarray]:
    start = step * global_batch_size + first
    images, labels = split.read(_stream_indices(permutations, start, start + local))
    # Drawn for the whole global batch so that every sharding of it augments alike.
    params = augment.sample_params(_rng(_AUGMENT_STREAM, seed, step), global_batch_size,
                                   images.shape[1:3], data_config)
    images = augment.apply(images, augment.slice_params(params, first, first + local),
                           data_config)
    return {"image": augment.normalize(images, *normalize_with), "label": labels}

  return _prefetch(batch, itertools.count(start_step), data_config.prefetch,
                   data_config.batch_workers)


def eval_batches(dataset: Dataset, data_config, *, split: str = "test", global_batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` once, in order, without augmentation.

  Yields {'image', 'label', 'mask'} slices of global batches; the last global batch is padded
  with zero images (label 0, mask False). Every process yields the same number of batches.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  check_channels(dataset, data_config)
  normalize_with = normalization(dataset, data_config)
  if split not in dataset.splits:
    raise CSGError(f"Data set {dataset.name!r} has no split {split!r}: choose one of "
                   f"{sorted(dataset.splits)}.")
  source = dataset.splits[split]
  num_examples = len(source)

  def batch(index: int) -> dict[str, np.ndarray]:
    start = index * global_batch_size + process_index * local
    count = min(max(num_examples - start, 0), local)  # Real examples lead; padding follows.
    images = np.zeros((local,) + tuple(dataset.image_shape), np.float32)
    labels = np.zeros(local, np.int32)
    if count:
      raw, labels[:count] = source.read(np.arange(start, start + count))
      images[:count] = augment.normalize(raw, *normalize_with)
    return {"image": images, "label": labels, "mask": np.arange(local) < count}

  num_batches = math.ceil(num_examples / global_batch_size)
  return _prefetch(batch, iter(range(num_batches)), data_config.prefetch,
                   data_config.batch_workers)


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
    raise CSGError(f"Global batch size is {global_batch_size!r}: set it to a positive integer.")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise CSGError(f"process_index {process_index} is outside [0, process_count={process_count}).")
  if global_batch_size % process_count:
    raise CSGError(f"Global batch size {global_batch_size} is not divisible by the "
                   f"{process_count} processes: choose a multiple of {process_count}.")
  return global_batch_size // process_count


def _prefetch(make: Callable[[int], dict], keys: Iterator[int], depth: int,
              workers: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields make(k) for k in keys, in order, computed `depth` batches ahead by `workers`
  background threads.

  numpy releases the GIL in its copy, gather and arithmetic loops, so batch preparation overlaps
  with the caller's work (e.g. dispatching a training step) and with the other workers'.
  """
  if not depth:
    yield from map(make, keys)
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="csg_jax.data.batch")
  pending: collections.deque = collections.deque()  # depth + workers - 1 batches in flight
  try:
    for key in keys:
      pending.append(pool.submit(make, key))
      if len(pending) > depth + workers - 1:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:  # The consumer stopped early, was closed, or a batch raised: drop what is queued.
    pool.shutdown(wait=False, cancel_futures=True)
