"""The authors' preprocessed VOC Part (their preprocessed_VOC_Part.zip), read as released.

The data the paper's VOC Part numbers were measured on. Layout, from VOCPart/VOC/VOCPart.py and
preprocess.py of github.com/hyliang96/CSGCNN:

  <data.path>/processed/metadata/train.txt, val.txt   one VOC image id (2008_000123) per line
  <data.path>/processed/<S>x<S>/obj_img/<class>-<n>-<image id>.jpg        object n, cropped
  <data.path>/processed/<S>x<S>/obj_mask/<class>-<n>-<image id>.mask.bmp  its mask (1 bit)

data.path is the folder holding processed/ (the unzipped preprocessed_VOC_Part/, their
__data__); S is data.image_size, 128 when unset (the released size). An object is in the split
whose file lists its image id: train.txt gives the train split, val.txt the test split (the
authors evaluate on val). Labels follow their class list, not the folder source's alphabetical
order, so the heads of their CSG.pt and STD.pt line up. Images and object masks are decoded
once into the data cache: `<role>_images.npy`, `<role>_labels.npy`, `<role>_masks.npy`.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from csg_jax.data import cache
from csg_jax.data.dataset import ArraySplit, CacheInfo, Dataset
from csg_jax.data.folder import decode_image
from csg_jax.errors import CSGError
from csg_jax.log import log

CLASSES = ("bird", "cat", "dog", "cow", "horse", "sheep")  # VOCPart.py: self.classes
SPLIT_FILES = {"train": "train.txt", "test": "val.txt"}  # role -> file in processed/metadata
RELEASED_SIZE = 128
CACHE_VERSION = 1  # Bump when the decoded arrays or the file layout change.


def masks_path(cache_dir: str, role: str) -> str:
  """Where the decoded object masks (uint8 [n, S, S], 1 on the object) of a role are cached."""
  return os.path.join(cache_dir, f"{role}_masks.npy")


def object_masks_path(cfg, dataset, role: str) -> str:
  """The object masks this source decoded into its cache."""
  del cfg
  return masks_path(dataset.cache.path, role)


def load(cfg) -> Dataset:
  """Loads (decoding on first use) the cached arrays of the released layout at data.path."""
  start = time.perf_counter()
  root = os.path.abspath(os.path.expanduser(cfg.path))
  size = cfg.image_size or RELEASED_SIZE
  members = _members(root, size)
  files = [os.path.join(root, "processed", "metadata", f) for f in SPLIT_FILES.values()]
  files += [path for role in members.values() for _, image, mask in role for path in (image, mask)]
  stats = ((os.path.relpath(p, root), os.stat(p)) for p in files)
  content = cache.files_fingerprint((rel, st.st_size, st.st_mtime_ns) for rel, st in stats)
  key = cache.cache_key(version=CACHE_VERSION, content=content, size=size)
  directory = os.path.join(os.path.expanduser(cfg.cache_dir), f"voc_part_released-{key}")

  built = cache.read_meta(directory) is None
  if built:
    log(f"[csg_jax.data] building cache {directory} from {cfg.path}")
    cache.build_atomically(directory, lambda tmp: _build(tmp, members, size))
  seconds = time.perf_counter() - start
  log(f"[csg_jax.data] {'built' if built else 'reused'} cache {directory}: "
      f"{sum(map(len, members.values()))} objects in {seconds:.1f} s")
  splits = {
      role: ArraySplit(np.load(os.path.join(directory, f"{role}_images.npy"), mmap_mode="r"),
                       np.load(os.path.join(directory, f"{role}_labels.npy")))
      for role in SPLIT_FILES
  }
  return Dataset(name="voc_part_released", class_names=CLASSES, image_shape=(size, size, 3),
                 splits=splits, cache=CacheInfo(path=directory, built=built, seconds=seconds))


def _members(root: str, size: int) -> dict[str, list[tuple[int, str, str]]]:
  """Per role, (label, image path, mask path) of its objects, sorted by label then file name."""
  processed = os.path.join(root, "processed")
  if not os.path.isdir(processed):
    raise CSGError(f"data.path {root!r} has no processed/ folder: set it to the folder holding "
                   "processed/ (the unzipped preprocessed_VOC_Part/ of the authors' release).")
  image_dir = os.path.join(processed, f"{size}x{size}", "obj_img")
  if not os.path.isdir(image_dir):
    found = sorted(d for d in os.listdir(processed) if d != "metadata")
    raise CSGError(f"{image_dir} does not exist (found {found} in {processed}): set "
                   "data.image_size to a size the release has, or unset it for 128.")
  ids = {}
  for role, name in SPLIT_FILES.items():
    path = os.path.join(processed, "metadata", name)
    if not os.path.isfile(path):
      raise CSGError(f"split file {path} is missing: the release lists its train and val images "
                     "in processed/metadata/train.txt and val.txt.")
    with open(path) as f:
      ids[role] = {line.strip() for line in f if line.strip()}

  members = {role: [] for role in SPLIT_FILES}
  for file_name in sorted(os.listdir(image_dir)):
    if file_name.startswith(".") or not file_name.endswith(".jpg"):
      continue
    parts = file_name[:-len(".jpg")].split("-")
    if len(parts) != 3:
      raise CSGError(f"{os.path.join(image_dir, file_name)} is not named "
                     "<class>-<object>-<image id>.jpg as in the release.")
    class_name, _, image_id = parts
    if class_name not in CLASSES:
      raise CSGError(f"{os.path.join(image_dir, file_name)} is of class {class_name!r}, not one of "
                     f"the released classes {', '.join(CLASSES)}.")
    mask = os.path.join(processed, f"{size}x{size}", "obj_mask",
                        file_name[:-len(".jpg")] + ".mask.bmp")
    for role, role_ids in ids.items():
      if image_id in role_ids:
        members[role].append((CLASSES.index(class_name), os.path.join(image_dir, file_name), mask))
  for role, rows in members.items():
    if not rows:
      raise CSGError(f"no image of {image_dir} is listed in processed/metadata/"
                     f"{SPLIT_FILES[role]}: do the split files belong to these images?")
    if missing := [m for _, _, m in rows if not os.path.isfile(m)]:
      raise CSGError(f"object mask {missing[0]} is missing ({len(missing)} in all): unzip the "
                     "release's obj_mask/ folder too.")
    rows.sort()
  return members


def _build(tmp: str, members: dict, size: int) -> dict:
  """Decodes each role's images, labels and object masks into arrays under `tmp`."""
  sizes = {}
  for role, rows in members.items():
    # Written in place, so memory stays flat however large the split.
    images = np.lib.format.open_memmap(os.path.join(tmp, f"{role}_images.npy"), mode="w+",
                                       dtype=np.uint8, shape=(len(rows), size, size, 3))
    masks = np.lib.format.open_memmap(masks_path(tmp, role), mode="w+", dtype=np.uint8,
                                      shape=(len(rows), size, size))
    for i, (_, image_path, mask_path) in enumerate(rows):
      images[i] = _decode(image_path, lambda p: decode_image(p, None), (size, size, 3))
      masks[i] = _decode(mask_path, _decode_mask, (size, size))
    images.flush()
    masks.flush()
    del images, masks
    np.save(os.path.join(tmp, f"{role}_labels.npy"), np.array([r[0] for r in rows], np.int32))
    sizes[role] = len(rows)
  return dict(class_names=list(CLASSES), size=size, sizes=sizes)


def _decode_mask(path: str) -> np.ndarray:
  """A released mask (1-bit BMP) as uint8 0/1, read as VOCPart.py does (mode 'L', nonzero: 1)."""
  with Image.open(path) as image:
    return (np.asarray(image.convert("L")) > 0).astype(np.uint8)


def _decode(path: str, decode, shape: tuple[int, ...]) -> np.ndarray:
  try:
    array = decode(path)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types)
    raise CSGError(f"cannot read {path}: {type(e).__name__}: {e}") from None
  if array.shape != shape:
    raise CSGError(f"{path} is {array.shape[1]}x{array.shape[0]}, not {shape[1]}x{shape[0]} "
                   "like the other files of its folder.")
  return array
