"""csg_jax.data: batch streams (order, resumption, sharding, eval coverage) and augmentation."""

import itertools
import threading
import time

import numpy as np
import pytest

from csg_jax import data
from csg_jax.data import augment
from csg_jax.errors import CSGError


def _indexed_dataset(n: int = 50, hw: int = 6) -> data.Dataset:
  """Image i is filled with the value i, so a batch says which examples it holds."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, hw, hw, 3))
  labels = np.arange(n, dtype=np.int32) % 10
  split = data.ArraySplit(np.ascontiguousarray(images), labels)
  return data.Dataset("indexed", tuple("abcdefghij"), (hw, hw, 3),
                      {"train": split, "test": split})


def _plain_config(**overrides):
  """No augmentation, identity normalisation (x / 255), no prefetch thread."""
  cfg = data.default_config("folder")
  cfg.crop_padding, cfg.flip, cfg.prefetch = 0, False, 0
  cfg.mean, cfg.std = (0.0,) * 3, (1.0,) * 3
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _ids(batch) -> np.ndarray:
  """The example ids of an un-augmented batch of the indexed data set."""
  return np.round(batch["image"][:, 0, 0, 0] * 255).astype(int)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def test_each_epoch_covers_every_example_exactly_once():
  n, batch = 50, 16  # 16 does not divide 50: batches straddle epochs.
  ds = _indexed_dataset(n)
  batches = _take(data.train_batches(ds, _plain_config(), global_batch_size=batch, seed=3), 13)
  stream = np.concatenate([_ids(b) for b in batches])  # 208 positions, 4 epochs and a bit.
  for epoch in range(4):
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
  np.testing.assert_array_equal(stream, data.stream_indices(n, 3, 0, 13 * batch))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), stream % 10)
  assert not np.array_equal(stream[:n], stream[n:2 * n])  # A new order every epoch.


def test_epoch_permutation_is_seeded_by_seed_and_epoch():
  np.testing.assert_array_equal(data.epoch_permutation(100, 0, 1),
                                data.epoch_permutation(100, 0, 1))
  assert not np.array_equal(data.epoch_permutation(100, 0, 1), data.epoch_permutation(100, 0, 2))
  assert not np.array_equal(data.epoch_permutation(100, 0, 1), data.epoch_permutation(100, 1, 1))


def _augmenting_config(**overrides):
  cfg = data.default_config("folder")  # crop_padding 4, flip
  cfg.prefetch = 0
  cfg.mean, cfg.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.mark.parametrize("overrides", [{}, {"crop_padding": 0, "random_resized_crop": True}])
def test_resumed_stream_equals_uninterrupted_stream(overrides):
  ds = _indexed_dataset()
  cfg = _augmenting_config(**overrides)
  full = _take(data.train_batches(ds, cfg, global_batch_size=16, seed=7), 8)
  resumed = _take(data.train_batches(ds, cfg, global_batch_size=16, seed=7, start_step=5), 3)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_different_seeds_give_different_batches():
  ds = _indexed_dataset()
  a = next(data.train_batches(ds, _augmenting_config(), global_batch_size=16, seed=0))
  b = next(data.train_batches(ds, _augmenting_config(), global_batch_size=16, seed=1))
  assert not np.array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], b["image"])


def test_augmentation_changes_with_the_step_not_only_the_order():
  # One example repeated: any difference between steps comes from augmentation alone.
  images = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
  split = data.ArraySplit(images, np.zeros(1, np.int32))
  ds = data.Dataset("one", ("a",), (6, 6, 3), {"train": split, "test": split})
  steps = _take(data.train_batches(ds, _augmenting_config(), global_batch_size=8, seed=0), 2)
  assert not np.array_equal(steps[0]["image"], steps[1]["image"])
  assert len({steps[0]["image"][i].tobytes() for i in range(8)}) > 1


@pytest.mark.parametrize("overrides", [{}, {"crop_padding": 0, "random_resized_crop": True}])
def test_two_processes_concatenate_to_the_one_process_batch(overrides):
  ds = _indexed_dataset()
  cfg = _augmenting_config(**overrides)
  one = _take(data.train_batches(ds, cfg, global_batch_size=16, seed=5), 6)
  halves = [_take(data.train_batches(ds, cfg, global_batch_size=16, seed=5, process_index=p,
                                     process_count=2), 6) for p in (0, 1)]
  for step in range(6):
    assert halves[0][step]["image"].shape == (8, 6, 6, 3)
    for key in ("image", "label"):
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      assert joined.dtype == one[step][key].dtype
      np.testing.assert_array_equal(joined, one[step][key])  # Bit for bit.


def test_each_process_reads_only_its_slice():
  ds = _indexed_dataset()
  reads = []

  class Recording(data.ArraySplit):
    def read(self, indices):
      reads.append(np.array(indices))
      return super().read(indices)

  split = Recording(ds.splits["train"].images, ds.splits["train"].labels)
  ds = data.Dataset(ds.name, ds.class_names, ds.image_shape, {"train": split, "test": split})
  next(data.train_batches(ds, _plain_config(), global_batch_size=16, seed=0, process_index=1,
                          process_count=2))
  np.testing.assert_array_equal(reads[0], data.stream_indices(50, 0, 8, 16))


@pytest.mark.parametrize("batch_size, process_count", [(7, 1), (16, 1), (50, 1), (64, 1),
                                                       (16, 2), (6, 2), (100, 2), (12, 4)])
def test_eval_covers_the_split_exactly_once(batch_size, process_count):
  ds = _indexed_dataset(50)
  streams = [list(data.eval_batches(ds, _plain_config(), global_batch_size=batch_size,
                                    process_index=p, process_count=process_count))
             for p in range(process_count)]
  assert len({len(s) for s in streams}) == 1  # Every process runs the same number of steps.
  seen = []
  for step in zip(*streams):  # Global batch order: process 0's slice, then process 1's, ...
    for part in step:
      assert part["image"].shape == (batch_size // process_count, 6, 6, 3)
      assert part["mask"].dtype == bool
      seen.extend(_ids(part)[part["mask"]])
      assert not part["image"][~part["mask"]].any()  # Padding is zeros.
      np.testing.assert_array_equal(part["label"][part["mask"]], _ids(part)[part["mask"]] % 10)
  assert seen == list(range(50))


def test_batch_size_must_divide_among_processes():
  ds = _indexed_dataset()
  with pytest.raises(CSGError, match="not divisible by the 3 processes"):
    data.train_batches(ds, _plain_config(), global_batch_size=16, seed=0, process_count=3)
  with pytest.raises(CSGError, match="no split 'val'"):
    data.eval_batches(ds, _plain_config(), split="val", global_batch_size=16)


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetch_threads_give_the_same_batches_and_propagate_errors(workers):
  ds = _indexed_dataset()
  cfg = _augmenting_config()
  plain = _take(data.train_batches(ds, cfg, global_batch_size=16, seed=2), 7)
  plain_eval = list(data.eval_batches(ds, cfg, global_batch_size=24))
  cfg.prefetch, cfg.batch_workers = 2, workers
  prefetched = data.train_batches(ds, cfg, global_batch_size=16, seed=2)
  for a, b in zip(plain, _take(prefetched, 7), strict=True):  # the same batches, in order
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  prefetched.close()
  prefetched_eval = list(data.eval_batches(ds, cfg, global_batch_size=24))
  assert len(prefetched_eval) == len(plain_eval)
  for a, b in zip(plain_eval, prefetched_eval):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])

  class Broken(data.ArraySplit):
    def read(self, indices):
      raise CSGError("disk on fire")

  split = Broken(ds.splits["train"].images, ds.splits["train"].labels)
  broken = data.Dataset("broken", ds.class_names, ds.image_shape, {"train": split, "test": split})
  with pytest.raises(CSGError, match="disk on fire"):
    next(data.train_batches(broken, cfg, global_batch_size=16, seed=0))


def test_batch_workers_run_at_once_and_yield_in_step_order():
  from csg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  lock, running, most = threading.Lock(), [0], [0]

  def make(key):  # even keys take longer: they finish after the odd key started after them
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
    time.sleep(0.05 if key % 2 == 0 else 0.005)
    with lock:
      running[0] -= 1
    return key

  assert list(pipeline._prefetch(make, iter(range(12)), 2, 3)) == list(range(12))
  assert most[0] >= 2  # several batches in preparation at once
  stream = pipeline._prefetch(make, itertools.count(), 2, 3)  # an endless stream stops on close
  assert _take(stream, 3) == [0, 1, 2]
  stream.close()


def test_crop_is_a_zero_padded_shift_known_answer():
  image = np.array([[1, 2], [3, 4]], np.uint8)[None, :, :, None]
  shifted = augment.crop_and_flip(image, np.array([[0, 0]]), 1, None)
  np.testing.assert_array_equal(shifted[0, :, :, 0], [[0, 0], [0, 1]])
  shifted = augment.crop_and_flip(image, np.array([[2, 1]]), 1, None)
  np.testing.assert_array_equal(shifted[0, :, :, 0], [[3, 4], [0, 0]])
  centred = augment.crop_and_flip(image, np.array([[1, 1]]), 1, None)
  np.testing.assert_array_equal(centred, image)


def test_crop_matches_a_padded_slice_for_every_offset():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (81, 5, 7, 3), dtype=np.uint8)
  offsets = np.stack(np.meshgrid(np.arange(9), np.arange(9), indexing="ij"), -1).reshape(81, 2)
  out = augment.crop_and_flip(images, offsets, 4, None)
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i, (y, x) in enumerate(offsets):
    np.testing.assert_array_equal(out[i], padded[i, y:y + 5, x:x + 7])


def test_flip_reverses_the_width_exactly():
  images = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)
  flip = np.array([True, False, True, False])
  out = augment.crop_and_flip(images, None, 0, flip)
  np.testing.assert_array_equal(out[flip], images[flip][:, :, ::-1])
  np.testing.assert_array_equal(out[~flip], images[~flip])
  both = augment.crop_and_flip(images, np.array([[0, 2]] * 4), 1, flip)
  crop = augment.crop_and_flip(images, np.array([[0, 2]] * 4), 1, None)
  np.testing.assert_array_equal(both[flip], crop[flip][:, :, ::-1])


def test_resized_crop_of_the_whole_image_is_the_image():
  images = np.random.default_rng(2).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)
  boxes = np.array([[0, 0, 6, 8]] * 3, float)
  np.testing.assert_array_equal(augment.resized_crop(images, boxes, None), images)
  flip = np.array([True, False, True])
  out = augment.resized_crop(images, boxes, flip)
  np.testing.assert_array_equal(out[flip], images[flip][:, :, ::-1])
  # Upsampling the top-left 3x4 quarter by 2 repeats nearby pixels' values (bilinear).
  quarter = augment.resized_crop(images, np.array([[0, 0, 3, 4]] * 3, float), None)
  assert quarter.dtype == np.float32
  np.testing.assert_allclose(quarter[:, 1::2, 1::2][:, :2, :3],
                             0.75 * 0.75 * images[:, :2, :3] + 0.25 * 0.75 * images[:, 1:3, :3]
                             + 0.75 * 0.25 * images[:, :2, 1:4] + 0.0625 * images[:, 1:3, 1:4],
                             rtol=1e-5)


def test_resized_crop_boxes_lie_inside_the_image():
  cfg = _augmenting_config(crop_padding=0, random_resized_crop=True)
  params = augment.sample_params(np.random.default_rng(0), 1000, (20, 30), cfg)
  y, x, h, w = params["box"].T
  assert (y >= 0).all() and (x >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (y + h <= 20).all() and (x + w <= 30).all()
  assert ((h * w) / 600 >= 0.08 * 0.9).all()


def test_normalize_known_answer():
  images = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
  out = augment.normalize(images, (0.2,), (0.4,))
  np.testing.assert_allclose(out.ravel(), [-0.5, 0.0, 2.0], atol=1e-6)
  assert out.dtype == np.float32


def test_digits_batches_end_to_end():
  cfg = data.default_config()
  ds = data.load_dataset(cfg)
  batch = next(data.train_batches(ds, cfg, global_batch_size=32, seed=0))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  eval_ = list(data.eval_batches(ds, cfg, global_batch_size=100))
  assert len(eval_) == 4 and sum(int(b["mask"].sum()) for b in eval_) == 360
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in eval_]),
                                ds.splits["test"].labels)


def test_resized_crop_boxes_follow_rrc_scale_and_rrc_ratio():
  """Area fraction and aspect ratio of the boxes (torchvision's sampling, before rounding) stay
  in config's ranges: set narrow ranges and the boxes follow them."""
  cfg = _augmenting_config(crop_padding=0, random_resized_crop=True, rrc_scale=(0.25, 0.3),
                           rrc_ratio=(1.9, 2.1))
  params = augment.sample_params(np.random.default_rng(1), 2000, (60, 60), cfg)
  _, _, h, w = params["box"].T
  area = h * w / 3600
  assert 0.25 * 0.9 < area.min() and area.max() < 0.3 * 1.1  # rounding to whole pixels
  assert 1.9 * 0.9 < (w / h).min() and (w / h).max() < 2.1 * 1.1
  assert abs(np.median(area) - 0.275) < 0.02 and abs(np.median(w / h) - 2.0) < 0.1
