"""The training objectives: STD, CSG "joint" (paper) and the two phases of CSG "alternate".

  std   : CE(y, logits_std)
  joint : CE(y, logits_std) + csg_weight * CE(y, logits_csg) + sparsity_weight * hinge(G)
  csg   : CE(y, logits_csg) + sparsity_weight * hinge(G)   (CSG epochs of the released procedure)
"""

from typing import Mapping, Optional, Tuple

import jax.numpy as jnp
import optax

from csg_jax import gate as gate_lib

PHASES = ("std", "joint", "csg")


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return (logits.argmax(-1) == labels).mean()


def objective(outputs: Mapping[str, jnp.ndarray], labels: jnp.ndarray,
              gates: Optional[jnp.ndarray], phase: str, csg_config
              ) -> Tuple[jnp.ndarray, dict]:
  """Returns (loss, metrics) for one batch of model outputs in the given phase."""
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
  ce_std = cross_entropy(outputs["logits"], labels)
  metrics = {"ce_std": ce_std, "accuracy": accuracy(outputs["logits"], labels)}
  if phase == "std":
    metrics["loss"] = ce_std
    return ce_std, metrics

  ce_csg = cross_entropy(outputs["logits_csg"], labels)
  hinge = gate_lib.sparsity_hinge(gates, csg_config.target_density)
  sparsity = csg_config.sparsity_weight * hinge
  if phase == "joint":
    loss = ce_std + csg_config.csg_weight * ce_csg + sparsity
  else:
    loss = ce_csg + sparsity
  metrics.update(loss=loss, ce_csg=ce_csg, hinge=hinge,
                 accuracy_csg=accuracy(outputs["logits_csg"], labels),
                 gate_density=gate_lib.l1_density(gates))
  return loss, metrics
