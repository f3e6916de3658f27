"""One optax partition over {"params", "gates"}: the trunk's update and the method's own update.

Every trainable leaf is labelled "trunk", "frozen" (by name pattern, for fine-tuning) or "gates".
The `gates` collection (CSG's G, PICNN's Θ) is updated by its method's transform
(`Method.gate_transform`: CSG's sparsity-regularised, projected chain; PICNN's Adam with weight
decay). Batch statistics are not in the tree the optimiser sees. One partition is built per
optimiser of the run's `Plan` ("main", or "std" and "csg" for CSG's alternate schedule).
"""

import functools
import re

import jax
import optax

from csg_jax import gate as gate_lib
from csg_jax.errors import CSGError
from csg_jax.plan import Plan

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "multistep", "constant")


def needs_params(params, name: str) -> None:
  if params is None:
    raise ValueError(f"{name} needs the current gate values: call update(grads, state, params)")


def learning_rate_schedule(opt_config, base_lr: float, total_steps: int,
                           epoch_starts=()) -> optax.Schedule:
  """opt_config.schedule from base_lr over total_steps (at least 1) of one optimiser: cosine
  (after opt_config.warmup_steps of linear warm-up), multistep or constant.

  multistep multiplies by decay_factor at each milestone: with opt_config.milestone_epochs, after
  that many of the optimiser's own epochs (`epoch_starts[m]` is its step count when its epoch m
  starts; milestones past the end never come), else at the `milestones` fractions of its steps.
  """
  total_steps = max(int(total_steps), 1)
  name = opt_config.schedule
  if name == "constant":
    return optax.constant_schedule(base_lr)
  if name == "cosine":
    warmup_steps = min(int(opt_config.warmup_steps), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, total_steps) \
        if warmup_steps > 0 else optax.cosine_decay_schedule(base_lr, total_steps)
  if name == "multistep":
    if opt_config.milestone_epochs:
      steps = [epoch_starts[m] for m in opt_config.milestone_epochs if m < len(epoch_starts)]
    else:
      steps = [int(round(m * total_steps)) for m in opt_config.milestones]
    boundaries = {}
    for step in steps:  # two milestones on one step decay twice
      boundaries[step] = boundaries.get(step, 1.0) * opt_config.decay_factor
    return optax.piecewise_constant_schedule(base_lr, boundaries)
  raise CSGError(f"unknown learning-rate schedule {name!r}; use one of {SCHEDULES}")


def schedules(config, plan: Plan) -> dict[str, dict[str, optax.Schedule | None]]:
  """{optimiser: {"trunk": schedule, "gate": schedule or None}}, each counted in that
  optimiser's own steps; what make_optimizers uses and the training rows report."""
  out = {}
  for name, role in plan.optimizers.items():
    schedule = functools.partial(learning_rate_schedule, config.optimizer, total_steps=role.steps,
                                 epoch_starts=plan.epoch_starts(name))
    out[name] = {"trunk": schedule(role.trunk_learning_rate),
                 "gate": (None if role.gate_learning_rate is None
                          else schedule(role.gate_learning_rate))}
  return out


def base_optimizer(name: str, learning_rate, momentum: float, nesterov: bool = False):
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  if name == "adam":
    return optax.adam(learning_rate)
  raise CSGError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")


def _decay_mask(params):
  """Weight decay on conv and dense kernels only, not on biases or BN scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def _decay_everything(params):
  """Weight decay on every parameter, as torch.optim's weight_decay applies it to a group."""
  return jax.tree_util.tree_map(lambda p: True, params)


def trunk_transform(name: str, schedule: optax.Schedule,
                    opt_config) -> optax.GradientTransformation:
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  if opt_config.weight_decay > 0:
    # Coupled L2 (added to the gradient), as torch.optim's weight_decay does for SGD and Adam.
    mask = _decay_everything if opt_config.decay_every_parameter else _decay_mask
    parts.append(optax.add_decayed_weights(opt_config.weight_decay, mask=mask))
  parts.append(base_optimizer(name, schedule, opt_config.momentum, opt_config.nesterov))
  return optax.chain(*parts)


def compile_freeze_pattern(pattern: str) -> re.Pattern | None:
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


def trained_leaves(tree, freeze_pattern: str) -> list:
  """The leaves of a {"params": ..., "gates": ...} tree (either part may be absent) that an
  optimiser with this freeze pattern updates: every leaf not labelled "frozen"."""
  labels = partition_labels(tree, freeze_pattern)
  return [leaf for leaf, label in zip(jax.tree_util.tree_leaves(tree),
                                      jax.tree_util.tree_leaves(labels)) if label != "frozen"]


def make_optimizers(config, plan: Plan, method) -> dict[str, optax.GradientTransformation]:
  """One partitioned transform per optimiser of `plan`, each over {"params": ..., "gates": ...}:
  the trunk by the role's optimiser and learning rate with config.optimizer's other settings,
  its frozen layers unchanged, and the `gates` collection by `method.gate_transform` when the
  role trains it (else a zero update)."""
  optimizers = {}
  for name, schedule in schedules(config, plan).items():
    role = plan.optimizers[name]
    trunk = trunk_transform(role.trunk_optimizer, schedule["trunk"], config.optimizer)
    gates = (method.gate_transform(schedule["gate"]) if schedule["gate"] is not None
             else optax.set_to_zero())
    optimizers[name] = optax.partition(
        {"trunk": trunk, "frozen": optax.set_to_zero(), "gates": gates},
        functools.partial(partition_labels, freeze_pattern=role.freeze))
  return optimizers
