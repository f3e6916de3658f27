"""The training objectives of each phase (see plan.PHASES).

  std   : CE(y, logits_std)
  joint : CE(y, logits_std) + gated_loss_weight * CE(y, logits_csg)   (the paper's loss)
  csg   : CE(y, logits_csg)                                (CSG epochs of the released procedure)

The sparsity term lambda2 * max(0, ||G||_1 - d*C*K) is not here: it is part of the gate's own
optax update (optimizer.add_sparsity_gradient), so G reaches the loss only through logits_csg.
"""

from collections.abc import Mapping

import jax.numpy as jnp
import optax

from csg_jax.plan import PHASES


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return (logits.argmax(-1) == labels).mean()


def objective(outputs: Mapping[str, jnp.ndarray], labels: jnp.ndarray, phase: str, *,
              gated_loss_weight: float = 1.0) -> tuple[jnp.ndarray, dict]:
  """Returns (loss, metrics) for one batch of model outputs in the given phase."""
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
  ce_std = cross_entropy(outputs["logits"], labels)
  metrics = {"ce_std": ce_std, "accuracy": accuracy(outputs["logits"], labels)}
  if phase == "std":
    metrics["loss"] = ce_std
    return ce_std, metrics

  ce_csg = cross_entropy(outputs["logits_csg"], labels)
  loss = ce_std + gated_loss_weight * ce_csg if phase == "joint" else ce_csg
  metrics.update(loss=loss, ce_csg=ce_csg, accuracy_csg=accuracy(outputs["logits_csg"], labels))
  return loss, metrics
