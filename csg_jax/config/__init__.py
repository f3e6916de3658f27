"""Run configs: every field with its default and comment (schema), compatibility with earlier
versions (compat), run identity (identity), validation, and config files (files).

Config files import this package, which loads without JAX; `validate` and `unread_fields`
(which ask the model and optimiser modules) load them on first use.
"""

from csg_jax.config.compat import ADDED, RENAMED, complete, renamed_field_message, upgrade
from csg_jax.config.files import DEFAULT_CONFIG, load_config_file, resolve, shipped
from csg_jax.config.identity import BOOKKEEPING_FIELDS, plain, result_changes, run_name
from csg_jax.config.schema import DTYPES, FIELDS, METHODS, base_config, comments, describe, flatten

__all__ = [
    "ADDED", "BOOKKEEPING_FIELDS", "DEFAULT_CONFIG", "DTYPES", "FIELDS",
    "METHODS", "RENAMED", "base_config", "comments",
    "complete", "describe", "flatten",
    "load_config_file", "plain", "renamed_field_message", "resolve", "result_changes", "run_name",
    "shipped", "unread_fields", "upgrade", "validate",
]


def __getattr__(name: str):
  if name in ("validate", "unread_fields"):  # they import models (flax) and optimizer (optax)
    from csg_jax.config import validation  # pylint: disable=g-import-not-at-top
    return getattr(validation, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
