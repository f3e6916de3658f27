"""The VOC Part builder on a tiny fixture in the raw formats (VOC JPEGs, Pascal-Part .mat files)."""

import json
import os
import random

import numpy as np
import pytest
from PIL import Image
from scipy import io as scipy_io

from csg_jax import data as data_lib
from csg_jax.data import voc_part
from csg_jax.errors import CSGError

_OBJ = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_PART = [("part_name", "O"), ("mask", "O")]
_CLASS_IND = {"bird": 3, "cat": 8, "cow": 10, "dog": 12, "horse": 13, "person": 15, "sheep": 17}


def _write_annotation(path, image_id, objects):
  """A .mat file laid out as Pascal-Part's: anno.imname, anno.objects(1 x n).parts(1 x m)."""
  objs = np.zeros((1, len(objects)), dtype=_OBJ)
  for i, (cls, mask, parts) in enumerate(objects):
    objs[0, i]["class"] = cls
    objs[0, i]["class_ind"] = np.array([[_CLASS_IND[cls]]], np.uint8)
    objs[0, i]["mask"] = mask.astype(np.uint8)
    p = np.zeros((1, len(parts)), dtype=_PART) if parts else np.zeros((0, 0))
    for j, (name, part_mask) in enumerate(parts):
      p[0, j]["part_name"] = name
      p[0, j]["mask"] = part_mask.astype(np.uint8)
    objs[0, i]["parts"] = p
  anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
  anno[0, 0]["imname"] = image_id
  anno[0, 0]["objects"] = objs
  scipy_io.savemat(path, {"anno": anno})


def _box(shape, top, left, h, w):
  m = np.zeros(shape, bool)
  m[top:top + h, left:left + w] = True
  return m


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
  """20 images, every animal class in both splits; a person and a part-less dog; trainval.txt."""
  root = tmp_path_factory.mktemp("raw")
  voc = root / "VOC2010"
  (voc / "JPEGImages").mkdir(parents=True)
  (voc / "ImageSets" / "Main").mkdir(parents=True)
  annotations = root / "Annotations_Part"
  annotations.mkdir()
  rng = np.random.default_rng(0)
  ids, truth = [f"2008_{i:06d}" for i in range(20)], {}
  # Classes are dealt within each split so that both splits hold every class.
  split = voc_part.split_images(ids, seed=0)
  position = {image_id: sorted(members).index(image_id)
              for members in split.values() for image_id in members}
  for i, image_id in enumerate(ids):
    shape = (30 + i, 40)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    cls = voc_part.ANIMALS[position[image_id] % 6]
    # Object 0: a person (ignored). Object 1: the animal, touching the right border so the
    # square crop leaves the image. Its head and a torso part, plus an unknown part name.
    person = _box(shape, 0, 0, 5, 5)
    mask = _box(shape, 8, 34, 10, 6)
    head = _box(shape, 8, 34, 3, 3)
    torso = _box(shape, 12, 35, 4, 4)
    objects = [("person", person, [("head", person)]),
               (cls, mask, [("head", head), ("torso", torso), ("wheel", mask)])]
    if i == 0:
      objects.append(("dog", _box(shape, 20, 2, 6, 4), []))  # an animal without parts
    _write_annotation(annotations / f"{image_id}.mat", image_id, objects)
    truth[image_id] = (image, objects)
  (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
  return voc, annotations, truth


def test_load_annotation_reads_the_pascal_part_layout(fixture):
  _, annotations, truth = fixture
  image_id, objects = voc_part.load_annotation(str(annotations / "2008_000000.mat"))
  assert image_id == "2008_000000"
  assert [o["class"] for o in objects] == ["person", "bird", "dog"]
  np.testing.assert_array_equal(objects[1]["mask"], truth[image_id][1][1][1])
  assert sorted(objects[1]["parts"]) == ["head", "torso", "wheel"]
  assert objects[2]["parts"] == {}


def test_crop_window_is_the_released_square():
  mask = _box((30, 40), 8, 34, 10, 6)  # rows 8..17, cols 34..39
  top, bottom, left, right = voc_part.crop_window(mask)
  # centre (12.5, 36.5), half side max(9, 5) / 2 = 4.5, rounded in coordinates padded by 30/40
  # (Python rounds halves to even: round(38.0) = 38, round(47.0) = 47, round(81.0) = 81).
  assert (top, bottom) == (8, 17)
  assert (left, right) == (32, 41)
  patch = voc_part.crop(np.ones((30, 40), np.uint8), (top, bottom, left, right))
  assert patch.shape == (9, 9)
  assert patch[:, -1].sum() == 0 and patch[:, :-1].all()  # beyond the right border: zeros


def test_split_is_the_released_random_sample():
  ids = [f"id{i}" for i in range(50)]
  random.seed(0)
  released = set(random.sample(ids, int(len(ids) * 0.7)))
  split = voc_part.split_images(ids, seed=0)
  assert split["train"] == released and split["test"] == set(ids) - released


def test_build_on_the_fixture(fixture, tmp_path):
  voc, annotations, truth = fixture
  out = tmp_path / "voc_part"
  meta = voc_part.build_voc_part(str(voc), str(annotations), str(out), size=16, seed=0)
  split = voc_part.split_images(sorted(truth), seed=0)
  expected = {s: sorted((truth[i][1][k][0], f"{i}_{k:02d}.png") for i in members
                        for k in range(1, len(truth[i][1])))
              for s, members in split.items()}
  for s in ("train", "test"):
    files = sorted((c, f) for c in voc_part.ANIMALS for f in os.listdir(out / s / c))
    assert files == expected[s]
    assert sum(meta["counts"][s].values()) == len(expected[s])
  assert json.loads((out / "meta.json").read_text())["counts"] == meta["counts"]

  # The folder source reads it, and mask row i belongs to its example i.
  cfg = data_lib.default_config("folder")
  cfg.path = str(out)
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.decode_workers = 1
  dataset = data_lib.load_dataset(cfg)
  assert dataset.class_names == voc_part.ANIMALS
  masks = np.load(out / "masks" / "test.npy")
  names, parts = voc_part.load_part_masks(str(out), "test")
  assert names == voc_part.PART_NAMES
  assert masks.shape == (len(dataset.splits["test"]), 16, 16) and masks.dtype == np.uint8
  assert parts.shape == (len(masks), 5, 16, 16)
  _, labels = dataset.splits["test"].read(np.arange(len(masks)))
  for row, (cls, file_name) in enumerate(expected["test"]):
    assert voc_part.ANIMALS[labels[row]] == cls
    image_id, k = file_name[:-4].rsplit("_", 1)
    obj = truth[image_id][1][int(k)]
    window = voc_part.crop_window(obj[1])
    want = np.asarray(Image.fromarray(voc_part.crop(obj[1].astype(np.uint8), window)).resize(
        (16, 16), Image.NEAREST))
    np.testing.assert_array_equal(masks[row], want)
    head = parts[row, voc_part.PART_NAMES.index("HEAD")]
    torso = parts[row, voc_part.PART_NAMES.index("TORSO")]
    has_parts = bool(obj[2])
    assert head.any() == has_parts and torso.any() == has_parts
    assert not parts[row, voc_part.PART_NAMES.index("TAIL")].any()  # 'wheel' is dropped
    assert (masks[row] >= head).all()  # the head lies inside the object


def test_clear_errors(fixture, tmp_path):
  voc, annotations, _ = fixture
  with pytest.raises(CSGError, match="Annotations_Part"):
    voc_part.build_voc_part(str(voc), str(tmp_path / "nope"), str(tmp_path / "o"))
  with pytest.raises(CSGError, match="JPEGImages"):
    voc_part.build_voc_part(str(tmp_path), str(annotations), str(tmp_path / "o"))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  with pytest.raises(CSGError, match="not empty"):
    voc_part.build_voc_part(str(voc), str(annotations), str(tmp_path / "full"))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "2008_000000.mat").write_bytes(b"not a mat file")
  with pytest.raises(CSGError, match="cannot read Pascal-Part annotation"):
    voc_part.build_voc_part(str(voc), str(bad), str(tmp_path / "o2"))
