"""Config files: the configs shipped in csg_jax/configs, found by name or by path, and loaded.

`--config` takes a file path (`configs/cifar10_resnet20.py`, `my_config.py`) or the name of a
shipped config (`cifar10_resnet20`); `resolve` turns either into the file's path.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from csg_jax.errors import CSGError

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
DEFAULT_CONFIG = os.path.join(SHIPPED_DIR, "default.py")


def shipped() -> list[str]:
  """The names of the configs that ship with csg_jax (csg_jax/configs/<name>.py)."""
  return sorted(f[:-3] for f in os.listdir(SHIPPED_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def resolve(name_or_path: str) -> str:
  """The path of config file `name_or_path`: an existing file as given, else the shipped config
  of that name (with or without `.py`, with or without a leading `configs/`). A value that is
  neither is returned as given, for the loader to report."""
  if os.path.isfile(name_or_path):
    return name_or_path
  name = os.path.basename(name_or_path)
  name = name[:-3] if name.endswith(".py") else name
  candidate = os.path.join(SHIPPED_DIR, f"{name}.py")
  if os.path.dirname(name_or_path) in ("", "configs") and os.path.isfile(candidate):
    return candidate
  return name_or_path


def load_config_file(name_or_path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (a path, or a shipped config's name), loaded as `--config`
  loads it."""
  path = resolve(name_or_path)
  if not os.path.isfile(path):
    raise CSGError(f"config file {name_or_path} does not exist: give the path of a config file "
                   f"or the name of a shipped one ({', '.join(shipped())})")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"csg_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise CSGError(f"config file {path} defines no get_config(): a config file returns its "
                   "ConfigDict from get_config()")
  return module.get_config()
