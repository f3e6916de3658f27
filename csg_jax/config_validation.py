"""Checks a config before anything is built or written; each problem is one CSGError message."""

from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax import schedule
from csg_jax.errors import CSGError


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise CSGError(f"config.{field} {message} (set --config.{field}=...)")


def _one_of(config, field: str, choices) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  _require(value in choices, field, f"is {value!r}; expected one of {', '.join(map(str, choices))}")


def validate(config) -> None:
  _one_of(config, "method", schedule.METHODS)
  _require(config.num_epochs > 0, "num_epochs", f"is {config.num_epochs}; it must be > 0")
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
    _require(config[field] > 0, field, f"is {config[field]}; it must be a positive integer")
  for field in ("eval_every_steps", "checkpoint_every_steps"):
    _require(config[field] >= 0, field, f"is {config[field]}; it must be >= 0 (0: off)")

  models.build_backbone(config.model.name)  # raises on an unknown name
  _one_of(config, "model.dtype", ("float32", "bfloat16", "float16"))
  _require(config.model.width >= 0, "model.width", "must be >= 0 (0: standard width)")

  opt = config.optimizer
  _one_of(config, "optimizer.name", optimizer_lib.OPTIMIZERS)
  _one_of(config, "optimizer.schedule", optimizer_lib.SCHEDULES)
  _require(opt.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
  _require(0 <= opt.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
  _require(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  _require(opt.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
  _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0: off)")
  _require(0 < opt.decay_factor <= 1, "optimizer.decay_factor", "must be in (0, 1]")
  _require(all(0 < m < 1 for m in opt.milestones), "optimizer.milestones",
           "must be fractions of training in (0, 1)")

  csg = config.csg
  _one_of(config, "csg.schedule", schedule.CSG_SCHEDULES)
  _one_of(config, "csg.projection", ("max_normalize", "clip"))
  _one_of(config, "csg.gate_optimizer", optimizer_lib.OPTIMIZERS)
  _one_of(config, "csg.csg_optimizer", optimizer_lib.OPTIMIZERS)
  _require(0 <= csg.gate_init <= 1, "csg.gate_init", f"is {csg.gate_init}; it must be in [0, 1]")
  _require(0 < csg.target_density <= 1, "csg.target_density",
           f"is {csg.target_density}; it must be in (0, 1]")
  for field in ("csg_weight", "sparsity_weight"):
    _require(csg[field] >= 0, f"csg.{field}", f"is {csg[field]}; it must be >= 0")
  for field in ("gate_learning_rate", "csg_learning_rate"):
    _require(csg[field] > 0, f"csg.{field}", "must be > 0")
  _require(0 <= csg.gate_momentum < 1, "csg.gate_momentum", "must be in [0, 1)")
  _require(csg.warmup_epochs >= 0, "csg.warmup_epochs", "must be >= 0")
  _require(csg.period >= 1, "csg.period", "must be >= 1")
  _require(0 <= csg.min_phase < csg.period, "csg.min_phase", "must be in [0, csg.period)")
  optimizer_lib.compile_freeze_pattern(opt.freeze)
  optimizer_lib.compile_freeze_pattern(csg.csg_freeze)
