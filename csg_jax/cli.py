"""Helpers the launchers share: user-facing errors, workdir checks, the closing summary line."""

import contextlib
import os
import sys
import tempfile

from csg_jax.errors import CSGError


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
  density = results["gate_density"]
  density = "n/a (std)" if density is None else f"{density:.4f}"
  print(f"done: {results['method']} {results['model']} on {results['dataset']} after step "
        f"{results['step']}: accuracy {results['accuracy']:.4f}, MIS {results['mis']:.4f}, "
        f"gate L1 density {density}; results in {os.path.join(workdir, 'results.json')}",
        flush=True)
