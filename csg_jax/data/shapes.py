r"""A synthetic shapes data set with exact object masks, for measuring localization offline.

Six shape classes (circle, cross, ring, square, star, triangle) at a random position, scale,
rotation (±15°) and light colour, on cluttered textured backgrounds: a darker smooth colour
field, oriented stripes, pixel noise, and distractors of any colour (thin line segments and
small dots) that are no shape of any class.
Everything is drawn with vectorised numpy (2x2 supersampled coverage), deterministically from the
seed, so a data set can be regenerated bit for bit anywhere:

  python launch/build_shapes.py --root data/shapes32 --num_train 4000 --num_test 1000

Layout (what the `folder` data source reads, plus the masks):

  root/train/<class>/NNNNN.png, root/test/<class>/NNNNN.png
  root/masks/train.npy, root/masks/test.npy   uint8 [N, H, W], 1 on the object
  root/meta.json                              generation settings and per-channel mean/std

Mask row i belongs to example i of the split as the folder source orders it (class names
sorted, then relative path; the zero-padded file names sort numerically).
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from csg_jax import fileio
from csg_jax.errors import CSGError

CLASS_NAMES = ("circle", "cross", "ring", "square", "star", "triangle")
SPLITS = ("train", "test")
FORMAT_VERSION = 3  # Bump when the drawing changes: older folders then count as other settings.
_CHUNK = 500  # Images drawn per generator: fixed, so the output never depends on memory limits.
_SUPERSAMPLE = 2  # Coverage is averaged over 2x2 sub-pixels: smooth edges, exact 0/1 masks.
_NUM_LINES = (1, 4)  # Distractor line segments per image (inclusive range).
_NUM_DOTS = (2, 6)  # Distractor dots per image (inclusive range).


def render(num: int, *, image_size: int = 32, seed: int = 0,
           split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Draws `num` examples of `split`: (uint8 images [n,S,S,3], int32 labels [n], uint8 masks).

  Examples come in generation order (labels cycle through the classes); each chunk of
  `_CHUNK` images has its own generator seeded by (seed, split, chunk), so the result does not
  depend on how the caller batches.
  """
  if split not in SPLITS:
    raise CSGError(f"split {split!r} is not one of {SPLITS}; pass split='train' or 'test'")
  images = np.empty((num, image_size, image_size, 3), np.uint8)
  labels = (np.arange(num) % len(CLASS_NAMES)).astype(np.int32)
  masks = np.empty((num, image_size, image_size), np.uint8)
  for chunk, lo in enumerate(range(0, num, _CHUNK)):
    hi = min(num, lo + _CHUNK)
    rng = np.random.default_rng([seed % 2**63, SPLITS.index(split), chunk])
    images[lo:hi], masks[lo:hi] = _draw(rng, labels[lo:hi], image_size)
  return images, labels, masks


def write_shapes_dataset(root: str, *, num_train: int, num_test: int, image_size: int = 32,
                         seed: int = 0, overwrite: bool = False) -> dict:
  """Writes the data set under `root` (see the module docstring); returns its meta.json.

  A folder that already holds the same settings is left as it is (so the folder source's cache,
  keyed on file times, stays valid); other content is replaced only with `overwrite`.
  """
  for name, value, low in (("num_train", num_train, len(CLASS_NAMES)),
                           ("num_test", num_test, len(CLASS_NAMES)),
                           ("image_size", image_size, 16)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise CSGError(f"{name} is {value!r}: use an integer >= {low}")
  settings = dict(version=FORMAT_VERSION, num_train=int(num_train), num_test=int(num_test),
                  image_size=int(image_size), seed=int(seed), class_names=list(CLASS_NAMES))
  meta_path = os.path.join(root, "meta.json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if {k: meta.get(k) for k in settings} == settings:
      return meta
    if not overwrite:
      raise CSGError(f"{root!r} holds a shapes data set with other settings; pass overwrite=True "
                     "(--overwrite) or choose another root")
  elif os.path.exists(root) and os.listdir(root) and not overwrite:
    raise CSGError(f"{root!r} exists and is not empty; choose an empty or new folder, or pass "
                   "overwrite=True (--overwrite)")

  # Written into a sibling temporary folder and renamed: an interrupted run leaves no half data.
  with fileio.replace_directory_atomically(root) as tmp:
    stats = {}
    for split, num in (("train", num_train), ("test", num_test)):
      images, labels, masks = render(num, image_size=image_size, seed=seed, split=split)
      order = folder_order(labels)
      os.makedirs(os.path.join(tmp, "masks"), exist_ok=True)
      np.save(os.path.join(tmp, "masks", f"{split}.npy"), masks[order])
      for name in CLASS_NAMES:
        os.makedirs(os.path.join(tmp, split, name))
      for i in range(num):
        Image.fromarray(images[i]).save(
            os.path.join(tmp, split, CLASS_NAMES[labels[i]], f"{i:05d}.png"), compress_level=1)
      if split == "train":
        pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
        stats = {"mean": pixels.mean(0).round(4).tolist(), "std": pixels.std(0).round(4).tolist()}
    meta = {**settings, **stats}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2)
  return meta


def folder_order(labels: np.ndarray) -> np.ndarray:
  """Generation indices in the order the folder source lists files: by class, then file name."""
  return np.argsort(labels, kind="stable")


def load_masks(root: str, split: str = "test") -> np.ndarray:
  """The object masks of `split` (uint8 [N, H, W], memory-mapped), in folder-source order."""
  path = os.path.join(root, "masks", f"{split}.npy")
  if not os.path.exists(path):
    raise CSGError(f"no object masks at {path}: generate the data set with "
                   "`python launch/build_shapes.py --root ...` (or build VOC Part with masks)")
  return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# Drawing. Every function handles a whole chunk at once: arrays are [n, P] over P sub-pixels.
# ---------------------------------------------------------------------------------------------


def _grid(size: int, supersample: int = _SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
  """Sub-pixel centre coordinates (y, x), each float32 [P], in pixel units."""
  fine = ((np.arange(size * supersample) + 0.5) / supersample).astype(np.float32)
  y, x = np.meshgrid(fine, fine, indexing="ij")
  return y.ravel(), x.ravel()


def _coverage(inside: np.ndarray, size: int, supersample: int = _SUPERSAMPLE) -> np.ndarray:
  """[n, P] booleans on the sub-pixel grid -> [n, S, S] float32 coverage in [0, 1]."""
  s = supersample
  return inside.reshape(-1, size, s, size, s).mean(axis=(2, 4), dtype=np.float32)


_SHAPE_TESTS = {
    # Each takes shape-frame coordinates (u, v), radius rho and angle phi (radius 1 = the
    # circumscribed circle) and says which points lie in the shape.
    "circle": lambda u, v, rho, phi: rho <= 0.9,
    "cross": lambda u, v, rho, phi: (((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0))
                                     | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))),
    "ring": lambda u, v, rho, phi: (rho <= 1.0) & (rho >= 0.55),
    "square": lambda u, v, rho, phi: np.maximum(np.abs(u), np.abs(v)) <= 0.72,
    "star": lambda u, v, rho, phi: _in_star(phi, rho, 5, 0.42),
    "triangle": lambda u, v, rho, phi: _in_regular_polygon(phi, rho, 3, 0.5),
}


def _inside_shape(labels: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """[n, P] booleans: whether each sub-pixel lies in its image's shape (class `labels`)."""
  inside = np.zeros(u.shape, bool)
  for c, name in enumerate(CLASS_NAMES):  # one vectorised test per class, on its rows only
    rows = labels == c
    if rows.any():
      ur, vr = u[rows], v[rows]
      inside[rows] = _SHAPE_TESTS[name](ur, vr, np.hypot(ur, vr), np.arctan2(vr, ur))
  return inside


def _in_regular_polygon(phi, rho, sides: int, inradius: float) -> np.ndarray:
  """Inside a regular polygon with circumradius 1 (a vertex on the +u axis)."""
  sector = 2 * np.pi / sides
  # Angle to the nearest edge normal; edge normals lie half-way between vertices.
  off = np.mod(phi - sector / 2, sector) - sector / 2
  return rho * np.cos(off) <= inradius


def _in_star(phi, rho, points: int, inner: float) -> np.ndarray:
  """Inside a star polygon: outer vertices at radius 1, inner ones at `inner`."""
  half = np.pi / points
  folded = np.abs(np.mod(phi + half, 2 * half) - half)  # angle from the nearest outer vertex
  # The edge from the outer vertex (1, 0) to the inner vertex (inner, half): a point is inside
  # when it lies on the centre's side of that line (the cross product is >= 0 there).
  ox, oy = 1.0, 0.0
  ix, iy = inner * np.cos(half), inner * np.sin(half)
  px, py = rho * np.cos(folded), rho * np.sin(folded)
  cross = (ix - ox) * (py - oy) - (iy - oy) * (px - ox)
  return cross >= 0


def _draw(rng: np.random.Generator, labels: np.ndarray,
          size: int) -> tuple[np.ndarray, np.ndarray]:
  n = len(labels)
  gy, gx = _grid(size)
  canvas = _background(rng, n, size)
  canvas = _distractors(rng, canvas, size)

  # The object: centre kept so that at least most of the shape is inside the image.
  radius = rng.uniform(0.25, 0.42, n) * size
  cy = rng.uniform(radius * 0.8, size - radius * 0.8)
  cx = rng.uniform(radius * 0.8, size - radius * 0.8)
  # Mild rotation only: full rotation invariance makes the task too slow to learn for a
  # few-minute CPU run.
  angle = rng.uniform(-np.pi / 12, np.pi / 12, n)
  dy = (gy[None] - cy[:, None]) / radius[:, None]
  dx = (gx[None] - cx[:, None]) / radius[:, None]
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
  u, v = cos * dx + sin * dy, -sin * dx + cos * dy
  alpha = _coverage(_inside_shape(labels, u, v), size)
  colour = _object_colour(rng, n)
  canvas = canvas * (1 - alpha[..., None]) + colour[:, None, None, :] * alpha[..., None]

  canvas += rng.normal(0, 0.03, canvas.shape).astype(np.float32)  # sensor-like pixel noise
  images = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
  return images, (alpha >= 0.5).astype(np.uint8)


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """A smooth random colour field plus oriented stripes: [n, S, S, 3] float32 in ~[0, 1]."""
  base = rng.uniform(0.1, 0.5, (n, 1, 1, 3))
  coarse = (base + rng.uniform(-0.15, 0.15, (n, 4, 4, 3))).astype(np.float32)
  # Bilinear upsampling of the 4x4 field by separable interpolation matrices.
  pos = np.clip((np.arange(size) + 0.5) * 4 / size - 0.5, 0, 3)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, 3)
  frac = (pos - lo).astype(np.float32)
  interp = np.zeros((size, 4), np.float32)
  np.add.at(interp, (np.arange(size), lo), 1 - frac)
  np.add.at(interp, (np.arange(size), hi), frac)
  field = np.einsum("yi,nijc,xj->nyxc", interp, coarse, interp, optimize=True)

  y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  theta = rng.uniform(0, np.pi, n)[:, None, None]
  period = rng.uniform(3.0, 9.0, n)[:, None, None]
  phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
  amplitude = rng.uniform(0.02, 0.10, n)[:, None, None, None]
  stripes = np.sin(2 * np.pi * (np.cos(theta) * x + np.sin(theta) * y) / period + phase)
  tint = rng.uniform(-1, 1, (n, 1, 1, 3))
  return (field + amplitude * stripes[..., None] * tint).astype(np.float32)


def _distractors(rng: np.random.Generator, canvas: np.ndarray, size: int) -> np.ndarray:
  """Paints thin line segments and small dots of random colours: clutter of no class.

  Drawn at pixel resolution (no supersampling): clutter needs no smooth edges, and this is
  the costliest part of the drawing.
  """
  n = canvas.shape[0]
  gy, gx = _grid(size, 1)
  for kind, (low, high) in (("line", _NUM_LINES), ("dot", _NUM_DOTS)):
    count = rng.integers(low, high + 1, n)
    for j in range(high):  # a handful of slots; images with fewer items skip the rest
      present = j < count
      y0 = rng.uniform(0, size, n).astype(np.float32)
      x0 = rng.uniform(0, size, n).astype(np.float32)
      if kind == "line":
        length = rng.uniform(0.2, 0.5, n) * size
        theta = rng.uniform(0, np.pi, n)
        y1, x1 = y0 + length * np.sin(theta), x0 + length * np.cos(theta)
        width = rng.uniform(0.6, 1.4, n) * size / 32
        dist = _segment_distance(gy, gx, y0, x0, y1, x1)
        inside = dist <= width[:, None] / 2
      else:
        r = rng.uniform(0.8, 1.6, n) * size / 32
        inside = np.hypot(gy[None] - y0[:, None], gx[None] - x0[:, None]) <= r[:, None]
      inside = inside.reshape(n, size, size, 1) & present[:, None, None, None]
      colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
      canvas = np.where(inside, colour, canvas)
  return canvas


def _segment_distance(gy, gx, y0, x0, y1, x1) -> np.ndarray:
  """Distance [n, P] from each sub-pixel to each image's segment (y0, x0)-(y1, x1)."""
  vy, vx = (y1 - y0)[:, None], (x1 - x0)[:, None]
  wy, wx = gy[None] - y0[:, None], gx[None] - x0[:, None]
  t = np.clip((wy * vy + wx * vx) / np.maximum(vy * vy + vx * vx, 1e-9), 0, 1)
  return np.hypot(wy - t * vy, wx - t * vx)


def _object_colour(rng: np.random.Generator, n: int) -> np.ndarray:
  """Random colours brighter than any background (whose channels stay below ~0.7).

  Free colour and free contrast polarity make the classes very slow to learn for a small CNN
  (chance level after 30 000 samples in our runs): the object is kept lighter than the scene.
  """
  return rng.uniform(0.6, 1.0, (n, 3)).astype(np.float32)
