"""csg_jax.data folder source: class folders and tarballs, decoding, the cache, data errors."""

import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from csg_jax import data
from csg_jax.data import folder
from csg_jax.data import load as load_lib
from csg_jax.errors import CSGError

_RNG = np.random.default_rng(0)
RGB = _RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
GRAY = _RNG.integers(0, 256, (8, 8), dtype=np.uint8)
RGBA = _RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
_Y, _X = np.meshgrid(np.arange(8) * 30, np.arange(8) * 20, indexing="ij")
SMOOTH = np.stack([_Y, _X, np.full((8, 8), 128)], -1).astype(np.uint8)  # JPEG keeps it close.


def _write_tree(root, corrupt: bool = False) -> None:
  """train: cat 3 images, dog 3; test: cat 1, dog 2. PNG (lossless), JPEG, gray, RGBA, palette."""
  for split, cls, name, image in [
      ("train", "cat", "rgb.png", Image.fromarray(RGB)),
      ("train", "cat", "gray.png", Image.fromarray(GRAY, "L")),
      ("train", "cat", "upper.PNG", Image.fromarray(RGB[::-1])),
      ("train", "dog", "rgba.png", Image.fromarray(RGBA, "RGBA")),
      ("train", "dog", "photo.jpg", Image.fromarray(SMOOTH)),
      ("train", "dog", "palette.png", Image.fromarray(RGB).convert("P")),
      ("test", "cat", "a.jpeg", Image.fromarray(RGB)),
      ("test", "dog", "b.png", Image.fromarray(RGB[:, ::-1])),
      ("test", "dog", "big.png", Image.fromarray(np.tile(RGB, (2, 2, 1)))),  # 16x16: resized.
  ]:
    os.makedirs(root / split / cls, exist_ok=True)
    image.save(root / split / cls / name)
  (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
  if corrupt:
    (root / "train" / "dog" / "zz_bad.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")


def _config(path, cache_dir, **overrides):
  cfg = data.default_config("folder")
  cfg.path, cfg.cache_dir, cfg.image_size = str(path), str(cache_dir), 8
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _tar(source_dir, target, wrap: str = "") -> str:
  with tarfile.open(target, "w:gz") as tar:
    for split in ("train", "test"):
      tar.add(source_dir / split, arcname=f"{wrap}{split}")
  return str(target)


def test_folder_decodes_every_mode_to_rgb(tmp_path, capsys):
  _write_tree(tmp_path / "d")
  ds = data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))
  assert ds.name == "d" and ds.class_names == ("cat", "dog") and ds.image_shape == (8, 8, 3)
  train, test = ds.splits["train"], ds.splits["test"]
  assert (len(train), len(test)) == (6, 3)
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
  images, _ = train.read(np.arange(6))
  # Sorted by class, then path: gray.png, rgb.png, upper.PNG | palette.png, photo.jpg, rgba.png.
  np.testing.assert_array_equal(images[0], np.repeat(GRAY[:, :, None], 3, axis=2))
  np.testing.assert_array_equal(images[1], RGB)
  np.testing.assert_array_equal(images[2], RGB[::-1])
  np.testing.assert_array_equal(images[5], RGBA[:, :, :3])
  assert np.abs(images[4].astype(int) - SMOOTH).mean() < 8  # JPEG is lossy.
  assert test.read(np.array([2]))[0].shape == (1, 8, 8, 3)
  assert ds.cache.built and "built cache" in capsys.readouterr().out


def test_cache_is_reused_and_rebuilt_when_the_content_changes(tmp_path, capsys):
  _write_tree(tmp_path / "d")
  cfg = _config(tmp_path / "d", tmp_path / "cache")
  first = data.load_dataset(cfg)
  meta = os.path.join(first.cache.path, "meta.json")
  stamp = os.stat(meta).st_mtime_ns
  capsys.readouterr()
  second = data.load_dataset(cfg)
  assert not second.cache.built and second.cache.path == first.cache.path
  assert os.stat(meta).st_mtime_ns == stamp
  assert "reused cache" in capsys.readouterr().out
  np.testing.assert_array_equal(second.splits["train"].images, first.splits["train"].images)
  assert isinstance(second.splits["train"].images, np.memmap)

  Image.fromarray(RGB[:, ::-1]).save(tmp_path / "d" / "train" / "cat" / "rgb.png")
  os.utime(tmp_path / "d" / "train" / "cat" / "rgb.png", ns=(1, 1))
  third = data.load_dataset(cfg)
  assert third.cache.built and third.cache.path != first.cache.path
  assert sorted(os.listdir(tmp_path / "cache")) == sorted(
      os.path.basename(d.cache.path) for d in (first, third))  # No temporary left behind.


def test_corrupt_image_is_named_or_skipped(tmp_path, capsys):
  _write_tree(tmp_path / "d", corrupt=True)
  with pytest.raises(CSGError, match=r"zz_bad\.jpg.*skip_corrupt=True"):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))
  assert not os.listdir(tmp_path / "cache")  # A failed build leaves no cache behind.

  ds = data.load_dataset(_config(tmp_path / "d", tmp_path / "cache", skip_corrupt=True))
  assert len(ds.skipped) == 1 and ds.skipped[0].endswith("zz_bad.jpg")
  assert len(ds.splits["train"]) == 6
  np.testing.assert_array_equal(ds.splits["train"].labels, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(ds.splits["train"].read(np.array([1]))[0][0], RGB)
  assert "1 unreadable" in capsys.readouterr().out
  # The cache remembers the skipped file: without the flag it is still an error.
  with pytest.raises(CSGError, match=r"zz_bad\.jpg"):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))


@pytest.mark.parametrize("wrap", ["", "cifar/"])
def test_tarball_matches_the_folder(tmp_path, wrap, capsys):
  _write_tree(tmp_path / "d")
  tarball = _tar(tmp_path / "d", tmp_path / "d.tar.gz", wrap)
  from_folder = data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))
  # Two decode processes: exercises the process pool on a tiny input.
  from_tar = data.load_dataset(_config(tarball, tmp_path / "cache", decode_workers=2))
  assert "with 2 process(es)" in capsys.readouterr().out
  assert from_tar.name == "d" and from_tar.class_names == from_folder.class_names
  for role in ("train", "test"):
    np.testing.assert_array_equal(from_tar.splits[role].images, from_folder.splits[role].images)
    np.testing.assert_array_equal(from_tar.splits[role].labels, from_folder.splits[role].labels)
  assert not data.load_dataset(_config(tarball, tmp_path / "cache")).cache.built


def test_wrapping_folder_is_found_beside_others(tmp_path):
  _write_tree(tmp_path / "w" / "cifar")
  os.makedirs(tmp_path / "w" / "__MACOSX" / "train")
  ds = data.load_dataset(_config(tmp_path / "w", tmp_path / "cache"))
  assert ds.class_names == ("cat", "dog") and len(ds.splits["train"]) == 6


def test_corrupt_member_of_a_tarball_is_named(tmp_path):
  _write_tree(tmp_path / "d", corrupt=True)
  tarball = _tar(tmp_path / "d", tmp_path / "d.tgz")
  with pytest.raises(CSGError, match=r"d\.tgz:train/dog/zz_bad\.jpg"):
    data.load_dataset(_config(tarball, tmp_path / "cache"))


def test_native_size_requires_equal_sizes(tmp_path):
  _write_tree(tmp_path / "d")
  with pytest.raises(CSGError, match=r"big\.png is 16x16.*set data\.image_size"):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache", image_size=None))
  os.remove(tmp_path / "d" / "test" / "dog" / "big.png")
  ds = data.load_dataset(_config(tmp_path / "d", tmp_path / "cache", image_size=None))
  assert ds.image_shape == (8, 8, 3)


def test_layout_errors_are_clear(tmp_path):
  _write_tree(tmp_path / "d")
  cfg = _config(tmp_path / "d", tmp_path / "cache")
  os.makedirs(tmp_path / "d" / "train" / "bird")
  with pytest.raises(CSGError, match="class folder train/bird has no images"):
    data.load_dataset(cfg)
  os.rmdir(tmp_path / "d" / "train" / "bird")
  os.makedirs(tmp_path / "d" / "test" / "bird")
  Image.fromarray(RGB).save(tmp_path / "d" / "test" / "bird" / "x.png")
  with pytest.raises(CSGError, match=r"only in 'test': \['bird'\]"):
    data.load_dataset(cfg)
  cfg.test_split = "val"
  with pytest.raises(CSGError, match="no 'val' split folder.*data.test_split"):
    data.load_dataset(cfg)
  os.makedirs(tmp_path / "e" / "train")
  os.makedirs(tmp_path / "e" / "test")
  with pytest.raises(CSGError, match="has no class folders"):
    data.load_dataset(_config(tmp_path / "e", tmp_path / "cache"))


def test_one_class_is_refused_naming_the_likely_mistake_and_nothing_is_written(tmp_path):
  """A split with a single class folder (data.path one level too deep, or a one-class data set)
  would train to accuracy 1.0: refused before the cache, the workdir or anything else exists."""
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  from csg_jax import training  # pylint: disable=g-import-not-at-top
  for split in ("train", "test"):
    os.makedirs(tmp_path / "d" / split / "cat")
    Image.fromarray(RGB).save(tmp_path / "d" / split / "cat" / "0.png")
  with pytest.raises(CSGError, match=r"split 'train' has one class folder \(train/cat\); a "
                                     r"classifier needs two or more\. .*one level too deep"):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))
  config = small_config()
  config.data.update(source="folder", path=str(tmp_path / "d"), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(CSGError, match="has one class folder"):
    training.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  assert not os.path.exists(tmp_path / "cache") or os.listdir(tmp_path / "cache") == []


def test_failed_build_leaves_no_partial_cache(tmp_path, monkeypatch):
  _write_tree(tmp_path / "d")

  def crash(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(folder, "_run_jobs", crash)
  with pytest.raises(KeyboardInterrupt):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))
  assert os.listdir(tmp_path / "cache") == []


def test_real_cifar_tarball_layout(cifar_tarball):
  """Lists the real tarball and decodes a few images; the full decode is the benchmark's job."""
  with tarfile.open(cifar_tarball) as archive:
    files, dirs = folder._list_tar(archive)  # pylint: disable=protected-access
    class_names, per_role = folder._layout(  # pylint: disable=protected-access
        files.keys(), dirs, {"train": "train", "test": "test"}, cifar_tarball)
    assert class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                           "horse", "ship", "truck")
    assert [len(per_role[r]) for r in ("train", "test")] == [50000, 10000]
    for label, rel in per_role["test"][::2500]:
      image = folder.decode_image(archive.extractfile(files[rel]).read(), None)
      assert image.shape == (32, 32, 3) and image.dtype == np.uint8
      assert rel.startswith(f"test/{class_names[label]}/")


def test_resize_halves_with_the_bilinear_triangle_filter():
  """Known answer: halving a 2x-upsampled image with an antialiased bilinear (triangle) filter
  weighs each pixel's neighbours 1 : 6 : 1 along both axes (edge weights renormalised)."""
  from csg_jax.data.dataset import resize_image  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(np.float64)
  big = np.repeat(np.repeat(x, 2, axis=0), 2, axis=1).astype(np.uint8)
  weights = np.zeros((8, 8))
  for i in range(8):
    for j, w in ((i - 1, 1.0), (i, 6.0), (i + 1, 1.0)):
      if 0 <= j < 8:
        weights[i, j] = w
  weights /= weights.sum(axis=1, keepdims=True)
  want = weights @ x @ weights.T
  got = np.asarray(resize_image(Image.fromarray(big), 8), np.float64)
  assert got.shape == (8, 8)
  np.testing.assert_allclose(got, want, atol=1.0)  # uint8 rounding
  assert resize_image(Image.fromarray(big), 16).size == (16, 16)  # already that size: kept


def test_split_folder_names_come_from_the_config(tmp_path):
  _write_tree(tmp_path / "d")
  os.rename(tmp_path / "d" / "train", tmp_path / "d" / "fit")
  os.rename(tmp_path / "d" / "test", tmp_path / "d" / "val")
  ds = data.load_dataset(_config(tmp_path / "d", tmp_path / "cache", train_split="fit",
                                 test_split="val"))
  assert (len(ds.splits["train"]), len(ds.splits["test"])) == (6, 3)
  with pytest.raises(CSGError, match="'train'"):
    data.load_dataset(_config(tmp_path / "d", tmp_path / "cache"))


def test_statistics_not_given_are_measured_on_the_training_split(tmp_path):
  _write_tree(tmp_path / "imgs")
  cfg = _config(str(tmp_path / "imgs"), str(tmp_path / "cache"), image_size=8)
  assert cfg.mean == () and cfg.std == ()  # the folder source's default: not given
  ds = data.load_dataset(cfg)
  train, _ = ds.splits["train"].read(np.arange(len(ds.splits["train"])))
  pixels = train.reshape(-1, 3) / 255.0  # numpy's own mean and (population) std per channel
  np.testing.assert_allclose(ds.statistics[0], pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(ds.statistics[1], pixels.std(0), atol=1e-6)
  # The pipeline normalises with them: the whole (unaugmented) training split comes out with
  # mean 0 and std 1 per channel.
  cfg.update(crop_padding=0, flip=False, prefetch=0)
  batch = next(data.train_batches(ds, cfg, global_batch_size=6, seed=0))
  np.testing.assert_allclose(batch["image"].reshape(-1, 3).mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(batch["image"].reshape(-1, 3).std(0), 1.0, atol=1e-5)
  # Given values win, and a wrong channel count says how to get measured ones.
  cfg.update(mean=(0.5,), std=(0.25,))
  with pytest.raises(CSGError, match=r"1/1 values but .* 3 channel\(s\).*leave both empty"):
    data.load_dataset(cfg)


def test_default_config_trains_on_a_folder_of_rgb_images_without_statistics(tmp_path,
                                                                        monkeypatch):
  """The default (digits, 1 channel) config pointed at RGB images: the statistics are measured,
  used, and recorded in dataset.json; config.json keeps them empty, as given; load_run reads
  them back."""
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  from csg_jax import training  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in (("train", 8), ("test", 4)):
    for cls in ("red", "blue"):
      os.makedirs(tmp_path / "imgs" / split / cls)
      for i in range(count):
        image = rng.integers(0, 256, (8, 8, 3), np.uint8)
        Image.fromarray(image).save(tmp_path / "imgs" / split / cls / f"{i}.png")
  config = small_config(batch_size=8, eval_batch_size=8, num_epochs=1.0)
  config.model.name = "tiny"
  config.data.update(source="folder", path=str(tmp_path / "imgs"),
                     cache_dir=str(tmp_path / "cache"))
  results = training.train_and_evaluate(config, str(tmp_path / "w"))
  assert results["step"] == 2
  pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(
      (tmp_path / "imgs" / "train").glob("*/*.png"))]).reshape(-1, 3) / 255.0
  saved = json.loads((tmp_path / "w" / "dataset.json").read_text())
  np.testing.assert_allclose(saved["mean"], pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(saved["std"], pixels.std(0), atol=1e-6)
  assert json.loads((tmp_path / "w" / "config.json").read_text())["data"]["mean"] == []
  # Restoring the run normalises with the recorded statistics, without measuring them again.
  def measure_again(*args, **kwargs):
    raise AssertionError("load_run measured the statistics again")
  monkeypatch.setattr(load_lib, "channel_statistics", measure_again)
  run = runs.load_run(str(tmp_path / "w"))
  np.testing.assert_allclose(run.dataset.statistics[0], saved["mean"], atol=0)
  np.testing.assert_allclose(run.dataset.statistics[1], saved["std"], atol=0)
  assert not len(run.config.data.mean)  # a property of the data set, not written into the config
