"""The evaluation pass: STD-path predictions and pooled features over a split, and its summary
(accuracy, per-class accuracy, the MI matrix, MIS, gate density)."""

import functools
from typing import Any
from collections.abc import Callable, Mapping

import jax
import numpy as np

from csg_jax import data as data_lib
from csg_jax.evaluation import mis as mis_lib
from csg_jax import sharding


def eval_step(state, batch: Mapping[str, jax.Array], *, model) -> dict[str, jax.Array]:
  """STD-path predictions and pooled features (the features MIS is measured on).

  Labels and the padding mask pass through, so the host sees the whole global batch.
  """
  outputs = model.apply(state.variables(), batch["image"], train=False)
  return {"prediction": outputs["logits"].argmax(-1), "features": outputs["features"],
          "label": batch["label"], "mask": batch["mask"]}


def make_eval_fn(model, mesh) -> Callable:
  return jax.jit(functools.partial(eval_step, model=model),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(eval_fn, state, dataset, config, mesh, split: str = "test", *,
             batch_size: int | None = None) -> dict[str, np.ndarray]:
  """Runs eval_fn over every example of `split` once; returns its outputs for the real rows.

  eval_fn(state, global batch) -> {..., 'mask'}: `make_eval_fn`'s STD path, or a wrapper of it
  (the applications evaluate attacked images through it). batch_size: the global batch, by
  default config.eval_batch_size (the attacks keep theirs: PGD's random starts are per batch).
  """
  chunks = []
  for batch in data_lib.eval_batches(dataset, config.data, split=split,
                                     global_batch_size=batch_size or config.eval_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    out = jax.device_get(eval_fn(state, sharding.to_global(batch, mesh)))
    keep = np.asarray(out.pop("mask"), bool)
    chunks.append({k: np.asarray(v)[keep] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def mis_seed(config) -> int:
  """The random_state of the MI estimator: config.mis_seed (default 0, the released evaluation's
  `mutual_info_classif(..., random_state=0)`, VOCPart/mutualinfo/mutualinfo.py lines 110-112),
  or the run's seed for a run written before the field existed (mis_seed None)."""
  return config.seed if config.mis_seed is None else config.mis_seed


def summarize_eval(result: Mapping[str, np.ndarray], num_classes: int, density: float | None,
                   seed: int) -> dict[str, Any]:
  """Accuracy, per-class accuracy, the MI matrix [C, K], MIS of an evaluation, and the run's
  gate density as given (its method's, methods.Method.density; None where undefined);
  `seed`: the MI estimator's random_state (mis_seed(config))."""
  pred, labels = result["prediction"], result["label"]
  per_class = [float((pred[labels == c] == c).mean()) if (labels == c).any() else None
               for c in range(num_classes)]
  mi = mis_lib.mutual_information_matrix(result["features"], labels, num_classes, seed=seed)
  return {
      "accuracy": float((pred == labels).mean()),
      "per_class_accuracy": per_class,
      "mi_matrix": mi,
      "mis": float(mis_lib.mis(mi)),
      "gate_density": density,
      "num_examples": int(labels.size),
  }
