"""The checks a config passes before a run starts, and the overrides a run would not read.

`validate(config)` turns each bad value into one CSGError naming the field and the fix;
`unread_fields` names the overrides that the run a config describes never reads.
"""

from __future__ import annotations

from csg_jax import data as data_lib
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax.config.compat import check_no_old_names
from csg_jax.config.schema import CSG_SCHEDULES, DTYPES, L1_SUBGRADIENTS, METHODS, PROJECTIONS
from csg_jax.data import sources
from csg_jax.errors import CSGError


def unread_fields(config, fields) -> list:
  """[(field, why)] for those of `fields` (dotted names) that a run of `config` never reads:
  a data field of another source, a gate field in an STD run, a field of the other CSG schedule,
  or a schedule or optimiser parameter the chosen ones do not have."""
  opt, csg = config.optimizer, config.csg
  rules = [
      ("csg.", config.method == "csg", f"method is {config.method!r}"),
      ("csg.alternate.", csg.schedule == "alternate", f"csg.schedule is {csg.schedule!r}"),
      ("csg.gated_loss_weight", csg.schedule == "joint", f"csg.schedule is {csg.schedule!r}"),
      ("csg.gate.momentum", csg.gate.optimizer == "sgd",
       f"csg.gate.optimizer is {csg.gate.optimizer!r}"),
      ("csg.gate.nesterov", csg.gate.optimizer == "sgd",
       f"csg.gate.optimizer is {csg.gate.optimizer!r}"),
      ("optimizer.milestone", opt.schedule == "multistep",
       f"optimizer.schedule is {opt.schedule!r}"),
      ("optimizer.decay_factor", opt.schedule == "multistep",
       f"optimizer.schedule is {opt.schedule!r}"),
      ("optimizer.warmup_steps", opt.schedule == "cosine",
       f"optimizer.schedule is {opt.schedule!r}"),
      ("optimizer.nesterov", opt.name == "sgd", f"optimizer.name is {opt.name!r}"),
  ]
  out = []
  for field in fields:
    readers = sources.readers(field[len("data."):]) if field.startswith("data.") else ()
    if readers and config.data.source not in readers:
      out.append((field, f"data.source is {config.data.source!r}; it is read by "
                         f"{' and '.join(readers)}"))
      continue
    for prefix, read, why in rules:
      if field.startswith(prefix) and not read:
        out.append((field, why))
        break
  return out


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise CSGError(f"config.{field} {message} (set --config.{field}=...)")


def _one_of(config, field: str, choices) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  _require(value in choices, field, f"is {value!r}; expected one of {', '.join(map(str, choices))}")


def validate(config) -> None:
  """Raises CSGError naming the first bad field: every field, the data fields included, checked
  before any device, mesh or data is touched (a data source's paths must exist)."""
  check_no_old_names(config)
  _one_of(config, "method", METHODS)
  _require(config.num_epochs > 0, "num_epochs", f"is {config.num_epochs}; it must be > 0")
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
    _require(config[field] > 0, field, f"is {config[field]}; it must be a positive integer")
  for field in ("eval_every_steps", "checkpoint_every_steps", "tensorboard_atlas_filters"):
    _require(config[field] >= 0, field, f"is {config[field]}; it must be >= 0 (0: off)")
  _require(config.mis_seed is None or (isinstance(config.mis_seed, int) and config.mis_seed >= 0),
           "mis_seed", f"is {config.mis_seed!r}; it must be a whole number >= 0")
  _require(isinstance(config.std_config, str), "std_config",
           "must be a config file's path or a shipped config's name ('' for none)")

  models.build_backbone(config.model.name)  # raises on an unknown name
  _one_of(config, "model.dtype", DTYPES)
  _require(config.model.width >= 0, "model.width", "must be >= 0 (0: standard width)")
  _require(isinstance(config.model.pytorch_padding, bool), "model.pytorch_padding",
           "must be True or False")

  opt = config.optimizer
  _one_of(config, "optimizer.name", optimizer_lib.OPTIMIZERS)
  _one_of(config, "optimizer.schedule", optimizer_lib.SCHEDULES)
  _require(opt.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
  _require(0 <= opt.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
  _require(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  _require(isinstance(opt.decay_every_parameter, bool), "optimizer.decay_every_parameter",
           "must be True or False")
  _require(opt.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
  _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0: off)")
  _require(0 < opt.decay_factor <= 1, "optimizer.decay_factor", "must be in (0, 1]")
  _require(all(0 < m < 1 for m in opt.milestones), "optimizer.milestones",
           "must be fractions of training in (0, 1)")
  _require(all(isinstance(m, int) and m > 0 for m in opt.milestone_epochs),
           "optimizer.milestone_epochs", "must be positive whole numbers of epochs")
  _require(not opt.milestone_epochs or opt.schedule == "multistep",
           "optimizer.milestone_epochs", "needs optimizer.schedule='multistep'")
  optimizer_lib.compile_freeze_pattern(opt.freeze)

  csg, gate, alternate = config.csg, config.csg.gate, config.csg.alternate
  _one_of(config, "csg.schedule", CSG_SCHEDULES)
  _require(csg.gated_loss_weight >= 0, "csg.gated_loss_weight",
           f"is {csg.gated_loss_weight}; it must be >= 0")

  _require(0 <= gate.init <= 1, "csg.gate.init", f"is {gate.init}; it must be in [0, 1]")
  _require(gate.sparsity_weight >= 0, "csg.gate.sparsity_weight",
           f"is {gate.sparsity_weight}; it must be >= 0")
  _require(0 < gate.target_density <= 1, "csg.gate.target_density",
           f"is {gate.target_density}; it must be in (0, 1]")
  _one_of(config, "csg.gate.projection", PROJECTIONS)
  _one_of(config, "csg.gate.optimizer", optimizer_lib.OPTIMIZERS)
  _require(gate.learning_rate > 0, "csg.gate.learning_rate", "must be > 0")
  _require(0 <= gate.momentum < 1, "csg.gate.momentum", "must be in [0, 1)")
  _require(isinstance(gate.nesterov, bool), "csg.gate.nesterov", "must be True or False")
  _require(gate.weight_decay >= 0, "csg.gate.weight_decay", "must be >= 0 (0: off)")
  _one_of(config, "csg.gate.l1_subgradient", L1_SUBGRADIENTS)

  _require(alternate.warmup_epochs >= 0, "csg.alternate.warmup_epochs", "must be >= 0")
  _require(alternate.period >= 1, "csg.alternate.period", "must be >= 1")
  _require(0 <= alternate.min_phase < alternate.period, "csg.alternate.min_phase",
           "must be in [0, csg.alternate.period)")
  _one_of(config, "csg.alternate.optimizer", optimizer_lib.OPTIMIZERS)
  _require(alternate.learning_rate > 0, "csg.alternate.learning_rate", "must be > 0")
  optimizer_lib.compile_freeze_pattern(alternate.freeze)
  data_lib.validate_config(config.data)
