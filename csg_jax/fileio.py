"""Writes that are all-or-nothing: a crash never leaves a half-written file or folder behind."""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary sibling path to write; on success it is renamed over `path`, on error
  it is removed. `suffix` keeps an extension some writers insist on (numpy's .npy)."""
  tmp = f"{path}.tmp-{os.getpid()}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary sibling, then renames it over `path`."""
  with atomic_file(path) as tmp:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
      f.write("\n")


@contextlib.contextmanager
def replace_directory_atomically(target: str) -> Iterator[str]:
  """Yields a temporary sibling folder; on success it replaces `target`, on error it is removed."""
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(target)}-", dir=parent)
  try:
    yield tmp
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
