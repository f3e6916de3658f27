"""Class-specific gates (Liang et al., ECCV 2020; docs/csg-method.md).

A gate G [C, K] in the `gates` collection opens filter k for class c by G[c, k]. One trunk pass
gives both paths (models.Classifier):
  logits     = W . GAP(A) + b             (STD path; the only one used at test time)
  logits_csg = W . GAP(A * G[y]) + b      (CSG path; same W and b)

Objectives per phase:
  std   : CE(y, logits)                                (the STD epochs of the alternate schedule)
  joint : CE(y, logits) + gated_loss_weight * CE(y, logits_csg)   (the paper's loss)
  csg   : CE(y, logits_csg)                            (CSG epochs of the released procedure)

G's update is its own optax chain, the design's sparsity-regularised, projected update:
  g  <- dCE/dG + sparsity_weight * d/dG max(0, ||G||_1 - d*C*K)   (add_sparsity_gradient)
  g  <- g + weight_decay * G                                       (when csg.gate.weight_decay)
  u  <- gate optimiser (SGD or Adam, own learning rate) of g
  u  <- project(G + u) - G                                         (project_gates_transform)
so the losses never see the hinge and G never leaves its feasible set.

Schedules: "joint" trains the joint objective every step with one optimiser ("main");
"alternate" (the released procedure) has STD and CSG epochs, each with its own optimiser ("std":
config.optimizer, G unchanged; "csg": optimiser B of csg.alternate, G trained).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from csg_jax import gate as gate_lib
from csg_jax import losses
from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.methods.base import Method, one_of, require
from csg_jax.plan import OptimizerRole, Plan, total_steps



CSG_SCHEDULES = ("joint", "alternate")  # the paper's loss every step, or the released epoch rule
PROJECTIONS = ("max_normalize", "released", "clip")  # see gate.project_gates
L1_SUBGRADIENTS = ("jax", "torch")  # the hinge's d|g|/dg at g = 0: +1 (JAX's) or 0 (torch's)


class GatedPath(gate_lib.ClassSpecificGate):
  """G and the gated path: called with labels, {"logits_csg": head(GAP(A) * G[y])}."""

  def __call__(self, features, labels=None, *, head=None, logits=None):
    del logits
    if labels is None:
      self.matrix()  # creates G at init even when no labels are passed
      return {}
    return {"logits_csg": head(super().__call__(features, labels))}


def add_sparsity_gradient(weight: float, target_density: float,
                          subgradient: str = "jax") -> optax.GradientTransformation:
  """Adds the gradient of weight * max(0, ||G||_1 - d*C*K) at the current G to G's gradient.

  That is weight * sign(G) while G is over its L1 budget and zero within it; the kinks follow
  `subgradient`:
  - "jax": JAX's gradient of the term, exactly what the loss-side hinge of earlier versions
    gave: at an entry G = 0, d|x|/dx = +1 (and at exactly the budget, max's 1/2).
  - "torch": the released code's, `relu(torch.norm(mask, p=1) - budget)`
    (VOCPart/train/resnet_std.py lines 124-127): d|x|/dx = 0 at G = 0, and 0 at the budget.
  After the projection the difference at G = 0 only shows through momentum; docs/csg-method.md
  gives its measured effect.
  """
  if subgradient == "jax":
    sparsity_grad = jax.grad(lambda g: weight * gate_lib.sparsity_hinge(g, target_density))
  elif subgradient == "torch":
    def sparsity_grad(g):
      over = gate_lib.sparsity_hinge(g, target_density) > 0
      return jnp.where(over, weight * jnp.sign(g), 0.0).astype(g.dtype)
  else:
    raise CSGError(f"unknown L1 subgradient {subgradient!r}; use 'jax' or 'torch'")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    optimizer_lib.needs_params(params, "the sparsity gradient")
    return jax.tree_util.tree_map(lambda u, g: u + sparsity_grad(g), updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def project_gates_transform(mode: str) -> optax.GradientTransformation:
  """Turns the proposed update u into project(G + u) - G, so apply_updates lands on the set."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    optimizer_lib.needs_params(params, "the gate projection")
    projected = jax.tree_util.tree_map(
        lambda g, u: gate_lib.project_gates(g + u, mode) - g, params, updates)
    return projected, state

  return optax.GradientTransformation(init_fn, update_fn)


def gate_transform(gate_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Sparsity gradient, the gate's weight decay (coupled, as torch.optim's), then the gate's own
  optimiser, then the projection (see module doc)."""
  parts = [add_sparsity_gradient(gate_config.sparsity_weight, gate_config.target_density,
                                 gate_config.l1_subgradient)]
  if gate_config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(gate_config.weight_decay))
  parts += [optimizer_lib.base_optimizer(gate_config.optimizer, schedule, gate_config.momentum,
                                         gate_config.nesterov),
            project_gates_transform(gate_config.projection)]
  return optax.chain(*parts)


def objective(outputs: Mapping[str, jnp.ndarray], labels: jnp.ndarray, phase: str, *,
              gated_loss_weight: float = 1.0) -> tuple[jnp.ndarray, dict]:
  """Returns (loss, metrics) for one batch of model outputs in the given phase."""
  if phase not in ("std", "joint", "csg"):
    raise ValueError(f"unknown phase {phase!r}; expected one of std, joint, csg")
  ce_std = losses.cross_entropy(outputs["logits"], labels)
  metrics = {"ce_std": ce_std, "accuracy": losses.accuracy(outputs["logits"], labels)}
  if phase == "std":
    metrics["loss"] = ce_std
    return ce_std, metrics
  ce_csg = losses.cross_entropy(outputs["logits_csg"], labels)
  loss = ce_std + gated_loss_weight * ce_csg if phase == "joint" else ce_csg
  metrics.update(loss=loss, ce_csg=ce_csg,
                 accuracy_csg=losses.accuracy(outputs["logits_csg"], labels))
  return loss, metrics


class CSG(Method):
  name = "csg"
  summary = "class-specific gates: a sparse gate G [C, K] opens each filter for its classes"
  STATE_METRICS = ("gate_density", "hinge", "gate_closed")
  matrix_label = "gate G"
  class_label = "gate"
  value_label = "gate value"
  VARIABLE = gate_lib.GATE_NAME
  variable_description = "a gate"

  @classmethod
  def validate(cls, config) -> None:
    csg, gate, alternate = config.csg, config.csg.gate, config.csg.alternate
    one_of(config, "csg.schedule", CSG_SCHEDULES)
    require(csg.gated_loss_weight >= 0, "csg.gated_loss_weight",
            f"is {csg.gated_loss_weight}; it must be >= 0")
    require(0 <= gate.init <= 1, "csg.gate.init", f"is {gate.init}; it must be in [0, 1]")
    require(gate.sparsity_weight >= 0, "csg.gate.sparsity_weight",
            f"is {gate.sparsity_weight}; it must be >= 0")
    require(0 < gate.target_density <= 1, "csg.gate.target_density",
            f"is {gate.target_density}; it must be in (0, 1]")
    one_of(config, "csg.gate.projection", PROJECTIONS)
    one_of(config, "csg.gate.optimizer", optimizer_lib.OPTIMIZERS)
    require(gate.learning_rate > 0, "csg.gate.learning_rate", "must be > 0")
    require(0 <= gate.momentum < 1, "csg.gate.momentum", "must be in [0, 1)")
    require(isinstance(gate.nesterov, bool), "csg.gate.nesterov", "must be True or False")
    require(gate.weight_decay >= 0, "csg.gate.weight_decay", "must be >= 0 (0: off)")
    one_of(config, "csg.gate.l1_subgradient", L1_SUBGRADIENTS)
    require(alternate.warmup_epochs >= 0, "csg.alternate.warmup_epochs", "must be >= 0")
    require(alternate.period >= 1, "csg.alternate.period", "must be >= 1")
    require(0 <= alternate.min_phase < alternate.period, "csg.alternate.min_phase",
            "must be in [0, csg.alternate.period)")
    one_of(config, "csg.alternate.optimizer", optimizer_lib.OPTIMIZERS)
    require(alternate.learning_rate > 0, "csg.alternate.learning_rate", "must be > 0")
    optimizer_lib.compile_freeze_pattern(alternate.freeze)

  @classmethod
  def unread_rules(cls, config):
    csg = config.csg
    return [
        ("csg.alternate.", csg.schedule == "alternate", f"csg.schedule is {csg.schedule!r}"),
        ("csg.gated_loss_weight", csg.schedule == "joint", f"csg.schedule is {csg.schedule!r}"),
        ("csg.gate.momentum", csg.gate.optimizer == "sgd",
         f"csg.gate.optimizer is {csg.gate.optimizer!r}"),
        ("csg.gate.nesterov", csg.gate.optimizer == "sgd",
         f"csg.gate.optimizer is {csg.gate.optimizer!r}"),
    ]

  def describe(self) -> str:
    return f"csg/{self.config.csg.schedule}"

  def gate_module(self, num_classes: int, num_filters: int):
    return GatedPath(num_classes, num_filters, self.config.csg.gate.init)

  def plan(self, num_examples: int) -> Plan:
    c, opt, csg = self.config, self.config.optimizer, self.config.csg
    if csg.schedule == "joint":
      return self.single_phase_plan(num_examples, "joint",
                                    gate_learning_rate=csg.gate.learning_rate)
    alt = csg.alternate
    total = total_steps(c.num_epochs, c.batch_size, num_examples)
    plan = Plan(total, c.batch_size, num_examples, phases=("std", "csg"),
                optimizer_of_phase={"std": "std", "csg": "csg"}, optimizers={},
                alternate=(alt.warmup_epochs, alt.period, alt.min_phase))
    csg_steps = plan.steps_of_phase("csg")
    freeze = "|".join(p for p in (opt.freeze, alt.freeze) if p)
    return Plan(**{**plan.__dict__, "optimizers": {
        "std": OptimizerRole(opt.name, opt.learning_rate, opt.freeze, total - csg_steps),
        "csg": OptimizerRole(alt.optimizer, alt.learning_rate, freeze, csg_steps,
                             csg.gate.learning_rate)}})

  def objective(self, outputs, labels, phase):
    return objective(outputs, labels, phase, gated_loss_weight=self.config.csg.gated_loss_weight)

  def gate_transform(self, schedule):
    return gate_transform(self.config.csg.gate, schedule)

  def gate_learning_rate(self) -> float:
    return self.config.csg.gate.learning_rate

  def step_metrics(self, gates, phase):
    if phase == "std":
      return {}
    gate = gate_lib.gate_values(gates)
    return {"hinge": gate_lib.sparsity_hinge(gate, self.config.csg.gate.target_density),
            "gate_density": gate_lib.l1_density(gate),
            # Filters whose column is all zero serve no class.
            "gate_closed": (gate.max(axis=0) <= 0).sum().astype(jnp.float32)}

  def progress(self, means, phase):
    acc = means.get("accuracy_csg" if phase == "csg" else "accuracy", float("nan"))
    extra = f" density {means['gate_density']:.3f}" if "gate_density" in means else ""
    return f"acc {acc:.3f}{extra}"

  def notes(self, num_classes, num_filters):
    """A note when the gate's L1 budget cannot keep every filter open for one class: under
    max_normalize an open filter's column has maximum 1, so d*C*K < K closes some filters."""
    gate = self.config.csg.gate
    d = gate.target_density
    if gate.projection != "max_normalize" or d * num_classes >= 1:
      return []
    budget = d * num_classes * num_filters
    return [f"note: csg.gate.target_density d = {d:g} is below 1/C = {1 / num_classes:.3g} "
            f"({num_classes} classes): under max_normalize every open filter keeps a gate value "
            f"of 1, so the L1 budget d*C*K = {budget:g} keeps at most {int(budget)} of the "
            f"{num_filters} filters open and the others close (they serve no class). For one "
            "class per filter set d >= 1/C (docs/csg-method.md, section 4)."]

  def nonfinite_message(self, metrics, step: int, where: str) -> str | None:
    if self.config.csg.gate.projection != "released" or metrics.get("gate_finite", 1.0) >= 1.0:
      return None
    return (f"the gate column of filter {int(metrics['gate_bad_filter'])} became NaN at step "
            f"{step}: its maximum reached exactly 0, and the released projection "
            "(csg.gate.projection='released', clip_lmask) divides by it, as the released run "
            f"would have; training stopped ({where}). To go on, use "
            "--config.csg.gate.projection=max_normalize (such a filter closes instead), or a "
            "smaller gate learning rate or sparsity weight.")

  def class_matrix(self, gates):
    return gate_lib.host_gate_values(gates)

  def density(self, gates):
    matrix = gate_lib.host_gate_values(gates)
    return None if matrix is None else float(gate_lib.l1_density(matrix))
