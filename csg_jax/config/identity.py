"""Run identity: which fields change what a run computes, and the default workdir name.

A workdir holds the run of one config: `result_changes` lists the fields in which a new config
differs from the workdir's (bookkeeping fields aside), and `run_name` names a workdir after the
overrides that differ from the config file's values.
"""

from __future__ import annotations

import hashlib
import re

from csg_jax.config.compat import upgrade
from csg_jax.config.schema import base_config, flatten
from csg_jax.data import sources

# Fields that change how a run is watched or stored, not what it computes: they may differ when
# a run resumes, and they do not name a workdir.
BOOKKEEPING_FIELDS = frozenset({
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "tensorboard_images", "tensorboard_atlas_filters",
    "eval_batch_size", "std_config", "data.cache_dir", "data.decode_workers", "data.prefetch",
    "data.batch_workers",
    "data.data_dir", "data.download"})
# Already in a workdir name's stem (<dataset>_<model>_<method>).
_NAME_STEM_FIELDS = frozenset({"method", "model.name", "data.source", "data.name"})


def plain(value):
  """Lists for tuples, so that a config and its config.json (which stores tuples as lists)
  compare equal."""
  return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def result_changes(before: dict, after: dict) -> list:
  """Sorted [(field, before, after)] of the fields (other than bookkeeping) whose values differ
  between a workdir's config dict and a new one; a field missing from the new one counts as
  None there."""
  a, b = flatten(upgrade(before)), flatten(upgrade(after))
  # A field `before` lacks did not exist when it was written: it ran with ADDED's value (applied
  # by upgrade) or, for the other added fields, with today's default.
  defaults = flatten(base_config().to_dict())
  a = {**{k: v for k, v in defaults.items() if k in b}, **a}
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in BOOKKEEPING_FIELDS and plain(a.get(k)) != plain(b.get(k))]


def _short_names(fields) -> dict:
  """Each dotted field -> its shortest dotted suffix that no other field ends with."""
  all_fields = list(flatten(base_config().to_dict())) + list(fields)
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
  stem = (f"{sources.get(data['source']).data_set_name(data)}_"
          f"{config['model']['name']}_{config['method']}")
  changes = [(k, new) for k, _, new in result_changes(defaults, config)
             if k not in _NAME_STEM_FIELDS]
  short = _short_names([k for k, _ in changes])
  name = stem + "".join(f"-{short[k]}={_name_value(v)}" for k, v in changes)
  if len(name) > max_length:
    digest = hashlib.sha256(repr(changes).encode()).hexdigest()[:10]
    name = f"{stem}-{len(changes)}_changes-{digest}"
  return name
