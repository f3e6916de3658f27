"""Judging explanations the way the field does: localization, faithfulness, sanity, dissection.

`evaluate(run, masks, cfg)` runs on the test split of a trained run whose data set has object
masks (docs/applications.md, "Judging explanations"). Per image it computes three maps for the
image's label class y, each [H, W] at the image resolution:

- "cam": Σ_k W[k, y]·A_k (the head's kernel; no bias), upsampled bilinearly (PyTorch
  align_corners=False, `localization.bilinear_matrix`), as localization's CAM.
- "gradmap": the GradMap map (`localization.gradmap_map`: L2 norm over channels of the input
  gradient, RMS-normalised, Gaussian-blurred) of ONE backward pass: the gradient of the sum of
  the pooled activations of y's top `num_filters` filters, chosen as localization's GradMap
  chooses them (largest mean activation on y's test images). Localization's GradMap instead
  scores each filter's own map; one map per image is what the metrics below need.
- "filters": the method's own explanation: Σ over the filters assigned to y of their upsampled
  activations, the assignment being the argmax of the method's class matrix (CSG's gate, closed
  filters assigned to none) or, for STD, of the MI matrix (W/eval/mi_matrix.npy, csg-evaluate).
  Without either, this map type is skipped and the report says so.

Then (`explanation_metrics` holds the definitions):

1. Localization on every test image: pointing game (tolerance `pointing_tolerance` px at
   `pointing_reference_size` px, scaled to the image size), energy pointing game, relevance rank
   accuracy; np.nanmean overall and per class.
2. Faithfulness on the first `faithfulness_images`: deletion (to 0 in the normalised space, the
   data mean) and insertion (from a Gaussian-blurred copy, RISE's σ = 5 px, 11 taps) curves of
   the label's softmax probability, `steps` steps, in the map's order and in a random order.
3. Sanity check (Adebayo et al. 2018) on the first `sanity_images`: cascading randomisation from
   the top (head, [neck,] the last stage, ..., the stem), CAM and GradMap recomputed after each
   step, Spearman rank correlation and SSIM against the trained maps. A map type fails when the
   mean |Spearman| after randomising the head and the last stage is above `sanity_threshold`.
4. Network Dissection of the last layer: per-filter 0.995-quantile thresholds, IoU of each
   filter's thresholded map with each class's object masks, detectors at IoU > 0.04, and how
   often a detector's class is the filter's assigned class.

Everything is streamed in batches of `batch_size`: two forward passes over the split (profile,
then maps + scores + dissection counts), host memory O(N + K·C) plus the subsets kept for
faithfulness and the sanity check, and the activations kept for the dissection thresholds
(at most `dissection_max_values` floats). `export_maps=DIR` writes DIR/<run>.npz through
memory-mapped temporaries (bounded memory too).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import methods
from csg_jax.data import augment
from csg_jax.errors import CSGError
from csg_jax.evaluation import explain
from csg_jax.evaluation import explanation_metrics as em
from csg_jax.evaluation import localization
from csg_jax.evaluation import plots
from csg_jax.log import log
from csg_jax.text import number

MAP_TYPES = ("cam", "gradmap", "filters")
SANITY_MAP_TYPES = ("cam", "gradmap")
MAP_TITLES = {"cam": "CAM", "gradmap": "gradient map", "filters": "class filters",
              "random": "random order"}
LOCALIZATION_METRICS = ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy")
MapFn = Callable[[Any, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def default_config() -> ml_collections.ConfigDict:
  """Explanation-quality settings (--app.explanations.<field>)."""
  c = ml_collections.ConfigDict()
  c.maps = MAP_TYPES  # which of cam, gradmap, filters to judge
  c.batch_size = 50  # test images per step
  c.num_filters = 30  # gradmap: the class's top filters by mean activation (at most K)
  c.pointing_tolerance = 15.0  # pointing game tolerance in px at pointing_reference_size
  c.pointing_reference_size = 224  # the tolerance scales by max(H, W) / this; 0: no scaling
  c.faithfulness_images = 100  # first test images of the deletion/insertion curves (0: none)
  c.steps = 16  # deletion/insertion steps (curves of steps + 1 points)
  c.patch = 1  # units of patch x patch pixels
  c.insertion_blur_sigma = 5.0  # insertion starts from the image blurred with this σ (px)
  c.insertion_blur_kernel = 11  # and this many taps (RISE: 11, σ = 5)
  c.faithfulness_batch_size = 136  # perturbed images per forward pass
  c.sanity_images = 32  # first test images of the sanity check (0: none)
  c.sanity_threshold = 0.5  # fail: mean |Spearman| above this after head + last stage
  c.sanity_figure_images = 3  # images in the sanity-check figure (0: no figure)
  c.dissection_quantile = 0.995  # per-filter activation threshold (top 0.5 %)
  c.dissection_iou = 0.04  # a filter is a detector when its best class IoU > this
  c.dissection_max_values = 1 << 26  # activations kept for the thresholds (first images)
  c.export_images = 0  # images written by --export_maps (0: all)
  c.seed = 0  # random deletion order and the re-initialisation of the sanity check
  return c


def validate_config(c) -> None:
  """Raises CSGError naming the first bad explanations setting."""
  unknown = set(c.maps) - set(MAP_TYPES)
  if unknown or not c.maps:
    raise CSGError(f"explanations.maps is {tuple(c.maps)}: choose from {MAP_TYPES}")
  for field in ("batch_size", "num_filters", "steps", "patch", "faithfulness_batch_size",
                "insertion_blur_kernel"):
    if c[field] < 1:
      raise CSGError(f"explanations.{field} is {c[field]}: set it to a positive integer")
  for field in ("faithfulness_images", "sanity_images", "sanity_figure_images",
                "export_images", "pointing_reference_size"):
    if c[field] < 0:
      raise CSGError(f"explanations.{field} is {c[field]}: set it to >= 0")
  if c.pointing_tolerance < 0:
    raise CSGError(f"explanations.pointing_tolerance is {c.pointing_tolerance}: set it to >= 0 "
                   "pixels")
  if not 0 <= c.dissection_quantile <= 1:
    raise CSGError(f"explanations.dissection_quantile is {c.dissection_quantile}: set it in "
                   "[0, 1] (0.995: each filter's top 0.5 %)")
  if c.insertion_blur_sigma <= 0:
    raise CSGError(f"explanations.insertion_blur_sigma is {c.insertion_blur_sigma}: set it > 0")


def pointing_tolerance(cfg, image_hw: Sequence[int]) -> float:
  """The pointing game's tolerance in pixels of these images (15 px at 224 px, scaled)."""
  if not cfg.pointing_reference_size:
    return float(cfg.pointing_tolerance)
  return float(cfg.pointing_tolerance) * max(image_hw) / cfg.pointing_reference_size


# ---------------------------------------------------------------------------------------------
# Maps.
# ---------------------------------------------------------------------------------------------


def class_members(assigned: np.ndarray | None, num_classes: int) -> np.ndarray | None:
  """[C, K] float32 0/1: filter k is assigned to class c (assigned [K], -1: none)."""
  if assigned is None:
    return None
  assigned = np.asarray(assigned)
  return (assigned[None, :] == np.arange(num_classes)[:, None]).astype(np.float32)


def make_map_fn(model, image_hw: Sequence[int], map_hw: Sequence[int], gradmap_sigma: float,
                gradmap_kernel_size: int = 0) -> Callable:
  """jit (variables, images, labels, top_filters [C, F], members [C, K]) -> outputs.

  Outputs: 'cam', 'gradmap', 'filters' [B, H, W] float32, 'feature_map' [B, h, w, K],
  'logits' [B, C]. One forward and one backward pass per batch.
  """
  h, w = image_hw
  up_h, up_w = (jnp.asarray(localization.bilinear_matrix(h, map_hw[0])),
                jnp.asarray(localization.bilinear_matrix(w, map_hw[1])))
  blur_h = jnp.asarray(localization.gaussian_blur_matrix(h, gradmap_sigma, gradmap_kernel_size))
  blur_w = jnp.asarray(localization.gaussian_blur_matrix(w, gradmap_sigma, gradmap_kernel_size))

  def forward(variables, x):
    out = model.apply(variables, x, train=False)
    fmap = out["feature_map"].astype(jnp.float32)
    return fmap.mean(axis=(1, 2)), (fmap, out["logits"].astype(jnp.float32))

  @jax.jit
  def fn(variables, images, labels, top_filters, members):
    _, vjp_fn, (fmap, logits) = jax.vjp(lambda x: forward(variables, x), images, has_aux=True)
    k = fmap.shape[-1]
    kernel = variables["params"]["head"]["kernel"].astype(jnp.float32)  # [K, C]
    cam = jnp.einsum("bhwk,bk->bhw", fmap, kernel[:, labels].T)
    chosen = jax.nn.one_hot(top_filters[labels], k, dtype=jnp.float32).max(axis=1)  # [B, K]
    grads = vjp_fn(chosen)[0]
    return {"cam": jnp.einsum("yh,bhw,xw->byx", up_h, cam, up_w),
            "gradmap": localization.gradmap_map(grads, blur_h, blur_w),
            "filters": jnp.einsum("yh,bhwk,bk,xw->byx", up_h, fmap, members[labels], up_w),
            "feature_map": fmap, "logits": logits}

  return fn


# ---------------------------------------------------------------------------------------------
# Localization scores.
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("tolerance",))
def score_localization(maps, masks, *, tolerance: float) -> dict[str, jnp.ndarray]:
  """{metric: [N] float32 (NaN: undefined)} of maps [N, H, W] against masks [N, H, W]."""
  return {"pointing_game": em.pointing_game(maps, masks, tolerance),
          "energy_pointing_game": em.energy_pointing_game(maps, masks),
          "relevance_rank_accuracy": em.relevance_rank_accuracy(maps, masks)}


def _nanmean(values: np.ndarray) -> float | None:
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else None


def summarize_localization(scores: Mapping[str, np.ndarray], labels: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
  """np.nanmean of each metric's per-image scores [N], overall and per class (None: no image
  where the metric is defined)."""
  labels = np.asarray(labels)
  out: dict[str, Any] = {m: _nanmean(scores[m]) for m in LOCALIZATION_METRICS}
  out["per_class"] = {
      name: {m: _nanmean(np.asarray(scores[m])[labels == c]) for m in LOCALIZATION_METRICS}
      | {"num_images": int((labels == c).sum())}
      for c, name in enumerate(class_names)}
  return out


# ---------------------------------------------------------------------------------------------
# Sanity check: cascading randomisation.
# ---------------------------------------------------------------------------------------------


def _natural_key(name: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def cascade_groups(params: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, ...]]]]:
  """[(step name, [param paths])] from the top: head, neck, the backbone's stages (all blocks
  of a stage together) from the last, other backbone modules from the last, the stem last."""
  groups: list[tuple[str, list[tuple[str, ...]]]] = []
  if "head" in params:
    groups.append(("head", [("head",)]))
  if "neck" in params:
    groups.append(("neck", [("neck",)]))
  backbone = params.get("backbone", {})
  stages: dict[int, list[str]] = {}
  stem, others = [], []
  for name in backbone:
    match = re.fullmatch(r"stage(\d+)_block\d+", name)
    if match:
      stages.setdefault(int(match.group(1)), []).append(name)
    elif name.startswith("stem"):
      stem.append(name)
    else:
      others.append(name)
  for s in sorted(stages, reverse=True):
    groups.append((f"stage{s}", [("backbone", n) for n in sorted(stages[s], key=_natural_key)]))
  for name in sorted(others, key=_natural_key, reverse=True):
    groups.append((name, [("backbone", name)]))
  if stem:
    groups.append(("stem", [("backbone", n) for n in sorted(stem)]))
  return groups


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _replace(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def _unzero_scales(tree):
  """Batch-norm scales that the init sets to zero (zero-init residual) become ones: otherwise a
  re-initialised block is the identity and randomising it changes nothing."""
  if isinstance(tree, Mapping):
    return {k: (jnp.ones_like(v) if k == "scale" and not isinstance(v, Mapping)
                and not np.any(np.asarray(v)) else _unzero_scales(v)) for k, v in tree.items()}
  return tree


def cascade_variables(model, variables: Mapping[str, Any], image_shape: Sequence[int],
                      seed: int = 0) -> list[tuple[str, list[str], dict[str, Any]]]:
  """[(step name, randomised modules so far, variables)]: cascading re-initialisation from the
  top with `model.init` (PRNGKey(seed)); params and batch statistics of each module replaced."""
  fresh = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape), jnp.float32),
                     train=False)
  fresh = {**fresh, "params": _unzero_scales(fresh["params"])}
  current = {k: v for k, v in variables.items()}
  steps, done = [], []
  for name, paths in cascade_groups(variables["params"]):
    for path in paths:
      for collection in ("params", "batch_stats"):
        if collection in current and collection in fresh:
          try:
            value = _get(fresh[collection], path)
            _get(current[collection], path)
          except KeyError:
            continue
          current = {**current, collection: _replace(current[collection], path, value)}
    done.append(name)
    steps.append((name, list(done), current))
  return steps


def sanity_check(map_fns: Mapping[str, MapFn], trained_variables, steps, images, labels, *,
                 threshold: float, keep: int = 0) -> dict[str, Any]:
  """Spearman and SSIM of each map type after each cascade step against its trained maps.

  map_fns: {type: fn(variables, images, labels) -> [N, H, W]}; steps: `cascade_variables(...)`.
  The check step is the first that randomised a backbone module (head + last stage), or the
  last step; a type fails when its mean |Spearman| there is above `threshold` or undefined
  (a constant map). `keep` images' maps are returned under 'example_maps' for a figure.
  """
  trained = {t: np.asarray(fn(trained_variables, images, labels)) for t, fn in map_fns.items()}
  rows, examples = [], {t: [trained[t][:keep]] for t in map_fns}
  for name, randomised, variables in steps:
    row = {"name": name, "randomized": randomised, "maps": {}}
    for t, fn in map_fns.items():
      maps = np.asarray(fn(variables, images, labels))
      rho = np.asarray(em.spearman_rank_correlation(trained[t], maps), np.float64)
      row["maps"][t] = {"spearman": _nanmean(rho), "abs_spearman": _nanmean(np.abs(rho)),
                        "ssim": _nanmean(np.asarray(em.ssim(trained[t], maps)))}
      examples[t].append(maps[:keep])
    rows.append(row)
  check = next((i for i, r in enumerate(rows) if any(m not in ("head", "neck")
                                                    for m in r["randomized"])), len(rows) - 1)
  verdict = {}
  for t in map_fns:
    value = rows[check]["maps"][t]["abs_spearman"] if rows else None
    passed = value is not None and value <= threshold
    where = " + ".join(rows[check]["randomized"]) if rows else "nothing"
    if value is None:
      message = (f"FAIL: the {MAP_TITLES.get(t, t)} is constant (no rank correlation), so it "
                 "cannot show what the weights learned")
    elif passed:
      message = (f"pass: after randomising {where} the {MAP_TITLES.get(t, t)} changes "
                 f"(mean |Spearman| {value:.2f} <= {threshold})")
    else:
      message = (f"FAIL: after randomising {where} the {MAP_TITLES.get(t, t)} still looks like "
                 f"the trained one (mean |Spearman| {value:.2f} > {threshold}): it does not "
                 "depend on the learned weights")
    verdict[t] = {"passed": bool(passed), "abs_spearman": value, "message": message}
  return {"num_images": int(len(labels)), "threshold": float(threshold), "steps": rows,
          "check_step": rows[check]["name"] if rows else None, "verdict": verdict,
          "example_maps": {t: np.stack(v) for t, v in examples.items()} if keep else None}


# ---------------------------------------------------------------------------------------------
# The streamed evaluation.
# ---------------------------------------------------------------------------------------------


def _read_batches(dataset, data_config, num: int, batch_size: int):
  """(raw uint8 [B, H, W, C] padded, normalised float32, labels [B] padded, valid count, lo)."""
  split = dataset.splits["test"]
  mean, std = data_lib.normalization(dataset, data_config)
  for lo in range(0, num, batch_size):
    idx = np.arange(lo, min(num, lo + batch_size))
    raw, labels = split.read(idx)
    count = len(idx)
    if count < batch_size:  # pad to a fixed shape: one compilation
      raw = np.concatenate([raw, np.zeros((batch_size - count,) + raw.shape[1:], raw.dtype)])
      labels = np.concatenate([labels, np.zeros(batch_size - count, labels.dtype)])
    yield raw, augment.normalize(raw, mean, std), labels.astype(np.int32), count, lo


def _filter_classes(run, workdir: str | None) -> tuple[explain.FilterClasses, str | None]:
  gate = methods.class_matrix(run.config, run.state.gates)
  mi = explain.load_mi_matrix(workdir, int(run.step)) if workdir else None
  classes = explain.FilterClasses(gate=None if gate is None else np.asarray(gate), mi=mi)
  if gate is None and mi is None:
    return classes, None
  return classes, classes.assigned_by


def evaluate(run, masks: np.ndarray, cfg, *, workdir: str | None = None,
             export_path: str | None = None, out_dir: str | None = None) -> dict[str, Any]:
  """Explanation quality of a trained run on its test split (masks [N, H, W] object masks).

  Returns the JSON-able report; with `export_path`, writes the maps there (.npz); with
  `out_dir`, the curves and sanity-check figures.
  """
  validate_config(cfg)
  start = time.perf_counter()
  timings: dict[str, float] = {}
  model, dataset, config = run.model, run.dataset, run.config
  num = len(dataset.splits["test"])
  image_shape = tuple(dataset.image_shape)
  hw = image_shape[:2]
  names = list(dataset.class_names)
  num_classes = dataset.num_classes
  if masks.shape[0] != num or tuple(masks.shape[1:3]) != hw:
    raise CSGError(f"object masks have shape {tuple(masks.shape)} for {num} test images of "
                   f"{hw[0]}x{hw[1]}: rebuild the data set and its masks together")
  if num == 0:
    raise CSGError("the test split is empty: explanations need test images with object masks")
  variables = jax.device_get(run.state.variables())  # one device: small evaluation programs
  probe = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)["feature_map"], variables,
                         jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  map_hw, k = probe.shape[1:3], probe.shape[3]
  bs = cfg.batch_size
  notes = []
  classes, assigned_by = _filter_classes(run, workdir)
  assigned = None if assigned_by is None else np.asarray(classes.assigned)
  types = [t for t in cfg.maps if t != "filters" or assigned is not None]
  if "filters" in cfg.maps and assigned is None:
    notes.append("class-filters map skipped: the run has no class matrix (STD) and no MI matrix "
                 "for this step (run csg-evaluate on it first)")
  members = class_members(assigned, num_classes)
  members_dev = jnp.asarray(members if members is not None else np.zeros((num_classes, k),
                                                                          np.float32))
  sigma = localization.blur_sigma(localization.default_config(), max(hw))
  map_fn = make_map_fn(model, hw, map_hw, sigma)
  tolerance = pointing_tolerance(cfg, hw)

  # Pass 1: class means of the pooled activations (gradmap's filters), dissection activations.
  t0 = time.perf_counter()
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)["feature_map"].astype(
      jnp.float32))
  sums, counts = np.zeros((num_classes, k)), np.zeros(num_classes)
  kept, kept_values = [], 0
  for _, images, labels, count, _ in _read_batches(dataset, config.data, num, bs):
    fmap = np.asarray(forward(variables, images))[:count]
    np.add.at(sums, labels[:count], fmap.mean(axis=(1, 2)))
    counts += np.bincount(labels[:count], minlength=num_classes)
    if kept_values < cfg.dissection_max_values:
      kept.append(fmap)
      kept_values += fmap.size
  top = np.argsort(-(sums / np.maximum(counts, 1)[:, None]), axis=1, kind="stable")
  top_filters = jnp.asarray(top[:, :min(cfg.num_filters, k)].astype(np.int32))
  acts = np.concatenate(kept)
  thresholds = em.filter_thresholds(acts, cfg.dissection_quantile)
  threshold_images = int(acts.shape[0])
  del kept, acts
  timings["profile_s"] = time.perf_counter() - t0

  # Pass 2: maps, localization scores, dissection counts; subsets kept for later parts.
  t0 = time.perf_counter()
  n_faith = min(cfg.faithfulness_images, num)
  n_sanity = min(cfg.sanity_images, num)
  n_export = min(cfg.export_images or num, num) if export_path else 0
  n_keep = max(n_faith, n_sanity)
  scores = {t: {m: [] for m in LOCALIZATION_METRICS} for t in types}
  all_labels, predictions = [], []
  kept_maps = {t: [] for t in types}
  kept_images, kept_norm = [], []
  inter = np.zeros((k, num_classes), np.int64)
  union = np.zeros((k, num_classes), np.int64)
  with tempfile.TemporaryDirectory(prefix="csg_jax-export-") as tmp_dir:
    export = _open_export(tmp_dir, types, n_export, hw, image_shape) if n_export else None
    for raw, images, labels, count, lo in _read_batches(dataset, config.data, num, bs):
      batch_masks = np.zeros((bs,) + hw, bool)
      batch_masks[:count] = np.asarray(masks[lo:lo + count]) > 0
      out = map_fn(variables, images, labels, top_filters, members_dev)
      valid = np.arange(bs) < count
      for t in types:
        s = jax.device_get(score_localization(out[t], batch_masks, tolerance=tolerance))
        for m in LOCALIZATION_METRICS:
          scores[t][m].append(np.asarray(s[m])[:count])
      i, u = em.dissection_counts(out["feature_map"], thresholds, batch_masks, labels,
                                  num_classes, valid=valid)
      inter += np.asarray(i, np.int64)
      union += np.asarray(u, np.int64)
      pred = np.asarray(jnp.argmax(out["logits"], axis=1))[:count]
      all_labels.append(labels[:count])
      predictions.append(pred)
      host = {t: np.asarray(out[t])[:count] for t in types}
      if lo < n_keep:
        take = min(count, n_keep - lo)
        for t in types:
          kept_maps[t].append(host[t][:take])
        kept_images.append(raw[:take])
        kept_norm.append(images[:take])
      if export is not None and lo < n_export:
        take = min(count, n_export - lo)
        sl = slice(lo, lo + take)
        for t in types:
          export[f"maps_{t}"][sl] = host[t][:take]
        export["masks"][sl] = batch_masks[:take]
        export["labels"][sl] = labels[:take]
        export["predictions"][sl] = pred[:take]
        export["images"][sl] = raw[:take]
    labels_np = np.concatenate(all_labels)
    timings["maps_s"] = time.perf_counter() - t0
    result: dict[str, Any] = {
        "num_images": int(num), "image_hw": [int(hw[0]), int(hw[1])], "map_types": types,
        "notes": notes, "assigned_by": assigned_by,
        "accuracy": float((np.concatenate(predictions) == labels_np).mean()),
        "gradmap_filters": (f"gradient of the summed pooled activations of the class's top "
                            f"{int(top_filters.shape[1])} filters by mean activation"),
        "pointing_tolerance_px": tolerance,
        "localization": {t: summarize_localization({m: np.concatenate(v) for m, v in
                                                    scores[t].items()}, labels_np, names)
                         for t in types}}
    for t in types:
      loc = result["localization"][t]
      log(f"  explanations {t}: pointing game {number(loc['pointing_game'], 3)}, energy "
          f"{number(loc['energy_pointing_game'], 3)}, rank accuracy "
          f"{number(loc['relevance_rank_accuracy'], 3)}")

    kept_maps = {t: np.concatenate(v) if v else np.zeros((0,) + hw, np.float32)
                 for t, v in kept_maps.items()}
    norm = np.concatenate(kept_norm) if kept_norm else np.zeros((0, *image_shape), np.float32)
    raw_kept = np.concatenate(kept_images) if kept_images else np.zeros((0, *image_shape),
                                                                        np.uint8)

    # Faithfulness.
    curves = {}
    if n_faith:
      t0 = time.perf_counter()
      result["faithfulness"], curves = _faithfulness(
          model, variables, norm[:n_faith], labels_np[:n_faith],
          {t: kept_maps[t][:n_faith] for t in types}, cfg)
      timings["faithfulness_s"] = time.perf_counter() - t0

    # Sanity check.
    sanity_examples = None
    if n_sanity:
      t0 = time.perf_counter()

      def fn_of(t):  # batches of bs images (padded): the compiled map function is reused
        def fn(v, x, y):
          parts = []
          for lo in range(0, len(y), bs):
            xb, yb = np.asarray(x[lo:lo + bs]), np.asarray(y[lo:lo + bs])
            pad = bs - len(yb)
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
            parts.append(np.asarray(map_fn(v, xb, yb, top_filters, members_dev)[t])[:bs - pad])
          return np.concatenate(parts)
        return fn

      steps = cascade_variables(model, variables, image_shape, cfg.seed)
      keep = min(cfg.sanity_figure_images, n_sanity)
      sanity = sanity_check({t: fn_of(t) for t in SANITY_MAP_TYPES if t in types}, variables,
                            steps, jnp.asarray(norm[:n_sanity]),
                            jnp.asarray(labels_np[:n_sanity]),
                            threshold=cfg.sanity_threshold, keep=keep)
      sanity_examples = sanity.pop("example_maps")
      result["sanity"] = sanity
      timings["sanity_s"] = time.perf_counter() - t0
      for t, v in sanity["verdict"].items():
        log(f"  sanity check {t}: {v['message']}")

    # Dissection.
    iou = em.dissection_iou(inter, union)
    det = em.detectors(iou, cfg.dissection_iou)
    is_det = det["is_detector"]
    agree = None
    if assigned is not None and is_det.any():
      agree = float((det["best_class"][is_det] == assigned[is_det]).mean())
    result["dissection"] = {
        "quantile": float(cfg.dissection_quantile), "iou_threshold": float(cfg.dissection_iou),
        "threshold_images": threshold_images, "num_filters": int(k),
        "num_detectors": det["num_detectors"], "num_classes_detected": det["num_unique_classes"],
        "detector_classes": {names[c]: int(((det["best_class"] == c) & is_det).sum())
                             for c in range(num_classes)},
        "assigned_by": assigned_by, "detector_class_matches_assigned": agree,
        "best_iou": det["best_iou"].tolist(), "best_class": det["best_class"].tolist()}
    log(f"  dissection: {det['num_detectors']}/{k} detectors of {det['num_unique_classes']} "
        f"classes; detected class = assigned class for {number(agree, 3)} of them")

    if export is not None:
      for t in types:
        if t in curves:
          export[f"deletion_{t}"], export[f"insertion_{t}"] = curves[t]
      if "random" in curves:
        export["deletion_random"], export["insertion_random"] = curves["random"]
      export["tolerance"] = np.float32(tolerance)
      _write_export(export_path, export)
      result["export"] = export_path
      log(f"  explanation maps of {n_export} images -> {export_path}")
  if out_dir:
    title = f"{config.method.upper()}: {fileio.name(workdir) if workdir else ''}"
    if "faithfulness" in result:
      curves_figure(fileio.join(out_dir, "explanation_curves.png"),
                    {config.method.upper(): result}, title=f"Deletion / insertion ({title})")
    if sanity_examples is not None and len(raw_kept):
      sanity_figure(fileio.join(out_dir, "sanity_check.png"), raw_kept[:len(
          next(iter(sanity_examples.values()))[0])], sanity_examples,
          ["trained"] + [s["name"] for s in result["sanity"]["steps"]],
          title=f"Cascading randomisation ({title})")
  timings["total_s"] = time.perf_counter() - start
  result["timings"] = timings
  return result


def _faithfulness(model, variables, images, labels, maps, cfg):
  """Mean deletion/insertion AUCs and curves per map type and for a random order."""

  @jax.jit
  def predict(x):
    return jax.nn.softmax(model.apply(variables, x, train=False)["logits"].astype(jnp.float32))

  images = jnp.asarray(images)
  blurred = em.blurred_baseline(images, cfg.insertion_blur_sigma, cfg.insertion_blur_kernel)
  orders = {**{t: ("map", maps[t]) for t in maps},
            "random": ("random", next(iter(maps.values())))}
  out = {"num_images": int(len(labels)), "steps": int(cfg.steps), "patch": int(cfg.patch),
         "deletion_baseline": "0 in the normalised space (the data mean)",
         "insertion_baseline": (f"the image blurred with a Gaussian of σ = "
                                f"{cfg.insertion_blur_sigma} px, {cfg.insertion_blur_kernel} "
                                "taps"),
         "probability": "softmax probability of the label class", "orders": {}}
  curves = {}
  for name, (order, m) in orders.items():
    t0 = time.perf_counter()
    c = em.deletion_insertion_curves(predict, images, m, labels, steps=cfg.steps, baseline=0.0,
                                     insertion_baseline=blurred, patch=cfg.patch, order=order,
                                     rng=jax.random.PRNGKey(cfg.seed),
                                     batch_size=cfg.faithfulness_batch_size)
    seconds = time.perf_counter() - t0
    curves[name] = (c["deletion"].astype(np.float32), c["insertion"].astype(np.float32))
    out["fraction"] = c["fraction"].tolist()
    out["orders"][name] = {
        "deletion_auc": float(em.auc(c["deletion"]).mean()),
        "insertion_auc": float(em.auc(c["insertion"]).mean()),
        "deletion_curve": c["deletion"].mean(axis=0).tolist(),
        "insertion_curve": c["insertion"].mean(axis=0).tolist(),
        "seconds_per_image": seconds / len(labels)}
    log(f"  faithfulness {name}: deletion AUC {out['orders'][name]['deletion_auc']:.3f}, "
        f"insertion AUC {out['orders'][name]['insertion_auc']:.3f} "
        f"({seconds / len(labels) * 1e3:.0f} ms per image)")
  return out, curves


# ---------------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------------


def _open_export(tmp_dir: str, types, n: int, hw, image_shape) -> dict[str, Any]:
  """Memory-mapped .npy arrays of the export, filled batch by batch."""
  def mm(name, shape, dtype):
    return np.lib.format.open_memmap(os.path.join(tmp_dir, name + ".npy"), mode="w+",
                                     dtype=dtype, shape=shape)
  out = {f"maps_{t}": mm(f"maps_{t}", (n, *hw), np.float32) for t in types}
  out["masks"] = mm("masks", (n, *hw), bool)
  out["labels"] = mm("labels", (n,), np.int32)
  out["predictions"] = mm("predictions", (n,), np.int32)
  out["images"] = mm("images", (n, *image_shape), np.uint8)
  return out


def _write_export(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """One .npz, written atomically; memory-mapped arrays are streamed into the zip."""
  parent = os.path.dirname(path)
  if parent:
    fileio.makedirs(parent)
  with fileio.atomic_file(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


def curves_figure(path: str, reports: Mapping[str, Mapping[str, Any]], *, title: str) -> None:
  """Mean deletion and insertion curves of runs {label: explanations report}, random dashed."""
  fig, axes = plots.plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
  for ax, kind in zip(axes[0], ("deletion", "insertion")):
    for label, rep in reports.items():
      faith = rep.get("faithfulness")
      if not faith:
        continue
      for name, o in faith["orders"].items():
        ax.plot(faith["fraction"], o[f"{kind}_curve"], ls="--" if name == "random" else "-",
                label=f"{label} {MAP_TITLES.get(name, name)} (AUC {o[f'{kind}_auc']:.3f})")
    ax.set_title(kind)
    ax.set_xlabel("share of pixels " + ("removed" if kind == "deletion" else "revealed"))
    ax.set_ylabel("probability of the label class")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  plots._save(fig, path, dpi=100)  # pylint: disable=protected-access


def sanity_figure(path: str, images: np.ndarray, maps: Mapping[str, np.ndarray],
                  columns: Sequence[str], *, title: str) -> None:
  """Rows: (image, map type); columns: the image, the trained map, after each step.

  maps: {type: [1 + steps, n, H, W]}; each map min-max normalised on its own.
  """
  n = len(images)
  rows = [(i, t) for i in range(n) for t in maps]
  fig, axes = plots.plt.subplots(len(rows), len(columns) + 1, squeeze=False,
                                 figsize=(1.4 * (len(columns) + 1), 1.4 * len(rows)))
  for r, (i, t) in enumerate(rows):
    axes[r, 0].imshow(images[i])
    axes[r, 0].set_ylabel(MAP_TITLES.get(t, t), fontsize=7)
    for c in range(len(columns)):
      m = np.asarray(em.minmax_normalize(maps[t][c, i][None]))[0]
      axes[r, c + 1].imshow(m, cmap="jet", vmin=0, vmax=1)
      if r == 0:
        axes[r, c + 1].set_title(("+" if c > 1 else "") + columns[c], fontsize=7)
    for ax in axes[r]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  plots._save(fig, path, dpi=100)  # pylint: disable=protected-access
