"""Localization metrics of docs/csg-method.md §5.2: GradMap, CAM and ActivMap, batched and jitted.

Definitions follow the authors' released VOC Part scripts (gradmap.py, activmap.py):

- GradMap: per class, the `num_filters` (30) filters with the largest mean activation on that
  class's test images. For an image of class y and each of y's filters: d mean_hw(A_k) / d x
  (x = the model's normalised input), L2 norm over channels, divided by its root-mean-square
  over pixels, Gaussian blur (σ, kernel `2·round(σ)+1`, reflect-101 borders as kornia's), kept
  where > `gradmap_threshold` (1). Image IoU = mean over its filters; AP = share of images with
  IoU >= 0.2.
- CAM: Σ_k W[y, k] A_k, bilinear upsampling (half-pixel centres, edge-clamped: PyTorch's
  align_corners=False), kept where >= its `int(0.3·H·W)`-th largest value; AP: IoU > 0.3.
- ActivMap: per filter, threshold = the `int(0.3·N·h·w)`-th largest of its activations over the
  whole test split (low-resolution maps, as released); per image, the upsampled map kept where
  >= threshold. Per (filter, class): mean IoU and success rate (IoU > 0.3); a filter's class is
  its argmax success rate, its score the max. Per class: number of related filters, their mean
  score (AP) and mean IoU on that class; totals weighted by the counts.

Cost. Everything is streamed over the test split in batches; host memory is O(N + K·C).
The ActivMap thresholds are exact order statistics found by a three-pass radix select over the
float32 bit patterns (activations are >= 0, so bit order is value order): 11 + 11 + 10 bits,
each pass a forward over the split with a [K, 2048] histogram; no activation is stored. The
main pass does one forward and, for GradMap, a `jax.vmap` over filters of the `jax.vjp` of the
pooled activations: one backward per selected filter, all batched into one XLA computation.
Blur and upsampling are fixed matrices applied with einsum.

IoU is 0 where prediction and mask are both empty (the released code would divide by zero).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from csg_jax import data as data_lib
from csg_jax.data import augment
from csg_jax.errors import CSGError
from csg_jax.log import log

METHODS = ("gradmap", "cam", "activmap")
_RADIX_BITS = (11, 11, 10)  # bits 31..21, 20..10, 9..0 of the float32 pattern
_MAX_ACTIVMAP_CELLS = 1 << 24  # upsampled (image, filter, pixel) cells per ActivMap chunk: 64 MiB


def default_config() -> ml_collections.ConfigDict:
  """Localization settings, defaulting to the released scripts' values."""
  c = ml_collections.ConfigDict()
  c.methods = METHODS  # which of gradmap, cam, activmap to run
  c.batch_size = 50  # images per step (GradMap back-propagates num_filters maps per image)
  c.num_filters = 30  # GradMap: top filters per class, by mean activation on that class
  c.gradmap_filter_batch = 0  # GradMap: filters back-propagated together; 0: all (less: memory)
  c.gradmap_sigma = 0.0  # GradMap: Gaussian blur σ in pixels; 0: 30 * image_size / 128
  c.gradmap_kernel_size = 0  # GradMap: blur kernel side; 0: 2*round(σ)+1 (61 for σ = 30)
  c.gradmap_threshold = 1.0  # GradMap: keep pixels whose blurred, RMS-normalised map is > this
  c.gradmap_ap_iou = 0.2  # GradMap: an image counts for AP when its IoU >= this
  c.cam_top_fraction = 0.3  # CAM: keep the top 30 % of pixels
  c.cam_ap_iou = 0.3  # CAM: an image counts for AP when its IoU > this
  c.activmap_top_fraction = 0.3  # ActivMap: per-filter threshold at its top 30 % of activations
  c.activmap_success_iou = 0.3  # ActivMap: a (filter, image) succeeds when IoU > this
  return c


def validate_config(c, num_filters_total: int = 0) -> None:
  """Raises CSGError naming the first bad localization setting (K, if known, for messages)."""
  unknown = set(c.methods) - set(METHODS)
  if unknown or not c.methods:
    raise CSGError(f"localization.methods is {tuple(c.methods)}: choose from {METHODS}")
  if c.batch_size < 1:
    raise CSGError(f"localization.batch_size is {c.batch_size}: set it to a positive integer")
  if not 1 <= c.num_filters:
    raise CSGError(f"localization.num_filters is {c.num_filters}: set it to >= 1 (at most "
                   f"K{' = ' + str(num_filters_total) if num_filters_total else ''} are used)")
  if c.gradmap_filter_batch < 0:
    raise CSGError(f"localization.gradmap_filter_batch is {c.gradmap_filter_batch}: set it to "
                   ">= 0 (0: every filter at once)")
  if c.gradmap_sigma < 0:
    raise CSGError(f"localization.gradmap_sigma is {c.gradmap_sigma}: set it to > 0 pixels "
                   "(or 0 for 30 * image_size / 128)")
  if c.gradmap_kernel_size and (c.gradmap_kernel_size < 1 or c.gradmap_kernel_size % 2 == 0):
    raise CSGError(f"localization.gradmap_kernel_size is {c.gradmap_kernel_size}: set an odd "
                   "size, or 0 for 2*round(sigma)+1")
  for field in ("cam_top_fraction", "activmap_top_fraction"):
    if not 0 < c[field] <= 1:
      raise CSGError(f"localization.{field} is {c[field]}: set it in (0, 1]")


# ---------------------------------------------------------------------------------------------
# Building blocks (pure functions; the tests check them against references).
# ---------------------------------------------------------------------------------------------


def gaussian_kernel_size(sigma: float, kernel_size: int = 0) -> int:
  return kernel_size or 2 * int(round(sigma)) + 1


def blur_sigma(cfg, image_size: int) -> float:
  """The configured σ, or the released 30 px scaled from 128 px to this image size."""
  return cfg.gradmap_sigma or 30.0 * image_size / 128


def gaussian_blur_matrix(n: int, sigma: float, kernel_size: int = 0) -> np.ndarray:
  """[n, n] matrix B with B @ x = 1-D Gaussian blur of x, reflect-101 borders (d c b|a b c d|c b a).

  The kernel is exp(-t²/2σ²) on t = -r..r, normalised to sum 1 (kornia's, OpenCV's and scipy's).
  A 2-D blur of an image X is B_h @ X @ B_w.T.
  """
  size = gaussian_kernel_size(sigma, kernel_size)
  r = size // 2
  t = np.arange(-r, r + 1, dtype=np.float64)
  g = np.exp(-t**2 / (2 * sigma**2))
  g /= g.sum()
  # Rows of the reflect-padded identity are the padded signal's taps; numpy's 'reflect' is
  # reflect-101 and keeps reflecting when the kernel is wider than the signal.
  padded = np.pad(np.eye(n), ((r, r), (0, 0)), mode="reflect")
  windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)  # [n, n, size]
  return np.einsum("ijs,s->ij", windows, g).astype(np.float32)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] matrix U with U @ x = bilinear resize of x (PyTorch align_corners=False)."""
  src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  src = np.maximum(src, 0.0)
  lo = np.minimum(np.floor(src).astype(int), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  u = np.zeros((out_size, in_size))
  np.add.at(u, (np.arange(out_size), lo), 1 - frac)
  np.add.at(u, (np.arange(out_size), hi), frac)
  return u.astype(np.float32)


def iou(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """IoU over the last two axes of two boolean (or 0/1) masks; 0 where both are empty."""
  pred, target = pred.astype(bool), target.astype(bool)
  inter = (pred & target).sum((-2, -1)).astype(jnp.float32)
  union = (pred | target).sum((-2, -1)).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)


def top_fraction_mask(maps: jnp.ndarray, fraction: float) -> jnp.ndarray:
  """Keeps, per map (last two axes), pixels >= its int(fraction·H·W)-th largest value."""
  h, w = maps.shape[-2:]
  count = max(1, int(fraction * h * w))
  flat = maps.reshape(maps.shape[:-2] + (h * w,))
  kth = jax.lax.top_k(flat, count)[0][..., -1]
  return maps >= kth[..., None, None]


def gradmap_map(grads: jnp.ndarray, blur_h: jnp.ndarray, blur_w: jnp.ndarray) -> jnp.ndarray:
  """[..., H, W, C] input gradients -> GradMap's RMS-normalised, blurred map [..., H, W].

  The one implementation: the metric and the example figure both threshold this map.
  """
  g = jnp.sqrt(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=-1))
  rms = jnp.sqrt(jnp.mean(jnp.square(g), axis=(-2, -1), keepdims=True))
  g = jnp.where(rms > 0, g / jnp.where(rms > 0, rms, 1.0), 0.0)
  return jnp.einsum("yh,...hw,xw->...yx", blur_h, g, blur_w)


def gradmap_binarize(grads: jnp.ndarray, blur_h: jnp.ndarray, blur_w: jnp.ndarray,
                     threshold: float) -> jnp.ndarray:
  """[..., H, W, C] input gradients -> boolean GradMap masks [..., H, W]."""
  return gradmap_map(grads, blur_h, blur_w) > threshold


def radix_digit(values: jnp.ndarray, level: int) -> jnp.ndarray:
  """The `level`-th radix digit (int32) of non-negative float32 values, most significant first."""
  bits = jax.lax.bitcast_convert_type(jnp.where(values > 0, values, 0.0).astype(jnp.float32),
                                      jnp.uint32)
  shift = 32 - sum(_RADIX_BITS[:level + 1])
  return ((bits >> shift) & ((1 << _RADIX_BITS[level]) - 1)).astype(jnp.int32)


def radix_prefix(values: jnp.ndarray, level: int) -> jnp.ndarray:
  """The bits above digit `level` (what earlier passes fixed), as uint32."""
  bits = jax.lax.bitcast_convert_type(jnp.where(values > 0, values, 0.0).astype(jnp.float32),
                                      jnp.uint32)
  return bits >> (32 - sum(_RADIX_BITS[:level])) if level else jnp.zeros_like(bits)


def radix_histogram(values: jnp.ndarray, valid: jnp.ndarray, prefix: jnp.ndarray,
                    level: int) -> jnp.ndarray:
  """Histogram [K, 2^bits] of digit `level` of values [M, K] whose higher bits equal prefix [K]."""
  digit = radix_digit(values, level)
  keep = valid[:, None] & (radix_prefix(values, level) == prefix[None, :])
  k = jnp.broadcast_to(jnp.arange(values.shape[1])[None, :], values.shape)
  hist = jnp.zeros((values.shape[1], 1 << _RADIX_BITS[level]), jnp.int32)
  return hist.at[k.ravel(), digit.ravel()].add(keep.ravel().astype(jnp.int32))


def radix_select_step(hist: np.ndarray, prefix: np.ndarray, rank: np.ndarray,
                      level: int) -> tuple[np.ndarray, np.ndarray]:
  """Given the digit histogram [K, B] of the candidates, the digit holding the rank-th largest.

  Returns the extended prefix and the rank within it (1-based, counted from the top).
  """
  above = np.cumsum(hist[:, ::-1], axis=1)  # above[:, j]: count with digit >= B-1-j
  j = np.argmax(above >= rank[:, None], axis=1)
  digit = hist.shape[1] - 1 - j
  before = np.where(j > 0, np.take_along_axis(above, (j - 1)[:, None], 1)[:, 0], 0)
  new_prefix = (prefix.astype(np.uint64) << _RADIX_BITS[level]) | digit.astype(np.uint64)
  return new_prefix.astype(np.uint32), rank - before


def prefix_to_float(prefix: np.ndarray) -> np.ndarray:
  return prefix.astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------------------------------------
# The streamed evaluation.
# ---------------------------------------------------------------------------------------------


def _pooled(model, variables, images):
  """(pooled activations [B, K], feature map [B, h, w, K]), float32: what every map starts from."""
  fmap = model.apply(variables, images, train=False)["feature_map"].astype(jnp.float32)
  return fmap.mean(axis=(1, 2)), fmap


class _Fns:
  """The jitted steps for one model and image size."""

  def __init__(self, model, cfg, image_hw: Sequence[int], map_hw: Sequence[int],
               num_classes: int, num_filters_total: int):
    self.cfg = cfg
    h, w = image_hw
    sigma = blur_sigma(cfg, max(h, w))
    self.blur_h = jnp.asarray(gaussian_blur_matrix(h, sigma, cfg.gradmap_kernel_size))
    self.blur_w = jnp.asarray(gaussian_blur_matrix(w, sigma, cfg.gradmap_kernel_size))
    self.up_h = jnp.asarray(bilinear_matrix(h, map_hw[0]))
    self.up_w = jnp.asarray(bilinear_matrix(w, map_hw[1]))
    k = num_filters_total
    pooled = functools.partial(_pooled, model)

    def profile_step(variables, images, labels, valid):
      """Per-class sums of pooled activations, and the first radix histogram."""
      features, fmap = pooled(variables, images)
      onehot = jax.nn.one_hot(labels, num_classes) * valid[:, None]
      sums = onehot.T @ features
      hist = radix_histogram(fmap.reshape(-1, k), jnp.repeat(valid, fmap.shape[1] * fmap.shape[2]),
                             jnp.zeros((k,), jnp.uint32), 0)
      return sums, onehot.sum(0), hist

    def radix_step(variables, images, valid, prefix, level):
      _, fmap = pooled(variables, images)
      return radix_histogram(fmap.reshape(-1, k),
                             jnp.repeat(valid, fmap.shape[1] * fmap.shape[2]), prefix, level)

    def main_step(variables, images, labels, object_masks, top_filters, thresholds):
      out = {}
      # One forward; the map rides along as aux, so the VJP is of the pooled activations only.
      _, vjp_fn, fmap = jax.vjp(lambda x: pooled(variables, x), images, has_aux=True)
      if "gradmap" in cfg.methods:
        chosen = top_filters[labels]  # [B, F]
        cotangents = jnp.moveaxis(jax.nn.one_hot(chosen, k, dtype=jnp.float32), 1, 0)  # [F, B, K]

        def filter_iou(cotangent):  # [B, K] -> [B]: one filter per image
          masks = gradmap_binarize(vjp_fn(cotangent)[0], self.blur_h, self.blur_w,
                                   cfg.gradmap_threshold)
          return iou(masks, object_masks)

        group = cfg.gradmap_filter_batch
        if not group or group >= chosen.shape[1]:
          ious = jax.vmap(filter_iou)(cotangents)  # all backward passes in one batch
        else:  # groups of filters in sequence: bounds memory for big models and images
          ious = jax.lax.map(filter_iou, cotangents, batch_size=group)
        out["gradmap_iou"] = ious.mean(axis=0)
      if "cam" in cfg.methods:
        weights = variables["params"]["head"]["kernel"].astype(jnp.float32)[:, labels].T  # [B, K]
        cam = jnp.einsum("bhwk,bk->bhw", fmap, weights)
        cam = jnp.einsum("yh,bhw,xw->byx", self.up_h, cam, self.up_w)
        out["cam_iou"] = iou(top_fraction_mask(cam, cfg.cam_top_fraction), object_masks)
      if "activmap" in cfg.methods:
        out["activmap_iou"] = self._activmap_iou(fmap, object_masks, thresholds)
      return out

    self.profile_step = jax.jit(profile_step)
    self.radix_step = jax.jit(radix_step, static_argnums=4)
    self.main_step = jax.jit(main_step)

  def _activmap_iou(self, fmap, object_masks, thresholds):
    """IoU [B, K] of every filter's upsampled, thresholded map, in chunks of filters."""
    b, _, _, k = fmap.shape
    h, w = self.up_h.shape[0], self.up_w.shape[0]
    chunk = int(max(1, min(k, _MAX_ACTIVMAP_CELLS // max(1, b * h * w))))
    num_chunks = math.ceil(k / chunk)
    pad = num_chunks * chunk - k
    fm = jnp.pad(fmap, ((0, 0), (0, 0), (0, 0), (0, pad)))
    th = jnp.pad(thresholds, (0, pad), constant_values=jnp.inf)
    fm = jnp.moveaxis(fm.reshape(fm.shape[:3] + (num_chunks, chunk)), 3, 0)  # [n, B, h, w, c]

    def one_chunk(args):
      maps, thr = args
      up = jnp.einsum("yh,bhwk,xw->bkyx", self.up_h, maps, self.up_w)
      return iou(up >= thr[None, :, None, None], object_masks[:, None])  # [B, c]

    if num_chunks == 1:  # no loop: XLA:CPU runs loop bodies slower than straight-line code
      return one_chunk((fm[0], th))[:, :k]
    ious = jax.lax.map(one_chunk, (fm, th.reshape(num_chunks, chunk)))  # [n, B, c]
    return jnp.moveaxis(ious, 0, 1).reshape(b, num_chunks * chunk)[:, :k]


def evaluate_localization(model, variables, batches: Callable[[], Iterable[dict[str, np.ndarray]]],
                          *, num_classes: int, image_hw: Sequence[int], config=None,
                          class_names: Sequence[str] | None = None,
                          put: Callable[[Any], Any] = jax.device_put) -> dict[str, Any]:
  """Runs every method in `config.methods` over the batches; returns the summary dict.

  Args:
    model: a CSGClassifier (anything whose apply gives `feature_map` and has a `head`).
    variables: its variables.
    batches: returns a fresh iterator of {'image' [B,H,W,C] normalised, 'label' [B],
      'mask' [B] bool (False: padding), 'object_mask' [B,H,W]} with a fixed batch size; called
      once per pass (up to four passes).
    num_classes, image_hw: C and (H, W).
    config: `default_config(...)`; None: the defaults for this image size.
    put: moves a host batch to devices (e.g. sharded over a mesh).
  """
  cfg = config or default_config()
  probe = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)["feature_map"], variables,
                         jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32))
  map_hw, k = probe.shape[1:3], probe.shape[3]
  validate_config(cfg, k)
  fns = _Fns(model, cfg, image_hw, map_hw, num_classes, k)
  num_top = min(cfg.num_filters, k)
  timings = {}

  # Pass 1: per-class mean activations (GradMap's filters) and the first radix digit.
  start = time.perf_counter()
  sums = np.zeros((num_classes, k))
  counts = np.zeros(num_classes)
  hist = np.zeros((k, 1 << _RADIX_BITS[0]), np.int64)
  total_valid = 0
  for batch in batches():
    dev = put({key: batch[key] for key in ("image", "label", "mask")})
    s, c, h = jax.device_get(fns.profile_step(variables, dev["image"], dev["label"], dev["mask"]))
    sums += s
    counts += c
    hist += h
    total_valid += int(np.asarray(batch["mask"]).sum())
  if total_valid == 0:
    raise CSGError("the test split is empty: localization needs test images with object masks")
  class_means = sums / np.maximum(counts, 1)[:, None]
  top_filters = np.argsort(-class_means, axis=1, kind="stable")[:, :num_top].astype(np.int32)
  timings["profile_s"] = time.perf_counter() - start

  # Passes 2-3: the rest of the radix select (only ActivMap needs the thresholds).
  thresholds = np.zeros(k, np.float32)
  if "activmap" in cfg.methods:
    start = time.perf_counter()
    cells = total_valid * map_hw[0] * map_hw[1]
    rank = np.full(k, max(1, int(cfg.activmap_top_fraction * cells)), np.int64)
    prefix = np.zeros(k, np.uint32)
    prefix, rank = radix_select_step(hist, prefix, rank, 0)
    for level in range(1, len(_RADIX_BITS)):
      hist = np.zeros((k, 1 << _RADIX_BITS[level]), np.int64)
      for batch in batches():
        dev = put({key: batch[key] for key in ("image", "mask")})
        hist += jax.device_get(fns.radix_step(variables, dev["image"], dev["mask"],
                                              jnp.asarray(prefix), level))
      prefix, rank = radix_select_step(hist, prefix, rank, level)
    thresholds = prefix_to_float(prefix)
    timings["activmap_thresholds_s"] = time.perf_counter() - start

  # Main pass.
  start = time.perf_counter()
  per_image = {f"{m}_iou": [] for m in cfg.methods if m != "activmap"}
  labels_all = []
  activ_sum = np.zeros((k, num_classes))
  activ_success = np.zeros((k, num_classes))
  done = 0
  last_log = time.perf_counter()
  top_dev, thr_dev = jnp.asarray(top_filters), jnp.asarray(thresholds)
  for batch in batches():
    valid = np.asarray(batch["mask"], bool)
    dev = put({key: batch[key] for key in ("image", "label", "object_mask")})
    out = jax.device_get(fns.main_step(variables, dev["image"], dev["label"], dev["object_mask"],
                                       top_dev, thr_dev))
    labels = np.asarray(batch["label"])[valid]
    labels_all.append(labels)
    for key in per_image:
      per_image[key].append(np.asarray(out[key])[valid])
    if "activmap_iou" in out:
      ious = np.asarray(out["activmap_iou"], np.float64)[valid]  # [b, K]
      onehot = np.eye(num_classes)[labels]
      activ_sum += ious.T @ onehot
      activ_success += (ious > cfg.activmap_success_iou).T @ onehot
    done += int(valid.sum())
    if time.perf_counter() - last_log > 10:
      last_log = time.perf_counter()
      log(f"  localization: {done}/{total_valid} images")
  timings["main_s"] = time.perf_counter() - start

  labels = np.concatenate(labels_all)
  names = list(class_names or [str(c) for c in range(num_classes)])
  result: dict[str, Any] = {"num_images": int(labels.size), "class_names": names,
                            "map_hw": [int(map_hw[0]), int(map_hw[1])], "num_filters": int(k),
                            "timings": timings}
  if "gradmap" in cfg.methods:
    result["gradmap"] = _image_metric(np.concatenate(per_image["gradmap_iou"]), labels,
                                      num_classes, names, cfg.gradmap_ap_iou, inclusive=True)
    result["gradmap"]["top_filters"] = top_filters.tolist()
  if "cam" in cfg.methods:
    result["cam"] = _image_metric(np.concatenate(per_image["cam_iou"]), labels, num_classes,
                                  names, cfg.cam_ap_iou, inclusive=False)
  if "activmap" in cfg.methods:
    class_counts = np.bincount(labels, minlength=num_classes)
    result["activmap"] = summarize_activmap(activ_sum, activ_success, class_counts, names)
    result["activmap"]["thresholds"] = thresholds.tolist()
  return result


def _image_metric(ious: np.ndarray, labels: np.ndarray, num_classes: int, names: Sequence[str],
                  ap_iou: float, *, inclusive: bool) -> dict[str, Any]:
  """Per-class and overall mean IoU and AP (share of images over the IoU bar)."""
  hit = ious >= ap_iou if inclusive else ious > ap_iou
  per_class = {}
  for c in range(num_classes):
    rows = labels == c
    per_class[names[c]] = {"iou": float(ious[rows].mean()) if rows.any() else None,
                           "ap": float(hit[rows].mean()) if rows.any() else None,
                           "num_images": int(rows.sum())}
  return {"iou": float(ious.mean()), "ap": float(hit.mean()), "ap_iou": ap_iou,
          "ap_rule": ">=" if inclusive else ">", "per_class": per_class}


def summarize_activmap(iou_sum: np.ndarray, success_sum: np.ndarray, class_counts: np.ndarray,
                       names: Sequence[str]) -> dict[str, Any]:
  """Related-filter statistics from per-(filter, class) IoU and success sums [K, C]."""
  counts = np.maximum(class_counts, 1)[None, :].astype(np.float64)
  present = class_counts[None, :] > 0
  success = np.where(present, success_sum / counts, 0.0)
  mean_iou = np.where(present, iou_sum / counts, 0.0)
  related = success.argmax(axis=1)  # first maximum, like numpy's argmax in the released code
  score = success.max(axis=1)
  filter_iou = mean_iou[np.arange(len(related)), related]
  per_class = {}
  for c, name in enumerate(names):
    sel = related == c
    per_class[name] = {"num_filters": int(sel.sum()),
                       "ap": float(score[sel].mean()) if sel.any() else None,
                       "iou": float(filter_iou[sel].mean()) if sel.any() else None}
  # Weighting per-class means by their filter counts is the mean over all filters.
  return {"ap": float(score.mean()), "iou": float(filter_iou.mean()),
          "num_filters": int(len(related)), "per_class": per_class,
          "related_class": related.tolist(), "filter_score": score.tolist()}


def mask_batches(dataset, data_config, object_masks: np.ndarray, *, batch_size: int,
                 split: str = "test") -> Callable[[], Iterator[dict[str, np.ndarray]]]:
  """A `batches` callable for `evaluate_localization`: the eval stream plus its object masks."""
  num = len(dataset.splits[split])
  hw = tuple(dataset.image_shape[:2])
  if object_masks.shape[0] != num:
    raise CSGError(f"{object_masks.shape[0]} object masks but {num} {split} images: the masks "
                   "belong to another version of the data; rebuild the data set and its masks")
  if tuple(object_masks.shape[1:3]) != hw:
    raise CSGError(f"object masks are {object_masks.shape[1]}x{object_masks.shape[2]} but images "
                   f"are {hw[0]}x{hw[1]} (data.image_size?): use masks at the image size")

  def make():
    for i, batch in enumerate(data_lib.eval_batches(dataset, data_config, split=split,
                                                    global_batch_size=batch_size)):
      lo = i * batch_size
      masks = np.zeros((batch_size,) + hw, np.uint8)
      count = int(np.asarray(batch["mask"]).sum())
      masks[:count] = object_masks[lo:lo + count]
      yield {**batch, "object_mask": masks}

  return make


def example_maps(model, variables, dataset, data_config, object_masks: np.ndarray, *, config,
                 top_filters: np.ndarray | None, thresholds: np.ndarray | None,
                 num: int = 8, split: str = "test") -> dict[str, np.ndarray]:
  """The maps behind the metrics for `num` test images spread over the split (for a figure).

  GradMap and ActivMap are shown for each image's class's first (most active) filter.
  """
  cfg = config or default_config()
  n = len(dataset.splits[split])
  idx = np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))
  raw, labels = dataset.splits[split].read(idx)
  images = jnp.asarray(augment.normalize(raw, *data_lib.normalization(dataset, data_config)))
  h, w = raw.shape[1:3]

  _, vjp_fn, fmap = jax.vjp(lambda x: _pooled(model, variables, x), images, has_aux=True)
  up_h, up_w = bilinear_matrix(h, fmap.shape[1]), bilinear_matrix(w, fmap.shape[2])
  kernel = variables["params"]["head"]["kernel"].astype(jnp.float32)
  cam = jnp.einsum("yh,bhwk,bk,xw->byx", up_h, fmap, kernel[:, labels].T, up_w)
  out = {"image": raw, "label": labels, "object_mask": np.asarray(object_masks[idx]),
         "cam": np.asarray(cam), "cam_mask": np.asarray(top_fraction_mask(cam,
                                                                          cfg.cam_top_fraction))}
  if top_filters is not None:
    k = fmap.shape[-1]
    chosen = jnp.asarray(top_filters[labels, 0])
    grads = vjp_fn(jax.nn.one_hot(chosen, k))[0]
    sigma = blur_sigma(cfg, max(h, w))
    bh = gaussian_blur_matrix(h, sigma, cfg.gradmap_kernel_size)
    bw = gaussian_blur_matrix(w, sigma, cfg.gradmap_kernel_size)
    out["filter"] = np.asarray(chosen)
    out["gradmap"] = np.asarray(gradmap_map(grads, jnp.asarray(bh), jnp.asarray(bw)))
    out["gradmap_mask"] = out["gradmap"] > cfg.gradmap_threshold
    if thresholds is not None:
      maps = jnp.take_along_axis(fmap, chosen[:, None, None, None], axis=-1)[..., 0]
      act = jnp.einsum("yh,bhw,xw->byx", up_h, maps, up_w)
      out["activmap"] = np.asarray(act)
      out["activmap_mask"] = np.asarray(act >= jnp.asarray(thresholds)[chosen][:, None, None])
  return out

