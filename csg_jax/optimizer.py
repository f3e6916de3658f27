"""One optax partition over {"params", "gates"}: the trunk's update, the gate's own projected update.

Every trainable leaf is labelled "trunk", "frozen" (by name pattern, for fine-tuning) or "gates".
The gate transform has its own optimiser and learning rate and ends with the projection, so the
gate never leaves its feasible set. Batch statistics are not in the tree the optimiser sees.

The "alternate" procedure has two optimisers (one for STD epochs, one for CSG epochs), each with
its own state and schedule that advances only in its own epochs; `make_optimizers` returns one
partition per phase.
"""

import re
from typing import Dict, Optional

import jax
import optax
from flax import traverse_util

from csg_jax import gate as gate_lib
from csg_jax.errors import CSGError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "multistep", "constant")


def project_gates_transform(mode: str) -> optax.GradientTransformation:
  """Turns the proposed update u into project(G + u) - G, so apply_updates lands on the set."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the gate projection needs the current gate values (params)")
    projected = jax.tree_util.tree_map(
        lambda g, u: gate_lib.project_gates(g + u, mode) - g, params, updates)
    return projected, state

  return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(name: str, base_lr: float, total_steps: int, *, warmup_steps: int = 0,
                           milestones=(0.5, 0.75), decay_factor: float = 0.1) -> optax.Schedule:
  """Cosine (with linear warm-up), multi-step (milestones as fractions of training) or constant."""
  total_steps = max(int(total_steps), 1)
  if name == "constant":
    return optax.constant_schedule(base_lr)
  if name == "cosine":
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, total_steps) \
        if warmup_steps > 0 else optax.cosine_decay_schedule(base_lr, total_steps)
  if name == "multistep":
    boundaries = {int(round(m * total_steps)): decay_factor for m in milestones}
    return optax.piecewise_constant_schedule(base_lr, boundaries)
  raise CSGError(f"unknown learning-rate schedule {name!r}; use one of {SCHEDULES}")


def _base_optimizer(name: str, learning_rate, momentum: float, nesterov: bool = False):
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  if name == "adam":
    return optax.adam(learning_rate)
  raise CSGError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")


def _decay_mask(params):
  """Weight decay on conv and dense kernels only, not on biases or BN scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def trunk_transform(name: str, schedule: optax.Schedule, opt_config) -> optax.GradientTransformation:
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  if opt_config.weight_decay > 0:
    # Coupled L2 (added to the gradient), as torch.optim's weight_decay does for SGD and Adam.
    parts.append(optax.add_decayed_weights(opt_config.weight_decay, mask=_decay_mask))
  parts.append(_base_optimizer(name, schedule, opt_config.momentum, opt_config.nesterov))
  return optax.chain(*parts)


def gate_transform(csg_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(_base_optimizer(csg_config.gate_optimizer, schedule, csg_config.gate_momentum),
                     project_gates_transform(csg_config.projection))


def compile_freeze_pattern(pattern: str) -> Optional[re.Pattern]:
  try:
    return re.compile(pattern) if pattern else None
  except re.error as e:
    raise CSGError(f"freeze pattern {pattern!r} is not a valid regular expression: {e}") from None


def partition_labels(tree, freeze_pattern: str):
  """{"params": ..., "gates": ...} -> same tree of labels "trunk" | "frozen" | "gates"."""
  frozen = compile_freeze_pattern(freeze_pattern)

  def label(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[0] == gate_lib.GATE_COLLECTION:
      return "gates"
    return "frozen" if frozen is not None and frozen.search("/".join(names[1:])) else "trunk"

  # tree_map keeps empty subtrees (an STD model's empty `gates`), which optax needs to match.
  return jax.tree_util.tree_map_with_path(label, tree)


def frozen_parameter_names(params, freeze_pattern: str):
  labels = traverse_util.flatten_dict(partition_labels({"params": params}, freeze_pattern))
  return sorted("/".join(p[1:]) for p, l in labels.items() if l == "frozen")


def _partition(trunk, gates, labels_fn) -> optax.GradientTransformation:
  return optax.partition({"trunk": trunk, "frozen": optax.set_to_zero(), "gates": gates},
                         labels_fn)


def make_optimizers(config, phase_steps: Dict[str, int]
                    ) -> Dict[str, optax.GradientTransformation]:
  """One partitioned transform per optimiser, each updating {"params": ..., "gates": ...}.

  `phase_steps` maps each optimiser ("main", or "std" and "csg" for the alternate schedule) to
  the number of steps it will take, which its schedules count in.
  """
  opt = config.optimizer
  csg = config.csg

  def trunk_schedule(lr, steps):
    return learning_rate_schedule(opt.schedule, lr, steps, warmup_steps=opt.warmup_steps,
                                  milestones=opt.milestones, decay_factor=opt.decay_factor)

  def labels(freeze_pattern):
    return lambda tree: partition_labels(tree, freeze_pattern)

  def gate_tx(steps):
    return gate_transform(csg, trunk_schedule(csg.gate_learning_rate, steps))

  if set(phase_steps) == {"main"}:
    steps = phase_steps["main"]
    trunk = trunk_transform(opt.name, trunk_schedule(opt.learning_rate, steps), opt)
    gates = gate_tx(steps) if config.method == "csg" else optax.set_to_zero()
    return {"main": _partition(trunk, gates, labels(opt.freeze))}

  # Alternate: optimiser A (STD epochs, gate untouched), optimiser B (CSG epochs, gate + top).
  csg_freeze = "|".join(p for p in (opt.freeze, csg.csg_freeze) if p)
  std_tx = trunk_transform(opt.name, trunk_schedule(opt.learning_rate, phase_steps["std"]), opt)
  csg_tx = trunk_transform(csg.csg_optimizer,
                           trunk_schedule(csg.csg_learning_rate, phase_steps["csg"]), opt)
  return {
      "std": _partition(std_tx, optax.set_to_zero(), labels(opt.freeze)),
      "csg": _partition(csg_tx, gate_tx(phase_steps["csg"]), labels(csg_freeze)),
  }

