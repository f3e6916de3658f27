"""The command-line launchers (one module per command) and what they share: flag parsing, the
default config, user-facing errors as one line with exit status 2, workdir checks, the summary.

Each command module defines its flags and `main(argv)`; its `run()` is the console entry point
(csg-train, csg-evaluate, ...), also reached through the launch/<command>.py shims.
"""

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
# The module itself: ml_collections 1.1's package no longer re-exports ConfigFileFlagParser.
from ml_collections.config_flags import config_flags as config_flags_module

from csg_jax import config as config_lib
from csg_jax import fileio
from csg_jax import platforms
from csg_jax.config import files as config_files
from csg_jax.errors import CSGError

DEFAULT_CONFIG = config_files.DEFAULT_CONFIG  # csg_jax/configs/default.py, in every install

# Where a user finds the fields of each config-valued flag, for the "no such field" message.
_FIELDS_LISTED = {"config": "--show_config lists every field with its value and comment",
                  "app": "the fields are listed in app_config() of "
                         "csg_jax/evaluation/applications.py"}
# --config.csg.gate.init=0.5 -> ("config", "csg.gate.init")
_OVERRIDE = re.compile(r"^--?(\w+)\.([\w.]+)")


def define_config_flag(default_path: str = DEFAULT_CONFIG):
  """--config: a config file whose fields --config.<field>=<value> overrides."""
  # config_flags reads the overrides while the flag is defined: a bad one must be one line too.
  with config_errors():
    return config_flags.DEFINE_config_file(
        "config", default_path, "Config file, or the name of a shipped config ("
        + ", ".join(config_files.shipped()) + "); override any field with "
        "--config.<field>=<value>.", lock_config=True)


def _config_error_text(error: BaseException) -> str:
  """The informative part of ml_collections' multi-line loading errors."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  detail = next((l for l in lines if "Errno" in l or "Error" in l), lines[-1] if lines else "")
  path = next((l for l in lines if l.endswith(".py")), "")
  return f"{path}: {detail}" if path and path not in detail else detail or type(error).__name__


def _missing_field(error: BaseException) -> tuple[str, str, str]:
  """(flag, field, hint) of an override naming no field.

  ml_collections raises an AttributeError around a KeyError whose text is the quoted last part
  of the name, then maybe a line 'Did you mean ...'; the full dotted name is the override's.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  lines = [l.strip() for l in str(error.args[0] if error.args else "").splitlines() if l.strip()]
  leaf = lines[0].strip("\"'") if lines else type(error).__name__
  for arg in sys.argv[1:]:
    match = _OVERRIDE.match(arg)
    if match and leaf in match.group(2).split("."):
      return match.group(1), match.group(2), " ".join(lines[1:])
  return "config", leaf, " ".join(lines[1:])


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


@contextlib.contextmanager
def config_errors():
  """A config file that does not load, or an override naming no field, becomes one line."""
  try:
    yield
  except (AttributeError, KeyError) as e:
    flag, field, hint = _missing_field(e)
    if flag == "config":
      renamed = config_lib.renamed_field_message(field)
      if renamed:
        _fail(f"there is no config field named {field!r}{renamed}")
    where = _FIELDS_LISTED.get(flag, f"the fields are those of the --{flag} default")
    if hint:  # ml_collections' 'Did you mean "x" instead of "y"?'
      _fail(f"there is no {flag} field named {field!r}; {hint[:1].lower()}{hint[1:]} ({where})")
    _fail(f"there is no {flag} field named {field!r} (check the --{flag}.<field> overrides; "
          f"{where})")
  except (OSError, TypeError, ValueError, SyntaxError, ImportError, CSGError) as e:
    _fail(f"cannot load the config: {_config_error_text(e)}")


@contextlib.contextmanager
def user_errors():
  """A CSGError becomes one line on stderr and exit status 2, not a traceback."""
  try:
    yield
  except CSGError as e:
    _fail(str(e))


_CONFIG_FLAG = re.compile(r"^--?config(=|$)")


def _config_path(value: str) -> str:
  """The file `--config value` names: a path, or a shipped config's name (CSGError if neither;
  a value with ':' passes a string to the file's get_config and is left to the loader)."""
  path = config_files.resolve(value)
  if ":" not in value and not os.path.isfile(path):
    raise CSGError(f"--config {value}: no such file, and no shipped config of that name "
                   f"(shipped: {', '.join(config_files.shipped())})")
  return path


def resolve_config_names(argv: Sequence[str]) -> list[str]:
  """`--config NAME` / `--config=NAME` with the name of a shipped config -> its file's path; a
  path stays as given; anything else is a CSGError naming the shipped configs."""
  out, expect_value = [], False
  for arg in argv:
    if expect_value:
      out.append(_config_path(arg))
      expect_value = False
      continue
    match = _CONFIG_FLAG.match(arg)
    if match and match.group(1) == "=":
      out.append(f"{arg[:match.end()]}{_config_path(arg[match.end():])}")
      continue
    expect_value = bool(match)
    out.append(arg)
  return out


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with config and flag errors as one line and exit status 2."""
  with config_errors():
    try:
      return flags.FLAGS(resolve_config_names(argv))
    except flags.Error as e:
      _fail(f"{e} (see --helpfull)")
    except SystemExit as e:
      # absl's --help, --helpfull and --helpxml print what was asked for, then exit 1: asking
      # for help is no error.
      sys.exit(0 if e.code == 1 else e.code)


def start(argv: Sequence[str], config_flag=None):
  """What every main does first: refuses stray arguments, keeps library INFO logs (and libtpu's
  search for a TPU on a host without one) out of the progress output, and returns the loaded
  config of `config_flag` (None without one)."""
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value; see "
          "--help)")
  logging.set_verbosity(logging.WARNING)
  platforms.skip_absent_tpu()
  if config_flag is None:
    return None
  with config_errors():
    config = config_flag.value
    config.to_dict()  # a config file that failed to load only says so when first touched
  return config


def run(main: Callable[[list[str]], None]) -> None:
  """absl.app.run(main) with parse_flags; --help shows the command's docstring and flags.

  absl's help describes the __main__ module, which is a shim or console script here: the command
  module's flags (and --config, defined in this module) become its key flags, and its docstring
  the usage text.
  """
  command = main.__module__
  if command != "__main__":
    for module in (command, __name__):
      for flag in flags.FLAGS.get_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = sys.modules[command].__doc__
  app.run(main, flags_parser=parse_flags)


def default_workdir(config, config_flag_name: str = "config") -> str:
  """workdirs/<dataset>_<model>_<method>[-<field>=<value>...]: the overrides that differ from
  the config file's values name the run, so a changed command never resumes another run."""
  with config_errors():
    defaults = config_flags_module.ConfigFileFlagParser(name=config_flag_name).parse(
        config_file_name(config_flag_name))
  return os.path.join("workdirs", config_lib.run_name(config, defaults))


def config_overrides(config_flag_name: str = "config") -> dict:
  """{dotted field: value} of the --config.<field>=<value> overrides on the command line."""
  return dict(config_flags.get_override_values(flags.FLAGS[config_flag_name]))


def config_file_name(config_flag_name: str = "config") -> str:
  """The path of the config file --config loaded."""
  return config_flags.get_config_filename(flags.FLAGS[config_flag_name])


def check_overrides_are_read(config, config_flag_name: str = "config", *,
                             methods: Sequence[str] = ()) -> None:
  """An override the run never reads (--config.data.name=cifar100 with data.source 'digits')
  stops the run with one line, instead of training something the user did not ask for. With
  `methods` (compare's runs), an override is unread when none of the runs of `config` with
  method=<each of them> reads it."""
  overrides = sorted(config_flags.get_override_values(flags.FLAGS[config_flag_name]))
  runs = [config]
  if methods:
    runs = []
    for name in methods:
      each = config.copy_and_resolve_references()
      each.unlock()
      each.method = name
      runs.append(each)
  per_run = [dict(config_lib.unread_fields(run, overrides)) for run in runs]
  unread = [(field, per_run[0][field]) for field in overrides
            if all(field in skipped for skipped in per_run)]
  if unread:
    raise CSGError("; ".join(f"--config.{field} is not read by this run ({why})"
                             for field, why in unread) + ": remove it, or set the field that "
                   "makes the run read it")


def check_workdir(workdir: str) -> None:
  """Fails early, before any work, when the workdir cannot be created or written.

  Creates nothing: a run that then stops on its data (or anything else) leaves no empty workdir.
  """
  if fileio.is_remote(workdir):
    probe = fileio.join(workdir, ".write-test")
    fileio.write_text_atomic(probe, "")  # a missing client, bucket or credential: one line
    fileio.remove(probe)
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CSGError(f"--workdir {workdir!r} exists and is not a folder; choose another path")
  nearest = workdir  # the workdir, or the folder its creation would start in
  while not os.path.exists(nearest):
    nearest = os.path.dirname(nearest.rstrip(os.sep)) or os.curdir
  if not os.path.isdir(nearest):
    raise CSGError(f"cannot write to --workdir {workdir!r} ({nearest!r} is a file); choose another "
                   "path")
  try:
    with tempfile.NamedTemporaryFile(dir=nearest, prefix=".write-test-"):
      pass
  except OSError as e:
    raise CSGError(f"cannot write to --workdir {workdir!r} ({e.strerror}); choose a folder you "
                   "can write to") from None


def parse_methods(text: str) -> tuple[str, ...]:
  """The methods of `--methods std,csg,picnn`, in order; one line naming the known ones for an
  unknown or repeated name. Parsed before the heavy imports."""
  names = tuple(part.strip() for part in text.split(",") if part.strip())
  known = config_lib.METHODS
  if len(names) < 2 or len(set(names)) != len(names) or any(n not in known for n in names):
    raise CSGError(f"--methods is {text!r}: give two or more distinct methods separated by "
                   f"commas, from {', '.join(known)} (e.g. --methods std,csg,picnn)")
  return names


def parse_seeds(text: str) -> tuple[int, ...] | None:
  """The seeds of `--seeds 0,1,2` (None for an empty value: one run per method, config.seed).

  Parsed before the heavy imports, so a mistyped value fails at once.
  """
  if not text.strip():
    return None
  try:
    seeds = tuple(int(part) for part in text.split(","))
  except ValueError:
    seeds = ()
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise CSGError(f"--seeds is {text!r}: give distinct non-negative integers separated by "
                   "commas, e.g. --seeds 0,1,2")
  return seeds


def print_text(text: str) -> None:
  """Prints to stdout; a reader that stops early (`| head`) ends the output quietly."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
