"""Compatibility with earlier versions: renamed fields and fields added since.

`upgrade` reads a config.json written by an earlier version with today's names, and gives a field
added since then the value that reproduces the older run.
"""

from __future__ import annotations

from csg_jax.config.schema import base_config, flatten
from csg_jax.errors import CSGError

# Fields of earlier versions -> their name now (config.json of older workdirs is read through it).
RENAMED = {
    "csg.csg_weight": "csg.gated_loss_weight",
    "csg.gate_init": "csg.gate.init",
    "csg.projection": "csg.gate.projection",
    "csg.gate_optimizer": "csg.gate.optimizer",
    "csg.gate_learning_rate": "csg.gate.learning_rate",
    "csg.gate_momentum": "csg.gate.momentum",
    "csg.sparsity_weight": "csg.gate.sparsity_weight",
    "csg.target_density": "csg.gate.target_density",
    "csg.warmup_epochs": "csg.alternate.warmup_epochs",
    "csg.period": "csg.alternate.period",
    "csg.min_phase": "csg.alternate.min_phase",
    "csg.csg_optimizer": "csg.alternate.optimizer",
    "csg.csg_learning_rate": "csg.alternate.learning_rate",
    "csg.csg_freeze": "csg.alternate.freeze",
}

# Fields added since an earlier version -> the value that keeps an older run's function (read
# when its config.json lacks the field), where that differs from today's default.
ADDED = {
    "model.pytorch_padding": False,  # runs before it padded stride-2 windows "SAME"
    "data.validation_fraction": 0.0,  # runs before it trained on the whole train split
    "mis_seed": None,  # runs before it seeded the MI estimator with config.seed
}


def _parent(tree: dict, name: str):
  """(the dict holding dotted `name` in `tree`, created as needed; its last part)."""
  *parents, leaf = name.split(".")
  for part in parents:
    tree = tree.setdefault(part, {})
  return tree, leaf


def upgrade(config_dict: dict) -> dict:
  """A config dict written by an earlier version, with renamed fields moved to their new names
  and added fields set to the value that reproduces the older model (`ADDED`)."""
  out = {}
  for name, value in flatten(config_dict).items():
    node, leaf = _parent(out, RENAMED.get(name, name))
    node[leaf] = value
  for name, value in ADDED.items():
    node, leaf = _parent(out, name)
    node.setdefault(leaf, value)
  return out


def complete(config_dict: dict) -> dict:
  """`upgrade(config_dict)` with every field it still lacks at today's default (for its data
  source): a field added since it was written, whose default keeps the older run's function."""
  out = upgrade(config_dict)
  source = out.get("data", {}).get("source", "digits")

  def fill(node: dict, defaults: dict) -> None:
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, dict) and isinstance(node[key], dict):
        fill(node[key], value)

  fill(out, base_config(source).to_dict())
  return out


def renamed_field_message(name: str) -> str:
  """'; it was renamed to <new>: use --config.<new>=...' when `name` (dotted, or its last part)
  is an old field; '' otherwise."""
  for old, new in RENAMED.items():
    if name in (old, old.rsplit(".", 1)[-1]):
      return f"; it was renamed to {new}: use --config.{new}=..."
  return ""


def check_no_old_names(config) -> None:
  """CSGError naming the new field when `config` sets a field under its old name."""
  flat = flatten(config.to_dict())
  for old, new in RENAMED.items():
    if old in flat:
      raise CSGError(f"config.{old} was renamed to config.{new}; set that field instead "
                     f"(--config.{new}=...)")
