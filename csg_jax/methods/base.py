"""What a training method declares, and the helpers its config checks share.

A method is one module in csg_jax/methods holding one `Method` subclass. Everything that differs
between methods is asked of it: the checks of its config block, the variables it adds
to the network (a module in the `gates` collection, an extra conv after the backbone), its plan
(phases and optimisers), its objective per phase, the update of its own variables, the
diagnostics it logs, and the filter -> class matrix that evaluation, explanations and the atlas
read. The trainer, evaluation and the commands never branch on a method's name. (The block's
fields and defaults are in config/schema.py, which stays free of JAX.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from csg_jax import losses
from csg_jax.errors import CSGError
from csg_jax.plan import OptimizerRole, Plan, total_steps

# The rng stream of a method's random draws during training (model.apply(rngs={DRAWS: key})).
# Its key is a function of (config.seed, step), so a resumed run draws what an uninterrupted
# one would have drawn.
DRAWS = "draws"


def require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise CSGError(f"config.{field} {message} (set --config.{field}=...)")


def one_of(config, field: str, choices) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  require(value in choices, field, f"is {value!r}; expected one of {', '.join(map(str, choices))}")


class Method:
  """A training method, bound to one run's config. The defaults are those of standard training:
  no variables of its own, one phase, cross-entropy on the network's logits."""
  name: ClassVar[str]
  summary: ClassVar[str]  # one line: what the method does to the network
  # The step metrics that describe the state after the step (logged as the last value of the
  # window, not its mean).
  STATE_METRICS: ClassVar[tuple[str, ...]] = ()
  matrix_label: ClassVar[str] = ""  # what class_matrix shows, e.g. "gate G"
  class_label: ClassVar[str] = ""  # how figure notes name a filter's class by it: "gate", "Θ"
  value_label: ClassVar[str] = ""  # what its entries are, for colour bars: "gate value"
  VARIABLE: ClassVar[str | None] = None  # the name of its variable in the `gates` collection
  variable_description: ClassVar[str] = ""  # how error messages name it, e.g. "a gate"

  def __init__(self, config):
    self.config = config

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def validate(cls, config) -> None:
    """Raises CSGError naming the first bad field of the method's block (config.validate asks
    the run's method)."""

  @classmethod
  def unread_rules(cls, config) -> list[tuple[str, bool, str]]:
    """(field prefix, read?, why not) for the fields of its block a run of `config` skips."""
    return []

  def describe(self) -> str:
    """The method as the run's first line names it, e.g. "csg/joint"."""
    return self.name

  # --- network ------------------------------------------------------------------------------
  def neck(self, dtype) -> tuple[nn.Module | None, int | None]:
    """(a module applied to the backbone's activation map, its number of filters), or
    (None, None) to pool the backbone's last layer as it is."""
    return None, None

  def gate_module(self, num_classes: int, num_filters: int) -> nn.Module | None:
    """The module owning the method's variables (collection `gates`), or None. It is called as
    module(features [B, K], labels [B], head=..., logits=...) and returns extra outputs; called
    with labels None it only makes sure its variables exist."""
    return None

  # --- training -----------------------------------------------------------------------------
  def plan(self, num_examples: int) -> Plan:
    """Phases and optimisers over a training split of `num_examples` (default: one phase,
    "std", one optimiser, "main", that leaves the `gates` collection alone)."""
    return self.single_phase_plan(num_examples, "std", gate_learning_rate=None)

  def single_phase_plan(self, num_examples: int, phase: str, *,
                        gate_learning_rate: float | None) -> Plan:
    c, opt = self.config, self.config.optimizer
    total = total_steps(c.num_epochs, c.batch_size, num_examples)
    role = OptimizerRole(opt.name, opt.learning_rate, opt.freeze, total, gate_learning_rate)
    return Plan(total, c.batch_size, num_examples, phases=(phase,),
                optimizer_of_phase={phase: "main"}, optimizers={"main": role})

  def objective(self, outputs: Mapping[str, jnp.ndarray], labels: jnp.ndarray,
                phase: str) -> tuple[jnp.ndarray, dict]:
    """(loss, metrics) of one batch of model outputs in `phase` (one of the plan's phases)."""
    ce = losses.cross_entropy(outputs["logits"], labels)
    return ce, {"loss": ce, "ce_std": ce, "accuracy": losses.accuracy(outputs["logits"], labels)}

  def gate_transform(self, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The update of the `gates` collection by an optimiser that trains it."""
    raise NotImplementedError(f"method {self.name!r} has no variables of its own")

  def gate_learning_rate(self) -> float | None:
    return None

  def step_metrics(self, gates, phase: str) -> dict[str, jnp.ndarray]:
    """Diagnostics of the method's variables after a step's update (inside the jitted step)."""
    return {}

  def progress(self, means: Mapping[str, float], phase: str) -> str:
    """The accuracy and method figures of a progress line."""
    return f"acc {means.get('accuracy', float('nan')):.3f}"

  def notes(self, num_classes: int, num_filters: int) -> list[str]:
    """Notes printed once before training (e.g. a budget that closes filters)."""
    return []

  def nonfinite_message(self, metrics: Mapping[str, Any], step: int, where: str) -> str | None:
    """The message for a step whose metrics show a non-finite state, when the method has a
    better one than the generic advice (`where`: the last good checkpoint)."""
    return None

  # --- evaluation ---------------------------------------------------------------------------
  def class_matrix(self, gates) -> np.ndarray | None:
    """[C, K] on the host: how much filter k serves class c (each column's argmax is the filter's
    class; an all-zero column is a closed filter), or None: evaluation then assigns filters by
    mutual information only."""
    return None

  def density(self, gates) -> float | None:
    """The share of the class matrix that is open, where that is defined."""
    return None
