"""Every config field csg_jax reads, with its default, and the checks run before a run starts.

The files in configs/ start from `base_config()`. Any field can be overridden on the command line:
`--config.csg.gate.target_density=0.1`. `validate(config)` turns each bad value into one
CSGError naming the field and the fix; a field renamed since an earlier version is named with its
new name (`RENAMED`).
"""

import hashlib
import importlib.util
import inspect
import os
import re

import ml_collections

from csg_jax import data as data_lib
from csg_jax.errors import CSGError

METHODS = ("std", "csg")  # standard training, or class-specific gates
CSG_SCHEDULES = ("joint", "alternate")  # the paper's loss every step, or the released epoch rule
PROJECTIONS = ("max_normalize", "clip")  # see gate.project_gates
DTYPES = ("float32", "bfloat16", "float16")

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


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path`, loaded by path as `--config` loads it (config
  files are not a package, so one that builds on another loads it through here)."""
  if not os.path.isfile(path):
    raise CSGError(f"config file {path} does not exist: give the path of a file like "
                   "configs/default.py")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"csg_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise CSGError(f"config file {path} defines no get_config(): a config file returns its "
                   "ConfigDict from get_config()")
  return module.get_config()


def base_config(data_source: str = "digits") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds initialisation, data order and augmentation
  config.method = "csg"  # "std" (standard training) or "csg" (class-specific gates)
  config.num_epochs = 30.0  # passes over the training split (fractions allowed)
  config.batch_size = 128  # global batch: all devices and processes together
  config.eval_batch_size = 256  # global batch for evaluation (the last one is padded, not dropped)
  config.log_every_steps = 50  # progress line and metrics.jsonl row every N steps
  config.eval_every_steps = 0  # test-split evaluation every N steps (0: only at the end)
  config.checkpoint_every_steps = 500  # checkpoint every N steps (and always at the end)
  config.keep_checkpoints = 3  # newest checkpoints kept on disk
  config.tensorboard_images = True  # figures (gate, MI matrices, histogram, atlas) in TensorBoard
  config.tensorboard_atlas_filters = 64  # filters in the TensorBoard atlas at the end (0: none)
  config.init_from = ""  # start from another run's weights: its workdir or a checkpoints/<step>
  config.init_from_skip = ""  # regex of parameters not taken from init_from, e.g. "^head/"

  config.data = data_lib.default_config(data_source)  # input pipeline (see csg_jax/data)

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet20"  # tiny | resnet{6n+2} (CIFAR) | resnet18/34/50/101/152 (ImageNet)
  config.model.width = 0  # base width (0: the architecture's standard 16 or 64)
  config.model.dtype = "float32"  # trunk compute dtype: float32 | bfloat16 | float16
  config.model.pytorch_padding = True  # ImageNet ResNets pad like PyTorch (False: "SAME")

  config.optimizer = ml_collections.ConfigDict()  # trunk optimiser (STD epochs when alternating)
  config.optimizer.name = "sgd"  # sgd | adam
  config.optimizer.learning_rate = 0.1  # peak learning rate
  config.optimizer.momentum = 0.9  # SGD momentum (0: plain SGD)
  config.optimizer.nesterov = False  # Nesterov momentum for SGD
  config.optimizer.weight_decay = 5e-4  # coupled L2 on conv/dense kernels (0: off)
  config.optimizer.schedule = "cosine"  # cosine | multistep | constant
  config.optimizer.warmup_steps = 0  # linear warm-up steps (cosine only)
  config.optimizer.milestones = (0.5, 0.75)  # multistep: decay points as fractions of training
  config.optimizer.milestone_epochs = ()  # multistep: decay after N own epochs (empty: milestones)
  config.optimizer.decay_factor = 0.1  # multistep: learning-rate factor at each milestone
  config.optimizer.grad_clip_norm = 0.0  # clip gradients to this global norm (0: off)
  config.optimizer.freeze = ""  # regex searched in parameter paths: frozen, e.g. "stem|stage1"

  config.csg = ml_collections.ConfigDict()  # class-specific gate (method = "csg" only)
  config.csg.schedule = "joint"  # joint (paper's loss every step) | alternate (released code)
  config.csg.gated_loss_weight = 1.0  # lambda1: weight of CE on the gated path (joint)

  gate = config.csg.gate = ml_collections.ConfigDict()  # G and its own optax update
  gate.init = 0.5  # initial value of every gate entry
  gate.sparsity_weight = 0.01  # lambda2: weight of the L1 hinge max(0, ||G||_1 - d*C*K)
  gate.target_density = 0.1  # d: the hinge is zero while ||G||_1 <= d*C*K
  gate.projection = "max_normalize"  # max_normalize (released: column max -> 1) | clip
  gate.optimizer = "sgd"  # optimiser of G: sgd | adam
  gate.learning_rate = 0.1  # peak learning rate of G (same schedule shape as the trunk)
  gate.momentum = 0.9  # momentum of G's SGD (0: plain SGD)

  alternate = config.csg.alternate = ml_collections.ConfigDict()  # schedule "alternate" only
  alternate.warmup_epochs = 10  # STD-only epochs before the first CSG epoch
  alternate.period = 3  # epoch e >= warmup_epochs is a CSG epoch iff e % period >= min_phase
  alternate.min_phase = 2  # see period
  alternate.optimizer = "adam"  # optimiser B (CSG epochs) for the trunk layers it trains
  alternate.learning_rate = 1e-3  # learning rate of optimiser B
  alternate.freeze = ""  # extra regex of layers frozen in CSG epochs
  return config


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


# Fields added since an earlier version -> the value that keeps an older run's function (read
# when its config.json lacks the field), where that differs from today's default.
ADDED = {
    "model.pytorch_padding": False,  # runs before it padded stride-2 windows "SAME"
    "data.validation_fraction": 0.0,  # runs before it trained on the whole train split
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
  for name, value in _flatten(config_dict).items():
    node, leaf = _parent(out, RENAMED.get(name, name))
    node[leaf] = value
  for name, value in ADDED.items():
    node, leaf = _parent(out, name)
    node.setdefault(leaf, value)
  return out


def renamed_field_message(name: str) -> str:
  """' (renamed: use --config.<new>)' when `name` (dotted, or its last part) is an old field."""
  for old, new in RENAMED.items():
    if name in (old, old.rsplit(".", 1)[-1]):
      return f"; it was renamed to {new}: use --config.{new}=..."
  return ""


# `<prefix>.<field> = <value>  # <comment>` lines of base_config and data.default_config (or the
# comment on the line above, for a long value).
_FIELD_LINE = re.compile(r"^\s*(config|gate|alternate|c)\.([\w.]+) = .*?(?:  # (.*))?$")
_PREFIX = {"config": "", "gate": "csg.gate.", "alternate": "csg.alternate.", "c": "data."}


def field_comments() -> dict:
  """{"csg.gate.target_density": "d: the hinge is zero while ...", ...} from the sources."""
  from csg_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  comments = {}
  for fn in (base_config, data_config.default_config):
    above = None
    for line in inspect.getsource(fn).splitlines():
      match = _FIELD_LINE.match(line)
      if match and (match.group(3) or above):
        comments[_PREFIX[match.group(1)] + match.group(2)] = match.group(3) or above
      above = line.strip()[2:] if line.strip().startswith("# ") else None
  return comments


def describe(config) -> str:
  """Every field of `config` with its value and one-line comment, one per line."""
  comments = field_comments()
  rows = [(name, repr(value)) for name, value in _flatten(config.to_dict()).items()]
  width = max(len(f"{n} = {v}") for n, v in rows)
  return "\n".join(f"{n} = {v}".ljust(width) + (f"  # {comments[n]}" if n in comments else "")
                   for n, v in rows)


# Fields that change how a run is watched or stored, not what it computes: they may differ when
# a run resumes, and they do not name a workdir.
BOOKKEEPING_FIELDS = frozenset({
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "tensorboard_images", "tensorboard_atlas_filters",
    "eval_batch_size", "data.cache_dir", "data.decode_workers", "data.prefetch",
    "data.data_dir", "data.download"})
# Already in a workdir name's stem (<dataset>_<model>_<method>).
_NAME_STEM_FIELDS = frozenset({"method", "model.name", "data.source", "data.name"})


def result_changes(before: dict, after: dict) -> list:
  """Sorted [(field, before, after)] of the fields (other than bookkeeping) whose values differ
  between a workdir's config dict and a new one; a field missing from the new one counts as
  None there."""
  a, b = _flatten(upgrade(before)), _flatten(upgrade(after))
  # A field `before` lacks did not exist when it was written: it ran with ADDED's value (applied
  # by upgrade) or, for the other added fields, with today's default.
  defaults = _flatten(base_config().to_dict())
  a = {**{k: v for k, v in defaults.items() if k in b}, **a}
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in BOOKKEEPING_FIELDS and _plain(a.get(k)) != _plain(b.get(k))]


def _plain(value):
  """Tuples and lists compare equal (config.json stores tuples as lists)."""
  return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _short_names(fields) -> dict:
  """Each dotted field -> its shortest dotted suffix that no other field ends with."""
  all_fields = list(_flatten(base_config().to_dict())) + list(fields)
  out = {}
  for field in fields:
    parts = field.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(f != field and (f == suffix or f.endswith("." + suffix)) for f in all_fields):
        break
    out[field] = suffix
  return out


def _name_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(_name_value(v) for v in value)
  text = repr(value) if isinstance(value, float) else str(value)
  return re.sub(r"[^\w.,+-]+", "_", text).strip("_") or "_"


def run_name(config, defaults, max_length: int = 120) -> str:
  """A workdir name: <dataset>_<model>_<method>, then -<field>=<value> for every result-changing
  field whose value differs from `defaults` (the config file's own values), sorted by field.

  Fields are named by their shortest unambiguous suffix (`target_density`, `gate.learning_rate`).
  A name longer than `max_length` keeps its stem and ends in a hash of the differences.
  """
  config = config.to_dict() if hasattr(config, "to_dict") else config
  defaults = defaults.to_dict() if hasattr(defaults, "to_dict") else defaults
  data = config["data"]
  stem = (f"{data['name'] if data['source'] == 'tfds' else data['source']}_"
          f"{config['model']['name']}_{config['method']}")
  changes = [(k, new) for k, _, new in result_changes(defaults, config)
             if k not in _NAME_STEM_FIELDS]
  short = _short_names([k for k, _ in changes])
  name = stem + "".join(f"-{short[k]}={_name_value(v)}" for k, v in changes)
  if len(name) > max_length:
    digest = hashlib.sha256(repr(changes).encode()).hexdigest()[:10]
    name = f"{stem}-{len(changes)}_changes-{digest}"
  return name


# Data fields that only some sources read (the others ignore them), from data/config.py.
_DATA_FIELD_SOURCES = {
    "data.path": ("folder", "voc_part_released"), "data.name": ("tfds",),
    "data.data_dir": ("tfds",),
    "data.download": ("tfds",), "data.train_split": ("folder", "tfds"),
    "data.test_split": ("folder", "tfds"), "data.test_fraction": ("digits",),
    "data.decode_workers": ("folder",), "data.skip_corrupt": ("folder",)}


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
    sources = _DATA_FIELD_SOURCES.get(field)
    if sources and config.data.source not in sources:
      out.append((field, f"data.source is {config.data.source!r}; it is read by "
                         f"{' and '.join(sources)}"))
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


def _check_no_old_names(config) -> None:
  flat = _flatten(config.to_dict())
  for old, new in RENAMED.items():
    if old in flat:
      raise CSGError(f"config.{old} was renamed to config.{new}; set that field instead "
                     f"(--config.{new}=...)")


def validate(config) -> None:
  """Raises CSGError naming the first bad field; checks everything that needs no data."""
  # Imported here: config files import this module, and must load without JAX and optax.
  from csg_jax import models  # pylint: disable=g-import-not-at-top
  from csg_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  _check_no_old_names(config)
  _one_of(config, "method", METHODS)
  _require(config.num_epochs > 0, "num_epochs", f"is {config.num_epochs}; it must be > 0")
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
    _require(config[field] > 0, field, f"is {config[field]}; it must be a positive integer")
  for field in ("eval_every_steps", "checkpoint_every_steps", "tensorboard_atlas_filters"):
    _require(config[field] >= 0, field, f"is {config[field]}; it must be >= 0 (0: off)")

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

  _require(alternate.warmup_epochs >= 0, "csg.alternate.warmup_epochs", "must be >= 0")
  _require(alternate.period >= 1, "csg.alternate.period", "must be >= 1")
  _require(0 <= alternate.min_phase < alternate.period, "csg.alternate.min_phase",
           "must be in [0, csg.alternate.period)")
  _one_of(config, "csg.alternate.optimizer", optimizer_lib.OPTIMIZERS)
  _require(alternate.learning_rate > 0, "csg.alternate.learning_rate", "must be > 0")
  optimizer_lib.compile_freeze_pattern(alternate.freeze)
