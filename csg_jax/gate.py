"""The class-specific gate G [C, K] and the plain functions that act on it.

The gate lives in its own variable collection, `gates`, so the optimiser can give it its own
update (learning rate, sparsity, projection) without touching `params`.
"""


import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

GATE_COLLECTION = "gates"
GATE_NAME = "G"


class ClassSpecificGate(nn.Module):
  """Owns G [num_classes, num_filters] and applies row G[y] to a [B, ..., K] activation.

  The activation may be a [B, H, W, K] map or pooled [B, K] features: the row is broadcast over
  every axis between batch and filters. Because global average pooling is linear, gating the
  pooled features gives the same logits as gating the map, at a fraction of the cost.
  """
  num_classes: int
  num_filters: int
  init_value: float = 0.5

  def setup(self):
    self.G = self.variable(
        GATE_COLLECTION, GATE_NAME,
        lambda: jnp.full((self.num_classes, self.num_filters), self.init_value, jnp.float32))

  def __call__(self, activation: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(labels, 1)
    chex.assert_equal(activation.shape[0], labels.shape[0])
    chex.assert_equal(activation.shape[-1], self.num_filters)
    rows = self.G.value[labels]  # [B, K]
    rows = rows.reshape((rows.shape[0],) + (1,) * (activation.ndim - 2) + (self.num_filters,))
    return activation * rows.astype(activation.dtype)

  def matrix(self) -> jnp.ndarray:
    """G itself; calling it at init makes sure the variable exists even without labels."""
    return self.G.value


def l1_density(gates: jnp.ndarray) -> jnp.ndarray:
  """||G||_1 / (C*K): the share of the gate that is open (entries are in [0, 1])."""
  return jnp.abs(gates).sum() / gates.size


def sparsity_hinge(gates: jnp.ndarray, target_density: float) -> jnp.ndarray:
  """max(0, ||G||_1 - d*C*K): zero while the gate is within its L1 budget."""
  return jnp.maximum(0.0, jnp.abs(gates).sum() - target_density * gates.size)


def project_gates(gates: jnp.ndarray, mode: str = "max_normalize") -> jnp.ndarray:
  """Maps G back onto the feasible set.

  - "max_normalize": each filter's column is divided by its maximum over classes, then clipped
    to [0, 1], so every filter keeps at least one class fully open. A column whose maximum is
    <= 0 is left unscaled (only clipped): it closes (all zero) instead of producing NaN or Inf.
  - "released": the released clip_lmask exactly (VOCPart/train/resnet_std.py lines 129-134):
    the column divided by its maximum, whatever its sign, then clipped. A negative maximum
    reopens the whole column (every entry divided by it is >= 1, clipped to 1); a zero maximum
    gives NaN, which the training loop stops on, naming the filter. No filter can stay closed.
  - "clip" (the paper's constraint G in [0, 1]^{CxK}): clip only.
  """
  if mode == "released":
    col_max = gates.max(axis=0, keepdims=True)
    # x / x is exactly 1 in IEEE arithmetic; XLA may multiply by the reciprocal instead.
    gates = jnp.where((gates == col_max) & (col_max != 0), 1.0, gates / col_max)
  elif mode == "max_normalize":
    col_max = gates.max(axis=0, keepdims=True)
    scaled = gates / jnp.where(col_max > 0, col_max, 1.0)
    # XLA may divide by multiplying with the reciprocal, which can leave the maximum at
    # 1 - 1ulp; the maximal entry is set to exactly 1, as the definition says.
    gates = jnp.where((gates == col_max) & (col_max > 0), 1.0, scaled)
  elif mode != "clip":
    raise ValueError(f"unknown gate projection {mode!r}; use 'max_normalize', 'released' or "
                     "'clip'")
  return jnp.clip(gates, 0.0, 1.0)


def host_gate_values(gates_collection) -> np.ndarray | None:
  """gate_values as a numpy array on the host (None when the collection is empty)."""
  matrix = gate_values(gates_collection)
  return None if matrix is None else np.asarray(jax.device_get(matrix))


def gate_values(gates_collection) -> jnp.ndarray | None:
  """G from the `gates` collection (wherever the gate module sits), or None when it is empty."""
  leaves = jax.tree_util.tree_leaves(gates_collection)
  if not leaves:
    return None
  if len(leaves) > 1:
    raise ValueError(f"expected one gate matrix in the gates collection, found {len(leaves)}")
  return leaves[0]
