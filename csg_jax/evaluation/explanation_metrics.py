"""Explanation-quality metrics: localization, faithfulness, sanity checks and dissection.

Pure functions, the numeric core of judging explanations. Maps are [N, H, W] float (finite),
object masks [N, H, W] bool at the same resolution; every map function is batched over the
leading axis and jit-able (shapes are static; only shape errors raise, as CSGError). The
localization scores are float32 [N] with NaN where the score is undefined (an empty mask, a map
with no positive mass): average them with `np.nanmean`, which skips those images.

Localization against object masks:

- Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016):
  the map's maximum (the first in row-major order on ties, like TorchRay's `torch.argmax` of the
  flattened map) is a hit when some mask pixel lies at Euclidean distance d < `tolerance` pixels
  from it (TorchRay's `PointingGame`: d² < tolerance²), or when it lies in the mask (d = 0, so
  tolerance 0 means inside the mask; for tolerance >= 1 this adds nothing to TorchRay's rule).
  The benchmark's 15 px are at the original image resolution: scale the tolerance by the
  resolution of the maps (e.g. 15 · H / H_original) when maps and masks are resized.
- Energy-based pointing game (Wang et al., "Score-CAM", CVPR workshops 2020):
  Σ relu(map)·mask / Σ relu(map), the share of the map's positive mass inside the mask.
- Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022): with K the
  number of mask pixels, the share of the map's K highest pixels that lie in the mask. Ties are
  broken by a stable sort: of equal values the earlier pixel in row-major order ranks higher.

Faithfulness (Petsiuk et al., "RISE", BMVC 2018): pixels, or patch x patch cells scored by the
mean of the map over the cell (edge cells may be partial), are ordered from most to least
relevant (the same stable tie rule), or at random with an explicit PRNG key. At step s of
`steps`, the first ⌊s·U/steps⌋ of the U units are removed (deletion: replaced by the baseline
image, from the full image at s = 0 to the baseline at s = steps) or revealed (insertion: the
image shown over the baseline, from the baseline to the full image). The curves are the
probability of the given label; `auc` is their trapezoidal area over x = s/steps in [0, 1]
(RISE's `auc`). A baseline is any array broadcastable to the images [N, H, W, C]: a constant
(0 in the model's normalised space = the data mean), one colour [C], or per-image images such as
`blurred_baseline(images)` (RISE inserts into a blurred image and deletes to zeros).

Sanity checks (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018), per image:

- Spearman rank correlation over pixels: Pearson correlation of the ranks, ties given their
  average rank (scipy.stats.spearmanr's default); NaN when a map is constant.
- SSIM (Wang et al., IEEE TIP 2004) as skimage's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`: each map is first min-max normalised
  to [0, 1] (a constant map becomes all zeros); local statistics use the 11 x 11 Gaussian window
  (σ = 1.5, truncated at 3.5σ, weights summing to 1); C1 = (0.01)², C2 = (0.03)². Borders:
  skimage filters with reflected borders but then averages the SSIM map only over pixels at
  least 5 from every edge, whose windows never reach the padding; here those pixels are computed
  directly ('valid' windows), so the result is the same and no padding rule is involved. Maps
  must be at least 11 x 11.

Network Dissection (Bau et al., "Network dissection", CVPR 2017), in two pure steps:

- `filter_thresholds`: per filter k, the level T_k of its top 0.5 % of activations over the
  whole split: the exact `quantile` of all N·h·w values, numpy's method='higher' (the value at
  0-based position ⌈q·(M-1)⌉ of the M sorted values, an actual activation).
- `dissection_counts`: each activation map is upsampled bilinearly to the mask resolution
  (PyTorch align_corners=False, `localization.bilinear_matrix`) and kept where >= T_k (the
  paper's M_k = S_k >= T_k); per (filter, class) the intersection and union with the class's
  object masks are summed over images, a class's mask being empty on images of other classes.
  The counts of successive batches add up, so splits stream; `dissection_iou` divides them
  (0 where the union is empty) and `detectors` keeps filters whose best IoU is > 0.04.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from csg_jax.errors import CSGError
from csg_jax.evaluation.localization import bilinear_matrix, gaussian_blur_matrix

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # skimage: int(truncate · σ + 0.5) with truncate 3.5: an 11 x 11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03
DETECTOR_IOU = 0.04  # Network Dissection: a filter detects its best class when IoU > this


def _check_maps(maps, masks=None, name: str = "masks") -> tuple[int, int, int]:
  """Raises CSGError unless maps are [N, H, W] (and masks the same shape); returns the shape."""
  if len(maps.shape) != 3:
    raise CSGError(f"maps have shape {tuple(maps.shape)}: pass [N, H, W] maps (one per image; "
                   "reduce channels first, e.g. with a norm or a sum)")
  if masks is not None and tuple(masks.shape) != tuple(maps.shape):
    raise CSGError(f"{name} have shape {tuple(masks.shape)} but maps {tuple(maps.shape)}: "
                   "resize maps and masks to the same [N, H, W]")
  return tuple(int(d) for d in maps.shape)


def _first_argmax_yx(maps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Row and column [N] of each map's maximum, the first in row-major order on ties."""
  n, _, w = maps.shape
  flat = jnp.argmax(maps.reshape(n, -1), axis=1)  # jnp.argmax returns the first maximum
  return flat // w, flat % w


# ---------------------------------------------------------------------------------------------
# Localization against object masks.
# ---------------------------------------------------------------------------------------------


def pointing_game(maps, masks, tolerance: float = 15) -> jnp.ndarray:
  """[N] float32: 1 hit, 0 miss, NaN for an empty mask; maps [N,H,W], masks [N,H,W] bool."""
  maps, masks = jnp.asarray(maps, jnp.float32), jnp.asarray(masks).astype(bool)
  _, h, w = _check_maps(maps, masks)
  if isinstance(tolerance, (int, float)) and not tolerance >= 0:
    raise CSGError(f"pointing game tolerance is {tolerance}: set it to >= 0 pixels "
                   "(15 at the original resolution, 0: the maximum must lie in the mask)")
  y, x = _first_argmax_yx(maps)
  dy = jnp.arange(h)[None, :, None] - y[:, None, None]
  dx = jnp.arange(w)[None, None, :] - x[:, None, None]
  d2 = (dy * dy + dx * dx).astype(jnp.float32)
  near = (d2 < jnp.square(jnp.asarray(tolerance, jnp.float32))) | (d2 == 0)
  hit = jnp.any(near & masks, axis=(1, 2))
  return jnp.where(masks.any(axis=(1, 2)), hit.astype(jnp.float32), jnp.nan)


def energy_pointing_game(maps, masks) -> jnp.ndarray:
  """[N] float32 share of relu(map) inside the mask; NaN: empty mask or no positive mass."""
  maps, masks = jnp.asarray(maps, jnp.float32), jnp.asarray(masks).astype(bool)
  _check_maps(maps, masks)
  positive = jnp.maximum(maps, 0.0)
  total = positive.sum(axis=(1, 2))
  inside = jnp.where(masks, positive, 0.0).sum(axis=(1, 2))
  defined = (total > 0) & masks.any(axis=(1, 2))
  return jnp.where(defined, inside / jnp.where(total > 0, total, 1.0), jnp.nan)


def relevance_rank_accuracy(maps, masks) -> jnp.ndarray:
  """[N] float32 share of the top-K map pixels (K = mask size) in the mask; NaN: empty mask."""
  maps, masks = jnp.asarray(maps, jnp.float32), jnp.asarray(masks).astype(bool)
  n, _, _ = _check_maps(maps, masks)
  flat_mask = masks.reshape(n, -1)
  k = flat_mask.sum(axis=1)
  order = jnp.argsort(maps.reshape(n, -1), axis=1, descending=True, stable=True)
  in_mask = jnp.take_along_axis(flat_mask, order, axis=1)  # mask bits from the top down
  top = jnp.arange(order.shape[1])[None, :] < k[:, None]
  hits = (in_mask & top).sum(axis=1).astype(jnp.float32)
  return jnp.where(k > 0, hits / jnp.maximum(k, 1).astype(jnp.float32), jnp.nan)


# ---------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion curves.
# ---------------------------------------------------------------------------------------------


def _check_patch(patch: int) -> None:
  if not isinstance(patch, (int, np.integer)) or patch < 1:
    raise CSGError(f"patch is {patch!r}: set it to a positive integer (1: single pixels)")


def num_units(height: int, width: int, patch: int = 1) -> int:
  """Number U of perturbation units: ⌈H/patch⌉ · ⌈W/patch⌉ cells."""
  _check_patch(patch)
  return math.ceil(height / patch) * math.ceil(width / patch)


def _cells_to_pixels(cell_ranks: jnp.ndarray, h: int, w: int, patch: int) -> jnp.ndarray:
  """[N, U] ranks of the cells -> [N, H, W] rank of each pixel's cell."""
  n = cell_ranks.shape[0]
  grid = cell_ranks.reshape(n, math.ceil(h / patch), math.ceil(w / patch))
  grid = jnp.repeat(jnp.repeat(grid, patch, axis=1), patch, axis=2)
  return grid[:, :h, :w].astype(jnp.int32)


def relevance_ranks(maps, patch: int = 1) -> jnp.ndarray:
  """[N, H, W] int32 rank (0: most relevant) of each pixel's unit, by map mean, stable ties."""
  maps = jnp.asarray(maps, jnp.float32)
  n, h, w = _check_maps(maps)
  _check_patch(patch)
  hc, wc = math.ceil(h / patch), math.ceil(w / patch)
  pad = ((0, hc * patch - h), (0, wc * patch - w))
  sums = jnp.pad(maps, ((0, 0),) + pad).reshape(n, hc, patch, wc, patch).sum(axis=(2, 4))
  sizes = jnp.pad(jnp.ones((h, w), jnp.float32), pad).reshape(hc, patch, wc, patch).sum((1, 3))
  order = jnp.argsort((sums / sizes).reshape(n, -1), axis=1, descending=True, stable=True)
  u = hc * wc
  ranks = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(u)[None, :])
  return _cells_to_pixels(ranks, h, w, patch)


def random_ranks(rng: jax.Array, num_images: int, height: int, width: int,
                 patch: int = 1) -> jnp.ndarray:
  """[N, H, W] int32 random unit ranks; image i uses jax.random.split(rng, N)[i]."""
  u = num_units(height, width, patch)
  keys = jax.random.split(rng, num_images)
  cell_ranks = jax.vmap(lambda key: jax.random.permutation(key, u))(keys)
  return _cells_to_pixels(cell_ranks, height, width, patch)


def step_counts(steps: int, units: int) -> np.ndarray:
  """[steps + 1] units removed or revealed after each step: ⌊s · U / steps⌋."""
  return (np.arange(steps + 1, dtype=np.int64) * units) // steps


def blurred_baseline(images, sigma: float = 5.0, kernel_size: int = 11) -> jnp.ndarray:
  """[N, H, W, C] Gaussian blur of images (reflect-101 borders; RISE's 11 taps, σ = 5)."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise CSGError(f"images have shape {tuple(images.shape)}: pass [N, H, W, C] images")
  bh = jnp.asarray(gaussian_blur_matrix(images.shape[1], sigma, kernel_size))
  bw = jnp.asarray(gaussian_blur_matrix(images.shape[2], sigma, kernel_size))
  return jnp.einsum("yh,nhwc,xw->nyxc", bh, images.astype(jnp.float32), bw).astype(images.dtype)


def _as_baseline(baseline, images: jnp.ndarray, name: str) -> jnp.ndarray:
  """The baseline as a 4-D array broadcastable to images (leading axis 1 or N)."""
  base = jnp.asarray(baseline, images.dtype)
  try:
    shape = np.broadcast_shapes(base.shape, images.shape)
  except ValueError:
    shape = None
  if shape != tuple(images.shape):
    raise CSGError(f"{name} has shape {tuple(base.shape)}, not broadcastable to the images "
                   f"{tuple(images.shape)}: pass a scalar, a colour [C], an image [H, W, C] or "
                   "one image per input [N, H, W, C]")
  return base.reshape((1,) * (4 - base.ndim) + base.shape)


def _gather_baseline(base: jnp.ndarray, index: jnp.ndarray, shape) -> jnp.ndarray:
  if base.shape[0] == 1:
    return jnp.broadcast_to(base, shape)
  return jnp.broadcast_to(base[index], shape)


@jax.jit
def _perturbed_images(images, ranks, deletion_base, insertion_base, index, count, deletion):
  """[B, H, W, C] step images for (image index, unit count, deletion?) triples [B]."""
  x = images[index]
  first = ranks[index] < count[:, None, None]  # the units removed (deletion) or revealed
  show = (first != deletion[:, None, None])[..., None]
  base = jnp.where(deletion[:, None, None, None],
                   _gather_baseline(deletion_base, index, x.shape),
                   _gather_baseline(insertion_base, index, x.shape))
  return jnp.where(show, x, base)


def deletion_insertion_curves(predict_fn: Callable[[jnp.ndarray], Any], images, maps, labels, *,
                              steps: int, baseline, insertion_baseline=None, patch: int = 1,
                              order: str = "map", rng: jax.Array | None = None,
                              batch_size: int = 64) -> dict[str, np.ndarray]:
  """{'deletion', 'insertion': [N, steps+1] probabilities of labels, 'fraction': [steps+1]}.

  Args:
    predict_fn: images [M, H, W, C] -> class probabilities [M, classes]; called with exactly
      `batch_size` images each time (the last batch is padded), so a jitted function compiles
      once.
    images: [N, H, W, C] in the model's input space; maps: [N, H, W] relevance; labels: [N].
    steps: number of equal chunks; the curves have steps + 1 points.
    baseline: what deleted units become, broadcastable to images (e.g. 0.0, the data mean in
      normalised space); insertion_baseline: what insertion starts from (None: baseline).
    patch: units are patch x patch cells; order: 'map' (most relevant first) or 'random' (the
      reference; needs `rng`, a jax PRNG key).
  'fraction' is the share of units removed/revealed after each step (⌊s·U/steps⌋ / U).
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise CSGError(f"images have shape {tuple(images.shape)}: pass [N, H, W, C] images, N >= 1")
  n, h, w, _ = images.shape
  if tuple(np.shape(maps)) != (n, h, w):
    raise CSGError(f"maps have shape {tuple(np.shape(maps))} but images {tuple(images.shape)}: "
                   "pass one [H, W] map per image at the image resolution")
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise CSGError(f"labels have shape {labels.shape} and dtype {labels.dtype}: pass [N] integer "
                   "class indices, one per image")
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise CSGError(f"steps is {steps!r}: set it to a positive integer (e.g. 50)")
  if batch_size < 1:
    raise CSGError(f"batch_size is {batch_size}: set it to a positive integer")
  if order == "map":
    ranks = relevance_ranks(maps, patch)
  elif order == "random":
    if rng is None:
      raise CSGError("order='random' needs rng: pass a jax PRNG key, e.g. jax.random.key(0)")
    ranks = random_ranks(rng, n, h, w, patch)
  else:
    raise CSGError(f"order is {order!r}: choose 'map' or 'random'")
  deletion_base = _as_baseline(baseline, images, "baseline")
  insertion_base = (deletion_base if insertion_baseline is None
                    else _as_baseline(insertion_baseline, images, "insertion_baseline"))

  counts = step_counts(steps, num_units(h, w, patch))
  t = steps + 1
  # All (curve, image, step) triples, deletion first; padded to whole batches with the last one.
  index = np.tile(np.repeat(np.arange(n), t), 2)
  count = np.tile(counts, 2 * n)
  deletion = np.repeat([True, False], n * t)
  total = index.size
  padded = -(-total // batch_size) * batch_size
  index, count, deletion = (np.concatenate([a, np.repeat(a[-1:], padded - total)])
                            for a in (index, count, deletion))
  label = jnp.asarray(labels[index], jnp.int32)
  picked = []
  for lo in range(0, padded, batch_size):
    sl = slice(lo, lo + batch_size)
    x = _perturbed_images(images, ranks, deletion_base, insertion_base, jnp.asarray(index[sl]),
                          jnp.asarray(count[sl]), jnp.asarray(deletion[sl]))
    probs = jnp.asarray(predict_fn(x))
    if probs.ndim != 2 or probs.shape[0] != batch_size:
      raise CSGError(f"predict_fn returned shape {tuple(probs.shape)} for {batch_size} images: "
                     "it must return class probabilities [M, classes]")
    if lo == 0 and not 0 <= labels.min() <= labels.max() < probs.shape[1]:
      raise CSGError(f"labels span {labels.min()}..{labels.max()} but predict_fn gives "
                     f"{probs.shape[1]} classes: pass labels of this model's classes")
    picked.append(jnp.take_along_axis(probs, label[sl, None], axis=1)[:, 0])
  curves = np.asarray(jnp.concatenate(picked)[:total], np.float64).reshape(2, n, t)
  return {"deletion": curves[0], "insertion": curves[1],
          "fraction": counts / num_units(h, w, patch)}


def auc(curve) -> np.ndarray:
  """[...] trapezoidal area of curves [..., T] (T >= 2) over x evenly spaced in [0, 1]."""
  curve = np.asarray(curve, np.float64)
  if curve.ndim < 1 or curve.shape[-1] < 2:
    raise CSGError(f"curve has shape {curve.shape}: pass curves [..., T] with T >= 2 points")
  return (curve.sum(axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / (curve.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# Sanity-check similarities.
# ---------------------------------------------------------------------------------------------


def average_ranks(values) -> jnp.ndarray:
  """[N, P] 1-based ranks of values [N, P] along the last axis, ties given their mean rank."""
  values = jnp.asarray(values, jnp.float32)
  ordered = jnp.sort(values, axis=-1)
  search = jax.vmap(lambda row, q, side: jnp.searchsorted(row, q, side=side),
                    in_axes=(0, 0, None))
  below = search(ordered, values, "left")  # values strictly smaller
  upto = search(ordered, values, "right")  # values smaller or equal
  return (below + upto + 1).astype(jnp.float32) / 2  # mean of positions below+1 .. upto


def spearman_rank_correlation(a, b) -> jnp.ndarray:
  """[N] float32 Spearman correlation of maps a, b [N, H, W] over pixels; NaN if one is flat."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  n, h, w = _check_maps(a, b, "maps b")
  centre = (h * w + 1) / 2  # the mean of any average ranks
  ra = average_ranks(a.reshape(n, -1)) - centre
  rb = average_ranks(b.reshape(n, -1)) - centre
  cov = (ra * rb).sum(axis=1)
  scale = jnp.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
  return jnp.where(scale > 0, cov / jnp.where(scale > 0, scale, 1.0), jnp.nan)


def minmax_normalize(maps) -> jnp.ndarray:
  """[N, H, W] maps scaled to [0, 1] per image; a constant map becomes all zeros."""
  maps = jnp.asarray(maps, jnp.float32)
  lo = maps.min(axis=(-2, -1), keepdims=True)
  span = maps.max(axis=(-2, -1), keepdims=True) - lo
  return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def ssim_window_matrix(size: int) -> np.ndarray:
  """[size - 10, size] matrix G: G @ x = the 11-tap Gaussian means of x's fully inside windows."""
  t = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
  g = np.exp(-0.5 * t**2 / SSIM_SIGMA**2)
  g /= g.sum()
  out = size - 2 * SSIM_RADIUS
  m = np.zeros((out, size))
  for i in range(out):
    m[i, i:i + g.size] = g
  return m.astype(np.float32)


def ssim(a, b) -> jnp.ndarray:
  """[N] float32 SSIM of min-max normalised maps a, b [N, H, W] (H, W >= 11), skimage's way."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _, h, w = _check_maps(a, b, "maps b")
  window = 2 * SSIM_RADIUS + 1
  if h < window or w < window:
    raise CSGError(f"maps are {h}x{w}: SSIM's {window}x{window} window needs at least "
                   f"{window}x{window} pixels; upsample the maps (localization.bilinear_matrix)")
  gh, gw = jnp.asarray(ssim_window_matrix(h)), jnp.asarray(ssim_window_matrix(w))
  x, y = minmax_normalize(a), minmax_normalize(b)

  def local_mean(z):
    return jnp.einsum("yh,nhw,xw->nyx", gh, z, gw)

  ux, uy = local_mean(x), local_mean(y)
  vx = local_mean(x * x) - ux * ux  # population (co)variances: use_sample_covariance=False
  vy = local_mean(y * y) - uy * uy
  vxy = local_mean(x * y) - ux * uy
  c1, c2 = SSIM_K1**2, SSIM_K2**2  # data_range L = 1
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return s.mean(axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Network Dissection.
# ---------------------------------------------------------------------------------------------


def filter_thresholds(activations, quantile: float = 0.995) -> np.ndarray:
  """[K] per-filter `quantile` of activations [N, h, w, K] over all N·h·w values ('higher')."""
  acts = np.asarray(activations)
  if acts.ndim != 4:
    raise CSGError(f"activations have shape {acts.shape}: pass [N, h, w, K] feature maps")
  if not 0 <= quantile <= 1:
    raise CSGError(f"quantile is {quantile}: set it in [0, 1] (0.995: each filter's top 0.5 %)")
  return np.quantile(acts.reshape(-1, acts.shape[-1]), quantile, axis=0, method="higher")


def dissection_counts(activations, thresholds, masks, labels, num_classes: int, *,
                      valid=None, filter_chunk: int = 16) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Intersection and union [K, C] int32 of filters' >= T_k regions and class masks, one batch.

  activations [B, h, w, K] are upsampled bilinearly to the masks' [B, H, W]; labels [B] give
  each image's class (its mask is empty for every other class); valid [B] bool drops padding.
  Sum the counts of all batches in int64 on the host and pass them to `dissection_iou`.
  `filter_chunk` filters are upsampled at once (memory: B·H·W·filter_chunk floats).
  """
  acts = jnp.asarray(activations, jnp.float32)
  masks = jnp.asarray(masks).astype(bool)
  if acts.ndim != 4:
    raise CSGError(f"activations have shape {tuple(acts.shape)}: pass [B, h, w, K] feature maps")
  b, _, _, k = acts.shape
  if masks.ndim != 3 or masks.shape[0] != b:
    raise CSGError(f"masks have shape {tuple(masks.shape)} for {b} images: pass [B, H, W] "
                   "object masks, one per image")
  if tuple(np.shape(thresholds)) != (k,):
    raise CSGError(f"thresholds have shape {tuple(np.shape(thresholds))} for {k} filters: pass "
                   "filter_thresholds(...) of the same layer")
  if tuple(np.shape(labels)) != (b,):
    raise CSGError(f"labels have shape {tuple(np.shape(labels))} for {b} images: pass [B] "
                   "class indices")
  if filter_chunk < 1:
    raise CSGError(f"filter_chunk is {filter_chunk}: set it to a positive integer")
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  up_h = jnp.asarray(bilinear_matrix(masks.shape[1], acts.shape[1]))
  up_w = jnp.asarray(bilinear_matrix(masks.shape[2], acts.shape[2]))
  return _dissection_counts(acts, jnp.asarray(thresholds, jnp.float32), masks,
                            jnp.asarray(labels, jnp.int32), valid, up_h, up_w,
                            num_classes=int(num_classes), filter_chunk=int(filter_chunk))


@functools.partial(jax.jit, static_argnames=("num_classes", "filter_chunk"))
def _dissection_counts(acts, thresholds, masks, labels, valid, up_h, up_w, *, num_classes,
                       filter_chunk):
  def one_filter(args):  # [B, h, w], [] -> intersection [B], active pixels [B]
    fmap, threshold = args
    on = jnp.einsum("yh,bhw,xw->byx", up_h, fmap, up_w) >= threshold
    return (on & masks).sum(axis=(1, 2)), on.sum(axis=(1, 2))

  inter, active = jax.lax.map(one_filter, (jnp.moveaxis(acts, -1, 0), thresholds),
                              batch_size=filter_chunk)  # [K, B] each
  inter, active = jnp.where(valid, inter, 0), jnp.where(valid, active, 0)
  mask_size = jnp.where(valid, masks.sum(axis=(1, 2)), 0)
  label = jnp.where(valid, labels, 0)
  inter_kc = jax.ops.segment_sum(inter.T, label, num_segments=num_classes).T  # [K, C]
  size_c = jax.ops.segment_sum(mask_size, label, num_segments=num_classes)  # [C]
  # |M ∪ L_c| summed over images = Σ|M| + Σ|L_c| - Σ|M ∩ L_c| (L_c empty off class c).
  union = active.sum(axis=1)[:, None] + size_c[None, :] - inter_kc
  return inter_kc.astype(jnp.int32), union.astype(jnp.int32)


def dissection_iou(intersection, union) -> np.ndarray:
  """[K, C] float64 IoU from the split's summed counts [K, C]; 0 where the union is empty."""
  inter, union = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
  if inter.shape != union.shape:
    raise CSGError(f"intersection {inter.shape} and union {union.shape} differ: pass the two "
                   "sums of dissection_counts")
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def detectors(iou, threshold: float = DETECTOR_IOU) -> dict[str, Any]:
  """Per filter of iou [K, C]: best class (first on ties), its IoU, IoU > threshold; totals."""
  iou = np.asarray(iou, np.float64)
  if iou.ndim != 2 or iou.shape[1] == 0:
    raise CSGError(f"iou has shape {iou.shape}: pass the [K, C] matrix of dissection_iou")
  best = iou.argmax(axis=1)
  best_iou = iou[np.arange(iou.shape[0]), best]
  is_detector = best_iou > threshold
  return {"best_class": best, "best_iou": best_iou, "is_detector": is_detector,
          "num_detectors": int(is_detector.sum()),
          "num_unique_classes": int(np.unique(best[is_detector]).size)}
