"""The public interpretability metrics: the MI matrix, the mutual information score (MIS), its
ceiling, and which class each filter serves (by gate or by MI).

The estimator behind `mutual_information_matrix` (sklearn's, bit for bit, all classes at once)
is in mi_estimator.py.
"""

import numpy as np

from csg_jax.errors import CSGError
from csg_jax.evaluation.mi_estimator import check_num_classes, mutual_information_matrix

__all__ = ["assigned_class_from_gate", "assigned_class_from_mi", "filters_per_class",
           "gate_filters_per_class", "mi_ceiling", "mis", "mutual_information_matrix"]


def mis(mi_matrix) -> float:
  """Mutual information score: mean over filters of the max over classes of M[c, k]."""
  m = np.asarray(mi_matrix, dtype=np.float64)
  if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
    raise CSGError(f"mis() needs a non-empty [num_classes, num_filters] matrix, got shape "
                   f"{m.shape}.")
  if not np.all(np.isfinite(m)):
    raise CSGError("mis() got a mutual-information matrix with NaN or inf entries.")
  return float(np.mean(np.max(m, axis=0)))


def assigned_class_from_gate(gates) -> np.ndarray:
  """[K] class each filter is assigned to: argmax over classes of the gate G [C, K]."""
  return _argmax_over_classes(gates, "gates")


def assigned_class_from_mi(mi_matrix) -> np.ndarray:
  """[K] class each filter is most informative about: argmax over classes of M [C, K]."""
  return _argmax_over_classes(mi_matrix, "mi_matrix")


def filters_per_class(assigned, num_classes: int) -> np.ndarray:
  """[C] number of filters assigned to each class."""
  a = np.asarray(assigned)
  check_num_classes(num_classes)
  if a.ndim != 1:
    raise CSGError(f"filters_per_class() needs a [num_filters] vector, got shape {a.shape}.")
  if a.size and not np.issubdtype(a.dtype, np.integer):
    raise CSGError(f"filters_per_class() needs integer class ids, got dtype {a.dtype}.")
  if a.size and (a.min() < 0 or a.max() >= num_classes):
    raise CSGError(f"filters_per_class(): class ids must be in [0, {num_classes}), got "
                   f"[{a.min()}, {a.max()}].")
  return np.bincount(a.astype(np.int64), minlength=num_classes)


def gate_filters_per_class(gates) -> tuple[np.ndarray, int]:
  """([C] open filters per class by the gate's argmax, the number of closed filters).

  A closed filter's gate column is all zero: it serves no class (its argmax, class 0, is a
  convention of argmax, not an assignment), so it is counted apart, never under a class.
  """
  g = np.asarray(gates)
  assigned = assigned_class_from_gate(g)
  is_open = g.max(axis=0) > 0
  return filters_per_class(assigned[is_open], g.shape[0]), int((~is_open).sum())


def _argmax_over_classes(m, name: str) -> np.ndarray:
  m = np.asarray(m)
  if m.ndim != 2 or m.shape[0] == 0:
    raise CSGError(f"{name} must be a [num_classes, num_filters] matrix with at least one "
                   f"class, got shape {m.shape}.")
  if m.size and np.any(np.isnan(m)):
    raise CSGError(f"{name} contains NaN; the assigned class would be arbitrary.")
  return np.argmax(m, axis=0)


def mi_ceiling(labels: np.ndarray, num_classes: int) -> float:
  """The largest MI any filter can have with a class indicator: max_c H(1[y = c]), in nats.

  A property of the test labels alone, so STD and CSG runs on the same data share it as the top
  of their colour and histogram scales.
  """
  p = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
  p = p[(p > 0) & (p < 1)]
  return float(np.max(-p * np.log(p) - (1 - p) * np.log(1 - p))) if p.size else 1.0
