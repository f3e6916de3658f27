"""Which JAX platforms a process uses, and libtpu on hosts without a TPU.

libtpu (the `tpu` extra, which `csg-compile` needs) is found by JAX in every process. On a host
with no TPU, JAX's first device query then loads it to look for one, and libtpu writes several
lines of warnings to the process's stderr before JAX falls back to the CPU. `skip_absent_tpu`
spares the commands that search where it cannot succeed; TPU hosts and any explicit
JAX_PLATFORMS are left alone.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import tempfile

import jax


def has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def libtpu_version() -> str | None:
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return None


def on_tpu_host() -> bool:
  """A Cloud TPU VM: its chips appear as /dev/accel* or /dev/vfio/<n>."""
  return os.path.exists("/dev/accel0") or bool(glob.glob("/dev/vfio/[0-9]*"))


def _accelerator_plugins() -> list[str]:
  """JAX's PJRT plugins other than libtpu (CUDA, ROCm, ...): jax_plugins modules and entry
  points."""
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    modules = [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    modules = []
  return modules + [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]


def skip_absent_tpu() -> bool:
  """Restricts JAX to the CPU where libtpu is installed but the host has no TPU and no other
  accelerator plugin, before any device is queried; True when it did."""
  if (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or not has_libtpu()
      or on_tpu_host() or _accelerator_plugins()):
    return False
  jax.config.update("jax_platforms", "cpu")
  return True


@contextlib.contextmanager
def quiet_stderr():
  """Drops what is written to the process's stderr (file descriptor 2, so C++ libraries' lines
  too) inside the block; exceptions still raise."""
  with tempfile.TemporaryFile("w+") as sink:
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
