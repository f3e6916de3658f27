"""csg_jax.data TFDS source, through tfds.testing.mock_data (no download, no TensorFlow)."""

import numpy as np
import pytest

from csg_jax import data
from csg_jax.data import tfds_source
from csg_jax.errors import CSGError

tfds = pytest.importorskip("tensorflow_datasets")


def _config(**overrides):
  cfg = data.default_config("tfds")
  cfg.prefetch = 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_mock_cifar10_through_data_source():
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load_dataset(_config())
    # Without metadata files the mock names CIFAR-10's classes '0'..'9'.
    assert ds.name == "cifar10" and ds.class_names == tuple("0123456789")
    assert ds.image_shape == (32, 32, 3)
    assert isinstance(ds.splits["train"], tfds_source.TfdsSplit)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (20, 20)
    images, labels = ds.splits["train"].read(np.array([7, 2, 5]))
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert labels.dtype == np.int32 and ((labels >= 0) & (labels < 10)).all()
    for i, index in enumerate([7, 2, 5]):  # Read order is the requested order.
      one, label = ds.splits["train"].read(np.array([index]))
      np.testing.assert_array_equal(one[0], images[i])
      assert label[0] == labels[i]

    batch = next(data.train_batches(ds, _config(), global_batch_size=8, seed=0))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    seen = sum(int(b["mask"].sum()) for b in data.eval_batches(ds, _config(),
                                                             global_batch_size=6))
    assert seen == 20


def test_mock_cifar10_resized():
  with tfds.testing.mock_data(num_examples=4):
    ds = data.load_dataset(_config(image_size=16))
    assert ds.image_shape == (16, 16, 3)
    assert ds.splits["test"].read(np.arange(4))[0].shape == (4, 16, 16, 3)


def test_unknown_data_set_is_a_csg_error():
  with pytest.raises(CSGError, match="TFDS cannot open data set 'no_such_data_set_xyz'"):
    data.load_dataset(_config(name="no_such_data_set_xyz", download=False))


def test_out_of_range_label_names_the_split():
  source = [{"image": np.zeros((4, 4, 3), np.uint8), "label": 12}]
  split = tfds_source.TfdsSplit(source, "validation", None, 10)
  with pytest.raises(CSGError, match=r"Split 'validation' has label 12 outside \[0, 10\)"):
    split.read(np.array([0]))


def test_data_dir_download_and_splits_reach_tfds(monkeypatch):
  calls = []

  def fake_data_source(name, *, split, data_dir, download):
    calls.append((name, split, data_dir, download))
    raise FileNotFoundError("not prepared")

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  with pytest.raises(CSGError, match="data_dir='gs://bucket/tfds'"):
    data.load_dataset(_config(name="cifar100", data_dir="gs://bucket/tfds", download=False,
                              train_split="train[:90%]"))
  assert calls[0] == ("cifar100", "train[:90%]", "gs://bucket/tfds", False)
