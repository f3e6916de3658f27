"""Vectorised numpy augmentation and normalisation of whole batches.

Parameters are drawn for a whole global batch (`sample_params`) and applied to any slice of it
(`slice_params`, `apply`), so every process can augment its share exactly as one process would.
"""

from __future__ import annotations

import math

import numpy as np

_RRC_ATTEMPTS = 10  # Candidate boxes per image, as in torchvision's RandomResizedCrop.


def sample_params(rng: np.random.Generator, batch_size: int, image_hw: tuple[int, int],
                  cfg) -> dict[str, np.ndarray]:
  """Draws the augmentation parameters of `batch_size` images from `rng`."""
  params = {}
  if cfg.crop_padding:
    params["offset"] = rng.integers(0, 2 * cfg.crop_padding + 1, size=(batch_size, 2))
  if cfg.random_resized_crop:
    params["box"] = _sample_boxes(rng, batch_size, image_hw, cfg.rrc_scale, cfg.rrc_ratio)
  if cfg.flip:
    params["flip"] = rng.random(batch_size) < 0.5
  return params


def slice_params(params: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
  """The parameters of images [start, stop) of the batch they were drawn for."""
  return {k: v[start:stop] for k, v in params.items()}


def apply(images: np.ndarray, params: dict[str, np.ndarray], cfg) -> np.ndarray:
  """Augments uint8 [n, H, W, C] images; uint8 out, or float32 0..255 after a resized crop."""
  flip = params.get("flip")
  if "box" in params:
    return resized_crop(images, params["box"], flip)
  if "offset" in params or flip is not None:
    return crop_and_flip(images, params.get("offset"), cfg.crop_padding, flip)
  return images


def crop_and_flip(images: np.ndarray, offset: np.ndarray | None, padding: int,
                  flip: np.ndarray | None) -> np.ndarray:
  """Crops each image from its zero-padded copy at `offset` (y, x) and mirrors where `flip`.

  offset[i] = (padding, padding) leaves image i in place; one gather does crop and flip together.
  """
  n, h, w, c = images.shape
  if padding:
    source = np.zeros((n, h + 2 * padding, w + 2 * padding, c), images.dtype)
    source[:, padding:padding + h, padding:padding + w] = images
  else:
    source = images
  hp, wp = source.shape[1:3]
  if offset is None:
    offset = np.full((n, 2), padding)
  rows = offset[:, :1] + np.arange(h)  # [n, h]
  cols = offset[:, 1:] + np.arange(w)  # [n, w]
  if flip is not None:
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
  flat = (np.arange(n)[:, None] * hp + rows)[:, :, None] * wp + cols[:, None, :]
  return source.reshape(n * hp * wp, c).take(flat.reshape(-1), axis=0).reshape(n, h, w, c)


def resized_crop(images: np.ndarray, boxes: np.ndarray, flip: np.ndarray | None) -> np.ndarray:
  """Bilinearly resamples each box (y, x, height, width) to the full image size; float32 out.

  Separably: whole rows are gathered (uint8) and blended along y, then pixels along x.
  """
  n, h, w, c = images.shape
  y0, x0, bh, bw = boxes.T
  ys = y0[:, None] + (np.arange(h) + 0.5) * (bh / h)[:, None] - 0.5  # Pixel-centre aligned.
  xs = x0[:, None] + (np.arange(w) + 0.5) * (bw / w)[:, None] - 0.5
  if flip is not None:
    xs = np.where(flip[:, None], xs[:, ::-1], xs)
  ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
  y_lo, x_lo = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
  y_hi, x_hi = np.minimum(y_lo + 1, h - 1), np.minimum(x_lo + 1, w - 1)
  wy = (ys - y_lo).astype(np.float32)[:, :, None, None]
  wx = (xs - x_lo).astype(np.float32)[:, None, :, None]

  rows = images.reshape(n * h, w * c)
  first_row = (np.arange(n) * h)[:, None]

  def row_gather(yi: np.ndarray) -> np.ndarray:
    return rows.take((first_row + yi).reshape(-1), axis=0).reshape(n, h, w, c).astype(np.float32)

  out = row_gather(y_lo)
  step = row_gather(y_hi)
  step -= out
  step *= wy
  out += step  # [n, h, w, c]: blended along y

  pixels = out.reshape(n * h * w, c)
  first_pixel = (np.arange(n * h) * w).reshape(n, h, 1)

  def pixel_gather(xi: np.ndarray) -> np.ndarray:
    return pixels.take((first_pixel + xi[:, None, :]).reshape(-1), axis=0).reshape(n, h, w, c)

  left = pixel_gather(x_lo)
  right = pixel_gather(x_hi)
  right -= left
  right *= wx
  left += right
  return left


def _sample_boxes(rng: np.random.Generator, n: int, image_hw: tuple[int, int],
                  scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
  """Random-resized-crop boxes [n, 4] = (y, x, height, width), as torchvision draws them."""
  h, w = image_hw
  area = h * w * rng.uniform(scale[0], scale[1], size=(n, _RRC_ATTEMPTS))
  aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, _RRC_ATTEMPTS)))
  cw = np.round(np.sqrt(area * aspect))
  ch = np.round(np.sqrt(area / aspect))
  ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
  first = np.argmax(ok, axis=1)  # First acceptable attempt per image.
  cw, ch = cw[np.arange(n), first], ch[np.arange(n), first]
  corner = rng.random((n, 2))
  y0 = np.floor(corner[:, 0] * (h - ch + 1))
  x0 = np.floor(corner[:, 1] * (w - cw + 1))

  # No acceptable attempt: a centred crop of the whole image clamped to the ratio range.
  fh, fw = float(h), float(w)
  if w / h < ratio[0]:
    fh = round(w / ratio[0])
  elif w / h > ratio[1]:
    fw = round(h * ratio[1])
  none_ok = ~ok.any(axis=1)
  ch, cw = np.where(none_ok, fh, ch), np.where(none_ok, fw, cw)
  y0, x0 = np.where(none_ok, (h - fh) // 2, y0), np.where(none_ok, (w - fw) // 2, x0)
  return np.stack([y0, x0, ch, cw], axis=1)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """float32 (images / 255 - mean) / std, per channel (the last axis)."""
  std = np.asarray(std, np.float64)
  scale = (1 / (255 * std)).astype(np.float32)
  shift = (-np.asarray(mean, np.float64) / std).astype(np.float32)
  # Broadcasting C values over [..., C] makes numpy's inner loops C elements long; tiling them
  # over a whole image keeps the loops long, about 6x faster.
  n, size = images.shape[0], int(np.prod(images.shape[1:]))
  out = images.reshape(n, size).astype(np.float32)
  out *= np.tile(scale, size // len(scale))
  out += np.tile(shift, size // len(shift))
  return out.reshape(images.shape)
