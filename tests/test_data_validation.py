"""data.validation_fraction: a seeded, stratified 'val' split carved out of the train split."""

import collections
import itertools

import numpy as np
import pytest

from csg_jax import config as config_lib
from csg_jax import data
from csg_jax.data import dataset as dataset_lib
from csg_jax.errors import CSGError
from csg_jax import runs as run_lib
from conftest import small_config


def _labels(counts, seed=0):
  """A shuffled label vector with counts[c] examples of class c."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  return np.random.default_rng(seed).permutation(labels)


def test_each_class_gives_its_rounded_share_at_least_one_never_all():
  labels = _labels([10, 5, 2, 1, 0, 7])
  held = dataset_lib.validation_indices(labels, 0.3, seed=0)
  # 10 -> 3; 5 -> 2 (1.5); 2 -> 1 (0.6); 1 -> 0 (its only example trains); 7 -> 2 (2.1).
  assert collections.Counter(labels[held].tolist()) == {0: 3, 1: 2, 2: 1, 5: 2}
  assert len(set(held.tolist())) == len(held) and list(held) == sorted(held)
  small = dataset_lib.validation_indices(labels, 0.01, seed=0)  # rounds to 0: one per class
  assert collections.Counter(labels[small].tolist()) == {0: 1, 1: 1, 2: 1, 5: 1}
  large = dataset_lib.validation_indices(_labels([2, 3]), 0.9, seed=0)  # keeps one per class
  assert len(large) == 1 + 2


def test_draw_is_seeded():
  labels = _labels([100, 100, 100])
  same = dataset_lib.validation_indices(labels, 0.2, seed=7)
  np.testing.assert_array_equal(same, dataset_lib.validation_indices(labels, 0.2, seed=7))
  other = dataset_lib.validation_indices(labels, 0.2, seed=8)
  assert len(other) == len(same) == 60 and set(other.tolist()) != set(same.tolist())


def _indexed_dataset(n=120):
  """Image i is filled with i, so a batch says which train examples it holds; 3 classes."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3))
  train = data.ArraySplit(np.ascontiguousarray(images), _labels([n // 3] * 3, seed=1))
  return data.Dataset("indexed", ("a", "b", "c"), (4, 4, 3), {"train": train, "test": train})


def test_val_is_a_view_disjoint_from_train_and_batches_never_show_it():
  ds = _indexed_dataset()
  carved = dataset_lib.carve_validation(ds, 0.25, seed=0)
  train, val = carved.splits["train"], carved.splits["val"]
  assert (len(train), len(val)) == (90, 30) and carved.splits["test"] is ds.splits["test"]
  val_ids = set(val.read(np.arange(30))[0][:, 0, 0, 0].tolist())
  assert len(val_ids) == 30
  assert sorted(val_ids | set(train.read(np.arange(90))[0][:, 0, 0, 0].tolist())) == list(
      range(120))
  np.testing.assert_array_equal(val.labels, ds.splits["train"].labels[sorted(val_ids)])

  cfg = data.default_config("folder")
  cfg.crop_padding, cfg.flip, cfg.prefetch = 0, False, 0
  cfg.mean, cfg.std = (0.0,) * 3, (1.0,) * 3
  batches = itertools.islice(data.train_batches(carved, cfg, global_batch_size=30, seed=0), 6)
  seen = np.concatenate([np.round(b["image"][:, 0, 0, 0] * 255).astype(int) for b in batches])
  for epoch in range(2):  # every remaining train example once per epoch, no val example ever
    assert sorted(seen[epoch * 90:(epoch + 1) * 90]) == sorted(set(range(120)) - val_ids)


def test_fraction_0_leaves_the_data_set_as_it_was():
  ds = _indexed_dataset()
  assert dataset_lib.carve_validation(ds, 0.0, seed=0) is ds
  loaded = data.load_dataset(data.default_config())
  assert set(loaded.splits) == {"train", "test"}
  assert isinstance(loaded.splits["train"], data.ArraySplit) and len(loaded.splits["train"]) == 1437


def test_digits_run_plans_on_the_remaining_train_examples():
  config = small_config()
  config.data.validation_fraction = 0.2
  setup = run_lib.build(config)
  train, val = setup.dataset.splits["train"], setup.dataset.splits["val"]
  # The digits' 1437 training images per class: 142 146 142 146 145 145 145 143 139 144, so
  # 0.2 of them rounded: 28 of classes 0, 2 and 8 (28.4, 28.4, 27.8), 29 of the others.
  counts = collections.Counter(val.labels.tolist())
  assert [counts[c] for c in range(10)] == [28, 29, 28, 29, 29, 29, 29, 29, 28, 29]
  assert (len(train), len(val)) == (1437 - 287, 287)
  assert setup.plan.num_examples == len(train)
  assert set(val.indices.tolist()).isdisjoint(train.indices.tolist())
  other = run_lib.build(small_config(seed=1, data=dict(validation_fraction=0.2)))
  assert not np.array_equal(other.dataset.splits["val"].indices, val.indices)


@pytest.mark.parametrize("value", [-0.1, 1.0, True, "0.1"])
def test_bad_fraction_is_one_clear_error(value):
  cfg = data.default_config()
  with cfg.unlocked(), cfg.ignore_type():
    cfg.validation_fraction = value
  with pytest.raises(CSGError, match=r"data\.validation_fraction is .*: set it to a number in "
                     r"\[0, 1\)"):
    data.validate_config(cfg)


def test_older_config_json_reads_as_without_validation():
  old = config_lib.base_config().to_dict()
  del old["data"]["validation_fraction"]
  assert config_lib.upgrade(old)["data"]["validation_fraction"] == 0.0
