"""The training methods, one module each (see methods/base.py for what a method declares).

Adding a method: a module here with one `Method` subclass, an entry in `_ALL`, its name and
config block in config/schema.py (METHODS, FIELDS: the config package stays free of JAX), and
its tests; nothing else in csg_jax names a method.
"""

from __future__ import annotations

from csg_jax.errors import CSGError
from csg_jax.methods import csg, picnn, std
from csg_jax.methods.base import DRAWS, Method

_ALL = (std.STD, csg.CSG, picnn.PICNN)
METHODS = {m.name: m for m in _ALL}
NAMES = tuple(METHODS)

__all__ = ["DRAWS", "METHODS", "Method", "NAMES", "class_matrix", "for_config",
           "get", "make_plan", "of_variable"]


def get(name: str) -> type[Method]:
  if name not in METHODS:
    raise CSGError(f"unknown method {name!r}; choose one of {', '.join(NAMES)} "
                   "(set --config.method)")
  return METHODS[name]


def for_config(config) -> Method:
  """The method of `config`, bound to it."""
  return get(config.method)(config)


def make_plan(config, num_examples: int):
  """The run's Plan over a training split of `num_examples`."""
  return for_config(config).plan(num_examples)


def of_variable(name: str | None) -> type[Method] | None:
  """The method whose `gates` variable is called `name` (None: the method without one)."""
  return next((m for m in _ALL if m.VARIABLE == name), None)


def class_matrix(config, gates):
  """[C, K] filter -> class matrix of a run's `gates` collection on the host, or None."""
  return for_config(config).class_matrix(gates)
