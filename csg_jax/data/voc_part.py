"""The VOC Part animal crops of the paper, from the VOC 2010 JPEGs and the Pascal-Part annotations.

Follows the authors' released preprocessing (VOCPart/VOC/preprocess.py):

- Images: VOC 2010 `JPEGImages/<id>.jpg`. Annotations: Pascal-Part `Annotations_Part/<id>.mat`
  (`anno` struct: `imname`, and `objects` (1 x n) with `class`, `class_ind`, `mask` (H x W)
  and `parts` (1 x m) with `part_name` and `mask`).
- The 6 animal classes bird, cat, cow, dog, horse, sheep; one example per object instance.
- Crop: a square around the mask's bounding box (centre (max+min)/2, half side max(Δx, Δy)/2,
  rounded as released on the image zero-padded by its own size), zero where it leaves the
  image; the image resized with Lanczos, the masks with nearest neighbour, to size x size.
- Parts merged into the released groups (HEAD, TORSO, FLIMB, BLIMB, TAIL); unlisted parts dropped.
- Split 70/30 by image: `random.Random(seed).sample(image ids, int(0.7 n))` over the ids of
  `ImageSets/Main/trainval.txt` when the VOC folder has it (the released split for seed 0), else
  over the sorted annotation file names.

Output (what the `folder` data source reads, plus masks):

  out/train/<class>/<id>_<object>.png, out/test/<class>/<id>_<object>.png
  out/masks/{train,test}.npy         uint8 [N, size, size] object masks, in folder-source order
  out/masks/{train,test}_parts.npz   part_names [P], packed: np.packbits of uint8
                                     [N, P, size, size] along the last axis (`load_part_masks`)
  out/meta.json                      settings and counts
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import io as scipy_io

from csg_jax import fileio
from csg_jax.errors import CSGError
from csg_jax.log import log

ANIMALS = ("bird", "cat", "cow", "dog", "horse", "sheep")
# The released merge of Pascal-Part's fine parts into groups (preprocess.py, Part_dict).
PART_GROUPS = {
    "bird": {"HEAD": ("head", "reye", "leye", "beak"),
             "TORSO": ("torso", "neck", "lwing", "rwing"),
             "BLIMB": ("lleg", "rleg", "lfoot", "rfoot"), "TAIL": ("tail",)},
    "cat": {"HEAD": ("head", "leye", "reye", "lear", "rear", "nose"), "TORSO": ("torso", "neck"),
            "FLIMB": ("lfleg", "rfleg", "lfpa", "rfpa"),
            "BLIMB": ("lbleg", "rbleg", "lbpa", "rbpa"), "TAIL": ("tail",)},
    "dog": {"HEAD": ("head", "leye", "reye", "lear", "rear", "nose", "muzzle"),
            "TORSO": ("torso", "neck"), "FLIMB": ("lfleg", "rfleg", "lfpa", "rfpa"),
            "BLIMB": ("rbleg", "lbleg", "rbpa", "lbpa"), "TAIL": ("tail",)},
    "cow": {"HEAD": ("head", "lear", "rear", "leye", "reye", "muzzle", "lhorn", "rhorn"),
            "TORSO": ("torso", "neck"), "FLIMB": ("lflleg", "lfuleg", "rflleg", "rfuleg"),
            "BLIMB": ("lblleg", "lbuleg", "rblleg", "rbuleg")},
    "horse": {"HEAD": ("head", "lear", "rear", "leye", "reye", "muzzle"),
              "TORSO": ("torso", "neck"),
              "FLIMB": ("lflleg", "lfuleg", "rflleg", "rfuleg", "lfho", "rfho"),
              "BLIMB": ("lblleg", "lbuleg", "rblleg", "rbuleg", "lbho", "rbho")},
    "sheep": {"HEAD": ("head", "lear", "rear", "leye", "reye", "muzzle", "rhorn", "lhorn"),
              "TORSO": ("torso", "neck"), "FLIMB": ("lflleg", "lfuleg", "rflleg", "rfuleg"),
              "BLIMB": ("lblleg", "lbuleg", "rblleg", "rbuleg")},
}
PART_NAMES = ("BLIMB", "FLIMB", "HEAD", "TAIL", "TORSO")  # sorted; the part axis of the masks
TRAIN_FRACTION = 0.7
_PROGRESS_SECONDS = 5.0


def _text(value) -> str:
  """A MATLAB string as loadmat returns it (array(['bird'])) -> 'bird'."""
  value = np.asarray(value)
  return str(value.ravel()[0]) if value.size else ""


def _struct_list(value) -> list:
  """The elements of a MATLAB struct array (1 x n, or empty)."""
  value = np.asarray(value)
  return [] if value.size == 0 or value.dtype.names is None else list(value.ravel())


def load_annotation(path: str) -> tuple[str, list[dict]]:
  """(image id, objects) of a Pascal-Part .mat file; object: {class, mask, parts: {name: mask}}."""
  try:
    anno = scipy_io.loadmat(path)["anno"][0, 0]
  except (scipy_io.matlab.MatReadError, KeyError, IndexError, ValueError, OSError,
          TypeError) as e:
    raise CSGError(f"cannot read Pascal-Part annotation {path} ({type(e).__name__}: {e}): is it "
                   "a file of Annotations_Part/ from the Pascal-Part trainval.tar.gz?") from None
  objects = []
  for obj in _struct_list(anno["objects"]):
    parts = {}
    if "parts" in obj.dtype.names:
      for part in _struct_list(obj["parts"]):
        name = _text(part["part_name"])
        mask = np.asarray(part["mask"]) > 0
        parts[name] = parts[name] | mask if name in parts else mask
    objects.append({"class": _text(obj["class"]), "mask": np.asarray(obj["mask"]) > 0,
                    "parts": parts})
  stem = os.path.splitext(os.path.basename(path))[0]
  return _text(anno["imname"]) or stem, objects


def crop_window(mask: np.ndarray) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the released square crop around a mask, in image pixels.

  The window may leave the image (then it is zero-padded). Rounding is done, as released, in
  the coordinates of the image padded by its own height and width on every side (Python's
  round: halves go to the even neighbour, so the padding offset matters).
  """
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  y_min, y_max, x_min, x_max = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
  y0, x0 = (y_max + y_min) / 2, (x_max + x_min) / 2
  half = max(x_max - x_min, y_max - y_min) / 2
  h, w = mask.shape
  top, bottom = round(h + y0 - half) - h, round(h + y0 + half) - h
  left, right = round(w + x0 - half) - w, round(w + x0 + half) - w
  # A one-pixel object gives an empty window as released; keep at least one pixel.
  return top, max(bottom, top + 1), left, max(right, left + 1)


def crop(array: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
  """array[top:bottom, left:right] with zeros outside the array."""
  top, bottom, left, right = window
  h, w = array.shape[:2]
  out = np.zeros((bottom - top, right - left) + array.shape[2:], array.dtype)
  sy, sx = max(top, 0), max(left, 0)
  ey, ex = min(bottom, h), min(right, w)
  if sy < ey and sx < ex:
    out[sy - top:ey - top, sx - left:ex - left] = array[sy:ey, sx:ex]
  return out


def _resize(array: np.ndarray, size: int, resample) -> np.ndarray:
  return np.asarray(Image.fromarray(array).resize((size, size), resample))


def split_images(image_ids: Sequence[str], seed: int = 0) -> dict[str, set]:
  """The released 70/30 split by image: random.Random(seed).sample over the given order."""
  ids = list(image_ids)
  train = set(random.Random(seed).sample(ids, int(len(ids) * TRAIN_FRACTION)))
  return {"train": train, "test": set(ids) - train}


def _image_ids(voc_root: str, annotation_files: Sequence[str]) -> list[str]:
  listing = os.path.join(voc_root, "ImageSets", "Main", "trainval.txt")
  if os.path.exists(listing):
    with open(listing) as f:
      return [line.strip() for line in f if line.strip()]
  return sorted(os.path.splitext(f)[0] for f in annotation_files)


def _jpeg_dir(voc_root: str) -> str:
  for candidate in (os.path.join(voc_root, "JPEGImages"),
                    os.path.join(voc_root, "VOC2010", "JPEGImages"),
                    os.path.join(voc_root, "VOCdevkit", "VOC2010", "JPEGImages"), voc_root):
    if os.path.isdir(candidate) and any(n.lower().endswith(".jpg") for n in os.listdir(candidate)):
      return candidate
  raise CSGError(f"no JPEGImages/*.jpg under {voc_root!r}: pass the VOC2010 folder (the one "
                 "holding JPEGImages/, from VOCtrainval_03-May-2010.tar) as voc_root")


def build_voc_part(voc_root: str, annotations_dir: str, out_root: str, *, size: int = 128,
                   seed: int = 0, overwrite: bool = False) -> dict:
  """Builds the crops, masks and part masks under `out_root`; returns the meta.json dict."""
  if not os.path.isdir(annotations_dir):
    raise CSGError(f"annotations_dir {annotations_dir!r} is not a folder: pass Pascal-Part's "
                   "Annotations_Part/ (from trainval.tar.gz)")
  mat_files = sorted(f for f in os.listdir(annotations_dir) if f.endswith(".mat"))
  if not mat_files:
    raise CSGError(f"no .mat files in {annotations_dir!r}: pass Pascal-Part's Annotations_Part/")
  if not isinstance(size, int) or size < 8:
    raise CSGError(f"size is {size!r}: use an integer >= 8 (the paper uses 128)")
  jpeg_dir = _jpeg_dir(voc_root)
  if os.path.exists(out_root) and os.listdir(out_root) and not overwrite:
    raise CSGError(f"{out_root!r} exists and is not empty: choose a new folder or pass "
                   "overwrite=True (--overwrite)")

  ids = _image_ids(voc_root, mat_files)
  splits = split_images(ids, seed)
  split_of = {i: s for s, members in splits.items() for i in members}
  start = last = time.perf_counter()
  records = {"train": [], "test": []}  # (class, file name, object mask, part masks [P, S, S])
  skipped_split = 0
  # Written into a sibling temporary folder and renamed: an interrupted run leaves no half data.
  with fileio.replace_directory_atomically(out_root) as tmp:
    for split in records:
      for name in ANIMALS:
        os.makedirs(os.path.join(tmp, split, name))
    for n, mat in enumerate(mat_files):
      image_id, objects = load_annotation(os.path.join(annotations_dir, mat))
      animals = [(k, o) for k, o in enumerate(objects) if o["class"] in ANIMALS and o["mask"].any()]
      if not animals:
        continue
      split = split_of.get(image_id)
      if split is None:  # annotated but not in trainval.txt: not part of the released data
        skipped_split += 1
        continue
      jpeg = os.path.join(jpeg_dir, f"{image_id}.jpg")
      if not os.path.exists(jpeg):
        raise CSGError(f"missing image {jpeg} for annotation {mat}: pass the VOC 2010 folder "
                       "whose JPEGImages/ holds every annotated image")
      with Image.open(jpeg) as im:
        image = np.asarray(im.convert("RGB"))
      for k, obj in animals:
        if obj["mask"].shape != image.shape[:2]:
          raise CSGError(f"{mat}: object mask {obj['mask'].shape} and image {image.shape[:2]} "
                         "differ in size: are the annotations for VOC 2010?")
        window = crop_window(obj["mask"])
        file_name = f"{image_id}_{k:02d}.png"
        crop_image = _resize(crop(image, window), size, Image.LANCZOS)
        Image.fromarray(crop_image).save(os.path.join(tmp, split, obj["class"], file_name))
        obj_mask = _resize(crop(obj["mask"].astype(np.uint8), window), size, Image.NEAREST)
        parts = np.zeros((len(PART_NAMES), size, size), np.uint8)
        groups = {p: g for g, members in PART_GROUPS[obj["class"]].items() for p in members}
        for part_name, part_mask in obj["parts"].items():
          if part_name in groups:
            p = PART_NAMES.index(groups[part_name])
            parts[p] |= _resize(crop(part_mask.astype(np.uint8), window), size, Image.NEAREST)
        records[split].append((obj["class"], file_name, obj_mask, parts))
      if time.perf_counter() - last > _PROGRESS_SECONDS:
        last = time.perf_counter()
        log(f"[voc_part] {n + 1}/{len(mat_files)} annotation files, "
            f"{sum(map(len, records.values()))} objects")

    os.makedirs(os.path.join(tmp, "masks"))
    counts = {}
    for split, rows in records.items():
      # The folder source's order: class names sorted, then file name.
      rows.sort(key=lambda r: (r[0], r[1]))
      masks = np.stack([r[2] for r in rows]) if rows else np.zeros((0, size, size), np.uint8)
      parts = np.stack([r[3] for r in rows]) if rows else np.zeros(
          (0, len(PART_NAMES), size, size), np.uint8)
      np.save(os.path.join(tmp, "masks", f"{split}.npy"), masks)
      np.savez_compressed(os.path.join(tmp, "masks", f"{split}_parts.npz"),
                          part_names=np.array(PART_NAMES), packed=np.packbits(parts, axis=-1),
                          size=np.int64(size))
      counts[split] = {c: sum(r[0] == c for r in rows) for c in ANIMALS}
    empty = [f"{s}/{c}" for s, per in counts.items() for c, v in per.items() if not v]
    if empty:
      raise CSGError(f"no object of {', '.join(empty)} was found: the folder source needs every "
                     "class in both splits; pass the full Pascal-Part annotations")
    meta = {"source": "voc_part", "size": size, "seed": seed, "classes": list(ANIMALS),
            "part_names": list(PART_NAMES), "counts": counts,
            "num_images": {s: len(v) for s, v in splits.items()},
            "annotated_images_outside_split": skipped_split,
            "voc_root": os.path.abspath(voc_root),
            "annotations_dir": os.path.abspath(annotations_dir)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2)
  total = {s: sum(v.values()) for s, v in counts.items()}
  log(f"[voc_part] {total['train']} train / {total['test']} test crops of {size}x{size} in "
      f"{out_root} ({time.perf_counter() - start:.0f} s)")
  return meta


def load_part_masks(root: str, split: str = "test") -> tuple[tuple[str, ...], np.ndarray]:
  """(part names, uint8 [N, P, size, size] part masks) written by build_voc_part."""
  path = os.path.join(root, "masks", f"{split}_parts.npz")
  if not os.path.exists(path):
    raise CSGError(f"no part masks at {path}: build the data set with launch/build_voc_part.py")
  with np.load(path) as z:
    size = int(z["size"])
    parts = np.unpackbits(z["packed"], axis=-1, count=size)
    return tuple(str(n) for n in z["part_names"]), parts
