"""Helpers the launchers share: user-facing errors, workdir checks, the closing summary line."""

import contextlib
import os
import sys
import tempfile

from csg_jax.errors import CSGError


def define_config_flag(default_path: str):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.DEFINE_config_file(
      "config", default_path, "Config file; override any field with --config.<field>=<value>.",
      lock_config=True)


def _first_line(error: BaseException) -> str:
  """The informative part of ml_collections' multi-line loading errors."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  detail = next((l for l in lines if "Errno" in l or "Error" in l), lines[-1] if lines else "")
  path = next((l for l in lines if l.endswith(".py")), "")
  return f"{path}: {detail}" if path and path not in detail else detail or type(error).__name__


@contextlib.contextmanager
def config_errors():
  """A config file that does not load, or an override naming no field, becomes one line."""
  try:
    yield
  except (AttributeError, KeyError) as e:
    name = str(e).strip("\"'")
    print(f"error: there is no config field named {name!r} (check the --config.<field> "
          "overrides; the fields are listed in csg_jax/config_base.py and csg_jax/data/config.py)",
          file=sys.stderr, flush=True)
    sys.exit(2)
  except (OSError, TypeError, ValueError, SyntaxError, ImportError, CSGError) as e:
    print(f"error: cannot load the config: {_first_line(e)}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with config and flag errors as one line and exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  with config_errors():
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"error: {e} (see --helpfull)", file=sys.stderr, flush=True)
      sys.exit(2)


def resolve_config(config_flag):
  """The parsed config; a config file that failed to load only says so when first touched."""
  config = config_flag.value
  config.to_dict()
  return config


@contextlib.contextmanager
def user_errors():
  """A CSGError becomes one line on stderr and exit status 2, not a traceback."""
  try:
    yield
  except CSGError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def default_workdir(config) -> str:
  dataset = config.data.name if config.data.source == "tfds" else config.data.source
  return os.path.join("workdirs", f"{dataset}_{config.model.name}_{config.method}")


def check_workdir(workdir: str) -> None:
  """Fails early, before any work, when the workdir cannot be created or written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CSGError(f"--workdir {workdir!r} exists and is not a folder; choose another path")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
      pass
  except OSError as e:
    raise CSGError(f"cannot write to --workdir {workdir!r} ({e.strerror}); choose a folder you "
                   "can write to") from None


def print_summary(results, workdir: str) -> None:
  from csg_jax import parallel  # pylint: disable=g-import-not-at-top
  density = results["gate_density"]
  density = "n/a (std)" if density is None else f"{density:.4f}"
  parallel.print_main(
      f"done: {results['method']} {results['model']} on {results['dataset']} after step "
      f"{results['step']}: accuracy {results['accuracy']:.4f}, MIS {results['mis']:.4f}, "
      f"gate L1 density {density}; results in {os.path.join(workdir, 'results.json')}")
