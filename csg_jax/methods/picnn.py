"""PICNN: learning filter-class correspondence (AAAI 2024; code github spdj2271/PICNN).

A learnable matrix Θ [C, K] (collection `gates`, variable `theta`) gives each filter k a
distribution over classes, softmax(Θ)[:, k]. Per training sample, with p = softmax(logits):

  class draw  ĉ ~ Categorical(p), straight-through:  c = p + sg(onehot(ĉ) - p)
  filter mask m ~ Bernoulli(q), q = c · softmax(Θ) [K], straight-through:  m = q + sg(1[m] - q)
  masked      logits_masked = head(GAP(A) * m)        (the interpretation pathway)
  complement  logits_complement = sg(head(GAP(A) * (1 - m')))  with m' ~ Bernoulli(softmax(Θ)[y])
  loss = CE(y, logits) + λ · mean over {i : ĉ_i = y_i} of CE(y_i, logits_masked_i)  (0 if none)

sg is stop_gradient: the forward value is the hard sample, the gradient that of p and q
(models/models.py lines 36-51 of the released code; the sum p + (onehot - p) is computed as
there, so the forward value is the sample up to rounding). The mask multiplies the pooled
features, which equals masking the map before pooling (pooling is linear, the mask per filter).
The released recipe adds a 3x3 conv (512 -> K = 64, with bias, no norm, no ReLU) after the
backbone (models.py lines 18-22): `picnn.extra_conv_width`, on any backbone here.

Θ starts at softmax(U[0, 1)) over classes (models.py line 28) and trains with its own optimiser
(Adam, coupled weight decay 1e-4, as the released torch.optim.Adam over all parameters), no
projection. The filter -> class matrix evaluation reads is softmax(Θ) over classes: a filter's
class is the argmax of its column. Diagnostics logged: accuracy of the masked and complement
pathways (the released ACC2, ACC3), the share of samples whose draw matched the label, and
theta_confidence = mean over filters of the largest class probability of softmax(Θ).

Departures from the released code, all listed in docs/methods.md.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from csg_jax import gate as gate_lib
from csg_jax import losses
from csg_jax import optimizer as optimizer_lib
from csg_jax.methods.base import DRAWS, Method, one_of, require

THETA = "theta"


def straight_through(probabilities: jnp.ndarray, sample: jnp.ndarray) -> jnp.ndarray:
  """Forward: `sample` (0/1, as the released p + epsilon); gradient: that of `probabilities`."""
  epsilon = jnp.where(sample, 1.0 - probabilities, -probabilities)
  return probabilities + jax.lax.stop_gradient(epsilon)


def pathways(features: jnp.ndarray, logits: jnp.ndarray, labels: jnp.ndarray,
             theta: jnp.ndarray, head, *, drawn: jnp.ndarray, mask_noise: jnp.ndarray,
             complement_noise: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The interpretation and complement pathways for given draws.

  features [B, K] pooled activations, logits [B, C], labels [B], theta Θ [C, K]; drawn [B] the
  sampled classes, mask_noise and complement_noise [B, K] uniform in [0, 1): filter k is kept
  when noise < its probability (torch.bernoulli's rule). Returns logits_masked, logits_complement,
  matched [B] (ĉ = y) and the straight-through mask [B, K].
  """
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  classes = straight_through(p, jax.nn.one_hot(drawn, p.shape[-1]) > 0)
  correlation = jax.nn.softmax(theta, axis=0)  # [C, K], each filter's distribution over classes
  q = classes @ correlation  # [B, K]
  mask = straight_through(q, mask_noise < jax.lax.stop_gradient(q))
  complement = (complement_noise >= correlation[labels]).astype(features.dtype)
  return {"logits_masked": head(features * mask),
          "logits_complement": jax.lax.stop_gradient(
              head(jax.lax.stop_gradient(features) * complement)),
          "matched": drawn == labels, "mask": mask}


class Correlation(nn.Module):
  """Owns Θ [num_classes, num_filters]; called with labels, draws the pathways (rng `draws`)."""
  num_classes: int
  num_filters: int

  def setup(self):
    self.theta = self.variable(
        gate_lib.GATE_COLLECTION, THETA, lambda: jax.nn.softmax(jax.random.uniform(
            self.make_rng("params"), (self.num_classes, self.num_filters)), axis=0))

  def __call__(self, features, labels=None, *, head=None, logits=None):
    if labels is None:
      self.theta.value  # noqa: B018 (creates Θ at init)
      return {}
    k_class, k_mask, k_complement = jax.random.split(self.make_rng(DRAWS), 3)
    shape = (features.shape[0], self.num_filters)
    out = pathways(features, logits, labels, self.theta.value, head,
                   drawn=jax.random.categorical(k_class, logits.astype(jnp.float32), axis=-1),
                   mask_noise=jax.random.uniform(k_mask, shape),
                   complement_noise=jax.random.uniform(k_complement, shape))
    del out["mask"]
    return out


class ExtraConv(nn.Module):
  """3x3 conv with bias, PyTorch's Conv2d initialisation (kernel and bias U(±1/sqrt(fan_in)))."""
  features: int
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    bound = 1.0 / math.sqrt(9 * x.shape[-1])
    return nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                   bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                       key, shape, dtype, -bound, bound), name="conv")(x)


def objective(outputs, labels, *, interpretation_weight: float) -> tuple[jnp.ndarray, dict]:
  """CE(all filters) + λ · CE(masked) over the samples whose draw matched the label (released
  losses/losses.py lines 21-26: zero when none matched)."""
  ce = losses.cross_entropy(outputs["logits"], labels)
  per_sample = optax.softmax_cross_entropy_with_integer_labels(
      outputs["logits_masked"].astype(jnp.float32), labels)
  matched = outputs["matched"].astype(jnp.float32)
  count = matched.sum()
  ce_masked = jnp.where(count > 0, (per_sample * matched).sum() / jnp.maximum(count, 1.0), 0.0)
  loss = ce + interpretation_weight * ce_masked
  return loss, {"loss": loss, "ce_std": ce, "ce_interpretation": ce_masked,
                "accuracy": losses.accuracy(outputs["logits"], labels),
                "accuracy_masked": losses.accuracy(outputs["logits_masked"], labels),
                "accuracy_complement": losses.accuracy(outputs["logits_complement"], labels),
                "matched": count / labels.shape[0]}


class PICNN(Method):
  name = "picnn"
  summary = ("learned filter-class correspondence: softmax(Θ) draws class-specific filter "
             "masks whose CE trains the filters of each class")
  STATE_METRICS = ("theta_confidence",)
  matrix_label = "softmax(Θ) over classes"
  class_label = "Θ"
  value_label = "class probability of the filter"
  VARIABLE = THETA
  variable_description = "PICNN's Θ"

  @classmethod
  def validate(cls, config) -> None:
    c = config.picnn
    require(c.interpretation_weight >= 0, "picnn.interpretation_weight", "must be >= 0")
    require(isinstance(c.extra_conv_width, int) and c.extra_conv_width >= 0,
            "picnn.extra_conv_width", "must be a whole number >= 0 (0: no extra conv)")
    one_of(config, "picnn.theta.optimizer", optimizer_lib.OPTIMIZERS)
    require(c.theta.learning_rate > 0, "picnn.theta.learning_rate", "must be > 0")
    require(0 <= c.theta.momentum < 1, "picnn.theta.momentum", "must be in [0, 1)")
    require(c.theta.weight_decay >= 0, "picnn.theta.weight_decay", "must be >= 0 (0: off)")

  @classmethod
  def unread_rules(cls, config):
    theta = config.picnn.theta
    return [("picnn.theta.momentum", theta.optimizer == "sgd",
             f"picnn.theta.optimizer is {theta.optimizer!r}")]

  def neck(self, dtype):
    width = self.config.picnn.extra_conv_width
    return (ExtraConv(width, dtype), width) if width else (None, None)

  def gate_module(self, num_classes, num_filters):
    return Correlation(num_classes, num_filters)

  def plan(self, num_examples):
    return self.single_phase_plan(num_examples, "picnn",
                                  gate_learning_rate=self.config.picnn.theta.learning_rate)

  def objective(self, outputs, labels, phase):
    del phase
    return objective(outputs, labels,
                     interpretation_weight=self.config.picnn.interpretation_weight)

  def gate_transform(self, schedule):
    theta = self.config.picnn.theta
    parts = [optax.add_decayed_weights(theta.weight_decay)] if theta.weight_decay > 0 else []
    parts.append(optimizer_lib.base_optimizer(theta.optimizer, schedule, theta.momentum))
    return optax.chain(*parts)

  def gate_learning_rate(self):
    return self.config.picnn.theta.learning_rate

  def step_metrics(self, gates, phase):
    correlation = jax.nn.softmax(gate_lib.gate_values(gates), axis=0)
    return {"theta_confidence": correlation.max(axis=0).mean()}

  def progress(self, means, phase):
    return (f"acc {means.get('accuracy', float('nan')):.3f} masked "
            f"{means.get('accuracy_masked', float('nan')):.3f} matched "
            f"{means.get('matched', float('nan')):.2f}")

  def class_matrix(self, gates):
    theta = gate_lib.host_gate_values(gates)
    if theta is None:
      return None
    theta = theta.astype(np.float64)
    e = np.exp(theta - theta.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
