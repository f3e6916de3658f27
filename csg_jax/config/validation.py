"""The checks a config passes before a run starts, and the overrides a run would not read.

`validate(config)` turns each bad value into one CSGError naming the field and the fix;
`unread_fields` names the overrides that the run a config describes never reads.
"""

from __future__ import annotations

from csg_jax import data as data_lib
from csg_jax import methods
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax.config.compat import check_no_old_names
from csg_jax.config.schema import DTYPES, METHODS
from csg_jax.data import sources
from csg_jax.methods.base import one_of, require


def unread_fields(config, fields) -> list:
  """[(field, why)] for those of `fields` (dotted names) that a run of `config` never reads:
  a data field of another source, a field of another method's block (csg.*, picnn.*) or one its
  own method skips (the other CSG schedule), or a schedule or optimiser parameter the chosen ones
  do not have."""
  opt = config.optimizer
  # A method's block is read by runs of that method only; within it, the method says.
  rules = [(f"{name}.", name == config.method, f"method is {config.method!r}")
           for name in methods.NAMES]
  rules += methods.get(config.method).unread_rules(config) if config.method in METHODS else []
  rules += [
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




def validate(config) -> None:
  """Raises CSGError naming the first bad field: every field, the data fields included, checked
  before any device, mesh or data is touched (a data source's paths must exist)."""
  check_no_old_names(config)
  one_of(config, "method", METHODS)
  require(config.num_epochs > 0, "num_epochs", f"is {config.num_epochs}; it must be > 0")
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
    require(config[field] > 0, field, f"is {config[field]}; it must be a positive integer")
  for field in ("eval_every_steps", "checkpoint_every_steps", "tensorboard_atlas_filters"):
    require(config[field] >= 0, field, f"is {config[field]}; it must be >= 0 (0: off)")
  require(config.mis_seed is None or (isinstance(config.mis_seed, int) and config.mis_seed >= 0),
           "mis_seed", f"is {config.mis_seed!r}; it must be a whole number >= 0")
  require(isinstance(config.std_config, str), "std_config",
           "must be a config file's path or a shipped config's name ('' for none)")

  models.build_backbone(config.model.name)  # raises on an unknown name
  one_of(config, "model.dtype", DTYPES)
  require(config.model.width >= 0, "model.width", "must be >= 0 (0: standard width)")
  require(isinstance(config.model.pytorch_padding, bool), "model.pytorch_padding",
           "must be True or False")

  opt = config.optimizer
  one_of(config, "optimizer.name", optimizer_lib.OPTIMIZERS)
  one_of(config, "optimizer.schedule", optimizer_lib.SCHEDULES)
  require(opt.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
  require(0 <= opt.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
  require(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  require(isinstance(opt.decay_every_parameter, bool), "optimizer.decay_every_parameter",
           "must be True or False")
  require(opt.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
  require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0: off)")
  require(0 < opt.decay_factor <= 1, "optimizer.decay_factor", "must be in (0, 1]")
  require(all(0 < m < 1 for m in opt.milestones), "optimizer.milestones",
           "must be fractions of training in (0, 1)")
  require(all(isinstance(m, int) and m > 0 for m in opt.milestone_epochs),
           "optimizer.milestone_epochs", "must be positive whole numbers of epochs")
  require(not opt.milestone_epochs or opt.schedule == "multistep",
           "optimizer.milestone_epochs", "needs optimizer.schedule='multistep'")
  optimizer_lib.compile_freeze_pattern(opt.freeze)

  methods.get(config.method).validate(config)
  data_lib.validate_config(config.data)
