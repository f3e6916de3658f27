"""Per-image explanations and the filter atlas: what a prediction is made of, filter by filter.

The logit of class c is a sum over the last conv layer's filters, logit_c = Σ_k W[c, k]·f_k + b_c,
with f_k the pooled (mean) activation of filter k. An explanation lists each filter's share
W[c, k]·f_k of the predicted logit, the filters that gave most with the class each one serves
(by the gate, the argmax over G's column, and by mutual information when the run has been
evaluated), their activation maps and the class activation map CAM_c = Σ_k W[c, k]·A_k.

`scan_split` reads a split once and keeps, per filter, its top-k images by mean activation (the
atlas) and the largest activation anywhere in the split, which fixes the colour scale of that
filter's maps; no activation beyond the running top-k is kept. Both run in one process.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax.data import augment
from csg_jax.data import folder
from csg_jax.errors import CSGError
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation.localization import bilinear_matrix
from csg_jax import sharding


CLOSED = -1  # the gate class of a filter whose gate column is all zero: it serves no class


@dataclasses.dataclass(frozen=True)
class FilterClasses:
  """Which class each filter serves, by the method's class matrix [C, K] (`gate`: CSG's G,
  PICNN's softmax(Θ)) and by the MI matrix M [C, K] (evaluated runs); either may be None.
  `label` names the class matrix in figure notes ("gate", "Θ")."""
  gate: np.ndarray | None = None
  mi: np.ndarray | None = None
  label: str = "gate"

  @property
  def gate_class(self) -> np.ndarray | None:
    """[K] argmax of each gate column; CLOSED where the column is all zero."""
    if self.gate is None:
      return None
    return np.where(self.gate.max(axis=0) > 0, mis_lib.assigned_class_from_gate(self.gate),
                    CLOSED)

  @property
  def mi_class(self) -> np.ndarray | None:
    return None if self.mi is None else mis_lib.assigned_class_from_mi(self.mi)

  @property
  def assigned_by(self) -> str:
    """The assignment figures group and colour by: the gate where there is one, else MI."""
    if self.gate is None and self.mi is None:
      raise CSGError("no filter-class assignment: the run has no gate and no MI matrix "
                     "(evaluate it first with csg-evaluate)")
    return "gate" if self.gate is not None else "mi"

  @property
  def assigned(self) -> np.ndarray:
    """[K] class of each filter by `assigned_by`."""
    return self.gate_class if self.assigned_by == "gate" else self.mi_class

  @property
  def strength(self) -> np.ndarray:
    """[K] the assignment's value: the gate entry, or the MI in nats."""
    matrix = self.gate if self.assigned_by == "gate" else self.mi
    return matrix.max(axis=0)

  def describe(self, k: int, class_names: Sequence[str]) -> dict[str, object]:
    """Filter k's classes and their values, by every assignment the run has (a closed
    filter's gate class is None)."""
    out: dict[str, object] = {}
    if self.gate is not None:
      c = int(self.gate_class[k])
      if c == CLOSED:
        out.update(gate_class=None, gate_class_name=None, gate_value=0.0)
      else:
        out.update(gate_class=c, gate_class_name=class_names[c],
                   gate_value=float(self.gate[c, k]))
    if self.mi is not None:
      c = int(self.mi_class[k])
      out.update(mi_class=c, mi_class_name=class_names[c], mi_nats=float(self.mi[c, k]))
    return out


def load_mi_matrix(workdir: str, step: int) -> np.ndarray | None:
  """<workdir>/eval/mi_matrix.npy when csg-evaluate wrote it for the test split at `step`."""
  report_path = fileio.join(workdir, "eval", "report.json")
  matrix_path = fileio.join(workdir, "eval", "mi_matrix.npy")
  if not (fileio.exists(report_path) and fileio.exists(matrix_path)):
    return None
  report = fileio.read_json(report_path)
  if report.get("step") != step or report.get("split") != "test":
    return None
  with fileio.open_read(matrix_path) as f:
    return np.load(f)


def load_image_file(path: str, image_shape: Sequence[int]) -> np.ndarray:
  """An image file as the run's input: uint8 [H, W, C], decoded as the folder source decodes
  (EXIF rotation, palettes and alpha resolved), resized bilinearly, grey when C is 1."""
  height, width, channels = image_shape
  try:
    image = Image.fromarray(folder.decode_image(fileio.read_bytes(path), None))
  except FileNotFoundError:
    raise CSGError(f"image file {path!r} does not exist") from None
  except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
    raise CSGError(f"cannot read image {path!r}: {e}") from None
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  if channels == 1:
    image = image.convert("L")
  return np.asarray(image).reshape(height, width, channels)


# ---------------------------------------------------------------------------------------------
# The forward pass.
# ---------------------------------------------------------------------------------------------


def head_weights(state) -> tuple:
  """(W [K, C], b [C]) of the linear head, float32 on the host."""
  head = jax.device_get(state.params["head"])
  return np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)


def make_forward_fn(model, mesh) -> Callable:
  """jit: (state, normalised images [B, H, W, C]) -> logits, pooled features and the float32
  feature map; B a multiple of the mesh's size (the batch is sharded, the state replicated)."""

  def forward(state, images):
    out = model.apply(state.variables(), images, train=False)
    return {"logits": out["logits"], "features": out["features"],
            "feature_map": out["feature_map"].astype(jnp.float32)}

  return jax.jit(forward, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def forward_images(run, forward_fn, images: np.ndarray) -> dict[str, np.ndarray]:
  """forward_fn over uint8 images [N, H, W, C] in batches of eval_batch_size; numpy outputs."""
  batch = run.config.eval_batch_size
  chunks = []
  for start in range(0, len(images), batch):
    part = augment.normalize(images[start:start + batch], *run.dataset.statistics)
    padded = np.zeros((batch,) + part.shape[1:], np.float32)
    padded[:len(part)] = part
    out = jax.device_get(forward_fn(run.state, sharding.to_global(padded, run.mesh)))
    chunks.append({k: np.asarray(v)[:len(part)] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """[..., h, w] maps -> [..., height, width], bilinear (as the localization metrics' CAM)."""
  up_h = bilinear_matrix(height, maps.shape[-2])
  up_w = bilinear_matrix(width, maps.shape[-1])
  return np.einsum("yh,...hw,xw->...yx", up_h, maps, up_w)


# ---------------------------------------------------------------------------------------------
# Per-image explanations.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Explanation:
  """One image's prediction taken apart. contributions.sum() + bias == logit (float32 sums)."""
  source: str  # "test[12]" or the image file
  image: np.ndarray  # uint8 [H, W, C], as the model saw it before normalisation
  label: int | None  # None for an image file
  probabilities: np.ndarray  # [C]
  predicted: int
  logit: float  # the model's logit of the predicted class
  bias: float  # b[predicted]
  activations: np.ndarray  # [K] pooled f_k
  contributions: np.ndarray  # [K] W[predicted, k]·f_k
  top_filters: np.ndarray  # [n] filters by contribution, largest first
  filter_maps: np.ndarray  # [n, H, W] their activation maps, upsampled to the image
  cam: np.ndarray  # [H, W] CAM of the predicted class, upsampled to the image


def explain_images(run, images: np.ndarray, sources: Sequence[str],
                   labels: Sequence[int | None] | None = None, *, num_filters: int = 5,
                   forward_fn: Callable | None = None) -> list[Explanation]:
  """Explanations of uint8 images [N, H, W, C] (the run's image shape) by a restored run."""
  forward_fn = forward_fn or make_forward_fn(run.model, run.mesh)
  out = forward_images(run, forward_fn, images)
  kernel, bias = head_weights(run.state)
  height, width = images.shape[1:3]
  labels = [None] * len(images) if labels is None else labels
  explanations = []
  for i in range(len(images)):
    logits = out["logits"][i].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    c = int(np.argmax(logits))
    contributions = out["features"][i] * kernel[:, c]
    top = np.argsort(-contributions, kind="stable")[:num_filters]
    fmap = np.moveaxis(out["feature_map"][i], -1, 0)  # [K, h, w]
    explanations.append(Explanation(
        source=sources[i], image=images[i], label=None if labels[i] is None else int(labels[i]),
        probabilities=probabilities / probabilities.sum(), predicted=c,
        logit=float(out["logits"][i, c]), bias=float(bias[c]), activations=out["features"][i],
        contributions=contributions, top_filters=top,
        filter_maps=upsample(fmap[top], height, width),
        cam=upsample(np.einsum("khw,k->hw", fmap, kernel[:, c]), height, width)))
  return explanations


def top_filters_of_predicted_class(e: Explanation, assigned: np.ndarray, n: int = 3) -> float:
  """Share of the n filters that give most to the prediction which serve the predicted class."""
  return float(np.mean(assigned[e.top_filters[:n]] == e.predicted))


def explanation_record(e: Explanation, classes: FilterClasses, class_names: Sequence[str],
                       *, top_classes: int = 3) -> dict[str, object]:
  """What explanations.json holds for one image: every number the figure shows, and more."""
  ranked = np.argsort(-e.probabilities, kind="stable")[:top_classes]
  return {
      "source": e.source,
      "label": e.label, "label_name": None if e.label is None else class_names[e.label],
      "predicted": e.predicted, "predicted_name": class_names[e.predicted],
      "top_classes": [{"class": int(c), "name": class_names[c],
                       "probability": float(e.probabilities[c])} for c in ranked],
      "logit": e.logit, "bias": e.bias,
      "contributions": [float(v) for v in e.contributions],
      "top_filters": [{"filter": int(k), "contribution": float(e.contributions[k]),
                       "activation": float(e.activations[k]), **classes.describe(k, class_names)}
                      for k in e.top_filters],
  }


# ---------------------------------------------------------------------------------------------
# The streamed scan of a split, and the atlas built from it.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitScan:
  """Per filter, the split's top-k images by mean activation and its largest activation."""
  split: str
  top_values: np.ndarray  # [K, k] mean activation, descending
  top_indices: np.ndarray  # [K, k] example indices in the split (ties: the lower index first)
  top_labels: np.ndarray  # [K, k]
  filter_max: np.ndarray  # [K] largest activation anywhere: the top of each filter's colour scale
  cam_max: np.ndarray  # [C] largest |CAM| of each class: the top of its CAM colour scale


def merge_top_k(values: np.ndarray, indices: np.ndarray, new_values: np.ndarray,
                new_indices: np.ndarray, k: int) -> tuple:
  """The k largest per row of [K, m] (values, indices) and [K, b] new ones; ties go to the
  lower index, so the result is that of one sort over everything, whatever the batches."""
  all_values = np.concatenate([values, new_values], axis=1)
  all_indices = np.concatenate([indices, np.broadcast_to(new_indices, new_values.shape)], axis=1)
  order = np.lexsort((all_indices, -all_values), axis=-1)[:, :k]
  return (np.take_along_axis(all_values, order, axis=1),
          np.take_along_axis(all_indices, order, axis=1))


def scan_split(run, split: str = "test", *, top_k: int = 8) -> SplitScan:
  """One pass over `split`: each filter's running top-k by mean activation, and the scales."""
  kernel, _ = head_weights(run.state)

  def step(state, images):
    out = run.model.apply(state.variables(), images, train=False)
    fmap = out["feature_map"].astype(jnp.float32)
    cam = jnp.einsum("bhwk,kc->bhwc", fmap, kernel)
    return out["features"], fmap.max(axis=(1, 2)), jnp.abs(cam).max(axis=(1, 2))

  step = jax.jit(step, in_shardings=(sharding.replicated(run.mesh),
                                     sharding.batch_sharding(run.mesh)),
                 out_shardings=sharding.replicated(run.mesh))
  k_filters, num_classes = kernel.shape
  values, indices = np.zeros((k_filters, 0), np.float32), np.zeros((k_filters, 0), np.int64)
  filter_max, cam_max = np.zeros(k_filters, np.float32), np.zeros(num_classes, np.float32)
  batch_size = run.config.eval_batch_size
  for b, batch in enumerate(data_lib.eval_batches(run.dataset, run.config.data, split=split,
                                                  global_batch_size=batch_size)):
    features, map_max, cam_abs = jax.device_get(
        step(run.state, sharding.to_global(batch["image"], run.mesh)))
    keep = np.asarray(batch["mask"], bool)  # real examples lead, padding follows
    values, indices = merge_top_k(values, indices, np.asarray(features)[keep].T,
                                  b * batch_size + np.flatnonzero(keep), top_k)
    filter_max = np.maximum(filter_max, np.asarray(map_max)[keep].max(axis=0, initial=0.0))
    cam_max = np.maximum(cam_max, np.asarray(cam_abs)[keep].max(axis=0, initial=0.0))
  labels = np.asarray(run.dataset.splits[split].labels)
  return SplitScan(split, values, indices, labels[indices], filter_max, cam_max)


def purity(top_labels: np.ndarray, assigned: np.ndarray) -> np.ndarray:
  """[K] share of each filter's top-k images whose label is the filter's assigned class (NaN
  for a closed filter, which has none)."""
  return np.where(assigned == CLOSED, np.nan, (top_labels == assigned[:, None]).mean(axis=1))


@dataclasses.dataclass
class AtlasRow:
  """One filter of an atlas page: its top-k images with its activation on its own scale."""
  filter: int
  images: np.ndarray  # uint8 [k, H, W, C]
  maps: np.ndarray  # [k, H, W], activation / the filter's largest on the split (0..1)
  labels: np.ndarray  # [k]


def atlas_order(classes: FilterClasses) -> np.ndarray:
  """Filters grouped by assigned class, the strongest assignment first within a class; closed
  filters last."""
  assigned = classes.assigned
  return np.lexsort((-classes.strength, np.where(assigned == CLOSED, assigned.max() + 1,
                                                 assigned)))


def atlas_selection(classes: FilterClasses, limit: int) -> np.ndarray:
  """At most `limit` filters of the atlas, every class in turn: each class's strongest filter,
  then each one's second strongest, and so on, open filters before closed ones; returned in
  atlas order (all of them when `limit` covers the atlas)."""
  order = atlas_order(classes)
  if limit >= len(order):
    return order
  assigned = classes.assigned[order]
  rank = np.zeros(len(order), np.int64)  # place within its class's group (0: strongest)
  for c in np.unique(assigned):
    members = np.flatnonzero(assigned == c)
    rank[members] = np.arange(len(members))
  turn = np.lexsort((np.arange(len(order)), rank, assigned == CLOSED))
  return order[np.sort(turn[:limit])]


def atlas_rows(run, scan: SplitScan, filters: Sequence[int], *,
               forward_fn: Callable | None = None) -> list[AtlasRow]:
  """The maps of `filters` on their top images (re-read and re-run: the scan kept no maps)."""
  forward_fn = forward_fn or make_forward_fn(run.model, run.mesh)
  wanted = np.unique(scan.top_indices[list(filters)])
  images, _ = run.dataset.splits[scan.split].read(wanted)
  fmaps = forward_images(run, forward_fn, images)["feature_map"]  # [n, h, w, K]
  position = {int(index): i for i, index in enumerate(wanted)}
  rows = []
  for k in filters:
    at = [position[int(index)] for index in scan.top_indices[k]]
    maps = upsample(fmaps[at, :, :, k], *images.shape[1:3])
    scale = scan.filter_max[k] if scan.filter_max[k] > 0 else 1.0
    rows.append(AtlasRow(int(k), images[at], maps / scale, scan.top_labels[k]))
  return rows


def atlas_record(scan: SplitScan, classes: FilterClasses,
                 class_names: Sequence[str]) -> dict[str, object]:
  """What atlas.json holds: per filter its classes, purity and top images."""
  purities = {by: purity(scan.top_labels, assigned) for by, assigned in
              (("gate", classes.gate_class), ("mi", classes.mi_class)) if assigned is not None}
  filters = []
  for k in atlas_order(classes):
    filters.append({
        "filter": int(k), **classes.describe(k, class_names),
        "purity": {by: None if np.isnan(p[k]) else float(p[k]) for by, p in purities.items()},
        "largest_activation": float(scan.filter_max[k]),
        "top": [{"index": int(i), "label": int(l), "label_name": class_names[l],
                 "mean_activation": float(v)}
                for i, l, v in zip(scan.top_indices[k], scan.top_labels[k], scan.top_values[k])],
    })
  return {"split": scan.split, "top_k": int(scan.top_indices.shape[1]),
          "assigned_by": classes.assigned_by,
          "mean_purity": {by: float(np.nanmean(p)) for by, p in purities.items()},  # open filters
          "filters": filters}
